//! A seeded fuzz of the HTTP/2 (h2c) server against the real binary:
//! valid requests framed at random (split, padded, prioritised,
//! interleaved, with CONTINUATIONs and trailers), byte-level mutations and
//! truncations. Every valid request is answered and reaches the upstream
//! once with its exact body, every malformed one is reset and never
//! forwarded, the server never goes silent on a broken connection, never
//! panics and does not grow. Plus the two bugs the fuzz found, fixed.
//! `FUZZ_SEED` picks another seed, `FUZZ_ONLY` runs one iteration.
use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::h2::*;

/// Stream 2 is even: a client can never open it, so it is idle whatever
/// the client's last stream (RFC 9113 §5.1.1), and DATA on it is a
/// connection error PROTOCOL_ERROR (§5.1, §6.1). After stream 3 it got
/// STREAM_CLOSED: DATA took only ids above the last as idle.
#[tokio::test]
async fn data_on_an_even_stream_below_the_last_is_a_protocol_error() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    client
        .send(&frame(HEADERS, HEAD_ONLY, 3, &request("GET", "/", &[])))
        .await;
    assert_eq!(client.response(3).await.body, b"app");
    client.send(&frame(DATA, 0, 2, b"x")).await;
    let goaway = client.goaway().await;
    assert_eq!(
        goaway.error_code(),
        PROTOCOL_ERROR,
        "DATA on even stream 2: {:?} ({})",
        goaway,
        String::from_utf8_lossy(&goaway.payload[8..])
    );
}

/// RFC 9113 §8.3.1: for http/https, `:path` is the origin form (starts with
/// "/"), or "*" and then only for an OPTIONS request; anything else makes
/// the request malformed (§8.1.1: reset, never forwarded; nginx answers
/// "client sent invalid :path header", Envoy resets the stream). `GET`
/// with `:path: *` went upstream as `GET * HTTP/1.1` (asterisk form, which
/// RFC 9112 §3.2.4 allows for OPTIONS only), and `:path: ?x` as `GET /?x`.
#[tokio::test]
async fn a_path_that_is_not_origin_form_is_reset_unforwarded() {
    let upstream = support::upstream("app").await;
    let proxy = support::proxy_to("app", upstream.addr, json!({}));
    let mut client = RawClient::connect(proxy.addr, &[]).await;
    let mut answers = Vec::new();
    for (id, path) in [(1u32, "*"), (3, "?x")] {
        client
            .send(&frame(HEADERS, HEAD_ONLY, id, &request("GET", path, &[])))
            .await;
        let answer = loop {
            let f = client.next().await.expect("an answer before the close");
            if f.id == id && (f.kind == RST_STREAM || f.kind == HEADERS) {
                break f;
            }
        };
        answers.push((path, answer.kind, answer.payload.clone()));
    }
    let forwarded: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert!(
        forwarded.is_empty(),
        "malformed :path forwarded as {forwarded:?}; answers {answers:?}"
    );
    for (path, kind, payload) in answers {
        assert_eq!(kind, RST_STREAM, ":path {path:?} answered {payload:?}");
    }
    // OPTIONS * is the asterisk form's one use, and goes upstream as it is.
    client
        .send(&frame(HEADERS, HEAD_ONLY, 5, &request("OPTIONS", "*", &[])))
        .await;
    let answer = client.response(5).await;
    assert_eq!(answer.field(":status"), Some("200"), "{answer:?}");
    let forwarded: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(forwarded, ["*"]);
}

// ---------------------------------------------------------------------
// Campaign machinery.
// ---------------------------------------------------------------------

