//! The access log: one JSON object per line for each request answered, on
//! every path (HTTP/1.1 and HTTP/2, forwarded or answered by the proxy),
//! written when the answer is over (its last byte sent, or the client or
//! the upstream gone), as nginx's and Envoy's are.
//!
//! Off unless a path is set, and then cheap: each worker thread formats its
//! lines into a buffer of its own and writes it to the file (opened with
//! `O_APPEND`, so workers' writes never interleave within a line) when it
//! holds 64 KiB or its oldest line is a second old, as nginx's
//! `access_log ... buffer=64k flush=1s`. [`reopen`] (SIGUSR1, a reload)
//! opens the path again, for log rotation.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;

/// A worker writes its lines when they reach this many bytes...
const FLUSH_BYTES: usize = 64 * 1024;
/// ... or when the oldest is this old.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The open log, if any.
struct Sink {
    path: PathBuf,
    file: File,
}

static SINK: ArcSwapOption<Sink> = ArcSwapOption::const_empty();
/// Whether lines are made at all: the one load a request pays when off.
static ON: AtomicBool = AtomicBool::new(false);
/// Serializes [`set`] and [`reopen`] (never taken by a request).
static CHANGING: Mutex<()> = Mutex::new(());

/// Whether requests are logged.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Logs to `path` from now on (opened now; an error changes nothing), or
/// stops logging (None). Setting the path already open keeps its file.
pub fn set(path: Option<&Path>) -> io::Result<()> {
    let _changing = CHANGING.lock().unwrap_or_else(|e| e.into_inner());
    match path {
        None => {
            ON.store(false, Ordering::Relaxed);
            SINK.store(None);
        }
        Some(path) => {
            if SINK.load().as_ref().is_some_and(|sink| sink.path == path) {
                return Ok(());
            }
            let file = open(path)?;
            SINK.store(Some(Arc::new(Sink {
                path: path.to_path_buf(),
                file,
            })));
            ON.store(true, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Opens the log's path again (after `logrotate` moved the file away):
/// lines written from now on go to the file now at the path. Lines a
/// worker holds go to the new file.
pub fn reopen() -> io::Result<()> {
    let _changing = CHANGING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sink) = SINK.load_full() else {
        return Ok(());
    };
    let file = open(&sink.path)?;
    SINK.store(Some(Arc::new(Sink {
        path: sink.path.clone(),
        file,
    })));
    Ok(())
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

/// A worker's lines not written yet.
struct Pending {
    bytes: Vec<u8>,
    oldest: Option<Instant>,
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending { bytes: Vec::new(), oldest: None })
    };
    /// Spare line buffers, so that a line costs no allocation.
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// `2026-11-27T02:00:00` for the second in `.0`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Writes this thread's pending lines if the oldest is [`FLUSH_EVERY`]
/// old (`force`: whatever their age). Workers call it every second and
/// when they stop.
pub fn flush(force: bool) {
    PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        let due = pending
            .oldest
            .is_some_and(|oldest| force || oldest.elapsed() >= FLUSH_EVERY);
        if due {
            write_out(&mut pending);
        }
    });
}

fn write_out(pending: &mut Pending) {
    if let Some(sink) = SINK.load().as_ref() {
        if let Err(err) = (&sink.file).write_all(&pending.bytes) {
            tracing::warn!(path = %sink.path.display(), error = %err, "access log write failed; lines lost");
        }
    }
    pending.bytes.clear();
    pending.oldest = None;
}

/// One request's line, begun when its head is read.
pub struct Line {
    buf: Vec<u8>,
    started: Instant,
    /// Where [`Line::served`] wrote its fields (0: not yet).
    served_at: usize,
}

/// What a request asked, as the line shows it.
pub struct Asked<'a> {
    pub protocol: &'static str,
    pub client: SocketAddr,
    /// None in a head too malformed to say.
    pub method: Option<&'a [u8]>,
    pub target: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// Logs an HTTP/1.1 answer the proxy made before a request existed (a
/// malformed head refused, a head that timed out): `answer` is the whole
/// response, whose status and text body go in the line.
pub(crate) fn refused(client: SocketAddr, answer: &[u8]) {
    if !enabled() {
        return;
    }
    let status = answer
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let body = memchr::memmem::find(answer, b"\r\n\r\n").map_or(&[][..], |at| &answer[at + 4..]);
    let reason = String::from_utf8_lossy(body.trim_ascii_end());
    refused_with("HTTP/1.1", client, status, body.len() as u64, &reason);
}

/// Logs a refusal of a request too malformed to say what it asked (its
/// method and target are null): the status given (or, for an HTTP/2
/// stream reset, the one nginx logs), and why.
pub(crate) fn refused_with(
    protocol: &'static str,
    client: SocketAddr,
    status: u16,
    body_bytes: u64,
    reason: &dyn std::fmt::Display,
) {
    let asked = Asked {
        protocol,
        client,
        method: None,
        target: None,
        host: None,
        user_agent: None,
    };
    if let Some(line) = Line::begin(&asked, Instant::now()) {
        line.finish(status, body_bytes, Some(reason));
    }
}

impl Line {
    /// A line for a request that arrived at `started`: None when the log
    /// is off.
    pub fn begin(asked: &Asked<'_>, started: Instant) -> Option<Line> {
        if !enabled() {
            return None;
        }
        let mut buf = SPARES.with(|spares| spares.borrow_mut().pop().unwrap_or_default());
        buf.clear();
        // Wall time now: a line begins as its head is read, within
        // microseconds of `started`.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        buf.extend_from_slice(b"{\"time\":\"");
        SECOND.with(|second| {
            let mut second = second.borrow_mut();
            if second.0 != since.as_secs() {
                second.0 = since.as_secs();
                let mut text = String::with_capacity(19);
                civil(since.as_secs(), &mut text);
                second.1.copy_from_slice(&text.as_bytes()[..19]);
            }
            buf.extend_from_slice(&second.1);
        });
        let millis = since.subsec_millis();
        buf.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
            b'"',
        ]);
        buf.extend_from_slice(b",\"client\":\"");
        put_addr(&mut buf, asked.client);
        buf.extend_from_slice(b"\",\"protocol\":\"");
        buf.extend_from_slice(asked.protocol.as_bytes());
        buf.push(b'"');
        put_field(&mut buf, b"method", asked.method);
        put_field(&mut buf, b"target", asked.target);
        put_field(&mut buf, b"host", asked.host);
        put_field(&mut buf, b"user_agent", asked.user_agent);
        Some(Line {
            buf,
            started,
            served_at: 0,
        })
    }

    /// The route, pool and endpoint that serve the request (the last
    /// given counts: a retry on another endpoint names that one).
    pub fn served(&mut self, route: &str, pool: &str, upstream: SocketAddr) {
        match self.served_at {
            0 => self.served_at = self.buf.len(),
            at => self.buf.truncate(at),
        }
        let buf = &mut self.buf;
        put_field(buf, b"route", Some(route.as_bytes()));
        put_field(buf, b"pool", Some(pool.as_bytes()));
        buf.extend_from_slice(b",\"upstream\":\"");
        put_addr(buf, upstream);
        buf.push(b'"');
    }

    /// Ends the line: the status sent (499: the client left before it),
    /// the body bytes sent, and the proxy's reason when it made the answer
    /// or the answer broke off.
    pub fn finish(mut self, status: u16, body_bytes: u64, error: Option<&dyn std::fmt::Display>) {
        self.write(status, body_bytes, error);
    }

    fn write(&mut self, status: u16, body_bytes: u64, error: Option<&dyn std::fmt::Display>) {
        let now = Instant::now();
        let buf = &mut self.buf;
        buf.extend_from_slice(b",\"status\":");
        crate::fast::put_number(buf, u64::from(status));
        buf.extend_from_slice(b",\"body_bytes\":");
        crate::fast::put_number(buf, body_bytes);
        let micros = now.saturating_duration_since(self.started).as_micros() as u64;
        buf.extend_from_slice(b",\"duration_ms\":");
        crate::fast::put_number(buf, micros / 1000);
        buf.extend_from_slice(&[
            b'.',
            b'0' + (micros / 100 % 10) as u8,
            b'0' + (micros / 10 % 10) as u8,
            b'0' + (micros % 10) as u8,
        ]);
        if self.served_at == 0 {
            buf.extend_from_slice(b",\"route\":null,\"pool\":null,\"upstream\":null");
        }
        let error = error.map(|error| error.to_string());
        put_field(buf, b"error", error.as_deref().map(str::as_bytes));
        buf.extend_from_slice(b"}\n");
        let line = std::mem::take(&mut self.buf);
        let _ = PENDING.try_with(|pending| {
            let mut pending = pending.borrow_mut();
            pending.bytes.extend_from_slice(&line);
            let oldest = *pending.oldest.get_or_insert(self.started);
            if pending.bytes.len() >= FLUSH_BYTES
                || now.saturating_duration_since(oldest) >= FLUSH_EVERY
            {
                write_out(&mut pending);
            }
        });
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < 64 {
                spares.push(line);
            }
        });
    }
}

