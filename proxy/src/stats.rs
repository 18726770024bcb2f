//! What the data plane counts: Prometheus metrics, and per route and pool
//! the outcome counts in 100 ms ticks that the canary detector reads.
//!
//! Everything a request touches is resolved when a table is built (a
//! counter per route, pool and status class; a histogram per route and
//! pool), so counting is a few relaxed atomic adds: no lock, no label
//! lookup, no allocation. The series outlive table swaps, so counters never
//! go back to zero when weights change.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::health::EndpointHealth;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use switchyard_config::ErrorStatuses;

/// Whether requests are counted at all (see [`set_counting`]).
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Turns per-request counting off or on for the whole process: with it
/// off, the load benchmark measures what counting costs.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

/// The detector's tick.
pub const TICK: Duration = Duration::from_millis(100);

/// Ticks kept in each window ring: the detector reads a tick as soon as it
/// is over, and clears ticks ahead of the writers, so a few are enough.
const RING: usize = 16;

/// Requests in flight are kept by the tick they arrived in (a cohort), in
/// a ring of this many ticks (25.6 s), so that the detector can count
/// those still unanswered once a bar (the latency threshold, the latency
/// SLO) is behind them: a canary that hangs is slow from the moment its
/// requests pass the bar, not from the response-header timeout that turns
/// them into 504s a minute later.
const COHORTS: usize = 256;
/// A cohort is judged at most this many ticks after it arrived, and takes
/// no requests after that: a bar longer than 6.4 s is not watched for
/// unanswered requests.
const COHORT_JUDGED_BY: u64 = 64;
/// The bars a cohort is judged against: the latency threshold, the SLO.
const BAR: usize = 0;
const SLO: usize = 1;
/// Stats whose ticks have not been taken for this long (2 s) were out of
/// every table: when one has them again, their rings start over.
const STALE_TICKS: u64 = 20;
/// A request this many ticks old no longer touches its cohort's slot,
/// which the detector clears for reuse at half the ring's length.
const COHORT_WRITES_UNTIL: u64 = 100;

/// The process's metrics registry and the series the data plane writes.
pub struct Metrics {
    /// Everything `GET /metrics` shows.
    pub registry: Registry,
    requests: IntCounterVec,
    upstream_errors: IntCounterVec,
    duration: HistogramVec,
    /// Active client connections.
    pub connections: IntGauge,
    /// Current weight per route and pool, in basis points.
    pub weights: IntGaugeVec,
    /// The live table's version.
    pub table_version: IntGauge,
    /// How many [`PoolStats`] use each route and pool's series: the last
    /// one dropped (no table has the pair any longer) removes them.
    users: Mutex<HashMap<(String, String), usize>>,
}

/// The per route and pool stats of one line of tables (one control
/// plane): the tick rings live here, so that two planes in one process
/// (as in tests) never read each other's ticks, and a table swap keeps
/// its predecessor's rings.
#[derive(Default)]
pub struct StatsScope {
    /// Held weakly, as endpoints: the stats (and series) of a pool no
    /// table has any longer go.
    pools: Mutex<HashMap<(String, String), Weak<PoolStats>>>,
    /// What an endpoint's tables share, held weakly: while a table (or a
    /// request on one) has the endpoint, the next table gets the same; once
    /// none has, it is forgotten, and an endpoint added back starts anew.
    endpoints: Mutex<HashMap<(String, SocketAddr), EndpointState>>,
    /// Each pool's place in its round robin, by name and endpoints,
    /// shared the same way.
    cursors: Mutex<HashMap<CursorKey, Weak<AtomicUsize>>>,
}

/// A pool's name and endpoints.
type CursorKey = (String, Vec<SocketAddr>);

struct EndpointState {
    health: Weak<EndpointHealth>,
    in_flight: Weak<AtomicU32>,
}

impl StatsScope {
    /// An endpoint's failure record and its count of requests in flight,
    /// kept across table swaps while a table has the endpoint.
    pub fn endpoint_state(
        &self,
        pool: &str,
        addr: SocketAddr,
    ) -> (Arc<EndpointHealth>, Arc<AtomicU32>) {
        let mut endpoints = self.endpoints.lock().expect("stats lock is never poisoned");
        let key = (pool.to_string(), addr);
        if let Some(state) = endpoints.get(&key) {
            if let (Some(health), Some(in_flight)) =
                (state.health.upgrade(), state.in_flight.upgrade())
            {
                return (health, in_flight);
            }
        }
        let (health, in_flight) = (Arc::default(), Arc::default());
        endpoints.insert(
            key,
            EndpointState {
                health: Arc::downgrade(&health),
                in_flight: Arc::downgrade(&in_flight),
            },
        );
        (health, in_flight)
    }

