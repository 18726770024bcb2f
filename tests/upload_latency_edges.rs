//! Review tests for timing a request from when its body is whole (see
//! `upload_latency.rs`): `Expect: 100-continue`, an upstream that answers
//! before the body is whole, a client that leaves mid-upload, HTTP/1.0,
//! and a streamed upload moved on to another endpoint after a refused
//! connect. Each test uses routes of its own: the histogram is global.

use crate::support;
use crate::upload_latency::{proxy, recorded};
use crate::upstream_faults::connect_errors;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long the client stops before (or in the middle of) its body.
const PAUSE: Duration = Duration::from_millis(1200);

/// A body over the read-ahead size (64 KiB): it streams.
const STREAMED: usize = 300_000;

/// A body under the read-ahead size: it is read whole first.
const READ_AHEAD: usize = 10_000;

/// Where the end of a head is in `bytes`, past its blank line.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// An upstream that reads each request's head and its `Content-Length`
/// body and answers 200 at once; each connection's end is told on the
/// returned channel.
async fn answering_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (ended, ends) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let ended = ended.clone();
        async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            'requests: loop {
                let end = loop {
                    if let Some(at) = head_end(&seen) {
                        let head = String::from_utf8_lossy(&seen[..at]).to_ascii_lowercase();
                        let length = support::header_values(&head, "content-length")
                            .first()
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= at + length {
                            break at + length;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break 'requests,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                };
                seen.drain(..end);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    break;
                }
            }
            let _ = ended.send(());
        }
    })
    .await;
    (addr, ends)
}

