//! Edge cases of HTTP/1.0 clients, from a review, on the fast path and on
//! hyper's (the same route with `"fast_path": false`): pipelined mixes of
//! HTTP/1.0 and 1.1 with and without keep-alive, hop-by-hop fields, answers
//! without a body, chunked answers with extensions and trailers, answers
//! cut or reset mid-body, back-pressure on a large answer, the
//! per-connection request limit, retries, the proxy's own answers,
//! requests the fast path leaves to hyper, interim answers, an HTTP/1.0
//! upstream, and the access log. The fast path passes a field's name on
//! as the client wrote it and hyper's path lowercases it: `X-Probe` tells
//! which path served a request.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::{After, Conn, RawRequest, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// How long a read may wait before the test calls it a hang.
const HANG: Duration = Duration::from_secs(5);

/// One route (`/app`) to `addr`, its fast path on or off.
fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    config["routes"][0]["match"] = json!({"path_prefix": "/app"});
    config["routes"][0]["fast_path"] = json!(fast_path);
    config
}

/// An HTTP/1.0 GET of `path` with `X-Probe: probe`, asking for keep-alive
/// or not.
fn get10(path: &str, probe: u32, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive {
        "Connection: keep-alive\r\n"
    } else {
        ""
    };
    format!("GET {path} HTTP/1.0\r\nHost: x\r\n{connection}X-Probe: {probe}\r\n\r\n").into_bytes()
}

/// An upstream answering `reply` to every request, a proxy to it on
/// [`config`] as `tweak` leaves it, and a client connection.
impl Conn {
    async fn open(fast_path: bool, reply: &'static [u8], tweak: impl FnOnce(&mut Value)) -> Conn {
        let config = |addr| {
            let mut config = config(addr, fast_path);
            tweak(&mut config);
            config
        };
        Conn::to(reply, config).await
    }

    async fn response(&mut self, head: bool) -> RawResponse {
        support::read_response(&mut self.stream, &mut self.buf, head).await
    }

    /// Everything until the proxy closes (true) or [`HANG`] passes.
    async fn rest(&mut self) -> (Vec<u8>, bool) {
        let (rest, closed) = support::read_until_close(&mut self.stream, HANG).await;
        let mut all = std::mem::take(&mut self.buf);
        all.extend_from_slice(&rest);
        (all, closed)
    }
}

/// The request heads a raw upstream read, in order.
type Heads = Arc<std::sync::Mutex<Vec<String>>>;

/// Reads a request head off `stream` into `heads`; false at the end.
async fn record_head(stream: &mut TcpStream, heads: &Heads) -> bool {
    let head = support::read_head(stream).await;
    if head.is_empty() {
        return false;
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    heads.lock().expect("not poisoned").push(head);
    true
}

/// Whether every head in `heads` (at least one) was sent by the path
/// asked for.
fn all_by(heads: &Heads, fast_path: bool) -> bool {
    let heads = heads.lock().expect("not poisoned");
    !heads.is_empty()
        && heads
            .iter()
            .all(|h| h.contains("\r\nX-Probe: ") == fast_path)
}

/// Whether the fast path served `request` (it kept `X-Probe`'s case).
fn fast(request: &RawRequest) -> bool {
    request.head.contains("\r\nX-Probe: ")
}

/// The `X-Probe` values the upstream saw, in order.
fn probes(requests: &[RawRequest]) -> Vec<String> {
    requests
        .iter()
        .flat_map(|r| support::header_values(&r.head, "x-probe"))
        .collect()
}

/// Whether a head says its connection stays.
fn says_keep_alive(head: &str) -> bool {
    support::header_values(head, "connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("keep-alive"))
}

/// Consecutive whole responses at the start of `bytes` (`heads[i]`: the
/// i-th answers a HEAD), and how many bytes follow them.
fn responses(mut bytes: &[u8], heads: &[bool]) -> (Vec<RawResponse>, usize) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let is_head = heads.get(out.len()).copied().unwrap_or(false);
        let Some((response, used)) = support::parse_response(bytes, is_head) else {
            break;
        };
        out.push(response);
        bytes = &bytes[used..];
    }
    (out, bytes.len())
}