    /// Forgets the endpoints and pools no table has any longer; called
    /// once per table build.
    pub fn forget_unused(&self) {
        let mut endpoints = self.endpoints.lock().expect("stats lock is never poisoned");
        endpoints.retain(|_, state| state.health.strong_count() > 0);
        drop(endpoints);
        let mut cursors = self.cursors.lock().expect("stats lock is never poisoned");
        cursors.retain(|_, cursor| cursor.strong_count() > 0);
        drop(cursors);
        let mut pools = self.pools.lock().expect("stats lock is never poisoned");
        pools.retain(|_, stats| stats.strong_count() > 0);
    }

    /// A pool's round robin place, kept across table swaps: else every
    /// swap (a weight change, a rollout step) would start each pool's
    /// order again at its first endpoint.
    pub fn cursor(&self, pool: &str, endpoints: &[SocketAddr]) -> Arc<AtomicUsize> {
        let mut cursors = self.cursors.lock().expect("stats lock is never poisoned");
        let key = (pool.to_string(), endpoints.to_vec());
        if let Some(cursor) = cursors.get(&key).and_then(Weak::upgrade) {
            return cursor;
        }
        let cursor = Arc::default();
        cursors.insert(key, Arc::downgrade(&cursor));
        cursor
    }

    /// The scope of tables built without one of their own.
    pub fn shared() -> &'static StatsScope {
        static SHARED: OnceLock<StatsScope> = OnceLock::new();
        SHARED.get_or_init(StatsScope::default)
    }

    /// The stats of one route's pool, created on first use; called when a
    /// table is built, never per request.
    pub fn pool_stats(&self, route: &str, pool: &str) -> Arc<PoolStats> {
        let mut pools = self.pools.lock().expect("stats lock is never poisoned");
        let key = (route.to_string(), pool.to_string());
        if let Some(stats) = pools.get(&key).and_then(Weak::upgrade) {
            stats.resume(tick_of(Instant::now()));
            return stats;
        }
        let series = Metrics::global().pool_series(route, pool);
        let stats = Arc::new(PoolStats {
            classes: series.classes,
            errors: series.errors,
            duration: series.duration,
            ticks: std::array::from_fn(|_| TickSlot::default()),
            cohorts: (0..COHORTS).map(|_| Cohort::default()).collect(),
            open_from: AtomicU64::new(0),
            next_judged: Default::default(),
            last_taken: AtomicU64::new(0),
            slow_after_us: AtomicU64::new(u64::MAX),
            slo_after_us: AtomicU64::new(u64::MAX),
            error_statuses: ErrorStatuses::default().0.map(AtomicU64::new),
            labels: (route.into(), pool.into()),
        });
        pools.insert(key, Arc::downgrade(&stats));
        stats
    }
}

/// The kinds of upstream failure, the label values of
/// `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Refused, unreachable, or any connect failure.
    Connect,
    /// No response head in time (or no connection in time).
    Timeout,
    /// Closed or reset before or during the response.
    Reset,
    /// An unparseable response.
    Malformed,
}

