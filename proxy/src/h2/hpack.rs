//! HPACK (RFC 7541) for the HTTP/2 server: a decoder with the dynamic
//! table and Huffman strings for request heads, and an encoder for
//! response heads.
//!
//! The encoder never adds to a dynamic table: each response field goes out
//! as a literal "without indexing", its name by static index where it has
//! one. Its block therefore means the same whatever the client's table
//! size, and encoding costs a copy of the bytes, nothing more. The first
//! block of a connection says the table is size 0, which keeps it so
//! whatever the client's `SETTINGS_HEADER_TABLE_SIZE` says.

use std::collections::VecDeque;
use std::sync::OnceLock;

use super::huffman_table::{CODES, LENGTHS};

/// Why a header block could not be decoded: a connection error
/// (`COMPRESSION_ERROR`), since the table state is then unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HpackError(pub &'static str);

/// The static table (RFC 7541 Appendix A); index 1 is `STATIC[0]`.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Per-entry overhead counted against the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The table size both sides start with, and the most a client may set:
/// the server never advertises a larger `SETTINGS_HEADER_TABLE_SIZE`.
pub(crate) const TABLE_SIZE: usize = 4096;

/// An entry of the dynamic table: name and value in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
    /// The caller found its bytes well-formed when it was added: a field
    /// sent again by index need not be checked again.
    good: bool,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }
    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// A connection's request-head decoder.
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// Huffman-decoded name and value of the field being decoded.
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Where a decoded string is: in the block as sent, or decoded into one
/// of the decoder's buffers.
#[derive(Clone, Copy)]
enum Text {
    Raw(usize, usize),
    Name,
    Value,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: TABLE_SIZE,
            name: Vec::new(),
            value: Vec::new(),
        }
    }
}

impl Decoder {
    /// Decodes one whole header block, calling `field` with each name and
    /// value in order, and whether their bytes are known to be well-formed
    /// (a static entry, or a table entry `field` said so of when it was
    /// added); `field` answers whether they are. The table is updated as the
    /// block says, so the whole block must be decoded even when its fields
    /// are not wanted.
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8], bool) -> bool,
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                match index {
                    62.. => {
                        let entry = self
                            .table
                            .get(index - 62)
                            .ok_or(HpackError("index past the table"))?;
                        field(entry.name(), entry.value(), entry.good);
                    }
                    _ => {
                        let (name, value) = self.entry(index)?;
                        field(name, value, true);
                    }
                }
            } else if first & 0xe0 == 0x20 {
                // A size update comes before the block's first field.
                if fields_seen {
                    return Err(HpackError("table size update after a field"));
                }
                let size = integer(block, &mut at, 5)?;
                if size > TABLE_SIZE {
                    return Err(HpackError("table size update over the limit"));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000)
                // or never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let index = integer(block, &mut at, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    Some(self.string(block, &mut at, true)?)
                } else {
                    None
                };
                let value = self.string(block, &mut at, false)?;
                let value_bytes = match value {
                    Text::Raw(from, to) => &block[from..to],
                    _ => &self.value[..],
                };
                let name_bytes = match name {
                    Some(Text::Raw(from, to)) => &block[from..to],
                    Some(_) => &self.name[..],
                    None => self.entry(index)?.0,
                };
                if !indexing {
                    field(name_bytes, value_bytes, false);
                } else {
                    let mut bytes = Vec::with_capacity(name_bytes.len() + value_bytes.len());
                    bytes.extend_from_slice(name_bytes);
                    bytes.extend_from_slice(value_bytes);
                    let name_len = name_bytes.len();
                    let entry = Entry {
                        bytes: bytes.into_boxed_slice(),
                        name_len,
                        good: false,
                    };
                    match self.insert(entry) {
                        Ok(()) => {
                            let entry = &mut self.table[0];
                            entry.good = field(entry.name(), entry.value(), false);
                        }
                        Err(entry) => {
                            field(entry.name(), entry.value(), false);
                        }
                    }
                }
            }
            fields_seen = true;
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|e| (e.name(), e.value()))
                .ok_or(HpackError("index past the table")),
        }
    }

    /// Adds an entry; one larger than the table empties the table and is
    /// handed back (RFC 7541 §4.4).
    fn insert(&mut self, entry: Entry) -> Result<(), Entry> {
        let size = entry.size();
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return Err(entry);
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
        Ok(())
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
    }

    /// A string literal at `at`; Huffman-coded ones are decoded into the
    /// name or value buffer.
    fn string(&mut self, block: &[u8], at: &mut usize, name: bool) -> Result<Text, HpackError> {
        let huffman = block.get(*at).ok_or(HpackError("truncated string"))? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let from = *at;
        let to = from
            .checked_add(len)
            .filter(|&to| to <= block.len())
            .ok_or(HpackError("string past the block"))?;
        *at = to;
        if !huffman {
            return Ok(Text::Raw(from, to));
        }
        let out = if name {
            &mut self.name
        } else {
            &mut self.value
        };
        out.clear();
        huffman_decode(&block[from..to], out)?;
        Ok(if name { Text::Name } else { Text::Value })
    }
}

