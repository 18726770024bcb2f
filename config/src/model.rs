//! Validated configuration: the types the proxy can trust without checking
//! again. Built only by [`crate::validate`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Basis points in a whole split: weights are integers that sum to this,
/// so a weight can move in 0.01% steps.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// A whole, validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Data-plane listening addresses.
    pub listeners: Vec<SocketAddr>,
    /// TLS settings of the listeners that terminate TLS.
    pub tls: Vec<ListenerTls>,
    /// Upstream pools, in name order.
    pub pools: Vec<Pool>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Request limits.
    pub limits: Limits,
    /// The admin API's listener.
    pub admin: AdminListener,
    /// How endpoints given by host name are resolved.
    pub dns: Dns,
    /// The file each request answered is logged to, one JSON object a
    /// line; none: no access log.
    pub access_log: Option<PathBuf>,
}

/// How endpoints given by host name are resolved. Every address a name
/// resolves to is an endpoint of its pool (with the endpoint's weight),
/// and names are resolved again every `refresh`: a changed answer changes
/// the endpoints, a failed one keeps the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The name servers to ask; none: the system's resolver (`getaddrinfo`:
    /// `/etc/hosts`, then `/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// How often each name is resolved again.
    pub refresh: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            refresh: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The endpoint addresses given by host name, not as an IP address,
    /// each once.
    pub fn endpoint_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .pools
            .iter()
            .flat_map(|pool| &pool.endpoints)
            .map(|endpoint| endpoint.address.as_str())
            .filter(|address| address.parse::<SocketAddr>().is_err())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl Config {
    /// Returns the pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.name == name)
    }
}

/// A named set of interchangeable endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Unique pool name.
    pub name: String,
    /// At least one endpoint.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is picked.
    pub policy: Policy,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier ejection.
    pub outlier: OutlierDetection,
    /// TLS to the endpoints, if the pool speaks it.
    pub tls: Option<UpstreamTls>,
}

/// A listener that terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The listener's address, as in [`Config::listeners`].
    pub address: SocketAddr,
    /// Its certificates, at least one.
    pub certificates: Vec<CertificateFiles>,
}

/// The admin API's listener, as the config gives it (flags win).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminListener {
    /// Where it listens; `None`: the flag's or the default address.
    pub address: Option<SocketAddr>,
    /// Its TLS, if any.
    pub tls: Option<AdminTls>,
}

/// TLS on the admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// Its certificate and key.
    pub certificate: CertificateFiles,
    /// The CAs of admin clients' certificates; `None`: no client certificate asked.
    pub client_ca_file: Option<PathBuf>,
}

/// A certificate chain and key on disk, and where the config names them.
/// Two are equal when they name the same files the same way: where the
/// config names them (`origin`) is for messages, so that an edit that only
/// moves lines changes no listener (a new one would lose its sessions).
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// Lower-case SNI names (`*.example.com` for a wildcard); empty: the
    /// certificate's own DNS names.
    pub names: Vec<String>,
    /// Served without SNI or for an unknown name.
    pub is_default: bool,
    /// `listeners[0].tls.certificates[1] (line 7)`, for errors about the files.
    pub origin: String,
}

impl PartialEq for CertificateFiles {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.names == other.names
            && self.is_default == other.is_default
    }
}

impl Eq for CertificateFiles {}

/// TLS to a pool's endpoints. Equal when the settings are (`origin`, as
/// for [`CertificateFiles`], is for messages).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// SNI and verified name; `None`: each endpoint's host.
    pub server_name: Option<String>,
    /// CA certificates to trust; `None`: the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `pools.api.tls (line 9)`, for errors about the files.
    pub origin: String,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.ca_file == other.ca_file
            && self.client_cert == other.client_cert
    }
}

impl Eq for UpstreamTls {}

impl Config {
    /// Makes the relative file names of TLS settings relative to `dir`
    /// (the config file's directory) rather than the working directory.
    pub fn rebase_files(&mut self, dir: &Path) {
        let rebase = |file: &mut PathBuf| {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        };
        if let Some(log) = &mut self.access_log {
            rebase(log);
        }
        for listener in &mut self.tls {
            for certificate in &mut listener.certificates {
                rebase(&mut certificate.cert_file);
                rebase(&mut certificate.key_file);
            }
        }
        if let Some(tls) = &mut self.admin.tls {
            rebase(&mut tls.certificate.cert_file);
            rebase(&mut tls.certificate.key_file);
            if let Some(ca) = &mut tls.client_ca_file {
                rebase(ca);
            }
        }
        for pool in &mut self.pools {
            if let Some(tls) = &mut pool.tls {
                if let Some(ca) = &mut tls.ca_file {
                    rebase(ca);
                }
                if let Some((cert, key)) = &mut tls.client_cert {
                    rebase(cert);
                    rebase(key);
                }
            }
        }
    }
}

