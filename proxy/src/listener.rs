//! Listeners and worker threads.
//!
//! Each worker is a thread with its own single-threaded tokio runtime and
//! its own `SO_REUSEPORT` socket per listening address, so the kernel
//! spreads connections over workers, and a connection's client and upstream
//! I/O both stay on one thread. Nothing on the request path crosses threads
//! except the routing table, read through `ArcSwap`.
//!
//! Listeners can be added, removed or replaced while running
//! ([`Listeners::apply`], for config reloads): new sockets are bound first,
//! all or none, then each worker is told to accept on its new sockets and
//! stop accepting on removed ones; connections already accepted on a
//! removed listener are served to their end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::body::ClientBody;
use crate::client_io::{Answering, ClientIo, ConnPhase};
use crate::error::ForwardError;
use crate::fast;
use crate::forward::Proxy;
use crate::h2;
use crate::headers::ClientInfo;
use crate::health_check::HealthChecker;
use crate::route::Routes;
use crate::tls::TlsTerminator;

/// A listening address, with the TLS terminator of a TLS listener.
pub type Listen = (SocketAddr, Option<Arc<TlsTerminator>>);

/// hyper's HTTP/2 server hands each stream to an executor as a future of
/// its own. These run inside their connection's task ([`with_streams`]),
/// not as tasks of the worker: a task spawn per request cost about 2,300
/// instructions, and its 128-byte-aligned allocation fragmented glibc's
/// heap, so the resident set crept up under HTTP/2 load.
#[derive(Clone, Default)]
struct ConnStreams(Rc<RefCell<Vec<LocalFuture>>>);

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

impl<F> hyper::rt::Executor<F> for ConnStreams
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        self.0.borrow_mut().push(Box::pin(async move {
            future.await;
        }));
    }
}

/// Runs `connection` and the streams it hands to `streams`, in the
/// caller's task, until all of them have ended.
async fn with_streams<T>(connection: impl Future<Output = T>, streams: ConnStreams) -> T {
    let mut running: FuturesUnordered<LocalFuture> = FuturesUnordered::new();
    let mut connection = std::pin::pin!(connection);
    let mut ended = None;
    std::future::poll_fn(move |cx| loop {
        if ended.is_none() {
            if let Poll::Ready(output) = connection.as_mut().poll(cx) {
                ended = Some(output);
            }
        }
        running.extend(streams.0.borrow_mut().drain(..));
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        if !streams.0.borrow().is_empty() {
            continue;
        }
        if running.is_empty() {
            if let Some(output) = ended.take() {
                return Poll::Ready(output);
            }
        }
        return Poll::Pending;
    })
    .await
}

/// Whether HTTP/2 connections get Switchyard's own server (the default) or
/// hyper's (`SWITCHYARD_HTTP2=hyper`, kept to compare the two).
fn native_h2() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| std::env::var("SWITCHYARD_HTTP2").map_or(true, |v| v != "hyper"))
}

/// A running data plane.
pub struct Server {
    listeners: Listeners,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// Active health checks; stop when the server is dropped.
    _checker: HealthChecker,
}

/// The running server's listeners, changed by [`Listeners::apply`]; a
/// handle any thread may hold.
#[derive(Clone)]
pub struct Listeners {
    inner: Arc<Mutex<ListenerSet>>,
}

struct ListenerSet {
    /// In the order last applied.
    current: Vec<Bound>,
    /// One per worker.
    workers: Vec<mpsc::UnboundedSender<Change>>,
    /// The server is shutting down: no listener is bound any more.
    stopping: bool,
}

/// A listener as configured and as bound.
struct Bound {
    configured: SocketAddr,
    bound: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
}

impl Bound {
    fn same(&self, (addr, tls): &Listen) -> bool {
        self.configured == *addr
            && match (&self.tls, tls) {
                (None, None) => true,
                (Some(old), Some(new)) => Arc::ptr_eq(old, new),
                _ => false,
            }
    }
}