impl ErrorKind {
    /// How a body that broke off after its head is told (the access log).
    pub fn broke_off(self) -> &'static str {
        match self {
            Self::Connect | Self::Reset => "upstream closed or reset mid-body",
            Self::Timeout => "upstream body quiet for the idle timeout",
            Self::Malformed => "upstream body framing broke",
        }
    }

    const ALL: [ErrorKind; 4] = [Self::Connect, Self::Timeout, Self::Reset, Self::Malformed];

    fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Malformed => "malformed",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// The process-wide metrics.
    pub fn global() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(Metrics::new)
    }

    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Requests answered, by route, pool and status class.",
            ),
            &["route", "pool", "class"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_errors_total",
                "Upstream failures, by route, pool and kind (connect, timeout, reset, malformed).",
            ),
            &["route", "pool", "kind"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from a request being whole at the proxy (or, streamed, sent whole) to its response head, by route and pool.",
            )
            // Fine enough around typical service times for the detector's
            // p99 (interpolated inside a bucket) to be within about 25%:
            // with coarse 1-2.5-5 steps a 10 ms service's p99 reads as up
            // to 25 ms and a 3x slower canary passes as normal.
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03,
                0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
            ]),
            &["route", "pool"],
        )
        .expect("valid metric");
        let connections = IntGauge::new(
            "switchyard_active_connections",
            "Client connections open now.",
        )
        .expect("valid metric");
        let weights = IntGaugeVec::new(
            Opts::new(
                "switchyard_route_weight_basis_points",
                "Current weight of each pool of a route's split, in basis points (10000 = 100%).",
            ),
            &["route", "pool"],
        )
        .expect("valid metric");
        let table_version = IntGauge::new(
            "switchyard_table_version",
            "Version of the routing table being served.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_errors.clone()),
            Box::new(duration.clone()),
            Box::new(connections.clone()),
            Box::new(weights.clone()),
            Box::new(table_version.clone()),
        ] {
            registry.register(collector).expect("names are unique");
        }
        Metrics {
            registry,
            requests,
            upstream_errors,
            duration,
            connections,
            weights,
            table_version,
            users: Mutex::default(),
        }
    }

    /// The series of a route's pool, for one more user.
    fn pool_series(&self, route: &str, pool: &str) -> PoolSeries {
        let mut users = self.users.lock().expect("metrics lock is never poisoned");
        *users
            .entry((route.to_string(), pool.to_string()))
            .or_default() += 1;
        PoolSeries {
            classes: CLASSES.map(|class| self.requests.with_label_values(&[route, pool, class])),
            errors: ErrorKind::ALL.map(|kind| {
                self.upstream_errors
                    .with_label_values(&[route, pool, kind.label()])
            }),
            duration: self.duration.with_label_values(&[route, pool]),
        }
    }

    /// One user of a route's pool series fewer; the last removes them.
    fn release_series(&self, route: &str, pool: &str) {
        let mut users = self.users.lock().expect("metrics lock is never poisoned");
        let key = (route.to_string(), pool.to_string());
        let Some(count) = users.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        users.remove(&key);
        for class in CLASSES {
            let _ = self.requests.remove_label_values(&[route, pool, class]);
        }
        for kind in ErrorKind::ALL {
            let _ = self
                .upstream_errors
                .remove_label_values(&[route, pool, kind.label()]);
        }
        let _ = self.duration.remove_label_values(&[route, pool]);
    }
}

/// A route's pool's series.
struct PoolSeries {
    classes: [IntCounter; 5],
    errors: [IntCounter; 4],
    duration: Histogram,
}

/// One route's pool: its series and its tick ring.
pub struct PoolStats {
    classes: [IntCounter; 5],
    errors: [IntCounter; 4],
    duration: Histogram,
    ticks: [TickSlot; RING],
    /// Requests sent, by the tick they arrived in.
    cohorts: Box<[Cohort]>,
    /// The oldest cohort that still takes requests (only
    /// [`take_tick`](Self::take_tick) writes it, and `next_judged`).
    open_from: AtomicU64,
    /// Per bar ([`BAR`], [`SLO`]), the next cohort to judge against it.
    next_judged: [AtomicU64; 2],
    /// The last tick taken (0: none yet).
    last_taken: AtomicU64,
    /// A response slower than this (µs) counts as slow; set by the detector.
    pub slow_after_us: AtomicU64,
    /// A response slower than this (µs) breaks the route's latency SLO.
    pub slo_after_us: AtomicU64,
    /// The statuses that count as errors, as [`ErrorStatuses`] words.
    error_statuses: [AtomicU64; 4],
    /// Its route and pool, whose series go with the last of their stats.
    labels: (Box<str>, Box<str>),
}

impl Drop for PoolStats {
    fn drop(&mut self) {
        Metrics::global().release_series(&self.labels.0, &self.labels.1);
    }
}

/// Counts of one tick.
#[derive(Default)]
struct TickSlot {
    requests: AtomicU64,
    errors: AtomicU64,
    slow: AtomicU64,
    over_slo: AtomicU64,
    late: AtomicU64,
    late_slo: AtomicU64,
}

