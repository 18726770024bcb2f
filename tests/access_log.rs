//! The access log, through the binary: one JSON line per answer on every
//! path (HTTP/1.1's fast path and hyper's, HTTP/2), answers the proxy
//! makes itself included; SIGUSR1 after a rotation; a reload that moves it
//! or cannot open it; the `--access-log` flag on the embedded default.

use crate::support;

use support::{json_lines as lines, wait_for_json_lines as wait_for_lines};

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config: route `web` (path `/app`) to an upstream, route `down` (path
/// `/down`) to `dead`, a bound port nothing listens on (see
/// `support::refusing_addr`); nothing else matches.
fn config(stable: &support::Upstream, log: &Path, dead: std::net::SocketAddr) -> Value {
    json!({
        "listeners": [{"address": "127.0.0.1:0"}],
        "pools": {
            "stable": {"endpoints": [stable.addr.to_string()]},
            "dead": {"endpoints": [dead.to_string()]},
        },
        "routes": [
            {"name": "web", "match": {"path_prefix": "/app"},
             "split": {"baseline": "stable", "weights": {"stable": 10000}}},
            {"name": "down", "match": {"path_prefix": "/down"},
             "split": {"baseline": "dead", "weights": {"dead": 10000}}},
        ],
        "timeouts": {"drain": "2s", "connect": "2s", "response_header": "5s"},
        "access_log": {"path": log.to_str().expect("UTF-8")},
    })
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let (answer, _) =
        support::raw_exchange_until_close(addr, request, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn by_target<'a>(lines: &'a [Value], target: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["target"] == target).collect();
    assert_eq!(found.len(), 1, "one line for {target}: {lines:#?}");
    found[0]
}

#[tokio::test]
async fn every_answer_is_logged_once_on_every_path() {
    let dir = support::scratch_dir("access-log-paths");
    let log = dir.join("access.log");
    let stable = support::upstream("stable").await;
    let (_dead, dead) = support::refusing_addr();
    let file = dir.join("config.json");
    std::fs::write(&file, config(&stable, &log, dead).to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    // HTTP/1.1 on the fast path.
    let answer = raw_exchange(
        proxy,
        b"GET /app/one?x=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: probe/1 \"q\"\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A chunked upload: hyper's path.
    let answer = raw_exchange(
        proxy,
        b"POST /app/echo HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // HTTP/2 (h2c).
    let mut h2 = support::h2c_client(proxy).await;
    let request = Request::get("http://shop.test/app/h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = h2.send_request(request).await.expect("h2 answer");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"stable");
    // Answers the proxy makes: no route, an upstream that refuses, a
    // malformed request.
    let answer = raw_exchange(
        proxy,
        b"GET /nowhere HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = raw_exchange(
        proxy,
        b"GET /down/x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let answer = raw_exchange(
        proxy,
        b"GET /app/two HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let found = wait_for_lines(&log, 6).await;
    assert_eq!(found.len(), 6, "{found:#?}");

    let one = by_target(&found, "/app/one?x=1");
    assert_eq!(one["protocol"], "HTTP/1.1");
    assert_eq!(one["method"], "GET");
    assert_eq!(one["host"], "shop.test");
    assert_eq!(one["user_agent"], "probe/1 \"q\"");
    assert_eq!(one["status"], 200);
    assert_eq!(one["body_bytes"], 6);
    assert_eq!(one["route"], "web");
    assert_eq!(one["pool"], "stable");
    assert_eq!(one["upstream"], stable.addr.to_string());
    assert_eq!(one["error"], Value::Null);
    assert!(
        one["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{one}"
    );
    assert!(
        one["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{one}"
    );
    let time = one["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );

    let echo = by_target(&found, "/app/echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["status"], 200);
    assert_eq!(echo["body_bytes"], 6);
    assert_eq!(echo["pool"], "stable");

    let h2 = by_target(&found, "/app/h2");
    assert_eq!(h2["protocol"], "HTTP/2");
    assert_eq!(h2["host"], "shop.test");
    assert_eq!(h2["status"], 200);
    assert_eq!(h2["body_bytes"], 6);
    assert_eq!(h2["route"], "web");

    let nowhere = by_target(&found, "/nowhere");
    assert_eq!(nowhere["status"], 404);
    assert_eq!(nowhere["route"], Value::Null);
    assert!(
        nowhere["error"]
            .as_str()
            .is_some_and(|e| e.contains("no route")),
        "{nowhere}"
    );

    let down = by_target(&found, "/down/x");
    assert_eq!(down["status"], 502);
    assert_eq!(down["route"], "down");
    assert_eq!(down["pool"], "dead");
    assert!(
        down["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{down}"
    );

    let malformed = found
        .iter()
        .find(|l| l["status"] == 400)
        .expect("the 400's line");
    assert!(malformed["error"].as_str().is_some(), "{malformed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends GETs until one is logged to `path`; how many were sent.
async fn send_until_logged(proxy: std::net::SocketAddr, path: &Path) -> usize {
    let client = support::client();
    let mut sent = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines(path).is_empty() && std::time::Instant::now() < deadline {
        let (status, _, _) = support::get(&client, proxy, "/app/rotated", &[]).await;
        assert_eq!(status, 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent
}

#[tokio::test]
async fn sigusr1_reopens_the_log_and_a_reload_moves_it() {
    let dir = support::scratch_dir("access-log-rotate");
    let log = dir.join("access.log");
    let stable = support::upstream("stable").await;
    let (_dead, dead) = support::refusing_addr();
    let file = dir.join("config.json");
    std::fs::write(&file, config(&stable, &log, dead).to_string()).expect("write");
    let (child, proxy, admin) = support::start_on_config(&file).await;
    let client = support::client();
    let (status, _, _) = support::get(&client, proxy, "/app/before", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(wait_for_lines(&log, 1).await.len(), 1);

    // logrotate: the file moves away, then SIGUSR1.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let sent = send_until_logged(proxy, &log).await;
    assert!(
        sent >= 1 && !lines(&log).is_empty(),
        "nothing in the new file"
    );
    // Every answer is in one file or the other, once.
    let total = |_: ()| lines(&rotated).len() + lines(&log).len();
    assert!(
        support::eventually(Duration::from_secs(5), || total(()) == 1 + sent).await,
        "{} + {} lines for {} requests",
        lines(&rotated).len(),
        lines(&log).len(),
        1 + sent
    );

    // A reload to a path that cannot be opened is refused: nothing moves.
    let mut moved = config(
        &stable,
        Path::new("/nonexistent-switchyard-dir/a.log"),
        dead,
    );
    let (status, answer) = support::put_config(admin, moved.to_string()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "access_log.path", "{answer}");
    let before = lines(&log).len();
    let (status, _, _) = support::get(&client, proxy, "/app/still", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(wait_for_lines(&log, before + 1).await.len(), before + 1);

    // A reload to another path moves it there.
    let other = dir.join("other.log");
    moved["access_log"]["path"] = json!(other.to_str().expect("UTF-8"));
    let (status, answer) = support::put_config(admin, moved.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, _) = support::get(&client, proxy, "/app/moved", &[]).await;
    assert_eq!(status, 200);
    let there = wait_for_lines(&other, 1).await;
    assert_eq!(there.len(), 1);
    assert_eq!(there[0]["target"], "/app/moved");
    let (status, _, events) = support::admin_call(admin, Method::GET, "/v1/events", &[], "").await;
    assert_eq!(status, 200);
    assert!(events.contains("access log now"), "{events}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_flag_logs_the_embedded_default() {
    let dir = support::scratch_dir("access-log-flag");
    let log = dir.join("demo.log");
    let (_child, proxy, _admin) =
        support::start_demo(&["--access-log", log.to_str().expect("UTF-8")]).await;
    let client = support::client();
    let (status, _, body) =
        support::get(&client, proxy, "/", &[("x-switchyard-pool", "green")]).await;
    assert_eq!(status, 200);
    let found = wait_for_lines(&log, 1).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["pool"], "green");
    assert_eq!(found[0]["route"], "default");
    assert_eq!(found[0]["body_bytes"], body.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_answer_the_client_gives_up_on_is_logged_499() {
    let dir = support::scratch_dir("access-log-gave-up");
    let log = dir.join("access.log");
    let stable = support::upstream("stable").await;
    let (_dead, dead) = support::refusing_addr();
    // An upstream that takes requests and never answers; it says when it
    // has one.
    let (got, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let hang = support::raw_upstream(move |mut stream| {
        let got = got.clone();
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let _ = got.send(());
            }
        }
    })
    .await;
    let mut config = config(&stable, &log, dead);
    config["pools"]["hang"] = json!({"endpoints": [hang.to_string()]});
    config["routes"]
        .as_array_mut()
        .expect("routes")
        .push(json!({"name": "hang", "match": {"path_prefix": "/hang"},
                     "split": {"baseline": "hang", "weights": {"hang": 10000}}}));
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    // HTTP/1.1: the client closes while its request waits upstream.
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /hang/h1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .expect("write");
    requests.recv().await.expect("the upstream got it");
    drop(stream);
    // HTTP/2: the client resets its stream (RST_STREAM) while it waits.
    let mut h2 = support::h2c_client(proxy).await;
    let request = Request::get("http://shop.test/hang/h2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let waiting = tokio::spawn(h2.send_request(request));
    requests.recv().await.expect("the upstream got it");
    waiting.abort();

    let found = wait_for_lines(&log, 2).await;
    assert_eq!(found.len(), 2, "{found:#?}");
    for (target, protocol) in [("/hang/h1", "HTTP/1.1"), ("/hang/h2", "HTTP/2")] {
        let line = by_target(&found, target);
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["protocol"], protocol, "{line}");
        assert_eq!(line["pool"], "hang", "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
