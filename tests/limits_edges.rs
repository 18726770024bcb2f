//! Timeouts, resource limits and abuse resistance on the client paths
//! (HTTP/2, hyper's path, the admin API, upstream TLS), from a review:
//! each test asserts what a user of nginx, Envoy or HAProxy would expect,
//! and failed on the code as reviewed.

use crate::support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use support::h2::{
    decode, frame, request, RawClient, ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING,
    RST_STREAM, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATE,
};

/// The `:status` of a response block.
fn status_of(block: &[u8]) -> Option<String> {
    decode(block)
        .into_iter()
        .find(|(name, _)| name == ":status")
        .map(|(_, value)| value)
}

/// What became of a stream within a deadline.
#[derive(Debug, PartialEq)]
enum StreamEnd {
    /// The stream ended with END_STREAM.
    Ended,
    /// The stream was reset (RST_STREAM with this code).
    Reset(u32),
    /// A GOAWAY came, or the connection closed.
    ConnectionEnded,
    /// Nothing ended it before the deadline.
    StillOpen,
}

/// Reads frames (answering PINGs, as a live client does) until stream
/// `id` ends, is reset, the connection ends, or `deadline` passes. Returns
/// how, the response's status if its head came, and the body bytes seen.
async fn watch_stream(
    client: &mut RawClient,
    id: u32,
    deadline: Duration,
) -> (StreamEnd, Option<String>, usize) {
    let end = Instant::now() + deadline;
    let mut status = None;
    let mut body = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let frame = match client.next_within(left).await {
            Err(_) => return (StreamEnd::StillOpen, status, body),
            Ok(None) => return (StreamEnd::ConnectionEnded, status, body),
            Ok(Some(frame)) => frame,
        };
        match frame.kind {
            GOAWAY => return (StreamEnd::ConnectionEnded, status, body),
            PING if frame.flags & ACK == 0 => {
                client.send(&ping_ack(&frame.payload)).await;
            }
            RST_STREAM if frame.id == id => {
                let code = u32::from_be_bytes(frame.payload[..4].try_into().expect("4 bytes"));
                return (StreamEnd::Reset(code), status, body);
            }
            HEADERS if frame.id == id => {
                if status.is_none() {
                    status = status_of(&frame.payload);
                }
                if frame.flags & END_STREAM != 0 {
                    return (StreamEnd::Ended, status, body);
                }
            }
            DATA if frame.id == id => {
                body += frame.payload.len();
                if frame.flags & END_STREAM != 0 {
                    return (StreamEnd::Ended, status, body);
                }
            }
            _ => {}
        }
    }
}

fn ping_ack(payload: &[u8]) -> Vec<u8> {
    frame(PING, ACK, 0, payload)
}

fn short_timeouts() -> Value {
    json!({"timeouts": {"drain": "1s", "connect": "1s", "response_header": "5s",
                        "request_header": "300ms", "idle": "300ms"}})
}

// ---------------------------------------------------------------------------
// HTTP/2: a send timeout.

