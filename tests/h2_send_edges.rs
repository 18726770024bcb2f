//! HTTP/2 regressions a review of the session's own changes found: the
//! field count and the send timeout, as first written. Each test failed
//! on the code it was written against.

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{timeout, Instant};

use support::h2::{
    decode, frame, request, RawClient, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM,
    SETTINGS_INITIAL_WINDOW_SIZE,
};

fn short_timeouts() -> Value {
    json!({"timeouts": {"drain": "1s", "connect": "1s", "response_header": "5s",
                        "request_header": "300ms", "idle": "300ms"}})
}

/// HTTP/2 clients may split `cookie` into one field per crumb (RFC 9113
/// §8.2.3; Firefox does), and Switchyard joins them into one `cookie`
/// upstream. The field count (`limits.max_headers`) counted every crumb,
/// so a request HTTP/1.1 passes (one Cookie field) got 431 over HTTP/2.
#[tokio::test]
async fn h2_cookie_crumbs_count_as_one_field_toward_max_headers() {
    let upstream = support::upstream("app").await;
    let mut extra = short_timeouts();
    extra["limits"] = json!({"max_headers": 20});
    let proxy = support::proxy_to("app", upstream.addr, extra);

    // HTTP/1.1: 25 cookies in one Cookie field pass.
    let cookies: Vec<String> = (0..25).map(|i| format!("c{i}=v")).collect();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nCookie: {}\r\nConnection: close\r\n\r\n",
        cookies.join("; ")
    );
    let (answer, _) =
        support::raw_exchange_until_close(proxy.addr, head.as_bytes(), Duration::from_secs(3))
            .await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "HTTP/1.1: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // HTTP/2: the same cookies as crumbs.
    let fields: Vec<(&str, &str)> = cookies.iter().map(|c| ("cookie", c.as_str())).collect();
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/", &fields),
        ))
        .await;
    let response = client.response(1).await;
    assert_eq!(
        response.field(":status"),
        Some("200"),
        "HTTP/2 with 25 cookie crumbs (one Cookie upstream), max_headers 20"
    );
}

/// An upstream: `/slow` answers once `release` is notified, anything else
/// at once with a small body.
async fn gated_upstream(release: Arc<Notify>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let release = Arc::clone(&release);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let release = Arc::clone(&release);
                    async move {
                        if request.uri().path() == "/slow" {
                            release.notified().await;
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                "slow",
                            ))));
                        }
                        Ok(Response::new(Full::new(Bytes::from("fast body"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The HTTP/2 `Stalled` phase closed the whole connection when one
/// stream's window was shut and no DATA moved for the idle timeout, even
/// though another stream on it was only waiting for its upstream (a long
/// poll): the client is alive and answers PINGs, and the waiting stream
/// was lost with the connection. Now only a connection whose every stream
/// waits on the client is stalled.
#[tokio::test]
async fn h2_a_stream_waiting_on_its_upstream_is_not_killed_by_another_streams_shut_window() {
    let release = Arc::new(Notify::new());
    let upstream = gated_upstream(Arc::clone(&release)).await;
    let proxy = support::proxy_to("app", upstream, short_timeouts());

    // Stream windows start at 0: the client holds stream 1's body back (a
    // paused download); the connection window stays open.
    let mut client = RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/fast", &[]),
        ))
        .await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            3,
            &request("GET", "/slow", &[]),
        ))
        .await;

    // Watch the connection for 2 s (about 7x idle), answering PINGs as a
    // live client does, then let the slow upstream answer.
    let end = Instant::now() + Duration::from_secs(2);
    let mut lost = None;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match client.next_within(left).await {
            Err(_) => break,
            Ok(None) => {
                lost = Some("the connection was closed".to_string());
                break;
            }
            Ok(Some(f)) if f.kind == GOAWAY => {
                lost = Some(format!("GOAWAY {f:?}"));
                break;
            }
            Ok(Some(f)) if f.kind == RST_STREAM && f.id == 3 => {
                lost = Some(format!("stream 3 reset {f:?}"));
                break;
            }
            Ok(Some(f)) if f.kind == PING && f.flags == 0 => {
                client.send(&frame(PING, 1, 0, &f.payload)).await;
            }
            Ok(Some(f)) if f.kind == HEADERS && f.id == 3 => {
                panic!(
                    "stream 3 answered before its upstream did: {:?}",
                    decode(&f.payload)
                );
            }
            Ok(Some(_)) => {}
        }
    }
    assert_eq!(
        lost, None,
        "stream 3 waits on its upstream, not on the client; it was lost with the connection"
    );
    release.notify_one();
    let answered = timeout(Duration::from_secs(5), async {
        loop {
            match client.next().await {
                None => return false,
                Some(f) if f.kind == HEADERS && f.id == 3 => return true,
                Some(_) => {}
            }
        }
    })
    .await;
    assert_eq!(answered, Ok(true), "stream 3's answer");
}
