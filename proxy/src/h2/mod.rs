//! The HTTP/2 server (RFC 9113): h2c with prior knowledge and h2 over TLS.
//!
//! One task serves a connection: it reads and answers frames, runs each
//! stream's request through [`Proxy::handle`] as a future of its own
//! (polled in the same task), and writes what all streams have to say in
//! one buffer, flushed once per turn. It replaces hyper's HTTP/2 server,
//! whose frame, HPACK and stream machinery cost about two thirds of an
//! h2c request's instructions.
//!
//! Flow control: the client may send 1 MiB per stream and 1 MiB in all
//! before the body reader takes any; what a reader takes is granted back
//! (`WINDOW_UPDATE`) once half a window is taken, so a slow upstream slows
//! the client. Responses are sent within the client's windows, and no
//! body is polled while 64 KiB wait to be written.
//!
//! Errors follow RFC 9113 §5.4: a malformed request resets its stream
//! (`PROTOCOL_ERROR`) and is never forwarded; a protocol violation ends
//! the connection with `GOAWAY`.

mod hpack;
mod huffman_table;
mod request;

pub(crate) use hpack::{put_field, put_status};

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use self::request::{Answer, RawHead};
use crate::body::{BoxError, ClientBody, ProxyBody};
use crate::fast::{with_date, Deadline, Waiting};
use crate::forward::Proxy;
use crate::headers::{is_connection_specific, ClientInfo};

/// What a client sends first (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEAD: usize = 9;
/// The largest frame payload we accept: the protocol's default, which we
/// do not raise.
const MAX_FRAME: usize = 16_384;
/// Bytes read at a time; room for the largest frame and its head.
const INPUT_SIZE: usize = 32 * 1024;
/// Responses are not polled while this much waits to be written.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// How long a connection we end is read and drained before it is closed,
/// and how long a graceful shutdown waits for its PING's answer.
const LINGER: Duration = Duration::from_secs(1);
/// The last stream of a GOAWAY that refuses none (2^31-1).
const MAX_STREAM_ID: u32 = 0x7fff_ffff;
/// The payload of the graceful shutdown's PING.
const DRAIN_PING: &[u8] = b"draining";

const MAX_STREAMS: u32 = 256;
/// What a client may send on one stream before its reader takes some
/// (hyper's server allowed as much).
const STREAM_WINDOW: i64 = 1024 * 1024;
/// What a client may send on all streams before their readers take some:
/// the most request body a connection buffers.
const CONN_WINDOW: i64 = 1024 * 1024;
/// Empty CONTINUATION frames allowed in one header block.
const MAX_EMPTY_CONTINUATIONS: u32 = 8;
/// Streams the client may reset before their answer (Envoy's "premature
/// resets", the HTTP/2 rapid-reset attack) before the ratio below counts.
const PREMATURE_RESETS_FREE: u32 = 100;
/// Streams the connection may reset for malformed requests before it ends
/// (as the h2 crate's `max_local_error_reset_streams`).
const MAX_LOCAL_RESETS: u32 = 1024;
/// How many reset streams (and runs of skipped ids) a connection
/// remembers, to answer a late frame on one (RFC 9113 §5.1).
const CLOSED_KEPT: usize = 64;
/// The protocol's initial windows, before SETTINGS (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

// Error codes (RFC 9113 §7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const INTERNAL_ERROR: u32 = 0x2;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings (RFC 9113 §6.5.2).
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// A connection error: the connection ends with `GOAWAY` and this code.
#[derive(Debug)]
struct ConnError {
    code: u32,
    reason: &'static str,
}

fn conn_error(code: u32, reason: &'static str) -> ConnError {
    ConnError { code, reason }
}

/// What the connection and the readers of its request bodies share.
#[derive(Default)]
struct ConnShared {
    /// Bytes each stream's reader took since the connection last looked,
    /// to be granted back to the client.
    credits: RefCell<Vec<(u32, u32)>>,
    /// The connection task, woken when a reader on another task takes bytes.
    waker: RefCell<Option<Waker>>,
    /// Set while the connection task runs: a reader polled by it needs
    /// no wake-up.
    running: Cell<bool>,
    /// Whether the connection's window lets the client send (readers time
    /// out a body only then).
    client_may_send: Cell<bool>,
    /// Streams whose reader wants the body a client holds back for a
    /// `100 Continue`.
    continues: RefCell<Vec<u32>>,
}

/// One stream's request body as the connection received it.
#[derive(Default)]
struct Recv {
    chunks: VecDeque<Bytes>,
    /// Small DATA frames after `chunks`, gathered: a chunk each would
    /// cost an allocation for a byte or two.
    tail: BytesMut,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The client reset the stream, or the connection ended.
    reset: bool,
    /// The reader dropped the body: what arrives is granted back at once.
    dropped: bool,
    /// Bytes taken by the reader, for the size hint.
    taken: u64,
    waker: Option<Waker>,
}

/// What a stream's handler, its body reader and the connection share.
struct StreamShared {
    id: u32,
    /// The request's `content-length`, if it gave one.
    length: Option<u64>,
    recv: RefCell<Recv>,
    /// The client reset the stream: the handler stops when next polled.
    cancelled: Cell<bool>,
    /// The handler's task, woken to notice a cancel.
    handler: RefCell<Option<Waker>>,
    /// Whether the stream's window lets the client send.
    client_may_send: Cell<bool>,
    /// The client waits for a `100 Continue` before its body, and none
    /// went yet.
    expects_continue: Cell<bool>,
    conn: Rc<ConnShared>,
}

/// DATA payloads under this are gathered into one chunk.
const SMALL_DATA: usize = 4096;

impl Recv {
    fn push(&mut self, data: &[u8]) {
        if data.len() < SMALL_DATA {
            self.tail.extend_from_slice(data);
            if self.tail.len() < SMALL_DATA {
                return;
            }
            let gathered = self.tail.split().freeze();
            self.chunks.push_back(gathered);
            return;
        }
        if !self.tail.is_empty() {
            let gathered = self.tail.split().freeze();
            self.chunks.push_back(gathered);
        }
        self.chunks.push_back(Bytes::copy_from_slice(data));
    }

    fn pop(&mut self) -> Option<Bytes> {
        match self.chunks.pop_front() {
            Some(chunk) => Some(chunk),
            None if !self.tail.is_empty() => Some(self.tail.split().freeze()),
            None => None,
        }
    }

    /// Drops what is buffered; its length.
    fn clear(&mut self) -> usize {
        let len = self.chunks.drain(..).map(|c| c.len()).sum::<usize>() + self.tail.len();
        self.tail = BytesMut::new();
        len
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }
}

impl StreamShared {
    fn wake_reader(&self) {
        if let Some(waker) = self.recv.borrow_mut().waker.take() {
            waker.wake();
        }
    }
}

/// Error of a request body whose stream was reset.
#[derive(Debug, thiserror::Error)]
#[error("the client reset the HTTP/2 stream")]
struct StreamReset;

/// An HTTP/2 request body, read from its stream. A body the client stops
/// sending fails after `idle` without a byte (nginx's
/// `client_body_timeout`; HTTP/1.1's is `client_io`'s), but not while our
/// own flow control holds the client back (another stream's unread body
/// can fill the connection's window): the client then has `idle` again
/// once it may send.
pub struct RecvBody {
    shared: Rc<StreamShared>,
    idle: Duration,
    /// The timer, made at the first wait and moved on for each later one
    /// (an upload waits between most of its frames).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body waits for the client: the timer runs.
    waiting: bool,
    /// The windows were shut when the timer last fired.
    held_back: bool,
}

