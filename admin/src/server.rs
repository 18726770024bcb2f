//! The admin listener: its own thread and runtime, so the control plane
//! never competes with the data plane's workers for a scheduler.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use switchyard_proxy::tls::TlsTerminator;

use crate::api::AdminApi;
use crate::error::AdminError;

/// A client that connects and does not finish its handshake, or a request
/// head, within this is closed.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The pause after a failed accept (out of file descriptors).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds `addr` and serves `api` on a new thread; returns the bound address.
pub fn start(addr: SocketAddr, api: Arc<AdminApi>) -> Result<SocketAddr, AdminError> {
    start_with_tls(addr, api, None)
}

/// As [`start`], over TLS when `tls` is given (whose server config may
/// require client certificates).
pub fn start_with_tls(
    addr: SocketAddr,
    api: Arc<AdminApi>,
    tls: Option<Arc<TlsTerminator>>,
) -> Result<SocketAddr, AdminError> {
    let storage = |source| AdminError::Storage {
        what: "binding the admin listener",
        path: addr.to_string().into(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(storage)?;
    listener.set_nonblocking(true).map_err(storage)?;
    let bound = listener.local_addr().map_err(storage)?;
    // Set before the thread starts, so a caller's own gate set later wins.
    api.plane()
        .set_gate(Arc::clone(api.board()) as Arc<dyn crate::control::StepGate>);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(storage)?;
    std::thread::Builder::new()
        .name("switchyard-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                api.plane().spawn_driver();
                api.plane().spawn_resolver();
                crate::evaluator::spawn(Arc::clone(api.plane()), Arc::clone(api.board()));
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::error!(error = %err, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            // Out of file descriptors, most likely: the
                            // error repeats until one is closed, so wait
                            // rather than spin.
                            tracing::warn!(error = %err, "admin accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let api = Arc::clone(&api);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| Arc::clone(&api).handle(request));
                        // A head (the first, or the next on a kept-alive
                        // connection) must come within the handshake's
                        // time too: a slow or idle client is closed.
                        let mut http = hyper::server::conn::http1::Builder::new();
                        http.timer(TokioTimer::new())
                            .header_read_timeout(HANDSHAKE_TIMEOUT);
                        let Some(tls) = tls else {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            return;
                        };
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, "admin TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("admin TLS handshake timed out"),
                        }
                    });
                }
            })
        })
        .map_err(storage)?;
    tracing::info!(address = %bound, "admin API listening");
    Ok(bound)
}