/// A line dropped unfinished: its answer was abandoned (an HTTP/2 stream
/// the client reset, a connection the client closed while hyper's path
/// waited, a drain that timed out). Logged as nginx logs a client that
/// left, 499.
impl Drop for Line {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.write(
                499,
                0,
                Some(&"answer abandoned: the client left, or the drain timed out"),
            );
        }
    }
}

/// `,"name":"value"`, or `,"name":null` for a value not there.
fn put_field(buf: &mut Vec<u8>, name: &[u8], value: Option<&[u8]>) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name);
    match value {
        Some(value) => {
            buf.extend_from_slice(b"\":\"");
            put_escaped(buf, value);
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"\":null"),
    }
}

/// `bytes` as the inside of a JSON string: `"`, `\` and control bytes
/// escaped, and bytes past ASCII (obs-text in a field) as `\u00XX`, so
/// that every line is valid JSON whatever the client sent.
fn put_escaped(buf: &mut Vec<u8>, mut bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Runs of bytes that need no escape are copied whole.
    while let Some(at) = bytes
        .iter()
        .position(|&b| !(0x20..=0x7e).contains(&b) || b == b'"' || b == b'\\')
    {
        buf.extend_from_slice(&bytes[..at]);
        let b = bytes[at];
        match b {
            b'"' | b'\\' => buf.extend_from_slice(&[b'\\', b]),
            _ => buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
        bytes = &bytes[at + 1..];
    }
    buf.extend_from_slice(bytes);
}

/// `ip:port` (`[ip]:port` for IPv6), IPv4 without `fmt`'s machinery.
fn put_addr(buf: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                if octet >= 100 {
                    buf.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    buf.push(b'0' + octet / 10 % 10);
                }
                buf.push(b'0' + octet % 10);
            }
        }
        SocketAddr::V6(v6) => {
            let mut text = String::with_capacity(48);
            let _ = write!(text, "[{}]", v6.ip());
            buf.extend_from_slice(text.as_bytes());
        }
    }
    buf.push(b':');
    crate::fast::put_number(buf, u64::from(addr.port()));
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for seconds since the epoch (the civil
/// date from days, as in H. Hinnant's `civil_from_days`).
fn civil(secs: u64, out: &mut String) {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let mut text = String::new();
        civil(0, &mut text);
        assert_eq!(text, "1970-01-01T00:00:00");
        text.clear();
        // 2026-11-27T02:03:04Z
        civil(1_795_744_984, &mut text);
        assert_eq!(text, "2026-11-27T02:03:04");
        text.clear();
        // 2024-02-29T23:59:59Z, a leap day.
        civil(1_709_251_199, &mut text);
        assert_eq!(text, "2024-02-29T23:59:59");
    }

    #[test]
    fn escaping_keeps_every_line_json() {
        let mut buf = b"\"".to_vec();
        put_escaped(&mut buf, b"a\"b\\c\x01\xff\x7f ok");
        buf.push(b'"');
        let text = std::str::from_utf8(&buf).expect("ASCII");
        let value: String = serde_json::from_str(text).expect("a JSON string");
        assert_eq!(value, "a\"b\\c\u{1}\u{ff}\u{7f} ok");
    }
}