/// An active HTTP health check of each endpoint of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path (and query) requested with GET.
    pub path: String,
    /// The Host sent; the endpoint's address when `None`.
    pub host: Option<String>,
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Time a check may take to its response head.
    pub timeout: Duration,
    /// Inclusive status ranges that pass.
    pub expected_status: Vec<(u16, u16)>,
    /// Passes in a row that bring a down endpoint back.
    pub rise: u32,
    /// Failures in a row that take an endpoint down.
    pub fall: u32,
}

impl HealthCheck {
    /// Whether a check's status passes.
    pub fn passes(&self, status: u16) -> bool {
        self.expected_status
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

/// Passive outlier ejection settings of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Gateway failures in a row that eject an endpoint; 0: never.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// The most of a pool ejected at once, in percent (at least one endpoint may be).
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, resolved by the proxy when it builds its table.
    pub address: String,
    /// Relative weight inside the pool, 1 to 1000.
    pub weight: u32,
}

/// Endpoint choice inside a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// nginx's smooth weighted round robin.
    RoundRobin,
    /// Power of two random choices, the one with fewer requests in flight wins.
    LeastOutstanding,
}

impl Policy {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastOutstanding => "least_outstanding",
        }
    }
}

/// A route: matchers and a split.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique route name.
    pub name: String,
    /// What a request must look like.
    pub matcher: Match,
    /// Where matching requests go.
    pub split: Split,
    /// Where the sticky key comes from, if any.
    pub sticky: Option<Sticky>,
    /// Where a tester's pool override comes from; `None` disables it.
    pub pool_override: Option<Override>,
    /// Canary-health settings (defaults where absent).
    pub canary_health: CanaryHealth,
    /// Retries of sent requests.
    pub retries: Retries,
    /// Whether the fast path may serve the route (hyper's path serves what
    /// it does not take, and everything when this is false).
    pub fast_path: bool,
}

/// Retries of requests that reached an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first try; 0: none.
    pub attempts: u32,
    /// Retry when the upstream closed or reset before its response head.
    pub on_reset: bool,
    /// Retry when no response head came in time.
    pub on_timeout: bool,
    /// Retry on these upstream statuses: bit `n` is status 500 + n.
    pub on_status: u128,
}

impl Retries {
    /// Whether an upstream's answer with `status` is retried.
    pub fn on(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.on_status & (1 << (status - 500)) != 0
    }
}

/// Per-route canary-health settings; `None` keeps the detector's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CanaryHealth {
    /// The S at which the canary is judged bad.
    pub threshold: Option<f64>,
    /// Absolute error-rate SLO, 0 to 1.
    pub max_error_rate: Option<f64>,
    /// Absolute latency SLO, milliseconds.
    pub max_latency_ms: Option<f64>,
    /// The baseline's long window, in 100 ms ticks.
    pub long_window_ticks: Option<usize>,
    /// The baseline's short window, in ticks.
    pub short_window_ticks: Option<usize>,
    /// Requests the short window needs to raise p0.
    pub short_window_min_requests: Option<u64>,
    /// The baseline's burst window, in ticks.
    pub burst_window_ticks: Option<usize>,
    /// Requests the burst window needs to raise p0.
    pub burst_window_min_requests: Option<u64>,
    /// Standard errors added to the long window's rate.
    pub margin_std_errors: Option<f64>,
    /// The least p0.
    pub p0_floor: Option<f64>,
    /// Ticks the canary's counts wait before they are judged.
    pub judge_delay_ticks: Option<usize>,
    /// Slow error arm's ratio.
    pub slow_arm_ratio: Option<f64>,
    /// Slow error arm's least increase.
    pub slow_arm_min_increase: Option<f64>,
    /// Fast error arm's ratio.
    pub fast_arm_ratio: Option<f64>,
    /// Fast error arm's least increase.
    pub fast_arm_min_increase: Option<f64>,
    /// Latency arm's p0.
    pub latency_p0: Option<f64>,
    /// Latency arm's p1.
    pub latency_p1: Option<f64>,
    /// Latency threshold's ratio over the baseline's p99.
    pub latency_ratio: Option<f64>,
    /// Latency threshold's least increase over the baseline's p99, ms.
    pub latency_min_increase_ms: Option<f64>,
    /// Statuses that count as errors (see [`ErrorStatuses`]); `None`: 5xx.
    pub error_statuses: Option<ErrorStatuses>,
}

