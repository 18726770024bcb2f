//! The admin API's HTTP conformance and its contract with
//! `admin/openapi.json` and the README, from a review: each test failed on
//! the code as reviewed, because of the bug its comment names (HEAD, strong
//! and listed If-Match, 404 before 412, percent-encoded names, a broken
//! chunked body, undocumented statuses, Last-Event-ID, an empty abort body,
//! and ctl's If-Match).

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn setup() -> (support::AdminSetup, support::Upstream, support::Upstream) {
    let stable = support::upstream("stable").await;
    let canary = support::upstream("canary").await;
    let setup = support::admin_setup(
        &support::split_config(&[(&stable, 9000), (&canary, 1000)], json!({})),
        None,
    );
    (setup, stable, canary)
}

/// The table's version, as `GET /v1/routes` reports it, and the body.
async fn routes(admin: SocketAddr) -> (u64, String) {
    let (status, headers, body) =
        support::admin_call(admin, Method::GET, "/v1/routes", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    let version = value["version"].as_u64().expect("a version");
    assert_eq!(headers["etag"], format!("\"{version}\"").as_str());
    (version, body)
}

fn error_code(body: &str) -> Value {
    serde_json::from_str::<Value>(body).map_or(Value::Null, |v| v["error"]["code"].clone())
}

/// Writes `request` and reads until the server closes or 5 s pass.
async fn raw(admin: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(admin).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let (bytes, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------
// 1. If-Match compares weakly: `W/"N"` matches version N. RFC 9110
//    §13.1.1: "An origin server MUST use the strong comparison function
//    when comparing entity tags for If-Match"; a weak tag never matches
//    strongly, so the change must be refused with 412.
// ---------------------------------------------------------------------

#[tokio::test]
async fn if_match_with_a_weak_etag_never_matches() {
    let (setup, _stable, _canary) = setup().await;
    let (version, before) = routes(setup.admin).await;
    let weak = format!("W/\"{version}\"");
    let (status, _, body) = support::admin_call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[JSON, ("if-match", &weak)],
        r#"{"weights": {"stable": 5000, "canary": 5000}}"#,
    )
    .await;
    let (_, after) = routes(setup.admin).await;
    assert_eq!(
        (status.as_u16(), error_code(&body)),
        (412, json!("version_mismatch")),
        "If-Match: {weak} matched strongly: {body}"
    );
    assert_eq!(before, after, "a refused call changed the table");
}

// ---------------------------------------------------------------------
// 2. If-Match takes a list (RFC 9110 §13.1.1: `If-Match = "*" /
//    #entity-tag`; the condition holds if any listed tag matches). A list
//    that names the current version is refused with 412.
// ---------------------------------------------------------------------

#[tokio::test]
async fn if_match_with_a_list_of_etags_matches_any_of_them() {
    let (setup, _stable, _canary) = setup().await;
    let (version, _) = routes(setup.admin).await;
    let list = format!("\"{}\", \"{version}\"", version + 100);
    let (status, headers, body) = support::admin_call(
        setup.admin,
        Method::PUT,
        "/v1/routes/web/weights",
        &[JSON, ("if-match", &list)],
        r#"{"weights": {"stable": 5000, "canary": 5000}}"#,
    )
    .await;
    assert_eq!(status, 200, "If-Match: {list} (current {version}): {body}");
    assert_eq!(headers["etag"], format!("\"{}\"", version + 1).as_str());
}

// ---------------------------------------------------------------------
// 3. A precondition is checked before the route is looked up, so a stale
//    If-Match on a route that does not exist answers 412, not 404. RFC
//    9110 §13.2.1: a server "MUST ignore all received preconditions if its
//    response to the same request without those conditions ... would have
//    been a status code other than a 2xx or 412" — without If-Match this
//    call is a 404.
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_route_is_404_whatever_if_match_says() {
    let (setup, _stable, _canary) = setup().await;
    let cases = [
        (
            "/v1/routes/nope/weights",
            Method::PUT,
            r#"{"weights": {"stable": 10000}}"#,
        ),
        ("/v1/routes/nope/rollout/pause", Method::POST, ""),
        (
            "/v1/routes/nope/rollout",
            Method::POST,
            r#"{"strategy": "all_at_once"}"#,
        ),
    ];
    let mut wrong = Vec::new();
    for (path, method, body) in cases {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[("if-match", "\"999\"")]
        } else {
            &[JSON, ("if-match", "\"999\"")]
        };
        let (status, _, answer) =
            support::admin_call(setup.admin, method.clone(), path, headers, body).await;
        if (status.as_u16(), error_code(&answer)) != (404, json!("unknown_route")) {
            wrong.push(format!("{method} {path} -> {status} {answer}"));
        }
    }
    assert!(wrong.is_empty(), "expected 404 unknown_route: {wrong:#?}");
}

// ---------------------------------------------------------------------
// 4. HEAD is refused with 405 on every GET resource, and `Allow` leaves it
//    out. RFC 9110 §9.1: "All general-purpose servers MUST support the
//    methods GET and HEAD"; §9.3.2: HEAD is GET without the content, with
//    the same header fields (ETag included).
// ---------------------------------------------------------------------

#[tokio::test]
async fn head_is_answered_like_get_without_the_body() {
    let (setup, _stable, _canary) = setup().await;
    let mut wrong = Vec::new();
    for path in [
        "/healthz",
        "/readyz",
        "/v1/routes",
        "/v1/routes/web",
        "/v1/routes/web/rollout",
        "/v1/routes/web/health",
        "/v1/events",
        "/metrics",
    ] {
        let (get_status, get_headers, _) =
            support::admin_call(setup.admin, Method::GET, path, &[], "").await;
        let (status, headers, body) =
            support::admin_call(setup.admin, Method::HEAD, path, &[], "").await;
        if status != get_status
            || !body.is_empty()
            || headers.get("etag") != get_headers.get("etag")
            || headers.get("content-type") != get_headers.get("content-type")
        {
            wrong.push(format!(
                "HEAD {path}: {status} (GET {get_status}), allow {:?}, etag {:?} (GET {:?})",
                headers.get("allow"),
                headers.get("etag"),
                get_headers.get("etag")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "HEAD is not GET without a body: {wrong:#?}"
    );
}

// ---------------------------------------------------------------------
// 5. Path segments are matched undecoded: `/v1/routes/we%62` is "no route
//    named \"we%62\"". RFC 3986 §2.3/§6.2.2.2: percent-encoded unreserved
//    characters are equivalent to the characters themselves, and route
//    names are made only of unreserved characters.
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_percent_encoded_route_name_names_the_same_route() {
    let (setup, _stable, _canary) = setup().await;
    let mut wrong = Vec::new();
    for path in [
        "/v1/routes/we%62",
        "/v1/routes/%77%65%62",
        "/v1/routes/web/rollout/%70ause",
    ] {
        let plain = path
            .replace("we%62", "web")
            .replace("%77%65%62", "web")
            .replace("%70ause", "pause");
        let method = if plain.ends_with("/pause") {
            Method::POST
        } else {
            Method::GET
        };
        let (want, _, want_body) =
            support::admin_call(setup.admin, method.clone(), &plain, &[], "").await;
        let (got, _, got_body) =
            support::admin_call(setup.admin, method.clone(), path, &[], "").await;
        if (got, error_code(&got_body)) != (want, error_code(&want_body)) {
            wrong.push(format!(
                "{method} {path}: {got} {got_body:.120}; {plain}: {want} {want_body:.120}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------
// 6. Any error reading the body is reported as `413 body_too_large`
//    ("request body over 65536 bytes"): a malformed chunked body of a few
//    bytes gets a 413 that blames its size. It is a malformed request: 400.
//    (api.rs `read_limited` maps every `Limited` error to TooLarge.)
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_not_a_413() {
    let (setup, _stable, _canary) = setup().await;
    let (_, before) = routes(setup.admin).await;
    let request = b"PUT /v1/routes/web/weights HTTP/1.1\r\n\
        host: admin\r\n\
        content-type: application/json\r\n\
        transfer-encoding: chunked\r\n\
        connection: close\r\n\
        \r\n\
        zz\r\n{}\r\n0\r\n\r\n";
    let answer = raw(setup.admin, request).await;
    let (_, after) = routes(setup.admin).await;
    assert_eq!(before, after);
    let status = answer.split(' ').nth(1).unwrap_or_default();
    assert_eq!(
        status, "400",
        "a malformed chunked body of 2 bytes is answered: {answer:?}"
    );
}

// ---------------------------------------------------------------------
// 7. Status codes the server gives that `openapi.json` does not document
//    for the operation: `GET /v1/events/stream?since=abc` answers 400
//    (only 200 and 401 are documented), and `POST .../rollout/abort` with
//    a malformed JSON reason answers 400 (not documented either).
// ---------------------------------------------------------------------

#[tokio::test]
async fn every_status_the_server_gives_is_documented() {
    let spec: Value =
        serde_json::from_str(include_str!("../admin/openapi.json")).expect("openapi.json parses");
    let (setup, _stable, _canary) = setup().await;
    // A running rollout, so that abort gets as far as its body.
    let (status, _, body) = support::admin_call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        r#"{"strategy": "canary", "steps": [{"weight": 2000}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cases = [
        (
            Method::GET,
            "/v1/events/stream",
            "/v1/events/stream?since=abc",
            vec![],
            "",
        ),
        (
            Method::POST,
            "/v1/routes/{route}/rollout/abort",
            "/v1/routes/web/rollout/abort",
            vec![JSON],
            "{\"reason\": ",
        ),
        (
            Method::POST,
            "/v1/routes/{route}/rollout/abort",
            "/v1/routes/web/rollout/abort",
            vec![JSON],
            "{\"why\": \"x\"}",
        ),
    ];
    let mut undocumented = Vec::new();
    for (method, template, path, headers, body) in cases {
        let (status, _, answer) =
            support::admin_call(setup.admin, method.clone(), path, &headers, body).await;
        let documented =
            &spec["paths"][template][method.as_str().to_ascii_lowercase()]["responses"];
        assert!(documented.is_object(), "{method} {template} is documented");
        if documented.get(status.as_str()).is_none() {
            undocumented.push(format!("{method} {path}: {status} {answer}"));
        }
    }
    assert!(
        undocumented.is_empty(),
        "statuses missing from openapi.json: {undocumented:#?}"
    );
}

// ---------------------------------------------------------------------
// 8. The event stream gives every event an `id:`, so an EventSource that
//    reconnects sends `Last-Event-ID` (WHATWG HTML §9.2 "Server-sent
//    events"), but the server ignores it and replays the whole log from
//    event 1: every reconnect duplicates every event the client has seen.
// ---------------------------------------------------------------------

#[tokio::test]
async fn the_event_stream_resumes_after_last_event_id() {
    let (setup, _stable, _canary) = setup().await;
    for (stable, canary) in [(8000, 2000), (7000, 3000)] {
        let body = format!(r#"{{"weights": {{"stable": {stable}, "canary": {canary}}}}}"#);
        let (status, _, answer) = support::admin_call(
            setup.admin,
            Method::PUT,
            "/v1/routes/web/weights",
            &[JSON],
            &body,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let (_, _, events) = support::admin_call(setup.admin, Method::GET, "/v1/events", &[], "").await;
    let events: Value = serde_json::from_str(&events).expect("JSON");
    let ids: Vec<u64> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert!(ids.len() >= 2, "{events}");
    let seen = ids[ids.len() - 2];
    let last = ids[ids.len() - 1];

    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let request = format!(
        "GET /v1/events/stream HTTP/1.1\r\nhost: admin\r\naccept: text/event-stream\r\n\
         last-event-id: {seen}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // Read until the first event frame has arrived.
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let first_id = loop {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(at) = text.find("\nid: ") {
            let rest = &text[at + 5..];
            if let Some(end) = rest.find('\n') {
                break rest[..end].trim().parse::<u64>().expect("numeric id");
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("an event within 5 s")
            .expect("read");
        assert!(n > 0, "closed: {text:?}");
        bytes.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(
        first_id, last,
        "Last-Event-ID: {seen} was ignored: the stream started again at event {first_id}"
    );
}

// ---------------------------------------------------------------------
// 9. `POST .../rollout/abort` with `Content-Type: application/json` and no
//    body is refused (400 invalid_json, "EOF while parsing"): the document
//    says the body is optional (`requestBody.required: false`), and many
//    clients send the type on every call. An empty body is no body.
// ---------------------------------------------------------------------

#[tokio::test]
async fn abort_with_a_json_type_and_no_body_aborts() {
    let (setup, _stable, _canary) = setup().await;
    let (status, _, body) = support::admin_call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout",
        &[JSON],
        r#"{"strategy": "canary", "steps": [{"weight": 2000}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = support::admin_call(
        setup.admin,
        Method::POST,
        "/v1/routes/web/rollout/abort",
        &[JSON],
        "",
    )
    .await;
    assert_eq!(status, 200, "abort with an empty JSON-typed body: {body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["rollout"]["state"], "aborted", "{body}");
}

// ---------------------------------------------------------------------
// 10. Errors hyper answers itself are not JSON: a malformed request line
//     gets a bare `400` with an empty body, breaking the documented rule
//     that every error is `{"error": {"code", "message"}}`. The first
//     head of a connection is now checked before hyper reads it.
// ---------------------------------------------------------------------

/// The status line and the JSON body of a raw answer.
fn status_and_error(answer: &str) -> (&str, Value) {
    let status = answer.lines().next().unwrap_or_default();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let error = serde_json::from_str::<Value>(body).map_or(Value::Null, |v| v["error"].clone());
    (status, error)
}

#[tokio::test]
async fn bytes_that_are_not_a_request_get_a_json_400_and_change_nothing() {
    let (setup, _stable, _canary) = setup().await;
    let (version, before) = routes(setup.admin).await;
    for (bytes, says) in [
        (&b"hello there\r\n\r\n"[..], "not an HTTP/1.1 request head"),
        (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", "invalid header name"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2 is not served"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            "a TLS handshake on a plaintext listener",
        ),
        (
            b"PUT http://[::1/v1/routes/web/weights HTTP/1.1\r\nHost: x\r\n\r\n",
            "is not a URI",
        ),
    ] {
        let answer = raw(setup.admin, bytes).await;
        let (status, error) = status_and_error(&answer);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{answer:?}");
        assert_eq!(error["code"], "malformed_request", "{answer:?}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bytes:?}: {message:?}");
    }
    assert_eq!(routes(setup.admin).await, (version, before));
}

#[tokio::test]
async fn a_first_head_that_comes_a_byte_at_a_time_is_served() {
    let (setup, _stable, _canary) = setup().await;
    let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
    let request = b"GET /v1/routes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for byte in request {
        stream.write_all(&[*byte]).await.expect("write");
    }
    let (bytes, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&bytes);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert!(answer.contains("\"version\""), "{answer:?}");
    // A second request on a kept-alive connection still reaches the API.
    let answer = raw(
        setup.admin,
        b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer:?}");
    assert!(answer.contains("\"not_found\""), "{answer:?}");
}

// ---------------------------------------------------------------------
// 10b. Only a connection's first head was checked: a malformed head later
//      on a kept-alive connection got hyper's bare `400`, and a head over
//      hyper's buffer its bare `431`, neither with a JSON body.
// ---------------------------------------------------------------------

/// Reads one answer framed by its `content-length`.
async fn one_answer(stream: &mut TcpStream) -> String {
    let head = String::from_utf8_lossy(&support::read_head(stream).await).into_owned();
    let length: usize = support::header_values(&head, "content-length")
        .first()
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the body");
    format!("{head}{}", String::from_utf8_lossy(&body))
}

#[tokio::test]
async fn later_heads_on_a_kept_alive_connection_get_json_refusals_and_change_nothing() {
    let (setup, _stable, _canary) = setup().await;
    let (version, before) = routes(setup.admin).await;
    let good = b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n\r\n";
    for (bytes, says) in [
        (&b"hello there\r\n\r\n"[..], "not an HTTP/1.1 request head"),
        (
            b"PUT /v1/routes/web/weights HTTP/1.1\r\nHo st: x\r\n\r\n",
            "invalid header name",
        ),
        (
            b"PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
            "Content-Length is not a number",
        ),
        (
            b"PUT /v1/routes/web/weights HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "does not end in chunked",
        ),
    ] {
        let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
        stream.write_all(good).await.expect("write");
        let first = one_answer(&mut stream).await;
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first:?}");
        stream.write_all(bytes).await.expect("write");
        let (rest, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
        let rest = String::from_utf8_lossy(&rest);
        let (status, error) = status_and_error(&rest);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{bytes:?}: {rest:?}");
        assert_eq!(error["code"], "malformed_request", "{rest:?}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{bytes:?}: {message:?}");
        assert!(rest.contains("content-type: application/json"), "{rest:?}");
    }

    // Pipelined behind a good request, in one write: the good one is
    // answered, then the refusal (which cannot name the fault: the bytes
    // read since the last answer start with the good head).
    let mut pipelined = good.to_vec();
    pipelined.extend_from_slice(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n");
    let answer = raw(setup.admin, &pipelined).await;
    let (_, refusal) = answer.split_once("}HTTP/1.1 ").expect("two answers");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    let (status, error) = status_and_error(refusal);
    assert!(status.starts_with("400 Bad Request"), "{answer:?}");
    assert_eq!(error["code"], "malformed_request", "{answer:?}");

    // A head well over hyper's 64 KiB buffer (a read may take it a little
    // past): 431 with JSON, first on its connection (over the first-head
    // check's 16 KiB, so hyper's) and later.
    let huge = format!(
        "GET /v1/routes HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    for later in [false, true] {
        let mut stream = TcpStream::connect(setup.admin).await.expect("connect");
        if later {
            stream.write_all(good).await.expect("write");
            assert!(one_answer(&mut stream).await.starts_with("HTTP/1.1 200 OK"));
        }
        // The server may close before it has read all of it.
        let _ = stream.write_all(huge.as_bytes()).await;
        let (rest, _) = support::read_until_close(&mut stream, Duration::from_secs(5)).await;
        let rest = String::from_utf8_lossy(&rest);
        let (status, error) = status_and_error(&rest);
        assert_eq!(
            status, "HTTP/1.1 431 Request Header Fields Too Large",
            "{rest:?}"
        );
        assert_eq!(error["code"], "head_too_large", "{rest:?}");
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("64 KiB"),
            "{rest:?}"
        );
    }
    assert_eq!(routes(setup.admin).await, (version, before));
}

// ---------------------------------------------------------------------
// 11. `switchyard ctl weights` reads the route, works out the weights of
//     the pools it was not given from that read, and PUTs them without
//     `If-Match`: a change another operator makes between the GET and the
//     PUT is overwritten blindly — the lost update the README says
//     If-Match exists to prevent. The PUT must carry the GET's ETag.
// ---------------------------------------------------------------------

#[tokio::test]
async fn ctl_weights_sends_the_etag_it_read_as_if_match() {
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    let admin = support::raw_upstream(move |mut stream| {
        let seen = seen.clone();
        async move {
            let head = String::from_utf8_lossy(&support::read_head(&mut stream).await).into_owned();
            let length: usize = support::header_values(&head, "content-length")
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = stream.read_exact(&mut body).await;
            seen.lock().expect("lock").push(head);
            let route = json!({
                "name": "web",
                "baseline": "stable",
                "weights": {"stable": 8000, "canary": 1000, "beta": 1000},
                "version": 7,
                "rollout": null,
            })
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: \"7\"\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{route}",
                route.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    })
    .await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "--admin", &format!("http://{admin}"), "--json"])
        .args(["weights", "web", "canary=25%"])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_ADMIN")
        .output()
        .await
        .expect("run ctl");
    assert!(
        output.status.success(),
        "ctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let heads = heads.lock().expect("lock").clone();
    let put = heads
        .iter()
        .find(|h| h.starts_with("PUT "))
        .unwrap_or_else(|| panic!("no PUT among {heads:?}"));
    assert_eq!(
        support::header_values(put, "if-match"),
        vec!["\"7\"".to_string()],
        "ctl weights computed the other pools' weights from version 7 but \
         sent its PUT unconditionally: {put:?}"
    );
}
