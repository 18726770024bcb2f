//! The routing table: an immutable value built from a validated config,
//! swapped whole behind one `ArcSwap`, and read once per request without a
//! lock. Route lookup, pool choice (weights, sticky buckets, override) and
//! endpoint choice all read only this table.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use rand::Rng;
use rustc_hash::FxHashMap;
use switchyard_config::{
    CanaryHealth, Config, HealthCheck, HostMatch, Limits, OutlierDetection, PathMatch, Policy,
    Retries, Sticky, Timeouts,
};

use crate::dns::Addresses;
use crate::error::ForwardError;
use crate::health::EndpointHealth;
use crate::stats::{Metrics, PoolStats, StatsScope};
use crate::tls::UpstreamTlsClient;

/// Sticky keys hash into this many buckets; a bucket maps to a pool by the
/// split's cumulative weights, one bucket per basis point.
pub const BUCKETS: u32 = switchyard_config::TOTAL_WEIGHT;

/// The live routing table, shared by every worker.
#[derive(Clone)]
pub struct Routes(Arc<Live>);

struct Live {
    table: ArcSwap<RouteTable>,
    /// Woken at each swap: workers then close their idle upstream
    /// connections to endpoints the new table no longer has.
    swapped: tokio::sync::Notify,
}

impl Routes {
    /// Starts serving `table`.
    pub fn new(table: RouteTable) -> Routes {
        table.publish_gauges();
        Routes(Arc::new(Live {
            table: ArcSwap::from_pointee(table),
            swapped: tokio::sync::Notify::new(),
        }))
    }

    /// Taken once per request, so a request sees one table even if a swap
    /// lands while it is in flight.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.0.table.load_full()
    }

    /// The live table's timeouts, read without taking a reference to it.
    pub fn timeouts(&self) -> switchyard_config::Timeouts {
        self.0.table.load().timeouts
    }

    /// The live table's limits, read without taking a reference to it.
    pub fn limits(&self) -> switchyard_config::Limits {
        self.0.table.load().limits
    }

    /// Swaps in a table that is already validated and built; returns the old one.
    pub fn replace(&self, next: RouteTable) -> Arc<RouteTable> {
        next.publish_gauges();
        let old = self.0.table.swap(Arc::new(next));
        old.retract_gauges(&self.0.table.load());
        self.0.swapped.notify_waiters();
        old
    }

    /// Resolves at the next swap.
    pub async fn swapped(&self) {
        self.0.swapped.notified().await;
    }
}

impl RouteTable {
    /// The keys of every endpoint's pooled connections.
    pub(crate) fn idle_keys(&self) -> rustc_hash::FxHashSet<crate::upstream::IdleKey> {
        self.pools
            .iter()
            .flat_map(|pool| pool.endpoints.iter().map(crate::upstream::idle_key))
            .collect()
    }
}

/// One immutable routing table.
pub struct RouteTable {
    version: u64,
    routes: Box<[RouteEntry]>,
    pools: Box<[PoolEntry]>,
    /// Exact host → the routes that can match it, in config order, with the
    /// host rule already known to hold (exact, suffix or no rule).
    by_host: FxHashMap<Box<str>, Candidates>,
    /// Wildcard suffix (`.example.com`) → the routes a host with that
    /// suffix can match, in config order, host rule known to hold.
    by_suffix: FxHashMap<Box<str>, Candidates>,
    /// For a host no exact or suffix entry names: the routes without a
    /// host rule.
    other_hosts: Candidates,
    /// Timeouts from the config.
    pub timeouts: Timeouts,
    /// Limits from the config.
    pub limits: Limits,
    /// Listening addresses from the config.
    pub listeners: Vec<SocketAddr>,
}

/// A route, ready for matching.
pub struct RouteEntry {
    /// Route name.
    pub name: Arc<str>,
    /// Its index in the table's routes.
    pub index: u16,
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, Option<HeaderValue>)]>,
    /// Cumulative bucket end (exclusive) and pool index, baseline last.
    split: Box<[(u32, u16)]>,
    /// Index of the baseline pool.
    pub baseline: u16,
    sticky: Option<StickyKey>,
    override_header: Option<HeaderName>,
    override_cookie: Option<Box<str>>,
    /// Per pool of the split (same order): what the data plane counts.
    stats: Box<[(u16, Arc<PoolStats>)]>,
    /// The route's canary-health settings, for the evaluator.
    pub canary_health: CanaryHealth,
    /// Retries of sent requests.
    pub retries: Retries,
    /// Whether the fast path may serve the route.
    pub fast_path: bool,
}