/// nginx's `send_timeout` (and Envoy's stream idle timeout, which counts
/// time blocked on flow control): a client that opens a stream and never
/// grants it a window is not served forever. Here the client's initial
/// window is 0 and no WINDOW_UPDATE ever comes, while the client stays
/// alive (it reads and answers PINGs). With `idle` at 300 ms the stream
/// (or the connection) ends within a few seconds; it was held open, with
/// its upstream connection, for good.
#[tokio::test]
async fn h2_a_stream_whose_window_never_opens_is_ended_after_the_idle_timeout() {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    reply.extend(std::iter::repeat_n(b'x', 100_000));
    let upstream = support::scripted_upstream(reply.leak(), support::After::Hang).await;
    let proxy = support::proxy_to("app", upstream.addr, short_timeouts());

    let mut client = RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/", &[]),
        ))
        .await;
    let (end, status, body) = watch_stream(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(
        status.as_deref(),
        Some("200"),
        "the head is not flow-controlled"
    );
    assert_eq!(body, 0, "no window, no DATA");
    assert_ne!(
        end,
        StreamEnd::StillOpen,
        "a stream blocked on a window that never opens is held 5 s (16x idle) and counting"
    );
    // The upstream connection is not pinned by it either.
    let released = support::eventually(Duration::from_secs(2), || {
        upstream.closed.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(released, "the upstream connection is still held");
}

/// The same at the socket: a client that grants big windows and then
/// stops reading its socket while a large answer is under way. HTTP/1.1
/// ends such a connection after `idle` (README: "An answer the client does
/// not read for the idle timeout ends the connection"); HTTP/2 never did.
#[tokio::test]
async fn h2_a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let (upstream, written) = support::streaming_upstream(100 * 1024 * 1024).await;
    let proxy = support::proxy_to("app", upstream, short_timeouts());

    let mut client =
        RawClient::connect(proxy.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0x7fff_ffff)]).await;
    client
        .send(&frame(
            WINDOW_UPDATE,
            0,
            0,
            &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
        ))
        .await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/", &[]),
        ))
        .await;
    // The socket buffers fill: the upstream's count stops moving (polled
    // every 200 ms, for 20 s at most).
    let mut last = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    // Now give the proxy 3 s (10x idle) to give up on us, then drain what
    // is buffered: a connection that was closed ends; one that was not
    // still has the rest of the 100 MiB to send.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let drained = timeout(Duration::from_secs(5), async {
        let mut sink = vec![0u8; 256 * 1024];
        loop {
            match client.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    let total = written.load(Ordering::SeqCst);
    assert!(
        drained.is_ok() && total < 100 * 1024 * 1024,
        "the connection was still serving after the client stopped reading for 3 s \
         (upstream wrote {total} bytes)"
    );
}

// ---------------------------------------------------------------------------
// HTTP/2 on hyper's client: an upstream body that stalls is cut.

/// A route whose fast path is off sends HTTP/2 requests on hyper's client
/// (`forward.rs`), whose response body (`ProxyBody::Upstream`) had no idle
/// timer: an upstream that sent its head and part of a body and then went
/// quiet kept the client's stream open forever. On the raw path the same
/// answer is cut after `idle` ("upstream went quiet mid-body").
#[tokio::test]
async fn h2_an_upstream_body_that_stalls_on_a_retrying_route_is_cut_after_idle() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b",
        support::After::Hang,
    )
    .await;
    let mut config = support::pool_config("app", upstream.addr, short_timeouts());
    config["routes"][0]["retries"] = json!({"attempts": 1, "on": ["reset"]});
    config["routes"][0]["fast_path"] = json!(false);
    let proxy = support::proxy(&config);

    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/", &[]),
        ))
        .await;
    let (end, status, body) = watch_stream(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("200"));
    assert_eq!(body, 10);
    assert!(
        matches!(end, StreamEnd::Reset(_) | StreamEnd::ConnectionEnded),
        "the stream of a stalled upstream body is {end:?} after 5 s (idle is 300 ms)"
    );
}

/// The same without retries, through a large upload (over 64 KiB, so
/// hyper's client carries it).
#[tokio::test]
async fn h2_an_upstream_body_that_stalls_after_a_large_upload_is_cut_after_idle() {
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b",
        support::After::Hang,
    )
    .await;
    let proxy = support::proxy_to("app", upstream.addr, short_timeouts());

    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let len = 100_000;
    let length = len.to_string();
    let head = request("POST", "/", &[("content-length", &length)]);
    client.send(&frame(HEADERS, END_HEADERS, 1, &head)).await;
    let body = vec![b'u'; len];
    let pieces: Vec<&[u8]> = body.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let flags = if i + 1 == pieces.len() { END_STREAM } else { 0 };
        client.send(&frame(DATA, flags, 1, piece)).await;
    }
    let (end, status, got) = watch_stream(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("200"));
    assert_eq!(got, 10);
    assert!(
        matches!(end, StreamEnd::Reset(_) | StreamEnd::ConnectionEnded),
        "the stream of a stalled upstream body is {end:?} after 5 s (idle is 300 ms)"
    );
}