impl TickSlot {
    fn clear(&self) {
        for count in [
            &self.requests,
            &self.errors,
            &self.slow,
            &self.over_slo,
            &self.late,
            &self.late_slo,
        ] {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// The requests that arrived in one tick: how many were sent, how many
/// of them have had their answer (or were given up), and, per bar, which
/// cohort of the ring's turns this slot was judged for (its tick + 1; 0:
/// none).
#[derive(Default)]
struct Cohort {
    sent: AtomicU32,
    ended: AtomicU32,
    judged: [AtomicU64; 2],
}

impl Cohort {
    /// Whether this slot was judged against `bar` for `cohort`'s turn.
    fn judged(&self, cohort: u64, bar: usize) -> bool {
        self.judged[bar].load(Ordering::Relaxed) == cohort + 1
    }

    /// Empty for a new turn (the judged marks name their turn).
    fn clear(&self) {
        self.sent.store(0, Ordering::Relaxed);
        self.ended.store(0, Ordering::Relaxed);
    }
}

/// Counts of one finished tick, as the detector reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickCounts {
    /// Answers.
    pub requests: u64,
    /// Errors: 5xx from the upstream, or a failure the proxy answered for it.
    pub errors: u64,
    /// Answers slower than the latency threshold.
    pub slow: u64,
    /// Answers slower than the route's latency SLO.
    pub over_slo: u64,
    /// Answers (of `requests`) to requests already counted in `overdue`
    /// in an earlier tick: their slowness is not counted again.
    pub late: u64,
    /// Requests sent that passed the latency bar in this tick with no
    /// answer yet: slow, before any answer says so.
    pub overdue: u64,
    /// As `late`, for the latency SLO.
    pub late_slo: u64,
    /// As `overdue`, for the latency SLO.
    pub overdue_slo: u64,
}

impl TickCounts {
    /// What the latency test observes in the tick: the answers not
    /// counted before and the requests overdue, and of those, the slow.
    pub fn latency(&self) -> (u64, u64) {
        let answers = self.requests - self.late.min(self.requests);
        (answers + self.overdue, self.slow + self.overdue)
    }
}

/// Milliseconds from the first use of the stats clock to `at`.
pub fn ms_of(at: Instant) -> u64 {
    let since = since_start(at);
    // Not `as_millis`: its 128-bit division is a call on every request.
    since.as_secs() * 1000 + u64::from(since.subsec_millis())
}

/// The tick a moment falls in, counted from the first use of the clock.
pub fn tick_of(at: Instant) -> u64 {
    const _: () = assert!(TICK.as_millis() == 100, "ticks are tenths of a second");
    let since = since_start(at);
    since.as_secs() * 10 + u64::from(since.subsec_millis() / 100)
}

fn since_start(at: Instant) -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start)
}

/// A request on its way to a pool, from the moment it is sent until its
/// answer's head (or until it is given up, when the guard drops): while
/// it waits past the latency bar (or SLO), the detector counts it as slow.
///
/// The upstream's time starts when the request is whole at the proxy (or,
/// for a body streamed as the client sends it, sent whole): the time a
/// client takes to upload is its own, as nginx's `$upstream_response_time`
/// (which buffers the body first) leaves it out, and a slow uploader must
/// not make a canary look slow.
#[must_use = "a request's answer is recorded through its guard"]
pub struct Pending<'a> {
    stats: &'a PoolStats,
    /// When the upstream's time began: the answer's latency runs from
    /// here, and its cohort is this tick.
    started: Cell<Instant>,
    /// The tick it began in; u64::MAX when it is not watched.
    cohort: Cell<u64>,
}

impl PoolStats {
    /// A request whole at the proxy at `started` (`started_ms` by
    /// [`ms_of`]) is sent to this pool. Its cohort is that tick's: one
    /// sent so long after (a retry's wait) that its cohort was judged is
    /// not watched while it waits; its answer counts as slow as any.
    pub fn send(&self, started: Instant, started_ms: u64) -> Pending<'_> {
        let pending = Pending {
            stats: self,
            started: Cell::new(started),
            cohort: Cell::new(u64::MAX),
        };
        pending
            .cohort
            .set(self.watch(started_ms / TICK.as_millis() as u64));
        pending
    }

    /// A request whose body streams upstream as the client sends it: not
    /// watched, and timed from `started` (its head's arrival), until
    /// [`Pending::body_sent`] says the body went whole; an answer that
    /// comes before that is timed from the head.
    pub fn send_streaming(&self, started: Instant) -> Pending<'_> {
        Pending {
            stats: self,
            started: Cell::new(started),
            cohort: Cell::new(u64::MAX),
        }
    }

    /// Counts a request of `cohort` as sent: the cohort it is watched in,
    /// or u64::MAX when it is not watched (not counting, the cohort closed
    /// or already judged).
    fn watch(&self, cohort: u64) -> u64 {
        if !COUNTING.load(Ordering::Relaxed) || cohort < self.open_from.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        let slot = &self.cohorts[cohort as usize % COHORTS];
        if slot.judged(cohort, BAR) || slot.judged(cohort, SLO) {
            // Sent after its cohort was judged: its answer says it all.
            return u64::MAX;
        }
        slot.sent.fetch_add(1, Ordering::Relaxed);
        cohort
    }
}

