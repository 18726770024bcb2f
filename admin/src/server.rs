//! The admin listener: its own thread and runtime, so the control plane
//! never competes with the data plane's workers for a scheduler.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

use switchyard_proxy::tls::TlsTerminator;

use crate::api::AdminApi;
use crate::error::AdminError;

/// A client that connects and does not finish its handshake, or a request
/// head, within this is closed.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A first head not ended within this many bytes is left to hyper, which
/// refuses it (431) past [`HEAD_LIMIT`].
const FIRST_HEAD_LIMIT: usize = 16 * 1024;

/// hyper's read buffer on an admin connection: a head not whole once the
/// buffer holds this much (one read may take it a little past) is refused
/// (431), as is one with more than hyper's 100 fields.
const HEAD_LIMIT: usize = 64 * 1024;

/// [`HEAD_LIMIT`] and hyper's field count, as a refusal states them.
const HEAD_LIMITS: &str = "64 KiB, 100 fields";

/// Field lines a first head is parsed with here; one with more is left to
/// hyper.
const FIRST_HEAD_FIELDS: usize = 100;

/// The pause after a failed accept (out of file descriptors).
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds `addr` and serves `api` on a new thread; returns the bound address.
pub fn start(addr: SocketAddr, api: Arc<AdminApi>) -> Result<SocketAddr, AdminError> {
    start_with_tls(addr, api, None)
}

/// As [`start`], over TLS when `tls` is given (whose server config may
/// require client certificates).
pub fn start_with_tls(
    addr: SocketAddr,
    api: Arc<AdminApi>,
    tls: Option<Arc<TlsTerminator>>,
) -> Result<SocketAddr, AdminError> {
    let storage = |source| AdminError::Storage {
        what: "binding the admin listener",
        path: addr.to_string().into(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(storage)?;
    listener.set_nonblocking(true).map_err(storage)?;
    let bound = listener.local_addr().map_err(storage)?;
    // Set before the thread starts, so a caller's own gate set later wins.
    api.plane()
        .set_gate(Arc::clone(api.board()) as Arc<dyn crate::control::StepGate>);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(storage)?;
    std::thread::Builder::new()
        .name("switchyard-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                api.plane().spawn_driver();
                api.plane().spawn_resolver();
                crate::evaluator::spawn(Arc::clone(api.plane()), Arc::clone(api.board()));
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::error!(error = %err, "admin listener failed");
                        return;
                    }
                };
                loop {
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            // Out of file descriptors, most likely: the
                            // error repeats until one is closed, so wait
                            // rather than spin.
                            tracing::warn!(error = %err, "admin accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let api = Arc::clone(&api);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let Some(tls) = tls else {
                            serve(stream, api).await;
                            return;
                        };
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => serve(stream, api).await,
                            Ok(Err(err)) => {
                                tracing::debug!(error = %err, "admin TLS handshake failed")
                            }
                            Err(_) => tracing::debug!("admin TLS handshake timed out"),
                        }
                    });
                }
            })
        })
        .map_err(storage)?;
    tracing::info!(address = %bound, "admin API listening");
    Ok(bound)
}

/// Serves one admin connection. Its first head is read and checked here:
/// bytes that are not an HTTP/1.1 request get a JSON 400 that says what is
/// wrong. Later heads are hyper's; [`AdminIo`] puts a JSON answer in place
/// of the bare one hyper writes for a head it cannot parse (it has no hook
/// for its parse errors).
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut stream: S,
    api: Arc<AdminApi>,
) {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, first_head(&mut stream)).await;
    let prefix = match first {
        Ok(FirstHead::Good(prefix)) => prefix,
        Ok(FirstHead::Refused(reason)) => {
            tracing::debug!(reason = %reason, "admin request refused");
            let answer = refusal_answer(&AdminError::MalformedRequest { reason });
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                stream.write_all(&answer).await?;
                stream.shutdown().await
            })
            .await;
            return;
        }
        Ok(FirstHead::Gone) | Err(_) => return,
    };
    let service = service_fn(move |request| Arc::clone(&api).handle(request));
    // A head (the next on a kept-alive connection) must come within the
    // handshake's time too: a slow or idle client is closed. A control
    // plane's heads are small: one over `HEAD_LIMIT` is refused (431)
    // before it can hold more of the admin thread's memory.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(HEAD_LIMIT);
    let stream = TokioIo::new(AdminIo {
        recent: prefix.clone(),
        prefix,
        stream,
        answered: false,
        replacing: None,
    });
    let _ = http.serve_connection(stream, service).await;
}

