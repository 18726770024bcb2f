//! HTTP/1.1 requests that leave the fast path (hyper's server and client
//! path), from a review: request trailers, GET bodies over the
//! read-ahead, responses with both framings or a list of lengths,
//! HTTP/1.0 upstreams, a closing
//! answer with pipelined bytes unread, and an upload the upstream answered
//! early. Each test goes through real loopback sockets, with raw upstreams
//! that record the bytes they got; each failed on the code it was written
//! against.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::After;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a new connection and reads until the proxy closes
/// it (or 5 s pass).
async fn raw(proxy: std::net::SocketAddr, request: &[u8]) -> (String, bool) {
    let (out, closed) =
        support::raw_exchange_until_close(proxy, request, Duration::from_secs(5)).await;
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// ---------------------------------------------------------------------------
// Request trailers

#[tokio::test]
async fn request_trailers_of_a_small_chunked_body_reach_the_upstream() {
    // A chunked request with a trailer field (announced in `Trailer`, as
    // gRPC-web and checksumming uploaders do). The body is under the
    // 64 KiB read-ahead, so the proxy reads it whole, trailers included
    // (`RequestBody::Full { trailers }`), and must pass them on.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let (text, _) = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-checksum\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let body = String::from_utf8_lossy(&seen[0].body).into_owned();
    assert!(
        body.to_ascii_lowercase().contains("x-checksum: abc123"),
        "the request trailer was dropped: upstream head {:?}, body {body:?}",
        seen[0].head
    );
}

// ---------------------------------------------------------------------------
// Bodies over the read-ahead

#[tokio::test]
async fn a_get_with_a_chunked_body_over_64_kib_is_forwarded_with_its_body() {
    // GET with a body (Elasticsearch's `GET /_search`, for one) is legal
    // HTTP; over 64 KiB the body streams. Its `Transfer-Encoding` is
    // stripped as hop-by-hop and nothing else frames it: hyper's client
    // then sends a GET of unknown length as having no body at all.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let body: Vec<u8> = (0..100 * 1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut request =
        b"GET /_search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(&request).await.expect("write");
    let mut buf = Vec::new();
    let answer = support::read_response(&mut stream, &mut buf, false).await;
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{:?}", answer.head);
    let got = match support::decode_chunked(&seen[0].body) {
        Some((data, _)) => data,
        None => seen[0].body.clone(),
    };
    assert!(
        got == body,
        "the upstream got {} of {} body bytes; its head: {:?} (client got {} {:?})",
        got.len(),
        body.len(),
        seen[0].head,
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
}

// ---------------------------------------------------------------------------
// Responses with both framings

#[tokio::test]
async fn a_response_with_both_length_and_chunked_is_not_relayed_with_its_length_on_hyper_path() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an
    // intermediary that forwards such a message MUST remove the
    // Content-Length first. The fast path refuses it (502); on hyper's
    // path the `Transfer-Encoding` goes (re-framed) but the upstream's
    // `Content-Length` stays, and no longer matches the body.
    const REPLY: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let upstream = support::scripted_upstream(REPLY, After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));

    // The fast path: refused.
    let (fast, _) = raw(
        proxy.addr,
        b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(fast.starts_with("HTTP/1.1 502"), "fast path: {fast:?}");

    // hyper's path (`TE: trailers` is not for the fast path).
    let (text, _) = raw(
        proxy.addr,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head_end = text.find("\r\n\r\n").map_or(text.len(), |at| at + 4);
    let head = &text[..head_end];
    let refused = text.starts_with("HTTP/1.1 502");
    let relayed_whole = text.starts_with("HTTP/1.1 200")
        && support::header_values(head, "content-length").is_empty()
        && support::parse_response(text.as_bytes(), false).is_some_and(|(r, _)| r.body == b"hello");
    assert!(
        refused || relayed_whole,
        "relayed with the upstream's Content-Length: {text:?}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/1.0 upstreams

#[tokio::test]
async fn an_http_1_0_upstream_answer_goes_to_the_client_as_http_1_1_on_a_kept_connection() {
    // RFC 9112 §2.3: an intermediary sends its own HTTP version. The
    // fast path restates the status line as HTTP/1.1; on hyper's path the
    // upstream's version goes on, so a keep-alive HTTP/1.1 client gets an
    // HTTP/1.0 answer (which by RFC 9112 §9.3 ends the connection).
    let upstream = support::scripted_upstream(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let first = support::read_response(&mut stream, &mut buf, false).await;
    assert_eq!(first.status, 200);
    assert!(
        first.head.starts_with("HTTP/1.1 200"),
        "the upstream's HTTP/1.0 reached an HTTP/1.1 client: {:?}",
        first.head
    );
}

#[tokio::test]
async fn a_close_delimited_http_1_0_answer_does_not_end_a_keep_alive_client_connection() {
    // The same with a body delimited by the upstream's close, as HTTP/1.0
    // servers send: re-framed as chunked for an HTTP/1.1 client (as an
    // HTTP/1.1 upstream's is), the client's connection would stay open.
    let upstream =
        support::scripted_upstream(b"HTTP/1.0 200 OK\r\n\r\nold server", After::Close).await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET /a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let (out, closed) = support::read_until_close(&mut stream, Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        !closed && text.starts_with("HTTP/1.1 200"),
        "closed: {closed}, client read {text:?}"
    );
}

// ---------------------------------------------------------------------------
// Connection: close with pipelined bytes unread

#[tokio::test]
async fn a_closing_answer_on_hyper_path_is_not_cut_by_unread_pipelined_bytes() {
    // The fast path lingers after a closing answer so that unread bytes do
    // not make the kernel reset the connection and drop the answer's
    // tail. The same request on hyper's path (`TE: trailers`).
    const TOTAL: u64 = 8 * 1024 * 1024;
    let (addr, _) = support::streaming_upstream(TOTAL).await;
    let proxy = support::proxy_to("stable", addr, json!({}));
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut sent =
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n".to_vec();
    sent.resize(sent.len() + 256 * 1024, b'z');
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&sent).await;
        write
    });
    // Read in small pieces, so that the proxy's writes run ahead of the
    // client and some of the answer is still queued when it closes.
    let mut received = Vec::new();
    let read_all = async {
        let mut piece = [0u8; 512];
        loop {
            match read.read(&mut piece).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&piece[..n]),
                Err(err) => return Err(err),
            }
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the answer within 20 s");
    writer.abort();
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .expect("a response head");
    let body = received.len() - head_end;
    assert!(
        outcome.is_ok() && body as u64 == TOTAL,
        "{outcome:?}: {body} of {TOTAL} body bytes; head {:?}",
        String::from_utf8_lossy(&received[..head_end])
    );
}

// ---------------------------------------------------------------------------
// An early answer to a streamed upload

/// A raw upstream: `/early` is answered at once and its connection held
/// open, never read again; anything else is answered `200 second`.
async fn early_answering_upstream() -> std::net::SocketAddr {
    support::raw_upstream(|mut stream| async move {
        let head = support::read_head(&mut stream).await;
        let head = String::from_utf8_lossy(&head).into_owned();
        if head.split(' ').nth(1) == Some("/early") {
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nearly")
                .await;
            std::future::pending::<()>().await;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            .await;
    })
    .await
}

#[tokio::test]
async fn an_upload_answered_early_does_not_pin_the_client_connection_forever() {
    // `Expect: 100-continue` and a 64 MiB body: the proxy reads 64 KiB
    // ahead and streams the rest. The upstream answers 413 at once and
    // reads no more. RFC 9112 §9.3: a server that answers before reading
    // the whole body says whether it closes or reads on and discards it.
    // It once did neither: the answer said nothing, the client's upload
    // stayed stuck behind the upstream that no longer read, no timeout ran
    // (idle is 1 s), and a request sent after the body was never answered.
    // Both paths (the fast path streams large bodies too).
    for fast_path in [true, false] {
        let addr = early_answering_upstream().await;
        let mut config = support::pool_config(
            "web",
            addr,
            json!({"timeouts": {"idle": "1s", "response_header": "2s", "connect": "1s", "drain": "1s"}}),
        );
        config["routes"][0]["fast_path"] = json!(fast_path);
        let proxy = support::proxy(&config);
        early_answer_ends_the_upload(proxy.addr, fast_path).await;
    }
}

async fn early_answer_ends_the_upload(proxy: std::net::SocketAddr, fast_path: bool) {
    const LEN: usize = 64 * 1024 * 1024;
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {LEN}\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.expect("write head");
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = write
            .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        // Keep the write side open.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    // A 100 first, unless the proxy saw body bytes with the head (RFC 9110
    // §10.1.1 lets it leave the 100 out then: this client does not wait).
    let mut early = support::read_response(&mut read, &mut buf, false).await;
    if early.status == 100 {
        early = support::read_response(&mut read, &mut buf, false).await;
    }
    assert_eq!(early.status, 413, "fast path {fast_path}: {:?}", early.head);
    let says_close = early
        .header("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("close"));

    // Within 10 s (ten idle timeouts): the connection ends, or the body
    // is read (and dropped) and the request after it answered.
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    let outcome = loop {
        if let Some((second, _)) = support::parse_response(&buf, false) {
            break format!("answered {}", second.status);
        }
        match tokio::time::timeout_at(end, read.read(&mut chunk)).await {
            Err(_) => break "still open, nothing more read".to_string(),
            Ok(Ok(0)) | Ok(Err(_)) => break "closed".to_string(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let upload_stuck = !writer.is_finished();
    writer.abort();
    assert!(
        outcome != "still open, nothing more read",
        "fast path {fast_path}: 10 s after the early answer (connection: close said: \
         {says_close}, upload stuck: {upload_stuck}): {outcome}"
    );
}

// ---------------------------------------------------------------------------
// A list of equal lengths

#[tokio::test]
async fn a_length_list_in_an_answer_goes_on_as_one_value_on_hyper_path_too() {
    // RFC 9110 §8.6: a list of equal lengths may be taken as one; a
    // recipient may as well refuse it (Go's client does). The fast path
    // restates it as one value (README, `fast.rs`); hyper's path passes
    // the list on as the upstream wrote it.
    let upstream = support::scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        After::Close,
    )
    .await;
    let proxy = support::proxy_to("web", upstream.addr, json!({}));
    let (fast, _) = raw(
        proxy.addr,
        b"GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let fast_lengths = support::header_values(&fast, "content-length");
    assert_eq!(fast_lengths, ["5"], "fast path: {fast:?}");
    let (text, _) = raw(
        proxy.addr,
        b"GET /slow HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = &text[..text.find("\r\n\r\n").map_or(text.len(), |at| at + 4)];
    assert_eq!(
        support::header_values(head, "content-length"),
        ["5"],
        "hyper's path: {text:?}"
    );
}