/// The routes a request's host leaves to try, in config order.
struct Candidates {
    all: Box<[u16]>,
    /// For a long list: the same routes by path rule.
    by_path: Option<PathIndex>,
}

/// Candidate routes by path rule, so that a long list of path-only routes
/// costs a lookup per distinct prefix length rather than a scan. Each list
/// is in config order; the earliest match over all of them wins.
struct PathIndex {
    /// Routes without a path rule.
    any: Box<[u16]>,
    exact: FxHashMap<Box<str>, Box<[u16]>>,
    prefix: FxHashMap<Box<str>, Box<[u16]>>,
    /// The distinct prefix lengths.
    lengths: Box<[usize]>,
    /// The earliest route with a path rule.
    first_keyed: u16,
}

/// Lists shorter than this are scanned: a few `starts_with` cost less
/// than the lookups.
const INDEX_FROM: usize = 8;

impl Candidates {
    fn new(all: Vec<u16>, routes: &[RouteEntry]) -> Candidates {
        let by_path = (all.len() >= INDEX_FROM).then(|| {
            let mut any = Vec::new();
            let mut exact: FxHashMap<Box<str>, Vec<u16>> = FxHashMap::default();
            let mut prefix: FxHashMap<Box<str>, Vec<u16>> = FxHashMap::default();
            for &i in &all {
                match &routes[i as usize].path {
                    None => any.push(i),
                    Some(PathMatch::Exact(path)) => {
                        exact.entry(path.as_str().into()).or_default().push(i)
                    }
                    Some(PathMatch::Prefix(path)) => {
                        prefix.entry(path.as_str().into()).or_default().push(i)
                    }
                }
            }
            let mut lengths: Vec<usize> = prefix.keys().map(|p| p.len()).collect();
            lengths.sort_unstable();
            lengths.dedup();
            let boxed = |map: FxHashMap<Box<str>, Vec<u16>>| {
                map.into_iter()
                    .map(|(k, v)| (k, v.into_boxed_slice()))
                    .collect()
            };
            let first_keyed = all
                .iter()
                .copied()
                .find(|&i| routes[i as usize].path.is_some())
                .unwrap_or(u16::MAX);
            PathIndex {
                first_keyed,
                any: any.into(),
                exact: boxed(exact),
                prefix: boxed(prefix),
                lengths: lengths.into(),
            }
        });
        Candidates {
            all: all.into(),
            by_path,
        }
    }
}

enum StickyKey {
    Header(HeaderName),
    Cookie { name: Box<str>, set: bool },
}

/// A pool of endpoints, ready for picking.
pub struct PoolEntry {
    /// Pool name.
    pub name: Arc<str>,
    /// The endpoints.
    pub endpoints: Box<[EndpointEntry]>,
    policy: Policy,
    /// Smooth weighted round robin order, precomputed: picking is one
    /// atomic increment and an index, with no lock shared by workers.
    sequence: Box<[u16]>,
    /// The place in `sequence`, shared with the tables before and after.
    next: Arc<AtomicUsize>,
    outlier: OutlierDetection,
    /// Active health checks of the endpoints, if configured.
    pub health_check: Option<Arc<HealthCheck>>,
}

/// One resolved endpoint.
pub struct EndpointEntry {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `pool/address`, for error messages and logs.
    pub label: Arc<str>,
    /// Requests in flight, for the least-outstanding policy.
    pub in_flight: Arc<AtomicU32>,
    /// Recent failures, for outlier ejection.
    pub health: Arc<EndpointHealth>,
    /// TLS to this endpoint, when its pool speaks TLS.
    pub tls: Option<Arc<UpstreamTlsClient>>,
}

/// The pool chosen for a request, and the sticky cookie to set if any.
pub struct PoolChoice {
    /// Index into the table's pools.
    pub pool: u16,
    /// `Set-Cookie` value for a client that got a new sticky id.
    pub set_cookie: Option<HeaderValue>,
    /// A tester pinned the pool: it is used even when its endpoints are
    /// ejected, so the tester sees what that pool does.
    pub pinned: bool,
}

impl RouteTable {
    /// Builds a table from a validated config, resolving endpoint names,
    /// with the process's shared stats scope.
    pub fn build(config: &Config, version: u64) -> Result<RouteTable, ForwardError> {
        Self::build_in(config, version, StatsScope::shared())
    }

    /// Builds a table whose stats live in `scope`.
    pub fn build_in(
        config: &Config,
        version: u64,
        scope: &StatsScope,
    ) -> Result<RouteTable, ForwardError> {
        let addresses = Addresses::resolve_blocking(config)?;
        Self::build_from(config, version, scope, None, &addresses)
    }