/// xorshift64*: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A client-side model of the server's HPACK decoder table, so the
/// generator can refer to entries it added (RFC 7541 §2.3, §4).
struct Encoder {
    table: Vec<(String, String)>,
    max: usize,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder {
            table: Vec::new(),
            max: 4096,
        }
    }
    fn size(&self) -> usize {
        self.table.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
    }
    fn evict(&mut self) {
        while self.size() > self.max {
            self.table.pop();
        }
    }
    fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
        let mask = (1usize << prefix) - 1;
        if value < mask {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | mask as u8);
        let mut rest = value - mask;
        while rest >= 0x80 {
            out.push((rest as u8 & 0x7f) | 0x80);
            rest >>= 7;
        }
        out.push(rest as u8);
    }
    /// One header block for `fields`, in a random mix of representations.
    fn encode(&mut self, rng: &mut Rng, fields: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        if rng.chance(10) {
            let size = *rng.pick(&[0usize, 100, 4096, 256]);
            Encoder::put_int(&mut out, 0x20, 5, size);
            self.max = size;
            self.evict();
        }
        for (name, value) in fields {
            let found = self.table.iter().position(|(n, v)| n == name && v == value);
            if let (Some(at), true) = (found, rng.chance(70)) {
                Encoder::put_int(&mut out, 0x80, 7, 62 + at);
                continue;
            }
            match rng.below(3) {
                0 => {
                    out.push(0x40);
                    put_string(&mut out, name);
                    put_string(&mut out, value);
                    self.table.insert(0, (name.clone(), value.clone()));
                    if name.len() + value.len() + 32 > self.max {
                        self.table.clear();
                    } else {
                        self.evict();
                    }
                }
                1 => {
                    out.push(0x10);
                    put_string(&mut out, name);
                    put_string(&mut out, value);
                }
                _ => {
                    out.push(0x00);
                    put_string(&mut out, name);
                    put_string(&mut out, value);
                }
            }
        }
        out
    }
}

/// A header block as HEADERS and CONTINUATION frames, split at random,
/// perhaps padded and with a priority.
fn random_header_frames(rng: &mut Rng, id: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let mut pieces = Vec::new();
    let mut rest = block;
    while !rest.is_empty() && rng.chance(30) && pieces.len() < 4 {
        let at = rng.below(rest.len() as u64 + 1) as usize;
        pieces.push(&rest[..at]);
        rest = &rest[at..];
    }
    pieces.push(rest);
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let end_headers = if last { END_HEADERS } else { 0 };
        if i == 0 {
            let mut flags = end_headers | if end_stream { END_STREAM } else { 0 };
            let mut payload = Vec::new();
            let pad = if rng.chance(20) {
                rng.below(20) as usize
            } else {
                0
            };
            if pad > 0 || rng.chance(5) {
                flags |= PADDED;
                payload.push(pad as u8);
            }
            if rng.chance(20) {
                flags |= PRIORITY_FLAG;
                let dep = id.saturating_sub(2);
                payload.extend_from_slice(&dep.to_be_bytes());
                payload.push(rng.below(256) as u8);
            }
            payload.extend_from_slice(piece);
            payload.extend(std::iter::repeat_n(0u8, pad));
            out.extend(frame(HEADERS, flags, id, &payload));
        } else {
            out.extend(frame(CONTINUATION, end_headers, id, piece));
        }
    }
    out
}

/// A DATA frame, perhaps padded.
fn random_data(rng: &mut Rng, id: u32, end_stream: bool, data: &[u8]) -> Vec<u8> {
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if rng.chance(20) {
        let pad = rng.below(30) as usize;
        flags |= PADDED;
        let mut payload = vec![pad as u8];
        payload.extend_from_slice(data);
        payload.extend(std::iter::repeat_n(0u8, pad));
        return frame(DATA, flags, id, &payload);
    }
    frame(DATA, flags, id, data)
}

/// A frame that changes nothing a request depends on.
fn housekeeping(rng: &mut Rng, last_id: u32) -> Vec<u8> {
    match rng.below(6) {
        0 => frame(PING, 0, 0, &rng.next().to_be_bytes()),
        1 => frame(
            WINDOW_UPDATE,
            0,
            0,
            &(1 + rng.below(1000) as u32).to_be_bytes(),
        ),
        2 => {
            let id = 2 * rng.below(u64::from(last_id / 2 + 3)) as u32 + 1;
            let dep = (id + 2).to_be_bytes();
            frame(PRIORITY, 0, id, &[dep[0], dep[1], dep[2], dep[3], 7])
        }
        3 => frame(
            0x0a + rng.below(0xf0) as u8,
            rng.below(256) as u8,
            rng.below(9) as u32,
            &vec![0xaa; rng.below(40) as usize],
        ),
        4 => {
            let mut payload = Vec::new();
            for _ in 0..rng.below(4) {
                let (id, value): (u16, u32) = match rng.below(5) {
                    0 => (1, rng.below(1 << 20) as u32),
                    1 => (2, 0),
                    2 => (5, 16_384 + rng.below((1 << 24) - 16_384) as u32),
                    3 => (6, rng.next() as u32),
                    _ => (0x10 + rng.below(0xff00) as u16, rng.next() as u32),
                };
                payload.extend_from_slice(&id.to_be_bytes());
                payload.extend_from_slice(&value.to_be_bytes());
            }
            frame(SETTINGS, 0, 0, &payload)
        }
        _ => frame(SETTINGS, ACK, 0, &[]),
    }
}