impl Pending<'_> {
    /// A streamed body went whole at `at` (see [`PoolStats::send_streaming`]):
    /// the upstream's time runs from then, and it is watched from then.
    pub fn body_sent(&self, at: Instant) {
        self.started.set(at);
        if self.cohort.get() == u64::MAX {
            let cohort = self.stats.watch(ms_of(at) / TICK.as_millis() as u64);
            self.cohort.set(cohort);
        }
    }

    /// Records its answer and ends the wait: status, time to the response
    /// head, and whether it counts as an error for canary health.
    pub fn answered(self, status: u16, error: Option<ErrorKind>) {
        let now = Instant::now();
        let tick = tick_of(now);
        let late = self.end(tick);
        self.stats
            .record(status, self.started.get(), (now, tick), error, late);
    }

    /// Records the answer of one try of several (a retry follows): the
    /// wait goes on.
    pub fn answered_try(&self, status: u16, error: Option<ErrorKind>) {
        let now = Instant::now();
        let tick = tick_of(now);
        let late = self.judged(tick);
        self.stats
            .record(status, self.started.get(), (now, tick), error, late);
    }

    /// Per bar, whether the detector has counted the request as overdue
    /// already.
    fn judged(&self, tick: u64) -> [bool; 2] {
        let cohort = self.cohort.get();
        if cohort == u64::MAX {
            return [false; 2];
        }
        if tick.saturating_sub(cohort) >= COHORTS as u64 {
            // Its slot has had later turns since: it was judged if the
            // bar is one that cohorts are judged against (as it was then,
            // most likely).
            let watched = |bar: &AtomicU64| {
                bar.load(Ordering::Relaxed) <= COHORT_JUDGED_BY * TICK.as_micros() as u64
            };
            return [
                watched(&self.stats.slow_after_us),
                watched(&self.stats.slo_after_us),
            ];
        }
        let slot = &self.stats.cohorts[cohort as usize % COHORTS];
        [BAR, SLO].map(|bar| slot.judged(cohort, bar))
    }

    /// Ends the wait, once: returns, per bar, whether the request was
    /// counted as overdue. (An answer racing the detector's read of its
    /// cohort, in a window of nanoseconds, may be counted twice or not
    /// at all.)
    fn end(&self, tick: u64) -> [bool; 2] {
        let judged = self.judged(tick);
        let cohort = self.cohort.replace(u64::MAX);
        if cohort != u64::MAX && tick.saturating_sub(cohort) < COHORT_WRITES_UNTIL {
            let slot = &self.stats.cohorts[cohort as usize % COHORTS];
            slot.ended.fetch_add(1, Ordering::Relaxed);
        }
        judged
    }
}

impl Drop for Pending<'_> {
    /// Given up with no answer (the client left, or a failure that no
    /// answer records): no longer in flight.
    fn drop(&mut self) {
        if self.cohort.get() != u64::MAX {
            self.end(tick_of(Instant::now()));
        }
    }
}