/// A change to one worker's listeners.
enum Change {
    /// Accept on this socket for `addr` (instead of any socket it had).
    Add {
        addr: SocketAddr,
        socket: std::net::TcpListener,
        tls: Option<Arc<TlsTerminator>>,
    },
    /// Stop accepting on `addr`.
    Remove(SocketAddr),
    /// Accept on `addr`'s socket as it is, with these TLS settings: the
    /// socket is kept, so no connection the kernel queued on it is lost.
    Retls {
        addr: SocketAddr,
        tls: Option<Arc<TlsTerminator>>,
    },
}

/// An accept loop's TLS settings, which a reload may change in place.
type SharedTls = Rc<std::cell::RefCell<Option<Arc<TlsTerminator>>>>;

impl Listeners {
    /// The bound addresses, in the order last applied.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let set = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        set.current.iter().map(|b| b.bound).collect()
    }

    /// Makes `listen` the listeners: [`Listeners::prepare`], then
    /// [`PreparedListeners::commit`]. Returns the bound addresses.
    pub fn apply(&self, listen: &[Listen]) -> Result<Vec<SocketAddr>, ForwardError> {
        Ok(self.prepare(listen)?.commit())
    }

    /// Binds what making `listen` the listeners takes, changing nothing
    /// yet: those unchanged (same address and the same TLS terminator, or
    /// none) are kept, new ones bound on every worker, and those whose TLS
    /// changes bound again beside the old socket (SO_REUSEPORT). If one
    /// cannot be bound (the address is taken, or not this host's, or listed
    /// twice), nothing is, and the error says which. Dropping the result
    /// instead of committing it closes what it bound.
    /// Binds no listener from now on (the server is shutting down).
    fn stop(&self) {
        let mut set = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        set.stopping = true;
    }

    pub fn prepare(&self, listen: &[Listen]) -> Result<PreparedListeners, ForwardError> {
        let set = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Shutting down: the workers accept no more, so a listener bound
        // now would take connections nobody serves.
        if set.stopping {
            let addr = listen
                .first()
                .map_or(([0, 0, 0, 0], 0).into(), |(addr, _)| *addr);
            return Err(ForwardError::Bind {
                addr,
                source: std::io::Error::other("the server is shutting down"),
            });
        }
        let workers = set.workers.len();
        let mut next: Vec<Bound> = Vec::with_capacity(listen.len());
        // Per worker, the sockets to add.
        let mut added: Vec<Vec<Change>> = (0..workers).map(|_| Vec::new()).collect();
        for entry in listen {
            let (addr, tls) = entry;
            if next.iter().any(|b| b.configured == *addr) {
                return Err(ForwardError::Bind {
                    addr: *addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "the address is listed twice",
                    ),
                });
            }
            if let Some(kept) = set.current.iter().find(|b| b.same(entry)) {
                next.push(Bound {
                    configured: kept.configured,
                    bound: kept.bound,
                    tls: kept.tls.clone(),
                });
                continue;
            }
            // Ours, with other TLS: its sockets take the new settings.
            if let Some(old) = set.current.iter().find(|b| b.configured == *addr) {
                for worker in added.iter_mut() {
                    worker.push(Change::Retls {
                        addr: *addr,
                        tls: tls.clone(),
                    });
                }
                next.push(Bound {
                    configured: *addr,
                    bound: old.bound,
                    tls: tls.clone(),
                });
                continue;
            }
            // A port one of ours holds (0.0.0.0:80 becoming 127.0.0.1:80,
            // say) would fail the probe: bound beside it.
            let ours =
                addr.port() != 0 && set.current.iter().any(|b| b.bound.port() == addr.port());
            let sockets = bind_all(*addr, workers, !ours)?;
            let (bound, sockets) = sockets;
            for (worker, socket) in added.iter_mut().zip(sockets) {
                worker.push(Change::Add {
                    addr: *addr,
                    socket,
                    tls: tls.clone(),
                });
            }
            next.push(Bound {
                configured: *addr,
                bound,
                tls: tls.clone(),
            });
        }
        let removed: Vec<SocketAddr> = set
            .current
            .iter()
            .filter(|b| !listen.iter().any(|(addr, _)| *addr == b.configured))
            .map(|b| b.configured)
            .collect();
        Ok(PreparedListeners {
            listeners: self.clone(),
            next,
            added,
            removed,
        })
    }
}