/// A request the generator made, and what the upstream must see of it.
struct Planned {
    id: u32,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    /// A valid request: must reach the upstream once, body exact. Else
    /// malformed: must never reach it.
    valid: bool,
    what: String,
}

/// Malformations of a request (RFC 9113 §8.1.1, §8.2, §8.3): the fields
/// to send instead, and whether its body is to lie about its length.
fn malform(rng: &mut Rng, fields: &mut Vec<(String, String)>) -> String {
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    let case = rng.below(16);
    match case {
        0 => {
            fields.retain(|(n, _)| n != ":method");
            "no :method".into()
        }
        1 => {
            fields.retain(|(n, _)| n != ":path");
            "no :path".into()
        }
        2 => {
            fields.retain(|(n, _)| n != ":scheme");
            "no :scheme".into()
        }
        3 => {
            let dup = fields[0].clone();
            fields.insert(1, dup);
            "duplicate :method".into()
        }
        4 => {
            let p = fields.remove(3);
            fields.push(p);
            fields.insert(3, s("x-a", "1"));
            "pseudo after regular".into()
        }
        5 => {
            fields.push(s("X-Upper", "1"));
            "upper-case name".into()
        }
        6 => {
            fields.push(s(
                rng.pick::<&str>(&[
                    "connection",
                    "keep-alive",
                    "proxy-connection",
                    "transfer-encoding",
                    "upgrade",
                ]),
                "x",
            ));
            "connection-specific".into()
        }
        7 => {
            fields.push(s("te", "gzip"));
            "te: gzip".into()
        }
        8 => {
            fields[3].1 = String::new();
            ":path empty".into()
        }
        9 => {
            let p = fields[3].1.trim_start_matches('/').to_string();
            fields[3].1 = p;
            ":path without /".into()
        }
        10 => {
            fields.push(s(":foo", "1"));
            fields.swap(4, 3);
            "unknown pseudo".into()
        }
        11 => {
            fields.push(s("x-v", "a\r\nb"));
            "CRLF in value".into()
        }
        12 => {
            fields.push(s("host", "other.test"));
            "host differs from :authority".into()
        }
        13 => {
            fields.push(s("content-length", "x1"));
            "bad content-length".into()
        }
        14 => {
            fields.push(s("x-sp", " lead"));
            "leading space in value".into()
        }
        _ => {
            fields.push(s("a b", "1"));
            "space in name".into()
        }
    }
}

/// What one connection's exchange showed.
#[derive(Debug, Default)]
struct Outcome {
    /// Per stream: status and body, or the RST code.
    done: std::collections::BTreeMap<u32, Result<(String, Vec<u8>), u32>>,
    goaway: Option<(u32, u32)>,
    closed: bool,
    timed_out: bool,
}