// ---------------------------------------------------------------------------
// HTTP/2: `limits.max_headers`.

/// `limits.max_headers` ("Header fields; over it, 431") holds on HTTP/1.1
/// (the fast path and hyper's); an HTTP/2 request with more fields than
/// that, well under `max_header_bytes`, was forwarded as is.
#[tokio::test]
async fn h2_a_request_with_more_fields_than_max_headers_gets_431_unforwarded() {
    let upstream = support::upstream("app").await;
    let mut extra = short_timeouts();
    extra["limits"] = json!({"max_headers": 20});
    let proxy = support::proxy_to("app", upstream.addr, extra);

    // HTTP/1.1 refuses 30 fields.
    let mut head = String::from("GET / HTTP/1.1\r\nHost: app.test\r\n");
    for i in 0..30 {
        head.push_str(&format!("x-field-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let (answer, _) =
        support::raw_exchange_until_close(proxy.addr, head.as_bytes(), Duration::from_secs(3))
            .await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "HTTP/1.1: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // HTTP/2 should too.
    let names: Vec<String> = (0..30).map(|i| format!("x-field-{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "v")).collect();
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &request("GET", "/", &fields),
        ))
        .await;
    let (_, status, _) = watch_stream(&mut client, 1, Duration::from_secs(5)).await;
    assert_eq!(
        status.as_deref(),
        Some("431"),
        "HTTP/2 with 30 fields, max_headers 20"
    );
    assert_eq!(upstream.requests().len(), 0, "forwarded despite the limit");
}

// ---------------------------------------------------------------------------
// The admin API: a head timeout, and a back-off at EMFILE.

/// A client of the admin API that sends part of a head and stops is
/// closed (it never was: hyper's header timeout needs a timer, and the
/// admin server set none). The admin's own TLS handshake limit is 10 s; a
/// plain connection does not outlive that by much.
#[tokio::test]
async fn admin_a_head_that_never_finishes_is_closed() {
    let upstream = support::upstream("app").await;
    let setup = support::admin_setup(&support::pool_config("app", upstream.addr, json!({})), None);

    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
        .await
        .expect("write");
    let (answer, closed) = support::read_until_close(&mut stream, Duration::from_secs(15)).await;
    assert!(
        closed,
        "an unfinished admin request head is still open after 15 s (got {:?})",
        String::from_utf8_lossy(&answer)
    );
}

/// The admin's accept loop retried a failed accept at once (no back-off),
/// so when the process was out of file descriptors (EMFILE) and a
/// connection waited in the queue it spun a core at 100%. The data plane's
/// loop backs off 10 ms. Run in a child with a low `ulimit -n`, filled
/// with idle admin connections.
#[tokio::test]
async fn admin_accept_loop_does_not_spin_when_out_of_file_descriptors() {
    use tokio::io::AsyncBufReadExt;
    let binary = env!("CARGO_BIN_EXE_switchyard");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(
            "ulimit -n 128 && exec \"$0\" run --listen 127.0.0.1:0 --admin 127.0.0.1:0 --workers 1",
        )
        .arg(binary)
        .env("SWITCHYARD_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard");
    let pid = child.id().expect("pid");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut admin: Option<SocketAddr> = None;
    while admin.is_none() {
        let line = timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("switchyard printed its addresses in time")
            .expect("read stdout")
            .expect("switchyard exited early");
        if let Some(rest) = line.strip_prefix("Admin API on ") {
            let at = rest.find("://").expect("a URL") + 3;
            let addr = rest[at..].split(['/', ' ']).next().expect("address");
            admin = Some(addr.parse().expect("socket address"));
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let admin = admin.expect("admin address");

    // More connections than the child has descriptors: the rest wait in
    // its accept queue (the kernel completes their handshakes).
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(admin).await.expect("connect"));
    }
    // The admin thread's CPU time (`switchyard-admin`, 15 characters kept
    // as its `comm`), so the data plane's own back-off does not count.
    let admin_thread = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("switchyard-admi"))
        })
        .expect("the admin thread")
        .path();
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(admin_thread.join("stat")).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        // utime and stime: fields 14 and 15, 12 and 13 after the state.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let ticks_per_s = 100u64; // USER_HZ on Linux
    let before = cpu_ticks();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks() - before;
    let share = used as f64 / (start.elapsed().as_secs_f64() * ticks_per_s as f64);
    drop(held);
    let _ = child.kill().await;
    assert!(
        share < 0.3,
        "the admin thread used {:.0}% of a core for 2 s while out of descriptors",
        share * 100.0
    );
}

