//! The embedded default's two demo upstreams, "blue" and "green": tiny
//! in-process HTTP servers on ephemeral loopback ports that say who they are.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Starts one demo upstream per name on its own thread; returns their addresses.
pub fn start(names: &[&'static str]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut listeners = Vec::new();
    for name in names {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .with_context(|| format!("binding the demo upstream {name}"))?;
        listener.set_nonblocking(true)?;
        listeners.push((*name, listener));
    }
    let addrs = listeners
        .iter()
        .map(|(_, l)| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the demo upstreams' runtime")?;
    std::thread::Builder::new()
        .name("switchyard-demo".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (name, listener) in listeners {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => tasks.push(tokio::spawn(serve(name, listener))),
                        Err(err) => tracing::warn!(error = %err, "demo upstream failed"),
                    }
                }
                for task in tasks {
                    let _ = task.await;
                }
            })
        })
        .context("starting the demo upstreams' thread")?;
    Ok(addrs)
}

async fn serve(name: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| async move {
                let body = format!(
                    "Hello from {name}! You asked for {} {}\n",
                    request.method(),
                    request.uri()
                );
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
                    .headers_mut()
                    .insert("x-demo-pool", HeaderValue::from_static(name));
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