/// Reads until every stream in `ids` ended (or was reset), or a GOAWAY
/// and the close, within `within` per frame; a well-behaved peer: grants
/// back what response DATA takes.
async fn read_outcome(client: &mut RawClient, ids: &[u32], within: Duration) -> Outcome {
    let mut out = Outcome::default();
    let mut heads: std::collections::BTreeMap<u32, (String, Vec<u8>)> = Default::default();
    loop {
        if out.goaway.is_none() && ids.iter().all(|id| out.done.contains_key(id)) {
            return out;
        }
        let f = match client.next_within(within).await {
            Err(_) => {
                out.timed_out = true;
                return out;
            }
            Ok(None) => {
                out.closed = true;
                return out;
            }
            Ok(Some(f)) => f,
        };
        match f.kind {
            GOAWAY => {
                println!(
                    "GOAWAY reason: {}",
                    String::from_utf8_lossy(&f.payload[8..])
                );
                out.goaway = Some((f.last_stream(), f.error_code()))
            }
            RST_STREAM => {
                out.done.insert(f.id, Err(f.error_code()));
            }
            HEADERS => {
                let fields = decode(&f.payload);
                let entry = heads.entry(f.id).or_default();
                if let Some((_, status)) = fields.iter().find(|(n, _)| n == ":status") {
                    if !status.starts_with('1') {
                        entry.0 = status.clone();
                    }
                }
                if f.flags & END_STREAM != 0 {
                    out.done
                        .insert(f.id, Ok(heads.remove(&f.id).unwrap_or_default()));
                }
            }
            DATA => {
                let n = f.payload.len() as u32;
                if n > 0 {
                    let grant = [
                        frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes()),
                        frame(WINDOW_UPDATE, 0, f.id, &n.to_be_bytes()),
                    ]
                    .concat();
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut client.stream, &grant).await;
                }
                heads
                    .entry(f.id)
                    .or_default()
                    .1
                    .extend_from_slice(&f.payload);
                if f.flags & END_STREAM != 0 {
                    out.done
                        .insert(f.id, Ok(heads.remove(&f.id).unwrap_or_default()));
                }
            }
            _ => {}
        }
    }
}

/// One connection's worth of requests: some valid, perhaps one malformed,
/// framed and interleaved at random. The bytes after the client's
/// SETTINGS, and the requests.
fn scenario(rng: &mut Rng, tag: &str, allow_malformed: bool) -> (Vec<u8>, Vec<Planned>) {
    let mut enc = Encoder::new();
    let n = 1 + rng.below(4) as u32;
    let bad = if allow_malformed && rng.chance(50) {
        Some(rng.below(u64::from(n)) as u32)
    } else {
        None
    };
    let mut groups: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut planned = Vec::new();
    let mut id = 1 + 2 * rng.below(3) as u32;
    for i in 0..n {
        let method = *rng.pick(&["GET", "POST", "PUT", "GET", "DELETE"]);
        let has_body = method != "GET" && rng.chance(80);
        let body: Vec<u8> = if has_body {
            let len = rng.below(3000) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        } else {
            Vec::new()
        };
        let path = format!("/echo?t={tag}-{id}");
        let mut fields: Vec<(String, String)> = vec![
            (":method".into(), method.into()),
            (":scheme".into(), "http".into()),
            (":authority".into(), "app.test".into()),
            (":path".into(), path.clone()),
        ];
        if rng.chance(30) {
            fields.swap(1, 2);
        }
        if has_body && rng.chance(50) {
            fields.push(("content-length".into(), body.len().to_string()));
        }
        if rng.chance(30) {
            fields.push(("cookie".into(), "a=1".into()));
            fields.push(("cookie".into(), "b=2".into()));
        }
        if rng.chance(30) {
            fields.push(("x-fuzz".into(), format!("{}", rng.next())));
        }
        let mut what = "valid".to_string();
        if bad == Some(i) {
            what = malform(rng, &mut fields);
        }
        let trailers = has_body && rng.chance(20);
        let mut g = Vec::new();
        let head_block = enc.encode(rng, &fields);
        let ends_in_head = !has_body && !trailers;
        // A GET may still end with an empty DATA frame.
        let empty_data_end = ends_in_head && rng.chance(15);
        g.push(random_header_frames(
            rng,
            id,
            ends_in_head && !empty_data_end,
            &head_block,
        ));
        if empty_data_end {
            g.push(random_data(rng, id, true, &[]));
        }
        if has_body {
            let mut rest = &body[..];
            loop {
                let take = if rest.is_empty() {
                    0
                } else {
                    1 + rng.below(rest.len() as u64) as usize
                };
                let (now, later) = rest.split_at(take.min(16_000));
                rest = later;
                let last = rest.is_empty();
                g.push(random_data(rng, id, last && !trailers, now));
                if last {
                    break;
                }
            }
            if trailers {
                // Literals without indexing: trailers may go out after a
                // later stream's head, and must not touch the table.
                let block = block(&[("x-trailer", "t")]);
                g.push(random_header_frames(rng, id, true, &block));
            }
        }
        groups.push(g);
        planned.push(Planned {
            id,
            method,
            path,
            body,
            valid: bad != Some(i),
            what,
        });
        id += 2 * (1 + rng.below(2) as u32);
    }
    // Interleave: each stream's groups in order, streams opened in id order.
    let mut next = vec![0usize; groups.len()];
    let mut out = Vec::new();
    let mut last_id = 0;
    loop {
        let ready: Vec<usize> = (0..groups.len())
            .filter(|&s| next[s] < groups[s].len() && (next[s] > 0 || s == 0 || next[s - 1] > 0))
            .collect();
        if ready.is_empty() {
            break;
        }
        let s = *rng.pick(&ready);
        out.extend_from_slice(&groups[s][next[s]]);
        if next[s] == 0 {
            last_id = planned[s].id;
        }
        next[s] += 1;
        if rng.chance(15) {
            out.extend(housekeeping(rng, last_id));
        }
    }
    (out, planned)
}