/// Listeners bound by [`Listeners::prepare`], not yet in use.
pub struct PreparedListeners {
    listeners: Listeners,
    next: Vec<Bound>,
    /// Per worker, the sockets to accept on.
    added: Vec<Vec<Change>>,
    removed: Vec<SocketAddr>,
}

impl PreparedListeners {
    /// Puts them in use: each worker accepts on its new sockets and stops
    /// accepting on removed or replaced ones (their connections are served
    /// to their end). Returns the bound addresses.
    pub fn commit(self) -> Vec<SocketAddr> {
        let mut set = self
            .listeners
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (sender, changes) in set.workers.iter().zip(self.added) {
            for change in changes {
                let _ = sender.send(change);
            }
            for addr in &self.removed {
                let _ = sender.send(Change::Remove(*addr));
            }
        }
        for b in &self.next {
            let entry = (b.configured, b.tls.clone());
            if !set.current.iter().any(|old| old.same(&entry)) {
                info!(address = %b.bound, tls = b.tls.is_some(), "listening");
            }
        }
        for addr in &self.removed {
            info!(address = %addr, "stopped listening");
        }
        set.current = self.next;
        set.current.iter().map(|b| b.bound).collect()
    }
}

/// Binds `addr` once per worker (port 0: the first socket picks the port,
/// the others share it); the bound address and the sockets. `probe`: first
/// make sure nobody else holds the address.
fn bind_all(
    addr: SocketAddr,
    workers: usize,
    probe: bool,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ForwardError> {
    if probe {
        refuse_if_taken(addr)?;
    }
    let first = bind(addr)?;
    let bound = first
        .local_addr()
        .map_err(|source| ForwardError::Bind { addr, source })?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind(bound)?);
    }
    Ok((bound, sockets))
}

impl Server {
    /// Binds every address in `listen` (port 0 picks a free port) and starts
    /// `workers` threads serving `routes`.
    pub fn start(
        routes: Routes,
        listen: &[SocketAddr],
        workers: usize,
    ) -> Result<Server, ForwardError> {
        let plain: Vec<Listen> = listen.iter().map(|&addr| (addr, None)).collect();
        Self::start_with_tls(routes, &plain, workers)
    }

    /// As [`Server::start`], with TLS on the listeners that have a
    /// terminator.
    pub fn start_with_tls(
        routes: Routes,
        listen: &[Listen],
        workers: usize,
    ) -> Result<Server, ForwardError> {
        let workers = workers.max(1);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut handles = Vec::new();
        let mut senders = Vec::new();
        for index in 0..workers {
            let routes = routes.clone();
            let shutdown_rx = shutdown_rx.clone();
            let (sender, changes) = mpsc::unbounded_channel();
            let handle = std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || run_worker(changes, routes, shutdown_rx))
                .map_err(|source| ForwardError::Start {
                    what: "a worker thread",
                    source,
                })?;
            handles.push(handle);
            senders.push(sender);
        }
        let listeners = Listeners {
            inner: Arc::new(Mutex::new(ListenerSet {
                current: Vec::new(),
                workers: senders,
                stopping: false,
            })),
        };
        let server = Server {
            listeners: listeners.clone(),
            shutdown,
            workers: handles,
            _checker: HealthChecker::start(routes).map_err(|source| ForwardError::Start {
                what: "the health checker",
                source,
            })?,
        };
        // A bind that fails drops `server`, which stops the workers.
        listeners.apply(listen)?;
        Ok(server)
    }

    /// The bound addresses, in the order given to [`Server::start`] or
    /// last applied.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    /// A handle that changes the listeners while the server runs.
    pub fn listeners(&self) -> Listeners {
        self.listeners.clone()
    }

    /// Stops accepting, lets in-flight requests finish (up to the table's
    /// drain timeout), and returns once every worker has stopped.
    pub fn shutdown(mut self) {
        self.listeners.stop();
        let _ = self.shutdown.send(true);
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                warn!("a worker thread panicked");
            }
        }
    }
}

