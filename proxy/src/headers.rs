//! Header rules for both directions: hop-by-hop fields (RFC 9110 §7.6.1)
//! are removed, and the `X-Forwarded-*` and `Forwarded` fields are set.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// values that stay the same for the life of a client connection, built
/// once when it is accepted rather than per request.
pub struct ClientInfo {
    /// The peer address.
    pub peer: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub peer_value: HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The `for=` part of `Forwarded` when it is not `peer_value`: an
    /// IPv6 address, quoted and bracketed (RFC 7239 §6).
    forwarded_for_v6: Option<String>,
    /// Per-connection buffer that header values built per request are
    /// carved from, so building one costs no allocation of its own.
    arena: RefCell<BytesMut>,
}

/// Bytes the arena grows by; a value over a quarter of it gets its own.
const ARENA_BYTES: usize = 4096;

impl ClientInfo {
    /// Describes a client connection from `peer`, speaking `proto`.
    pub fn new(peer: SocketAddr, proto: &'static str) -> ClientInfo {
        let (peer_value, forwarded_for_v6) = match peer.ip() {
            // Written by hand: `fmt` costs about 700 instructions an
            // address, once per connection.
            IpAddr::V4(v4) => {
                let mut text = [0u8; 15];
                let len = put_ipv4(&mut text, v4);
                let value = HeaderValue::from_bytes(&text[..len]);
                (value.expect("digits and dots"), None)
            }
            IpAddr::V6(v6) => {
                let value = HeaderValue::try_from(v6.to_string());
                let value = value.expect("an IP address is always a valid header value");
                (value, Some(format!("\"[{v6}]\"")))
            }
        };
        ClientInfo {
            peer,
            peer_value,
            proto,
            forwarded_for_v6,
            arena: RefCell::new(BytesMut::new()),
        }
    }

    /// The `for=` part of `Forwarded` (RFC 7239 §6).
    fn forwarded_for(&self) -> &[u8] {
        match &self.forwarded_for_v6 {
            Some(quoted) => quoted.as_bytes(),
            None => self.peer_value.as_bytes(),
        }
    }

    /// Joins `pieces` into one header value carved from the connection's
    /// arena. The pieces must be valid header value bytes.
    pub fn header_value(&self, pieces: &[&[u8]]) -> HeaderValue {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let mut arena = self.arena.borrow_mut();
        if arena.capacity() < len {
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(len));
        }
        for piece in pieces {
            arena.put_slice(piece);
        }
        to_value(arena.split().freeze())
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether the request asks for a WebSocket upgrade (RFC 6455 §4.1): an
/// `Upgrade: websocket` and `upgrade` among the `Connection` options.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"websocket"));
    upgrade
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// Writes `ip` in dotted-decimal form at the start of `out`; returns the
/// length written.
fn put_ipv4(out: &mut [u8; 15], ip: std::net::Ipv4Addr) -> usize {
    let mut at = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[at] = b'.';
            at += 1;
        }
        if octet >= 100 {
            out[at] = b'0' + octet / 100;
            at += 1;
        }
        if octet >= 10 {
            out[at] = b'0' + octet / 10 % 10;
            at += 1;
        }
        out[at] = b'0' + octet % 10;
        at += 1;
    }
    at
}

/// A byte-membership table: ASCII letters and digits, and `extra`.
pub const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Whether a comma-separated list holds `token` (case-insensitive).
pub fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether every `Content-Length` is digits (or a list of equal ones)
/// and they agree: hyper's client checks them only on a response with a
/// body, and a proxy must not pass on an invalid one (RFC 9110 §8.6).
pub fn has_valid_length(headers: &HeaderMap) -> bool {
    let mut length = None;
    headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .all(|value| {
            let n = crate::fast::parse_length(value.as_bytes());
            let agrees = n.is_some() && (length.is_none() || length == n);
            length = n;
            agrees
        })
}

/// Whether `headers` frame a body in a way the proxy passes on: no
/// `Transfer-Encoding`, or one that is `chunked` alone. Any other coding
/// (`gzip, chunked`, `gzip`) is refused, as nginx does: the proxy
/// re-frames bodies, and the other codings would be lost with the field.
pub fn is_chunked_or_unencoded(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// Removes a response's hop-by-hop fields: `Connection` and every field it
/// names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding` (hyper
/// re-frames the body), `TE` (a request's field: HTTP/2 clients refuse a
/// response that has it, RFC 9113 §8.2.2) and `Upgrade` unless
/// `keep_upgrade` (a WebSocket handshake being passed on).
pub fn strip_hop_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = field_bits(headers);
    strip_present(headers, keep_upgrade, present & !HOP_TE);
    if present & HOP_TE != 0 {
        headers.remove(header::TE);
    }
}