/// Byte-level mutations of a valid exchange.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let mut log = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len() as u64) as usize;
        match rng.below(7) {
            0 => {
                let v = rng.next() as u8;
                log.push(format!("set[{at}]={v:#x}"));
                bytes[at] = v;
            }
            1 => {
                let bit = 1u8 << rng.below(8);
                log.push(format!("flip[{at}]^{bit:#x}"));
                bytes[at] ^= bit;
            }
            2 => {
                log.push(format!("truncate@{at}"));
                bytes.truncate(at);
            }
            3 => {
                let n = 1 + rng.below(8) as usize;
                let end = (at + n).min(bytes.len());
                log.push(format!("delete[{at}..{end}]"));
                bytes.drain(at..end);
            }
            4 => {
                let junk: Vec<u8> = (0..1 + rng.below(12)).map(|_| rng.next() as u8).collect();
                log.push(format!("insert@{at}:{junk:02x?}"));
                bytes.splice(at..at, junk);
            }
            5 => {
                // A whole odd frame inserted.
                let kind = rng.below(11) as u8;
                let flags = rng.below(256) as u8;
                let id = *rng.pick(&[0u32, 1, 2, 3, 5, 0x7fff_ffff]);
                let len = *rng.pick(&[0usize, 1, 4, 5, 7, 8, 9, 16]);
                let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                log.push(format!(
                    "frame@{at}:k{kind} f{flags:#x} id{id} {payload:02x?}"
                ));
                bytes.splice(at..at, frame(kind, flags, id, &payload));
            }
            _ => {
                let v = *rng.pick(&[0u8, 0x7f, 0x80, 0xff, 0x3f, 0x20]);
                log.push(format!("edge[{at}]={v:#x}"));
                bytes[at] = v;
            }
        }
    }
    log.join(" ")
}

/// Settings a client may send (RFC 9113 §6.5.2), at their bounds.
fn random_settings(rng: &mut Rng) -> Vec<(u16, u32)> {
    let mut settings = Vec::new();
    for _ in 0..rng.below(4) {
        settings.push(match rng.below(7) {
            0 => (1, *rng.pick(&[0u32, 4096, 1 << 20, u32::MAX])),
            1 => (2, *rng.pick(&[0u32, 1])),
            2 => (3, *rng.pick(&[0u32, 1, 100, u32::MAX])),
            3 => (4, *rng.pick(&[1u32, 100, 65_535, MAX_WINDOW - 1_000_000])),
            4 => (5, *rng.pick(&[16_384u32, 16_385, (1 << 24) - 1])),
            5 => (6, *rng.pick(&[0u32, 100, u32::MAX])),
            _ => (0x1234, rng.next() as u32),
        });
    }
    settings
}