    /// Builds a table whose endpoint names resolve to `addresses` (every
    /// name of `config` must be in it).
    pub fn build_resolved(
        config: &Config,
        version: u64,
        scope: &StatsScope,
        addresses: &Addresses,
    ) -> Result<RouteTable, ForwardError> {
        Self::build_from(config, version, scope, None, addresses)
    }

    /// Builds a table from a config whose pools are those of `live`'s
    /// (only weights, rollouts or the addresses of names changed): the TLS
    /// clients of its endpoints are taken as they are, not read from their
    /// files again, so that a weight change, a rollout step or a fallback
    /// never fails on a CA file being rotated.
    pub fn build_with_pools_of(
        config: &Config,
        version: u64,
        scope: &StatsScope,
        live: &RouteTable,
        addresses: &Addresses,
    ) -> Result<RouteTable, ForwardError> {
        Self::build_from(config, version, scope, Some(live), addresses)
    }

    fn build_from(
        config: &Config,
        version: u64,
        scope: &StatsScope,
        live: Option<&RouteTable>,
        addresses: &Addresses,
    ) -> Result<RouteTable, ForwardError> {
        scope.forget_unused();
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            let mut endpoints = Vec::with_capacity(pool.endpoints.len());
            let mut weights = Vec::with_capacity(pool.endpoints.len());
            for endpoint in &pool.endpoints {
                let literal = endpoint.address.parse::<SocketAddr>().ok();
                let addrs =
                    match &literal {
                        Some(addr) => std::slice::from_ref(addr),
                        None => addresses.get(&endpoint.address).ok_or_else(|| {
                            ForwardError::Resolve {
                                pool: pool.name.clone(),
                                address: endpoint.address.clone(),
                                source: std::io::Error::new(
                                    std::io::ErrorKind::NotFound,
                                    "not resolved yet",
                                ),
                            }
                        })?,
                    };
                // Every address of a name is an endpoint, with the
                // endpoint's weight (as nginx's `server name weight=N`),
                // and one TLS client for the name.
                let mut built: Option<Arc<UpstreamTlsClient>> = None;
                for &addr in addrs {
                    let reused = live.and_then(|live| {
                        let pool = live.pools.iter().find(|p| *p.name == *pool.name)?;
                        let entry = pool.endpoints.iter().find(|e| e.addr == addr)?;
                        entry.tls.clone()
                    });
                    let tls = match (&pool.tls, reused) {
                        (Some(_), Some(reused)) => Some(reused),
                        (Some(tls), None) => match &built {
                            Some(built) => Some(Arc::clone(built)),
                            None => {
                                let client = Arc::new(UpstreamTlsClient::build(
                                    &pool.name,
                                    tls,
                                    &endpoint.address,
                                )?);
                                built = Some(Arc::clone(&client));
                                Some(client)
                            }
                        },
                        (None, _) => None,
                    };
                    let (health, in_flight) = scope.endpoint_state(&pool.name, addr);
                    let label = match literal {
                        Some(_) => format!("{}/{}", pool.name, endpoint.address),
                        None => format!("{}/{} ({addr})", pool.name, endpoint.address),
                    };
                    endpoints.push(EndpointEntry {
                        addr,
                        label: label.into(),
                        in_flight,
                        health,
                        tls,
                    });
                    weights.push(endpoint.weight);
                }
            }
            let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
            let next = scope.cursor(&pool.name, &addrs);
            pools.push(PoolEntry {
                name: pool.name.as_str().into(),
                endpoints: endpoints.into(),
                policy: pool.policy,
                sequence: smooth_sequence(&weights).into(),
                next,
                outlier: pool.outlier,
                health_check: pool.health_check.clone().map(Arc::new),
            });
        }
        let pool_index = |name: &str| -> u16 {
            config
                .pools
                .iter()
                .position(|p| p.name == name)
                .expect("validated: every split pool exists") as u16
        };

        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let mut end = 0;
            let split = route
                .split
                .weights
                .iter()
                .map(|(pool, weight)| {
                    end += weight;
                    (end, pool_index(pool))
                })
                .collect();
            let stats = route
                .split
                .weights
                .iter()
                .map(|(pool, _)| (pool_index(pool), scope.pool_stats(&route.name, pool)))
                .collect();
            let (override_header, override_cookie) = match &route.pool_override {
                None => (None, None),
                Some(o) => (
                    o.header.as_deref().map(header_name),
                    o.cookie.as_deref().map(Box::from),
                ),
            };
            routes.push(RouteEntry {
                name: route.name.as_str().into(),
                index: routes.len() as u16,
                host: route.matcher.host.clone(),
                path: route.matcher.path.clone(),
                methods: route
                    .matcher
                    .methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).expect("validated: method token"))
                    .collect(),
                headers: route
                    .matcher
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        (
                            header_name(name),
                            value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()),
                        )
                    })
                    .collect(),
                split,
                baseline: pool_index(&route.split.baseline),
                sticky: route.sticky.as_ref().map(|s| match s {
                    Sticky::Header(name) => StickyKey::Header(header_name(name)),
                    Sticky::Cookie { name, set } => StickyKey::Cookie {
                        name: name.as_str().into(),
                        set: *set,
                    },
                }),
                override_header,
                override_cookie,
                stats,
                canary_health: route.canary_health,
                retries: route.retries,
                fast_path: route.fast_path,
            });
        }

        let mut by_host: FxHashMap<Box<str>, Candidates> = FxHashMap::default();
        for route in &routes {
            if let Some(HostMatch::Exact(host)) = &route.host {
                let candidates = routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| match &r.host {
                        None => true,
                        Some(HostMatch::Exact(h)) => h == host,
                        Some(HostMatch::Suffix(suffix)) => host.ends_with(suffix.as_str()),
                    })
                    .map(|(i, _)| i as u16)
                    .collect();
                by_host.insert(host.as_str().into(), Candidates::new(candidates, &routes));
            }
        }
        // Per wildcard suffix: the routes any host with that suffix can
        // match — suffixes that it itself ends with, and no host rule.
        let mut by_suffix: FxHashMap<Box<str>, Candidates> = FxHashMap::default();
        for route in &routes {
            if let Some(HostMatch::Suffix(suffix)) = &route.host {
                let candidates = routes
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| match &r.host {
                        None => true,
                        Some(HostMatch::Exact(_)) => false,
                        Some(HostMatch::Suffix(other)) => suffix.ends_with(other.as_str()),
                    })
                    .map(|(i, _)| i as u16)
                    .collect();
                by_suffix.insert(suffix.as_str().into(), Candidates::new(candidates, &routes));
            }
        }
        let other_hosts = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.host.is_none())
            .map(|(i, _)| i as u16)
            .collect();
        let other_hosts = Candidates::new(other_hosts, &routes);

        Ok(RouteTable {
            version,
            routes: routes.into(),
            pools: pools.into(),
            by_host,
            by_suffix,
            other_hosts,
            timeouts: config.timeouts,
            limits: config.limits,
            listeners: config.listeners.clone(),
        })
    }

    /// Removes the weight series of the routes and pools that `next` no
    /// longer has: a reload that renamed a pool or removed a route must
    /// not leave its last weights exported.
    fn retract_gauges(&self, next: &RouteTable) {
        let live: std::collections::HashSet<(&str, &str)> = next
            .routes
            .iter()
            .flat_map(|route| {
                route
                    .weights()
                    .map(move |(pool, _)| (&*route.name, &*next.pool(pool).name))
            })
            .collect();
        let weights = &Metrics::global().weights;
        for route in self.routes.iter() {
            for (pool, _) in route.weights() {
                let pair = (&*route.name, &*self.pool(pool).name);
                if !live.contains(&pair) {
                    let _ = weights.remove_label_values(&[pair.0, pair.1]);
                }
            }
        }
    }

    /// Sets the weight and version gauges to this table's, and each
    /// route's error statuses in its stats (when it goes live, so that a
    /// table built and then refused changes nothing).
    fn publish_gauges(&self) {
        let metrics = Metrics::global();
        metrics.table_version.set(self.version as i64);
        for route in self.routes.iter() {
            for (_, stats) in route.stats.iter() {
                stats.set_error_statuses(route.canary_health.error_statuses());
            }
            for (pool, weight) in route.weights() {
                metrics
                    .weights
                    .with_label_values(&[&*route.name, &*self.pool(pool).name])
                    .set(i64::from(weight));
            }
        }
    }

    /// The version this table was built as.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// All routes in match order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// A pool by index.
    pub fn pool(&self, index: u16) -> &PoolEntry {
        &self.pools[index as usize]
    }

    /// All pools.
    pub fn pools(&self) -> &[PoolEntry] {
        &self.pools
    }

    /// The first route that matches. `host` is lower case without a port;
    /// `path` is matched as [`path_for_matching`] has it.
    pub fn find_route(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        headers: &(impl Fields + ?Sized),
    ) -> Option<&RouteEntry> {
        let path = &*path_for_matching(path);
        // The exact host, else its longest wildcard suffix, else no host
        // rule: every candidate list already satisfies the host rule.
        // Tables with no host rules (or no wildcards) skip the lookups.
        let exact = match self.by_host.is_empty() {
            true => None,
            false => self.by_host.get(host),
        };
        let candidates = exact.or_else(|| match self.by_suffix.is_empty() {
            true => None,
            false => host
                .match_indices('.')
                .find_map(|(dot, _)| self.by_suffix.get(&host[dot..])),
        });
        let candidates = candidates.unwrap_or(&self.other_hosts);
        let first = |list: &[u16], before: Option<u16>| {
            list.iter()
                .copied()
                .take_while(|&i| before.is_none_or(|b| i < b))
                .find(|&i| self.routes[i as usize].matches(method, path, headers))
        };
        let Some(index) = &candidates.by_path else {
            return first(&candidates.all, None).map(|i| &self.routes[i as usize]);
        };
        // The earliest match over the routes without a path rule, those
        // with this exact path, and those with a prefix of it.
        let mut best = first(&index.any, None);
        if best.is_some_and(|b| b < index.first_keyed) {
            // A route without a path rule matched before any with one.
            return best.map(|i| &self.routes[i as usize]);
        }
        let exact = match index.exact.is_empty() {
            true => None,
            false => index.exact.get(path).map(|list| &**list),
        };
        let prefixes = index
            .lengths
            .iter()
            .filter_map(|&len| index.prefix.get(path.get(..len)?).map(|list| &**list));
        for list in exact.into_iter().chain(prefixes) {
            if let Some(i) = first(list, best) {
                best = Some(i);
            }
        }
        best.map(|i| &self.routes[i as usize])
    }

    /// Chooses the pool for a request on `route`: the override if it names
    /// a pool of the split, else the sticky bucket, else a weighted random pick.
    pub fn choose_pool(&self, route: &RouteEntry, headers: &(impl Fields + ?Sized)) -> PoolChoice {
        if let Some(pool) = self.override_pool(route, headers) {
            return PoolChoice {
                pool,
                set_cookie: None,
                pinned: true,
            };
        }
        match &route.sticky {
            Some(StickyKey::Header(name)) => {
                // An empty key is no key: every such client would share
                // one bucket.
                if let Some(value) = headers.values(name).next().filter(|v| !v.is_empty()) {
                    return PoolChoice {
                        pool: route.pool_for_bucket(sticky_bucket(value)),
                        set_cookie: None,
                        pinned: false,
                    };
                }
            }
            Some(StickyKey::Cookie { name, set }) => {
                if let Some(value) = find_cookie(headers, name).filter(|v| !v.is_empty()) {
                    return PoolChoice {
                        pool: route.pool_for_bucket(sticky_bucket(value)),
                        set_cookie: None,
                        pinned: false,
                    };
                }
                if *set {
                    let id = format!("{:016x}", rand::rng().random::<u64>());
                    let cookie =
                        format!("{name}={id}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax");
                    return PoolChoice {
                        pool: route.pool_for_bucket(sticky_bucket(id.as_bytes())),
                        set_cookie: HeaderValue::try_from(cookie).ok(),
                        pinned: false,
                    };
                }
            }
            None => {}
        }
        PoolChoice {
            pool: route.pool_for_bucket(rand::rng().random_range(0..BUCKETS)),
            set_cookie: None,
            pinned: false,
        }
    }

    fn override_pool(&self, route: &RouteEntry, headers: &(impl Fields + ?Sized)) -> Option<u16> {
        let header = route
            .override_header
            .as_ref()
            .and_then(|name| headers.values(name).next());
        let wanted = match (header, &route.override_cookie) {
            (Some(value), _) => value,
            (_, Some(cookie)) => find_cookie(headers, cookie)?,
            _ => return None,
        };
        route
            .split
            .iter()
            .map(|&(_, pool)| pool)
            .find(|&pool| self.pools[pool as usize].name.as_bytes() == wanted)
    }
}

