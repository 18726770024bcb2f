//! The client socket as hyper sees it, with the timeouts and checks that
//! hyper does not make itself.
//!
//! - A request head must arrive whole within `request_header`; a client
//!   that started one and stalls gets `408 Request Timeout`, a client that
//!   sends nothing at all is closed (nginx's `client_header_timeout`).
//! - A keep-alive connection with nothing to do is closed after `idle`.
//! - A head with both `Content-Length` and `Transfer-Encoding`, or with
//!   `Content-Length` twice, is refused with `400` before hyper parses it:
//!   hyper would silently keep one of them (RFC 9112 §6.3 allows that), but
//!   such a request is how smuggling starts, so it is never forwarded.
//!
//!   Every head is checked, pipelined ones too: the scan follows the
//!   requests' framing as hyper does; hyper reads nothing past a chunked
//!   body the scan cannot follow (it might read on), and answers it 400. A refusal comes after the
//!   answers to the requests before it, in order, or not at all after one
//!   that closes the connection.
//! - An answer the client does not read for `idle` ends the connection
//!   (nginx's `send_timeout`).
//! - An upgraded connection (a WebSocket) is a tunnel: no head checks or
//!   head timeout; it ends after `idle` with no bytes either way
//!   (`forward::tunnel`).
//! - Bytes that continue a request being answered (its body after a
//!   `100 Continue`) are not a new head: no head timeout for them.
//! - A request body the client stops sending fails after `idle` without a
//!   byte (nginx's `client_body_timeout`): the request is answered `408`,
//!   and the upstream, if the body was streaming to it, is not blamed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::fast::ClientStream;