/// A refusal's whole answer, which ends the connection.
fn refusal_answer(error: &AdminError) -> Vec<u8> {
    let body = error.body();
    let status = error.status();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// How a connection's first head came.
enum FirstHead {
    /// Well-formed, or for hyper to judge: the bytes read so far.
    Good(BytesMut),
    /// Not an HTTP/1.1 request head, and why.
    Refused(String),
    /// The client left first.
    Gone,
}

async fn first_head<S: AsyncRead + Unpin>(stream: &mut S) -> FirstHead {
    let mut buffer = BytesMut::with_capacity(4096);
    loop {
        let before = buffer.len();
        match stream.read_buf(&mut buffer).await {
            Ok(n) if n > 0 => {}
            _ => return FirstHead::Gone,
        }
        // Parsed again only when a line ended (or at the limit): a head
        // that comes a byte at a time is not parsed once per byte.
        let line_ended = memchr::memchr(b'\n', &buffer[before..]).is_some();
        if before > 0 && !line_ended && buffer.len() < FIRST_HEAD_LIMIT {
            continue;
        }
        match check_head(&buffer) {
            HeadCheck::Partial if buffer.len() < FIRST_HEAD_LIMIT => {}
            HeadCheck::Partial | HeadCheck::Fine => return FirstHead::Good(buffer),
            HeadCheck::Refused(reason) => return FirstHead::Refused(reason),
        }
    }
}

/// What the bytes that start a request head say of it.
enum HeadCheck {
    /// Whole and well-formed, or for hyper to judge (more fields than
    /// parsed here).
    Fine,
    /// Not whole yet.
    Partial,
    /// Not an HTTP/1.1 request head, or one hyper refuses, and why.
    Refused(String),
}

fn check_head(bytes: &[u8]) -> HeadCheck {
    let mut fields = [httparse::EMPTY_HEADER; FIRST_HEAD_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            // hyper refuses a target `http::Uri` does not parse.
            let target = request.path.unwrap_or_default();
            if target.parse::<http::Uri>().is_err() {
                return HeadCheck::Refused(format!("the request target {target:?} is not a URI"));
            }
            match framing(&request) {
                Ok(()) => HeadCheck::Fine,
                Err(reason) => HeadCheck::Refused(reason.to_string()),
            }
        }
        Ok(httparse::Status::Partial) => HeadCheck::Partial,
        Err(httparse::Error::TooManyHeaders) => HeadCheck::Fine,
        Err(err) => HeadCheck::Refused(refusal(bytes, err)),
    }
}

/// The body's framing fields as hyper reads them: every `Content-Length`
/// value one and the same number; `Transfer-Encoding` (not in HTTP/1.0)
/// ending in `chunked`.
fn framing(request: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let mut length = None;
    let mut coding: Option<&[u8]> = None;
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            for value in field.value.split(|&b| b == b',') {
                let value = std::str::from_utf8(value.trim_ascii()).unwrap_or_default();
                let Ok(n) = value.parse::<u64>() else {
                    return Err("Content-Length is not a number");
                };
                if length.is_some_and(|seen| seen != n) {
                    return Err("two different Content-Lengths");
                }
                length = Some(n);
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if request.version == Some(0) {
                return Err("Transfer-Encoding in an HTTP/1.0 request");
            }
            coding = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
        }
    }
    match coding {
        Some(last) if !last.eq_ignore_ascii_case(b"chunked") => {
            Err("Transfer-Encoding does not end in chunked")
        }
        _ => Ok(()),
    }
}