impl RouteEntry {
    /// Whether the request matches this route's path, method and header
    /// rules; the host rule was settled by the index that chose it.
    fn matches(&self, method: &Method, path: &str, headers: &(impl Fields + ?Sized)) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Prefix(prefix)) => path.starts_with(prefix.as_str()),
            Some(PathMatch::Exact(exact)) => path == exact,
        };
        if !path_ok {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        self.headers.iter().all(|(name, want)| match want {
            None => headers.values(name).next().is_some(),
            Some(want) => headers.values(name).any(|v| v == want.as_bytes()),
        })
    }

    /// What is counted for one pool of this route's split.
    pub fn stats(&self, pool: u16) -> &PoolStats {
        self.stats
            .iter()
            .find(|(index, _)| *index == pool)
            .map(|(_, stats)| &**stats)
            .expect("a chosen pool is one of the split's")
    }

    /// The stats of every pool in the split, with the pool's index.
    pub fn all_stats(&self) -> &[(u16, Arc<PoolStats>)] {
        &self.stats
    }

    /// The pool that owns a bucket (0..BUCKETS) under this route's weights.
    pub fn pool_for_bucket(&self, bucket: u32) -> u16 {
        self.split
            .iter()
            .find(|&&(end, _)| bucket < end)
            .or(self.split.last())
            .map(|&(_, pool)| pool)
            .expect("validated: a split has at least one pool")
    }

    /// Where `down`'s share goes when every endpoint of it is down, in
    /// order: the baseline, then the other pools of the split.
    pub fn fail_open_order(&self, down: u16) -> impl Iterator<Item = u16> + '_ {
        std::iter::once(self.baseline)
            .chain(self.split.iter().map(|&(_, pool)| pool))
            .filter(move |&pool| pool != down)
    }

    /// Pool indices of the split with their weights in basis points.
    pub fn weights(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        let mut start = 0;
        self.split.iter().map(move |&(end, pool)| {
            let weight = end - start;
            start = end;
            (pool, weight)
        })
    }
}