impl CanaryHealth {
    /// The statuses that count as errors for this route.
    pub fn error_statuses(&self) -> ErrorStatuses {
        self.error_statuses.unwrap_or_default()
    }
}

/// A set of statuses from 400 to 655: bit `n` of word `n / 64` is status
/// 400 + n. The default is every 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorStatuses(pub [u64; 4]);

impl ErrorStatuses {
    /// The empty set.
    pub const NONE: ErrorStatuses = ErrorStatuses([0; 4]);

    /// Adds `low..=high` (within 400..=599).
    pub fn add(&mut self, low: u16, high: u16) {
        for status in low.max(400)..=high.min(599) {
            let n = usize::from(status - 400);
            self.0[n / 64] |= 1 << (n % 64);
        }
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        let Some(n) = status.checked_sub(400).map(usize::from) else {
            return false;
        };
        n < 256 && self.0[n / 64] & (1 << (n % 64)) != 0
    }
}

impl Default for ErrorStatuses {
    fn default() -> Self {
        let mut set = ErrorStatuses::NONE;
        set.add(500, 599);
        set
    }
}

/// All given matchers must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Host, lower case, without port.
    pub host: Option<HostMatch>,
    /// Path rule.
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty means any.
    pub methods: Vec<String>,
    /// Lower-case header name and the exact value required (`None`: present).
    pub headers: Vec<(String, Option<String>)>,
}

/// A host rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The whole host.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any host that ends with it.
    Suffix(String),
}

/// A path rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path (without query) is exactly this.
    Exact(String),
}

/// A weighted split between pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The pool that takes everything in a fallback.
    pub baseline: String,
    /// Pool name and basis points. The baseline is last, the others in name
    /// order, so that raising a canary's weight only moves sticky users into
    /// it (its bucket range grows at the end next to the baseline's).
    pub weights: Vec<(String, u32)>,
}

impl Split {
    /// A split from pool weights, ordered as [`Split::weights`] requires
    /// (the others by name, the baseline last). The caller has checked the
    /// weights (see [`Split::check_weights`]).
    pub fn from_weights(
        baseline: &str,
        weights: &std::collections::BTreeMap<String, u32>,
    ) -> Split {
        let mut ordered: Vec<(String, u32)> = weights
            .iter()
            .filter(|(pool, _)| pool.as_str() != baseline)
            .map(|(pool, weight)| (pool.clone(), *weight))
            .collect();
        ordered.push((
            baseline.to_string(),
            weights.get(baseline).copied().unwrap_or(0),
        ));
        Split {
            baseline: baseline.to_string(),
            weights: ordered,
        }
    }

    /// The pool names of this split, in name order.
    pub fn pools(&self) -> std::collections::BTreeSet<&str> {
        self.weights.iter().map(|(pool, _)| pool.as_str()).collect()
    }

    /// Checks new weights for this split's pools: each a pool of the split,
    /// each 0 to 10,000 basis points, summing to 10,000. Pools left out get
    /// 0. Returns the full map, or the offending pool (`None`: the sum)
    /// with a reason.
    pub fn check_weights(
        &self,
        weights: &std::collections::BTreeMap<String, i64>,
    ) -> Result<std::collections::BTreeMap<String, u32>, (Option<String>, String)> {
        let mut full: std::collections::BTreeMap<String, u32> = self
            .weights
            .iter()
            .map(|(pool, _)| (pool.clone(), 0))
            .collect();
        let mut sum = 0i64;
        for (pool, weight) in weights {
            let Some(slot) = full.get_mut(pool) else {
                return Err((
                    Some(pool.clone()),
                    format!("pool {pool:?} is not in this route's split"),
                ));
            };
            if !(0..=i64::from(TOTAL_WEIGHT)).contains(weight) {
                return Err((
                    Some(pool.clone()),
                    format!("weight {weight} is outside 0..=10000 basis points"),
                ));
            }
            *slot = *weight as u32;
            sum += weight;
        }
        if sum != i64::from(TOTAL_WEIGHT) {
            return Err((
                None,
                format!("weights sum to {sum} basis points, expected 10000 (100%)"),
            ));
        }
        Ok(full)
    }

    /// The weights as a map.
    pub fn weight_map(&self) -> std::collections::BTreeMap<String, u32> {
        self.weights.iter().cloned().collect()
    }

    /// The weight of one pool, 0 when the pool is not in the split.
    pub fn weight(&self, pool: &str) -> u32 {
        self.weights
            .iter()
            .find(|(name, _)| name == pool)
            .map_or(0, |(_, weight)| *weight)
    }
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A request header (lower case).
    Header(String),
    /// A cookie; with `set`, the proxy gives a random id to clients without one.
    Cookie {
        /// Cookie name.
        name: String,
        /// Whether to set it when absent.
        set: bool,
    },
}

