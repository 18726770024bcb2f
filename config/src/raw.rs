//! The config file as written: serde types that mirror the JSON one to one.
//!
//! Nothing here is trusted yet; [`crate::validate`] turns a [`RawConfig`]
//! into a [`crate::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The whole config file, as parsed and before any checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Addresses the data plane accepts clients on.
    pub listeners: Vec<RawListener>,
    /// Upstream pools by name.
    #[serde(deserialize_with = "unique_keys")]
    pub pools: BTreeMap<String, RawPool>,
    /// Routes, tried in order; the first that matches serves the request.
    pub routes: Vec<RawRoute>,
    /// Timeouts; each has a safe default.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Request limits; each has a safe default.
    #[serde(default)]
    pub limits: RawLimits,
    /// The admin API's listener; command-line flags win over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    /// How endpoints given by host name are resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<RawDns>,
    /// Where each request answered is logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<RawAccessLog>,
}

/// The access log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// The file lines are appended to (`/dev/stdout` for the console).
    pub path: String,
}

/// How endpoints given by host name are resolved.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Name servers (`ip` or `ip:port`); none: the system's resolver.
    #[serde(default)]
    pub servers: Vec<String>,
    /// How often each name is resolved again (`5s`).
    #[serde(default)]
    pub refresh: Option<String>,
}

/// The admin API's listener.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` (default `127.0.0.1:9901`).
    #[serde(default)]
    pub address: Option<String>,
    /// Serve the admin API over TLS.
    #[serde(default)]
    pub tls: Option<RawAdminTls>,
}

/// The admin listener's certificate, and the CA its clients' certificates
/// must come from (mutual TLS) if given.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// PEM file of the CAs that issue admin clients' certificates; when
    /// given, a client without such a certificate is refused.
    #[serde(default)]
    pub client_ca_file: Option<String>,
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `ip:port`, for example `0.0.0.0:8080`.
    pub address: String,
    /// Terminate TLS on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawListenerTls>,
}

/// TLS termination: the certificates a listener offers, chosen by SNI.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// One or more certificate/key pairs.
    pub certificates: Vec<RawCertificate>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// SNI names this certificate serves (`api.example.com`,
    /// `*.example.com`); empty: the DNS names in the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Served to clients that send no SNI name, or one no certificate has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// TLS from the proxy to a pool's endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// The name sent as SNI and verified in the endpoint's certificate;
    /// default: the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file of the CA certificates to trust; default: the webpki roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Client certificate chain (PEM) presented to the endpoint (mTLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<String>,
}

/// A named set of interchangeable upstream endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// The endpoints, as `"host:port"` or `{"address": "host:port", "weight": 3}`.
    pub endpoints: Vec<RawEndpoint>,
    /// How an endpoint is chosen inside the pool.
    #[serde(default)]
    pub policy: Option<String>,
    /// Speak TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawUpstreamTls>,
    /// Active HTTP health checks of each endpoint; none when absent.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Passive outlier ejection; defaults apply when absent.
    #[serde(default)]
    pub outlier_detection: Option<RawOutlierDetection>,
}

/// An active HTTP health check, like HAProxy's `option httpchk` with
/// `inter`, `rise` and `fall`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// The path requested with GET, such as `/healthz`.
    pub path: String,
    /// The Host sent; the endpoint's address when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Time between two checks of one endpoint (default `2s`).
    #[serde(default)]
    pub interval: Option<String>,
    /// A check without a response head in this time fails (default `1s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Statuses that pass: codes (`204`) or classes (`"2xx"`); default 2xx and 3xx.
    #[serde(default)]
    pub expected_status: Vec<RawStatus>,
    /// Passed checks in a row that bring a down endpoint back (default 2).
    #[serde(default)]
    pub rise: Option<i64>,
    /// Failed checks in a row that take an endpoint down (default 3).
    #[serde(default)]
    pub fall: Option<i64>,
}

/// A status code or a class such as `"2xx"`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RawStatus {
    /// One code.
    Code(i64),
    /// A class, `"1xx"` to `"5xx"`.
    Class(String),
}