impl Drop for Server {
    /// Dropped without `shutdown`: the workers stop and drain on their own.
    fn drop(&mut self) {
        self.listeners.stop();
        let _ = self.shutdown.send(true);
    }
}

/// With SO_REUSEPORT a second process could bind the same port and
/// silently take half the connections; nginx and HAProxy refuse to start
/// instead. A probe bind without it fails if anyone holds the port.
fn refuse_if_taken(addr: SocketAddr) -> Result<(), ForwardError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let bind_error = |source| ForwardError::Bind { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    // SO_REUSEADDR only lets the probe past sockets in TIME_WAIT, as the
    // real bind does; a listening socket still makes it fail.
    probe.set_reuse_address(true).map_err(bind_error)?;
    probe.bind(&addr.into()).map_err(bind_error)?;
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ForwardError> {
    let bind_error = |source| ForwardError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)?;
    Ok(socket.into())
}

fn run_worker(
    mut changes: mpsc::UnboundedReceiver<Change>,
    routes: Routes,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            warn!(error = %err, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let graceful = Rc::new(GracefulShutdown::new());
        let proxy = Proxy::new(routes.clone());
        let sweeper = tokio::task::spawn_local({
            let proxy = Rc::clone(&proxy);
            async move {
                loop {
                    let every = proxy.routes.timeouts().idle.max(Duration::from_secs(1));
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        () = proxy.routes.swapped() => {}
                    }
                    proxy.sweep_idle();
                }
            }
        });
        // Lines this worker logged go out within a second, traffic or not.
        let flusher = tokio::task::spawn_local(async {
            loop {
                tokio::time::sleep(crate::access_log::FLUSH_EVERY).await;
                crate::access_log::flush(true);
            }
        });
        // Accept loops by address, and what stops each: a stopped loop
        // takes what the kernel has queued, then drops its socket; the
        // connections it accepted run on as tasks of their own.
        let mut accepting: HashMap<
            SocketAddr,
            (tokio::task::JoinHandle<()>, StopAccepting, SharedTls),
        > = HashMap::new();
        let mut open = true;
        loop {
            let change = tokio::select! {
                change = changes.recv(), if open => change,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            match change {
                Some(Change::Add { addr, socket, tls }) => {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(listener) => listener,
                        Err(err) => {
                            warn!(address = %addr, error = %err, "cannot register a listener");
                            continue;
                        }
                    };
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    let tls: SharedTls = Rc::new(std::cell::RefCell::new(tls));
                    let task = tokio::task::spawn_local(accept_loop(
                        listener,
                        Rc::clone(&tls),
                        Rc::clone(&proxy),
                        routes.clone(),
                        Rc::clone(&graceful),
                        stopped,
                    ));
                    accepting.insert(addr, (task, stop, tls));
                }
                Some(Change::Remove(addr)) => {
                    accepting.remove(&addr);
                }
                Some(Change::Retls { addr, tls }) => {
                    if let Some((_, _, shared)) = accepting.get(&addr) {
                        *shared.borrow_mut() = tls;
                    }
                }
                None => open = false,
            }
        }
        // Shutting down: no more accepting at all.
        for (_, (task, _, _)) in accepting.drain() {
            task.abort();
            let _ = task.await;
        }
        sweeper.abort();
        // Connections between requests close now; busy ones after their
        // answer.
        proxy.stopping.stop();
        let drain = routes.snapshot().timeouts.drain;
        let graceful = Rc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
        // Connections, then the tunnels hyper's connections handed off.
        let drained = async {
            graceful.shutdown().await;
            proxy.tunnels.all_closed().await;
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            warn!(after = ?drain, "drain timed out; closing the remaining connections");
        }
        flusher.abort();
    });
    // Answers cut off by the drain timeout are logged as their tasks drop.
    drop(local);
    crate::access_log::flush(true);
}

