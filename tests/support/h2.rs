//! A raw HTTP/2 client for tests (RFC 9113, RFC 7541): frames written as
//! given, read one by one, header blocks of literals, and the decoding of
//! the blocks this server writes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio::time::timeout;

// Frame types, flags, error codes and settings (RFC 9113 §6, §7).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A whole request head and nothing more.
pub const HEAD_ONLY: u8 = END_STREAM | END_HEADERS;

/// A frame as read off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().expect("4 bytes"))
    }

    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> u32 {
        u32::from_be_bytes(self.payload[..4].try_into().expect("4 bytes")) & 0x7fff_ffff
    }
}

/// A frame's bytes: the 9-byte head, then the payload.
pub fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block's frames: HEADERS, then CONTINUATION frames, each
/// with at most 16 384 bytes of `block`; END_HEADERS on the last.
pub fn header_frames(id: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let (kind, mut flags) = match i {
            0 => (HEADERS, if end_stream { END_STREAM } else { 0 }),
            _ => (CONTINUATION, 0),
        };
        if i + 1 == pieces.len() {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, id, piece));
    }
    out
}

/// A string literal without Huffman coding: its length as an integer with
/// a 7-bit prefix (RFC 7541 §5.1), then its bytes.
pub fn put_string(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(text.as_bytes());
}

/// A literal with incremental indexing and a new name (RFC 7541 §6.2.1):
/// the field is added to the server's dynamic table, as index 62.
pub fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    put_string(&mut out, name);
    put_string(&mut out, value);
    out
}

/// A header block of literals without indexing, names and values as raw
/// strings (RFC 7541 §6.2.2), in the order given.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        put_string(&mut out, name);
        put_string(&mut out, value);
    }
    out
}

/// A request head's block: the four pseudo-fields, then `extra`.
pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "app.test"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// Decodes a response block as this server writes them: `:status` indexed
/// or a literal, other fields literals without indexing (name indexed or
/// raw), no Huffman, perhaps a table size update first.
pub fn decode(block: &[u8]) -> Vec<(String, String)> {
    fn integer(block: &[u8], at: &mut usize, prefix: u32) -> usize {
        let mask = (1usize << prefix) - 1;
        let mut value = usize::from(block[*at]) & mask;
        *at += 1;
        if value < mask {
            return value;
        }
        let mut shift = 0;
        loop {
            let byte = block[*at];
            *at += 1;
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return value;
            }
        }
    }
    fn string(block: &[u8], at: &mut usize) -> String {
        assert_eq!(block[*at] & 0x80, 0, "a Huffman-coded string");
        let len = integer(block, at, 7);
        *at += len;
        String::from_utf8(block[*at - len..*at].to_vec()).expect("UTF-8")
    }
    let mut at = 0;
    let mut fields = Vec::new();
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 {
            let status = match integer(block, &mut at, 7) {
                8 => "200",
                9 => "204",
                10 => "206",
                11 => "304",
                12 => "400",
                13 => "404",
                14 => "500",
                index => panic!("indexed field {index} is not a :status"),
            };
            fields.push((":status".to_string(), status.to_string()));
        } else if first & 0xe0 == 0x20 {
            integer(block, &mut at, 5); // a table size update
        } else {
            assert!(first & 0xe0 == 0, "a literal with indexing: {first:#x}");
            let name = match integer(block, &mut at, 4) {
                0 => string(block, &mut at),
                index => static_name(index).to_string(),
            };
            fields.push((name, string(block, &mut at)));
        }
    }
    fields
}

/// The static table's names (RFC 7541 Appendix A) this server indexes.
pub fn static_name(index: usize) -> &'static str {
    match index {
        8 => ":status",
        18 => "accept-ranges",
        21 => "age",
        24 => "cache-control",
        26 => "content-encoding",
        28 => "content-length",
        31 => "content-type",
        33 => "date",
        34 => "etag",
        36 => "expires",
        44 => "last-modified",
        46 => "location",
        54 => "server",
        55 => "set-cookie",
        59 => "vary",
        _ => panic!("static name {index} not expected"),
    }
}

/// A response as the raw client read it.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A trailing HEADERS block's fields.
    pub trailers: Vec<(String, String)>,
}

impl RawResponse {
    pub fn field(&self, name: &str) -> Option<&str> {
        let found = self.fields.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/2 client: writes bytes as given, reads frames one by one.
pub struct RawClient {
    pub stream: TcpStream,
    pub input: Vec<u8>,
    /// The settings of the server's first SETTINGS frame.
    pub settings: Vec<(u16, u32)>,
    /// The most bytes one read takes off the socket.
    pub read_size: usize,
}

impl RawClient {
    /// A client on `stream` that has sent nothing yet.
    pub fn new(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            input: Vec::new(),
            settings: Vec::new(),
            read_size: 16 * 1024,
        }
    }

    /// Connects, sends the preface and a SETTINGS frame of `settings`,
    /// reads the server's SETTINGS and acknowledges them.
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::start(stream, settings).await
    }