/// Passive outlier ejection, like Envoy's `outlier_detection`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Gateway failures in a row that eject an endpoint (default 5; 0 turns ejection off).
    #[serde(default)]
    pub consecutive_failures: Option<i64>,
    /// The first ejection's length; each further one doubles it (default `10s`).
    #[serde(default)]
    pub base_ejection: Option<String>,
    /// No ejection lasts longer (default `5m`).
    #[serde(default)]
    pub max_ejection: Option<String>,
    /// At most this share of the pool is ejected at once, but always at
    /// least one endpoint (default 50).
    #[serde(default)]
    pub max_ejected_percent: Option<i64>,
}

/// An endpoint, either a bare address or an address with a weight.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    /// `"host:port"`, weight 1.
    Address(String),
    /// `{"address": "host:port", "weight": 3}`.
    Weighted(RawWeightedEndpoint),
}

/// An endpoint with an explicit weight.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedEndpoint {
    /// `host:port`.
    pub address: String,
    /// Relative weight inside the pool, 1 to 1000.
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

/// A route: what it matches and where it sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name, used by the admin API and in metrics.
    pub name: String,
    /// What a request must look like to take this route; empty matches all.
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    /// The weighted split between pools.
    pub split: RawSplit,
    /// Keeps a user in one pool across requests.
    #[serde(default)]
    pub sticky: Option<RawSticky>,
    /// Lets a tester pin a request to a pool; on by default, `false` turns it off.
    #[serde(default, rename = "override")]
    pub pool_override: Option<RawOverride>,
    /// Canary-health settings for this route; defaults apply when absent.
    #[serde(default)]
    pub canary_health: Option<RawCanaryHealth>,
    /// Retries of requests that were sent; none when absent.
    #[serde(default)]
    pub retries: Option<RawRetries>,
    /// `false` serves the route on the general (hyper) path only: a switch
    /// to turn the fast path off for one route. On when absent.
    #[serde(default)]
    pub fast_path: Option<bool>,
}

/// When a request that reached an upstream is sent again, to another
/// endpoint of the same pool. Only idempotent methods whose body was read
/// whole are retried (as Envoy and nginx's `proxy_next_upstream` do).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first try, 1 to 5.
    pub attempts: i64,
    /// What is retried: `reset`, `timeout`, `5xx`, or a status `502`, `503`, `504`.
    pub on: Vec<String>,
}

/// Per-route canary-health settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanaryHealth {
    /// The S at which the canary is judged bad (default 20).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// An absolute error-rate SLO (0 to 1): the canary falls back above it
    /// even when the baseline fails as much.
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// An absolute latency SLO in milliseconds.
    #[serde(default)]
    pub max_latency_ms: Option<f64>,
    /// The baseline's long window (default `60s`), a multiple of 100 ms.
    #[serde(default)]
    pub long_window: Option<String>,
    /// The baseline's short window (default `5s`).
    #[serde(default)]
    pub short_window: Option<String>,
    /// Requests the short window needs to raise p0 (default 100).
    #[serde(default)]
    pub short_window_min_requests: Option<i64>,
    /// The baseline's burst window (default `1s`).
    #[serde(default)]
    pub burst_window: Option<String>,
    /// Requests the burst window needs to raise p0 (default 50).
    #[serde(default)]
    pub burst_window_min_requests: Option<i64>,
    /// Standard errors added to the baseline's long-window rate (default 2).
    #[serde(default)]
    pub margin_std_errors: Option<f64>,
    /// The least p0 (default 0.001).
    #[serde(default)]
    pub p0_floor: Option<f64>,
    /// How long the canary's counts wait to be judged against the baseline
    /// over the same interval (default `300ms`).
    #[serde(default)]
    pub judge_delay: Option<String>,
    /// Slow error arm: p1 = max(ratio × p0, p0 + min_increase); ratio (default 2).
    #[serde(default)]
    pub slow_arm_ratio: Option<f64>,
    /// Slow error arm's least increase (default 0.01).
    #[serde(default)]
    pub slow_arm_min_increase: Option<f64>,
    /// Fast error arm's ratio (default 5).
    #[serde(default)]
    pub fast_arm_ratio: Option<f64>,
    /// Fast error arm's least increase (default 0.20).
    #[serde(default)]
    pub fast_arm_min_increase: Option<f64>,
    /// Latency arm: the share of slow answers tolerated (default 0.01).
    #[serde(default)]
    pub latency_p0: Option<f64>,
    /// Latency arm: the share of slow answers that is bad (default 0.05).
    #[serde(default)]
    pub latency_p1: Option<f64>,
    /// Slow means over max(ratio × baseline p99, p99 + min_increase_ms): ratio (default 1.5).
    #[serde(default)]
    pub latency_ratio: Option<f64>,
    /// The slow threshold's least increase over the baseline's p99, ms (default 10).
    #[serde(default)]
    pub latency_min_increase_ms: Option<f64>,
    /// Which answers count as errors: codes (`429`) or classes (`"5xx"`),
    /// 400 to 599; default `["5xx"]`, whether the upstream or the proxy
    /// (502, 503, 504 for a pool it could not reach) answered.
    #[serde(default)]
    pub error_statuses: Vec<RawStatus>,
}

