//! Reuse of pooled upstream connections: on hyper's path, a connection
//! whose response ended while its request body was still being written
//! must not stall the next request that takes it from the pool; on both
//! paths, a swap that removes an endpoint lets its idle connections go.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EARLY_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";

/// What the upstream below saw: connections accepted, and each request's
/// path with the number (from 1) of the connection it came on.
#[derive(Clone, Default)]
struct Seen {
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
}

/// A raw upstream. `POST /early` is answered at once, and the connection
/// is then held open and never read again, so whoever is sending its body
/// stalls. Any other request has its `Content-Length` body read whole and
/// is answered with the byte count, keep-alive.
async fn early_answering_upstream() -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Seen::default();
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let number = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let head = support::read_head(&mut stream).await;
                    if head.is_empty() {
                        return;
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let early = path == "/early";
                    state
                        .requests
                        .lock()
                        .expect("not poisoned")
                        .push((number, path));
                    if early {
                        let _ = stream.write_all(EARLY_REPLY).await;
                        // Held open, unread, until the test's runtime ends.
                        std::future::pending::<()>().await;
                        return;
                    }
                    let len: usize = support::header_values(&head, "content-length")
                        .first()
                        .map_or(0, |v| v.parse().expect("numeric content-length"));
                    let mut body = vec![0u8; len];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let count = len.to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{count}",
                        count.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_pooled_connection_still_sending_an_early_answered_body_is_not_waited_on() {
    let (addr, seen) = early_answering_upstream().await;
    // One worker: upstream connections are pooled per worker, and the
    // second request must find the first one's connection. The connect
    // timeout also bounds the wait for a pooled connection to be ready.
    let proxy = support::proxy_with_workers(
        &support::pool_config(
            "web",
            addr,
            json!({"timeouts": {"connect": "300ms", "response_header": "5s", "drain": "2s"}}),
        ),
        1,
    );

    // Client 1: a body far larger than the loopback socket buffers on the
    // way can hold, so the proxy's upload to the upstream stalls for good
    // (a finite few MiB could be swallowed whole by buffers, letting the
    // upload finish). The writer runs until the test ends.
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n")
        .await
        .expect("write head");
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        while write.write_all(&chunk).await.is_ok() {}
    });

    // hyper's client hands over the response head while the body is still
    // going out, and the 5-byte body ends the exchange: the proxy puts the
    // connection back in the pool before passing the last byte on.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let early = loop {
        if let Some((response, _)) = support::parse_response(&buf, false) {
            break response;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut chunk))
            .await
            .expect("the early answer within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before the early answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!((early.status, &early.body[..]), (200, &b"early"[..]));
    assert!(!writer.is_finished(), "the upload did not stall");

    // Client 2, on a new connection: a body over the 64 KiB read-ahead, so
    // it too takes hyper's path and that worker's pool. The stalled
    // connection never becomes ready; before the fix this waited forever.
    let body = Bytes::from(vec![b'y'; 100 * 1024]);
    let request = http::Request::post(format!("http://{}/second", proxy.addr))
        .body(Full::new(body))
        .expect("request");
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(10),
        support::exchange(&support::client(), request),
    )
    .await
    .expect("the second request waited on the stalled pooled connection");
    assert_eq!((status, answer.as_str()), (200, "102400"));

    // It went out on a second upstream connection; the first one carried
    // only the early request.
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        *seen.requests.lock().expect("not poisoned"),
        [(1, "/early".to_string()), (2, "/second".to_string())]
    );
    writer.abort();
}

/// A swap that removes an endpoint closes the idle pooled connections to
/// it at once, on the fast path's pool and hyper's (they stayed until the
/// idle sweep, up to twice the idle timeout; Envoy drains a removed
/// host's connections at once).
#[tokio::test]
async fn idle_connections_to_an_endpoint_a_swap_removed_are_closed_at_once() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let old = support::scripted_upstream(REPLY, support::After::Again).await;
    let new = support::scripted_upstream(REPLY, support::After::Again).await;
    let config = |addr: std::net::SocketAddr| {
        let mut config = support::pool_config("app", addr, json!({}));
        config["timeouts"] = json!({"idle": "300s"});
        config
    };
    let proxy = support::proxy(&config(old.addr));
    // One connection pooled by the fast path (a GET), one by hyper's path
    // (a chunked upload).
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        support::read_response(&mut client, &mut buf, false)
            .await
            .status,
        200
    );
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
    assert_eq!(
        support::read_response(&mut client, &mut buf, false)
            .await
            .status,
        200
    );
    let accepted = old.accepted.load(Ordering::SeqCst);
    assert!(accepted >= 1, "no connection to the old endpoint");
    assert_eq!(
        old.closed.load(Ordering::SeqCst),
        0,
        "closed before the swap"
    );

    proxy.routes.replace(support::table(&config(new.addr), 2));
    let closed = support::eventually(Duration::from_secs(5), || {
        old.closed.load(Ordering::SeqCst) == accepted
    })
    .await;
    assert!(
        closed,
        "{} of {accepted} idle connections to the removed endpoint closed",
        old.closed.load(Ordering::SeqCst)
    );
}