impl PoolEntry {
    /// Picks an endpoint by the pool's policy.
    pub fn pick(&self) -> &EndpointEntry {
        let index = match self.policy {
            Policy::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                self.sequence[n % self.sequence.len()]
            }
            Policy::LeastOutstanding => {
                if self.endpoints.len() == 1 {
                    0
                } else {
                    // Two weighted random choices; the one with fewer
                    // requests in flight wins.
                    let mut rng = rand::rng();
                    let a = self.sequence[rng.random_range(0..self.sequence.len())];
                    let b = self.sequence[rng.random_range(0..self.sequence.len())];
                    let load =
                        |i: u16| self.endpoints[i as usize].in_flight.load(Ordering::Relaxed);
                    if load(b) < load(a) {
                        b
                    } else {
                        a
                    }
                }
            }
        };
        &self.endpoints[index as usize]
    }

    /// Picks an endpoint that is not down, if the pool has one.
    pub fn pick_healthy(&self, now_ms: u64) -> Option<&EndpointEntry> {
        let first = self.pick();
        if !first.health.is_down(now_ms) {
            return Some(first);
        }
        (0..self.sequence.len().min(8))
            .map(|_| self.pick())
            .find(|e| !e.health.is_down(now_ms))
            .or_else(|| self.endpoints.iter().find(|e| !e.health.is_down(now_ms)))
    }

    /// An endpoint for a request pinned to this pool (by the override):
    /// one that is up, else any, as the pin holds even when all are down.
    pub fn pick_pinned(&self, now_ms: u64) -> &EndpointEntry {
        self.pick_healthy(now_ms).unwrap_or_else(|| self.pick())
    }

    /// Whether every endpoint of the pool is down now.
    pub fn is_down(&self, now_ms: u64) -> bool {
        self.endpoints.iter().all(|e| e.health.is_down(now_ms))
    }

    /// Records a failed exchange with `endpoint`; ejects it after a run of
    /// failures if the pool can spare it. Returns true if it was ejected.
    pub fn endpoint_failed(&self, endpoint: &EndpointEntry, now_ms: u64) -> bool {
        endpoint.health.failed(now_ms, &self.outlier, || {
            let ejected = self
                .endpoints
                .iter()
                .filter(|e| e.health.is_ejected(now_ms))
                .count();
            ejected == 0
                || (ejected + 1) * 100
                    <= self.outlier.max_ejected_percent as usize * self.endpoints.len()
        })
    }

    /// Another endpoint than `tried` that is up: the next one after it in
    /// the pool's list. It does not advance the policy's own sequence, so a
    /// retry does not shift which endpoint the next request starts with
    /// (else a dead endpoint would be every request's first pick).
    pub fn pick_other(&self, tried: &EndpointEntry, now_ms: u64) -> Option<&EndpointEntry> {
        let count = self.endpoints.len();
        let start = self
            .endpoints
            .iter()
            .position(|e| e.addr == tried.addr)
            .unwrap_or(0);
        (1..count)
            .map(|step| &self.endpoints[(start + step) % count])
            .find(|e| !e.health.is_down(now_ms))
    }

    /// Whether requests in flight must be counted for this pool.
    pub fn counts_in_flight(&self) -> bool {
        self.policy == Policy::LeastOutstanding
    }
}

