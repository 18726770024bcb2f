//! What the data plane counts: Prometheus metrics, and per route and pool
//! the outcome counts in 100 ms ticks that the canary detector reads.
//!
//! Everything a request touches is resolved when a table is built (a
//! counter per route, pool and status class; a histogram per route and
//! pool), so counting is a few relaxed atomic adds: no lock, no label
//! lookup, no allocation. The series outlive table swaps, so counters never
//! go back to zero when weights change.

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
            return stats;
        }
        let series = Metrics::global().pool_series(route, pool);
        let stats = Arc::new(PoolStats {
            classes: series.classes,
            errors: series.errors,
            duration: series.duration,
            ticks: std::array::from_fn(|_| TickSlot::default()),
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
                "Time from a request's arrival to its response head, by route and pool.",
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
}

/// Milliseconds from the first use of the stats clock to `at`.
pub fn ms_of(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

/// The tick a moment falls in, counted from the first use of the clock.
pub fn tick_of(at: Instant) -> u64 {
    ms_of(at) / TICK.as_millis() as u64
}

impl PoolStats {
    /// Records one answer: status, time to the response head, and whether
    /// it counts as an error for canary health.
    pub fn record(&self, status: u16, started: Instant, error: Option<ErrorKind>) {
        if !COUNTING.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.classes[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors[kind as usize].inc();
        }
        let slot = &self.ticks[(tick_of(now) as usize) % RING];
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if self.is_error(status) {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = elapsed.as_micros() as u64;
        if micros > self.slow_after_us.load(Ordering::Relaxed) {
            slot.slow.fetch_add(1, Ordering::Relaxed);
        }
        if micros > self.slo_after_us.load(Ordering::Relaxed) {
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

    /// Takes a finished tick's counts, and clears a tick ahead of the
    /// writers so the ring is clean when they reach it.
    pub fn take_tick(&self, tick: u64) -> TickCounts {
        let slot = &self.ticks[(tick as usize) % RING];
        let counts = TickCounts {
            requests: slot.requests.swap(0, Ordering::Relaxed),
            errors: slot.errors.swap(0, Ordering::Relaxed),
            slow: slot.slow.swap(0, Ordering::Relaxed),
            over_slo: slot.over_slo.swap(0, Ordering::Relaxed),
        };
        let ahead = &self.ticks[(tick as usize + RING / 2) % RING];
        ahead.requests.store(0, Ordering::Relaxed);
        ahead.errors.store(0, Ordering::Relaxed);
        ahead.slow.store(0, Ordering::Relaxed);
        ahead.over_slo.store(0, Ordering::Relaxed);
        counts
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