/// The binary (one worker, short timeouts) on a config sending
/// everything to `upstream`, its stderr collected.
async fn start_fuzzed_binary(
    dir: &std::path::Path,
    upstream: SocketAddr,
) -> (
    tokio::process::Child,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    let mut config = support::pool_config("app", upstream, json!({}));
    config["timeouts"] = json!({"drain": "1s", "connect": "2s", "response_header": "5s", "request_header": "1s", "idle": "1s"});
    let file = dir.join("config.json");
    std::fs::write(&file, config.to_string()).expect("write config");
    let (child, addr, _, stderr) = support::start_on_config_capturing(&file).await;
    (child, addr, stderr)
}

/// Frames until the answer to our PING, a GOAWAY and the close, or the
/// close: None if the server went silent for 5 s.
async fn until_ping_or_close(
    client: &mut RawClient,
    ping: [u8; 8],
) -> Option<(bool, Option<(u32, u32)>)> {
    let _ =
        tokio::io::AsyncWriteExt::write_all(&mut client.stream, &frame(PING, 0, 0, &ping)).await;
    let mut goaway = None;
    loop {
        match client.next_within(Duration::from_secs(5)).await {
            Err(_) => return None,
            Ok(None) => return Some((true, goaway)),
            Ok(Some(f)) if f.kind == GOAWAY => goaway = Some((f.last_stream(), f.error_code())),
            Ok(Some(f))
                if f.kind == PING
                    && f.flags & ACK != 0
                    && f.payload == ping
                    && goaway.is_none() =>
            {
                return Some((false, None))
            }
            Ok(Some(f)) if f.kind == DATA && !f.payload.is_empty() => {
                let n = (f.payload.len() as u32).to_be_bytes();
                let grant = [
                    frame(WINDOW_UPDATE, 0, 0, &n),
                    frame(WINDOW_UPDATE, 0, f.id, &n),
                ]
                .concat();
                let _ = tokio::io::AsyncWriteExt::write_all(&mut client.stream, &grant).await;
            }
            Ok(Some(_)) => {}
        }
    }
}

const SEED: u64 = 0x5157_1c4a_2026_1126;
const ITERATIONS: u64 = 210;