// ---------------------------------------------------------------------------
// Upstream TLS: TCP and the handshake share the connect timeout.

/// README: "The handshake counts against `timeouts.connect`", and
/// TCP and TLS each got the whole timeout, so a slow connect followed by a
/// handshake that never finishes took up to twice `connect` to fail. Here
/// TCP takes about 1 s (the first SYN is dropped by a full accept queue
/// and sent again a second later) and the endpoint then never answers the
/// ClientHello; with `connect` at 1.5 s the 504 comes by about 1.5 s (it
/// came after about 2.5 s).
#[tokio::test]
async fn a_tls_upstream_slow_to_connect_and_handshake_fails_within_one_connect_timeout() {
    let (listener, filler, addr) = support::full_listener().await;
    let dir = support::pki::temp_dir("connect-twice");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, support::pki::Ca::new("review CA").pem()).expect("write");
    let proxy = support::proxy(&json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"app": {"endpoints": [addr.to_string()],
                          "tls": {"server_name": "backend.internal", "ca_file": ca_file},
                          "outlier_detection": {"consecutive_failures": 0}}},
        "routes": [{"name": "web", "split": {"baseline": "app", "weights": {"app": 10000}}}],
        "timeouts": {"drain": "1s", "connect": "1500ms", "response_header": "5s"},
    }));
    let started = Instant::now();
    let request = tokio::spawn(support::raw_exchange_until_close(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    ));
    // Make room in the queue before the SYN is sent again (after 1 s),
    // then take the proxy's connection and say nothing on it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_first, _) = listener.accept().await.expect("the filler");
    drop(filler);
    let (_silent, _) = timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the proxy connects once the queue has room")
        .expect("accept");
    let (answer, _) = request.await.expect("request task");
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(
        took < Duration::from_millis(2200),
        "the 504 took {took:?} with a connect timeout of 1.5 s: {answer:?}"
    );
}

/// `max_uri_bytes` holds for the target as sent: an absolute-form
/// target's scheme and authority count (only its path and query did, so
/// a long authority passed), as nginx counts the request line.
#[tokio::test]
async fn an_absolute_form_target_counts_whole_against_max_uri_bytes() {
    let upstream = support::upstream("app").await;
    let mut config = support::pool_config("app", upstream.addr, json!({}));
    config["limits"] = json!({"max_uri_bytes": 64});
    let proxy = support::proxy(&config);
    let host = format!("{}.example", "h".repeat(50));
    let long = format!("GET http://{host}/abc HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (answer, _) =
        support::raw_exchange_until_close(proxy.addr, long.as_bytes(), Duration::from_secs(5))
            .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    // The same authority in Host alone, with a short target, is served.
    let short =
        b"GET http://a.example/abc HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let (answer, _) =
        support::raw_exchange_until_close(proxy.addr, short, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.requests().len(), 1);
}