impl RecvBody {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.poll_stream(cx);
        if frame.is_ready() {
            self.waiting = false;
            self.held_back = false;
            return frame;
        }
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if !std::mem::replace(&mut self.waiting, true) {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        while timer.as_mut().poll(cx).is_ready() {
            let may_send =
                self.shared.client_may_send.get() && self.shared.conn.client_may_send.get();
            if may_send && !self.held_back {
                self.waiting = false;
                return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request body bytes within the idle timeout",
                )))));
            }
            self.held_back = !may_send;
            let next = tokio::time::Instant::now() + idle;
            timer.as_mut().reset(next);
        }
        Poll::Pending
    }

    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = &self.shared;
        let mut recv = shared.recv.borrow_mut();
        // A stream reset, or a client gone, before END_STREAM: the body
        // never ends, and what is buffered must not complete it upstream.
        if recv.reset {
            return Poll::Ready(Some(Err(Box::new(StreamReset))));
        }
        if let Some(chunk) = recv.pop() {
            let taken = recv.taken + chunk.len() as u64;
            // The bytes that complete the content-length wait for the
            // stream's end: more DATA after them makes the request
            // malformed (RFC 9113 §8.1.1), and the upstream must not hold
            // it whole by then. A client's last frame carries END_STREAM,
            // so this costs nothing but to a client that sends it apart.
            if shared.length == Some(taken) && !recv.ended {
                recv.chunks.push_front(chunk);
            } else {
                recv.taken = taken;
                drop(recv);
                shared.expects_continue.set(false);
                give_credit(shared, chunk.len());
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        if let Some(trailers) = recv.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if recv.ended {
            return Poll::Ready(None);
        }
        recv.waker = Some(cx.waker().clone());
        drop(recv);
        // The body is wanted and the client waits to be asked for it (RFC
        // 9110 §10.1.1): the connection sends the `100`.
        if shared.expects_continue.replace(false) {
            shared.conn.continues.borrow_mut().push(shared.id);
            wake_conn(&shared.conn);
        }
        Poll::Pending
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let recv = self.shared.recv.borrow();
        recv.ended && !recv.reset && recv.is_empty() && recv.trailers.is_none()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.shared.length {
            Some(length) => {
                SizeHint::with_exact(length.saturating_sub(self.shared.recv.borrow().taken))
            }
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let mut recv = self.shared.recv.borrow_mut();
        recv.dropped = true;
        let unread = recv.clear();
        drop(recv);
        if unread > 0 {
            give_credit(&self.shared, unread);
        }
    }
}

/// Tells the connection that `len` bytes of `stream` were taken.
fn give_credit(stream: &StreamShared, len: usize) {
    let conn = &stream.conn;
    conn.credits.borrow_mut().push((stream.id, len as u32));
    wake_conn(conn);
}

/// Wakes the connection task, unless it is the one running.
fn wake_conn(conn: &ConnShared) {
    if !conn.running.get() {
        if let Some(waker) = conn.waker.borrow().as_ref() {
            waker.wake_by_ref();
        }
    }
}

type Handler = Pin<Box<dyn Future<Output = Answer>>>;

/// A stream's handler, stopped when the client resets the stream.
struct StreamTask {
    shared: Rc<StreamShared>,
    handler: Handler,
}

impl Future for StreamTask {
    type Output = (u32, Option<Answer>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.shared.id;
        if self.shared.cancelled.get() {
            return Poll::Ready((id, None));
        }
        match self.handler.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready((id, Some(answer))),
            Poll::Pending => {
                let mut handler = self.shared.handler.borrow_mut();
                if !handler.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *handler = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// A response on its way out. (`Waiting` is the short-lived state: a
/// boxed body would cost an allocation per response.)
#[allow(clippy::large_enum_variant)]
enum Sending {
    /// The handler has not answered yet.
    Waiting,
    /// The head is sent; the body follows, `pending` being the part of its
    /// last chunk the windows did not let through yet.
    Body {
        body: ProxyBody,
        pending: Option<Bytes>,
    },
}

/// What one step of a response body did.
enum Pumped {
    /// Nothing: the body has nothing yet, or the windows are shut.
    Nothing,
    /// A frame went out, or the body gave an empty one.
    Sent,
    /// The body ended (None: its stream was gone already).
    Ended(Option<End>),
}

/// How a response body ended.
enum End {
    /// Its last DATA frame (END_STREAM) is written.
    Sent,
    /// Trailers end it.
    Trailers(HeaderMap),
    /// It broke off: the stream is reset.
    Failed,
}

/// A stream the connection serves.
struct Stream {
    shared: Rc<StreamShared>,
    /// The client may still send on it.
    recv_open: bool,
    /// What the client may still send before we grant more.
    recv_window: i64,
    /// Taken by the reader, not yet granted back.
    recv_credit: i64,
    received: u64,
    send_window: i64,
    sending: Sending,
    /// A HEAD request: its answer has no body, whatever the handler says.
    head_request: bool,
}

/// How a stream closed, which decides what a frame after it means
/// (RFC 9113 §5.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Closed {
    /// We reset it, or ignored it (after our GOAWAY): the client may not
    /// know yet, and its frames are ignored.
    WeReset,
    /// The client reset it: a frame after is a stream error.
    TheyReset,
    /// Both sides ended it: a frame after is a connection error.
    Ended,
    /// An id the client passed over: it was never opened.
    NeverOpened,
    /// Closed too long ago for its note to be kept: how is not known.
    Forgotten,
}

/// A header block waiting for its CONTINUATION frames.
struct Continuation {
    id: u32,
    end_stream: bool,
    block: Vec<u8>,
    /// The HEADERS made the stream depend on itself (RFC 9113 §5.3.1).
    self_dependent: bool,
    empty_frames: u32,
}

/// The connection's state apart from its socket and read buffer, so frame
/// handlers may read the buffer while they change the state.
struct State {
    proxy: Rc<Proxy>,
    client: Rc<ClientInfo>,
    shared: Rc<ConnShared>,
    out: Vec<u8>,
    written: usize,
    /// Written but not yet flushed.
    unflushed: bool,
    /// Scratch for encoding one header block.
    block: Vec<u8>,
    decoder: hpack::Decoder,
    streams: FxHashMap<u32, Stream>,
    /// Streams whose response body is being sent.
    sending: Vec<u32>,
    tasks: FuturesUnordered<StreamTask>,
    /// The highest stream the client opened.
    last_id: u32,
    /// Streams reset lately, and by whom, newest last. A stream below
    /// `last_id` that is neither open, nor here, nor in `skipped`, ended
    /// normally on both sides (the common case, so it costs nothing).
    closed: VecDeque<(u32, Closed)>,
    /// Stream ids the client passed over, never opened: `(first, last)`.
    skipped: VecDeque<(u32, u32)>,
    /// Notes of `closed` and `skipped` at or below this id were dropped
    /// to bound them: how such a stream closed is not known.
    forgotten_below: u32,
    /// Our GOAWAY's last stream: later streams are ignored.
    goaway: Option<u32>,
    /// The first of a graceful shutdown's two GOAWAYs was sent.
    draining: bool,
    /// The client sent GOAWAY, or closed its side.
    peer_done: bool,
    /// A connection error was sent; the connection ends once it is written.
    closing: bool,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    recv_window: i64,
    recv_credit: i64,
    continuation: Option<Continuation>,
    /// Whether the next header block is the connection's first.
    first_block: bool,
    /// The header block being decoded; its buffers are kept.
    head: RawHead,
    max_header_list: usize,
    /// The most regular fields a head or trailer section may have.
    max_fields: usize,
    /// Response DATA bytes put out so far: a stalled connection is one
    /// where this stops moving while something waits to go.
    data_out: u64,
    /// A response body has bytes the flow-control windows hold back.
    window_shut: bool,
    /// Streams served, streams the client reset before their answer, and
    /// streams reset for malformed requests: what a flood shows in.
    opened: u32,
    premature_resets: u32,
    local_resets: u32,
    /// The limits as the connection began: its request limit.
    limits: switchyard_config::Limits,
}

/// Serves an HTTP/2 connection whose first bytes (`buffered`, at least the
/// start of the preface) were read by the fast path.
pub(crate) async fn serve<S>(mut io: S, buffered: &[u8], client: Rc<ClientInfo>, proxy: Rc<Proxy>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let table = proxy.routes.snapshot();
    let (head_timeout, idle_timeout) = (table.timeouts.request_header, table.timeouts.idle);
    let max_header_list = table.limits.max_header_bytes;
    let max_fields = table.limits.max_headers;
    let limits = table.limits;
    drop(table);
    let mut input = vec![0u8; INPUT_SIZE.max(buffered.len())];
    input[..buffered.len()].copy_from_slice(buffered);
    let mut state = State {
        proxy,
        client,
        shared: Rc::new(ConnShared {
            client_may_send: Cell::new(true),
            ..ConnShared::default()
        }),
        out: Vec::with_capacity(1024),
        written: 0,
        unflushed: false,
        block: Vec::new(),
        decoder: hpack::Decoder::default(),
        streams: FxHashMap::default(),
        sending: Vec::new(),
        tasks: FuturesUnordered::new(),
        last_id: 0,
        closed: VecDeque::new(),
        skipped: VecDeque::new(),
        forgotten_below: 0,
        goaway: None,
        draining: false,
        peer_done: false,
        closing: false,
        send_window: DEFAULT_WINDOW,
        peer_initial_window: DEFAULT_WINDOW,
        peer_max_frame: MAX_FRAME,
        recv_window: CONN_WINDOW,
        recv_credit: 0,
        continuation: None,
        first_block: true,
        head: RawHead::default(),
        max_header_list,
        max_fields,
        data_out: 0,
        window_shut: false,
        opened: 0,
        limits,
        premature_resets: 0,
        local_resets: 0,
    };
    state.put_settings();
    let mut conn = Conn {
        input,
        start: 0,
        end: buffered.len(),
        preface_seen: false,
        settings_seen: false,
        read_closed: false,
        deadline: Deadline::new(head_timeout),
        phase: Phase::Preface,
        armed_for: 0,
        stall_mark: 0,
        head_timeout,
        idle_timeout,
    };
    let proxy = Rc::clone(&state.proxy);
    let mut waiting = Waiting::default();
    std::future::poll_fn(|cx| {
        if proxy.stopping.is_stopped() {
            state.go_away();
        } else {
            waiting.register(&proxy.stopping, cx.waker());
        }
        state.shared.running.set(true);
        let done = conn.poll(&mut io, &mut state, cx);
        state.shared.running.set(false);
        done
    })
    .await;
    state.shutdown();
    if !conn.read_closed {
        // A lingering close, as nginx's: the write side is shut first and
        // what the client still sends is read and dropped for a moment, so
        // closing with unread bytes does not reset the connection and lose
        // the GOAWAY on its way.
        let linger = async {
            let _ = io.shutdown().await;
            while let Ok(1..) = io.read(&mut conn.input).await {}
        };
        let _ = tokio::time::timeout(LINGER, linger).await;
    }
}

/// The socket side of a connection.
struct Conn {
    input: Vec<u8>,
    start: usize,
    end: usize,
    preface_seen: bool,
    /// The client's first frame, which must be SETTINGS, was read.
    settings_seen: bool,
    read_closed: bool,
    /// The timer of the phase the connection is in.
    deadline: Deadline,
    phase: Phase,
    /// The last stream when the idle timer was set: a stream opened and
    /// answered within one turn sets it again.
    armed_for: u32,
    /// `State::data_out` when the stall timer was last set.
    stall_mark: u64,
    head_timeout: Duration,
    idle_timeout: Duration,
}

/// What the connection's timer waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The preface, within the head timeout.
    Preface,
    /// Streams are open: no timer (each request has its own).
    Busy,
    /// Streams are open and answers wait on the client, which takes
    /// nothing (its windows shut, or its socket full): the idle timeout
    /// without any DATA going out, then the connection is closed, as
    /// nginx's `send_timeout` does.
    Stalled,
    /// A header block's CONTINUATION frames, within the head timeout.
    Head,
    /// No stream open: the idle timeout, then GOAWAY.
    Idle,
    /// A graceful shutdown's first GOAWAY and PING are out: their answer,
    /// or [`LINGER`], brings the final GOAWAY.
    Draining,
    /// The connection is ending and its last bytes are on their way: a
    /// client that does not read them is closed on after [`LINGER`].
    Closing,
}

impl Conn {
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        state: &mut State,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        {
            let mut waker = state.shared.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        loop {
            let mut progress = false;
            if !state.closing && state.backlog() < OUT_HIGH_WATER {
                match self.read_frames(io, state, cx) {
                    Ok(read) => progress |= read,
                    Err(err) => {
                        if err.code != NO_ERROR {
                            debug!(client = %state.client.peer, reason = err.reason, "HTTP/2 connection error");
                        }
                        state.fail(err);
                    }
                }
            }
            while let Poll::Ready(Some((id, answer))) = state.tasks.poll_next_unpin(cx) {
                if let Some(answer) = answer {
                    state.respond(id, answer);
                }
                progress = true;
            }
            progress |= state.pump_bodies(cx);
            state.send_continues();
            state.take_credits();
            match state.flush(io, cx) {
                // A backlog written out lets reading and bodies go on.
                Ok(drained) => progress |= drained,
                Err(_) => return Poll::Ready(()),
            }
            if state.written < state.out.len() {
                // The socket is full: wait for it (the read side still
                // reacts to its own wake-ups).
                progress = false;
            }
            let quiet = state.streams.is_empty() && state.out.is_empty() && !state.unflushed;
            if quiet
                && (state.closing || self.read_closed || state.peer_done || state.goaway.is_some())
            {
                return Poll::Ready(());
            }
            if !progress {
                break;
            }
        }
        let phase = if !self.preface_seen {
            Phase::Preface
        } else if state.closing || (state.goaway.is_some() && state.streams.is_empty()) {
            Phase::Closing
        } else if state.draining && state.goaway.is_none() {
            Phase::Draining
        } else if state.continuation.is_some() {
            Phase::Head
        } else if state.streams.is_empty() {
            Phase::Idle
        } else if state.written < state.out.len() || (state.window_shut && state.all_shut()) {
            Phase::Stalled
        } else {
            Phase::Busy
        };
        if phase != self.phase || (phase == Phase::Idle && state.last_id != self.armed_for) {
            match phase {
                Phase::Preface | Phase::Busy => {}
                Phase::Stalled => {
                    self.deadline.set(self.idle_timeout);
                    self.stall_mark = state.data_out;
                }
                Phase::Head => self.deadline.set(self.head_timeout),
                Phase::Idle => self.deadline.set(self.idle_timeout),
                Phase::Closing | Phase::Draining => self.deadline.set(LINGER),
            }
            self.phase = phase;
            self.armed_for = state.last_id;
        }
        if phase != Phase::Busy && self.deadline.poll_passed(cx) {
            match phase {
                Phase::Preface | Phase::Closing | Phase::Busy => return Poll::Ready(()),
                // DATA went out since the timer was set: not stalled for
                // that long; the clock starts again (read only then).
                Phase::Stalled if state.data_out != self.stall_mark => {
                    self.stall_mark = state.data_out;
                    self.deadline.set(self.idle_timeout);
                    let _ = self.deadline.poll_passed(cx);
                    return Poll::Pending;
                }
                Phase::Stalled => {
                    debug!(client = %state.client.peer, "HTTP/2 client took no data within the idle timeout; closing");
                    return Poll::Ready(());
                }
                Phase::Head => state.fail(conn_error(
                    PROTOCOL_ERROR,
                    "header block not finished in time",
                )),
                // Idle, no stream can be lost: one GOAWAY.
                Phase::Idle | Phase::Draining => state.go_away_now(),
            }
            // Round again, to write what that added.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Reads and handles frames until the socket has no more or the output
    /// backlog is high; whether anything happened.
    fn read_frames<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        state: &mut State,
        cx: &mut Context<'_>,
    ) -> Result<bool, ConnError> {
        let mut progress = false;
        loop {
            if !self.preface_seen {
                let have = &self.input[self.start..self.end];
                let n = have.len().min(PREFACE.len());
                if have[..n] != PREFACE[..n] {
                    return Err(conn_error(PROTOCOL_ERROR, "bad connection preface"));
                }
                if n == PREFACE.len() {
                    self.start += n;
                    self.preface_seen = true;
                }
            }
            while self.preface_seen && !state.closing {
                let have = &self.input[self.start..self.end];
                if have.len() < FRAME_HEAD {
                    break;
                }
                let len =
                    usize::from(have[0]) << 16 | usize::from(have[1]) << 8 | usize::from(have[2]);
                if len > MAX_FRAME {
                    return Err(conn_error(
                        FRAME_SIZE_ERROR,
                        "frame larger than SETTINGS_MAX_FRAME_SIZE",
                    ));
                }
                if have.len() < FRAME_HEAD + len {
                    break;
                }
                let kind = have[3];
                let flags = have[4];
                let id = u32::from_be_bytes([have[5], have[6], have[7], have[8]]) & 0x7fff_ffff;
                let payload = &have[FRAME_HEAD..FRAME_HEAD + len];
                self.start += FRAME_HEAD + len;
                if !self.settings_seen {
                    // The preface ends with the client's SETTINGS (§3.4).
                    if kind != SETTINGS || flags & ACK != 0 {
                        return Err(conn_error(PROTOCOL_ERROR, "the preface's SETTINGS missing"));
                    }
                    self.settings_seen = true;
                }
                state.on_frame(kind, flags, id, payload)?;
                progress = true;
                if state.backlog() >= OUT_HIGH_WATER {
                    return Ok(progress);
                }
            }
            if self.read_closed || state.closing {
                return Ok(progress);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.input.len() - self.end < FRAME_HEAD + MAX_FRAME {
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let mut buf = ReadBuf::new(&mut self.input[self.end..]);
            match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    progress = true;
                    if n == 0 {
                        self.read_closed = true;
                        state.peer_done = true;
                        if state.continuation.is_some() || self.start != self.end {
                            // Closed in the middle of a frame or a head.
                            state.closing = true;
                        }
                        state.reset_unfinished();
                        return Ok(progress);
                    }
                    self.end += n;
                }
                Poll::Ready(Err(_)) => {
                    self.read_closed = true;
                    state.peer_done = true;
                    state.closing = true;
                    state.reset_unfinished();
                    return Ok(true);
                }
                Poll::Pending => return Ok(progress),
            }
        }
    }
}

/// Appends a frame head.
fn put_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, id: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&id.to_be_bytes());
}

impl State {
    fn backlog(&self) -> usize {
        self.out.len() - self.written
    }

    fn put_settings(&mut self) {
        let settings: [(u16, u32); 3] = [
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
            (SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list as u32),
        ];
        put_frame_head(&mut self.out, settings.len() * 6, SETTINGS, 0, 0);
        for (id, value) in settings {
            self.out.extend_from_slice(&id.to_be_bytes());
            self.out.extend_from_slice(&value.to_be_bytes());
        }
        self.put_window_update(0, (CONN_WINDOW - DEFAULT_WINDOW) as u32);
    }

    fn put_window_update(&mut self, id: u32, increment: u32) {
        put_frame_head(&mut self.out, 4, WINDOW_UPDATE, 0, id);
        self.out.extend_from_slice(&increment.to_be_bytes());
    }

    fn put_rst(&mut self, id: u32, code: u32) {
        put_frame_head(&mut self.out, 4, RST_STREAM, 0, id);
        self.out.extend_from_slice(&code.to_be_bytes());
        self.remember(id, Closed::WeReset);
    }

    /// Whether every open stream waits on the client's windows (none on
    /// its upstream, or on its own request): only then is a connection
    /// whose windows stay shut stalled as a whole.
    fn all_shut(&self) -> bool {
        self.streams.values().all(|stream| {
            matches!(
                stream.sending,
                Sending::Body {
                    pending: Some(_),
                    ..
                }
            )
        })
    }

    /// Whether the client cannot have opened stream `id`: above the last
    /// it opened, or even (ours, and we open none).
    fn is_idle(&self, id: u32) -> bool {
        id > self.last_id || id.is_multiple_of(2)
    }

    /// Notes that stream `id` was reset, forgetting the oldest such note.
    fn remember(&mut self, id: u32, how: Closed) {
        if self.closed.len() == CLOSED_KEPT {
            if let Some((old, _)) = self.closed.pop_front() {
                self.forgotten_below = self.forgotten_below.max(old);
            }
        }
        self.closed.push_back((id, how));
    }

    /// Notes the ids a new stream `id` passed over, if it did.
    fn note_skipped(&mut self, id: u32) {
        let first = self.last_id + if self.last_id == 0 { 1 } else { 2 };
        if id > first {
            if self.skipped.len() == CLOSED_KEPT {
                if let Some((_, last)) = self.skipped.pop_front() {
                    self.forgotten_below = self.forgotten_below.max(last);
                }
            }
            self.skipped.push_back((first, id - 2));
        }
    }

    /// How a stream that is neither open nor idle closed.
    fn closed_how(&self, id: u32) -> Closed {
        if let Some(&(_, how)) = self.closed.iter().rev().find(|(closed, _)| *closed == id) {
            return how;
        }
        if self
            .skipped
            .iter()
            .any(|&(first, last)| (first..=last).contains(&id))
        {
            return Closed::NeverOpened;
        }
        match id <= self.forgotten_below {
            true => Closed::Forgotten,
            false => Closed::Ended,
        }
    }

    fn put_goaway(&mut self, code: u32, reason: &str) {
        // A second GOAWAY may not raise the first's last stream.
        let last = self.goaway.unwrap_or(self.last_id);
        self.put_goaway_at(last, code, reason);
    }

    fn put_goaway_at(&mut self, last: u32, code: u32, reason: &str) {
        put_frame_head(&mut self.out, 8 + reason.len(), GOAWAY, 0, 0);
        self.out.extend_from_slice(&last.to_be_bytes());
        self.out.extend_from_slice(&code.to_be_bytes());
        self.out.extend_from_slice(reason.as_bytes());
    }

    /// Graceful end in two steps (RFC 9113 §6.8): a GOAWAY that refuses no
    /// stream yet and a PING; streams the client opens before it reads them
    /// are still served. The PING's answer, or [`LINGER`] without one,
    /// brings the final GOAWAY ([`go_away_now`](Self::go_away_now)).
    fn go_away(&mut self) {
        if self.goaway.is_some() || self.closing || self.draining {
            return;
        }
        self.put_goaway_at(MAX_STREAM_ID, NO_ERROR, "");
        put_frame_head(&mut self.out, 8, PING, 0, 0);
        self.out.extend_from_slice(DRAIN_PING);
        self.draining = true;
    }

    /// No new streams from now on; the open ones finish.
    fn go_away_now(&mut self) {
        if self.goaway.is_none() && !self.closing {
            self.put_goaway(NO_ERROR, "");
            self.goaway = Some(self.last_id);
        }
    }

    /// A connection error: GOAWAY, and every stream ends.
    fn fail(&mut self, err: ConnError) {
        if !self.closing {
            self.put_goaway(err.code, err.reason);
            self.closing = true;
        }
        self.shutdown();
    }

    /// Ends every stream: handlers stop, readers see a reset.
    fn shutdown(&mut self) {
        for (_, stream) in self.streams.drain() {
            stream.shared.recv.borrow_mut().reset = true;
            stream.shared.wake_reader();
        }
        self.tasks = FuturesUnordered::new();
        self.sending.clear();
    }

    /// The client closed its side: bodies it did not finish never will.
    fn reset_unfinished(&mut self) {
        for stream in self.streams.values_mut() {
            if stream.recv_open {
                stream.recv_open = false;
                stream.shared.recv.borrow_mut().reset = true;
                stream.shared.wake_reader();
            }
        }
    }

    /// Resets a stream (a stream error, or one we end early) and forgets it.
    fn reset(&mut self, id: u32, code: u32) {
        self.put_rst(id, code);
        self.forget(id);
    }

    /// Forgets a stream; a handler still running is stopped.
    fn forget(&mut self, id: u32) {
        if let Some(stream) = self.streams.remove(&id) {
            let shared = &stream.shared;
            shared.cancelled.set(true);
            let handler = shared.handler.borrow_mut().take();
            if let (Sending::Waiting, Some(waker)) = (&stream.sending, handler) {
                waker.wake();
            }
            // What it holds unread is granted back now, not when (or if)
            // its reader gets to it: the reader sees the reset first.
            let mut recv = shared.recv.borrow_mut();
            let unread = recv.clear();
            let cut = stream.recv_open || unread > 0;
            recv.reset |= cut;
            drop(recv);
            if cut {
                shared.wake_reader();
            }
            if unread > 0 {
                self.credit(id, unread as i64);
            }
        }
    }

    fn on_frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if let Some(continuation) = &self.continuation {
            if kind != CONTINUATION || id != continuation.id {
                return Err(conn_error(PROTOCOL_ERROR, "expected CONTINUATION"));
            }
        }
        match kind {
            DATA => self.on_data(flags, id, payload),
            HEADERS => self.on_headers(flags, id, payload),
            CONTINUATION => {
                let Some(continuation) = &mut self.continuation else {
                    return Err(conn_error(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
                };
                continuation.block.extend_from_slice(payload);
                if continuation.block.len() > self.max_header_list + MAX_FRAME {
                    return Err(conn_error(COMPRESSION_ERROR, "header block too large"));
                }
                if payload.is_empty() {
                    continuation.empty_frames += 1;
                    if continuation.empty_frames > MAX_EMPTY_CONTINUATIONS {
                        return Err(conn_error(ENHANCE_YOUR_CALM, "empty CONTINUATION frames"));
                    }
                }
                if flags & END_HEADERS != 0 {
                    let continuation = self.continuation.take().expect("checked above");
                    self.on_block(
                        continuation.id,
                        continuation.end_stream,
                        &continuation.block,
                        continuation.self_dependent,
                    )?;
                }
                Ok(())
            }
            PRIORITY => {
                if id == 0 {
                    return Err(conn_error(PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                // Stream errors (RFC 9113 §6.3, §5.3.1); an idle stream
                // cannot be reset (§6.4), so there they are the
                // connection's (§5.4.1), as nginx has them.
                let error = match payload {
                    [a, b, c, d, _] => {
                        let depends = u32::from_be_bytes([*a, *b, *c, *d]) & 0x7fff_ffff;
                        (depends == id)
                            .then_some((PROTOCOL_ERROR, "a stream that depends on itself"))
                    }
                    _ => Some((FRAME_SIZE_ERROR, "PRIORITY of the wrong size")),
                };
                match error {
                    Some((code, reason)) if id > self.last_id => Err(conn_error(code, reason)),
                    // An open stream is reset; a closed one (or an id
                    // never opened) has nothing left to reset.
                    Some((code, _)) if self.streams.contains_key(&id) => {
                        self.reset(id, code);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            RST_STREAM => {
                if id == 0 {
                    return Err(conn_error(PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                if payload.len() != 4 {
                    return Err(conn_error(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size"));
                }
                if self.is_idle(id) {
                    return Err(conn_error(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                let unanswered = self
                    .streams
                    .get(&id)
                    .is_some_and(|s| matches!(s.sending, Sending::Waiting));
                if self.streams.contains_key(&id) {
                    self.remember(id, Closed::TheyReset);
                }
                self.forget(id);
                self.sending.retain(|s| *s != id);
                if unanswered {
                    // Each such reset may have cost an upstream request; a
                    // client that mostly opens and resets streams is cut off.
                    self.premature_resets += 1;
                    if self.premature_resets > PREMATURE_RESETS_FREE
                        && self.premature_resets * 2 > self.opened
                    {
                        return Err(conn_error(
                            ENHANCE_YOUR_CALM,
                            "too many streams reset before their answer",
                        ));
                    }
                }
                Ok(())
            }
            SETTINGS => self.on_settings(flags, id, payload),
            PUSH_PROMISE => Err(conn_error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            PING => {
                if id != 0 {
                    return Err(conn_error(PROTOCOL_ERROR, "PING on a stream"));
                }
                if payload.len() != 8 {
                    return Err(conn_error(FRAME_SIZE_ERROR, "PING of the wrong size"));
                }
                if flags & ACK == 0 {
                    put_frame_head(&mut self.out, 8, PING, ACK, 0);
                    self.out.extend_from_slice(payload);
                } else if self.draining && payload == DRAIN_PING {
                    // The client has read the first GOAWAY: what it opened
                    // before it did has arrived.
                    self.go_away_now();
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(conn_error(PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(conn_error(FRAME_SIZE_ERROR, "GOAWAY too short"));
                }
                self.peer_done = true;
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(id, payload),
            // Unknown frame types are ignored (RFC 9113 §5.5).
            _ => Ok(()),
        }
    }

    /// Strips the padding of a DATA or HEADERS payload.
    fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnError> {
        if flags & PADDED == 0 {
            return Ok(payload);
        }
        let Some((&pad, rest)) = payload.split_first() else {
            return Err(conn_error(
                FRAME_SIZE_ERROR,
                "padded frame without its pad length",
            ));
        };
        if usize::from(pad) > rest.len() {
            return Err(conn_error(PROTOCOL_ERROR, "padding longer than the frame"));
        }
        Ok(&rest[..rest.len() - usize::from(pad)])
    }

    fn on_headers(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_error(PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut block = Self::unpad(flags, payload)?;
        let mut self_dependent = false;
        if flags & PRIORITY_FLAG != 0 {
            let pad_length = usize::from(flags & PADDED != 0);
            if payload.len() < pad_length + 5 {
                return Err(conn_error(
                    FRAME_SIZE_ERROR,
                    "HEADERS too short for its priority",
                ));
            }
            if block.len() < 5 {
                // RFC 9113 §6.2: padding longer than what follows it.
                return Err(conn_error(
                    PROTOCOL_ERROR,
                    "padding over the HEADERS' priority",
                ));
            }
            let depends =
                u32::from_be_bytes([block[0], block[1], block[2], block[3]]) & 0x7fff_ffff;
            self_dependent = depends == id;
            block = &block[5..];
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS == 0 {
            self.continuation = Some(Continuation {
                id,
                end_stream,
                block: block.to_vec(),
                self_dependent,
                empty_frames: 0,
            });
            return Ok(());
        }
        self.on_block(id, end_stream, block, self_dependent)
    }

    /// A whole header block: a new request, or a request's trailers.
    fn on_block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        self_dependent: bool,
    ) -> Result<(), ConnError> {
        let trailers = self.streams.contains_key(&id);
        let head = &mut self.head;
        head.clear(self.max_header_list, self.max_fields);
        self.decoder
            .decode(block, |name, value, good| {
                head.field(name, value, trailers, good)
            })
            .map_err(|err| conn_error(COMPRESSION_ERROR, err.0))?;
        if trailers {
            if self_dependent {
                self.reset(id, PROTOCOL_ERROR);
                return Ok(());
            }
            return self.on_trailers(id, end_stream);
        }
        if id.is_multiple_of(2) {
            return Err(conn_error(PROTOCOL_ERROR, "even stream id from a client"));
        }
        if id <= self.last_id {
            // Not a new stream (RFC 9113 §5.1, §5.1.1); its block was
            // decoded above, so the table stays right.
            return match self.closed_how(id) {
                Closed::WeReset => Ok(()),
                Closed::Ended => Err(conn_error(
                    STREAM_CLOSED,
                    "HEADERS on a stream both sides ended",
                )),
                Closed::TheyReset | Closed::Forgotten => {
                    self.put_rst(id, STREAM_CLOSED);
                    Ok(())
                }
                Closed::NeverOpened => Err(conn_error(
                    PROTOCOL_ERROR,
                    "a new stream's id is not above the last one's",
                )),
            };
        }
        self.note_skipped(id);
        self.last_id = id;
        if self.goaway.is_some() {
            // After our GOAWAY: not served, and the client knows it.
            self.remember(id, Closed::WeReset);
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS as usize {
            self.put_rst(id, REFUSED_STREAM);
            return Ok(());
        }
        let head = &mut self.head;
        if head.is_over_limit() {
            let peer = self.client.peer;
            crate::access_log::refused_with("HTTP/2", peer, 431, 0, &"request head over the limit");
            self.answer_locally(id, end_stream, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            return Ok(());
        }
        let checked = match self_dependent {
            true => Err("a stream that depends on itself"),
            false => head.check(end_stream),
        };
        if let Err(reason) = checked {
            return self.refuse_malformed(id, reason);
        }
        self.opened += 1;
        let shared = Rc::new(StreamShared {
            id,
            length: head.length,
            recv: RefCell::new(Recv {
                ended: end_stream,
                ..Recv::default()
            }),
            cancelled: Cell::new(false),
            handler: RefCell::new(None),
            client_may_send: Cell::new(true),
            expects_continue: Cell::new(head.expects_continue && !end_stream),
            conn: Rc::clone(&self.shared),
        });
        let head = &self.head;
        let head_request = head.is_head();
        let (proxy, client) = (Rc::clone(&self.proxy), Rc::clone(&self.client));
        let prepared = match end_stream {
            true => request::prepare(&proxy, &client, head),
            false => None,
        };
        let handler: Handler = match prepared {
            Some(prepared) => Box::pin(request::send(proxy, client, prepared)),
            None => {
                let body = match end_stream {
                    true => ClientBody::Empty,
                    false => ClientBody::H2(RecvBody {
                        shared: Rc::clone(&shared),
                        idle: proxy.routes.timeouts().idle,
                        timer: None,
                        waiting: false,
                        held_back: false,
                    }),
                };
                match head.request(body) {
                    Ok(request) => Box::pin(request::handle(proxy, client, request)),
                    Err(reason) => return self.refuse_malformed(id, reason),
                }
            }
        };
        self.tasks.push(StreamTask {
            shared: Rc::clone(&shared),
            handler,
        });
        self.streams.insert(
            id,
            Stream {
                shared,
                recv_open: !end_stream,
                recv_window: STREAM_WINDOW,
                recv_credit: 0,
                received: 0,
                send_window: self.peer_initial_window,
                sending: Sending::Waiting,
                head_request,
            },
        );
        if self.limits.is_last_request(u64::from(self.opened)) {
            // nginx's `keepalive_requests` on HTTP/2: this stream is the
            // last served, and the GOAWAY says so at once.
            self.go_away_now();
        }
        Ok(())
    }

    /// Resets the stream of a malformed request (RFC 9113 §8.1.1); a
    /// client that sends many is cut off.
    fn refuse_malformed(&mut self, id: u32, reason: &'static str) -> Result<(), ConnError> {
        debug!(client = %self.client.peer, reason, "malformed HTTP/2 request");
        // Logged as nginx logs it: a 400 (the client sees the reset).
        let why = format_args!("malformed request, stream reset: {reason}");
        crate::access_log::refused_with("HTTP/2", self.client.peer, 400, 0, &why);
        self.put_rst(id, PROTOCOL_ERROR);
        self.local_resets += 1;
        if self.local_resets > MAX_LOCAL_RESETS {
            return Err(conn_error(ENHANCE_YOUR_CALM, "too many malformed requests"));
        }
        Ok(())
    }

    /// Trailers, decoded into `self.head`.
    fn on_trailers(&mut self, id: u32, end_stream: bool) -> Result<(), ConnError> {
        let stream = self.streams.get_mut(&id).expect("checked by the caller");
        if !stream.recv_open {
            self.reset(id, STREAM_CLOSED);
            return Ok(());
        }
        if !end_stream {
            // Malformed (RFC 9113 §8.1): a stream error.
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        let length = stream.shared.length;
        let trailers = match self.head.trailers() {
            Ok(trailers) if length.is_none_or(|n| n == stream.received) => trailers,
            _ => {
                self.reset(id, PROTOCOL_ERROR);
                return Ok(());
            }
        };
        stream.recv_open = false;
        let mut recv = stream.shared.recv.borrow_mut();
        recv.trailers = Some(trailers);
        recv.ended = true;
        drop(recv);
        stream.shared.wake_reader();
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_error(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let len = payload.len() as i64;
        if len > self.recv_window {
            return Err(conn_error(
                FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        self.recv_window -= len;
        self.shared.client_may_send.set(self.recv_window > 0);
        let data = Self::unpad(flags, payload)?;
        let Some(stream) = self.streams.get_mut(&id) else {
            if self.is_idle(id) {
                return Err(conn_error(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            self.credit(id, len);
            // A closed stream (RFC 9113 §5.1).
            return match self.closed_how(id) {
                // We reset it, or it closed too long ago to know: the
                // client may not know yet, and the frame is ignored.
                Closed::WeReset | Closed::Forgotten => Ok(()),
                Closed::TheyReset => {
                    self.put_rst(id, STREAM_CLOSED);
                    Ok(())
                }
                Closed::Ended => Err(conn_error(
                    STREAM_CLOSED,
                    "DATA on a stream both sides ended",
                )),
                Closed::NeverOpened => {
                    Err(conn_error(PROTOCOL_ERROR, "DATA on a stream never opened"))
                }
            };
        };
        if !stream.recv_open || len > stream.recv_window {
            let code = match stream.recv_open {
                true => FLOW_CONTROL_ERROR,
                false => STREAM_CLOSED,
            };
            self.credit(id, len);
            self.reset(id, code);
            return Ok(());
        }
        stream.recv_window -= len;
        stream.shared.client_may_send.set(stream.recv_window > 0);
        stream.received += data.len() as u64;
        let end = flags & END_STREAM != 0;
        let length = stream.shared.length;
        if length.is_some_and(|n| stream.received > n || (end && stream.received != n)) {
            self.credit(id, len);
            self.reset(id, PROTOCOL_ERROR);
            return Ok(());
        }
        let mut recv = stream.shared.recv.borrow_mut();
        // Padding is granted back at once; so is all of it when no reader
        // will take it.
        let mut unread = len - data.len() as i64;
        if recv.dropped {
            unread = len;
        } else if !data.is_empty() {
            recv.push(data);
        }
        if end {
            recv.ended = true;
            stream.recv_open = false;
        }
        drop(recv);
        stream.shared.wake_reader();
        if unread > 0 {
            self.credit(id, unread);
        }
        Ok(())
    }

    /// Counts `len` received bytes of stream `id` as taken, to be granted
    /// back like what a reader takes.
    fn credit(&mut self, id: u32, len: i64) {
        self.shared.credits.borrow_mut().push((id, len as u32));
    }

    fn on_settings(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(conn_error(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(conn_error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_error(FRAME_SIZE_ERROR, "SETTINGS of the wrong size"));
        }
        for setting in payload.chunks_exact(6) {
            let key = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match key {
                SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_error(
                        PROTOCOL_ERROR,
                        "SETTINGS_ENABLE_PUSH not 0 or 1",
                    ));
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(conn_error(
                            FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(conn_error(
                                FLOW_CONTROL_ERROR,
                                "a stream window over 2^31-1",
                            ));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_error(
                            PROTOCOL_ERROR,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // The header table size needs nothing: our blocks use no
                // dynamic table. The others do not concern a server.
                _ => {}
            }
        }
        put_frame_head(&mut self.out, 0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(conn_error(
                FRAME_SIZE_ERROR,
                "WINDOW_UPDATE of the wrong size",
            ));
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if id == 0 {
            if increment == 0 {
                return Err(conn_error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > MAX_WINDOW {
                return Err(conn_error(
                    FLOW_CONTROL_ERROR,
                    "connection window over 2^31-1",
                ));
            }
            return Ok(());
        }
        if self.is_idle(id) {
            return Err(conn_error(
                PROTOCOL_ERROR,
                "WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if increment == 0 {
            self.reset(id, PROTOCOL_ERROR);
            self.sending.retain(|s| *s != id);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > MAX_WINDOW {
            self.reset(id, FLOW_CONTROL_ERROR);
            self.sending.retain(|s| *s != id);
        }
        Ok(())
    }

    /// Answers a request without forwarding it.
    fn answer_locally(&mut self, id: u32, end_stream: bool, status: StatusCode) {
        self.block.clear();
        hpack::put_status(&mut self.block, status.as_u16());
        self.prefix_first_block();
        self.put_block(id, self.block.len(), true);
        if !end_stream {
            self.put_rst(id, NO_ERROR);
        }
    }

    /// Starts the connection's first header block by setting our table to
    /// size 0 (see `hpack`); returns the bytes added at the front of
    /// `self.block`.
    fn prefix_first_block(&mut self) -> usize {
        if !self.first_block {
            return 0;
        }
        self.first_block = false;
        self.block.insert(0, hpack::TABLE_SIZE_ZERO);
        1
    }

    /// Frames the first `len` bytes of `self.block` as HEADERS (and
    /// CONTINUATION) on stream `id`.
    fn put_block(&mut self, id: u32, len: usize, end_stream: bool) {
        let block = std::mem::take(&mut self.block);
        let mut chunks = block[..len].chunks(self.peer_max_frame).peekable();
        let mut kind = HEADERS;
        let mut flags = if end_stream { END_STREAM } else { 0 };
        if len == 0 {
            put_frame_head(&mut self.out, 0, HEADERS, flags | END_HEADERS, id);
        }
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            put_frame_head(&mut self.out, chunk.len(), kind, flags, id);
            self.out.extend_from_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
        self.block = block;
    }

    /// A response's fields; `no_length` drops a `content-length`, which a
    /// 1xx or 204 must not have (RFC 9110 §8.6).
    fn put_fields(&mut self, headers: &HeaderMap, no_length: bool) {
        for (name, value) in headers {
            // The proxy strips them; this makes sure. `te` is a request's
            // field only (RFC 9113 §8.2.2).
            let name = name.as_str().as_bytes();
            let dropped = no_length && name == b"content-length";
            if !is_connection_specific(name) && name != b"te" && !dropped {
                hpack::put_field(&mut self.block, name, value.as_bytes());
            }
        }
    }

    /// The handler's answer: its head goes out, its body follows.
    fn respond(&mut self, id: u32, answer: Answer) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        let head_request = stream.head_request;
        // Where the head ends in `self.block`: a short body may follow it.
        let mut head_len = None;
        let body = match answer {
            Answer::Response(response) => {
                let (parts, body) = response.into_parts();
                self.block.clear();
                let status = parts.status.as_u16();
                hpack::put_status(&mut self.block, status);
                self.put_fields(&parts.headers, status < 200 || status == 204);
                // As hyper's server did: a `date`, and the length of a
                // body whose length is known.
                if !parts.headers.contains_key(http::header::DATE) {
                    with_date(|date| hpack::put_field(&mut self.block, b"date", date));
                }
                // Never on an answer that has no content: a 1xx, 204 or 304
                // (RFC 9110 §8.6).
                let bodiless = status < 200 || status == 204 || status == 304;
                if let (false, false, Some(len)) = (
                    head_request || bodiless,
                    parts.headers.contains_key(http::header::CONTENT_LENGTH),
                    body.size_hint().exact(),
                ) {
                    let mut digits = Vec::with_capacity(20);
                    crate::fast::put_number(&mut digits, len);
                    hpack::put_field(&mut self.block, b"content-length", &digits);
                }
                body
            }
            Answer::Encoded(encoded, body) => {
                // The block came from the worker's spares; the scratch it
                // replaces goes there.
                let scratch = std::mem::replace(&mut self.block, encoded.bytes);
                if scratch.capacity() > 0 {
                    self.proxy.raw.head_buffers.give(scratch);
                }
                head_len = Some(encoded.head);
                body
            }
        };
        let head_len = head_len.unwrap_or(self.block.len()) + self.prefix_first_block();
        let inline = self.block.len() - head_len;
        let end_stream = head_request || (inline == 0 && body.is_end_stream());
        self.put_block(id, head_len, end_stream);
        if end_stream {
            self.finish(id);
            return;
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let mut pending = None;
        if inline > 0 {
            // The whole body is here: sent at once when the windows allow,
            // as the body's first chunk when they do not.
            let window = stream.send_window.min(self.send_window);
            if inline as i64 <= window && inline <= self.peer_max_frame {
                put_frame_head(&mut self.out, inline, DATA, END_STREAM, id);
                self.out.extend_from_slice(&self.block[head_len..]);
                stream.send_window -= inline as i64;
                self.send_window -= inline as i64;
                self.finish(id);
                return;
            }
            pending = Some(Bytes::copy_from_slice(&self.block[head_len..]));
        }
        stream.sending = Sending::Body { body, pending };
        self.sending.push(id);
    }

    /// The response is complete: a request body still coming is not
    /// needed (RFC 9113 §8.1), and the stream is done.
    fn finish(&mut self, id: u32) {
        let open = self.streams.get(&id).is_some_and(|s| s.recv_open);
        if open {
            self.put_rst(id, NO_ERROR);
        }
        self.forget(id);
    }

    /// Sends what response bodies have, within the windows, a frame per
    /// stream in turn so that one large body does not hold the others
    /// back; whether anything was sent.
    fn pump_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        self.window_shut = false;
        loop {
            let mut moved = false;
            let mut i = 0;
            while i < self.sending.len() {
                if self.backlog() >= OUT_HIGH_WATER {
                    return progress;
                }
                let id = self.sending[i];
                match self.pump_one(id, cx) {
                    Pumped::Nothing => i += 1,
                    Pumped::Sent => {
                        moved = true;
                        i += 1;
                    }
                    Pumped::Ended(end) => {
                        moved = true;
                        self.sending.swap_remove(i);
                        match end {
                            Some(End::Sent) => self.finish(id),
                            Some(End::Trailers(trailers)) => {
                                self.block.clear();
                                self.put_fields(&trailers, false);
                                self.put_block(id, self.block.len(), true);
                                self.finish(id);
                            }
                            Some(End::Failed) => self.reset(id, INTERNAL_ERROR),
                            None => {}
                        }
                    }
                }
            }
            progress |= moved;
            if !moved {
                return progress;
            }
        }
    }

    /// One step of stream `id`'s body: a DATA frame sent, or the body
    /// polled once for its next frame.
    fn pump_one(&mut self, id: u32, cx: &mut Context<'_>) -> Pumped {
        let Some(stream) = self.streams.get_mut(&id) else {
            return Pumped::Ended(None);
        };
        let Sending::Body { body, pending } = &mut stream.sending else {
            return Pumped::Nothing;
        };
        if pending.is_none() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => *pending = Some(data),
                    Ok(_) => return Pumped::Sent,
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return Pumped::Ended(Some(End::Trailers(trailers)));
                    }
                },
                Poll::Ready(None) => {
                    put_frame_head(&mut self.out, 0, DATA, END_STREAM, id);
                    return Pumped::Ended(Some(End::Sent));
                }
                Poll::Ready(Some(Err(err))) => {
                    debug!(client = %self.client.peer, error = %err, "response body failed; resetting the stream");
                    return Pumped::Ended(Some(End::Failed));
                }
                Poll::Pending => return Pumped::Nothing,
            }
        }
        let Some(chunk) = pending else {
            return Pumped::Nothing;
        };
        let n = chunk
            .len()
            .min(stream.send_window.max(0) as usize)
            .min(self.send_window.max(0) as usize)
            .min(self.peer_max_frame);
        if n == 0 {
            self.window_shut = true;
            return Pumped::Nothing;
        }
        self.data_out += n as u64;
        let last = n == chunk.len() && body.is_end_stream();
        put_frame_head(
            &mut self.out,
            n,
            DATA,
            if last { END_STREAM } else { 0 },
            id,
        );
        self.out.extend_from_slice(&chunk[..n]);
        stream.send_window -= n as i64;
        self.send_window -= n as i64;
        chunk.advance(n);
        if chunk.is_empty() {
            *pending = None;
        }
        match last {
            true => Pumped::Ended(Some(End::Sent)),
            false => Pumped::Sent,
        }
    }

    /// Grants back what readers took, once half a window is taken.
    /// A `100 Continue` to each stream whose reader asked for one, unless
    /// its answer went first.
    fn send_continues(&mut self) {
        if self.shared.continues.borrow().is_empty() {
            return;
        }
        let ids = std::mem::take(&mut *self.shared.continues.borrow_mut());
        for &id in &ids {
            let waiting = self.streams.get(&id).is_some_and(|stream| {
                stream.recv_open && matches!(stream.sending, Sending::Waiting)
            });
            if waiting {
                self.block.clear();
                hpack::put_status(&mut self.block, 100);
                let len = self.block.len() + self.prefix_first_block();
                self.put_block(id, len, false);
            }
        }
    }

    fn take_credits(&mut self) {
        let mut credits = self.shared.credits.take();
        for (id, len) in credits.drain(..) {
            let len = i64::from(len);
            self.recv_credit += len;
            let Some(stream) = self.streams.get_mut(&id) else {
                continue;
            };
            stream.recv_credit += len;
            if stream.recv_open && stream.recv_credit >= STREAM_WINDOW / 2 {
                let increment = stream.recv_credit;
                stream.recv_window += increment;
                stream.recv_credit = 0;
                stream.shared.client_may_send.set(true);
                self.put_window_update(id, increment as u32);
            }
        }
        // The list's room is kept for the next turn.
        let mut list = self.shared.credits.borrow_mut();
        if list.is_empty() {
            *list = credits;
        }
        drop(list);
        if self.recv_credit >= CONN_WINDOW / 2 {
            self.put_window_update(0, self.recv_credit as u32);
            self.recv_window += self.recv_credit;
            self.recv_credit = 0;
            self.shared.client_may_send.set(self.recv_window > 0);
        }
    }

    /// Writes what is buffered; whether a backlog was written out. An
    /// error ends the connection.
    fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> std::io::Result<bool> {
        // Reading and bodies pause at the high-water mark: getting under it
        // is progress, or they would wait for a wake-up that never comes.
        let paused = self.backlog() >= OUT_HIGH_WATER;
        while self.written < self.out.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => return Ok(paused && self.backlog() < OUT_HIGH_WATER),
            }
        }
        if !self.out.is_empty() {
            self.out.clear();
            self.written = 0;
            if self.out.capacity() > 4 * OUT_HIGH_WATER {
                self.out = Vec::with_capacity(1024);
            }
            self.unflushed = true;
        }
        // TLS may hold written bytes until flushed.
        if self.unflushed {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => {}
            }
        }
        Ok(paused)
    }
}