/// The campaign: valid exchanges framed at random (must all be served,
/// each request reaching the upstream once with its exact body), with
/// malformed requests among them (reset, never forwarded), byte-level
/// mutations (answered or ended with GOAWAY, never silent), and
/// truncations then EOF (closed). At the end the binary is alive, has not
/// panicked, serves a fresh request, and its RSS has not run away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_against_the_binary() {
    let seed = support::fuzz_env("FUZZ_SEED", SEED);
    println!("campaign seed {seed:#x}");
    let upstream = support::upstream("app").await;
    let dir = std::env::temp_dir().join(format!("switchyard-h2-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut child, addr, stderr) = start_fuzzed_binary(&dir, upstream.addr).await;
    let pid = child.id().expect("pid");
    let started = std::time::Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut malformed_tags = Vec::new();
    let mut rss_after_warmup = 0;
    let only = std::env::var_os("FUZZ_ONLY").map(|_| support::fuzz_env("FUZZ_ONLY", 0));
    for iter in 0..ITERATIONS {
        if only.is_some_and(|o| o != iter) {
            continue;
        }
        if iter == 30 {
            rss_after_warmup = support::child_rss_kib(pid);
        }
        let mut rng = Rng(seed ^ iter.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let settings = if rng.chance(40) {
            random_settings(&mut rng)
        } else {
            Vec::new()
        };
        let tag = format!("{iter}");
        let mode = rng.below(10);
        let (mut bytes, planned) = scenario(&mut rng, &tag, mode < 6);
        let iter_started = std::time::Instant::now();
        let mut client = RawClient::connect(addr, &settings).await;
        let ctx = |what: String, bytes: &[u8]| {
            format!(
                "seed {seed:#x} iter {iter} settings {settings:?}: {what}\n  input {:02x?}",
                bytes
            )
        };
        match mode {
            0..=5 => {
                for p in planned.iter().filter(|p| !p.valid) {
                    malformed_tags.push((p.path.clone(), p.what.clone()));
                }
                client.send(&bytes).await;
                let ids: Vec<u32> = planned.iter().map(|p| p.id).collect();
                let out = read_outcome(&mut client, &ids, Duration::from_secs(5)).await;
                if out.timed_out || out.goaway.is_some() || out.closed {
                    failures.push(ctx(format!("valid exchange ended badly: {out:?}"), &bytes));
                    continue;
                }
                for p in &planned {
                    let got = out.done.get(&p.id);
                    match (p.valid, got) {
                        (true, Some(Ok((status, body)))) if status == "200" && *body == p.body => {
                            let seen: Vec<_> = upstream
                                .requests()
                                .into_iter()
                                .filter(|s| s.uri == p.path)
                                .collect();
                            if seen.len() != 1
                                || seen[0].body != p.body
                                || seen[0].method.as_str() != p.method
                            {
                                failures.push(ctx(
                                    format!(
                                        "stream {} reached the upstream {} times",
                                        p.id,
                                        seen.len()
                                    ),
                                    &bytes,
                                ));
                            }
                        }
                        (false, Some(Err(PROTOCOL_ERROR))) => {}
                        (false, Some(Ok((status, _)))) if status.starts_with('4') => {}
                        (valid, got) => failures.push(ctx(
                            format!(
                                "stream {} ({}, {} {}): got {:?}",
                                p.id,
                                if valid { "valid" } else { &p.what },
                                p.method,
                                p.path,
                                got.map(|g| g.as_ref().map(|(s, b)| (s.clone(), b.len())))
                            ),
                            &bytes,
                        )),
                    }
                }
            }
            6..=8 => {
                let what = mutate(&mut rng, &mut bytes);
                client.send(&bytes).await;
                match until_ping_or_close(&mut client, *b"fuzzping").await {
                    None => {
                        failures.push(ctx(format!("silent for 5 s after mutation {what}"), &bytes))
                    }
                    Some((_, Some((_, code)))) if code > 0xd => failures.push(ctx(
                        format!("GOAWAY with unknown code {code} after {what}"),
                        &bytes,
                    )),
                    Some((false, Some(g))) => failures.push(ctx(
                        format!("GOAWAY {g:?} but no close after {what}"),
                        &bytes,
                    )),
                    Some(_) => {}
                }
            }
            _ => {
                let cut = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(cut);
                client.send(&bytes).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut client.stream).await;
                loop {
                    match client.next_within(Duration::from_secs(5)).await {
                        Err(_) => {
                            failures.push(ctx(
                                format!("not closed 5 s after EOF at byte {cut}"),
                                &bytes,
                            ));
                            break;
                        }
                        Ok(None) => break,
                        Ok(Some(_)) => {}
                    }
                }
            }
        }
        if iter_started.elapsed() > Duration::from_millis(800) {
            println!(
                "slow iteration {iter} mode {mode}: {:?}",
                iter_started.elapsed()
            );
        }
        if failures.len() > 20 {
            break;
        }
    }
    let elapsed = started.elapsed();
    // Malformed requests never reach the upstream.
    let seen = upstream.requests();
    for (path, what) in &malformed_tags {
        if seen.iter().any(|s| &s.uri == path) {
            failures.push(format!(
                "seed {seed:#x}: malformed request ({what}) {path} was forwarded"
            ));
        }
    }
    // Alive, serving, not panicked.
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the binary exited; stderr:\n{}",
        stderr.lock().expect("not poisoned")
    );
    let mut client = RawClient::connect(addr, &[]).await;
    client
        .send(&frame(
            HEADERS,
            HEAD_ONLY,
            1,
            &request("GET", "/final", &[]),
        ))
        .await;
    let response = client.response(1).await;
    assert_eq!(response.field(":status"), Some("200"));
    let rss_end = support::child_rss_kib(pid);
    println!("campaign: {ITERATIONS} iterations in {elapsed:?}; RSS {rss_after_warmup} KiB after warm-up, {rss_end} KiB at the end");
    let text = stderr.lock().expect("not poisoned").clone();
    assert!(!text.contains("panicked"), "the binary panicked:\n{text}");
    for f in &failures {
        println!("FAILURE: {f}\n");
    }
    assert!(
        failures.is_empty(),
        "{} failures (first: {})",
        failures.len(),
        failures[0]
    );
    assert!(
        rss_end < rss_after_warmup + 64 * 1024,
        "RSS grew from {rss_after_warmup} to {rss_end} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