/// Removes from relayed trailers the fields no trailer may carry (RFC 9110
/// §6.5.1): the hop-by-hop ones, and those that frame or route a message
/// (`Content-Length`, `Host`, `Trailer`). A field `Connection` names in
/// trailers names nothing the proxy knows of, so only the list goes.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    for name in [
        &header::CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TE,
        &header::UPGRADE,
        &header::CONTENT_LENGTH,
        &header::HOST,
        &header::TRAILER,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        trailers.remove(name);
    }
}

/// Which of the fields the proxy acts on a request has ([`FieldBits`]),
/// found in one pass over the names: the common request has none of them
/// and the common response only `Connection`, so the map is not searched
/// (hashed) once per name the proxy might act on.
pub fn field_bits(headers: &HeaderMap) -> FieldBits {
    headers
        .keys()
        .fold(0, |present, name| present | field_bit(name))
}

/// Whether `name` (in any case) is a connection-specific field, which
/// HTTP/2 does not carry (RFC 9113 §8.2.2).
pub(crate) fn is_connection_specific(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 5] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ];
    NAMES.iter().any(|known| known.eq_ignore_ascii_case(name))
}

/// A set of [`field_bits`] flags.
pub type FieldBits = u16;

/// [`strip_hop_headers`] with the fields present already known.
pub fn strip_present(headers: &mut HeaderMap, keep_upgrade: bool, present: FieldBits) {
    if present & HOP_CONNECTION != 0 {
        // Values are shared `Bytes`: cloning one copies no bytes.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        headers.remove(header::CONNECTION);
        for value in first.iter().chain(more.iter()) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                // TE is named in Connection where it is sent (RFC 9110
                // §10.1.4), and is dealt with below.
                let skip = token.is_empty()
                    || token.eq_ignore_ascii_case(b"close")
                    || token.eq_ignore_ascii_case(b"keep-alive")
                    || token.eq_ignore_ascii_case(b"te")
                    || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade"));
                if let (false, Ok(name)) = (skip, std::str::from_utf8(token)) {
                    // A `&str` name is looked up without allocating.
                    headers.remove(name);
                }
            }
        }
    }
    if present & HOP_KEEP_ALIVE != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    let mut keep_te = false;
    if present & HOP_TE != 0 {
        if let Some(te) = headers.remove(header::TE) {
            if has_token(te.as_bytes(), b"trailers") {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
                keep_te = true;
            }
        }
    }
    if !keep_upgrade && present & HOP_UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
    // A TE sent on names itself in Connection (RFC 9110 §10.1.4).
    let connection = match (keep_upgrade, keep_te) {
        (true, true) => "upgrade, te",
        (true, false) => "upgrade",
        (false, true) => "te",
        (false, false) => return,
    };
    headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
}

/// `Connection`.
pub const HOP_CONNECTION: FieldBits = 1;
const HOP_KEEP_ALIVE: FieldBits = 2;
const HOP_PROXY_CONNECTION: FieldBits = 4;
/// `Transfer-Encoding`.
pub const HOP_TRANSFER_ENCODING: FieldBits = 8;
const HOP_TE: FieldBits = 16;
/// `Upgrade`.
pub const HOP_UPGRADE: FieldBits = 32;
/// `Expect`.
pub const FIELD_EXPECT: FieldBits = 64;
const FIELD_X_FORWARDED_FOR: FieldBits = 128;
const FIELD_FORWARDED: FieldBits = 256;

/// Hop-by-hop fields and `Expect`: what `strip_present` acts on.
pub const HOP_FIELDS: FieldBits = HOP_CONNECTION
    | HOP_KEEP_ALIVE
    | HOP_PROXY_CONNECTION
    | HOP_TRANSFER_ENCODING
    | HOP_TE
    | HOP_UPGRADE
    | FIELD_EXPECT;

/// The bit of a field name the proxy acts on, 0 for any other name.
fn field_bit(name: &HeaderName) -> FieldBits {
    if name == header::CONNECTION {
        HOP_CONNECTION
    } else if name == header::TRANSFER_ENCODING {
        HOP_TRANSFER_ENCODING
    } else if name == header::TE {
        HOP_TE
    } else if name == header::UPGRADE {
        HOP_UPGRADE
    } else if *name == KEEP_ALIVE {
        HOP_KEEP_ALIVE
    } else if *name == PROXY_CONNECTION {
        HOP_PROXY_CONNECTION
    } else if name == header::EXPECT {
        FIELD_EXPECT
    } else if *name == X_FORWARDED_FOR {
        FIELD_X_FORWARDED_FOR
    } else if *name == FORWARDED {
        FIELD_FORWARDED
    } else {
        0
    }
}