/// Hashes a sticky key to its bucket: FNV-1a, then a 64-bit finalizer so
/// that keys differing only in their last bytes spread over all buckets.
/// Fixed algorithm and no seed: a key maps to the same bucket in every
/// process and release, so users stay put across restarts.
pub fn sticky_bucket(key: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    (hash % u64::from(BUCKETS)) as u32
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn smooth_sequence(weights: &[u32]) -> Vec<u16> {
    let gcd = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / gcd.max(1))).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(best as u16);
    }
    sequence
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn header_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("validated: header name is a token")
}

/// A path as routes match it (RFC 3986 §6.2.2): percent-encoded
/// unreserved bytes decoded (`/%61pi` is `/api`) and dot segments removed
/// (`/api/../admin` is `/admin`, §5.2.4), as nginx matches its locations;
/// without it, `..` would reach one route's upstream path through another
/// route's rules. The request goes upstream as the client sent it.
/// Borrowed unless it changes: the common path has neither.
pub fn path_for_matching(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let odd = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'.' && i > 0 && bytes[i - 1] == b'/'));
    if !odd || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let byte = (high * 16 + low) as u8;
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    decoded.push(byte as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Bytes of a `&str`: a multi-byte character is copied whole.
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&path[i..i + len]);
        i += len;
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded[1..].split('/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => {
                segments.push(other);
                continue;
            }
        }
        // `/a/.` and `/a/b/..` name a directory: the slash stays.
        if last {
            segments.push("");
        }
    }
    let normal = format!("/{}", segments.join("/"));
    match normal == path {
        true => Cow::Borrowed(path),
        false => Cow::Owned(normal),
    }
}