/// Stops an accept loop when sent to or dropped.
type StopAccepting = tokio::sync::oneshot::Sender<()>;

async fn accept_loop(
    listener: TcpListener,
    tls: SharedTls,
    proxy: Rc<Proxy>,
    routes: Routes,
    graceful: Rc<GracefulShutdown>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut stopping = false;
    loop {
        let accepted = if stopping {
            // Connections the kernel queued already are served, not reset
            // when the socket closes.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match listener.poll_accept(&mut cx) {
                Poll::Ready(Ok(accepted)) => Ok(accepted),
                _ => return,
            }
        } else {
            tokio::select! {
                biased;
                accepted = listener.accept() => accepted,
                _ = &mut stop => {
                    stopping = true;
                    continue;
                }
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off a little
                // rather than spin on a listener that keeps failing.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = Rc::clone(&proxy);
        let open = Open::count();
        let table = routes.snapshot();
        let tls = tls.borrow().clone();
        match &tls {
            None => {
                // The connection's future is the task's, not wrapped in
                // another: an awaited future is kept twice in its caller's
                // state, and the task's state is copied whole as it starts.
                let watched = (graceful.watcher(), open);
                let limits = (table.timeouts.request_header, table.timeouts.idle);
                let serve = serve(stream, peer, "http", Alpn::None, limits, proxy, watched);
                tokio::task::spawn_local(serve);
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                // Weak: the drain at shutdown takes the worker's only
                // strong reference; a handshake that ends after that has
                // its connection closed rather than served.
                let graceful = Rc::downgrade(&graceful);
                tokio::task::spawn_local(async move {
                    // The handshake counts against the head timeout, so a
                    // client that connects and says nothing is closed as
                    // on a plain listener.
                    let limit = table.timeouts.request_header;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            if let Some(graceful) = graceful.upgrade() {
                                // RFC 7301: the protocol agreed is the one
                                // spoken; an HTTP/2 preface on `http/1.1`
                                // is a malformed HTTP/1.1 request.
                                let alpn = match stream.get_ref().1.alpn_protocol() {
                                    Some(b"h2") => Alpn::H2,
                                    Some(b"http/1.1" | b"http/1.0") => Alpn::Http1,
                                    _ => Alpn::None,
                                };
                                let watched = (graceful.watcher(), open);
                                let limits = (table.timeouts.request_header, table.timeouts.idle);
                                drop((graceful, table));
                                serve(stream, peer, "https", alpn, limits, proxy, watched).await;
                            }
                        }
                        Ok(Err(err)) => {
                            debug!(client = %peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// The protocol TLS agreed on (RFC 7301), which the connection must speak.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alpn {
    /// None (plain TCP, or a client that offered no ALPN): either.
    None,
    /// `http/1.1` or `http/1.0`.
    Http1,
    /// `h2`.
    H2,
}

/// A client connection counted as open (`switchyard_active_connections`)
/// until dropped.
struct Open(&'static prometheus::IntGauge);

impl Open {
    fn count() -> Open {
        let connections = &crate::stats::Metrics::global().connections;
        connections.inc();
        Open(connections)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one client connection (plain TCP or the
/// plaintext side of TLS): the fast path first, then hyper if a request
/// needs it; the future ends with the connection. `watched` holds the
/// graceful shutdown's watcher (the drain waits for this connection from
/// the call on, before it is first polled) and the connection's count;
/// `limits` are the head and idle timeouts.
fn serve<S>(
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
    alpn: Alpn,
    limits: (Duration, Duration),
    proxy: Rc<Proxy>,
    watched: (Watcher, Open),
) -> impl Future<Output = ()>
where
    S: fast::ClientStream + Send + 'static,
{
    let client = Rc::new(ClientInfo::new(peer, proto));
    let (request_header, idle) = limits;
    async move {
        let (watcher, _open) = watched;
        let (stream, buffered, served) = if alpn == Alpn::H2 && native_h2() {
            // Agreed on `h2`: no HTTP/1.1 request is taken (below).
            (stream, bytes::BytesMut::new(), 0)
        } else {
            match fast::serve(stream, &client, &proxy).await {
                fast::Outcome::Closed => return,
                fast::Outcome::Fallback {
                    stream,
                    buffered,
                    served,
                } => (stream, buffered, served),
            }
        };
        let h2 = buffered.len() >= 3
            && h2::PREFACE.starts_with(&buffered[..buffered.len().min(h2::PREFACE.len())]);
        if h2 && (served > 0 || alpn == Alpn::Http1) {
            // HTTP/1.1 was agreed (by TLS, or by the requests so far): the
            // preface is a malformed HTTP/1.1 request. Refused here, as
            // hyper's `http1_only` does not hold with upgrades.
            fast::refuse_preface(stream, &client, &proxy).await;
            return;
        }
        // RFC 7301: on a connection that agreed on `h2`, anything but its
        // preface is a protocol error, which the HTTP/2 server answers.
        if (h2 || alpn == Alpn::H2) && native_h2() {
            let _watcher = watcher;
            Box::pin(h2::serve(stream, &buffered, client, proxy)).await;
            return;
        }
        // Boxed: until a request needs hyper, the connection's future holds
        // the fast path's state only, not room for hyper's (about 1.5 KiB
        // per idle connection).
        Box::pin(async move {
            let table = proxy.routes.snapshot();
            let phase = Arc::new(ConnPhase::default());
            let io = ClientIo::resume(
                stream,
                client.peer,
                Arc::clone(&phase),
                (request_header, idle),
                table.limits.max_header_bytes,
                buffered,
                served > 0,
            );
            // Requests on the connection, the fast path's included.
            let requests = std::cell::Cell::new(served);
            let service = service_fn(move |request| {
                phase.request_started();
                let phase = Arc::clone(&phase);
                requests.set(requests.get() + 1);
                // The connection's request limit: hyper closes after an
                // answer that says `Connection: close` (HTTP/1 only).
                let last = request.version() <= http::Version::HTTP_11
                    && proxy.routes.limits().is_last_request(requests.get());
                let (proxy, client) = (Rc::clone(&proxy), Rc::clone(&client));
                // The answer's future is made inside: one made outside and
                // awaited here would be kept twice (10 KiB, not 5).
                async move {
                    let http10 = request.version() == http::Version::HTTP_10;
                    let request = request.map(ClientBody::Hyper);
                    let mut response = proxy.handle(client, request).await;
                    if let Ok(response) = &mut response {
                        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            phase.tunnel_started();
                        } else if last {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                    }
                    response.map(|response| {
                        let length = response
                            .headers()
                            .contains_key(http::header::CONTENT_LENGTH);
                        response.map(|body| Answering::new(body, phase, http10, length))
                    })
                }
            });
            let streams = ConnStreams::default();
            let mut builder = auto::Builder::new(streams.clone());
            builder
                .http1()
                // Head and idle timeouts are ClientIo's: hyper's own header
                // timeout closes without the 408 and cannot tell idle apart.
                // The head must fit the read buffer: a larger one gets 431.
                .max_buf_size(table.limits.max_header_bytes)
                .max_headers(table.limits.max_headers)
                // A client that half-closes after its request gets no answer
                // from most servers either; closing frees the socket at once.
                .half_close(false)
                // Not pipeline_flush: with it, hyper 1.x holds writes while
                // unparsed bytes are buffered, so an answer to a malformed
                // request is lost and a body is queued without back-pressure.
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(table.limits.max_header_bytes as u32)
                .max_concurrent_streams(256);
            // Not held for the connection's life: an old table (and what
            // its endpoints hold) goes once its requests are done.
            drop(table);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned();
            if let Err(err) = with_streams(watcher.watch(connection), streams).await {
                debug!(client = %peer, error = %err, "client connection ended");
            }
        })
        .await;
    }
}
