//! Who is to blame when an exchange fails, and what the client is told:
//! a client's broken, stalled or oversized request body is the client's
//! (400, 408, 413, never counted against the upstream); a long upload is
//! not the upstream's slowness; an upstream's answer nobody asked for
//! (a 101, stray bytes after an answer, even inside a TLS session) never
//! reaches a client. Real loopback sockets and upstreams throughout.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A one-pool config sending everything to `addr` as pool `web`, under a
/// route named `route` (metrics are process-wide: each test has its own
/// route name); the top-level keys of `extra` replace the defaults.
fn config(route: &str, addr: SocketAddr, extra: Value) -> Value {
    let mut config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": [addr.to_string()]}},
        "routes": [{"name": route, "split": {"baseline": "web", "weights": {"web": 10000}}}],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
    });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    config
}

fn metric(series: &str) -> f64 {
    support::metric(series)
}

/// Upstream failures of `kind` counted for pool `web` of `route`.
fn upstream_errors(route: &str, kind: &str) -> f64 {
    metric(&format!(
        r#"switchyard_upstream_errors_total{{kind="{kind}",pool="web",route="{route}"}}"#
    ))
}

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

// ---------------------------------------------------------------------------
// Client faults on hyper's path (bodies over the 64 KiB read-ahead) were
// blamed on the upstream.

#[tokio::test]
async fn a_streamed_chunked_body_over_the_limit_is_413_not_a_502_counted_against_the_upstream() {
    // A body over the limit but under the read-ahead size is answered 413
    // (http_semantics::chunked_body_over_the_body_limit_is_refused). Over
    // 64 KiB, the body streams upstream through hyper's client, and the
    // limit trips inside it (body::BodyOverLimit): hyper reports a user
    // body error, which `upstream::classify` turns into
    // `ForwardError::Upstream` — a 502, counted as an upstream reset.
    let route = "review_over_limit";
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&config(
        route,
        upstream.addr,
        json!({"limits": {"max_body_bytes": 100_000}}),
    ));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    // The client writes its whole (200 kB) body; the answer may come
    // before the proxy has read it all, so it writes from its own task.
    let writer = tokio::spawn(async move {
        let _ = write
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        for _ in 0..20 {
            if write.write_all(&chunk(&[b'a'; 10_000])).await.is_err() {
                return write;
            }
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
        write
    });
    let response = support::read_response(&mut read, &mut Vec::new(), false).await;
    let body = String::from_utf8_lossy(&response.body).into_owned();
    let reset = upstream_errors(route, "reset");
    drop(writer);
    assert_eq!(
        response.status, 413,
        "a body over the limit must be refused with 413 (as under 64 KiB, and as nginx does); got: {body}"
    );
    assert_eq!(
        reset, 0.0,
        "the client's oversized body was counted as an upstream failure"
    );
}

#[tokio::test]
async fn clients_that_abort_large_uploads_do_not_get_a_healthy_endpoint_ejected() {
    // Five clients start a 1 MB upload and go away after 100 kB (a user
    // closing a browser tab). Nothing is wrong with the upstream, yet each
    // abort is a `ForwardError::Upstream` ("request body failed", from
    // `upstream::classify`) and `count_failure` counts it against the
    // endpoint: five in a row eject it (outlier defaults), and then every
    // request — from anyone — is refused with 503 for the ejection time.
    let route = "review_abort";
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&config(route, upstream.addr, json!({})));
    for round in 0..5 {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .expect("write head");
        stream
            .write_all(&[b'u'; 100_000])
            .await
            .expect("write part of the body");
        drop(stream);
        // Waits (bounded) for the proxy to have dealt with the abort: with
        // the bug, it is counted; without it, nothing changes and the
        // loop ends.
        let counted = support::eventually(Duration::from_secs(2), || {
            upstream_errors(route, "reset") > f64::from(round)
        })
        .await;
        if !counted {
            break;
        }
    }
    let (status, _, body) = support::get(&support::client(), proxy.addr, "/", &[]).await;
    let counted = upstream_errors(route, "reset");
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "web"),
        "a healthy upstream is refused after clients aborted uploads \
         ({counted} client aborts counted as upstream resets)"
    );
    assert_eq!(counted, 0.0, "client aborts counted as upstream resets");
}