/// Where a connection is in its request/response cycle. Shared between the
/// socket wrapper and the service, which marks the start of each request.
/// Both run on one worker thread; the atomic is only there because hyper
/// wants an upgradeable connection's socket to be `Send`.
#[derive(Default)]
pub struct ConnPhase {
    /// A [`Phase`].
    phase: AtomicU8,
    /// Answers done with ([`Answering`] dropped).
    answered: AtomicU64,
    /// Requests hyper handed to the service (HTTP/1).
    started: AtomicU64,
    /// An answer whose body the close delimits (to an HTTP/1.0 client)
    /// broke off (the upstream failed mid-body): the connection is reset
    /// as it ends, so that the body is not taken as whole. (Any other
    /// framing shows the cut by itself: a FIN keeps the bytes relayed.)
    broken: AtomicBool,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[repr(u8)]
enum Phase {
    /// Accepted, nothing read yet.
    #[default]
    Fresh,
    /// Between requests.
    Idle,
    /// Reading a request head.
    Head,
    /// A request is being served.
    Request,
    /// HTTP/2: hyper manages streams and pings itself.
    Http2,
    /// Upgraded (`101 Switching Protocols`): bytes both ways are the
    /// tunnel's, not HTTP, and its idle timeout is `forward::tunnel`'s.
    Tunnel,
}

impl ConnPhase {
    /// Called by the service when hyper hands it a request.
    pub fn request_started(&self) {
        if self.get() != Phase::Http2 {
            self.set(Phase::Request);
            self.started.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers done with ([`Answering`] dropped).
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Called by the service when it answers `101 Switching Protocols`.
    pub fn tunnel_started(&self) {
        self.set(Phase::Tunnel);
    }

    fn get(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Fresh,
            1 => Phase::Idle,
            2 => Phase::Head,
            3 => Phase::Request,
            4 => Phase::Http2,
            _ => Phase::Tunnel,
        }
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

pub(crate) const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 41\r\nconnection: close\r\n\r\nrequest head not received within timeout\n";
const SMUGGLE_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 79\r\nconnection: close\r\n\r\nbad request: both Content-Length and Transfer-Encoding, or two Content-Lengths\n";
const LONG_LENGTH_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 42\r\nconnection: close\r\n\r\nbad request: Content-Length line too long\n";
const HEAD_OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\nconnection: close\r\n\r\nrequest head over the limit\n";
const MALFORMED_HEAD_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 36\r\nconnection: close\r\n\r\nbad request: malformed request head\n";
const URI_TOO_LONG_RESPONSE: &[u8] = b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 30\r\nconnection: close\r\n\r\nrequest target over the limit\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client stream with head timeouts and the framing check: a TCP
/// stream, or the plaintext side of a TLS stream.
pub struct ClientIo<S: ClientStream = TcpStream> {
    stream: S,
    /// The client, for the access log's line of an answer made here.
    peer: SocketAddr,
    phase: Arc<ConnPhase>,
    deadline: Pin<Box<Sleep>>,
    /// When the current phase times out; the timer may be set earlier.
    due: Instant,
    armed: bool,
    request_header: Duration,
    idle: Duration,
    scan: MessageScan,
    /// A local answer being written before the connection ends.
    answer: Option<(&'static [u8], usize)>,
    /// A refusal found while answers were under way: written once they are
    /// out, so answers keep the requests' order (RFC 9112 §9.3.2). Nothing
    /// read after it reaches hyper.
    refusal: Option<Held>,
    /// hyper's last write did not go through: it holds bytes of an answer
    /// that a refusal must not overtake.
    write_blocked: bool,
    /// Once ended, every read is end-of-file: hyper-util's protocol sniff
    /// and hyper's parser may each read again.
    ended: bool,
    preface_seen: usize,
    /// Bytes read before hyper took over (by the fast path), read first.
    prefix: bytes::BytesMut,
    /// hyper waits for body bytes: the body timeout runs.
    body_waiting: bool,
    /// Closing: `Some` once the write side is shut, `Some(true)` once
    /// unread bytes were found (the lingering close runs).
    lingering: Option<bool>,
    /// hyper's own answer to a head it could not parse was replaced (see
    /// [`ClientIo::replace_automatic`]): what it writes after is dropped.
    replaced: bool,
    /// Answers done with ([`ConnPhase`]) when hyper last flushed: their
    /// bytes are all written.
    flushed: u64,
}

impl<S: ClientStream> ClientIo<S> {
    /// Wraps an accepted stream; the first head must start within
    /// `request_header`, and may have `max_head` bytes.
    pub fn new(
        stream: S,
        peer: SocketAddr,
        phase: Arc<ConnPhase>,
        (request_header, idle): (Duration, Duration),
        max_head: usize,
    ) -> ClientIo<S> {
        ClientIo {
            stream,
            peer,
            phase,
            deadline: Box::pin(tokio::time::sleep(request_header)),
            due: Instant::now() + request_header,
            armed: true,
            request_header,
            idle,
            scan: MessageScan {
                max_head,
                ..MessageScan::default()
            },
            answer: None,
            refusal: None,
            replaced: false,
            flushed: 0,
            write_blocked: false,
            ended: false,
            preface_seen: 0,
            prefix: bytes::BytesMut::new(),
            body_waiting: false,
            lingering: None,
        }
    }

    /// Wraps a stream the fast path has served: `prefix` holds what it
    /// read and did not serve, and `served` says whether requests came
    /// before (so HTTP/2's preface can no longer start). A head over
    /// `max_head` bytes is refused with 431 (hyper checks its limit only
    /// on a head it has not read whole, not on one in `prefix`).
    pub fn resume(
        stream: S,
        peer: SocketAddr,
        phase: Arc<ConnPhase>,
        timeouts: (Duration, Duration),
        max_head: usize,
        prefix: bytes::BytesMut,
        served: bool,
    ) -> ClientIo<S> {
        if served {
            phase.set(Phase::Idle);
        }
        let mut io = ClientIo::new(stream, peer, phase, timeouts, max_head);
        io.prefix = prefix;
        io
    }

    /// Times the current phase out `after` from now. The timer is moved
    /// only when it must fire sooner: a later deadline (the common case, a
    /// phase per request) just waits for the timer to fire early and be
    /// pushed back, which saves a timer-wheel update on every request.
    fn arm(&mut self, after: Duration) {
        let due = Instant::now() + after;
        self.due = due;
        if !self.armed || self.deadline.deadline() > due {
            self.deadline.as_mut().reset(due);
        }
        self.armed = true;
    }

    /// Writes the pending local answer; Ready once it is out (or failed).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some((bytes, written)) = self.answer {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[written..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 && written + n < bytes.len() => {
                    self.answer = Some((bytes, written + n));
                }
                Poll::Ready(_) => self.answer = None,
            }
        }
        Poll::Ready(())
    }

