//! Edge cases of chunked request bodies on HTTP/1.1's fast path, most of
//! them checked against hyper's path (the same route with
//! `"fast_path": false`), which is the reference: size spellings, the
//! 64 KiB and `max_body_bytes` edges, `Transfer-Encoding` spellings and
//! lists, ambiguous framing, HTTP/1.0, clients that stall or leave
//! mid-body, pipelining, retries, HEAD and GET with bodies, upstreams
//! that answer early, and the response framing. The fast path passes a
//! field's name on as the client wrote it and hyper's path lowercases it:
//! `X-Probe` tells which path served a request.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::{After, Conn, RawRequest, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// An answer without a body, for HEAD as for GET.
const EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
/// A chunked upload's head, with `X-Probe` to tell the paths apart.
const UPLOAD: &[u8] =
    b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
/// A plain request, to see the connection serve on after another; the
/// proxy closes the connection after it.
const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\nConnection: close\r\n\r\n";
/// How long a read may wait before the test calls it a hang.
const HANG: Duration = Duration::from_secs(3);

/// One route to `addr` for `Host: x`, its fast path on or off.
fn config(addr: SocketAddr, fast_path: bool) -> Value {
    let mut config = support::pool_config("web", addr, json!({}));
    let route = json!({"fast_path": fast_path, "match": {"host": "x"}});
    if let (Some(to), Value::Object(from)) = (config["routes"][0].as_object_mut(), route) {
        to.extend(from);
    }
    config
}

/// This file's ways with a [`Conn`] (a trait: tests/http10_edges.rs has
/// its own `open` and `response`, and both are modules of one test crate).
trait ChunkedConn: Sized {
    /// An upstream answering `reply` to every request, a proxy to it on
    /// [`config`] as `tweak` leaves it, and a client connection.
    async fn open(fast_path: bool, reply: &'static [u8], tweak: impl FnOnce(&mut Value)) -> Self;

    /// The next response (a HEAD's if `head`), or None if the connection
    /// ends or nothing whole comes within [`HANG`].
    async fn response(&mut self, head: bool) -> Option<RawResponse>;

    /// The statuses of every response until the proxy closes the
    /// connection or [`HANG`] passes (HEAD answers told by `heads`).
    async fn statuses_until_close(&mut self, heads: &[bool]) -> Vec<u16>;
}

impl ChunkedConn for Conn {
    async fn open(fast_path: bool, reply: &'static [u8], tweak: impl FnOnce(&mut Value)) -> Conn {
        let config = |addr| {
            let mut config = config(addr, fast_path);
            tweak(&mut config);
            config
        };
        Conn::to(reply, config).await
    }

    async fn response(&mut self, head: bool) -> Option<RawResponse> {
        next_response(&mut self.stream, &mut self.buf, head).await
    }