#[tokio::test]
async fn a_pipelined_mix_ends_exactly_after_the_first_http10_answer_without_keep_alive() {
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, OK, |_| {}).await;
        let mut pipeline = get10("/app/a", 1, true);
        pipeline.extend_from_slice(b"GET /app/b HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n");
        pipeline.extend_from_slice(&get10("/app/c", 3, false));
        pipeline.extend_from_slice(b"GET /app/d HTTP/1.1\r\nHost: x\r\nX-Probe: 4\r\n\r\n");
        pipeline.extend_from_slice(&get10("/app/e", 5, true));
        conn.send(&pipeline).await;
        let (bytes, closed) = conn.rest().await;
        assert!(closed, "fast path {fast_path}: the connection stayed open");
        let (answers, left) = responses(&bytes, &[]);
        assert_eq!(answers.len(), 3, "fast path {fast_path}: {bytes:?}");
        assert_eq!(
            left, 0,
            "fast path {fast_path}: bytes after the last answer"
        );
        assert!(answers.iter().all(|a| a.status == 200 && a.body == b"ok"));
        assert!(says_keep_alive(&answers[0].head), "{:?}", answers[0].head);
        assert!(!says_keep_alive(&answers[2].head), "{:?}", answers[2].head);
        let seen = conn.upstream.requests();
        // Nothing after the request that closes goes upstream.
        assert_eq!(probes(&seen), ["1", "2", "3"], "fast path {fast_path}");
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
    }
}

#[tokio::test]
async fn a_chunked_answer_to_a_pipelined_http10_keep_alive_ends_the_connection_there() {
    for fast_path in [true, false] {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut conn = Conn::open(fast_path, chunked, |_| {}).await;
        let mut pipeline = get10("/app/a", 1, true);
        pipeline.extend_from_slice(&get10("/app/b", 2, true));
        pipeline.extend_from_slice(b"GET /app/c HTTP/1.1\r\nHost: x\r\nX-Probe: 3\r\n\r\n");
        conn.send(&pipeline).await;
        let (bytes, closed) = conn.rest().await;
        // The body can only end with the connection: what follows it is
        // never served.
        assert!(closed, "fast path {fast_path}: the connection stayed open");
        let (head, body) = support::split_head(&bytes);
        assert!(head.contains(" 200 "), "{head}");
        assert!(support::header_values(&head, "transfer-encoding").is_empty());
        assert!(!says_keep_alive(&head), "fast path {fast_path}: {head}");
        assert_eq!(body, b"abc", "fast path {fast_path}");
        let seen = conn.upstream.requests();
        assert_eq!(probes(&seen), ["1"], "fast path {fast_path}");
    }
}