    /// Ends the connection: what hyper reads next is end-of-file.
    fn end_with(
        &mut self,
        answer: Option<&'static [u8]>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(answer) = answer {
            crate::access_log::refused(self.peer, answer);
        }
        self.answer = answer.map(|a| (a, 0));
        self.ended = true;
        self.armed = false;
        self.phase.set(Phase::Request);
        self.scan.stop();
        match self.poll_answer(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// With a refusal waiting: what the client sends is dropped; the
    /// refusal goes at hyper's flush after the answers before it (see
    /// `poll_flush`), or once nothing moved for `idle`.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(result) = self.poll_discard(cx) {
            return Poll::Ready(result);
        }
        while self.deadline_passed(cx) {
            if self.may_end() {
                let held = self.refusal.take().and_then(|held| held.answer);
                return self.end_with(held, cx);
            }
            if self.write_blocked {
                // The client stopped reading for `idle`: no room for a
                // word, the connection just ends.
                self.refusal = None;
                return self.end_with(None, cx);
            }
            // An answer still being made (a slow upstream): its own
            // timeouts end it.
            self.arm(self.idle);
        }
        Poll::Pending
    }

    /// hyper waits for body bytes that have not come: the request fails
    /// once none came for `idle`. The wait is timed from its start, as
    /// hyper stops reading while the upstream is slow to take the body.
    fn poll_body_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.body_waiting {
            self.body_waiting = true;
            self.arm(self.idle);
        }
        if self.deadline_passed(cx) {
            self.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request body bytes within the idle timeout",
            )));
        }
        Poll::Pending
    }

    /// Whether the current phase's deadline has passed; if not, `cx` is
    /// woken when it may have (a timer that fired for an earlier phase's
    /// deadline is moved on).
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.due {
                return true;
            }
            let due = self.due;
            self.deadline.as_mut().reset(due);
        }
        false
    }

    /// Whether a held refusal may go now: the answers before it are done
    /// with, and hyper has written all it had.
    fn may_end(&self) -> bool {
        self.refusal
            .is_some_and(|held| self.phase.answered() >= held.after && !self.write_blocked)
    }

    /// Whether the answer being written made no progress for the timeout
    /// (nginx's `send_timeout`); if not, `cx` is woken when it may have.
    fn write_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.armed
            && !matches!(self.phase.get(), Phase::Http2 | Phase::Tunnel)
            && self.deadline_passed(cx)
    }

    /// Reads and drops what the client sends, so the task is woken when
    /// more comes; Ready (end of file) once the client closes.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.prefix.clear();
        let mut scratch = [0u8; 1024];
        loop {
            let mut sink = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if !sink.filled().is_empty() => {}
                Poll::Ready(result) => return Poll::Ready(result),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn note_read(&mut self, bytes: &[u8]) -> Verdict {
        let phase = self.phase.get();
        if phase == Phase::Fresh {
            // hyper-util reads the first bytes to tell HTTP/2's preface from
            // HTTP/1.1; HTTP/2 connections get no head checks.
            let n = bytes.len().min(H2_PREFACE.len() - self.preface_seen);
            if bytes[..n] == H2_PREFACE[self.preface_seen..self.preface_seen + n] {
                self.preface_seen += n;
                if self.preface_seen == H2_PREFACE.len() {
                    self.phase.set(Phase::Http2);
                    self.armed = false;
                }
                return Verdict::Fine;
            }
        }
        match phase {
            Phase::Http2 => return Verdict::Fine,
            // The tunnel's idle timeout is `forward::tunnel`'s.
            Phase::Tunnel => {
                self.armed = false;
                return Verdict::Fine;
            }
            // The body of a request being answered (after a `100
            // Continue`, or early): no head timeout.
            Phase::Idle if self.scan.in_body() => self.phase.set(Phase::Request),
            // A head starts or goes on: it must be whole within the head
            // timeout.
            Phase::Fresh | Phase::Idle => {
                self.phase.set(Phase::Head);
                self.arm(self.request_header);
            }
            Phase::Head | Phase::Request => {}
        }
        self.scan.feed(bytes)
    }
}