/// Request matchers; all given ones must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// `api.example.com` or `*.example.com`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, segment-agnostic like nginx's `location /api`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path_exact: Option<String>,
    /// Allowed methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name to required value; `null` or `"*"` means present with any value.
    #[serde(default, deserialize_with = "unique_keys")]
    pub headers: BTreeMap<String, Option<String>>,
}

/// Weights in basis points (0 to 10,000, summing to 10,000) and the baseline pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// The pool that receives the traffic in a fallback: stable, or blue.
    pub baseline: String,
    /// Pool name to basis points.
    #[serde(deserialize_with = "unique_keys")]
    pub weights: BTreeMap<String, i64>,
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// A request header carrying the key, such as `x-user-id`.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie carrying the key.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Set the cookie to a random id when the request has none.
    #[serde(default)]
    pub set_cookie: bool,
}

/// The override: `true`/`false`, or where the pool name comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RawOverride {
    /// `true` keeps the default header, `false` disables the override.
    Enabled(bool),
    /// A custom header and/or cookie.
    Custom(RawOverrideSource),
}

/// A custom override source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrideSource {
    /// Header that names the pool.
    #[serde(default)]
    pub header: Option<String>,
    /// Cookie that names the pool.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// Timeouts as human durations (`2s`, `500ms`, `1m`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to an upstream endpoint.
    pub connect: Option<String>,
    /// From sending the request to the upstream's response head.
    pub response_header: Option<String>,
    /// A client must send a whole request head within this.
    pub request_header: Option<String>,
    /// An idle keep-alive connection (client or upstream) is closed after this.
    pub idle: Option<String>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Option<String>,
}

/// Request limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Bytes in a request head (request line and fields).
    pub max_header_bytes: Option<i64>,
    /// Number of header fields.
    pub max_headers: Option<i64>,
    /// Bytes in the request target.
    pub max_uri_bytes: Option<i64>,
    /// Bytes in a request body.
    pub max_body_bytes: Option<i64>,
    /// Requests served on one client connection before it is closed
    /// (nginx's `keepalive_requests`); 0: no limit.
    pub max_requests_per_connection: Option<i64>,
}

/// A map whose keys must differ: serde keeps the last of two equal keys,
/// and a pool, weight or header rule given twice would silently replace
/// the first. For `#[serde(deserialize_with)]`; the admin API's bodies use
/// it too.
pub fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("{key:?} is given twice")));
                }
                out.insert(key, map.next_value()?);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique(PhantomData))
}

// One-of types, told apart by the JSON type of their value (not
// `#[serde(untagged)]`, whose error names neither the field at fault nor
// its line).

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an endpoint: "host:port" or {"address": "host:port", "weight": N}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                Ok(RawEndpoint::Address(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawEndpoint, A::Error> {
                RawWeightedEndpoint::deserialize(MapAccessDeserializer::new(map))
                    .map(RawEndpoint::Weighted)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStatus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a status code (503) or class ("5xx")"#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawStatus, E> {
                Ok(RawStatus::Code(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawStatus, E> {
                i64::try_from(v)
                    .map(RawStatus::Code)
                    .map_err(|_| E::custom(format_args!("{v} is not a status code")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatus, E> {
                Ok(RawStatus::Class(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawOverride {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOverride;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"true, false or {"header": …, "cookie": …}"#)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawOverride, E> {
                Ok(RawOverride::Enabled(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawOverride, A::Error> {
                RawOverrideSource::deserialize(MapAccessDeserializer::new(map))
                    .map(RawOverride::Custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}