#[tokio::test]
async fn keep_alive_fields_from_an_http10_client_never_go_upstream() {
    let heads: [&[u8]; 3] = [
        b"GET /app/1 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\nX-Probe: 1\r\n\r\n",
        b"GET /app/2 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive, X-Foo\r\nX-Foo: secret\r\nX-Probe: 2\r\n\r\n",
        b"GET /app/3 HTTP/1.0\r\nHost: x\r\nConnection: X-Foo\r\nConnection: Keep-Alive\r\nX-Foo: secret\r\nX-Probe: 3\r\n\r\n",
    ];
    for (n, head) in heads.into_iter().enumerate() {
        for fast_path in [true, false] {
            // A plain request first: a connection the fast path serves
            // goes on to serve a head it leaves to hyper.
            let mut conn = Conn::open(fast_path, OK, |_| {}).await;
            conn.send(&get10("/app/0", 0, true)).await;
            assert!(says_keep_alive(&conn.response(false).await.head));
            conn.send(head).await;
            let answer = conn.response(false).await;
            assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
            assert!(
                says_keep_alive(&answer.head),
                "fast path {fast_path}: {:?}",
                answer.head
            );
            // The connection serves on, as the answer said.
            conn.send(&get10("/app/9", 9, false)).await;
            let answer = conn.response(false).await;
            assert_eq!(answer.status, 200);
            let seen = conn.upstream.requests();
            let probe = (n + 1).to_string();
            assert_eq!(probes(&seen), ["0", &probe, "9"], "fast path {fast_path}");
            assert_eq!(fast(&seen[0]), fast_path);
            for request in &seen {
                for name in ["keep-alive", "x-foo", "connection"] {
                    assert!(
                        support::header_values(&request.head, name).is_empty(),
                        "fast path {fast_path}: {name} went on: {}",
                        request.head
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn close_in_another_connection_field_wins_over_keep_alive() {
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, OK, |_| {}).await;
        let mut pipeline = b"GET /app/1 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\nX-Probe: 1\r\n\r\n".to_vec();
        pipeline.extend_from_slice(&get10("/app/2", 2, true));
        conn.send(&pipeline).await;
        let (bytes, closed) = conn.rest().await;
        assert!(closed, "fast path {fast_path}: the connection stayed open");
        let (answers, left) = responses(&bytes, &[]);
        assert_eq!((answers.len(), left), (1, 0), "fast path {fast_path}");
        assert!(!says_keep_alive(&answers[0].head), "{:?}", answers[0].head);
        assert_eq!(probes(&conn.upstream.requests()), ["1"], "{fast_path}");
    }
}

#[tokio::test]
async fn answers_without_a_body_keep_an_http10_keep_alive_connection() {
    let cases: [(&'static [u8], bool); 4] = [
        (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\netag: \"e\"\r\n\r\n",
            false,
        ),
        // A HEAD's answer of an unknown length: still no body to delimit.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            true,
        ),
        (b"HTTP/1.0 200 OK\r\n\r\n", true),
    ];
    for (reply, head) in cases {
        for fast_path in [true, false] {
            let mut conn = Conn::open(fast_path, reply, |_| {}).await;
            let method = if head { "HEAD" } else { "GET" };
            for probe in 1..=2 {
                let request = format!(
                    "{method} /app HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nX-Probe: {probe}\r\n\r\n"
                );
                conn.send(request.as_bytes()).await;
                let answer = conn.response(head).await;
                let what = format!("fast path {fast_path}, {reply:?}: {:?}", answer.head);
                assert!(says_keep_alive(&answer.head), "{what}");
                assert!(answer.header("transfer-encoding").is_empty(), "{what}");
            }
            // Nothing followed either head: no body, no framing.
            assert!(conn.buf.is_empty(), "{:?}", conn.buf);
            let seen = conn.upstream.requests();
            assert_eq!(probes(&seen), ["1", "2"]);
            assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
        }
    }
}

/// A raw upstream that reads one request head per connection and then
/// writes `pieces` one write each (with `TCP_NODELAY`, so that the proxy
/// reads them in several parts), then closes.
async fn piecewise_upstream(pieces: &'static [&'static [u8]]) -> (SocketAddr, Heads) {
    let heads = Heads::default();
    let seen = heads.clone();
    let addr = support::raw_upstream(move |mut stream| {
        let seen = seen.clone();
        async move {
            stream.set_nodelay(true).expect("nodelay");
            if !record_head(&mut stream, &seen).await {
                return;
            }
            for piece in pieces {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    (addr, heads)
}

#[tokio::test]
async fn chunk_extensions_and_trailers_never_reach_an_http10_client() {
    const PIECES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;name=\"va",
        b"lue\";x\r\nhel",
        b"lo\r\n0",
        b"06\r\n, worl\r\n1 ; e\r\nd\r",
        b"\n0;last\r\nX-Sum: 1",
        b"23\r\nX-More: 4\r\n\r\n",
    ];
    for fast_path in [true, false] {
        let (addr, heads) = piecewise_upstream(PIECES).await;
        let proxy = support::proxy(&config(addr, fast_path));
        let (bytes, closed) =
            support::raw_exchange_until_close(proxy.addr, &get10("/app", 1, true), HANG).await;
        assert!(closed, "fast path {fast_path}: the connection stayed open");
        let (head, body) = support::split_head(&bytes);
        assert!(head.contains(" 200 "), "{head}");
        assert!(support::header_values(&head, "transfer-encoding").is_empty());
        assert!(support::header_values(&head, "x-sum").is_empty(), "{head}");
        assert_eq!(
            String::from_utf8_lossy(body),
            "hello, world",
            "fast path {fast_path}"
        );
        assert!(all_by(&heads, fast_path), "{heads:?}");
    }
}

/// A raw upstream that answers one request with `answer`, then waits for
/// `go` and ends the connection: with a reset (`reset`) or a FIN.
async fn cutting_upstream(
    answer: &'static [u8],
    reset: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedSender<()>, Heads) {
    let (go, ready) = tokio::sync::mpsc::unbounded_channel::<()>();
    let ready = Arc::new(tokio::sync::Mutex::new(ready));
    let heads = Heads::default();
    let seen = heads.clone();
    let addr = support::raw_upstream(move |mut stream| {
        let (ready, seen) = (ready.clone(), seen.clone());
        async move {
            if !record_head(&mut stream, &seen).await {
                return;
            }
            if stream.write_all(answer).await.is_err() {
                return;
            }
            ready.lock().await.recv().await;
            if reset {
                let _ = stream.set_zero_linger();
            } else {
                let _ = stream.shutdown().await;
            }
        }
    })
    .await;
    (addr, go, heads)
}

/// Sends an HTTP/1.0 keep-alive GET through a proxy to `addr`, reads
/// until the body starts with `expected`, tells the upstream to cut (`go`),
/// and reads on until the close: the head and the body the client got, and
/// whether the connection ended with a reset.
async fn cut_exchange(
    addr: SocketAddr,
    fast_path: bool,
    go: &tokio::sync::mpsc::UnboundedSender<()>,
    expected: &[u8],
) -> (String, Vec<u8>, bool) {
    let proxy = support::proxy(&config(addr, fast_path));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(&get10("/app", 1, true))
        .await
        .expect("write");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            if bytes[at + 4..].starts_with(expected) {
                break;
            }
        }
        let n = tokio::time::timeout(HANG, stream.read(&mut chunk))
            .await
            .expect("the body's first part within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "fast path {fast_path}: closed early: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
    go.send(()).expect("upstream waiting");
    let reset = loop {
        match tokio::time::timeout(HANG, stream.read(&mut chunk)).await {
            Err(_) => panic!("fast path {fast_path}: the connection stayed open"),
            Ok(Ok(0)) => break false,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                break true;
            }
        }
    };
    let (head, body) = support::split_head(&bytes);
    (head, body.to_vec(), reset)
}

#[tokio::test]
async fn a_chunked_answer_cut_mid_body_reaches_an_http10_client_short_and_closed() {
    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc";
    for reset in [false, true] {
        for fast_path in [true, false] {
            let (addr, go, heads) = cutting_upstream(ANSWER, reset).await;
            let (head, body, client_reset) =
                cut_exchange(addr, fast_path, &go, b"0123456789abc").await;
            // Delimited by the close, the body cannot say it is short: the
            // connection is reset, so the client knows (a FIN would say the
            // body is whole); nothing is made up.
            assert!(
                client_reset,
                "fast path {fast_path}, upstream reset {reset}: ended with a FIN"
            );
            assert!(!says_keep_alive(&head), "fast path {fast_path}: {head}");
            assert!(support::header_values(&head, "transfer-encoding").is_empty());
            assert_eq!(
                body, b"0123456789abc",
                "fast path {fast_path}, reset {reset}"
            );
            assert!(all_by(&heads, fast_path), "{heads:?}");
        }
    }
}

#[tokio::test]
async fn a_close_delimited_answer_reset_by_the_upstream_ends_the_http10_connection() {
    const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nX-Up: 1\r\n\r\npartial";
    for fast_path in [true, false] {
        let (addr, go, heads) = cutting_upstream(ANSWER, true).await;
        let (head, body, reset) = cut_exchange(addr, fast_path, &go, b"partial").await;
        assert!(
            reset,
            "fast path {fast_path}: ended with a FIN, as if whole"
        );
        assert!(!says_keep_alive(&head), "fast path {fast_path}: {head}");
        assert_eq!(support::header_values(&head, "x-up"), ["1"]);
        assert_eq!(body, b"partial", "fast path {fast_path}");
        assert!(all_by(&heads, fast_path), "{heads:?}");
    }
}

/// The bytes of a large body: position `i` holds `i % 251`.
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

#[tokio::test]
async fn a_large_chunked_answer_to_a_stalled_http10_client_is_not_read_far_ahead() {
    const TOTAL: u64 = 64 << 20;
    const CHUNK: u64 = 64 << 10;
    for fast_path in [true, false] {
        // Small kernel buffers at both ends (an accepted socket takes its
        // listener's), so that what is in flight is mostly the proxy's.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(64 << 10).expect("sndbuf");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let listener = socket.listen(16).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let heads = Heads::default();
        let seen = heads.clone();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            if !record_head(&mut stream, &seen).await {
                return;
            }
            let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let mut at = 0;
            while at < TOTAL {
                let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
                chunk.extend((at..at + CHUNK).map(pattern_byte));
                chunk.extend_from_slice(b"\r\n");
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
                at += CHUNK;
                counter.store(at, Ordering::SeqCst);
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        });
        let proxy = support::proxy(&config(addr, fast_path));
        let client = TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(64 << 10).expect("rcvbuf");
        let mut stream = client.connect(proxy.addr).await.expect("connect");
        stream
            .write_all(&get10("/app", 1, true))
            .await
            .expect("write");

        // The client reads nothing: the upstream's writes must stall.
        let mut last = u64::MAX;
        let start = tokio::time::Instant::now();
        loop {
            let now = written.load(Ordering::SeqCst);
            if now == last && now > 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fast path {fast_path}: never stalled ({now} bytes)"
            );
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            last < 16 << 20,
            "fast path {fast_path}: {last} bytes read ahead of a client reading none"
        );

        // Then every byte comes, decoded, and the connection ends.
        let (bytes, closed) = support::read_until_close(&mut stream, Duration::from_secs(60)).await;
        assert!(closed, "fast path {fast_path}");
        let (head, body) = support::split_head(&bytes);
        assert!(support::header_values(&head, "transfer-encoding").is_empty());
        assert_eq!(body.len() as u64, TOTAL, "fast path {fast_path}");
        let wrong = body
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern_byte(i as u64));
        assert_eq!(wrong, None, "fast path {fast_path}");
        assert!(all_by(&heads, fast_path), "{heads:?}");
    }
}

#[tokio::test]
async fn max_requests_per_connection_ends_an_http10_keep_alive_connection() {
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, OK, |config| {
            config["limits"] = json!({"max_requests_per_connection": 2});
        })
        .await;
        let mut pipeline = get10("/app/1", 1, true);
        pipeline.extend_from_slice(&get10("/app/2", 2, true));
        pipeline.extend_from_slice(&get10("/app/3", 3, true));
        conn.send(&pipeline).await;
        let (bytes, closed) = conn.rest().await;
        assert!(closed, "fast path {fast_path}: the connection stayed open");
        let (answers, left) = responses(&bytes, &[]);
        assert_eq!((answers.len(), left), (2, 0), "fast path {fast_path}");
        assert!(says_keep_alive(&answers[0].head), "{:?}", answers[0].head);
        // The last answer must not promise a connection that then ends.
        assert!(
            !says_keep_alive(&answers[1].head),
            "fast path {fast_path}: {:?}",
            answers[1].head
        );
        let seen = conn.upstream.requests();
        assert_eq!(probes(&seen), ["1", "2"]);
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
    }
}