impl<S: ClientStream> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return match this.poll_answer(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        if this.refusal.is_some() {
            return this.poll_held(cx);
        }
        let before = buf.filled().len();
        let read = if this.prefix.is_empty() {
            Pin::new(&mut this.stream).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        if read.is_ready() {
            this.body_waiting = false;
        }
        match read {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() == before {
                    return Poll::Ready(Ok(()));
                }
                match this.note_read(&buf.filled()[before..]) {
                    Verdict::Fine => Poll::Ready(Ok(())),
                    Verdict::BodyBroken { from } => {
                        // hyper finds the body's end here and answers the
                        // request (400); it reads nothing after.
                        buf.set_filled(before + from);
                        this.scan.stop();
                        this.ended = true;
                        Poll::Ready(Ok(()))
                    }
                    Verdict::Refuse { answer, from } => {
                        // hyper never sees the refused head or what follows.
                        buf.set_filled(before + from);
                        this.scan.stop();
                        // The requests before it are answered first.
                        this.refusal = Some(Held {
                            answer: (!this.scan.closing).then_some(answer),
                            after: this.scan.heads,
                        });
                        if from == 0 && this.may_end() {
                            let held = this.refusal.take().and_then(|held| held.answer);
                            return this.end_with(held, cx);
                        }
                        this.arm(this.idle);
                        match from {
                            0 => this.poll_held(cx),
                            _ => Poll::Ready(Ok(())),
                        }
                    }
                }
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                // A body under way (also after a `100 Continue`, or past
                // an early answer).
                if matches!(this.phase.get(), Phase::Request | Phase::Idle) && this.scan.in_body() {
                    return this.poll_body_wait(cx);
                }
                if this.armed && this.deadline_passed(cx) {
                    return match this.phase.get() {
                        Phase::Head => this.end_with(Some(TIMEOUT_RESPONSE), cx),
                        Phase::Fresh | Phase::Idle => this.end_with(None, cx),
                        Phase::Request | Phase::Http2 | Phase::Tunnel => {
                            this.armed = false;
                            Poll::Pending
                        }
                    };
                }
                Poll::Pending
            }
        }
    }
}

impl<S: ClientStream> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced || this.replace_automatic(buf, cx) {
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(&result);
        if result.is_pending() && this.write_timed_out(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty());
        if this.replaced || first.is_some_and(|f| f.len() == total && this.replace_automatic(f, cx))
        {
            return Poll::Ready(Ok(total));
        }
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_write(&result);
        if result.is_pending() && this.write_timed_out(cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper flushes once its own buffer is written.
        this.write_blocked = false;
        this.flushed = this.phase.answered();
        // hyper flushes once an answer's last bytes are written, after it
        // is done with the answer's body: a refusal behind it goes now.
        if this.may_end() {
            let held = this.refusal.take().and_then(|held| held.answer);
            // hyper is to read again, and find the end of the stream.
            cx.waker().wake_by_ref();
            if this.end_with(held, cx).is_pending() {
                return Poll::Pending;
            }
        }
        if this.answer.is_some() && this.poll_answer(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// Shuts the write side, then closes as the fast path's `close_client`
    /// does: bytes the client sent that are never read would make the
    /// kernel reset the connection and drop the tail of the last answer
    /// still queued. So when unread bytes are found (pipelined requests
    /// behind a closing answer), what comes is read and dropped until the
    /// client closes or `LINGER` passes (nginx's lingering close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A tunnel whose upstream side ended: only this direction ends (a
        // TCP half-close); the other still carries the client's bytes, and
        // reading them here would drop them.
        if this.phase.get() == Phase::Tunnel {
            return Pin::new(&mut this.stream).poll_shutdown(cx);
        }
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.lingering = Some(false);
            if !this.prefix.is_empty() {
                this.linger();
            }
        }
        let mut sink = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => this.linger(),
                // The client closed, or the connection broke.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending if this.lingering == Some(false) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match this.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }
}

impl<S: ClientStream> ClientIo<S> {
    /// Starts the lingering close's clock, once.
    fn linger(&mut self) {
        if self.lingering == Some(false) {
            self.lingering = Some(true);
            let due = Instant::now() + crate::fast::LINGER;
            self.deadline.as_mut().reset(due);
        }
    }
}

impl<S: ClientStream> ClientIo<S> {
    /// If `bytes` are hyper's own answer to a head it could not parse,
    /// answers with one that says why instead (and logs it): hyper has no
    /// hook for its parse errors, and answers them with a bare status.
    /// Its answer is known by when and what it is: written when every
    /// request hyper handed on is answered and its bytes flushed (so no
    /// answer is under way: the bytes cannot be a body's), while a head
    /// hyper did not hand on has been read; and a `400`, `414` or `431`
    /// status line with `content-length: 0` and nothing but `connection`
    /// and `date` besides.
    fn replace_automatic(&mut self, bytes: &[u8], cx: &mut Context<'_>) -> bool {
        let started = self.phase.started.load(Ordering::Relaxed);
        let idle = self.phase.answered() == started && self.flushed == started;
        let unserved_head = self.scan.heads > started || self.scan.head_begun();
        if !idle || !unserved_head || matches!(self.phase.get(), Phase::Http2 | Phase::Tunnel) {
            return false;
        }
        let Some(answer) = automatic_answer(bytes) else {
            return false;
        };
        self.replaced = true;
        // What does not go at once goes at hyper's flush (`poll_flush`).
        let _ = self.end_with(Some(answer), cx);
        true
    }