/// Why bytes that start a connection are not an HTTP/1.1 request.
fn refusal(bytes: &[u8], err: httparse::Error) -> String {
    if bytes.starts_with(b"PRI * HTTP/2.0") {
        return "HTTP/2 is not served on the admin listener; use HTTP/1.1".to_string();
    }
    // A TLS record: a handshake (22) of TLS 1.x.
    if bytes.len() >= 3 && bytes[0] == 22 && bytes[1] == 3 {
        return "a TLS handshake on a plaintext listener: use http://, or give the admin \
                listener a certificate"
            .to_string();
    }
    format!("not an HTTP/1.1 request head ({err})")
}

/// An admin connection's stream as hyper sees it. The first head's bytes,
/// read and checked before hyper, come first. The bytes read since hyper
/// last wrote are kept (up to [`HEAD_LIMIT`]): on a connection whose
/// client waits for each answer, they are the head hyper is reading. When
/// hyper answers a head it could not parse with its bare status
/// ([`switchyard_proxy::hyper_refusal`]; an admin answer always has a JSON
/// body, so the bytes cannot be one), a JSON answer that says why is
/// written instead, and the connection ends.
struct AdminIo<S> {
    prefix: BytesMut,
    stream: S,
    /// Bytes read since hyper last wrote.
    recent: BytesMut,
    /// hyper wrote since `recent` was filled: the next read starts anew.
    answered: bool,
    /// The JSON answer in place of hyper's bare one, and how much of it is
    /// written; what hyper writes after it is dropped.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<S> AdminIo<S> {
    /// The JSON answer for hyper's bare `status`: why, from the head read.
    fn replacement(&self, status: u16) -> Vec<u8> {
        let error = match status {
            431 => AdminError::HeadTooLarge {
                limits: HEAD_LIMITS,
            },
            414 => AdminError::UriTooLong,
            _ => AdminError::MalformedRequest {
                reason: match check_head(&self.recent) {
                    HeadCheck::Refused(reason) => reason,
                    // Pipelined behind another request, or a rule of
                    // hyper's this check does not know.
                    HeadCheck::Fine | HeadCheck::Partial => "malformed request head".to_string(),
                },
            },
        };
        tracing::debug!(error = %error, "admin request refused");
        refusal_answer(&error)
    }
}

impl<S: AsyncWrite + Unpin> AdminIo<S> {
    /// Writes the replacement; ready when it is all written.
    fn poll_replace(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = self.replacing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other.map(|result| result.map(drop)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// A write of `bytes` (all hyper is writing now): replaced if it is
    /// hyper's bare refusal, dropped after one, else none of this.
    fn poll_refusal(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            let status = switchyard_proxy::hyper_refusal(bytes)?;
            self.replacing = Some((self.replacement(status), 0));
        }
        Some(self.poll_replace(cx).map_ok(|()| bytes.len()))
    }

    fn note_write(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.answered = true;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AdminIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            // Refused here: hyper reads the end of the stream.
            std::task::ready!(this.poll_replace(cx))?;
            return Poll::Ready(Ok(()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if this.answered {
                this.answered = false;
                this.recent.clear();
            }
            let room = HEAD_LIMIT.saturating_sub(this.recent.len());
            this.recent.extend_from_slice(&read[..read.len().min(room)]);
            // hyper answers HTTP/2's preface with nothing at all (it ends
            // the connection with an error): refused here, and hyper reads
            // the end of the stream instead.
            if this.recent.starts_with(b"PRI * HTTP/2.0") {
                buf.set_filled(before);
                let reason = refusal(&this.recent, httparse::Error::Version);
                let answer = refusal_answer(&AdminError::MalformedRequest { reason });
                this.replacing = Some((answer, 0));
                std::task::ready!(this.poll_replace(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AdminIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(replaced) = this.poll_refusal(cx, buf) {
            return replaced;
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // hyper writes its bare answer as one buffer.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if first.len() == total || this.replacing.is_some() {
                if let Some(replaced) = this.poll_refusal(cx, first) {
                    return replaced.map_ok(|_| total);
                }
            }
        }
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replace(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replace(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