#[tokio::test]
async fn a_retried_http10_request_keeps_its_connection_rule() {
    for fast_path in [true, false] {
        // Every other request read is answered by a reset (the first
        // included), the others with OK.
        let tries = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, log) = (tries.clone(), seen.clone());
        let addr = support::raw_upstream(move |mut stream| {
            let (counter, log) = (counter.clone(), log.clone());
            async move {
                loop {
                    let head = support::read_head(&mut stream).await;
                    if head.is_empty() {
                        return;
                    }
                    log.lock()
                        .expect("not poisoned")
                        .push(String::from_utf8_lossy(&head).into_owned());
                    if counter.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    if stream.write_all(OK).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        let retries = json!({"attempts": 1, "on": ["reset", "503"]});
        let proxy = support::proxy(&support::retry_config("r", &[addr], retries, fast_path));
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let mut buf = Vec::new();
        for probe in 1..=2 {
            stream
                .write_all(&get10("/", probe, true))
                .await
                .expect("write");
            let answer = support::read_response(&mut stream, &mut buf, false).await;
            assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
            assert!(says_keep_alive(&answer.head), "{:?}", answer.head);
        }
        stream
            .write_all(&get10("/", 3, false))
            .await
            .expect("write");
        let (bytes, closed) = support::read_until_close(&mut stream, HANG).await;
        buf.extend_from_slice(&bytes);
        assert!(closed, "fast path {fast_path}");
        let (answers, left) = responses(&buf, &[]);
        assert_eq!((answers.len(), left), (1, 0), "fast path {fast_path}");
        assert_eq!(answers[0].status, 200);
        assert!(!says_keep_alive(&answers[0].head));
        // Each request was tried twice, each try as HTTP/1.1.
        let heads = seen.lock().expect("not poisoned").clone();
        assert_eq!(heads.len(), 6, "fast path {fast_path}: {heads:?}");
        assert!(heads.iter().all(|h| h.starts_with("GET / HTTP/1.1\r\n")));
        assert!(heads
            .iter()
            .all(|h| h.contains("\r\nX-Probe: ") == fast_path));
    }
}

#[tokio::test]
async fn the_proxys_502_and_504_to_an_http10_client_say_what_the_connection_does() {
    let (_refusing, dead) = support::refusing_addr();
    let hang = support::scripted_upstream(b"", After::Hang).await;
    for (addr, status) in [(dead, 502), (hang.addr, 504)] {
        for fast_path in [true, false] {
            let mut config = config(addr, fast_path);
            config["timeouts"]["response_header"] = json!("300ms");
            // The one endpoint stays in: each request gets the same failure.
            config["pools"]["web"]["outlier_detection"] = json!({"consecutive_failures": 0});
            let proxy = support::proxy(&config);
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            let mut buf = Vec::new();
            stream
                .write_all(&get10("/app", 1, true))
                .await
                .expect("write");
            let answer = support::read_response(&mut stream, &mut buf, false).await;
            assert_eq!(answer.status, status, "fast path {fast_path}");
            if says_keep_alive(&answer.head) {
                // Said to stay: it must serve the next request.
                stream
                    .write_all(&get10("/app", 2, true))
                    .await
                    .expect("write");
                let next = support::read_response(&mut stream, &mut buf, false).await;
                assert_eq!(next.status, status);
            } else {
                let (rest, closed) = support::read_until_close(&mut stream, HANG).await;
                assert!(
                    closed && rest.is_empty() && buf.is_empty(),
                    "fast path {fast_path}: {:?} not said to stay, yet open",
                    answer.head
                );
            }

            // Without keep-alive, the answer ends the connection.
            let (bytes, closed) =
                support::raw_exchange_until_close(proxy.addr, &get10("/app", 3, false), HANG).await;
            assert!(closed, "fast path {fast_path}");
            let (answers, left) = responses(&bytes, &[]);
            assert_eq!((answers.len(), left), (1, 0), "fast path {fast_path}");
            assert_eq!(answers[0].status, status);
            assert!(!says_keep_alive(&answers[0].head), "{:?}", answers[0].head);
        }
    }
    let seen = hang.requests();
    assert_eq!(seen.iter().filter(|r| fast(r)).count(), 3, "{seen:?}");
}

#[tokio::test]
async fn an_http10_request_with_expect_gets_no_100_and_its_body_goes_on() {
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, OK, |_| {}).await;
        conn.send(&get10("/app/0", 0, true)).await;
        assert!(says_keep_alive(&conn.response(false).await.head));
        conn.send(
            b"POST /app/up HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\
              Content-Length: 5\r\nX-Probe: 1\r\n\r\n",
        )
        .await;
        conn.send(b"hello").await;
        // No 1xx to an HTTP/1.0 client (RFC 9110 §15.2): the final answer
        // comes first.
        let answer = conn.response(false).await;
        assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
        assert!(says_keep_alive(&answer.head), "{:?}", answer.head);
        conn.send(&get10("/app/next", 2, false)).await;
        let answer = conn.response(false).await;
        assert_eq!(answer.status, 200);
        let seen = conn.upstream.requests();
        assert_eq!(probes(&seen), ["0", "1", "2"], "fast path {fast_path}");
        // The fast path serves it (the expectation ignored), and the
        // connection stays on it; the upstream never sees the `Expect`.
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
        assert!(support::header_values(&seen[1].head, "expect").is_empty());
        assert_eq!(seen[1].body, b"hello");
    }
}

#[tokio::test]
async fn an_http10_chunked_request_is_refused_and_nothing_after_it_goes_upstream() {
    let heads: [&[u8]; 2] = [
        b"POST /app/up HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nX-Probe: 1\r\n\r\n",
        b"POST /app/up HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nX-Probe: 1\r\n\r\n",
    ];
    for head in heads {
        for fast_path in [true, false] {
            let mut conn = Conn::open(fast_path, OK, |_| {}).await;
            let mut bytes = get10("/app/0", 0, true);
            bytes.extend_from_slice(head);
            // A body that, read as chunked, hides a request.
            bytes.extend_from_slice(
                b"0\r\n\r\nGET /app/smuggled HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\n\r\n",
            );
            bytes.extend_from_slice(&get10("/app/next", 3, true));
            conn.send(&bytes).await;
            let (bytes, closed) = conn.rest().await;
            assert!(closed, "fast path {fast_path}: the connection stayed open");
            let (answers, _) = responses(&bytes, &[]);
            assert_eq!(answers.len(), 2, "fast path {fast_path}: {bytes:?}");
            assert_eq!(answers[0].status, 200, "{:?}", answers[0].head);
            assert_eq!(answers[1].status, 400, "{:?}", answers[1].head);
            // Only the plain request went upstream.
            let seen = conn.upstream.requests();
            assert_eq!(probes(&seen), ["0"], "fast path {fast_path}: {seen:?}");
            assert_eq!(fast(&seen[0]), fast_path);
        }
    }
}

#[tokio::test]
async fn http10_requests_the_fast_path_leaves_to_hyper_follow_the_connection_rule() {
    let requests: [&[u8]; 2] = [
        b"GET http://x/app/abs HTTP/1.0\r\nConnection: keep-alive\r\nX-Probe: 1\r\n\r\n",
        b"GET /app/hostless HTTP/1.0\r\nConnection: keep-alive\r\nX-Probe: 1\r\n\r\n",
    ];
    for request in requests {
        let mut statuses = Vec::new();
        for fast_path in [true, false] {
            let mut conn = Conn::open(fast_path, OK, |_| {}).await;
            conn.send(&get10("/app/0", 0, true)).await;
            assert!(says_keep_alive(&conn.response(false).await.head));
            conn.send(request).await;
            let answer = conn.response(false).await;
            statuses.push(answer.status);
            if says_keep_alive(&answer.head) {
                conn.send(&get10("/app/next", 2, false)).await;
                assert_eq!(conn.response(false).await.status, 200);
            } else {
                let (rest, closed) = conn.rest().await;
                assert!(closed && rest.is_empty(), "{:?}: open", answer.head);
            }
            let seen = conn.upstream.requests();
            assert_eq!(fast(&seen[0]), fast_path);
            if answer.status == 200 {
                let line = seen[1].head.split("\r\n").next().unwrap_or_default();
                assert!(line.starts_with("GET /app/"), "{line}");
                assert!(line.ends_with(" HTTP/1.1"), "{line}");
            }
        }
        assert_eq!(statuses[0], statuses[1], "{request:?}: the paths differ");
    }
}

#[tokio::test]
async fn an_interim_answer_never_reaches_an_http10_client() {
    let replies: [&'static [u8]; 2] = [
        b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ];
    for reply in replies {
        for fast_path in [true, false] {
            let mut conn = Conn::open(fast_path, reply, |_| {}).await;
            conn.send(&get10("/app", 1, true)).await;
            let answer = conn.response(false).await;
            assert_eq!(answer.status, 200, "fast path {fast_path}: {answer:?}");
            assert_eq!(answer.body, b"ok");
            assert!(says_keep_alive(&answer.head));
            let seen = conn.upstream.requests();
            assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
        }
    }
}

#[tokio::test]
async fn an_http10_keep_alive_upstream_serves_an_http10_client_on_one_connection() {
    const REPLY: &[u8] =
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok";
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, REPLY, |_| {}).await;
        for probe in 1..=3 {
            conn.send(&get10("/app", probe, true)).await;
            let answer = conn.response(false).await;
            assert_eq!(answer.status, 200);
            // One Connection value, the proxy's; the upstream's Keep-Alive
            // is hop-by-hop.
            let connection: Vec<String> = answer
                .header("connection")
                .iter()
                .map(|v| v.to_ascii_lowercase())
                .collect();
            assert_eq!(connection, ["keep-alive"], "fast path {fast_path}");
            assert!(answer.header("keep-alive").is_empty(), "{:?}", answer.head);
        }
        let seen = conn.upstream.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
        assert_eq!(
            conn.upstream.accepted.load(Ordering::SeqCst),
            1,
            "fast path {fast_path}: the upstream's keep-alive was not used"
        );
    }
}