    fn note_write(&mut self, result: &Poll<io::Result<usize>>) {
        self.write_blocked = result.is_pending();
        // Answer bytes going out: the connection is idle (or streaming a
        // response) until the next head begins; a response that makes no
        // progress for `idle` also ends it, as nginx's send_timeout does.
        if let Poll::Ready(Ok(n)) = result {
            if *n > 0 && matches!(self.phase.get(), Phase::Request | Phase::Idle) {
                self.phase.set(Phase::Idle);
                self.arm(self.idle);
            }
        }
    }
}

impl<S: ClientStream> Drop for ClientIo<S> {
    fn drop(&mut self) {
        // HTTP/2 resets the broken answer's stream, not the connection.
        if self.phase.broken.load(Ordering::Relaxed) && self.phase.get() != Phase::Http2 {
            self.stream.reset_on_close();
        }
    }
}

/// A refusal waiting for the answers before it.
#[derive(Clone, Copy)]
struct Held {
    /// None: the connection just ends (a request before it asked to
    /// close, so nothing may follow its answer).
    answer: Option<&'static [u8]>,
    /// How many answers must be done with first.
    after: u64,
}

/// A response body that tells its connection's [`ConnPhase`] when it is
/// done with (dropped): a refusal waiting behind the answer may go then;
/// and when it broke off, if the connection's close delimits it.
pub struct Answering<B> {
    body: B,
    phase: Arc<ConnPhase>,
    /// The close delimits the body (an HTTP/1.0 client's answer of no
    /// known length): if it breaks off, the connection is reset.
    delimited_by_close: bool,
}

impl<B: http_body::Body> Answering<B> {
    /// `http10`: the request was HTTP/1.0; `length_known`: the answer has
    /// a `Content-Length`.
    pub fn new(body: B, phase: Arc<ConnPhase>, http10: bool, length_known: bool) -> Self {
        let delimited_by_close = http10 && !length_known && body.size_hint().exact().is_none();
        Answering {
            body,
            phase,
            delimited_by_close,
        }
    }
}

impl<B> Drop for Answering<B> {
    fn drop(&mut self) {
        self.phase.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Answering<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let (Poll::Ready(Some(Err(_))), true) = (&frame, this.delimited_by_close) {
            this.phase.broken.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

enum Verdict {
    Fine,
    /// Refused with `answer`, and the connection closed; the refused head
    /// starts `from` bytes into the read (0 if it began in an earlier one):
    /// what comes before it is hyper's.
    Refuse {
        answer: &'static [u8],
        from: usize,
    },
    /// The chunked body being read cannot be followed past `from` bytes
    /// into the read: hyper gets what comes before, and then its end.
    BodyBroken {
        from: usize,
    },
}

/// How much of each head line [`MessageScan`] keeps: enough for a
/// `Content-Length` with its value (up to 20 digits, and some spaces), or
/// the start of any other field.
const LINE_KEPT: usize = 48;

/// Follows the requests on an HTTP/1.1 connection as hyper frames them —
/// a head, then a `Content-Length` or chunked body, then the next head —
/// to find `Content-Length` and `Transfer-Encoding` field lines in every
/// head, pipelined ones included, before hyper reads it. Heads and bodies
/// may arrive over any number of reads. A request that asks for an
/// upgrade is followed on: until a `101` makes the connection a tunnel
/// ([`Phase::Tunnel`], no longer scanned), it is HTTP/1.1.
struct MessageScan {
    part: Part,
    /// The start of the current head line, lower-cased.
    line: [u8; LINE_KEPT],
    line_len: usize,
    /// Bytes in the current line so far (not capped).
    line_bytes: usize,
    /// The current line's last byte so far.
    last: u8,
    content_lengths: u8,
    length: Option<u64>,
    transfer_encodings: u8,
    /// Lines of the current head seen; the first is the request line.
    lines: usize,
    /// Bytes of the current head so far, and the most it may have.
    head_bytes: usize,
    max_head: usize,
    /// Heads seen whole (and passed to hyper).
    heads: u64,
    /// One of them asked to close the connection after its answer.
    closing: bool,
    /// The current head is HTTP/1.0, has `Connection: close`, has
    /// `Connection: keep-alive`.
    http10: bool,
    asks_close: bool,
    keeps_alive: bool,
    /// The current line's last bytes so far, the last in the low byte.
    tail: u128,
}

impl Default for MessageScan {
    fn default() -> Self {
        MessageScan {
            part: Part::Head,
            line: [0; LINE_KEPT],
            line_len: 0,
            line_bytes: 0,
            last: 0,
            content_lengths: 0,
            length: None,
            transfer_encodings: 0,
            lines: 0,
            head_bytes: 0,
            max_head: usize::MAX,
            heads: 0,
            closing: false,
            http10: false,
            asks_close: false,
            keeps_alive: false,
            tail: 0,
        }
    }
}

#[derive(Default)]
enum Part {
    #[default]
    Head,
    /// Body bytes left.
    Length(u64),
    Chunked(crate::fast::ChunkScan),
    /// Not followed further: the connection is ending.
    Stopped,
}

impl MessageScan {
    fn stop(&mut self) {
        self.part = Part::Stopped;
    }

    /// Whether the next byte belongs to a request's body.
    fn in_body(&self) -> bool {
        matches!(self.part, Part::Length(_) | Part::Chunked(_))
    }

    /// Whether a head has begun and not ended.
    fn head_begun(&self) -> bool {
        matches!(self.part, Part::Head) && !self.at_message_start()
    }

    /// Whether the next byte starts a request (or an empty line before
    /// one), not a body or the rest of a head.
    fn at_message_start(&self) -> bool {
        matches!(self.part, Part::Head) && self.lines == 0 && self.line_bytes == 0
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Verdict {
        let total = bytes.len();
        // Where the head being scanned started in `bytes`.
        let mut head_start = 0;
        while !bytes.is_empty() {
            match &mut self.part {
                Part::Stopped => break,
                Part::Length(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.part = Part::Head;
                    }
                }
                Part::Chunked(scan) => match scan.feed(bytes) {
                    Some(used) => {
                        bytes = &bytes[used..];
                        if scan.done() {
                            self.part = Part::Head;
                        }
                    }
                    // Where the body ends, and the next head starts, is
                    // unknown: hyper reads no further (it may take what
                    // the scan does not).
                    None => {
                        return Verdict::BodyBroken {
                            from: total - bytes.len(),
                        }
                    }
                },
                Part::Head => {
                    if self.at_message_start() {
                        head_start = total - bytes.len();
                    }
                    match self.feed_head(bytes) {
                        Ok(rest) => bytes = rest,
                        Err(answer) => {
                            return Verdict::Refuse {
                                answer,
                                from: head_start,
                            }
                        }
                    }
                }
            }
        }
        Verdict::Fine
    }

    /// Scans head lines, looking at each line's start only: the bytes
    /// between are skipped with `memchr`, so a long head costs little more
    /// than a short one. Returns what follows the head once it ends.
    fn feed_head<'b>(&mut self, mut bytes: &'b [u8]) -> Result<&'b [u8], &'static [u8]> {
        while !bytes.is_empty() {
            let (part, rest, ended) = match memchr::memchr(b'\n', bytes) {
                Some(at) => (&bytes[..at], &bytes[at + 1..], true),
                None => (bytes, &[][..], false),
            };
            let take = (LINE_KEPT - self.line_len).min(part.len());
            for (slot, &b) in self.line[self.line_len..self.line_len + take]
                .iter_mut()
                .zip(part)
            {
                *slot = b.to_ascii_lowercase();
            }
            self.line_len += take;
            self.line_bytes += part.len();
            self.head_bytes += part.len() + usize::from(ended);
            if self.head_bytes > self.max_head {
                return Err(HEAD_OVER_LIMIT_RESPONSE);
            }
            if let Some(&last) = part.last() {
                self.last = last;
            }
            for &b in &part[part.len().saturating_sub(9)..] {
                self.tail = (self.tail << 8) | u128::from(b);
            }
            bytes = rest;
            if !ended {
                break;
            }
            // A line of just "\r" (or nothing).
            let empty = self.line_bytes == 0 || (self.line_bytes == 1 && self.line[0] == b'\r');
            let line = &self.line[..self.line_len];
            if self.lines == 0 {
                // Empty lines before a request line are ignored (RFC 9112
                // §2.2), as hyper does.
                if !empty {
                    self.lines = 1;
                    self.http10 =
                        ends_with(self.tail, b"HTTP/1.0\r") || ends_with(self.tail, b"HTTP/1.0");
                }
            } else if empty {
                self.end_head();
                return Ok(bytes);
            } else {
                if line.starts_with(b"content-length:") {
                    self.content_lengths = self.content_lengths.saturating_add(1);
                    // A value hyper would refuse is left to hyper; one too
                    // long to keep (its CR aside) is refused here.
                    if self.line_bytes - usize::from(self.last == b'\r') > LINE_KEPT {
                        return Err(LONG_LENGTH_RESPONSE);
                    }
                    self.length = std::str::from_utf8(&line[15..])
                        .ok()
                        .and_then(|v| v.trim_ascii().parse().ok());
                } else if line.starts_with(b"transfer-encoding:") {
                    self.transfer_encodings = self.transfer_encodings.saturating_add(1);
                } else if let Some(value) = line.strip_prefix(b"connection:") {
                    // Whole tokens (`x-close` is not `close`), as hyper
                    // reads them.
                    let has =
                        |token: &[u8]| value.split(|&b| b == b',').any(|t| t.trim_ascii() == token);
                    self.asks_close |= has(b"close");
                    self.keeps_alive |= has(b"keep-alive");
                }
                let both = self.content_lengths > 0 && self.transfer_encodings > 0;
                if both || self.content_lengths > 1 {
                    return Err(SMUGGLE_RESPONSE);
                }
                self.lines += 1;
            }
            self.line_len = 0;
            self.line_bytes = 0;
            self.last = 0;
            self.tail = 0;
        }
        Ok(bytes)
    }

    /// The head ended: its body comes next, framed as hyper frames it.
    fn end_head(&mut self) {
        let next = if self.transfer_encodings > 0 {
            // Chunked, or hyper refuses the request and closes.
            Part::Chunked(crate::fast::ChunkScan::lenient())
        } else if self.content_lengths > 0 {
            match self.length {
                Some(0) => Part::Head,
                Some(n) => Part::Length(n),
                // hyper refuses it and closes.
                None => Part::Stopped,
            }
        } else {
            Part::Head
        };
        let closes = self.asks_close || (self.http10 && !self.keeps_alive);
        *self = MessageScan {
            part: next,
            heads: self.heads + 1,
            closing: self.closing || closes,
            max_head: self.max_head,
            ..MessageScan::default()
        };
    }
}

/// The answer that says why, for hyper's bare answer to a head it could not
/// parse (see [`ClientIo::replace_automatic`]); None for anything else.
fn automatic_answer(bytes: &[u8]) -> Option<&'static [u8]> {
    Some(match hyper_refusal(bytes)? {
        400 => MALFORMED_HEAD_RESPONSE,
        414 => URI_TOO_LONG_RESPONSE,
        _ => HEAD_OVER_LIMIT_RESPONSE,
    })
}

/// The status of hyper's own answer to a request head it could not parse,
/// if `bytes` are one (hyper's HTTP/1 server has no hook for its parse
/// errors, and answers them with a bare status): a `400`, `414` or `431`
/// status line with `content-length: 0` and nothing but `connection` and
/// `date` besides. None for anything else.
pub fn hyper_refusal(bytes: &[u8]) -> Option<u16> {
    let head = bytes.strip_suffix(b"\r\n\r\n")?;
    let status = match head.get(..13)? {
        b"HTTP/1.1 400 " => 400,
        b"HTTP/1.1 414 " => 414,
        b"HTTP/1.1 431 " => 431,
        _ => return None,
    };
    let mut empty = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line {
            b"content-length: 0" => empty = true,
            b"connection: close" => {}
            _ if line.starts_with(b"date: ") => {}
            _ => return None,
        }
    }
    empty.then_some(status)
}

/// Whether `tail` (a line's last bytes, see [`MessageScan`]) ends with
/// `suffix` (at most 16 bytes).
fn ends_with(tail: u128, suffix: &[u8]) -> bool {
    let value = suffix.iter().fold(0u128, |v, &b| (v << 8) | u128::from(b));
    let mask = u128::MAX >> (128 - 8 * suffix.len());
    tail & mask == value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut scan = MessageScan::default();
        chunks
            .iter()
            .any(|chunk| !matches!(scan.feed(chunk), Verdict::Fine))
    }

