//! A request's latency, for canary health and the request-duration
//! histogram, is the upstream's time: it runs from when the request is
//! whole at the proxy (a body read ahead), or sent whole (a body streamed
//! as the client sends it), to the answer's head. The time a client takes
//! to upload is its own (nginx buffers a body before it times the
//! upstream), so a slow uploader does not make a pool look slow. Each test
//! uploads with a pause in the middle and checks what the proxy recorded.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the client stops in the middle of its body.
const PAUSE: Duration = Duration::from_millis(1200);

/// An upstream that reads each request's head and its `Content-Length`
/// body (or a chunked body, to its last chunk) and answers 200 at once.
async fn answering_upstream() -> SocketAddr {
    support::raw_upstream(|mut stream| async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&seen[..at]).to_ascii_lowercase();
            let length = support::header_values(&head, "content-length")
                .first()
                .and_then(|v| v.parse::<usize>().ok());
            let chunked = head.contains("transfer-encoding: chunked");
            let body_start = at + 4;
            let whole = |seen: &[u8]| match (length, chunked) {
                (Some(n), _) => (seen.len() >= body_start + n).then_some(body_start + n),
                (None, true) => {
                    support::decode_chunked(&seen[body_start..]).map(|(_, used)| body_start + used)
                }
                (None, false) => Some(body_start),
            };
            let end = loop {
                if let Some(end) = whole(&seen) {
                    break end;
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            };
            seen.drain(..end);
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A proxy with one route named `route` (its own metric series) to a
/// pool of `endpoints` (round robin, in this order), on the fast path or
/// not.
pub(crate) fn proxy(route: &str, endpoints: &[SocketAddr], fast_path: bool) -> support::TestProxy {
    let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    let config: Value = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"web": {"endpoints": endpoints}},
        "routes": [{
            "name": route,
            "split": {"baseline": "web", "weights": {"web": 10000}},
            "fast_path": fast_path,
        }],
        "timeouts": {"drain": "1s", "connect": "2s", "response_header": "5s"},
    });
    support::proxy(&config)
}

/// Sends `head` and then `body`, stopping for [`PAUSE`] after its first
/// `before_pause` bytes, and reads the answer's status. Returns it with
/// how long the upload took.
async fn upload(
    proxy: SocketAddr,
    head: &str,
    body: &[u8],
    before_pause: usize,
) -> (u16, Duration) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let began = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&body[..before_pause])
        .await
        .expect("first part");
    tokio::time::sleep(PAUSE).await;
    stream.write_all(&body[before_pause..]).await.expect("rest");
    let uploaded = began.elapsed();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, uploaded)
}

/// The request-duration histogram's sum and count for `route`.
pub(crate) fn recorded(route: &str) -> (f64, f64) {
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    let label = format!("route=\"{route}\"");
    let value = |series: &str| {
        text.lines()
            .filter(|l| l.starts_with(series) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (
        value("switchyard_request_duration_seconds_sum"),
        value("switchyard_request_duration_seconds_count"),
    )
}

/// Uploads `body` to a fresh route with a pause in the middle and checks
/// that the latency recorded leaves the pause out.
async fn upload_is_timed_from_its_end(route: &str, fast_path: bool, chunked: bool, len: usize) {
    let upstream = answering_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let data = vec![b'x'; len];
    let (head, body) = match chunked {
        false => (
            format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {len}\r\n\r\n"),
            data,
        ),
        true => {
            let mut body = Vec::new();
            for chunk in data.chunks(16 * 1024) {
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let head = "POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n";
            (head.to_string(), body)
        }
    };
    let (status, uploaded) = upload(proxy.addr, &head, &body, body.len() / 3).await;
    assert_eq!(status, 200, "{route}");
    assert_timed_from_its_end(route, uploaded);
    proxy.server.shutdown();
}

/// One answer was recorded for `route`, after an upload that took
/// `uploaded` (the pause and more), in much less time than the pause: the
/// upstream answers at once, so only the proxy's and its time count.
fn assert_timed_from_its_end(route: &str, uploaded: Duration) {
    assert!(uploaded >= PAUSE, "{route}: the upload took {uploaded:?}");
    let (sum, count) = recorded(route);
    assert_eq!(count, 1.0, "{route}: one answer recorded");
    assert!(
        sum < PAUSE.as_secs_f64() / 2.0,
        "{route}: {sum:.3} s recorded for an answer that came at once after an upload of {uploaded:?}"
    );
}

/// A `Content-Length` body over the read-ahead size streams on the fast
/// path: timed from when it was sent whole.
#[tokio::test]
async fn a_streamed_upload_on_the_fast_path_is_timed_from_its_end() {
    upload_is_timed_from_its_end("upload-fast-streamed", true, false, 300_000).await;
}

/// A small body is read whole before it goes: timed from then.
#[tokio::test]
async fn a_body_read_ahead_on_the_fast_path_is_timed_from_its_end() {
    upload_is_timed_from_its_end("upload-fast-read-ahead", true, false, 10_000).await;
}

/// A chunked body over the read-ahead size, streamed on the fast path.
#[tokio::test]
async fn a_chunked_upload_on_the_fast_path_is_timed_from_its_end() {
    upload_is_timed_from_its_end("upload-fast-chunked", true, true, 300_000).await;
}

/// hyper's path (the route's fast path off): a streamed body, timed from
/// when hyper's client took its last part.
#[tokio::test]
async fn a_streamed_upload_on_hyper_s_path_is_timed_from_its_end() {
    upload_is_timed_from_its_end("upload-hyper-streamed", false, false, 300_000).await;
}

/// hyper's path, a small body read whole first.
#[tokio::test]
async fn a_body_read_ahead_on_hyper_s_path_is_timed_from_its_end() {
    upload_is_timed_from_its_end("upload-hyper-read-ahead", false, false, 10_000).await;
}

/// The same over HTTP/2: DATA frames, a pause, the rest with END_STREAM.
async fn h2_upload_is_timed_from_its_end(route: &str, len: usize) {
    use support::h2::*;
    let upstream = answering_upstream().await;
    let proxy = proxy(route, &[upstream], true);
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let length = len.to_string();
    let head = request("POST", "/up", &[("content-length", &length)]);
    client.send(&header_frames(1, false, &head)).await;
    let data = vec![b'x'; len];
    let (first, rest) = data.split_at(len / 3);
    let began = Instant::now();
    for piece in first.chunks(16_384) {
        client.send(&frame(DATA, 0, 1, piece)).await;
    }
    tokio::time::sleep(PAUSE).await;
    let pieces: Vec<&[u8]> = rest.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() { END_STREAM } else { 0 };
        client.send(&frame(DATA, flags, 1, piece)).await;
    }
    let uploaded = began.elapsed();
    assert_eq!(
        client.response(1).await.field(":status"),
        Some("200"),
        "{route}"
    );
    assert_timed_from_its_end(route, uploaded);
    proxy.server.shutdown();
}

/// HTTP/2, a small body read whole first (then sent on a raw upstream
/// connection).
#[tokio::test]
async fn a_body_read_ahead_over_http2_is_timed_from_its_end() {
    h2_upload_is_timed_from_its_end("upload-h2-read-ahead", 10_000).await;
}

/// HTTP/2, a body over the read-ahead size, streamed through hyper's
/// client.
#[tokio::test]
async fn a_streamed_upload_over_http2_is_timed_from_its_end() {
    h2_upload_is_timed_from_its_end("upload-h2-streamed", 200_000).await;
}
