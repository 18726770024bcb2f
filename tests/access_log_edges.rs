//! Access-log edges, from a review through the binary: hostile fields,
//! pipelining, HEAD/204/304 and chunked or close-delimited bodies (body
//! bytes as the client got them), resets mid-body, retries, many HTTP/2
//! streams, and every line written at SIGTERM.

use crate::support;

use support::{json_lines as lines, wait_for_json_lines as wait_for_lines};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with route `web` (`/app`) to `stable` plus extra pools/routes.
fn config(stable: SocketAddr, log: &Path, extra: &[(&str, &str, Vec<String>)]) -> Value {
    let mut config = json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {"stable": {"endpoints": [stable.to_string()]}},
        "routes": [
            {"name": "web", "match": {"path_prefix": "/app"},
             "split": {"baseline": "stable", "weights": {"stable": 10000}}},
        ],
        "timeouts": {"drain": "3s", "connect": "2s", "response_header": "5s", "idle": "3s"},
        "access_log": {"path": log.to_str().expect("UTF-8")},
    });
    for (name, prefix, endpoints) in extra {
        config["pools"][*name] = json!({ "endpoints": endpoints });
        config["routes"]
            .as_array_mut()
            .expect("not poisoned")
            .insert(
                0,
                json!({"name": name, "match": {"path_prefix": prefix},
                   "split": {"baseline": name, "weights": {*name: 10000}}}),
            );
    }
    config
}

async fn start(
    name: &str,
    config: Value,
) -> (tokio::process::Child, SocketAddr, SocketAddr, PathBuf) {
    let dir = support::scratch_dir(name);
    let file = dir.join("config.json");
    let mut config = config;
    let log = dir.join("access.log");
    config["access_log"]["path"] = json!(log.to_str().expect("not poisoned"));
    std::fs::write(&file, config.to_string()).expect("write");
    let (child, proxy, admin) = support::start_on_config(&file).await;
    (child, proxy, admin, log)
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    support::raw_exchange_until_close(addr, request, Duration::from_secs(8))
        .await
        .0
}

fn body_of(answer: &[u8]) -> Vec<u8> {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&answer[..at]).to_ascii_lowercase();
    let rest = &answer[at..];
    if head.contains("transfer-encoding: chunked") {
        support::decode_chunked(rest)
            .map(|(b, _)| b)
            .unwrap_or_else(|| {
                // A broken-off chunked body: count the chunk data we did get.
                let mut out = Vec::new();
                let mut bytes = rest;
                while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
                    let Ok(size) = usize::from_str_radix(
                        std::str::from_utf8(&bytes[..eol]).unwrap_or("x").trim(),
                        16,
                    ) else {
                        break;
                    };
                    let data = &bytes[eol + 2..];
                    let take = size.min(data.len());
                    out.extend_from_slice(&data[..take]);
                    if take < size || size == 0 {
                        break;
                    }
                    bytes = &data[(size + 2).min(data.len())..];
                }
                out
            })
    } else {
        rest.to_vec()
    }
}

#[tokio::test]
async fn hostile_fields_still_make_valid_json_lines() {
    let stable = support::upstream("stable").await;
    let (_child, proxy, _admin, log) =
        start("alr-hostile", config(stable.addr, Path::new("x"), &[])).await;
    let long = "a".repeat(3_000);
    let requests: Vec<Vec<u8>> = vec![
        b"GET /app/q?q=%22%5Cx HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: ua\xe9\xff \"\\\r\nConnection: close\r\n\r\n".to_vec(),
        format!("GET /app/{long} HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: {long}\r\nConnection: close\r\n\r\n").into_bytes(),
        b"GET /app/ten HTTP/1.0\r\nHost: shop.test\r\n\r\n".to_vec(),
        b"GET http://abs.test/app/abs?x=1 HTTP/1.1\r\nHost: abs.test\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /app/tab HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: a\tb\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    for request in &requests {
        let answer = raw_exchange(proxy, request).await;
        let text = String::from_utf8_lossy(&answer);
        // eprintln!("ANSWER {:?} -> {:?}", String::from_utf8_lossy(&request[..40.min(request.len())]), text.lines().next());
        assert!(answer.starts_with(b"HTTP/1."), "{}", text);
    }
    // `lines` panics on any line that is not JSON.
    let found = wait_for_lines(&log, requests.len()).await;
    assert_eq!(found.len(), requests.len(), "{found:#?}");
    let ten = found
        .iter()
        .find(|l| l["target"] == "/app/ten")
        .expect("HTTP/1.0 line");
    assert_eq!(ten["protocol"], "HTTP/1.0");
    let abs = found
        .iter()
        .find(|l| l["target"] == "http://abs.test/app/abs?x=1")
        .expect("absolute-form line");
    assert_eq!(abs["status"], 200);
    assert_eq!(abs["route"], "web");
    let long_line = found
        .iter()
        .find(|l| {
            l["user_agent"]
                .as_str()
                .is_some_and(|u| u.len() == long.len())
        })
        .expect("the long line, whole");
    assert_eq!(long_line["target"], format!("/app/{long}"));
    let odd = found
        .iter()
        .find(|l| {
            l["user_agent"]
                .as_str()
                .is_some_and(|u| u.starts_with("ua"))
        })
        .expect("odd line");
    assert_eq!(odd["user_agent"], "ua\u{e9}\u{ff} \"\\");
    let q = found
        .iter()
        .find(|l| l["target"] == "/app/q?q=%22%5Cx")
        .expect("quoted target");
    assert_eq!(q["status"], 200);
}