#[tokio::test]
async fn a_slow_large_upload_is_not_cut_off_by_the_response_header_timeout() {
    // `timeouts.response_header` is documented as "from request sent to
    // response head received". On hyper's path (a body over 64 KiB) the
    // timer in `Upstreams::send` wraps `try_send_request`, which resolves
    // only with the response head — so it also runs while the client is
    // still uploading. A client uploading steadily for longer than it is
    // cut off with 504, and that is counted as an upstream timeout.
    let route = "review_slow_upload";
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&config(
        route,
        upstream.addr,
        json!({"timeouts": {"drain": "2s", "connect": "2s", "response_header": "1s", "idle": "10s"}}),
    ));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let total = 70_000 + 10 * 1_000;
    let writer = tokio::spawn(async move {
        let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&[b's'; 70_000]).await?;
        // The pauses are the scenario: a slow uplink, 1 kB every 200 ms,
        // 2 s in all — never quiet for anywhere near a timeout.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            write.write_all(&[b's'; 1_000]).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let response = support::read_response(&mut read, &mut Vec::new(), false).await;
    let _ = writer.await;
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(
        (response.status, response.body.len()),
        (200, total),
        "the upload was cut off: {}",
        body.chars().take(200).collect::<String>()
    );
    assert_eq!(upstream_errors(route, "timeout"), 0.0);
}

// ---------------------------------------------------------------------------
// Response handling on hyper's path.

#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_502_on_hyper_path_too() {
    // The fast path refuses a 101 no upgrade was asked for ("as wrong as
    // garbage", fast::parse_response). A request that takes hyper's path
    // (here: a chunked body) gets the upstream's 101 relayed instead: the
    // client, which asked for no new protocol, is told the protocol
    // switched, and gets no final answer (RFC 9110 §15.2.2).
    let route = "review_unsolicited_101";
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        support::After::Hang,
    )
    .await;
    let proxy = support::proxy(&config(route, upstream.addr, json!({})));
    // Fast path first, for contrast: 502.
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        Duration::from_secs(3),
    )
    .await;
    let fast = String::from_utf8_lossy(&out).into_owned();
    assert!(fast.starts_with("HTTP/1.1 502"), "fast path: {fast:?}");
    // The same request, chunked: hyper's path.
    let (out, _) = support::raw_exchange_until_close(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 502"),
        "hyper's path relayed an unsolicited answer: {text:?}"
    );
}

// ---------------------------------------------------------------------------
// Pooled TLS connections: bytes the upstream sent after an answer can be
// held inside the TLS session, where `fast::still_open` does not look.

/// The fast path's upstream read buffer (`fast::UPSTREAM_BUFFER`): a new
/// one has this much room, so the first read of a response reads at most
/// this many bytes.
const UPSTREAM_READ: usize = 16 * 1024;

