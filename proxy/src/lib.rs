//! Switchyard's data plane: accepts HTTP/1.1 and h2c clients, routes each
//! request by a weighted split between upstream pools, and forwards it.
//!
//! - `route`: the immutable routing table behind one `ArcSwap` ([`Routes`]),
//!   route lookup, pool choice (weights, sticky buckets, override), endpoint
//!   choice.
//! - `listener`: worker threads, sockets and hyper's server settings ([`Server`]).
//! - `fast`: the HTTP/1.1 fast path: common requests proxied without hyper.
//! - `forward`: one request's path through the proxy (hyper's side).
//! - `h2`: the HTTP/2 server (h2c and h2 over TLS), with its HPACK.
//! - `raw_upstream`: HTTP/2 requests sent upstream on the fast path's raw
//!   connections.
//! - `client_io`: the client socket with head/idle timeouts (408) and the
//!   Content-Length/Transfer-Encoding check hyper does not make.
//! - `upstream`: pooled upstream HTTP/1.1 connections, per worker.
//! - `health`: an endpoint's health: passive outlier ejection and the
//!   active checks' verdict.
//! - `health_check`: active HTTP health checks, on a thread of their own.
//! - `tls`: TLS termination (SNI certificates, hot reload) and TLS to upstreams.
//! - `headers`: hop-by-hop removal and `X-Forwarded-*` / `Forwarded`.
//! - `stats`: Prometheus metrics and the per-pool 100 ms outcome ticks.
//! - `body`: request and response body types.
//! - `error`: [`ForwardError`] and how each is answered.

pub mod access_log;
mod body;
mod client_io;
pub mod dns;
mod error;
mod fast;
mod forward;
mod h2;
mod headers;
pub mod health;
pub mod health_check;
mod listener;
mod raw_upstream;
pub mod route;
pub mod stats;
pub mod tls;
mod upstream;

pub use client_io::hyper_refusal;
pub use error::ForwardError;
pub use headers::{has_token, strip_hop_headers};
pub use listener::{Listen, Listeners, PreparedListeners, Server};
pub use route::{RouteTable, Routes};
pub use stats::Metrics;
