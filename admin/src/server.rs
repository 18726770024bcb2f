//! The admin listener: its own thread and runtime, so the control plane
//! never competes with the data plane's workers for a scheduler.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

use switchyard_proxy::tls::TlsTerminator;

use crate::api::AdminApi;
use crate::error::AdminError;

/// A client that connects and does not finish its handshake, or a request
/// head, within this is closed.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A first head not ended within this many bytes is left to hyper, which
/// refuses it (431) past its own limit.
const FIRST_HEAD_LIMIT: usize = 16 * 1024;

/// Field lines a first head is parsed with here; one with more is left to
/// hyper.
const FIRST_HEAD_FIELDS: usize = 100;

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
                        let Some(tls) = tls else {
                            serve(stream, api).await;
                            return;
                        };
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => serve(stream, api).await,
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

/// Serves one admin connection. Its first head is read and checked here:
/// bytes that are not an HTTP/1.1 request get a JSON 400 that says what is
/// wrong, where hyper would answer an empty one (it has no hook for its
/// parse errors). Later heads on a kept-alive connection are hyper's.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    api: Arc<AdminApi>,
) {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, first_head(&mut stream)).await;
    let prefix = match first {
        Ok(FirstHead::Good(prefix)) => prefix,
        Ok(FirstHead::Refused(reason)) => {
            tracing::debug!(reason = %reason, "admin request refused");
            let body = AdminError::MalformedRequest { reason }.body();
            let mut answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(&body);
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                stream.write_all(&answer).await?;
                stream.shutdown().await
            })
            .await;
            return;
        }
        Ok(FirstHead::Gone) | Err(_) => return,
    };
    let service = service_fn(move |request| Arc::clone(&api).handle(request));
    // A head (the next on a kept-alive connection) must come within the
    // handshake's time too: a slow or idle client is closed.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let stream = TokioIo::new(Prefixed { prefix, stream });
    let _ = http.serve_connection(stream, service).await;
}

/// How a connection's first head came.
enum FirstHead {
    /// Well-formed, or for hyper to judge: the bytes read so far.
    Good(BytesMut),
    /// Not an HTTP/1.1 request head, and why.
    Refused(String),
    /// The client left first.
    Gone,
}

async fn first_head<S: AsyncRead + Unpin>(stream: &mut S) -> FirstHead {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        let before = buffer.len();
        match stream.read_buf(&mut buffer).await {
            Ok(n) if n > 0 => {}
            _ => return FirstHead::Gone,
        }
        // Parsed again only when a line ended (or at the limit): a head
        // that comes a byte at a time is not parsed once per byte.
        let line_ended = memchr::memchr(b'\n', &buffer[before..]).is_some();
        if before > 0 && !line_ended && buffer.len() < FIRST_HEAD_LIMIT {
            continue;
        }
        let mut fields = [httparse::EMPTY_HEADER; FIRST_HEAD_FIELDS];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => {
                // hyper refuses a target `http::Uri` does not parse.
                let target = request.path.unwrap_or_default();
                if target.parse::<http::Uri>().is_err() {
                    let reason = format!("the request target {target:?} is not a URI");
                    return FirstHead::Refused(reason);
                }
                if let Err(reason) = framing(&request) {
                    return FirstHead::Refused(reason.to_string());
                }
                return FirstHead::Good(buffer);
            }
            Ok(httparse::Status::Partial) if buffer.len() < FIRST_HEAD_LIMIT => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return FirstHead::Good(buffer)
            }
            Err(err) => return FirstHead::Refused(refusal(&buffer, err)),
        }
    }
}

/// The body's framing fields as hyper reads them: every `Content-Length`
/// value one and the same number; `Transfer-Encoding` (not in HTTP/1.0)
/// ending in `chunked`.
fn framing(request: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let mut length = None;
    let mut coding: Option<&[u8]> = None;
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            for value in field.value.split(|&b| b == b',') {
                let value = std::str::from_utf8(value.trim_ascii()).unwrap_or_default();
                let Ok(n) = value.parse::<u64>() else {
                    return Err("Content-Length is not a number");
                };
                if length.is_some_and(|seen| seen != n) {
                    return Err("two different Content-Lengths");
                }
                length = Some(n);
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if request.version == Some(0) {
                return Err("Transfer-Encoding in an HTTP/1.0 request");
            }
            coding = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
        }
    }
    match coding {
        Some(last) if !last.eq_ignore_ascii_case(b"chunked") => {
            Err("Transfer-Encoding does not end in chunked")
        }
        _ => Ok(()),
    }
}

/// Why bytes that start a connection are not an HTTP/1.1 request.
fn refusal(bytes: &[u8], err: httparse::Error) -> String {
    if bytes.starts_with(b"PRI * HTTP/2.0") {
        return "HTTP/2 is not served on the admin listener; use HTTP/1.1".to_string();
    }
    // A TLS record: a handshake (22) of TLS 1.x.
    if bytes.len() >= 3 && bytes[0] == 22 && bytes[1] == 3 {
        return "a TLS handshake on a plaintext listener: use http://, or give the admin \
                listener a certificate"
            .to_string();
    }
    format!("not an HTTP/1.1 request head ({err})")
}

/// A stream whose first bytes were read already: `prefix` is read first.
struct Prefixed<S> {
    prefix: BytesMut,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