#[tokio::test]
async fn pipelined_requests_get_one_line_each_in_order() {
    let stable = support::upstream("stable").await;
    let (_child, proxy, _admin, log) =
        start("alr-pipeline", config(stable.addr, Path::new("x"), &[])).await;
    let mut request = Vec::new();
    for i in 0..20 {
        request.extend_from_slice(
            format!("GET /app/p{i} HTTP/1.1\r\nHost: shop.test\r\n\r\n").as_bytes(),
        );
    }
    // one 404 in the middle, then a HEAD.
    request.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    request.extend_from_slice(
        b"HEAD /app/head HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    );
    let answer = raw_exchange(proxy, &request).await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 22, "{text}");
    let found = wait_for_lines(&log, 22).await;
    assert_eq!(found.len(), 22, "{found:#?}");
    let targets: Vec<String> = found
        .iter()
        .map(|l| l["target"].as_str().unwrap_or("?").to_string())
        .collect();
    let mut expected: Vec<String> = (0..20).map(|i| format!("/app/p{i}")).collect();
    expected.push("/nowhere".into());
    expected.push("/app/head".into());
    assert_eq!(targets, expected);
    assert_eq!(found[20]["status"], 404);
    assert_eq!(found[21]["method"], "HEAD");
    assert_eq!(found[21]["body_bytes"], 0, "{}", found[21]);
    // 404 answers to a HEAD carry no body either.
}