/// An integer with an `prefix`-bit prefix (RFC 7541 §5.1) at `at`.
fn integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let mask = (1usize << prefix) - 1;
    let first = *block.get(*at).ok_or(HpackError("truncated integer"))?;
    *at += 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(HpackError("truncated integer"))?;
        *at += 1;
        // Four continuation bytes reach 2^28: more than any size here.
        if shift > 21 {
            return Err(HpackError("integer too large"));
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// The Huffman code as a binary tree: node `n`'s children are
/// `TREE[n][bit]`, a leaf is `LEAF | symbol`, a missing branch 0 (the root
/// is no one's child). Its 256 inner nodes are the decoder's states.
const LEAF: u16 = 0x8000;

fn tree() -> Vec<[u16; 2]> {
    let mut nodes = vec![[0u16; 2]];
    for symbol in 0..257usize {
        let (code, len) = (CODES[symbol], u32::from(LENGTHS[symbol]));
        let mut node = 0usize;
        for i in (0..len).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                nodes[node][bit] = LEAF | symbol as u16;
            } else {
                if nodes[node][bit] == 0 {
                    nodes.push([0; 2]);
                    nodes[node][bit] = (nodes.len() - 1) as u16;
                }
                node = usize::from(nodes[node][bit]);
            }
        }
    }
    nodes
}

/// One step of the decoder: a state and the next four bits lead to
/// `next`, having decoded `symbol` on the way when `flags` has [`EMIT`].
#[derive(Clone, Copy, Default)]
struct Step {
    next: u8,
    symbol: u8,
    flags: u8,
}

/// A symbol was decoded on the step.
const EMIT: u8 = 1;
/// The bits are no code, or EOS: the string is malformed.
const FAIL: u8 = 2;
/// The string may end in this state: what follows the last symbol is a
/// prefix of EOS (all ones) shorter than 8 bits.
const ACCEPT: u8 = 4;

/// The decoder's table, four bits at a time (as nghttp2's): for each of the
/// tree's inner nodes and each nibble, where the nibble leads. No code is
/// shorter than 5 bits, so a nibble decodes one symbol at most.
fn steps() -> &'static [[Step; 16]] {
    static STEPS: OnceLock<Vec<[Step; 16]>> = OnceLock::new();
    STEPS.get_or_init(|| {
        let tree = tree();
        // States from which the string may end: the root, and the nodes
        // 1 to 7 one-bits below it.
        let mut accepting = vec![false; tree.len()];
        let mut node = 0usize;
        accepting[0] = true;
        for _ in 0..7 {
            node = usize::from(tree[node][1]);
            accepting[node] = true;
        }
        (0..tree.len())
            .map(|state| {
                let mut steps = [Step::default(); 16];
                for (nibble, step) in steps.iter_mut().enumerate() {
                    let mut node = state;
                    for i in (0..4).rev() {
                        let next = tree[node][(nibble >> i) & 1];
                        if next & LEAF != 0 {
                            let symbol = next & !LEAF;
                            if symbol == 256 {
                                step.flags = FAIL;
                                break;
                            }
                            step.symbol = symbol as u8;
                            step.flags |= EMIT;
                            node = 0;
                        } else if next == 0 {
                            step.flags = FAIL;
                            break;
                        } else {
                            node = usize::from(next);
                        }
                    }
                    if step.flags & FAIL == 0 {
                        step.next = node as u8;
                        if accepting[node] {
                            step.flags |= ACCEPT;
                        }
                    }
                }
                steps
            })
            .collect()
    })
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2) onto `out`: EOS inside
/// the string, or padding longer than 7 bits or not all ones, is an error.
pub(crate) fn huffman_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let steps = steps();
    let mut state = 0usize;
    let mut accept = true;
    for &byte in input {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = steps[state][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(HpackError("invalid Huffman code"));
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol);
            }
            state = usize::from(step.next);
            accept = step.flags & ACCEPT != 0;
        }
    }
    if !accept {
        return Err(HpackError("invalid Huffman padding"));
    }
    Ok(())
}