#[tokio::test]
async fn the_access_log_says_http10_on_both_paths() {
    let stable = support::upstream("stable").await;
    let dir = support::scratch_dir("http10-edges-log");
    let log = dir.join("access.log");
    let file = dir.join("config.json");
    let route = |name: &str, prefix: &str, fast_path: bool| {
        json!({"name": name, "match": {"path_prefix": prefix}, "fast_path": fast_path,
               "split": {"baseline": "stable", "weights": {"stable": 10000}}})
    };
    let config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [stable.addr.to_string()]}},
        "routes": [route("fast", "/fast", true), route("slow", "/slow", false)],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
        "access_log": {"path": log.to_str().expect("UTF-8")},
    });
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let mut buf = Vec::new();
    for path in ["/fast/ka", "/slow/ka", "/nowhere/ka"] {
        stream
            .write_all(&get10(path, 1, true))
            .await
            .expect("write");
        let answer = support::read_response(&mut stream, &mut buf, false).await;
        assert!(says_keep_alive(&answer.head), "{path}: {:?}", answer.head);
    }
    stream
        .write_all(b"GET /fast/eleven HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200);
    for path in ["/fast/close", "/slow/close"] {
        let (bytes, closed) =
            support::raw_exchange_until_close(proxy, &get10(path, 1, false), HANG).await;
        assert!(closed && bytes.starts_with(b"HTTP/1."), "{path}");
    }

    let lines = support::wait_for_json_lines(&log, 6).await;
    let protocol = |target: &str| {
        let line = lines
            .iter()
            .find(|l| l["target"] == target)
            .unwrap_or_else(|| panic!("no line for {target}: {lines:#?}"));
        line["protocol"].as_str().unwrap_or_default().to_string()
    };
    for target in [
        "/fast/ka",
        "/slow/ka",
        "/nowhere/ka",
        "/fast/close",
        "/slow/close",
    ] {
        assert_eq!(protocol(target), "HTTP/1.0", "{target}");
    }
    assert_eq!(protocol("/fast/eleven"), "HTTP/1.1");
}