    async fn statuses_until_close(&mut self, heads: &[bool]) -> Vec<u16> {
        let (rest, _) = support::read_until_close(&mut self.stream, HANG).await;
        self.buf.extend_from_slice(&rest);
        support::parse_responses(&self.buf, heads)
            .iter()
            .map(|r| r.status)
            .collect()
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

async fn next_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: bool,
) -> Option<RawResponse> {
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((response, used)) = support::parse_response(buf, head) {
                buf.drain(..used);
                return Some(response);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(HANG, read).await.ok().flatten()
}

/// Whether the fast path served `request` (it kept `X-Probe`'s case).
fn fast(request: &RawRequest) -> bool {
    request.head.contains("\r\nX-Probe: ")
}

/// The body the upstream received, decoded if it came chunked.
fn body_of(request: &RawRequest) -> Vec<u8> {
    match support::header_values(&request.head, "transfer-encoding").is_empty() {
        true => request.body.clone(),
        false => {
            support::decode_chunked(&request.body)
                .expect("a whole chunked body")
                .0
        }
    }
}

/// What one client sending `bytes` on a fresh connection made of it: the
/// statuses it got until the proxy closed or went quiet, and for each
/// request the upstream got, its target, decoded body and whether the
/// fast path served it.
#[derive(Debug, PartialEq)]
struct Seen {
    statuses: Vec<u16>,
    forwarded: Vec<(String, Vec<u8>, bool)>,
    /// Each forwarded head's `transfer-encoding` and `content-length`.
    framing: Vec<(Vec<String>, Vec<String>)>,
}

async fn outcome(fast_path: bool, tweak: impl FnOnce(&mut Value), bytes: &[u8]) -> Seen {
    let mut conn = Conn::open(fast_path, OK, tweak).await;
    conn.send(bytes).await;
    let statuses = conn.statuses_until_close(&[]).await;
    let requests = conn.upstream.requests();
    let framing = requests
        .iter()
        .map(|r| {
            let values = |name| support::header_values(&r.head, name);
            (values("transfer-encoding"), values("content-length"))
        })
        .collect();
    let forwarded = requests
        .iter()
        .map(|r| {
            let target = r.head.split(' ').nth(1).unwrap_or("").to_string();
            (target, body_of(r), fast(r))
        })
        .collect();
    Seen {
        statuses,
        forwarded,
        framing,
    }
}

/// [`outcome`] on the fast path's route and on hyper's, with the paths
/// forgotten: the two must agree. Returns the fast route's.
async fn alike(tweak: impl Fn(&mut Value), bytes: &[u8], what: &str) -> Seen {
    let on_fast = outcome(true, &tweak, bytes).await;
    let on_hyper = outcome(false, &tweak, bytes).await;
    let blind = |seen: &Seen| {
        let forwarded: Vec<_> = seen
            .forwarded
            .iter()
            .map(|(t, b, _)| (t.clone(), b.clone()))
            .collect();
        (seen.statuses.clone(), forwarded)
    };
    assert_eq!(
        blind(&on_fast),
        blind(&on_hyper),
        "{what}: fast route vs hyper's"
    );
    on_fast
}

/// A single chunk of `data`, then the last chunk.
fn one_chunk(data: &[u8]) -> Vec<u8> {
    [
        format!("{:x}\r\n", data.len()).as_bytes(),
        data,
        b"\r\n0\r\n\r\n",
    ]
    .concat()
}

/// `UPLOAD` with `body`, then [`NEXT`] pipelined.
fn upload_then_next(body: &[u8]) -> Vec<u8> {
    [UPLOAD, body, NEXT].concat()
}

/// A 1 s idle timeout (the body timeout) on top of the test's config.
fn idle_1s(config: &mut Value) {
    config["timeouts"]["idle"] = json!("1s");
}

#[tokio::test]
async fn the_last_chunk_arriving_byte_by_byte_is_read_whole_on_the_fast_path() {
    let mut conn = Conn::open(true, OK, |_| {}).await;
    conn.send(&[UPLOAD, b"5\r\nhello\r\n"].concat()).await;
    for byte in b"0\r\n\r\n" {
        conn.send(&[*byte]).await;
    }
    let response = conn.response(false).await.expect("an answer");
    assert_eq!(response.status, 200);
    conn.send(NEXT).await;
    assert_eq!(conn.response(false).await.map(|r| r.status), Some(200));
    let seen = conn.upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(fast), "{seen:?}");
    assert_eq!(body_of(&seen[0]), b"hello");
    assert_eq!(
        support::header_values(&seen[0].head, "content-length"),
        ["5"]
    );
}

#[tokio::test]
async fn a_body_written_a_byte_at_a_time_is_forwarded_decoded_once() {
    let body = b"3\r\nabc\r\n0004\r\ndefg\r\n0\r\n\r\n";
    let mut conn = Conn::open(true, OK, |_| {}).await;
    conn.send(UPLOAD).await;
    for byte in body {
        conn.send(&[*byte]).await;
    }
    assert_eq!(conn.response(false).await.map(|r| r.status), Some(200));
    let seen = conn.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(fast(&seen[0]), "{seen:?}");
    assert_eq!(body_of(&seen[0]), b"abcdefg");
}

#[tokio::test]
async fn chunk_size_spellings_both_paths_take_are_served_alike_and_fast() {
    let zeros = [&[b'0'; 300][..], b"5\r\nhello\r\n0\r\n\r\n"].concat();
    let framing_in_data = b"9\r\n\r\n0\r\n\r\nab\r\n0\r\n\r\n";
    let cases: [(&str, &[u8], &[u8]); 9] = [
        ("300 leading zeros", &zeros, b"hello"),
        (
            "framing inside the data",
            framing_in_data,
            b"\r\n0\r\n\r\nab",
        ),
        ("leading zeros", b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),
        (
            "many leading zeros",
            b"000000000000000000000000005\r\nhello\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            "upper-case hex",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"0123456789",
        ),
        (
            "a space after the size",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            "a tab after the size",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"hello",
        ),
        ("a last chunk of zeros", b"2\r\nhi\r\n000\r\n\r\n", b"hi"),
        ("an empty body", b"0\r\n\r\n", b""),
    ];
    for (what, body, data) in cases {
        let seen = alike(|_| {}, &upload_then_next(body), what).await;
        assert_eq!(seen.statuses, [200, 200], "{what}");
        assert_eq!(seen.forwarded[0].1, data, "{what}");
        assert!(seen.forwarded.iter().all(|f| f.2), "{what}: {seen:?}");
        // Decoded, with its length, and no transfer coding.
        let length = data.len().to_string();
        assert_eq!(seen.framing[0], (vec![], vec![length]), "{what}");
    }
}

#[tokio::test]
async fn ten_thousand_one_byte_chunks_decode_alike_on_both_paths() {
    let data: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut body: Vec<u8> = data
        .iter()
        .flat_map(|b| [b'1', b'\r', b'\n', *b, b'\r', b'\n'])
        .collect();
    body.extend_from_slice(b"0\r\n\r\n");
    let seen = alike(|_| {}, &upload_then_next(&body), "10,000 chunks").await;
    assert_eq!(seen.statuses, [200, 200]);
    assert!(seen.forwarded[0].1 == data, "the data differs");
    assert!(seen.forwarded[0].2, "the fast path's");
}

#[tokio::test]
async fn framing_the_fast_path_does_not_take_is_answered_as_hyper_answers_it() {
    let cases: [(&str, &[u8]); 8] = [
        (
            "more chunks after the last",
            b"0\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("a trailer line without a colon", b"0\r\nnocolon\r\n\r\n"),
        ("a space before the size", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("a 0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF after the data", b"5\r\nhello\n0\r\n\r\n"),
        ("a size with no digits", b"\r\nhello\r\n0\r\n\r\n"),
        ("data shorter than its size", b"6\r\nhello\r\n0\r\n\r\n"),
        ("an empty extension", b"5;\r\nhello\r\n0\r\n\r\n"),
    ];
    for (what, body) in cases {
        let seen = alike(|_| {}, &[UPLOAD, body].concat(), what).await;
        assert!(!seen.statuses.is_empty(), "{what}: no answer");
    }
}

/// One chunk whose framing makes the body `wire` bytes on the wire.
fn body_of_wire_size(wire: usize) -> (Vec<u8>, Vec<u8>) {
    // 4 hex digits of size, its CRLF, the data's CRLF and `0\r\n\r\n`.
    let data = vec![b'q'; wire - 13];
    let body = one_chunk(&data);
    assert_eq!(body.len(), wire);
    (body, data)
}

#[tokio::test]
async fn a_body_of_64_kib_on_the_wire_and_one_more_byte_are_the_fast_paths() {
    // One byte over the read-ahead size was hyper's; it now stays on the
    // fast path (decoded if it ended in the read that went over, else
    // streamed chunked).
    for (wire, on_fast) in [(64 * 1024, true), (64 * 1024 + 1, true)] {
        let (body, data) = body_of_wire_size(wire);
        let seen = alike(|_| {}, &upload_then_next(&body), &format!("{wire} bytes")).await;
        assert_eq!(seen.statuses, [200, 200], "{wire}");
        assert_eq!(seen.forwarded.len(), 2, "{wire}");
        assert!(seen.forwarded[0].1 == data, "{wire}: body differs");
        assert_eq!(seen.forwarded[0].2, on_fast, "{wire}: which path");
    }
}

#[tokio::test]
async fn decoded_data_of_exactly_max_body_bytes_is_served_and_one_more_byte_is_413() {
    let limited = |config: &mut Value| config["limits"] = json!({"max_body_bytes": 16});
    // 16 bytes in two chunks, then 17.
    let exact = b"8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n";
    let seen = alike(limited, &upload_then_next(exact), "16 bytes").await;
    assert_eq!(seen.statuses, [200, 200]);
    assert!(seen.forwarded[0].2, "the fast path's: {seen:?}");
    assert_eq!(seen.forwarded[0].1, b"0123456789abcdef");
    let over = b"8\r\n01234567\r\n9\r\n89abcdefg\r\n0\r\n\r\n";
    let seen = alike(limited, &[UPLOAD, over].concat(), "17 bytes").await;
    assert_eq!(seen.statuses, [413]);
    assert!(seen.forwarded.is_empty(), "{seen:?}");
}

/// An upload whose `Transfer-Encoding` lines are `fields`, with a
/// pipelined [`NEXT`].
fn upload_with_fields(fields: &str) -> Vec<u8> {
    let head = format!("POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\n{fields}\r\n");
    [head.as_bytes(), b"5\r\nhello\r\n0\r\n\r\n", NEXT].concat()
}

#[tokio::test]
async fn transfer_encoding_spellings_are_served_as_hyper_serves_them() {
    // (fields, whether the fast path keeps it)
    let cases = [
        ("Transfer-Encoding: Chunked\r\n", true),
        ("transfer-encoding: CHUNKED\r\n", true),
        ("Transfer-Encoding:chunked   \r\n", true),
        ("Transfer-Encoding: chunked, chunked\r\n", false),
        ("Transfer-Encoding: gzip, chunked\r\n", false),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            false,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            false,
        ),
        (
            "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n",
            true,
        ),
    ];
    for (fields, kept) in cases {
        let seen = alike(|_| {}, &upload_with_fields(fields), fields).await;
        match kept {
            // Served, on the fast path.
            true => assert_eq!(
                (
                    seen.statuses.as_slice(),
                    seen.forwarded.first().map(|f| f.2)
                ),
                (&[200, 200][..], Some(true)),
                "{fields:?}"
            ),
            // Whatever hyper makes of it (a list of codings is refused).
            false => assert!(!seen.forwarded.iter().any(|f| f.2), "{fields:?}: {seen:?}"),
        }
    }
}

#[tokio::test]
async fn transfer_encoding_that_is_not_chunked_last_is_refused_alike() {
    for fields in [
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
    ] {
        let seen = alike(|_| {}, &upload_with_fields(fields), fields).await;
        assert!(!seen.forwarded.iter().any(|f| f.2), "{fields:?}: {seen:?}");
    }
}

#[tokio::test]
async fn chunked_with_a_content_length_is_400_and_never_forwarded() {
    for fields in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 18\r\n",
    ] {
        let seen = alike(|_| {}, &upload_with_fields(fields), fields).await;
        assert_eq!(seen.statuses, [400], "{fields:?}");
        assert!(seen.forwarded.is_empty(), "{fields:?}: {seen:?}");
    }
}

#[tokio::test]
async fn http_1_0_with_a_chunked_body_is_hypers() {
    let request = b"POST /up HTTP/1.0\r\nHost: x\r\nX-Probe: 1\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let seen = alike(|_| {}, request, "HTTP/1.0").await;
    assert!(!seen.statuses.is_empty(), "no answer");
    assert!(!seen.forwarded.iter().any(|f| f.2), "{seen:?}");
}

/// The statuses a client gets that sends `UPLOAD` and `partial` and then
/// nothing (a 1 s idle timeout), and what the upstream got.
async fn stalled(fast_path: bool, partial: &[u8]) -> (Vec<u16>, usize) {
    let mut conn = Conn::open(fast_path, OK, idle_1s).await;
    conn.send(&[UPLOAD, partial].concat()).await;
    let statuses = conn.statuses_until_close(&[]).await;
    (statuses, conn.upstream.requests().len())
}

#[tokio::test]
async fn a_client_that_stops_mid_body_gets_408_and_nothing_is_forwarded() {
    for partial in [
        &b""[..],
        b"5\r\nhel",
        b"5\r\nhello\r\n",
        b"5\r\nhello\r\n0\r\n",
    ] {
        let what = String::from_utf8_lossy(partial);
        let on_fast = stalled(true, partial).await;
        assert_eq!(on_fast, (vec![408], 0), "{what:?}");
        assert_eq!(
            on_fast,
            stalled(false, partial).await,
            "{what:?} vs hyper's"
        );
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_has_nothing_forwarded() {
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, OK, |_| {}).await;
        conn.send(&[UPLOAD, b"5\r\nhello\r\n3\r\nab"].concat())
            .await;
        conn.stream.shutdown().await.expect("shutdown");
        let (_, closed) = support::read_until_close(&mut conn.stream, HANG).await;
        assert!(closed, "fast path {fast_path}: the proxy closed");
        // A whole one on a new connection: it alone reaches the upstream.
        let mut stream = connect(conn.proxy.addr).await;
        stream
            .write_all(&[UPLOAD, b"2\r\nok\r\n0\r\n\r\n"].concat())
            .await
            .expect("write");
        let mut buf = Vec::new();
        let status = next_response(&mut stream, &mut buf, false).await;
        assert_eq!(status.map(|r| r.status), Some(200), "fast path {fast_path}");
        let bodies: Vec<Vec<u8>> = conn.upstream.requests().iter().map(body_of).collect();
        assert_eq!(bodies, [b"ok".to_vec()], "fast path {fast_path}");
    }
}

#[tokio::test]
async fn pipelined_chunked_uploads_are_answered_in_order() {
    let with_trailer = b"POST /t HTTP/1.1\r\nHost: x\r\nX-Probe: 3\r\n\
        Transfer-Encoding: chunked\r\n\r\n1\r\nt\r\n0\r\nX-Sum: 1\r\n\r\n";
    let pipelined = [
        UPLOAD,
        b"3\r\nabc\r\n0\r\n\r\n",
        b"PUT /two HTTP/1.1\r\nHost: x\r\nX-Probe: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"2\r\nde\r\n1\r\nf\r\n0\r\n\r\n",
        with_trailer,
        NEXT,
    ]
    .concat();
    let seen = alike(|_| {}, &pipelined, "pipelined").await;
    assert_eq!(seen.statuses, [200; 4]);
    let got: Vec<(&str, &[u8], bool)> = seen
        .forwarded
        .iter()
        .map(|(t, b, f)| (t.as_str(), b.as_slice(), *f))
        .collect();
    // Two on the fast path, then hyper's from the one with a trailer on.
    assert_eq!(
        got,
        [
            ("/up", &b"abc"[..], true),
            ("/two", b"def", true),
            ("/t", b"t", false),
            ("/next", b"", false),
        ]
    );
}

/// Posts `body` (chunked, as `pieces`) on two connections to a retry
/// route whose first endpoint resets; the answers and the bodies the
/// second endpoint got (with whether the fast path sent them).
async fn retried(
    fast_path: bool,
    method: &str,
    pieces: &[&[u8]],
) -> (Vec<u16>, Vec<(Vec<u8>, bool)>) {
    let reset = support::scripted_upstream(b"", After::Reset).await;
    let good = support::scripted_upstream(OK, After::Again).await;
    let retries = json!({"attempts": 1, "on": ["reset"]});
    let config = support::retry_config("up", &[reset.addr, good.addr], retries, fast_path);
    let proxy = support::proxy(&config);
    let head = format!(
        "{method} /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(proxy.addr).await;
        stream.write_all(head.as_bytes()).await.expect("write");
        for piece in pieces {
            stream.write_all(piece).await.expect("write");
        }
        let mut buf = Vec::new();
        let response = next_response(&mut stream, &mut buf, false).await;
        statuses.push(response.map_or(0, |r| r.status));
    }
    let bodies = good
        .requests()
        .iter()
        .map(|r| (body_of(r), fast(r)))
        .collect();
    (statuses, bodies)
}

#[tokio::test]
async fn a_chunked_upload_in_pieces_is_retried_once_decoded_as_hyper_retries_it() {
    let pieces: [&[u8]; 4] = [b"4\r\nda", b"ta\r\n", b"2\r\n!!\r\n", b"0\r\n\r\n"];
    for method in ["PUT", "POST"] {
        let (statuses, bodies) = retried(true, method, &pieces).await;
        let (hyper_statuses, hyper_bodies) = retried(false, method, &pieces).await;
        assert_eq!(statuses, hyper_statuses, "{method}");
        let blind = |b: &[(Vec<u8>, bool)]| b.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>();
        assert_eq!(blind(&bodies), blind(&hyper_bodies), "{method}");
        assert!(
            bodies.iter().all(|(d, f)| *f && d == b"data!!"),
            "{method}: {bodies:?}"
        );
        // Each PUT reaches the second endpoint once; a POST that met the
        // reset is not retried (it may have been acted on): 502.
        let mut statuses = statuses;
        statuses.sort_unstable();
        let expected = match method {
            "PUT" => (vec![200, 200], 2),
            _ => (vec![200, 502], 1),
        };
        assert_eq!((statuses, bodies.len()), expected, "{method}");
    }
}

#[tokio::test]
async fn head_and_get_with_chunked_bodies_are_served_as_hyper_serves_them() {
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        let run = |fast_path| async move {
            let mut conn = Conn::open(fast_path, EMPTY, |_| {}).await;
            let head = format!(
                "{method} /b HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            conn.send(&[head.as_bytes(), b"5\r\nhello\r\n0\r\n\r\n", NEXT].concat())
                .await;
            let first = conn.response(method == "HEAD").await.map(|r| r.status);
            let second = conn.response(false).await.map(|r| r.status);
            let seen = conn.upstream.requests();
            let bodies: Vec<Vec<u8>> = seen.iter().map(body_of).collect();
            ((first, second, bodies), seen.first().is_some_and(fast))
        };
        let (on_fast, by_fast) = run(true).await;
        let (on_hyper, _) = run(false).await;
        assert_eq!(on_fast, on_hyper, "{method}");
        assert_eq!(on_fast.0, Some(200), "{method}");
        assert_eq!(
            on_fast.2.first().map(Vec::as_slice),
            Some(&b"hello"[..]),
            "{method}"
        );
        assert!(by_fast, "{method}: the fast path's");
    }
}

/// An upstream that answers `OK` as soon as a head is whole, then reads
/// the body the head announces (by `Content-Length`, or chunked) before
/// the next head, recording each body's length; or, if not `reads`, never
/// reads again and holds the connection.
async fn early_upstream(reads: bool) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    let lengths = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = lengths.clone();
    let addr = support::raw_upstream(move |mut stream| {
        let record = record.clone();
        async move {
            loop {
                let head = support::read_head(&mut stream).await;
                if head.is_empty() || stream.write_all(OK).await.is_err() {
                    return;
                }
                if !reads {
                    return std::future::pending().await;
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut body = Vec::new();
                let mut chunk = [0u8; 8192];
                // Never past this body: the next request may follow it.
                let chunked = !support::header_values(&head, "transfer-encoding").is_empty();
                let length: usize = support::header_values(&head, "content-length")
                    .first()
                    .map_or(0, |l| l.parse().expect("a length"));
                while match chunked {
                    true => support::decode_chunked(&body).is_none(),
                    false => body.len() < length,
                } {
                    let most = match chunked {
                        true => 1,
                        false => (length - body.len()).min(chunk.len()),
                    };
                    match stream.read(&mut chunk[..most]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let data = match chunked {
                    true => support::decode_chunked(&body).map_or(0, |d| d.0.len()),
                    false => body.len(),
                };
                record.lock().expect("not poisoned").push(data);
            }
        }
    })
    .await;
    (addr, lengths)
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_body_is_relayed() {
    let data = vec![b'e'; 60_000];
    for fast_path in [true, false] {
        let (addr, lengths) = early_upstream(true).await;
        let proxy = support::proxy(&config(addr, fast_path));
        let mut stream = connect(proxy.addr).await;
        let mut buf = Vec::new();
        stream
            .write_all(&upload_then_next(&one_chunk(&data)))
            .await
            .expect("write");
        for n in 0..2 {
            let response = next_response(&mut stream, &mut buf, false).await;
            let got = response.map(|r| (r.status, r.body));
            assert_eq!(
                got,
                Some((200, b"ok".to_vec())),
                "fast path {fast_path}: answer {n}"
            );
        }
        let lengths = lengths.lock().expect("not poisoned").clone();
        assert_eq!(lengths, [60_000, 0], "fast path {fast_path}");
    }
}

#[tokio::test]
async fn the_answer_to_a_chunked_upload_keeps_its_framing() {
    const CHUNKED_REPLY: &[u8] = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n\
        3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    for fast_path in [true, false] {
        let mut conn = Conn::open(fast_path, CHUNKED_REPLY, |_| {}).await;
        conn.send(&upload_then_next(b"2\r\nhi\r\n0\r\n\r\n")).await;
        for n in 0..2 {
            let response = conn.response(false).await.expect("an answer");
            assert_eq!(response.status, 201, "fast path {fast_path}: {n}");
            assert_eq!(response.body, b"abcdefg", "fast path {fast_path}: {n}");
            assert_eq!(
                response.header("transfer-encoding"),
                ["chunked"],
                "{fast_path}"
            );
        }
        let seen = conn.upstream.requests();
        assert!(seen.iter().all(|r| fast(r) == fast_path), "{seen:?}");
    }
}

#[tokio::test]
async fn a_chunked_upload_without_a_route_is_404_and_the_connection_serves_on() {
    let request = b"POST /up HTTP/1.1\r\nHost: nowhere\r\nX-Probe: 1\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let seen = alike(|_| {}, &[&request[..], NEXT].concat(), "no route").await;
    assert_eq!(seen.statuses, [404, 200]);
    assert_eq!(seen.forwarded.len(), 1, "{seen:?}");
    assert!(seen.forwarded[0].1.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn expect_with_a_chunked_body_hyper_takes_after_the_100_gets_one_100() {
    let head = b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nExpect: 100-continue\r\n\
        Transfer-Encoding: chunked\r\n\r\n";
    let (big, _) = body_of_wire_size(64 * 1024 + 1);
    // (what, body, final status, max_body_bytes)
    let cases: [(&str, Vec<u8>, u16, u64); 4] = [
        (
            "bad framing",
            b"zz\r\nhi\r\n0\r\n\r\n".to_vec(),
            400,
            1 << 20,
        ),
        ("over 64 KiB", big, 200, 1 << 20),
        (
            "a trailer",
            b"1\r\nx\r\n0\r\nA: b\r\n\r\n".to_vec(),
            200,
            1 << 20,
        ),
        (
            "over max_body_bytes",
            b"9\r\n123456789\r\n0\r\n\r\n".to_vec(),
            413,
            8,
        ),
    ];
    for (what, body, status, max) in cases {
        let limit = |config: &mut Value| config["limits"] = json!({"max_body_bytes": max});
        let mut conn = Conn::open(true, OK, limit).await;
        conn.send(head).await;
        let first = conn.response(false).await.map(|r| r.status);
        assert_eq!(first, Some(100), "{what}");
        conn.send(&[&body[..], NEXT].concat()).await;
        let statuses = conn.statuses_until_close(&[]).await;
        // No second 100; a refused body ends the connection.
        let expected = match status {
            400 | 413 => vec![status],
            _ => vec![status, 200],
        };
        assert_eq!(statuses, expected, "{what}");
    }
}

#[tokio::test]
async fn an_upstream_that_answers_and_never_reads_the_body_is_relayed() {
    // The largest body the fast path takes, sent in one write upstream.
    let (body, _) = body_of_wire_size(64 * 1024);
    let head = b"POST /up HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\nConnection: close\r\n\
        Transfer-Encoding: chunked\r\n\r\n";
    for fast_path in [true, false] {
        let (addr, _) = early_upstream(false).await;
        let proxy = support::proxy(&config(addr, fast_path));
        let mut stream = connect(proxy.addr).await;
        stream
            .write_all(&[&head[..], &body].concat())
            .await
            .expect("write");
        let mut buf = Vec::new();
        let response = next_response(&mut stream, &mut buf, false).await;
        let got = response.map(|r| (r.status, r.body));
        assert_eq!(got, Some((200, b"ok".to_vec())), "fast path {fast_path}");
    }
}

/// The access log's lines for: an upload served whole, one with a trailer
/// (handed to hyper after the fast path read it), and, on a second
/// connection, one whose client leaves mid-body; through the binary.
async fn logged(fast_path: bool) -> Vec<Value> {
    let dir = support::scratch_dir(&format!("chunked-edges-log-{fast_path}"));
    let log = dir.join("access.log");
    let upstream = support::scripted_upstream(OK, After::Again).await;
    let mut config = config(upstream.addr, fast_path);
    config["access_log"] = json!({"path": log.to_str().expect("UTF-8")});
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    let mut stream = connect(proxy).await;
    let trailer = b"PUT /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        1\r\nt\r\n0\r\nX-Sum: 1\r\n\r\n";
    let both = [UPLOAD, b"2\r\nhi\r\n0\r\n\r\n", trailer].concat();
    stream.write_all(&both).await.expect("write");
    let mut buf = Vec::new();
    for _ in 0..2 {
        let status = next_response(&mut stream, &mut buf, false).await;
        assert_eq!(status.map(|r| r.status), Some(200), "fast path {fast_path}");
    }
    let two = support::wait_for_json_lines(&log, 2).await;
    assert_eq!(two.len(), 2, "fast path {fast_path}: {two:#?}");

    let mut leaving = connect(proxy).await;
    leaving
        .write_all(&[UPLOAD, b"5\r\nhello\r\n3\r\nab"].concat())
        .await
        .expect("write");
    leaving.shutdown().await.expect("shutdown");
    let (_, closed) = support::read_until_close(&mut leaving, HANG).await;
    assert!(closed, "fast path {fast_path}");
    let found = support::wait_for_json_lines(&log, 3).await;
    let _ = std::fs::remove_dir_all(&dir);
    found
}

#[tokio::test]
async fn each_chunked_upload_is_logged_once_and_one_left_mid_body_as_400() {
    // A body the client broke off is logged 400 on both paths, as nginx
    // logs it ("client prematurely closed connection"), once, never as
    // served.
    for fast_path in [true, false] {
        let lines = logged(fast_path).await;
        let statuses: Vec<&Value> = lines.iter().map(|l| &l["status"]).collect();
        assert_eq!(
            statuses,
            [200, 200, 400],
            "fast path {fast_path}: {lines:#?}"
        );
        let targets: Vec<&Value> = lines.iter().map(|l| &l["target"]).collect();
        assert_eq!(targets[..2], ["/up", "/t"], "{lines:#?}");
    }
}

/// On a proxy whose one endpoint refuses connections and is ejected after
/// a first 502: the statuses a chunked upload pipelined with [`NEXT`]
/// gets (with `Expect` if `expect`), until the proxy closes.
async fn without_a_healthy_endpoint(fast_path: bool, expect: bool) -> Vec<u16> {
    let (holder, dead) = support::refusing_addr();
    let mut config = config(dead, fast_path);
    config["pools"]["web"]["outlier_detection"] =
        json!({"consecutive_failures": 1, "base_ejection": "1m"});
    let proxy = support::proxy(&config);
    let mut first = connect(proxy.addr).await;
    let mut buf = Vec::new();
    first.write_all(NEXT).await.expect("write");
    let failed = next_response(&mut first, &mut buf, false).await;
    assert_eq!(failed.map(|r| r.status), Some(502), "fast path {fast_path}");
    let head = match expect {
        true => {
            b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
            Transfer-Encoding: chunked\r\n\r\n"
        }
        false => UPLOAD,
    };
    let mut stream = connect(proxy.addr).await;
    let request = [head, b"5\r\nhello\r\n0\r\n\r\n", NEXT].concat();
    stream.write_all(&request).await.expect("write");
    let (out, _) = support::read_until_close(&mut stream, HANG).await;
    let statuses = support::parse_responses(&out, &[])
        .iter()
        .map(|r| r.status)
        .collect();
    proxy.server.shutdown();
    drop(holder);
    statuses
}

#[tokio::test]
async fn a_chunked_upload_without_a_healthy_endpoint_is_503_as_on_hypers_path() {
    for expect in [false, true] {
        let on_fast = without_a_healthy_endpoint(true, expect).await;
        assert_eq!(on_fast.first(), Some(&503), "expect {expect}: {on_fast:?}");
        let on_hyper = without_a_healthy_endpoint(false, expect).await;
        assert_eq!(on_fast, on_hyper, "expect {expect}");
    }
}