/// The block prefix that sets the client's view of our table to size 0:
/// sent at the start of the connection's first response head.
pub(crate) const TABLE_SIZE_ZERO: u8 = 0x20;

/// Appends an integer with a `prefix`-bit prefix whose other bits are `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
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

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_integer(out, 0, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// Appends `:status`: indexed when the static table has it.
pub(crate) fn put_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
        return;
    }
    // Literal without indexing, name `:status` (index 8).
    out.push(0x08);
    out.push(3);
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    out.extend_from_slice(&digits);
}

/// Appends a field as a literal without indexing, the name in lower case
/// (HTTP/2 wants it so; an HTTP/1.1 upstream may send any case), by
/// static index where there is one.
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_name(name) {
        Some(index) => put_integer(out, 0, 4, index),
        None => {
            out.push(0);
            put_integer(out, 0, 7, name.len());
            out.extend(name.iter().map(u8::to_ascii_lowercase));
        }
    }
    put_string(out, value);
}

/// The static index of the response field names that are common, in any
/// case: picked by length first, so most names cost one comparison.
fn static_name(name: &[u8]) -> Option<usize> {
    let candidates: &[(&[u8], usize)] = match name.len() {
        3 => &[(b"age", 21)],
        4 => &[(b"date", 33), (b"etag", 34), (b"vary", 59)],
        6 => &[(b"server", 54)],
        7 => &[(b"expires", 36)],
        8 => &[(b"location", 46)],
        10 => &[(b"set-cookie", 55)],
        12 => &[(b"content-type", 31)],
        13 => &[
            (b"cache-control", 24),
            (b"last-modified", 44),
            (b"accept-ranges", 18),
        ],
        14 => &[(b"content-length", 28)],
        16 => &[(b"content-encoding", 26)],
        _ => return None,
    };
    // The known names are lower-case letters and '-': setting bit 0x20
    // lowers a letter and keeps '-', and no other token byte (RFC 9110
    // §5.6.2) becomes one of them, so this compares without case.
    candidates
        .iter()
        .find(|(known, _)| name.iter().zip(known.iter()).all(|(a, b)| a | 0x20 == *b))
        .map(|&(_, index)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        decoder: &mut Decoder,
        block: &[u8],
    ) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v, _| {
            fields.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
            true
        })?;
        Ok(fields)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.3 and C.4: three requests on one connection, without and
    /// with Huffman coding; the table must carry the entries between them.
    #[test]
    fn the_rfc_request_examples_decode() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut decoder = Decoder::default();
            assert_eq!(
                decode_all(&mut decoder, &hex(blocks[0])).expect("decodes"),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com")
                ])
            );
            assert_eq!(decoder.size, 57);
            assert_eq!(
                decode_all(&mut decoder, &hex(blocks[1])).expect("decodes"),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache")
                ])
            );
            assert_eq!(decoder.size, 110);
            assert_eq!(
                decode_all(&mut decoder, &hex(blocks[2])).expect("decodes"),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value")
                ])
            );
            assert_eq!(decoder.size, 164);
            assert_eq!(decoder.table.len(), 3);
        }
    }

    #[test]
    fn eviction_follows_the_size_updates() {
        let mut decoder = Decoder::default();
        // Size update to 60, then a 10+12+32 = 54-byte entry: fits alone.
        let mut block = vec![0x3f, 60 - 31];
        block.extend(hex(
            "400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ));
        decode_all(&mut decoder, &block).expect("decodes");
        assert_eq!(decoder.table.len(), 1);
        // A second entry evicts the first: index 62 is the new one.
        decode_all(&mut decoder, &hex("4003 6162 6303 7879 7a")).expect("decodes");
        assert_eq!(decoder.table.len(), 1);
        assert_eq!(
            decode_all(&mut decoder, &[0x80 | 62]).expect("decodes"),
            pairs(&[("abc", "xyz")])
        );
        assert!(decode_all(&mut decoder, &[0x80 | 63]).is_err());
        // Over the settings' size, or after a field: refused.
        assert!(decode_all(&mut decoder, &[0x3f, 0xe1, 0x1f]).is_ok()); // 4096
        assert!(decode_all(&mut decoder, &[0x3f, 0xe2, 0x1f]).is_err()); // 4097
        assert!(decode_all(&mut decoder, &[0x82, 0x20]).is_err());
    }

    /// A table entry is passed on as known-good only when the caller said
    /// so of it when it was added; static entries always are.
    #[test]
    fn the_callers_verdict_on_an_entry_is_kept() {
        let mut decoder = Decoder::default();
        let mut seen = Vec::new();
        // "good: 1" added and judged good, "bad: 2" added and judged bad.
        let block = hex("4004 676f 6f64 0131 4003 6261 6401 32");
        decoder
            .decode(&block, |name, _, known| {
                seen.push(known);
                name == b"good"
            })
            .expect("decodes");
        assert_eq!(seen, [false, false]);
        seen.clear();
        // Index 62 is "bad" (the newest), 63 "good", 2 is `:method GET`.
        decoder
            .decode(&[0x80 | 62, 0x80 | 63, 0x82], |_, _, known| {
                seen.push(known);
                true
            })
            .expect("decodes");
        assert_eq!(seen, [false, true, true]);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut decoder = Decoder::default();
        for bad in [
            &[0x80][..],                                 // index 0
            &[0xff, 0x80, 0x80, 0x80, 0x80, 0x01],       // integer overflow
            &[0x40, 0x05, b'a'],                         // string past the block
            &[0x82, 0xff],                               // truncated integer
            &[0x00, 0x81, 0x00, 0x00],                   // Huffman: 8 zero bits is no code
            &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00], // EOS inside
        ] {
            assert!(decode_all(&mut decoder, bad).is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn every_symbol_round_trips_through_the_huffman_code() {
        // Encode all 256 symbols by the table, then decode.
        let mut bits: u64 = 0;
        let mut nbits = 0u32;
        let mut encoded = Vec::new();
        for symbol in 0..256 {
            let (code, len) = (u64::from(CODES[symbol]), u32::from(LENGTHS[symbol]));
            bits = (bits << len) | code;
            nbits += len;
            while nbits >= 8 {
                nbits -= 8;
                encoded.push((bits >> nbits) as u8);
            }
            bits &= (1 << nbits) - 1;
        }
        if nbits > 0 {
            encoded.push(((bits << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) as u8);
        }
        let mut out = Vec::new();
        huffman_decode(&encoded, &mut out).expect("decodes");
        assert_eq!(out, (0..=255u8).collect::<Vec<_>>());
    }

    #[test]
    fn huffman_padding_is_up_to_seven_one_bits() {
        // 'a' is 00011: three one-bits of padding fill the byte.
        let mut out = Vec::new();
        huffman_decode(&[0x1f], &mut out).expect("'a' with padding 111");
        assert_eq!(out, b"a");
        for bad in [
            &[0x1e][..],   // padding 110: not all ones
            &[0x1f, 0xff], // eleven one-bits of padding
        ] {
            assert!(huffman_decode(bad, &mut Vec::new()).is_err(), "{bad:x?}");
        }
        // Two symbols split across nibbles and bytes: "ab" is 00011 100011.
        let mut out = Vec::new();
        huffman_decode(&[0x1c, 0x7f], &mut out).expect("'ab'");
        assert_eq!(out, b"ab");
        assert_eq!(tree().len(), 256, "one decoder state per inner node");
    }

    #[test]
    fn encoded_response_heads_decode_to_what_was_put() {
        let mut block = vec![TABLE_SIZE_ZERO];
        put_status(&mut block, 200);
        put_field(&mut block, b"content-type", b"text/plain");
        put_field(&mut block, b"x-long", &[b'v'; 300]);
        put_field(&mut block, b"Content-Length", b"3");
        put_field(&mut block, b"X-Mixed-Case", b"v");
        let mut decoder = Decoder::default();
        let fields = decode_all(&mut decoder, &block).expect("decodes");
        assert_eq!(fields[0], (":status".into(), "200".into()));
        assert_eq!(fields[1], ("content-type".into(), "text/plain".into()));
        assert_eq!(fields[2].1.len(), 300);
        assert_eq!(fields[3], ("content-length".into(), "3".into()));
        assert_eq!(fields[4], ("x-mixed-case".into(), "v".into()));
        let mut block = Vec::new();
        put_status(&mut block, 418);
        assert_eq!(
            decode_all(&mut decoder, &block).expect("decodes"),
            pairs(&[(":status", "418")])
        );
        assert_eq!(decoder.max_size, 0);
    }
}
