//! Differential review of the request paths: the same request served by
//! the HTTP/1.1 fast path, hyper's HTTP/1.1 path, the HTTP/2 raw path
//! (`h2::request::prepare`) and the HTTP/2 path through `Proxy::handle`
//! must reach the upstream the same way and come back the same way. Each
//! test failed on the code it was written against. (Requests leave the
//! fast path here by naming, in `Connection`, a field they do not have.)

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::After;

/// Sends raw bytes on a new connection and reads until the proxy closes it.
async fn h1(proxy: SocketAddr, request: &[u8]) -> String {
    let (out, _) = support::raw_exchange_until_close(proxy, request, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/2 GET of `path` on `app.test` with `extra` fields: the status,
/// the response fields and the body.
async fn h2_get(
    proxy: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let mut sender = support::h2c_client(proxy).await;
    let mut request = http::Request::get(format!("http://app.test{path}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

// ---------------------------------------------------------------------------
// 204 with a Content-Length from the upstream

#[tokio::test]
async fn a_204s_content_length_is_dropped_on_every_http2_path() {
    // An upstream that sends `Content-Length: 0` on a 204 (common: many
    // frameworks do). RFC 9110 §8.6: a server MUST NOT send Content-Length
    // in a 204. The fast path and the HTTP/2 raw path drop it
    // (`fast::parse_response`), hyper's HTTP/1.1 server drops it; the
    // HTTP/2 server relayed it when the answer came through
    // `Proxy::handle` (here: `TE: trailers`, as every gRPC client sends).
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Seen: 1\r\n\r\n",
        After::Again,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));

    let fast = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(fast.starts_with("HTTP/1.1 204"), "{fast:?}");
    assert!(
        support::header_values(&fast, "content-length").is_empty(),
        "{fast:?}"
    );

    let (status, raw_path, _) = h2_get(proxy.addr, "/p", &[]).await;
    assert_eq!(status, 204);
    assert_eq!(
        raw_path.get("x-seen").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(raw_path.get("content-length").is_none(), "{raw_path:?}");

    let (status, handled, _) = h2_get(proxy.addr, "/p", &[("te", "trailers")]).await;
    assert_eq!(status, 204);
    assert_eq!(handled.get("x-seen").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(
        handled.get("content-length").is_none(),
        "a 204 through Proxy::handle carries the upstream's content-length: {handled:?}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/1.0 without Host

#[tokio::test]
async fn an_http10_request_without_host_goes_upstream_with_a_host_field() {
    // HTTP/1.0 has no mandatory Host; the proxy speaks HTTP/1.1 upstream,
    // where a client MUST send Host (RFC 9112 §3.2; an empty value when
    // there is no authority), and a server MUST answer 400 to a request
    // without one. nginx sends `Host: $proxy_host`, and so does the proxy
    // now (it forwarded the request with no Host field at all).
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Again,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let answer = h1(proxy.addr, b"GET /p HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let head = &seen[0].head;
    assert!(head.starts_with("GET /p HTTP/1.1\r\n"), "{head:?}");
    assert_eq!(
        support::header_values(head, "host").len(),
        1,
        "an HTTP/1.1 request went upstream without Host: {head:?}"
    );
}

// ---------------------------------------------------------------------------
// Response heads over 64 KiB

#[tokio::test]
async fn a_response_head_over_64_kib_is_answered_alike_on_every_path() {
    // The fast path (and the HTTP/2 raw path, which shares its parser)
    // refuses a response head over 64 KiB with 502 (`MAX_RESPONSE_HEAD`);
    // hyper's client was built with its default buffer limit (about
    // 400 KiB), so the same answer to the same request was relayed when
    // the request left the fast path. (nginx refuses a head over its
    // proxy_buffer_size, Envoy one over 60 KiB: the fast path is right.)
    // The fast path itself let one through when it came in one read.
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
    reply.extend(std::iter::repeat_n(b'a', 70 * 1024));
    reply.extend_from_slice(b"\r\n\r\nok");
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    let upstream = support::scripted_upstream(reply, After::Again).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));

    let fast = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    // The same request, with a Connection option naming a field it does
    // not have: it leaves the fast path, and nothing else changes.
    let hyper = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close, x-unused\r\n\r\n",
    )
    .await;
    let status = |text: &str| text.get(9..12).unwrap_or_default().to_string();
    assert_eq!(status(&fast), "502", "{:?}", fast.get(..200));
    assert_eq!(
        status(&hyper),
        status(&fast),
        "the same answer is refused on the fast path and relayed on hyper's: {:?}",
        hyper.get(..200)
    );
}

// ---------------------------------------------------------------------------
// The same upstream fault, the same answer

#[tokio::test]
async fn an_upstream_that_closes_unanswered_gets_the_same_error_body_on_every_path() {
    // The upstream reads the request and closes without a byte. The fast
    // path (and the HTTP/2 raw path) said "upstream reset before the
    // response" (though it was a FIN, not a reset); hyper's path says
    // "upstream closed the connection before a complete response: …".
    // Same fault, same status: the same message.
    let upstream = support::scripted_upstream(b"", After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    // The message, without the detail of the library that saw the fault.
    let message = |body: &str| {
        body.split(" (")
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_string()
    };
    let body = |answer: &str| {
        let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        message(body)
    };
    let fast = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let hyper = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nConnection: close, x-unused\r\n\r\n",
    )
    .await;
    assert!(fast.starts_with("HTTP/1.1 502"), "{fast:?}");
    assert!(hyper.starts_with("HTTP/1.1 502"), "{hyper:?}");
    let (_, _, h2_raw) = h2_get(proxy.addr, "/p", &[]).await;
    let (_, _, h2_handled) = h2_get(proxy.addr, "/p", &[("te", "trailers")]).await;
    let h2_raw = message(&String::from_utf8_lossy(&h2_raw));
    let h2_handled = message(&String::from_utf8_lossy(&h2_handled));
    assert_eq!(
        [body(&hyper), h2_raw.clone(), h2_handled.clone()],
        [body(&fast), body(&fast), body(&fast)],
        "fast {:?}, hyper {:?}, h2 raw {h2_raw:?}, h2 handled {h2_handled:?}",
        body(&fast),
        body(&hyper),
    );
}

// ---------------------------------------------------------------------------
// TE goes upstream with its connection option

#[tokio::test]
async fn te_trailers_goes_upstream_with_te_in_connection() {
    // `TE: trailers` is kept (gRPC needs it), and on HTTP/1.1 TE is
    // hop-by-hop: "When the TE header field is sent, a sender MUST also
    // send a "TE" connection option within the Connection header field"
    // (RFC 9110 §10.1.4), so that an intermediary in front of the upstream
    // does not pass it on. Both the HTTP/1.1 and the HTTP/2 request sent
    // `te: trailers` without any Connection field.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Again,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let answer = h1(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let (status, _, _) = h2_get(proxy.addr, "/p", &[("te", "trailers")]).await;
    assert_eq!(status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        let te = support::header_values(&request.head, "te");
        assert_eq!(te, ["trailers"], "{:?}", request.head);
        let options: Vec<String> = support::header_values(&request.head, "connection")
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            options.iter().any(|t| t == "te"),
            "TE sent upstream without the TE connection option: {:?}",
            request.head
        );
    }
}