impl PoolStats {
    /// Records one answer at `now` (and its tick): status, time to the
    /// response head, and whether it counts as an error for canary
    /// health; `late`, per bar, when the detector counted the request as
    /// slow while it waited.
    fn record(
        &self,
        status: u16,
        started: Instant,
        (now, tick): (Instant, u64),
        error: Option<ErrorKind>,
        late: [bool; 2],
    ) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let elapsed = now.saturating_duration_since(started);
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.classes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors[kind as usize].inc();
        }
        let slot = &self.ticks[(tick as usize) % RING];
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if self.is_error(status) {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = elapsed.as_micros() as u64;
        if late[BAR] {
            slot.late.fetch_add(1, Ordering::Relaxed);
        } else if micros > self.slow_after_us.load(Ordering::Relaxed) {
            slot.slow.fetch_add(1, Ordering::Relaxed);
        }
        if late[SLO] {
            slot.late_slo.fetch_add(1, Ordering::Relaxed);
        } else if micros > self.slo_after_us.load(Ordering::Relaxed) {
            slot.over_slo.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets which statuses count as errors (when a table is built).
    pub fn set_error_statuses(&self, statuses: ErrorStatuses) {
        for (word, bits) in self.error_statuses.iter().zip(statuses.0) {
            word.store(bits, Ordering::Relaxed);
        }
    }

    fn is_error(&self, status: u16) -> bool {
        let Some(n) = status.checked_sub(400).map(usize::from) else {
            return false;
        };
        n < 256 && self.error_statuses[n / 64].load(Ordering::Relaxed) & (1 << (n % 64)) != 0
    }

    /// Counts an upstream failure the client did not see (a connection
    /// that failed before the request went to another endpoint).
    pub fn record_late_error(&self, kind: ErrorKind) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        self.errors[kind as usize].inc();
    }

    /// Counts an answer that broke after its head (a reset mid-body, a
    /// body cut short): an error for the canary detector too, in the tick
    /// it broke in (its request was counted when its head came).
    pub fn record_broken(&self, kind: ErrorKind) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        self.errors[kind as usize].inc();
        let slot = &self.ticks[(tick_of(Instant::now()) as usize) % RING];
        slot.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A table built at `tick` has these stats again. If no tick was taken
    /// for a while (the pool was out of every table, its stats kept alive
    /// by a request in flight on an old one), the rings were not cleared
    /// ahead of their turns: they start over, else counts left from then
    /// (requests overdue then) would be read as this tick's.
    fn resume(&self, tick: u64) {
        let last = self.last_taken.load(Ordering::Relaxed);
        if last == 0 || tick <= last + STALE_TICKS {
            return;
        }
        for slot in &self.ticks {
            slot.clear();
        }
        for slot in self.cohorts.iter() {
            slot.clear();
        }
        // Requests sent before this are left to their answers.
        self.open_from.store(tick, Ordering::Relaxed);
        for next in &self.next_judged {
            next.store(tick, Ordering::Relaxed);
        }
        self.last_taken.store(tick, Ordering::Relaxed);
    }

    /// Takes a finished tick's counts, and clears a tick ahead of the
    /// writers so the ring is clean when they reach it.
    pub fn take_tick(&self, tick: u64) -> TickCounts {
        self.last_taken.store(tick, Ordering::Relaxed);
        let slot = &self.ticks[(tick as usize) % RING];
        let mut counts = TickCounts {
            requests: slot.requests.swap(0, Ordering::Relaxed),
            errors: slot.errors.swap(0, Ordering::Relaxed),
            slow: slot.slow.swap(0, Ordering::Relaxed),
            over_slo: slot.over_slo.swap(0, Ordering::Relaxed),
            late: slot.late.swap(0, Ordering::Relaxed),
            late_slo: slot.late_slo.swap(0, Ordering::Relaxed),
            ..TickCounts::default()
        };
        [counts.overdue, counts.overdue_slo] = self.judge_cohorts(tick);
        self.ticks[(tick as usize + RING / 2) % RING].clear();
        counts
    }

    /// At the end of `tick`, per bar: the requests of the cohorts the bar
    /// is now behind that are still unanswered; and a cohort's slot ahead
    /// of the senders cleared for its next turn.
    fn judge_cohorts(&self, tick: u64) -> [u64; 2] {
        self.cohorts[(tick as usize + COHORTS / 2) % COHORTS].clear();
        // Cohorts this old take no more requests, so that a late one
        // never lands in a slot a later cohort uses.
        let open_from = tick.saturating_sub(COHORT_JUDGED_BY);
        self.open_from.store(open_from, Ordering::Relaxed);
        let bars = [&self.slow_after_us, &self.slo_after_us];
        [BAR, SLO].map(|bar| {
            let bar_us = bars[bar].load(Ordering::Relaxed);
            self.judge_against(bar, bar_us, (open_from, tick))
        })
    }

    /// The requests unanswered past a bar of `bar_us`, of the cohorts it
    /// is now behind (none older than `open_from`), each judged once.
    fn judge_against(&self, bar: usize, bar_us: u64, (open_from, tick): (u64, u64)) -> u64 {
        let next = &self.next_judged[bar];
        let first = next.load(Ordering::Relaxed).max(open_from);
        // Every request of cohort c arrived by the end of tick c, so at
        // the end of `tick` the bar is behind it when c + bar ≤ tick.
        let bar_ticks = bar_us.div_ceil(TICK.as_micros() as u64);
        if bar_us == u64::MAX || bar_ticks > COHORT_JUDGED_BY || tick < bar_ticks {
            next.store(first, Ordering::Relaxed);
            return 0;
        }
        let last = tick - bar_ticks;
        let mut overdue = 0;
        for cohort in first..=last {
            let slot = &self.cohorts[cohort as usize % COHORTS];
            // Marked first: an answer that comes after the mark does not
            // count itself as slow again.
            slot.judged[bar].store(cohort + 1, Ordering::Relaxed);
            let sent = slot.sent.load(Ordering::Relaxed);
            let ended = slot.ended.load(Ordering::Relaxed);
            overdue += u64::from(sent.saturating_sub(ended));
        }
        next.store(first.max(last + 1), Ordering::Relaxed);
        overdue
    }

    /// The request-duration histogram so far: `(upper bound in ms,
    /// cumulative count)`, the last bound infinite.
    pub fn latency_snapshot(&self) -> Vec<(f64, u64)> {
        use prometheus::core::Metric;
        let metric = self.duration.metric();
        let histogram = metric.get_histogram();
        let mut out: Vec<(f64, u64)> = histogram
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound() * 1000.0, b.cumulative_count()))
            .collect();
        out.push((f64::INFINITY, histogram.get_sample_count()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` requests within one tick (again if a tick ends between
    /// them), returning the guards and the tick they were sent in.
    fn send_within_a_tick(stats: &PoolStats, n: usize) -> (Vec<Pending<'_>>, u64) {
        loop {
            let before = tick_of(Instant::now());
            let sent: Vec<_> = (0..n)
                .map(|_| {
                    let now = Instant::now();
                    stats.send(now, ms_of(now))
                })
                .collect();
            if tick_of(Instant::now()) == before {
                return (sent, before);
            }
            // A tick ended between them: their ends are counted (in their own cohorts) as they drop.
        }
    }

    #[test]
    fn a_request_unanswered_past_a_bar_is_overdue_once_and_its_late_answer_is_not_slow_again() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("cohort-route", "cohort-pool");
        // 150 ms: a cohort's requests are all past it two ticks on; the
        // SLO's 350 ms four ticks on.
        stats.slow_after_us.store(150_000, Ordering::Relaxed);
        stats.slo_after_us.store(350_000, Ordering::Relaxed);
        let (mut sent, cohort) = send_within_a_tick(&stats, 3);
        let hung = sent.remove(0);
        let given_up = sent.remove(0);
        let answered = sent.remove(0);
        answered.answered(200, None);
        // The client left before the bar: not in flight any longer.
        drop(given_up);
        let overdue = |tick| {
            let counts = stats.take_tick(tick);
            (counts.overdue, counts.overdue_slo)
        };
        assert_eq!(overdue(cohort + 1), (0, 0), "no bar is behind it yet");
        assert_eq!(overdue(cohort + 2), (1, 0), "the one request unanswered");
        assert_eq!(overdue(cohort + 3), (0, 0), "counted once");
        assert_eq!(overdue(cohort + 4), (0, 1), "and past the SLO");
        assert_eq!(overdue(cohort + 5), (0, 0), "counted once");
        hung.answered(200, None);
        let now = tick_of(Instant::now());
        let mut sums = TickCounts::default();
        for tick in cohort..=now {
            let counts = stats.take_tick(tick);
            sums.requests += counts.requests;
            sums.late += counts.late;
            sums.slow += counts.slow;
            sums.late_slo += counts.late_slo;
            sums.over_slo += counts.over_slo;
        }
        assert_eq!(
            (
                sums.requests,
                sums.late,
                sums.slow,
                sums.late_slo,
                sums.over_slo
            ),
            (2, 1, 0, 1, 0),
            "the late answer counts, but not as slow again"
        );
    }

    #[test]
    fn an_old_answer_is_late_only_if_its_cohort_was_judged() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("cohort-route", "cohort-pool");
        stats.slow_after_us.store(150_000, Ordering::Relaxed);
        // 8 s: longer than cohorts are judged by, so never judged.
        stats.slo_after_us.store(8_000_000, Ordering::Relaxed);
        let (sent, cohort) = send_within_a_tick(&stats, 1);
        let judged_bar = stats.take_tick(cohort + 2);
        assert_eq!((judged_bar.overdue, judged_bar.overdue_slo), (1, 0));
        // 15 s on, its slot still tells: late for the latency bar only.
        // (Any answer over 10 s old was taken as counted for both, and
        // its breach of the SLO went uncounted.)
        assert_eq!(sent[0].judged(cohort + 150), [true, false]);
        // Past the ring, the bars as they are now tell.
        assert_eq!(sent[0].judged(cohort + 300), [true, false]);
    }

    #[test]
    fn stats_back_in_a_table_after_a_while_start_their_rings_over() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("cohort-route", "cohort-pool");
        stats.slow_after_us.store(150_000, Ordering::Relaxed);
        let (hung, cohort) = send_within_a_tick(&stats, 1);
        assert_eq!(stats.take_tick(cohort + 2).overdue, 1);
        // Out of every table (kept alive by that request) until 30 s on,
        // when the ring has come round to its slot again: it is not
        // overdue a second time, as a cohort 25.6 s younger.
        stats.resume(cohort + 300);
        assert_eq!(stats.take_tick(cohort + 300).overdue, 0);
        drop(hung);
        assert_eq!(stats.take_tick(cohort + 301).overdue, 0);
    }

    #[test]
    fn a_streamed_upload_is_watched_from_when_its_body_went_whole() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("upload-route", "upload-pool");
        stats.slow_after_us.store(150_000, Ordering::Relaxed);
        let arrived = Instant::now();
        let now = tick_of(arrived);
        let uploading = stats.send_streaming(arrived);
        // The upload is the client's time: not in flight while it lasts,
        // however long (`send` would count it from its head's cohort).
        assert_eq!(stats.take_tick(now + 2).overdue, 0);
        assert_eq!(stats.take_tick(now + 5).overdue, 0);
        // Sent whole a second on: watched from then, and overdue once the
        // bar is behind it with no answer.
        let whole = arrived + Duration::from_secs(1);
        let cohort = tick_of(whole);
        uploading.body_sent(whole);
        assert_eq!(
            stats.take_tick(cohort + 1).overdue,
            0,
            "the bar is not behind it yet"
        );
        assert_eq!(
            stats.take_tick(cohort + 2).overdue,
            1,
            "unanswered past the bar"
        );
        assert_eq!(uploading.judged(cohort + 2), [true, false]);
    }

    #[test]
    fn a_streamed_upload_is_timed_from_when_its_body_went_whole() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("upload-route", "upload-pool");
        stats.slow_after_us.store(150_000, Ordering::Relaxed);
        // Its head came a second ago; the client uploaded since.
        let arrived = Instant::now() - Duration::from_secs(1);
        // The slow answers and all answers counted by now.
        let counted = || {
            let now = tick_of(Instant::now());
            (now.saturating_sub(3)..=now).fold((0, 0), |(slow, answers), tick| {
                let counts = stats.take_tick(tick);
                (slow + counts.slow, answers + counts.requests)
            })
        };
        counted();
        // Answered at once after its body went whole: not slow.
        let answered_at_once = stats.send_streaming(arrived);
        answered_at_once.body_sent(Instant::now());
        answered_at_once.answered(200, None);
        assert_eq!(counted(), (0, 1), "timed from its body's end");
        // An answer before the body went whole is timed from the head.
        let answered_early = stats.send_streaming(arrived);
        answered_early.answered(200, None);
        assert_eq!(counted(), (1, 1), "timed from its head");
    }

    #[test]
    fn a_request_sent_after_its_cohort_was_judged_is_slow_by_its_answer() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("cohort-route", "cohort-pool");
        stats.slow_after_us.store(100_000, Ordering::Relaxed);
        let (early, cohort) = send_within_a_tick(&stats, 1);
        drop(early);
        assert_eq!(stats.take_tick(cohort + 1).overdue, 0);
        // It arrived in the judged cohort (its body took long), and is
        // sent only now: not watched, its slow answer counted as such.
        let arrived = Instant::now() - Duration::from_millis(300);
        let sent = stats.send(arrived, cohort * 100);
        assert_eq!(stats.take_tick(cohort + 2).overdue, 0);
        sent.answered(200, None);
        let now = tick_of(Instant::now());
        let (mut slow, mut late) = (0, 0);
        for tick in cohort..=now {
            let counts = stats.take_tick(tick);
            (slow, late) = (slow + counts.slow, late + counts.late);
        }
        assert_eq!((slow, late), (1, 0));
    }

    #[test]
    fn no_request_is_overdue_without_a_bar_or_with_one_longer_than_the_cohorts_are_judged() {
        let scope = StatsScope::default();
        let stats = scope.pool_stats("cohort-route", "cohort-pool");
        let (sent, cohort) = send_within_a_tick(&stats, 2);
        assert_eq!(stats.take_tick(cohort + 10).overdue, 0, "no bar");
        stats.slow_after_us.store(10_000_000, Ordering::Relaxed);
        assert_eq!(stats.take_tick(cohort + 11).overdue, 0, "a 10 s bar");
        stats.slow_after_us.store(100_000, Ordering::Relaxed);
        assert_eq!(
            stats.take_tick(cohort + 12).overdue,
            2,
            "a 100 ms bar, now behind them"
        );
        drop(sent);
    }
}