/// Sets the forwarding fields on a request going upstream: appends the
/// client to `X-Forwarded-For` and `Forwarded`, and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (a client's own values for
/// those two are not trusted, as nginx's `proxy_set_header` does).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
    present: FieldBits,
) {
    let xff = match present & FIELD_X_FORWARDED_FOR {
        0 => client.peer_value.clone(),
        _ => {
            let mut joined = BytesMut::new();
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.put_slice(value.as_bytes());
                joined.put_slice(b", ");
            }
            joined.put_slice(client.peer_value.as_bytes());
            to_value(joined.freeze())
        }
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));

    let mut previous: Option<HeaderValue> = None;
    if present & FIELD_FORWARDED != 0 {
        let mut joined = BytesMut::new();
        for value in headers.get_all(&FORWARDED) {
            joined.put_slice(value.as_bytes());
            joined.put_slice(b", ");
        }
        previous = Some(to_value(joined.freeze()));
    }
    let previous = previous.as_ref().map_or(&b""[..], |v| v.as_bytes());
    let forwarded = match host {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host.clone());
            // A host with a port has a ':' and must be a quoted string.
            client.header_value(&[
                previous,
                b"for=",
                client.forwarded_for(),
                b";host=\"",
                host.as_bytes(),
                b"\";proto=",
                client.proto.as_bytes(),
            ])
        }
        None => client.header_value(&[
            previous,
            b"for=",
            client.forwarded_for(),
            b";proto=",
            client.proto.as_bytes(),
        ]),
    };
    headers.insert(&FORWARDED, forwarded);
}

/// The forwarding fields as `set_forwarded` sets them, written as
/// HTTP/1.1 field lines for a request head built by hand: the client
/// appended to the `prior_for` values of `X-Forwarded-For` and the
/// `prior_forwarded` ones of `Forwarded`; `X-Forwarded-Proto` and
/// `X-Forwarded-Host` set.
pub(crate) fn put_forwarding<'v>(
    out: &mut Vec<u8>,
    client: &ClientInfo,
    host: &[u8],
    prior_for: impl Iterator<Item = &'v [u8]>,
    prior_forwarded: impl Iterator<Item = &'v [u8]>,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    for value in prior_for {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.peer_value.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nforwarded: ");
    for value in prior_forwarded {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    // A host with a port has a ':' and must be a quoted string.
    out.extend_from_slice(b"for=");
    out.extend_from_slice(client.forwarded_for());
    out.extend_from_slice(b";host=\"");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\";proto=");
    out.extend_from_slice(client.proto.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn to_value(bytes: Bytes) -> HeaderValue {
    // Built only from bytes of valid header values and fixed ASCII.
    HeaderValue::from_maybe_shared(bytes).expect("joined from valid header values")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn ipv4_addresses_are_written_as_std_writes_them() {
        // Every octet value in each position, and the corners.
        let mut ips: Vec<std::net::Ipv4Addr> = (0..=255u8)
            .map(|o| std::net::Ipv4Addr::new(o, 255 - o, o / 2, o.wrapping_mul(7)))
            .collect();
        ips.extend([
            std::net::Ipv4Addr::UNSPECIFIED,
            std::net::Ipv4Addr::BROADCAST,
        ]);
        for ip in ips {
            let mut text = [0u8; 15];
            let len = put_ipv4(&mut text, ip);
            assert_eq!(&text[..len], ip.to_string().as_bytes());
            let client = ClientInfo::new(SocketAddr::from((ip, 1)), "http");
            assert_eq!(client.peer_value.as_bytes(), ip.to_string().as_bytes());
            assert_eq!(client.forwarded_for(), ip.to_string().as_bytes());
        }
        let v6 = ClientInfo::new("[::1]:1".parse().expect("addr"), "http");
        assert_eq!(v6.peer_value.as_bytes(), b"::1");
        assert_eq!(v6.forwarded_for(), b"\"[::1]\"");
    }

    #[test]
    fn strips_fields_named_in_connection() {
        let mut headers = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        let mut response = headers.clone();
        let present = field_bits(&headers);
        strip_present(&mut headers, false, present);
        assert!(headers.get("x-secret").is_none());
        assert_eq!(headers["connection"], "te");
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get("upgrade").is_none());
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-kept"], "yes");
        // A response keeps no `TE` at all.
        strip_hop_headers(&mut response, false);
        assert!(response.get("te").is_none());
        assert_eq!(response["x-kept"], "yes");
    }

    #[test]
    fn every_connection_field_counts_and_names_match_in_any_case() {
        let mut headers = map(&[
            ("connection", "X-One"),
            ("connection", " x-two ,, bad name, Keep-Alive"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_headers(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        // Nothing hop-by-hop: nothing changes.
        let mut plain = map(&[("host", "a"), ("x-kept", "yes")]);
        strip_hop_headers(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn websocket_upgrade_survives() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&headers));
        strip_hop_headers(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn forwarded_fields_append() {
        let client = ClientInfo::new("[::1]:5000".parse().expect("addr"), "http");
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com:8080");
        let present = field_bits(&headers);
        set_forwarded(&mut headers, &client, Some(&host), present);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "example.com:8080");
        assert_eq!(
            headers["forwarded"],
            "for=\"[::1]\";host=\"example.com:8080\";proto=http"
        );
    }
}