/// A request's fields as routing reads them: hyper's `HeaderMap`, or the
/// fields the HTTP/1.1 fast path parsed in place.
pub trait Fields {
    /// Every value of the field `name`, in order.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// Finds a cookie's value among the `Cookie` fields without allocating.
pub fn find_cookie<'a>(headers: &'a (impl Fields + ?Sized), name: &str) -> Option<&'a [u8]> {
    headers
        .values(&header::COOKIE)
        .flat_map(|value| value.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (key.trim_ascii() == name.as_bytes()).then(|| value[1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {

    #[test]
    fn paths_are_matched_as_rfc_3986_normalizes_them() {
        use super::path_for_matching as norm;
        assert_eq!(norm("/api/x"), "/api/x");
        assert_eq!(norm("/v1.2/index.html"), "/v1.2/index.html");
        assert_eq!(norm("/%61pi/x"), "/api/x");
        assert_eq!(norm("/api%2Fx"), "/api%2Fx");
        assert_eq!(norm("/api/../admin/x"), "/admin/x");
        assert_eq!(norm("/api/%2e%2E/admin"), "/admin");
        assert_eq!(norm("/a/./b/."), "/a/b/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/../.."), "/");
        assert_eq!(norm("/.well-known/x"), "/.well-known/x");
        assert_eq!(norm("/%"), "/%");
        assert_eq!(norm("/caf%C3%A9/é"), "/caf%C3%A9/é");
        assert_eq!(norm("*"), "*");
    }

    use super::*;

    #[test]
    fn smooth_sequence_interleaves_by_weight() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn cookie_lookup() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sy_id=abc ; b=2"),
        );
        assert_eq!(find_cookie(&headers, "sy_id"), Some(&b"abc"[..]));
        assert_eq!(find_cookie(&headers, "b"), Some(&b"2"[..]));
        assert_eq!(find_cookie(&headers, "c"), None);
    }

    fn two_pool_table(canary_bp: u32) -> RouteTable {
        let source = format!(
            r#"{{"listeners": [{{"address": "127.0.0.1:1"}}],
                "pools": {{"stable": {{"endpoints": ["127.0.0.1:2"]}}, "canary": {{"endpoints": ["127.0.0.1:3"]}}}},
                "routes": [{{"name": "r", "split": {{"baseline": "stable", "weights": {{"stable": {}, "canary": {canary_bp}}}}}}}]}}"#,
            10_000 - canary_bp
        );
        let config = switchyard_config::parse(&source).expect("valid");
        RouteTable::build(&config, 1).expect("builds")
    }

    fn pool_name(table: &RouteTable, bucket: u32) -> &str {
        let route = &table.routes()[0];
        &table.pool(route.pool_for_bucket(bucket)).name
    }

    proptest::proptest! {
        #[test]
        fn raising_the_canary_only_moves_users_into_it(
            low in 0u32..=10_000,
            raise in 0u32..=10_000,
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40),
        ) {
            let high = (low + raise).min(10_000);
            let (before, after) = (two_pool_table(low), two_pool_table(high));
            let bucket = sticky_bucket(&key);
            if pool_name(&before, bucket) == "canary" {
                proptest::prop_assert_eq!(pool_name(&after, bucket), "canary");
            }
            // The same key maps to the same pool for the same table.
            proptest::prop_assert_eq!(pool_name(&before, bucket), pool_name(&before, sticky_bucket(&key)));
        }

        #[test]
        fn bucket_shares_equal_the_weights(canary in 0u32..=10_000) {
            let table = two_pool_table(canary);
            let in_canary = (0..BUCKETS).filter(|&b| pool_name(&table, b) == "canary").count();
            proptest::prop_assert_eq!(in_canary as u32, canary);
        }
    }

    proptest::proptest! {
        /// The path index finds what a scan in config order finds.
        #[test]
        fn path_index_agrees_with_a_scan(
            rules in proptest::collection::vec((0u8..3, "/[ab]{0,3}"), 1..30),
            paths in proptest::collection::vec("/[ab]{0,4}", 1..20),
        ) {
            let routes: Vec<String> = rules
                .iter()
                .enumerate()
                .map(|(i, (kind, path))| {
                    let rule = match kind {
                        0 => format!(r#""match": {{"path_prefix": "{path}"}}, "#),
                        1 => format!(r#""match": {{"path_exact": "{path}"}}, "#),
                        _ => String::new(),
                    };
                    format!(r#"{{"name": "r{i}", {rule}"split": {{"baseline": "p", "weights": {{"p": 10000}}}}}}"#)
                })
                .collect();
            let source = format!(
                r#"{{"listeners": [{{"address": "127.0.0.1:1"}}], "pools": {{"p": {{"endpoints": ["127.0.0.1:2"]}}}}, "routes": [{}]}}"#,
                routes.join(",")
            );
            let table = RouteTable::build(&switchyard_config::parse(&source).expect("valid"), 1)
                .expect("table");
            for path in &paths {
                let scanned = rules.iter().position(|(kind, rule)| match kind {
                    0 => path.starts_with(rule.as_str()),
                    1 => path == rule,
                    _ => true,
                });
                let found = table
                    .find_route(&Method::GET, "h", path, &HeaderMap::new())
                    .map(|r| r.index as usize);
                proptest::prop_assert_eq!(found, scanned, "path {}", path);
            }
        }
    }

    #[test]
    fn wildcard_suffixes_nest_and_keep_config_order() {
        let route = |name: &str, host: Option<&str>| match host {
            Some(host) => format!(
                r#"{{"name": "{name}", "match": {{"host": "{host}"}}, "split": {{"baseline": "p", "weights": {{"p": 10000}}}}}}"#
            ),
            None => format!(
                r#"{{"name": "{name}", "split": {{"baseline": "p", "weights": {{"p": 10000}}}}}}"#
            ),
        };
        let routes = [
            route("deep", Some("*.a.example.com")),
            route("exact", Some("x.example.com")),
            route("wide", Some("*.example.com")),
            route("any", None),
        ];
        let source = format!(
            r#"{{"listeners": [{{"address": "127.0.0.1:1"}}], "pools": {{"p": {{"endpoints": ["127.0.0.1:2"]}}}}, "routes": [{}]}}"#,
            routes.join(",")
        );
        let table = RouteTable::build(&switchyard_config::parse(&source).expect("valid"), 1)
            .expect("table");
        let find = |host: &str| {
            table
                .find_route(&Method::GET, host, "/", &HeaderMap::new())
                .map(|r| r.name.to_string())
        };
        assert_eq!(find("b.a.example.com").as_deref(), Some("deep"));
        assert_eq!(find("x.example.com").as_deref(), Some("exact"));
        assert_eq!(find("c.example.com").as_deref(), Some("wide"));
        // A wildcard does not match the bare domain.
        assert_eq!(find("example.com").as_deref(), Some("any"));
        assert_eq!(find("other.org").as_deref(), Some("any"));
    }

    #[test]
    fn sticky_buckets_spread() {
        let mut counts = vec![0u32; 10];
        for i in 0..100_000u32 {
            counts[(sticky_bucket(format!("user-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        // Each decile expects 10,000 (sd ≈ 95); ±800 is over 8 sd.
        for count in counts {
            assert!((9_200..=10_800).contains(&count), "{count}");
        }
    }
}
