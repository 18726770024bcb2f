//! Endpoints given by host name (`api.internal:8080`), resolved as Envoy's
//! `STRICT_DNS` resolves them: every address a name resolves to is an
//! endpoint of its pool, and the control plane resolves names again every
//! `dns.refresh`, building a table when an answer changed.
//!
//! Names are resolved outside the table build, so that a table built for
//! a weight change, a rollout step or a fallback takes the addresses
//! already known and never waits on, or fails with, a name server.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use switchyard_config::{Config, Dns};

use crate::ForwardError;

/// How long one question to the name servers may take, and how often it
/// is asked before the name counts as failed.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;

/// What each endpoint name resolved to, sorted, by the name as configured
/// (`host:port`). Endpoints given as IP addresses are not in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses(HashMap<String, Arc<[SocketAddr]>>);

impl Addresses {
    /// What `name` resolved to.
    pub fn get(&self, name: &str) -> Option<&[SocketAddr]> {
        self.0.get(name).map(|addrs| &**addrs)
    }

    /// Sets what `name` resolves to.
    pub fn insert(&mut self, name: &str, addrs: Arc<[SocketAddr]>) {
        self.0.insert(name.to_string(), addrs);
    }

    /// Resolves every endpoint name of `config` with its `dns` settings:
    /// the first that fails is the error.
    pub async fn resolve(config: &Config) -> Result<Addresses, ForwardError> {
        let resolver = Resolver::new(&config.dns);
        let names = config.endpoint_names();
        let mut addresses = Addresses::default();
        // Past the resolver's own timeouts: a system lookup has none.
        let within = QUERY_TIMEOUT * (2 * QUERY_ATTEMPTS as u32 + 1);
        for (name, found) in names.iter().zip(resolver.lookup_all(&names, within).await) {
            let addrs = found.map_err(|source| unresolved(config, name, source))?;
            addresses.insert(name, addrs);
        }
        Ok(addresses)
    }

    /// [`Addresses::resolve`] for callers that may block (a start, `check`):
    /// the system's resolver is called as it is; name servers are asked
    /// from a runtime of its own, on a thread of its own.
    pub fn resolve_blocking(config: &Config) -> Result<Addresses, ForwardError> {
        if config.endpoint_names().is_empty() {
            return Ok(Addresses::default());
        }
        if config.dns.servers.is_empty() {
            let mut addresses = Addresses::default();
            for name in config.endpoint_names() {
                let addrs =
                    system_lookup(name).map_err(|source| unresolved(config, name, source))?;
                addresses.insert(name, addrs);
            }
            return Ok(addresses);
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| unresolved(config, "", source))?
                        .block_on(Addresses::resolve(config))
                })
                .join()
                .expect("resolving does not panic")
        })
    }
}

/// The error for `name`, placed at the first endpoint that has it.
fn unresolved(config: &Config, name: &str, source: io::Error) -> ForwardError {
    let pool = config
        .pools
        .iter()
        .find(|pool| pool.endpoints.iter().any(|e| e.address == name))
        .map_or_else(String::new, |pool| pool.name.clone());
    ForwardError::Resolve {
        pool,
        address: name.to_string(),
        source,
    }
}

/// Asks the configured name servers, or the system's resolver.
pub struct Resolver {
    /// None: the system's resolver.
    servers: Option<TokioResolver>,
}

impl Resolver {
    /// A resolver for one round of lookups on the current runtime (its
    /// sockets belong to that runtime).
    pub fn new(dns: &Dns) -> Resolver {
        if dns.servers.is_empty() {
            return Resolver { servers: None };
        }
        let mut config = ResolverConfig::new();
        for server in &dns.servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            // Answers too long for UDP are asked again over TCP.
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        let mut options = ResolverOpts::default();
        options.timeout = QUERY_TIMEOUT;
        options.attempts = QUERY_ATTEMPTS;
        // IPv4 addresses, or IPv6 ones if a name has none (as nginx with
        // `ipv6=off` falls short of, and Envoy's default `V4_PREFERRED`).
        options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        // The configured servers answer, not `/etc/hosts` (as nginx's
        // `resolver`).
        options.use_hosts_file = ResolveHosts::Never;
        // Each round asks again: a cached answer would hide a change until
        // its TTL ran out.
        options.cache_size = 0;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        Resolver {
            servers: Some(resolver),
        }
    }

    /// [`Resolver::lookup`] for each of `names` at once, each given up
    /// after `within`: a name whose server is slow or silent holds up
    /// neither the others nor the round for longer.
    pub async fn lookup_all<S: AsRef<str>>(
        &self,
        names: &[S],
        within: Duration,
    ) -> Vec<io::Result<Arc<[SocketAddr]>>> {
        let lookups = names.iter().map(|name| async move {
            tokio::time::timeout(within, self.lookup(name.as_ref()))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {within:?}"),
                    ))
                })
        });
        futures_util::future::join_all(lookups).await
    }

    /// The addresses `name` (`host:port`) resolves to, sorted; an error
    /// when it resolves to none.
    pub async fn lookup(&self, name: &str) -> io::Result<Arc<[SocketAddr]>> {
        let Some(resolver) = &self.servers else {
            let name = name.to_string();
            return tokio::task::spawn_blocking(move || system_lookup(&name))
                .await
                .map_err(io::Error::other)?;
        };
        let (host, port) = name
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not host:port"))?;
        // A trailing dot: the name as given, not under a search domain.
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let found = resolver.lookup_ip(fqdn).await.map_err(io::Error::other)?;
        found_addresses(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }
}

fn system_lookup(name: &str) -> io::Result<Arc<[SocketAddr]>> {
    found_addresses(name.to_socket_addrs()?.collect())
}

fn found_addresses(mut addrs: Vec<SocketAddr>) -> io::Result<Arc<[SocketAddr]>> {
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "name resolved to no address",
        ));
    }
    Ok(addrs.into())
}