/// The default override header.
pub const DEFAULT_OVERRIDE_HEADER: &str = "x-switchyard-pool";

/// Where a tester names the pool to pin a request to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Header name (lower case).
    pub header: Option<String>,
    /// Cookie name.
    pub cookie: Option<String>,
}

/// Timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to an endpoint.
    pub connect: Duration,
    /// From request sent to response head received.
    pub response_header: Duration,
    /// A client's whole request head.
    pub request_header: Duration,
    /// Idle keep-alive connections.
    pub idle: Duration,
    /// Shutdown drain.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            request_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in a request head; over it, 431.
    pub max_header_bytes: usize,
    /// Header fields; over it, 431.
    pub max_headers: usize,
    /// Bytes in the request target; over it, 414.
    pub max_uri_bytes: usize,
    /// Bytes in a request body; over it, 413.
    pub max_body_bytes: u64,
    /// Requests served on one client connection: the last one's answer
    /// closes it (HTTP/1.1 `Connection: close`, HTTP/2 `GOAWAY`), as
    /// nginx's `keepalive_requests` and Envoy's
    /// `max_requests_per_connection`. 0: no limit.
    pub max_requests_per_connection: u64,
}

impl Limits {
    /// Whether the `served`th request on a connection is its last.
    pub fn is_last_request(&self, served: u64) -> bool {
        self.max_requests_per_connection != 0 && served >= self.max_requests_per_connection
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024 * 1024,
            max_requests_per_connection: 0,
        }
    }
}

/// Prints the routing table the config describes, for `switchyard check`.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|a| {
                if self.tls.iter().any(|t| t.address == *a) {
                    format!("{a} (tls)")
                } else {
                    a.to_string()
                }
            })
            .collect();
        writeln!(f, "listeners: {}", listeners.join(", "))?;
        writeln!(f, "pools:")?;
        for pool in &self.pools {
            let endpoints: Vec<String> = pool
                .endpoints
                .iter()
                .map(|e| format!("{} (weight {})", e.address, e.weight))
                .collect();
            let tls = match &pool.tls {
                Some(tls) => format!(
                    " (tls{})",
                    tls.server_name
                        .as_ref()
                        .map_or_else(String::new, |name| format!(" to {name}"))
                ),
                None => String::new(),
            };
            writeln!(
                f,
                "  {:<12} {:<18} {}{tls}",
                pool.name,
                pool.policy.name(),
                endpoints.join(", ")
            )?;
        }
        let names = self.endpoint_names();
        if !names.is_empty() {
            let by = match self.dns.servers.as_slice() {
                [] => "the system's resolver".to_string(),
                servers => {
                    let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
                    format!("name servers {}", servers.join(", "))
                }
            };
            writeln!(
                f,
                "endpoint names ({}) resolved by {by}, again every {:?}",
                names.join(", "),
                self.dns.refresh
            )?;
        }
        if let Some(path) = &self.access_log {
            writeln!(f, "access log: {}", path.display())?;
        }
        writeln!(f, "routes (first match wins):")?;
        for (index, route) in self.routes.iter().enumerate() {
            let weights: Vec<String> = route
                .split
                .weights
                .iter()
                .map(|(pool, w)| {
                    let mark = if *pool == route.split.baseline {
                        " (baseline)"
                    } else {
                        ""
                    };
                    format!("{pool} {}.{:02}%{mark}", w / 100, w % 100)
                })
                .collect();
            writeln!(
                f,
                "  {}. {:<12} {:<40} -> {}",
                index + 1,
                route.name,
                route.matcher.to_string(),
                weights.join(", ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match &self.host {
            Some(HostMatch::Exact(host)) => parts.push(format!("host={host}")),
            Some(HostMatch::Suffix(suffix)) => parts.push(format!("host=*{suffix}")),
            None => {}
        }
        match &self.path {
            Some(PathMatch::Prefix(prefix)) => parts.push(format!("path={prefix}*")),
            Some(PathMatch::Exact(path)) => parts.push(format!("path={path}")),
            None => {}
        }
        if !self.methods.is_empty() {
            parts.push(format!("method={}", self.methods.join("|")));
        }
        for (name, value) in &self.headers {
            parts.push(format!("{name}={}", value.as_deref().unwrap_or("*")));
        }
        if parts.is_empty() {
            parts.push("any request".to_string());
        }
        f.write_str(&parts.join(" "))
    }
}