/// An upstream that answers 413 as soon as it has a request's head, then
/// reads whatever else comes until the proxy closes (so that its close
/// resets nothing).
async fn refusing_upstream() -> SocketAddr {
    support::raw_upstream(|mut stream| async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while head_end(&seen).is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let answer =
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
}

/// The request counters of `route`, for failure messages.
fn series(route: &str) -> String {
    let text = String::from_utf8(switchyard_admin::metrics::render()).expect("utf-8");
    let label = format!("route=\"{route}\"");
    text.lines()
        .filter(|l| l.starts_with("switchyard_requests_total") && l.contains(&label))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads a response head from `stream` (within 5 s), returning its status.
async fn read_status(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await;
        match read.expect("a response head within 5 s") {
            Ok(0) | Err(_) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `head`, then `body` with a [`PAUSE`] after its first third, and
/// reads the answer's status. Returns it with how long the upload took.
async fn upload(proxy: SocketAddr, head: &str, body: &[u8]) -> (u16, Duration) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let began = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    let (first, rest) = body.split_at(body.len() / 3);
    stream.write_all(first).await.expect("first part");
    tokio::time::sleep(PAUSE).await;
    stream.write_all(rest).await.expect("rest");
    let uploaded = began.elapsed();
    (read_status(&mut stream, &mut Vec::new()).await, uploaded)
}

/// `answers` answers were recorded for `route` after uploads with a pause
/// in them, in much less time than one pause: the upstream answers at
/// once, so only the proxy's and its time count.
fn assert_timed_from_the_end(route: &str, answers: f64) {
    let (sum, count) = recorded(route);
    assert_eq!(count, answers, "{route}: answers recorded");
    assert!(
        sum < PAUSE.as_secs_f64() / 2.0,
        "{route}: {sum:.3} s recorded for {answers} answers that came at once after the body"
    );
}

/// `Expect: 100-continue`: the client waits for the proxy's 100, then
/// takes its time before and during its body. The wait is the client's.
async fn continue_upload_is_timed_from_its_end(route: &str, fast_path: bool, len: usize) {
    let (upstream, _) = answering_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut buf = Vec::new();
    assert_eq!(read_status(&mut stream, &mut buf).await, 100, "{route}");
    tokio::time::sleep(PAUSE).await;
    let body = vec![b'x'; len];
    let (first, rest) = body.split_at(len / 3);
    stream.write_all(first).await.expect("first part");
    tokio::time::sleep(PAUSE).await;
    stream.write_all(rest).await.expect("rest");
    assert_eq!(read_status(&mut stream, &mut buf).await, 200, "{route}");
    assert_timed_from_the_end(route, 1.0);
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_streamed_upload_after_a_100_continue_is_timed_from_its_end_on_the_fast_path() {
    continue_upload_is_timed_from_its_end("upload-edge-continue-fast-streamed", true, STREAMED)
        .await;
}

#[tokio::test]
async fn a_body_read_ahead_after_a_100_continue_is_timed_from_its_end_on_the_fast_path() {
    continue_upload_is_timed_from_its_end("upload-edge-continue-fast-ahead", true, READ_AHEAD)
        .await;
}

#[tokio::test]
async fn a_streamed_upload_after_a_100_continue_is_timed_from_its_end_on_hyper_s_path() {
    continue_upload_is_timed_from_its_end("upload-edge-continue-hyper-streamed", false, STREAMED)
        .await;
}

#[tokio::test]
async fn a_body_read_ahead_after_a_100_continue_is_timed_from_its_end_on_hyper_s_path() {
    continue_upload_is_timed_from_its_end("upload-edge-continue-hyper-ahead", false, READ_AHEAD)
        .await;
}

/// An upstream answers 413 as soon as it has the head of a streamed
/// upload: the client gets the 413, and it is recorded once.
async fn an_early_answer_is_recorded_once(route: &str, fast_path: bool) {
    let upstream = refusing_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {STREAMED}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    // Over the read-ahead size, so the body streams; the rest never comes.
    stream
        .write_all(&vec![b'x'; 100_000])
        .await
        .expect("first part");
    let mut buf = Vec::new();
    assert_eq!(read_status(&mut stream, &mut buf).await, 413, "{route}");
    // Whatever the proxy does after (it closes), the answer stays one.
    let (_, closed) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "{route}: the connection ends after an early answer");
    let (_, count) = recorded(route);
    assert_eq!(count, 1.0, "{route}: one answer recorded");
    proxy.server.shutdown();
}

#[tokio::test]
async fn an_answer_before_the_body_is_whole_is_recorded_once_on_the_fast_path() {
    an_early_answer_is_recorded_once("upload-edge-early-fast", true).await;
}

#[tokio::test]
async fn an_answer_before_the_body_is_whole_is_recorded_once_on_hyper_s_path() {
    an_early_answer_is_recorded_once("upload-edge-early-hyper", false).await;
}

/// A client leaves in the middle of a streamed upload, after a pause: no
/// answer is recorded, and a request that follows on a new connection is
/// recorded as any.
async fn a_client_leaving_mid_upload_leaves_nothing(route: &str, fast_path: bool) {
    let (upstream, mut ends) = answering_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {STREAMED}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&vec![b'x'; 100_000])
        .await
        .expect("first part");
    // A slow uploader that gives up.
    tokio::time::sleep(PAUSE).await;
    drop(stream);
    // The proxy gives the upstream's connection up once it sees the
    // client gone (its body cannot be finished).
    let ended = tokio::time::timeout(Duration::from_secs(5), ends.recv()).await;
    assert!(
        matches!(ended, Ok(Some(()))),
        "{route}: the upstream's connection ends"
    );
    let (sum, left) = recorded(route);
    assert_eq!(
        left,
        0.0,
        "{route}: nothing recorded for a client that left ({sum:.3} s recorded): {}",
        series(route)
    );

    let body = vec![b'y'; STREAMED];
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {STREAMED}\r\n\r\n");
    let (status, _) = upload(proxy.addr, &head, &body).await;
    assert_eq!(status, 200, "{route}");
    assert_timed_from_the_end(route, 1.0);
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_client_leaving_mid_upload_leaves_nothing_on_the_fast_path() {
    a_client_leaving_mid_upload_leaves_nothing("upload-edge-left-fast", true).await;
}

/// On hyper's path the broken body comes back from hyper's client as an
/// error: the client's, not an answer of the pool's (it was counted as
/// one, a 4xx timed from the head, the client's upload in it).
#[tokio::test]
async fn a_client_leaving_mid_upload_leaves_nothing_on_hyper_s_path() {
    a_client_leaving_mid_upload_leaves_nothing("upload-edge-left-hyper", false).await;
}

/// An HTTP/1.0 upload with a pause in it.
async fn http10_upload_is_timed_from_its_end(route: &str, fast_path: bool, len: usize) {
    let (upstream, _) = answering_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let head = format!("POST /up HTTP/1.0\r\nHost: app.test\r\nContent-Length: {len}\r\n\r\n");
    let (status, uploaded) = upload(proxy.addr, &head, &vec![b'x'; len]).await;
    assert_eq!(status, 200, "{route}");
    assert!(uploaded >= PAUSE, "{route}: the upload took {uploaded:?}");
    assert_timed_from_the_end(route, 1.0);
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_streamed_http10_upload_is_timed_from_its_end_on_the_fast_path() {
    http10_upload_is_timed_from_its_end("upload-edge-http10-fast", true, STREAMED).await;
}

#[tokio::test]
async fn a_streamed_http10_upload_is_timed_from_its_end_on_hyper_s_path() {
    http10_upload_is_timed_from_its_end("upload-edge-http10-hyper", false, STREAMED).await;
}

/// Two streamed uploads at once to a pool of a refusing endpoint and a
/// live one, round robin: one of them is refused first and moves on to
/// the live endpoint, where its body streams. Both are timed from their
/// body's end.
async fn a_moved_on_upload_is_timed_from_its_end(route: &str, fast_path: bool) {
    let (upstream, _) = answering_upstream().await;
    let (_refusing, dead) = support::refusing_addr();
    let proxy = proxy(route, &[dead, upstream], fast_path);
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {STREAMED}\r\n\r\n");
    let body = vec![b'x'; STREAMED];
    let (a, b) = tokio::join!(
        upload(proxy.addr, &head, &body),
        upload(proxy.addr, &head, &body)
    );
    assert_eq!((a.0, b.0), (200, 200), "{route}");
    assert_eq!(
        connect_errors(route),
        1.0,
        "{route}: one upload was refused first and moved on"
    );
    assert_timed_from_the_end(route, 2.0);
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_streamed_upload_moved_on_after_a_refused_connect_is_timed_from_its_end_on_the_fast_path()
{
    a_moved_on_upload_is_timed_from_its_end("upload-edge-moved-fast", true).await;
}

/// After a refused connect the request is sent again (`move_on`), and its
/// body streams then: timed from its end all the same (it was timed from
/// the head's arrival).
#[tokio::test]
async fn a_streamed_upload_moved_on_after_a_refused_connect_is_timed_from_its_end_on_hyper_s_path()
{
    a_moved_on_upload_is_timed_from_its_end("upload-edge-moved-hyper", false).await;
}

/// An upstream that reads each request's head and its `Content-Length`
/// body, tells the returned channel the body is whole, and never answers.
async fn hanging_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let (whole, wholes) = mpsc::unbounded_channel();
    let addr = support::raw_upstream(move |mut stream| {
        let whole = whole.clone();
        async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut told = false;
            loop {
                if let (Some(at), false) = (head_end(&seen), told) {
                    let head = String::from_utf8_lossy(&seen[..at]).to_ascii_lowercase();
                    let length = support::header_values(&head, "content-length")
                        .first()
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if seen.len() >= at + length {
                        told = true;
                        let _ = whole.send(());
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        }
    })
    .await;
    (addr, wholes)
}

/// The detector's view of a streamed upload to an upstream that takes it
/// whole and never answers, with a latency bar of 300 ms: while the client
/// pauses mid-upload the request is not overdue (the time is the
/// client's); once the body is whole, it is overdue within 2 s.
async fn a_hang_after_a_streamed_upload_is_overdue(route: &str, fast_path: bool) {
    use switchyard_proxy::stats::tick_of;
    let (upstream, mut wholes) = hanging_upstream().await;
    let proxy = proxy(route, &[upstream], fast_path);
    let table = proxy.routes.snapshot();
    let entry = table
        .routes()
        .iter()
        .find(|r| &*r.name == route)
        .expect("the route");
    let stats = entry.stats(0);
    stats
        .slow_after_us
        .store(300_000, std::sync::atomic::Ordering::Relaxed);
    // Takes every finished tick from `next` on; returns the overdue.
    let mut next = tick_of(Instant::now());
    let mut take_ticks = || {
        let now = tick_of(Instant::now());
        let mut overdue = 0;
        while next < now {
            overdue += stats.take_tick(next).overdue;
            next += 1;
        }
        overdue
    };
    take_ticks();

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {STREAMED}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let body = vec![b'x'; STREAMED];
    let (first, rest) = body.split_at(STREAMED / 3);
    stream.write_all(first).await.expect("first part");
    tokio::time::sleep(PAUSE).await;
    assert_eq!(
        take_ticks(),
        0,
        "{route}: overdue while the client was still uploading"
    );
    stream.write_all(rest).await.expect("rest");
    let whole = tokio::time::timeout(Duration::from_secs(5), wholes.recv()).await;
    assert!(
        matches!(whole, Ok(Some(()))),
        "{route}: the upstream has the body"
    );
    let whole_at = Instant::now();
    let mut overdue = 0;
    let counted = support::eventually(Duration::from_secs(4), || {
        overdue += take_ticks();
        overdue > 0
    })
    .await;
    assert!(
        counted,
        "{route}: unanswered {:?} after its body went whole, yet not overdue",
        whole_at.elapsed()
    );
    assert_eq!(overdue, 1, "{route}: one request overdue");
    drop(stream);
    proxy.server.shutdown();
}

#[tokio::test]
async fn a_hang_after_a_streamed_upload_is_overdue_on_the_fast_path() {
    a_hang_after_a_streamed_upload_is_overdue("upload-edge-hang-fast", true).await;
}

/// hyper's path: watched from the body's end while the answer is awaited
/// (it was watched only once its answer came).
#[tokio::test]
async fn a_hang_after_a_streamed_upload_is_overdue_on_hyper_s_path() {
    a_hang_after_a_streamed_upload_is_overdue("upload-edge-hang-hyper", false).await;
}