/// A TLS upstream for `backend.internal`, and its CA's PEM. It answers
/// each request `200` with the body `answer to PATH`, keep-alive. But
/// `GET /big` it answers with a response of exactly [`UPSTREAM_READ`]
/// bytes, and then, carelessly, sends more: a second response (a buggy
/// server answering twice, or a body longer than its Content-Length).
/// The answer and what follows are two TLS records sent in one TCP write,
/// as a quick server's are.
async fn careless_tls_upstream() -> (SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["backend.internal".to_string()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::clone(
        switchyard_proxy::tls::provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Writes reach the socket only on flush.
                let buffered = tokio::io::BufStream::with_capacity(8192, 64 * 1024, tcp);
                let Ok(mut tls) = acceptor.accept(buffered).await else {
                    return;
                };
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let answer = |body: &str| {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let sent = async {
                        if path == "/big" {
                            // A head of 42 bytes: the whole answer fills
                            // the proxy's read exactly.
                            let body = "b".repeat(UPSTREAM_READ - 42);
                            let big = answer(&body);
                            assert_eq!(big.len(), UPSTREAM_READ);
                            tls.write_all(big.as_bytes()).await?;
                            tls.write_all(answer("answer meant for no one").as_bytes())
                                .await?;
                        } else {
                            tls.write_all(answer(&format!("answer to {path}")).as_bytes())
                                .await?;
                        }
                        tls.flush().await
                    };
                    if sent.await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, ca.pem())
}

#[tokio::test]
async fn bytes_after_an_answer_on_a_tls_connection_never_reach_the_next_client() {
    // Over plain TCP the proxy sees bytes after an answer (in the same
    // read: `relay`'s `clean`; or later: `still_open`'s peek) and drops
    // the connection. Over TLS, rustls takes both records off the socket
    // at once; the first read hands out as much plaintext as the buffer
    // holds — here exactly the answer — so `relay` finds nothing after
    // the body, the socket is drained, and `still_open` looks only at the
    // TCP socket. The connection is pooled with the extra response
    // buffered in the TLS session, and the next request on it — another
    // client's — reads that as its answer.
    let (upstream, ca_pem) = careless_tls_upstream().await;
    let dir = std::env::temp_dir().join(format!("switchyard-review-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let mut config = config("review_tls_desync", upstream, json!({}));
    config["pools"]["web"]["tls"] = json!({"server_name": "backend.internal", "ca_file": ca_file});
    // One worker: both clients share its upstream pool.
    let proxy = support::proxy_with_workers(&config, 1);

    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    first
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_response(&mut first, &mut Vec::new(), false).await;
    assert_eq!(
        (answer.status, answer.body.len()),
        (200, UPSTREAM_READ - 42)
    );

    // Another client.
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    second
        .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_response(&mut second, &mut Vec::new(), false).await;
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (answer.status, body.as_str()),
        (200, "answer to /b"),
        "the second client got another answer than its own"
    );
}

/// Verified to work (control for the test above): the same careless
/// upstream over plain TCP. The answer fills the proxy's read exactly
/// here too, but the extra bytes stay in the socket, so `still_open`
/// sees them and the connection is not used again.
#[tokio::test]
async fn control_bytes_after_an_answer_on_a_plain_connection_are_seen() {
    let body = "b".repeat(UPSTREAM_READ - 42);
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}\
         HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\nanswer meant for no one",
        body.len()
    );
    let reply: &'static [u8] = Box::leak(reply.into_bytes().into_boxed_slice());
    let upstream = support::scripted_upstream(reply, support::After::Again).await;
    let config = config("review_plain_extra", upstream.addr, json!({}));
    let proxy = support::proxy_with_workers(&config, 1);
    for client in ["first", "second"] {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let answer = support::get_on(&mut stream, &mut Vec::new()).await;
        assert_eq!(
            (answer.status, answer.body.len()),
            (200, UPSTREAM_READ - 42),
            "{client} client: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}

/// A request body that stops coming fails after the idle timeout with
/// `408` (nginx's `client_body_timeout`), on each path: the fast path
/// (a short `Content-Length` body), hyper's read-ahead (a short chunked
/// body), and a body streaming to the upstream (over 64 KiB). The
/// upstream is not blamed, and what it had of the body was not answered.
#[tokio::test]
async fn a_body_that_stops_coming_is_408_after_the_idle_timeout() {
    let route = "blame_body_stall";
    let upstream = support::upstream("web").await;
    let proxy = support::proxy(&config(
        route,
        upstream.addr,
        json!({"timeouts": {"drain": "2s", "connect": "2s", "response_header": "30s", "idle": "500ms"}}),
    ));
    let mut streamed = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n".to_vec();
    streamed.extend_from_slice(&[b's'; 70_000]);
    let cases: [(&str, &[u8]); 3] = [
        (
            "fast path",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this",
        ),
        (
            "read-ahead",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
        ("streamed", &streamed),
    ];
    for (path, request) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        // The client now sends nothing more and keeps its connection open.
        let (bytes, closed) = support::read_until_close(&mut stream, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "{path}: a stalled body must be answered 408, got {text:?}"
        );
        assert!(closed, "{path}: the connection must close after the 408");
    }
    for kind in ["reset", "timeout", "malformed"] {
        assert_eq!(
            upstream_errors(route, kind),
            0.0,
            "a stalled client body was counted as an upstream {kind}"
        );
    }
}

/// Serves HTTP/1.1 on `listener`: every request is answered 200 with
/// `got N` (N the body's length), once the body is read whole.
async fn serve_counting(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                let body = request.into_body().collect().await;
                let len = body.map(|b| b.to_bytes().len()).unwrap_or(0);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("got {len}")))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The response-header timeout of a streamed upload runs from when the
/// request goes out: time spent connecting (about 1 s here, against a
/// 700 ms timeout) is not the upstream's to answer in.
#[tokio::test]
async fn a_streamed_upload_to_an_upstream_slow_to_connect_is_not_a_504() {
    let timeouts = json!({"timeouts": {"drain": "1s", "connect": "5s", "response_header": "700ms", "idle": "10s"}});
    for (path, len) in [("fast path", 1_000usize), ("streamed", 200_000)] {
        let (listener, filler, addr) = support::full_listener().await;
        let proxy = support::proxy_to("web", addr, timeouts.clone());
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        let (mut read, mut write) = client.split();
        let body = vec![b'u'; len];
        let upstream = tokio::spawn(async move {
            // The scenario: the upstream's accept queue is full when the
            // proxy connects; it makes room 300 ms later, and the proxy's
            // SYN, sent again after 1 s, gets through. The upstream then
            // answers at once.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (first, _) = listener.accept().await.expect("accept");
            drop((first, filler));
            serve_counting(listener).await;
        });
        let send = async {
            write.write_all(head.as_bytes()).await.expect("head");
            write.write_all(&body).await.expect("body");
        };
        let mut buf = Vec::new();
        let (_, response) = tokio::join!(send, async {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some((response, _)) = support::parse_response(&buf, false) {
                    return Some(response);
                }
                match tokio::time::timeout(Duration::from_secs(10), read.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        });
        let response = response.expect("an answer");
        assert_eq!(
            (
                response.status,
                String::from_utf8_lossy(&response.body).into_owned()
            ),
            (200, format!("got {len}")),
            "{path}: the upstream, reached after ~1 s of connecting, answered at once"
        );
        upstream.abort();
    }
}

/// A request answered locally (no route: 404) whose body stops coming
/// still gets its answer, and the connection ends, on the fast path as on
/// hyper's.
#[tokio::test]
async fn fast_path_a_locally_answered_request_whose_body_stalls_gets_an_answer() {
    let upstream = support::upstream("web").await;
    let mut config = support::pool_config(
        "web",
        upstream.addr,
        json!({"timeouts": {"drain": "1s", "connect": "2s", "response_header": "5s", "idle": "500ms"}}),
    );
    config["routes"][0]["match"] = json!({"host": "known.test"});
    let proxy = support::proxy(&config);
    for (path, request) in [
        // hyper's path (a chunked body), for contrast: 404 at once.
        ("hyper", &b"POST / HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nonly\r\n"[..]),
        // The fast path (a Content-Length body).
        ("fast", &b"POST / HTTP/1.1\r\nHost: other.test\r\nContent-Length: 100\r\n\r\nonly"[..]),
    ] {
        // The client sends part of its body and then nothing (the scenario:
        // a stalled upload), keeping its connection open.
        let (bytes, closed) =
            support::raw_exchange_until_close(proxy.addr, request, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 404") || text.starts_with("HTTP/1.1 408"),
            "{path}: the connection {} with no answer: {text:?}",
            if closed { "was closed" } else { "stayed open" }
        );
    }
}