#[tokio::test]
async fn head_answered_by_proxy_logs_zero_body_bytes() {
    let stable = support::upstream("stable").await;
    let (_child, proxy, _admin, log) =
        start("alr-head404", config(stable.addr, Path::new("x"), &[])).await;
    let answer = raw_exchange(
        proxy,
        b"HEAD /nowhere HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with(b"HTTP/1.1 404"));
    let found = wait_for_lines(&log, 1).await;
    assert_eq!(found[0]["status"], 404);
    assert_eq!(found[0]["body_bytes"], 0, "{}", found[0]);
}

/// One scripted upstream per body shape; body_bytes must equal what the
/// client got as body (decoded).
// The fast path once counted a chunked body with its framing (24 for 11).
#[tokio::test]
async fn body_bytes_equal_the_body_the_client_received() {
    let stable = support::upstream("stable").await;
    let chunked = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        support::After::Again,
    )
    .await;
    let close = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclose-delimited body",
        support::After::Close,
    )
    .await;
    let no_content =
        support::scripted_upstream(b"HTTP/1.1 204 No Content\r\n\r\n", support::After::Again).await;
    let not_modified = support::scripted_upstream(
        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 40\r\n\r\n",
        support::After::Again,
    )
    .await;
    let extra = [
        ("chunked", "/chunked", vec![chunked.addr.to_string()]),
        ("close", "/close", vec![close.addr.to_string()]),
        ("nocontent", "/nocontent", vec![no_content.addr.to_string()]),
        ("notmod", "/notmod", vec![not_modified.addr.to_string()]),
    ];
    let (_child, proxy, _admin, log) =
        start("alr-bodies", config(stable.addr, Path::new("x"), &extra)).await;
    let mut expected = Vec::new();
    for path in ["/chunked", "/close", "/nocontent", "/notmod"] {
        let answer = raw_exchange(
            proxy,
            format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let body = body_of(&answer);
        expected.push((path, body.len()));
    }
    // Same through an HTTP/1.0 client (close-delimited to the client).
    let found = wait_for_lines(&log, 4).await;
    assert_eq!(found.len(), 4);
    let mut wrong = Vec::new();
    for (path, len) in expected {
        let line = found.iter().find(|l| l["target"] == path).expect("line");
        if line["body_bytes"] != len {
            wrong.push(format!(
                "{path}: client got {len}, logged {}",
                line["body_bytes"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

// The chunked case once logged 15 (framing counted) for 10 body bytes.
#[tokio::test]
async fn an_upstream_reset_mid_body_is_logged_with_an_error() {
    let stable = support::upstream("stable").await;
    let reset = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-these",
        support::After::Reset,
    )
    .await;
    let chunk_reset = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nonly-these\r\n",
        support::After::Reset,
    )
    .await;
    let extra = [
        ("reset", "/reset", vec![reset.addr.to_string()]),
        ("creset", "/creset", vec![chunk_reset.addr.to_string()]),
    ];
    let (_child, proxy, _admin, log) =
        start("alr-reset", config(stable.addr, Path::new("x"), &extra)).await;
    let mut got = Vec::new();
    for path in ["/reset", "/creset"] {
        let answer = raw_exchange(
            proxy,
            format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        got.push((path, body_of(&answer).len()));
    }
    let found = wait_for_lines(&log, 2).await;
    assert_eq!(found.len(), 2, "{found:#?}");
    for (path, len) in got {
        let line = found.iter().find(|l| l["target"] == path).expect("line");
        assert_eq!(line["status"], 200, "{line}");
        assert!(line["error"].is_string(), "{line}");
        assert_eq!(line["body_bytes"], len, "{path}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_h2_streams_one_line_each() {
    let stable = support::upstream("stable").await;
    let (_child, proxy, _admin, log) =
        start("alr-h2many", config(stable.addr, Path::new("x"), &[])).await;
    let h2 = support::h2c_client(proxy).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let body = if i % 2 == 0 {
                Bytes::new()
            } else {
                Bytes::from(vec![b'x'; 1000 + i])
            };
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            let path = if i % 2 == 0 {
                format!("/app/s{i}")
            } else {
                "/app/echo".to_string()
            };
            let request = Request::builder()
                .method(method)
                .uri(format!("http://shop.test{path}?i={i}"))
                .body(Full::new(body))
                .expect("not poisoned");
            let response = h2.send_request(request).await.expect("answer");
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (i, status, body.len())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("not poisoned"));
    }
    let found = wait_for_lines(&log, 100).await;
    assert_eq!(found.len(), 100, "{found:#?}");
    for (i, status, len) in answers {
        let suffix = format!("?i={i}");
        let mine: Vec<&Value> = found
            .iter()
            .filter(|l| l["target"].as_str().is_some_and(|t| t.ends_with(&suffix)))
            .collect();
        assert_eq!(mine.len(), 1, "{i}: {mine:?}");
        assert_eq!(mine[0]["protocol"], "HTTP/2");
        assert_eq!(mine[0]["status"], status);
        assert_eq!(mine[0]["body_bytes"], len, "{}", mine[0]);
    }
}

#[tokio::test]
async fn lines_are_all_written_at_sigterm_and_past_64k() {
    let stable = support::upstream("stable").await;
    let (mut child, proxy, _admin, log) =
        start("alr-term", config(stable.addr, Path::new("x"), &[])).await;
    // ~ 300 requests × ~1.2 KiB lines: several 64 KiB flushes, plus a tail.
    let ua = "u".repeat(1000);
    let mut stream = TcpStream::connect(proxy).await.expect("not poisoned");
    let mut buf = Vec::new();
    let n = 300;
    for i in 0..n {
        stream
            .write_all(
                format!("GET /app/t{i} HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: {ua}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("not poisoned");
        let response = support::read_response(&mut stream, &mut buf, false).await;
        let _ = response;
    }
    drop(stream);
    let pid = child.id().expect("not poisoned").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("not poisoned")
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("not poisoned");
    assert!(status.success(), "{status}");
    let found = lines(&log);
    assert_eq!(found.len(), n, "lines after SIGTERM");
    for (i, line) in found.iter().enumerate() {
        assert_eq!(line["target"], format!("/app/t{i}"));
    }
}

#[tokio::test]
async fn a_retry_names_the_endpoint_that_answered() {
    let good = support::upstream("good").await;
    let bad = support::scripted_upstream(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nbad",
        support::After::Again,
    )
    .await;
    let mut config = config(good.addr, Path::new("x"), &[]);
    config["pools"]["stable"]["endpoints"] = json!([bad.addr.to_string(), good.addr.to_string()]);
    config["routes"][0]["retries"] = json!({"attempts": 2, "on": ["5xx"]});
    let (_child, proxy, _admin, log) = start("alr-retry", config).await;
    let client = support::client();
    for _ in 0..6 {
        let (status, _, body) = support::get(&client, proxy, "/app/r", &[]).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "good"));
    }
    let found = wait_for_lines(&log, 6).await;
    assert_eq!(found.len(), 6, "{found:#?}");
    assert!(!bad.requests().is_empty(), "the bad endpoint was tried");
    for line in &found {
        assert_eq!(line["status"], 200);
        assert_eq!(line["upstream"], good.addr.to_string(), "{line}");
        assert_eq!(line["body_bytes"], 4);
    }
}

/// A chunked upstream answer to an HTTP/2 client and to hyper's HTTP/1.1
/// path (a chunked upload): body_bytes is the body's length.
#[tokio::test]
async fn chunked_upstream_body_bytes_on_h2_and_hyper_paths() {
    let stable = support::upstream("stable").await;
    let chunked = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        support::After::Again,
    )
    .await;
    let extra = [("chunked", "/chunked", vec![chunked.addr.to_string()])];
    let (_child, proxy, _admin, log) =
        start("alr-h2chunked", config(stable.addr, Path::new("x"), &extra)).await;
    let mut h2 = support::h2c_client(proxy).await;
    let request = Request::get("http://shop.test/chunked/h2")
        .body(Full::new(Bytes::new()))
        .expect("not poisoned");
    let response = h2.send_request(request).await.expect("answer");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("not poisoned")
        .to_bytes();
    assert_eq!(&body[..], b"hello world");
    let answer = raw_exchange(
        proxy,
        b"POST /chunked/hyper HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(body_of(&answer), b"hello world");
    let found = wait_for_lines(&log, 2).await;
    assert_eq!(found.len(), 2, "{found:#?}");
    for line in &found {
        assert_eq!(line["body_bytes"], 11, "{line}");
    }
}

/// Requests in flight at SIGTERM (HTTP/1.1 fast path, hyper's path, HTTP/2)
/// are answered within the drain, and each has its line once the process
/// has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_answers_at_sigterm_are_logged() {
    let stable = support::upstream("stable").await;
    let (got, mut requests) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let slow = support::raw_upstream(move |mut stream| {
        let got = got.clone();
        let mut release = release_rx.clone();
        async move {
            let head = support::read_head(&mut stream).await;
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            if text.contains("transfer-encoding: chunked") {
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.ends_with(b"0\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
            }
            let _ = got.send(());
            let _ = release.wait_for(|r| *r).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow")
                .await;
        }
    })
    .await;
    let extra = [("slow", "/slow", vec![slow.to_string()])];
    let (mut child, proxy, _admin, log) =
        start("alr-inflight", config(stable.addr, Path::new("x"), &extra)).await;
    let h1 = tokio::spawn(raw_exchange(
        proxy,
        b"GET /slow/h1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    ));
    let hy = tokio::spawn(raw_exchange(
        proxy,
        b"POST /slow/hyper HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ));
    let mut h2 = support::h2c_client(proxy).await;
    let request = Request::get("http://shop.test/slow/h2")
        .body(Full::new(Bytes::new()))
        .expect("not poisoned");
    let h2_answer = tokio::spawn(async move {
        let response = h2.send_request(request).await.expect("answer");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, body)
    });
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), requests.recv())
            .await
            .expect("upstream got it");
    }
    let pid = child.id().expect("not poisoned").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("not poisoned")
        .success());
    release_tx.send(true).expect("not poisoned");
    let a = h1.await.expect("not poisoned");
    let b = hy.await.expect("not poisoned");
    let (status, body) = h2_answer.await.expect("not poisoned");
    assert!(
        a.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&a)
    );
    assert!(
        b.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!((status, &body[..]), (200, &b"slow"[..]));
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("not poisoned");
    assert!(exit.success(), "{exit}");
    let found = lines(&log);
    let targets: Vec<&str> = found.iter().filter_map(|l| l["target"].as_str()).collect();
    for target in ["/slow/h1", "/slow/hyper", "/slow/h2"] {
        let line = found.iter().find(|l| l["target"] == target);
        assert!(line.is_some(), "no line for {target}: {targets:?}");
        assert_eq!(line.expect("not poisoned")["status"], 200, "{:?}", line);
        assert_eq!(line.expect("not poisoned")["body_bytes"], 4, "{:?}", line);
    }
    assert_eq!(found.len(), 3, "{found:#?}");
}
