//! Requests refused before they exist — a head that is not HTTP/1.1, a
//! target that is not a URI, a `Content-Length` that is not a number, too
//! many fields, two framings, a head that never ends — through the binary:
//! each gets an answer whose body says why (hyper's own bare answers are
//! replaced), reaches no upstream, and is a line in the access log
//! (status, client, the reason). Each head goes on a fresh connection,
//! alone or behind a well-formed request that the fast path serves first.

use crate::support;

use std::time::Duration;

use serde_json::{json, Value};

const GOOD: &str = "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";

/// (head, status, what the body and the log line say)
const REFUSED: [(&str, u16, &str); 7] = [
    ("hello there\r\n\r\n", 400, "malformed request head"),
    (
        "GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        400,
        "malformed request head",
    ),
    (
        "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        400,
        "malformed request head",
    ),
    (
        "GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "malformed request head",
    ),
    (
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
        400,
        "malformed request head",
    ),
    (
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (
        "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n",
        431,
        "request head over the limit",
    ),
];

#[tokio::test]
async fn a_refused_head_is_answered_with_why_forwarded_never_and_logged() {
    let dir = support::scratch_dir("refusals");
    let log = dir.join("access.log");
    let upstream = support::upstream("up").await;
    let mut config = support::pool_config(
        "up",
        upstream.addr,
        json!({
            "limits": {"max_headers": 5},
            "timeouts": {"drain": "1s", "request_header": "300ms"},
        }),
    );
    config["access_log"] = json!({"path": log.to_str().expect("UTF-8")});
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    let mut expected = Vec::new();
    for (head, status, says) in REFUSED {
        for behind_a_good_one in [false, true] {
            let request = match behind_a_good_one {
                false => head.to_string(),
                true => format!("{GOOD}{head}"),
            };
            let (bytes, closed) = support::raw_exchange_until_close(
                proxy,
                request.as_bytes(),
                Duration::from_secs(5),
            )
            .await;
            let answer = String::from_utf8_lossy(&bytes);
            assert!(closed, "{head:?}: the connection stays open: {answer:?}");
            let answers = answer.matches("HTTP/1.1 ").count();
            assert_eq!(answers, 1 + usize::from(behind_a_good_one), "{answer:?}");
            let last = &answer[answer.rfind("HTTP/1.1 ").expect("an answer")..];
            assert!(
                last.starts_with(&format!("HTTP/1.1 {status} ")),
                "{head:?}: {answer:?}"
            );
            let body = last.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            assert!(body.contains(says), "{head:?}: {answer:?}");
            expected.push((status, says));
        }
    }
    // A head that never ends: 408, logged too.
    let (bytes, _) = support::raw_exchange_until_close(
        proxy,
        b"GET /slow HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    let answer = String::from_utf8_lossy(&bytes);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    expected.push((408, "request head not received within timeout"));

    // Only the well-formed requests reached the upstream.
    let reached = upstream.requests();
    assert_eq!(reached.len(), REFUSED.len(), "{reached:?}");
    assert!(reached.iter().all(|r| r.uri == "/ok"), "{reached:?}");

    let lines = support::wait_for_json_lines(&log, expected.len() + REFUSED.len()).await;
    let refused: Vec<&Value> = lines.iter().filter(|l| l["status"] != 200).collect();
    assert_eq!(refused.len(), expected.len(), "{lines:#?}");
    for (status, says) in expected {
        let found = refused.iter().any(|line| {
            line["status"] == status
                && line["error"].as_str().is_some_and(|e| e.contains(says))
                && line["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("127.0.0.1:"))
                && line["protocol"] == "HTTP/1.1"
        });
        assert!(found, "no line for {status} {says:?}: {refused:#?}");
    }
}

#[tokio::test]
async fn an_http2_stream_reset_as_malformed_is_logged_as_nginx_logs_it() {
    use support::h2::{frame, request, RawClient, END_HEADERS, END_STREAM, HEADERS};
    let dir = support::scratch_dir("refusals-h2");
    let log = dir.join("access.log");
    let upstream = support::upstream("up").await;
    let mut config = support::pool_config("up", upstream.addr, json!({}));
    config["access_log"] = json!({"path": log.to_str().expect("UTF-8")});
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write");
    let (_child, proxy, _admin) = support::start_on_config(&file).await;

    let mut client = RawClient::connect(proxy, &[]).await;
    let upper = request("GET", "/upper", &[("X-Upper", "1")]);
    client
        .send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &upper))
        .await;
    let lines = support::wait_for_json_lines(&log, 1).await;
    let line = &lines[0];
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
    assert_eq!(line["status"], 400, "{line}");
    assert!(line["target"].is_null(), "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("malformed request, stream reset: "),
        "{line}"
    );
    assert!(
        upstream.requests().is_empty(),
        "a malformed request was forwarded"
    );
}