    #[test]
    fn finds_ambiguous_framing_across_reads() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nContent-Le",
            b"ngth: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n"
        ]));
    }

    #[test]
    fn ordinary_heads_and_bodies_pass() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: a\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"GET /content-length: HTTP/1.1\r\nX-A: content-length:\r\n\r\n"
        ]));
        // The empty line that ends the head, split across reads.
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r",
            b"\ntransfer-encoding: chunked\r\n"
        ]));
        // A field name split across reads, and a long line before it.
        let long = format!(
            "GET / HTTP/1.1\r\nX-Long: {}\r\nTransfer-",
            "a".repeat(5000)
        );
        assert!(scan(&[
            long.as_bytes(),
            b"Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        ]));
        // After the head, body bytes are not scanned.
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n",
            b"transfer-encoding: chunked\r\n"
        ]));
    }

    #[test]
    fn only_hypers_bare_answer_to_a_bad_head_is_replaced() {
        let date = "date: Fri, 27 Nov 2026 05:11:40 GMT";
        let bare = |status: &str| {
            format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n\r\n")
        };
        assert_eq!(
            automatic_answer(bare("400 Bad Request").as_bytes()),
            Some(MALFORMED_HEAD_RESPONSE)
        );
        assert_eq!(
            automatic_answer(bare("431 Request Header Fields Too Large").as_bytes()),
            Some(HEAD_OVER_LIMIT_RESPONSE)
        );
        assert_eq!(
            automatic_answer(bare("414 URI Too Long").as_bytes()),
            Some(URI_TOO_LONG_RESPONSE)
        );
        let not = [
            bare("404 Not Found"),
            bare("400 Bad Request").replace("content-length: 0", "content-length: 2"),
            bare("400 Bad Request").replace("connection: close\r\n", "x-a: b\r\n"),
            format!("{}ok", bare("400 Bad Request")),
            "HTTP/1.1 400 Bad Request\r\n".to_string(),
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n".to_string(),
        ];
        for bytes in not {
            assert_eq!(automatic_answer(bytes.as_bytes()), None, "{bytes:?}");
        }
    }

    #[test]
    fn pipelined_heads_are_found_past_each_body() {
        let bad = b"POST /b HTTP/1.1\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n";
        // After a head without a body, a length, a chunked body (with an
        // extension and a trailer), and empty lines: in one read or split
        // at every byte.
        let firsts: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 30\r\n\r\ncontent-length: 1\r\ncontent-len",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\n\r\n",
        ];
        for first in firsts {
            let stream = [first, &bad[..]].concat();
            assert!(scan(&[&stream]), "{}", String::from_utf8_lossy(first));
            for at in 1..stream.len() {
                assert!(scan(&[&stream[..at], &stream[at..]]), "split at {at}");
            }
            // The same requests, well-formed: nothing found, body bytes
            // that look like fields included.
            let good = [first, &b"GET /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..]].concat();
            assert!(!scan(&[&good]), "{}", String::from_utf8_lossy(first));
        }
    }

    #[test]
    fn upgrades_and_odd_chunks_are_followed_and_broken_ones_refused() {
        let bad = &b"GET /b HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n"[..];
        // Until a 101 (which ends the scan), an upgrade is HTTP/1.1; a
        // lower-case `connect` is an ordinary method.
        for first in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
            b"connect a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            assert!(scan(&[first, bad]), "{}", String::from_utf8_lossy(first));
            assert!(!scan(&[first]), "{}", String::from_utf8_lossy(first));
        }
        // Chunk sizes with leading zeros are sizes, and extensions hold
        // what hyper takes; a chunked body the scan cannot follow is
        // refused, since hyper might read on past it.
        let zeros = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            0000000000000000005;a=\x01\r\nhello\r\n0\r\n\r\n";
        assert!(!scan(&[zeros]));
        assert!(scan(&[zeros, bad]));
        let broken = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(scan(&[broken]));
        // A length line too long to keep is refused rather than not
        // followed; one that fits, with its CR, is not.
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nContent-Length:                                   5\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 00000000000000000000000000000005\r\n\r\n"
        ]));
    }
}
