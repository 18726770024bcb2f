//! The config file as written: serde types that mirror the JSON one to one.
//!
//! Nothing here is trusted yet; [`crate::validate`] turns a [`RawConfig`]
//! into a [`crate::Config`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole config file, as parsed and before any checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Addresses the data plane accepts clients on.
    pub listeners: Vec<RawListener>,
    /// Upstream pools by name.
    pub pools: BTreeMap<String, RawPool>,
    /// Routes, tried in order; the first that matches serves the request.
    pub routes: Vec<RawRoute>,
    /// Timeouts; each has a safe default.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Request limits; each has a safe default.
    #[serde(default)]
    pub limits: RawLimits,
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
}

/// An endpoint, either a bare address or an address with a weight.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
}

/// Weights in basis points (0 to 10,000, summing to 10,000) and the baseline pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// The pool that receives the traffic in a fallback: stable, or blue.
    pub baseline: String,
    /// Pool name to basis points.
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
}