    /// As `connect`, on a connected socket.
    pub async fn start(stream: TcpStream, settings: &[(u16, u32)]) -> RawClient {
        let mut client = RawClient::new(stream);
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| [&id.to_be_bytes()[..], &value.to_be_bytes()].concat())
            .collect();
        client
            .send(&[PREFACE, &frame(SETTINGS, 0, 0, &payload)].concat())
            .await;
        let first = client.next().await.expect("the server's preface");
        assert_eq!((first.kind, first.flags, first.id), (SETTINGS, 0, 0));
        client.settings = first
            .payload
            .chunks_exact(6)
            .map(|s| {
                let id = u16::from_be_bytes([s[0], s[1]]);
                (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            })
            .collect();
        client.send(&frame(SETTINGS, ACK, 0, &[])).await;
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame, or None once the server closed the connection.
    /// Panics after 5 s without one.
    pub async fn next(&mut self) -> Option<Frame> {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a frame or the close within 5 s")
    }

    /// As `next`, but gives up (Err) after `within` without a frame.
    pub async fn next_within(&mut self, within: Duration) -> Result<Option<Frame>, Elapsed> {
        timeout(within, self.read_frame()).await
    }

    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.input.len() >= 9 {
                let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]);
                let end = 9 + len as usize;
                if self.input.len() >= end {
                    let bytes: Vec<u8> = self.input.drain(..end).collect();
                    let id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
                    return Some(Frame {
                        kind: bytes[3],
                        flags: bytes[4],
                        id: id & 0x7fff_ffff,
                        payload: bytes[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk[..self.read_size])
                .await
                .expect("read");
            if n == 0 {
                assert!(self.input.is_empty(), "closed mid-frame: {:?}", self.input);
                return None;
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips frames until a GOAWAY, and returns it.
    pub async fn goaway(&mut self) -> Frame {
        loop {
            let frame = self.next().await.expect("a GOAWAY before the close");
            if frame.kind == GOAWAY {
                return frame;
            }
        }
    }

    /// Asserts that the server closes the connection with nothing more to
    /// say.
    pub async fn assert_closed(&mut self) {
        let next = self.next().await;
        assert!(next.is_none(), "a frame instead of the close: {next:?}");
    }

    /// Reads stream `id`'s response to its end, skipping other streams'
    /// frames and the connection's housekeeping.
    pub async fn response(&mut self, id: u32) -> RawResponse {
        let mut response = RawResponse::default();
        assert!(self.read_into(id, &mut response, usize::MAX).await);
        response
    }

    /// As `response`, but stops once the body has `until` bytes; whether
    /// the stream ended.
    pub async fn read_into(&mut self, id: u32, response: &mut RawResponse, until: usize) -> bool {
        while response.body.len() < until {
            let frame = self.next().await.expect("the response before the close");
            assert_ne!(frame.kind, GOAWAY, "GOAWAY mid-response: {frame:?}");
            if frame.id != id || frame.kind == WINDOW_UPDATE {
                continue;
            }
            match frame.kind {
                HEADERS => {
                    assert_ne!(frame.flags & END_HEADERS, 0, "a head in pieces");
                    let interim = response
                        .field(":status")
                        .is_some_and(|status| status.starts_with('1'));
                    if response.fields.is_empty() || interim {
                        response.fields = decode(&frame.payload);
                    } else {
                        assert_ne!(frame.flags & END_STREAM, 0, "a second head: {frame:?}");
                        response.trailers = decode(&frame.payload);
                    }
                }
                DATA => response.body.extend_from_slice(&frame.payload),
                _ => panic!("stream {id} got {frame:?}"),
            }
            if frame.flags & END_STREAM != 0 {
                return true;
            }
        }
        false
    }

    /// Sends a PING and returns every frame that arrives before its ACK,
    /// so a test can tell that nothing else was on its way.
    pub async fn frames_before_ping_ack(&mut self, data: [u8; 8]) -> Vec<Frame> {
        self.send(&frame(PING, 0, 0, &data)).await;
        let mut before = Vec::new();
        loop {
            let frame = self.next().await.expect("the PING ACK before the close");
            if frame.kind == PING && frame.flags & ACK != 0 && frame.payload == data {
                return before;
            }
            before.push(frame);
        }
    }
}
