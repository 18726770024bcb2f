//! Turns a [`RawConfig`] into a [`Config`], or says which field is wrong,
//! where, and why. Stops at the first problem.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::locate::{locate, render, Segment};
use std::path::PathBuf;

use crate::model::{
    AdminListener, AdminTls, CanaryHealth, CertificateFiles, Config, Dns, Endpoint, ErrorStatuses,
    HealthCheck, HostMatch, Limits, ListenerTls, Match, OutlierDetection, Override, PathMatch,
    Policy, Pool, Retries, Route, Split, Sticky, Timeouts, UpstreamTls, DEFAULT_OVERRIDE_HEADER,
    TOTAL_WEIGHT,
};
use crate::raw::{
    RawAdmin, RawCanaryHealth, RawConfig, RawDns, RawEndpoint, RawHealthCheck, RawLimits,
    RawListenerTls, RawMatch, RawOutlierDetection, RawOverride, RawRetries, RawRoute, RawStatus,
    RawSticky, RawTimeouts, RawUpstreamTls,
};

/// Parses JSON text and validates it. Errors carry line, column and path.
pub fn parse(source: &str) -> Result<Config, ConfigError> {
    let raw = parse_raw(source)?;
    validate(&raw, source)
}

/// Parses JSON text into a [`RawConfig`] without validating values.
pub fn parse_raw(source: &str) -> Result<RawConfig, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(source);
    let raw: RawConfig = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        // The segments serde could name (an unknown one is left out).
        let segments: Vec<Segment> = err
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Enum { variant } => {
                    Some(Segment::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let path = match segments.is_empty() {
            // Nothing named yet (the text ended before a field did).
            true => ".".to_string(),
            false => render(&segments),
        };
        let inner = err.into_inner();
        ConfigError::Parse {
            line: inner.line(),
            // serde_json counts 0 at the start of a line (an early end).
            column: inner.column().max(1),
            path,
            reason: strip_position(&inner.to_string()),
        }
    })?;
    deserializer.end().map_err(|err| ConfigError::Parse {
        line: err.line(),
        column: err.column().max(1),
        path: ".".to_string(),
        reason: strip_position(&err.to_string()),
    })?;
    Ok(raw)
}

/// serde_json appends " at line L column C"; the error prints them itself.
/// A control character the message quotes from the text (an unknown field
/// named "a\nb") is escaped: an error stays one line.
fn strip_position(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(index) => &message[..index],
        None => message,
    };
    message
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Validates a parsed config. `source` is the text it came from, used only
/// to find the line of a bad field.
pub fn validate(raw: &RawConfig, source: &str) -> Result<Config, ConfigError> {
    Validator { source }.config(raw)
}

struct Validator<'a> {
    source: &'a str,
}

type Path = Vec<Segment>;

fn key(name: &str) -> Segment {
    Segment::Key(name.to_string())
}

fn with(path: &Path, segment: Segment) -> Path {
    let mut next = path.clone();
    next.push(segment);
    next
}

impl Validator<'_> {
    fn fail<T>(&self, path: &Path, reason: impl Into<String>) -> Result<T, ConfigError> {
        let (line, column) = locate(self.source, path);
        Err(ConfigError::Invalid {
            line,
            column,
            path: render(path),
            reason: reason.into(),
        })
    }

    fn config(&self, raw: &RawConfig) -> Result<Config, ConfigError> {
        let root: Path = Vec::new();
        let listeners_path = with(&root, key("listeners"));
        if raw.listeners.is_empty() {
            return self.fail(&listeners_path, "at least one listener is required");
        }
        let mut listeners = Vec::new();
        let mut tls = Vec::new();
        for (index, listener) in raw.listeners.iter().enumerate() {
            let path = with(
                &with(&listeners_path, Segment::Index(index)),
                key("address"),
            );
            let address: SocketAddr = match listener.address.parse() {
                Ok(address) => address,
                Err(_) => {
                    return self.fail(
                        &path,
                        format!(
                            "{:?} is not an ip:port address (such as 0.0.0.0:8080)",
                            listener.address
                        ),
                    )
                }
            };
            if listeners.contains(&address) {
                return self.fail(&path, format!("listener {address} is given twice"));
            }
            listeners.push(address);
            if let Some(raw_tls) = &listener.tls {
                let tls_path = with(&with(&listeners_path, Segment::Index(index)), key("tls"));
                tls.push(self.listener_tls(&tls_path, address, raw_tls)?);
            }
        }

        let pools_path = with(&root, key("pools"));
        if raw.pools.is_empty() {
            return self.fail(&pools_path, "at least one pool is required");
        }
        let mut pools = Vec::new();
        for (name, raw_pool) in &raw.pools {
            let path = with(&pools_path, key(name));
            self.name(&path, name, "pool")?;
            let endpoints_path = with(&path, key("endpoints"));
            if raw_pool.endpoints.is_empty() {
                return self.fail(
                    &endpoints_path,
                    format!("pool {name:?} needs at least one endpoint"),
                );
            }
            let mut endpoints = Vec::new();
            for (index, raw_endpoint) in raw_pool.endpoints.iter().enumerate() {
                let path = with(&endpoints_path, Segment::Index(index));
                let (address, weight) = match raw_endpoint {
                    RawEndpoint::Address(address) => (address.clone(), 1),
                    RawEndpoint::Weighted(weighted) => (weighted.address.clone(), weighted.weight),
                };
                self.host_port(&path, &address)?;
                if !(1..=1000).contains(&weight) {
                    return self.fail(
                        &with(&path, key("weight")),
                        format!("endpoint weight {weight} is outside 1..=1000"),
                    );
                }
                if endpoints.iter().any(|e: &Endpoint| e.address == address) {
                    return self.fail(
                        &path,
                        format!("endpoint {address} is listed twice in pool {name:?}"),
                    );
                }
                endpoints.push(Endpoint {
                    address,
                    weight: weight as u32,
                });
            }
            let policy = match raw_pool.policy.as_deref() {
                None | Some("round_robin") => Policy::RoundRobin,
                Some("least_outstanding") => Policy::LeastOutstanding,
                Some(other) => {
                    return self.fail(
                        &with(&path, key("policy")),
                        format!(
                            "unknown policy {other:?}, expected \"round_robin\" or \"least_outstanding\""
                        ),
                    )
                }
            };
            let health_check = match &raw_pool.health_check {
                None => None,
                Some(check) => Some(self.health_check(&with(&path, key("health_check")), check)?),
            };
            let outlier = self.outlier(
                &with(&path, key("outlier_detection")),
                raw_pool.outlier_detection.as_ref(),
            )?;
            let tls = match &raw_pool.tls {
                Some(raw_tls) => Some(self.upstream_tls(&with(&path, key("tls")), raw_tls)?),
                None => None,
            };
            pools.push(Pool {
                name: name.clone(),
                endpoints,
                policy,
                health_check,
                outlier,
                tls,
            });
        }

        let routes_path = with(&root, key("routes"));
        if raw.routes.is_empty() {
            return self.fail(&routes_path, "at least one route is required");
        }
        let mut routes: Vec<Route> = Vec::new();
        for (index, raw_route) in raw.routes.iter().enumerate() {
            let path = with(&routes_path, Segment::Index(index));
            let route = self.route(&path, raw_route, raw)?;
            if routes.iter().any(|r| r.name == route.name) {
                return self.fail(
                    &with(&path, key("name")),
                    format!("route name {:?} is used twice", route.name),
                );
            }
            routes.push(route);
        }

        Ok(Config {
            listeners,
            tls,
            pools,
            routes,
            timeouts: self.timeouts(&with(&root, key("timeouts")), &raw.timeouts)?,
            limits: self.limits(&with(&root, key("limits")), &raw.limits)?,
            admin: match &raw.admin {
                None => AdminListener::default(),
                Some(admin) => self.admin(&with(&root, key("admin")), admin)?,
            },
            dns: match &raw.dns {
                None => Dns::default(),
                Some(dns) => self.dns(&with(&root, key("dns")), dns)?,
            },
            access_log: match &raw.access_log {
                None => None,
                Some(log) if log.path.trim().is_empty() || log.path.contains('\0') => {
                    return self.fail(
                        &with(&with(&root, key("access_log")), key("path")),
                        "the access log's path must be a file name, such as /var/log/switchyard/access.log or /dev/stdout",
                    )
                }
                Some(log) => Some(PathBuf::from(&log.path)),
            },
        })
    }

    fn dns(&self, path: &Path, raw: &RawDns) -> Result<Dns, ConfigError> {
        let servers_path = with(path, key("servers"));
        let mut servers = Vec::with_capacity(raw.servers.len());
        for (index, text) in raw.servers.iter().enumerate() {
            let server = text.parse::<SocketAddr>().ok().or_else(|| {
                let ip = text.parse::<std::net::IpAddr>().ok()?;
                Some(SocketAddr::new(ip, 53))
            });
            match server {
                Some(server) => servers.push(server),
                None => {
                    return self.fail(
                        &with(&servers_path, Segment::Index(index)),
                        format!(
                            "{text:?} is not a name server address: an IP address, with a port if not 53 (10.0.0.2 or 10.0.0.2:5353)"
                        ),
                    )
                }
            }
        }
        let refresh_path = with(path, key("refresh"));
        let refresh = self.duration(&refresh_path, &raw.refresh, Dns::default().refresh)?;
        if refresh < MIN_DNS_REFRESH {
            return self.fail(
                &refresh_path,
                format!(
                    "{:?} is too often to ask the name servers: at least {MIN_DNS_REFRESH:?}",
                    raw.refresh.as_deref().unwrap_or_default()
                ),
            );
        }
        Ok(Dns { servers, refresh })
    }

    fn admin(&self, path: &Path, raw: &RawAdmin) -> Result<AdminListener, ConfigError> {
        let address = match &raw.address {
            None => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    return self.fail(
                        &with(path, key("address")),
                        format!("{text:?} is not an ip:port address (such as 127.0.0.1:9901)"),
                    )
                }
            },
        };
        let tls = match &raw.tls {
            None => None,
            Some(tls) => {
                let tls_path = with(path, key("tls"));
                let certificate = CertificateFiles {
                    cert_file: self.file(&with(&tls_path, key("cert_file")), &tls.cert_file)?,
                    key_file: self.file(&with(&tls_path, key("key_file")), &tls.key_file)?,
                    names: Vec::new(),
                    is_default: true,
                    origin: self.origin(&tls_path),
                };
                let client_ca_file = match &tls.client_ca_file {
                    None => None,
                    Some(file) => Some(self.file(&with(&tls_path, key("client_ca_file")), file)?),
                };
                Some(AdminTls {
                    certificate,
                    client_ca_file,
                })
            }
        };
        Ok(AdminListener { address, tls })
    }

    /// `listeners[0].tls.certificates[1] (line 7)`: where a file-backed
    /// setting stands, for errors found later when the files are read.
    fn origin(&self, path: &Path) -> String {
        let (line, _) = locate(self.source, path);
        format!("{} (line {line})", render(path))
    }

    fn listener_tls(
        &self,
        path: &Path,
        address: SocketAddr,
        raw: &RawListenerTls,
    ) -> Result<ListenerTls, ConfigError> {
        let certificates_path = with(path, key("certificates"));
        if raw.certificates.is_empty() {
            return self.fail(&certificates_path, "tls needs at least one certificate");
        }
        let mut certificates: Vec<CertificateFiles> = Vec::new();
        for (index, raw_cert) in raw.certificates.iter().enumerate() {
            let path = with(&certificates_path, Segment::Index(index));
            let cert_file = self.file(&with(&path, key("cert_file")), &raw_cert.cert_file)?;
            let key_file = self.file(&with(&path, key("key_file")), &raw_cert.key_file)?;
            let mut names = Vec::new();
            for (n, name) in raw_cert.names.iter().enumerate() {
                let name_path = with(&with(&path, key("names")), Segment::Index(n));
                let name = self.sni_name(&name_path, name)?;
                if names.contains(&name) {
                    return self.fail(&name_path, format!("name {name:?} is listed twice"));
                }
                names.push(name);
            }
            if raw_cert.default && certificates.iter().any(|c| c.is_default) {
                return self.fail(
                    &with(&path, key("default")),
                    "only one certificate of a listener can be the default",
                );
            }
            certificates.push(CertificateFiles {
                cert_file,
                key_file,
                names,
                is_default: raw_cert.default,
                origin: self.origin(&path),
            });
        }
        Ok(ListenerTls {
            address,
            certificates,
        })
    }

    fn upstream_tls(&self, path: &Path, raw: &RawUpstreamTls) -> Result<UpstreamTls, ConfigError> {
        let server_name = match &raw.server_name {
            None => None,
            Some(name) => {
                let name_path = with(path, key("server_name"));
                if name.starts_with("*.") {
                    return self.fail(&name_path, "server_name cannot be a wildcard");
                }
                Some(self.sni_name(&name_path, name)?)
            }
        };
        let ca_file = match &raw.ca_file {
            None => None,
            Some(file) => Some(self.file(&with(path, key("ca_file")), file)?),
        };
        let client_cert = match (&raw.cert_file, &raw.key_file) {
            (None, None) => None,
            (Some(cert), Some(key_file)) => Some((
                self.file(&with(path, key("cert_file")), cert)?,
                self.file(&with(path, key("key_file")), key_file)?,
            )),
            (Some(_), None) => return self.fail(path, "a client cert_file needs its key_file"),
            (None, Some(_)) => return self.fail(path, "a client key_file needs its cert_file"),
        };
        Ok(UpstreamTls {
            server_name,
            ca_file,
            client_cert,
            origin: self.origin(path),
        })
    }

    fn file(&self, path: &Path, file: &str) -> Result<PathBuf, ConfigError> {
        if file.trim().is_empty() {
            return self.fail(path, "a file name is required");
        }
        Ok(PathBuf::from(file))
    }

    /// A DNS name or `*.` wildcard, lower case; IP addresses are allowed
    /// (an upstream's certificate may name one).
    fn sni_name(&self, path: &Path, name: &str) -> Result<String, ConfigError> {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        let valid = !bare.is_empty()
            && bare.len() <= 253
            && !bare.starts_with('.')
            && !bare.ends_with('.')
            && !bare.contains("..")
            && (bare.parse::<std::net::IpAddr>().is_ok()
                || bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if valid {
            Ok(lower)
        } else {
            self.fail(
                path,
                format!("{name:?} is not a name like api.example.com or *.example.com"),
            )
        }
    }

    fn name(&self, path: &Path, name: &str, what: &str) -> Result<(), ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if valid {
            Ok(())
        } else {
            self.fail(
                path,
                format!("{what} name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"),
            )
        }
    }

    fn host_port(&self, path: &Path, address: &str) -> Result<(), ConfigError> {
        let bad = |why: &str| {
            self.fail::<()>(
                path,
                format!("endpoint {address:?} {why}; expected host:port such as 10.0.0.3:8080"),
            )
        };
        if address.parse::<SocketAddr>().is_ok() {
            return Ok(());
        }
        let Some((host, port)) = address.rsplit_once(':') else {
            return bad("has no port");
        };
        if host.is_empty() {
            return bad("has no host");
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad("has an invalid host name");
        }
        match port.parse::<u16>() {
            Ok(0) | Err(_) => bad("has an invalid port"),
            Ok(_) => Ok(()),
        }
    }

    fn route(&self, path: &Path, raw: &RawRoute, config: &RawConfig) -> Result<Route, ConfigError> {
        self.name(&with(path, key("name")), &raw.name, "route")?;
        let matcher = self.matcher(&with(path, key("match")), &raw.matcher)?;

        let split_path = with(path, key("split"));
        let weights_path = with(&split_path, key("weights"));
        if raw.split.weights.is_empty() {
            return self.fail(&weights_path, "a split needs at least one pool");
        }
        let mut sum: i64 = 0;
        for (pool, weight) in &raw.split.weights {
            let weight_path = with(&weights_path, key(pool));
            if !config.pools.contains_key(pool) {
                return self.fail(&weight_path, format!("unknown pool {pool:?}"));
            }
            if !(0..=TOTAL_WEIGHT as i64).contains(weight) {
                return self.fail(
                    &weight_path,
                    format!("weight {weight} is outside 0..=10000 basis points"),
                );
            }
            sum += weight;
        }
        if sum != TOTAL_WEIGHT as i64 {
            return self.fail(
                &weights_path,
                format!("weights sum to {sum} basis points, expected 10000 (100%)"),
            );
        }
        if !raw.split.weights.contains_key(&raw.split.baseline) {
            return self.fail(
                &with(&split_path, key("baseline")),
                format!(
                    "baseline {:?} is not one of the split's pools",
                    raw.split.baseline
                ),
            );
        }
        // Baseline last: see `Split::weights`.
        let mut weights: Vec<(String, u32)> = raw
            .split
            .weights
            .iter()
            .filter(|(pool, _)| **pool != raw.split.baseline)
            .map(|(pool, weight)| (pool.clone(), *weight as u32))
            .collect();
        weights.push((
            raw.split.baseline.clone(),
            raw.split.weights[&raw.split.baseline] as u32,
        ));

        let sticky = match &raw.sticky {
            None => None,
            Some(sticky) => Some(self.sticky(&with(path, key("sticky")), sticky)?),
        };
        let pool_override = self.pool_override(&with(path, key("override")), &raw.pool_override)?;
        let canary_health = match &raw.canary_health {
            None => CanaryHealth::default(),
            Some(health) => self.canary_health(&with(path, key("canary_health")), health)?,
        };
        let retries = match &raw.retries {
            None => Retries::default(),
            Some(retries) => self.retries(&with(path, key("retries")), retries)?,
        };

        Ok(Route {
            name: raw.name.clone(),
            matcher,
            split: Split {
                baseline: raw.split.baseline.clone(),
                weights,
            },
            sticky,
            pool_override,
            canary_health,
            retries,
            fast_path: raw.fast_path.unwrap_or(true),
        })
    }

    fn health_check(&self, path: &Path, raw: &RawHealthCheck) -> Result<HealthCheck, ConfigError> {
        self.url_path(&with(path, key("path")), &raw.path)?;
        if let Some(host) = &raw.host {
            let valid = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !valid {
                return self.fail(
                    &with(path, key("host")),
                    format!("{host:?} is not a host name"),
                );
            }
        }
        let interval = self.duration(
            &with(path, key("interval")),
            &raw.interval,
            Duration::from_secs(2),
        )?;
        let timeout = self.duration(
            &with(path, key("timeout")),
            &raw.timeout,
            Duration::from_secs(1),
        )?;
        if timeout > interval {
            return self.fail(
                &with(path, key("timeout")),
                "the timeout must not be longer than the interval",
            );
        }
        let mut expected_status = Vec::new();
        for (index, status) in raw.expected_status.iter().enumerate() {
            let status_path = with(&with(path, key("expected_status")), Segment::Index(index));
            expected_status.push(self.status_range(&status_path, status)?);
        }
        if expected_status.is_empty() {
            expected_status.push((200, 399));
        }
        let count = |name: &str, value: Option<i64>, default: u32| match value {
            None => Ok(default),
            Some(n) if (1..=100).contains(&n) => Ok(n as u32),
            Some(n) => self.fail(&with(path, key(name)), format!("{n} is outside 1..=100")),
        };
        Ok(HealthCheck {
            path: raw.path.clone(),
            host: raw.host.clone(),
            interval,
            timeout,
            expected_status,
            rise: count("rise", raw.rise, 2)?,
            fall: count("fall", raw.fall, 3)?,
        })
    }

    /// A status code or class as an inclusive range.
    fn status_range(&self, path: &Path, status: &RawStatus) -> Result<(u16, u16), ConfigError> {
        match status {
            RawStatus::Code(code) if (100..=599).contains(code) => Ok((*code as u16, *code as u16)),
            RawStatus::Class(class)
                if class.len() == 3
                    && (b'1'..=b'5').contains(&class.as_bytes()[0])
                    && class[1..].eq_ignore_ascii_case("xx") =>
            {
                let low = u16::from(class.as_bytes()[0] - b'0') * 100;
                Ok((low, low + 99))
            }
            _ => self.fail(
                path,
                "expected a status code 100 to 599 or a class such as \"2xx\"",
            ),
        }
    }

    fn outlier(
        &self,
        path: &Path,
        raw: Option<&RawOutlierDetection>,
    ) -> Result<OutlierDetection, ConfigError> {
        let d = OutlierDetection::default();
        let Some(raw) = raw else {
            return Ok(d);
        };
        let consecutive_failures = match raw.consecutive_failures {
            None => d.consecutive_failures,
            Some(n) if (0..=1000).contains(&n) => n as u32,
            Some(n) => {
                return self.fail(
                    &with(path, key("consecutive_failures")),
                    format!("{n} is outside 0..=1000"),
                )
            }
        };
        let base_ejection = self.duration(
            &with(path, key("base_ejection")),
            &raw.base_ejection,
            d.base_ejection,
        )?;
        let max_ejection = self.duration(
            &with(path, key("max_ejection")),
            &raw.max_ejection,
            d.max_ejection,
        )?;
        if max_ejection < base_ejection {
            return self.fail(
                &with(path, key("max_ejection")),
                "must not be shorter than base_ejection",
            );
        }
        let max_ejected_percent = match raw.max_ejected_percent {
            None => d.max_ejected_percent,
            Some(n) if (0..=100).contains(&n) => n as u32,
            Some(n) => {
                return self.fail(
                    &with(path, key("max_ejected_percent")),
                    format!("{n} is outside 0..=100"),
                )
            }
        };
        Ok(OutlierDetection {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejected_percent,
        })
    }

    fn retries(&self, path: &Path, raw: &RawRetries) -> Result<Retries, ConfigError> {
        if !(1..=5).contains(&raw.attempts) {
            return self.fail(
                &with(path, key("attempts")),
                format!("{} is outside 1..=5", raw.attempts),
            );
        }
        let mut retries = Retries {
            attempts: raw.attempts as u32,
            ..Retries::default()
        };
        let on_path = with(path, key("on"));
        if raw.on.is_empty() {
            return self.fail(
                &on_path,
                "name at least one of reset, timeout, 5xx or a 5xx status",
            );
        }
        for (index, what) in raw.on.iter().enumerate() {
            match what.as_str() {
                "reset" => retries.on_reset = true,
                "timeout" => retries.on_timeout = true,
                "5xx" => retries.on_status = (1 << 100) - 1,
                code => match code.parse::<u16>() {
                    Ok(status @ 500..=599) => retries.on_status |= 1 << (status - 500),
                    _ => {
                        return self.fail(
                            &with(&on_path, Segment::Index(index)),
                            format!(
                                "{code:?} is not retryable; expected reset, timeout, 5xx or a status 500 to 599"
                            ),
                        )
                    }
                },
            }
        }
        Ok(retries)
    }

    fn canary_health(
        &self,
        path: &Path,
        raw: &RawCanaryHealth,
    ) -> Result<CanaryHealth, ConfigError> {
        let check =
            |name: &str, value: Option<f64>, low: f64, high: f64, open_low: bool| match value {
                Some(v) if !v.is_finite() || v > high || v < low || (open_low && v <= low) => self
                    .fail(
                        &with(path, key(name)),
                        format!(
                            "{v} is outside {}{low}..={high}",
                            if open_low { "(exclusive) " } else { "" }
                        ),
                    ),
                _ => Ok(value),
            };
        let ticks = |name: &str, value: &Option<String>| -> Result<Option<usize>, ConfigError> {
            let field = with(path, key(name));
            let Some(text) = value else {
                return Ok(None);
            };
            let duration = self.duration(&field, value, Duration::ZERO)?;
            let ms = duration.as_millis();
            if ms % 100 != 0 || ms > 600_000 {
                return self.fail(
                    &field,
                    format!("{text:?} must be a multiple of 100ms, at most 10m"),
                );
            }
            Ok(Some((ms / 100) as usize))
        };
        let requests = |name: &str, value: Option<i64>| match value {
            Some(n) if !(1..=1_000_000).contains(&n) => self.fail(
                &with(path, key(name)),
                format!("{n} is outside 1..=1000000"),
            ),
            _ => Ok(value.map(|n| n as u64)),
        };
        let mut health = CanaryHealth {
            error_statuses: None,
            threshold: check("threshold", raw.threshold, 0.0, 1000.0, true)?,
            max_error_rate: check("max_error_rate", raw.max_error_rate, 0.0, 0.5, true)?,
            max_latency_ms: check("max_latency_ms", raw.max_latency_ms, 0.0, 3_600_000.0, true)?,
            long_window_ticks: ticks("long_window", &raw.long_window)?,
            short_window_ticks: ticks("short_window", &raw.short_window)?,
            short_window_min_requests: requests(
                "short_window_min_requests",
                raw.short_window_min_requests,
            )?,
            burst_window_ticks: ticks("burst_window", &raw.burst_window)?,
            burst_window_min_requests: requests(
                "burst_window_min_requests",
                raw.burst_window_min_requests,
            )?,
            margin_std_errors: check("margin_std_errors", raw.margin_std_errors, 0.0, 10.0, false)?,
            p0_floor: check("p0_floor", raw.p0_floor, 0.0, 0.5, true)?,
            judge_delay_ticks: match &raw.judge_delay {
                // Zero is allowed here: no delay.
                Some(text) if parse_duration(text) == Some(Duration::ZERO) => Some(0),
                _ => ticks("judge_delay", &raw.judge_delay)?,
            },
            slow_arm_ratio: check("slow_arm_ratio", raw.slow_arm_ratio, 1.0, 100.0, false)?,
            slow_arm_min_increase: check(
                "slow_arm_min_increase",
                raw.slow_arm_min_increase,
                0.0,
                0.9,
                false,
            )?,
            fast_arm_ratio: check("fast_arm_ratio", raw.fast_arm_ratio, 1.0, 100.0, false)?,
            fast_arm_min_increase: check(
                "fast_arm_min_increase",
                raw.fast_arm_min_increase,
                0.0,
                0.9,
                false,
            )?,
            latency_p0: check("latency_p0", raw.latency_p0, 0.0, 0.5, true)?,
            latency_p1: check("latency_p1", raw.latency_p1, 0.0, 0.99, true)?,
            latency_ratio: check("latency_ratio", raw.latency_ratio, 1.0, 100.0, false)?,
            latency_min_increase_ms: check(
                "latency_min_increase_ms",
                raw.latency_min_increase_ms,
                0.0,
                60_000.0,
                false,
            )?,
        };
        if !raw.error_statuses.is_empty() {
            let mut set = ErrorStatuses::NONE;
            for (index, status) in raw.error_statuses.iter().enumerate() {
                let status_path = with(&with(path, key("error_statuses")), Segment::Index(index));
                match self.status_range(&status_path, status)? {
                    (low, high) if low >= 400 && high <= 599 => set.add(low, high),
                    _ => return self.fail(&status_path, "only 4xx and 5xx answers can be errors"),
                }
            }
            health.error_statuses = Some(set);
        }
        // The rules between fields, with the defaults for what is absent.
        let long = health.long_window_ticks.unwrap_or(600);
        for (name, value) in [
            ("short_window", health.short_window_ticks),
            ("burst_window", health.burst_window_ticks),
        ] {
            if value.is_some_and(|t| t == 0 || t > long) {
                return self.fail(
                    &with(path, key(name)),
                    "must be at least 100ms and no longer than long_window",
                );
            }
        }
        if health.long_window_ticks == Some(0) {
            return self.fail(&with(path, key("long_window")), "must be at least 100ms");
        }
        if health.judge_delay_ticks.unwrap_or(3) >= long {
            return self.fail(
                &with(path, key("judge_delay")),
                "must be shorter than long_window",
            );
        }
        if health.latency_p1.unwrap_or(0.05) <= health.latency_p0.unwrap_or(0.01) {
            return self.fail(
                &with(path, key("latency_p1")),
                "must be greater than latency_p0",
            );
        }
        Ok(health)
    }

    fn matcher(&self, path: &Path, raw: &RawMatch) -> Result<Match, ConfigError> {
        let host = match &raw.host {
            None => None,
            Some(host) => {
                let host_path = with(path, key("host"));
                let lower = host.to_ascii_lowercase();
                let (rule, name) = match lower.strip_prefix("*.") {
                    Some(rest) => (HostMatch::Suffix(format!(".{rest}")), rest.to_string()),
                    None => (HostMatch::Exact(lower.clone()), lower.clone()),
                };
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !valid {
                    return self.fail(
                        &host_path,
                        format!(
                            "host {host:?} must be a name like api.example.com or *.example.com (no port)"
                        ),
                    );
                }
                Some(rule)
            }
        };
        let path_rule = match (&raw.path_prefix, &raw.path_exact) {
            (Some(_), Some(_)) => {
                return self.fail(
                    &with(path, key("path_exact")),
                    "give path_prefix or path_exact, not both",
                )
            }
            (Some(prefix), None) => {
                self.url_path(&with(path, key("path_prefix")), prefix)?;
                Some(PathMatch::Prefix(prefix.clone()))
            }
            (None, Some(exact)) => {
                self.url_path(&with(path, key("path_exact")), exact)?;
                Some(PathMatch::Exact(exact.clone()))
            }
            (None, None) => None,
        };
        let mut methods = Vec::new();
        for (index, method) in raw.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                return self.fail(
                    &with(&with(path, key("methods")), Segment::Index(index)),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            methods.push(method.to_ascii_uppercase());
        }
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let header_path = with(&with(path, key("headers")), key(name));
            self.header_name(&header_path, name)?;
            let value = match value.as_deref() {
                None | Some("*") => None,
                // What a request can carry (RFC 9110 §5.5: no control
                // bytes but HTAB, no white space at either end): a value
                // no request has would match none, or, taken as absent,
                // all of them.
                Some(value)
                    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
                        || value.starts_with([' ', '\t'])
                        || value.ends_with([' ', '\t']) =>
                {
                    return self.fail(
                        &header_path,
                        format!("{value:?} is not a header value a request can carry"),
                    );
                }
                Some(value) => Some(value.to_string()),
            };
            let name = name.to_ascii_lowercase();
            // Names are case-insensitive: two rules for one field would
            // match only requests that carry both values.
            if headers.iter().any(|(given, _)| *given == name) {
                return self.fail(
                    &header_path,
                    format!("header {name:?} is given twice (names are case-insensitive)"),
                );
            }
            headers.push((name, value));
        }
        Ok(Match {
            host,
            path: path_rule,
            methods,
            headers,
        })
    }

    fn url_path(&self, path: &Path, value: &str) -> Result<(), ConfigError> {
        if value.starts_with('/') && !value.bytes().any(|b| b <= b' ' || b == 0x7f) {
            Ok(())
        } else {
            self.fail(
                path,
                format!("{value:?} must start with '/' and contain no spaces"),
            )
        }
    }

    fn header_name(&self, path: &Path, name: &str) -> Result<(), ConfigError> {
        if !name.is_empty() && name.bytes().all(is_token_byte) {
            Ok(())
        } else {
            self.fail(path, format!("{name:?} is not a valid header name"))
        }
    }

    fn sticky(&self, path: &Path, raw: &RawSticky) -> Result<Sticky, ConfigError> {
        match (&raw.header, &raw.cookie) {
            (Some(header), None) => {
                self.header_name(&with(path, key("header")), header)?;
                if raw.set_cookie {
                    return self.fail(
                        &with(path, key("set_cookie")),
                        "set_cookie needs a cookie, not a header",
                    );
                }
                Ok(Sticky::Header(header.to_ascii_lowercase()))
            }
            (None, Some(cookie)) => {
                self.cookie_name(&with(path, key("cookie")), cookie)?;
                Ok(Sticky::Cookie {
                    name: cookie.clone(),
                    set: raw.set_cookie,
                })
            }
            _ => self.fail(path, "sticky needs exactly one of header or cookie"),
        }
    }

    fn cookie_name(&self, path: &Path, name: &str) -> Result<(), ConfigError> {
        if !name.is_empty() && name.bytes().all(is_token_byte) {
            Ok(())
        } else {
            self.fail(path, format!("{name:?} is not a valid cookie name"))
        }
    }

    fn pool_override(
        &self,
        path: &Path,
        raw: &Option<RawOverride>,
    ) -> Result<Option<Override>, ConfigError> {
        match raw {
            None | Some(RawOverride::Enabled(true)) => Ok(Some(Override {
                header: Some(DEFAULT_OVERRIDE_HEADER.to_string()),
                cookie: None,
            })),
            Some(RawOverride::Enabled(false)) => Ok(None),
            Some(RawOverride::Custom(source)) => {
                if source.header.is_none() && source.cookie.is_none() {
                    return self.fail(path, "override needs a header or a cookie (or false)");
                }
                if let Some(header) = &source.header {
                    self.header_name(&with(path, key("header")), header)?;
                }
                if let Some(cookie) = &source.cookie {
                    self.cookie_name(&with(path, key("cookie")), cookie)?;
                }
                Ok(Some(Override {
                    header: source.header.as_ref().map(|h| h.to_ascii_lowercase()),
                    cookie: source.cookie.clone(),
                }))
            }
        }
    }

    fn duration(
        &self,
        path: &Path,
        raw: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = raw else {
            return Ok(default);
        };
        match parse_duration(text) {
            Some(duration) if !duration.is_zero() => Ok(duration),
            _ => self.fail(
                path,
                format!(
                    "{text:?} is not a positive duration up to 365 days, such as \"2s\" or \"500ms\""
                ),
            ),
        }
    }

    fn timeouts(&self, path: &Path, raw: &RawTimeouts) -> Result<Timeouts, ConfigError> {
        let d = Timeouts::default();
        Ok(Timeouts {
            connect: self.duration(&with(path, key("connect")), &raw.connect, d.connect)?,
            response_header: self.duration(
                &with(path, key("response_header")),
                &raw.response_header,
                d.response_header,
            )?,
            request_header: self.duration(
                &with(path, key("request_header")),
                &raw.request_header,
                d.request_header,
            )?,
            idle: self.duration(&with(path, key("idle")), &raw.idle, d.idle)?,
            drain: self.duration(&with(path, key("drain")), &raw.drain, d.drain)?,
        })
    }

    fn limit(
        &self,
        path: &Path,
        raw: Option<i64>,
        range: std::ops::RangeInclusive<i64>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match raw {
            None => Ok(default),
            Some(value) if range.contains(&value) => Ok(value as u64),
            Some(value) => self.fail(
                path,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ),
        }
    }

    fn limits(&self, path: &Path, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        Ok(Limits {
            // hyper's read buffer cannot be smaller than 8 KiB.
            max_header_bytes: self.limit(
                &with(path, key("max_header_bytes")),
                raw.max_header_bytes,
                8192..=1024 * 1024,
                d.max_header_bytes as u64,
            )? as usize,
            max_headers: self.limit(
                &with(path, key("max_headers")),
                raw.max_headers,
                1..=1000,
                d.max_headers as u64,
            )? as usize,
            max_uri_bytes: self.limit(
                &with(path, key("max_uri_bytes")),
                raw.max_uri_bytes,
                64..=1024 * 1024,
                d.max_uri_bytes as u64,
            )? as usize,
            max_body_bytes: self.limit(
                &with(path, key("max_body_bytes")),
                raw.max_body_bytes,
                0..=i64::MAX,
                d.max_body_bytes,
            )?,
            max_requests_per_connection: self.limit(
                &with(path, key("max_requests_per_connection")),
                raw.max_requests_per_connection,
                0..=i64::MAX,
                d.max_requests_per_connection,
            )?,
        })
    }
}

/// Parses `2s`, `500ms`, `1m`, `1h 30m` (humantime's forms).
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim())
        .ok()
        .filter(|duration| *duration <= MAX_DURATION)
}

/// The longest duration taken: timers add durations to the clock, and a
/// longer one (`10000000000000000000s`) overflowed it and took the proxy
/// down at the first request.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest `dns.refresh`: more often would load the name servers
/// for nothing (Envoy's default is 5 s).
pub const MIN_DNS_REFRESH: Duration = Duration::from_millis(100);

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(weights: &str) -> String {
        format!(
            r#"{{
  "listeners": [{{"address": "127.0.0.1:8080"}}],
  "pools": {{
    "stable": {{"endpoints": ["127.0.0.1:9001"]}},
    "canary": {{"endpoints": [{{"address": "localhost:9002", "weight": 2}}]}}
  }},
  "routes": [
    {{"name": "web", "split": {{"baseline": "stable", "weights": {weights}}}}}
  ]
}}"#
        )
    }

    #[test]
    fn valid_config_puts_baseline_last() {
        let config = parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#)).expect("valid");
        let split = &config.routes[0].split;
        assert_eq!(
            split.weights,
            vec![("canary".to_string(), 1000), ("stable".to_string(), 9000)]
        );
        assert_eq!(
            config.pool("canary").expect("exists").endpoints[0].weight,
            2
        );
        assert!(config.routes[0].pool_override.is_some());
    }

    #[test]
    fn weights_that_do_not_sum_name_line_and_path() {
        let err = parse(&minimal(r#"{"stable": 9000, "canary": 900}"#)).expect_err("invalid");
        assert_eq!(err.line(), Some(8));
        assert_eq!(err.path(), Some("routes[0].split.weights"));
        assert!(err.to_string().contains("sum to 9900"), "{err}");
    }

    #[test]
    fn unknown_pool_in_split_is_refused() {
        let err = parse(&minimal(r#"{"stable": 9000, "green": 1000}"#)).expect_err("invalid");
        assert_eq!(err.path(), Some("routes[0].split.weights.green"));
        assert!(err.to_string().contains("unknown pool"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused_with_its_line() {
        let source = "{\n \"listeners\": [],\n \"pools\": {},\n \"routes\": [],\n \"colour\": 1\n}";
        let err = parse(source).expect_err("unknown field");
        assert_eq!(err.line(), Some(5));
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn syntax_error_names_its_line() {
        let err = parse("{\n\"listeners\": [\n}").expect_err("syntax");
        assert_eq!(err.line(), Some(3));
    }

    #[test]
    fn canary_health_settings_are_checked() {
        let source = minimal(r#"{"stable": 9000, "canary": 1000}"#).replace(
            r#""split""#,
            r#""canary_health": {"max_error_rate": 0.02, "threshold": 15}, "split""#,
        );
        let config = parse(&source).expect("valid");
        assert_eq!(config.routes[0].canary_health.max_error_rate, Some(0.02));
        assert_eq!(config.routes[0].canary_health.threshold, Some(15.0));
        let bad = minimal(r#"{"stable": 9000, "canary": 1000}"#).replace(
            r#""split""#,
            r#""canary_health": {"max_error_rate": 2}, "split""#,
        );
        let err = parse(&bad).expect_err("out of range");
        assert_eq!(err.path(), Some("routes[0].canary_health.max_error_rate"));
    }

    fn with_tls(listener_tls: &str, pool_tls: &str) -> String {
        minimal(r#"{"stable": 10000}"#)
            .replace(
                r#"{"address": "127.0.0.1:8080"}"#,
                &format!(r#"{{"address": "127.0.0.1:8443", "tls": {listener_tls}}}"#),
            )
            .replace(
                r#""endpoints": ["127.0.0.1:9001"]"#,
                &format!(r#""endpoints": ["127.0.0.1:9001"], "tls": {pool_tls}"#),
            )
    }

    #[test]
    fn tls_settings_are_read() {
        let source = with_tls(
            r#"{"certificates": [
                {"cert_file": "a.pem", "key_file": "a.key", "names": ["API.example.com", "*.example.org"], "default": true},
                {"cert_file": "/etc/b.pem", "key_file": "/etc/b.key"}]}"#,
            r#"{"server_name": "api.internal", "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "c.key"}"#,
        );
        let mut config = parse(&source).expect("valid");
        assert_eq!(config.tls.len(), 1);
        let listener = &config.tls[0];
        assert_eq!(listener.address, "127.0.0.1:8443".parse().expect("addr"));
        assert_eq!(
            listener.certificates[0].names,
            ["api.example.com", "*.example.org"]
        );
        assert!(listener.certificates[0].is_default);
        assert!(!listener.certificates[1].is_default);
        assert_eq!(
            listener.certificates[1].origin,
            "listeners[0].tls.certificates[1] (line 4)"
        );
        let pool = config.pool("stable").expect("pool");
        let tls = pool.tls.as_ref().expect("pool tls");
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        config.rebase_files(std::path::Path::new("/srv/conf"));
        assert_eq!(
            config.tls[0].certificates[0].cert_file,
            PathBuf::from("/srv/conf/a.pem")
        );
        assert_eq!(
            config.tls[0].certificates[1].cert_file,
            PathBuf::from("/etc/b.pem")
        );
        let pool_tls = config
            .pool("stable")
            .and_then(|p| p.tls.clone())
            .expect("tls");
        assert_eq!(pool_tls.ca_file, Some(PathBuf::from("/srv/conf/ca.pem")));
    }

    #[test]
    fn bad_tls_settings_name_their_path() {
        let cases = [
            (
                r#"{"certificates": []}"#,
                "{}",
                "listeners[0].tls.certificates",
                "at least one",
            ),
            (
                r#"{"certificates": [{"cert_file": "", "key_file": "k"}]}"#,
                "{}",
                "listeners[0].tls.certificates[0].cert_file",
                "file name",
            ),
            (
                r#"{"certificates": [{"cert_file": "c", "key_file": "k", "names": ["bad name"]}]}"#,
                "{}",
                "listeners[0].tls.certificates[0].names[0]",
                "not a name",
            ),
            (
                r#"{"certificates": [{"cert_file": "c", "key_file": "k", "default": true},
                                     {"cert_file": "d", "key_file": "e", "default": true}]}"#,
                "{}",
                "listeners[0].tls.certificates[1].default",
                "only one",
            ),
            (
                r#"{"certificates": [{"cert_file": "c", "key_file": "k"}]}"#,
                r#"{"cert_file": "c.pem"}"#,
                "pools.stable.tls",
                "needs its key_file",
            ),
            (
                r#"{"certificates": [{"cert_file": "c", "key_file": "k"}]}"#,
                r#"{"server_name": "*.internal"}"#,
                "pools.stable.tls.server_name",
                "wildcard",
            ),
        ];
        for (listener, pool, path, reason) in cases {
            let err = parse(&with_tls(listener, pool)).expect_err(path);
            assert_eq!(err.path(), Some(path), "{err}");
            assert!(err.to_string().contains(reason), "{err}");
        }
        let err = parse(&with_tls(
            r#"{"certificates": [{"cert_file": "c", "key_file": "k", "colour": 1}]}"#,
            "{}",
        ))
        .expect_err("unknown field");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    fn with_route_field(field: &str) -> String {
        minimal(r#"{"stable": 9000, "canary": 1000}"#)
            .replace(r#""split""#, &format!("{field}, \"split\""))
    }

    fn with_pool_field(field: &str) -> String {
        minimal(r#"{"stable": 9000, "canary": 1000}"#).replace(
            r#""endpoints": ["127.0.0.1:9001"]"#,
            &format!(r#""endpoints": ["127.0.0.1:9001"], {field}"#),
        )
    }

    #[test]
    fn every_detector_parameter_can_be_set_per_route() {
        let config = parse(&with_route_field(
            r#""canary_health": {"long_window": "30s", "short_window": "2s",
                "short_window_min_requests": 40, "burst_window": "500ms",
                "burst_window_min_requests": 20, "margin_std_errors": 3, "p0_floor": 0.002,
                "judge_delay": "0s", "slow_arm_ratio": 3, "slow_arm_min_increase": 0.02,
                "fast_arm_ratio": 4, "fast_arm_min_increase": 0.3, "latency_p0": 0.02,
                "latency_p1": 0.1, "latency_ratio": 2, "latency_min_increase_ms": 5}"#,
        ))
        .expect("valid");
        let health = config.routes[0].canary_health;
        assert_eq!(health.long_window_ticks, Some(300));
        assert_eq!(health.short_window_ticks, Some(20));
        assert_eq!(health.burst_window_ticks, Some(5));
        assert_eq!(health.judge_delay_ticks, Some(0));
        assert_eq!(health.short_window_min_requests, Some(40));
        assert_eq!(health.latency_p1, Some(0.1));
        assert_eq!(health.fast_arm_min_increase, Some(0.3));

        for (field, path) in [
            (r#""short_window": "90s""#, "short_window"),
            (r#""long_window": "150ms""#, "long_window"),
            (r#""latency_p0": 0.2, "latency_p1": 0.1"#, "latency_p1"),
            (r#""slow_arm_ratio": 0.5"#, "slow_arm_ratio"),
            (
                r#""burst_window_min_requests": 0"#,
                "burst_window_min_requests",
            ),
        ] {
            let err = parse(&with_route_field(&format!(
                r#""canary_health": {{{field}}}"#
            )))
            .expect_err(field);
            assert_eq!(
                err.path(),
                Some(format!("routes[0].canary_health.{path}").as_str()),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn the_admin_section_is_checked_like_the_rest() {
        let with_admin = |admin: &str| {
            minimal(r#"{"stable": 9000, "canary": 1000}"#)
                .replace(r#""routes""#, &format!(r#""admin": {admin}, "routes""#))
        };
        let config = parse(&with_admin(
            r#"{"address": "127.0.0.1:9999", "tls": {"cert_file": "a.pem", "key_file": "a.key"}}"#,
        ))
        .expect("valid");
        assert_eq!(
            config.admin.address,
            Some("127.0.0.1:9999".parse().expect("addr"))
        );
        let tls = config.admin.tls.expect("tls");
        assert_eq!(tls.certificate.cert_file, std::path::PathBuf::from("a.pem"));
        assert!(tls.client_ca_file.is_none());
        let err = parse(&with_admin(r#"{"address": "localhost"}"#)).expect_err("no port");
        assert_eq!(err.path(), Some("admin.address"));
        let err = parse(&with_admin(
            r#"{"tls": {"cert_file": "a.pem", "key_file": " "}}"#,
        ))
        .expect_err("no key file");
        assert_eq!(err.path(), Some("admin.tls.key_file"));
        assert_eq!(
            parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#))
                .expect("valid")
                .admin,
            AdminListener::default()
        );
    }

    #[test]
    fn the_dns_section_is_checked_like_the_rest() {
        let with_dns = |dns: &str| {
            minimal(r#"{"stable": 9000, "canary": 1000}"#)
                .replace(r#""routes""#, &format!("\"dns\": {dns},\n  \"routes\""))
        };
        let config = parse(&with_dns(
            r#"{"servers": ["10.0.0.2", "[::1]:5353"], "refresh": "30s"}"#,
        ))
        .expect("valid");
        assert_eq!(
            config.dns.servers,
            vec![
                "10.0.0.2:53".parse().expect("addr"),
                "[::1]:5353".parse().expect("addr")
            ]
        );
        assert_eq!(config.dns.refresh, Duration::from_secs(30));
        // The endpoints given by name, once each; IP addresses are not.
        assert_eq!(config.endpoint_names(), vec!["localhost:9002"]);
        assert!(config.to_string().contains(
            "endpoint names (localhost:9002) resolved by name servers 10.0.0.2:53, [::1]:5353, again every 30s"
        ));
        let err = parse(&with_dns(r#"{"servers": ["10.0.0.2", "ns1.example:53"]}"#))
            .expect_err("a name server by name");
        assert_eq!(err.path(), Some("dns.servers[1]"));
        assert_eq!(err.line(), Some(7));
        assert!(
            err.to_string().contains("not a name server address"),
            "{err}"
        );
        let err = parse(&with_dns(r#"{"refresh": "10ms"}"#)).expect_err("too often");
        assert_eq!(err.path(), Some("dns.refresh"));
        assert!(err.to_string().contains("at least 100ms"), "{err}");
        let err = parse(&with_dns(r#"{"resolvers": []}"#)).expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `resolvers`"),
            "{err}"
        );
        let config = parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#)).expect("valid");
        assert_eq!(config.dns, Dns::default());
        assert!(config
            .to_string()
            .contains("resolved by the system's resolver, again every 5s"));
    }

    #[test]
    fn error_statuses_name_what_counts_as_an_error() {
        let config = parse(&with_route_field(
            r#""canary_health": {"error_statuses": ["5xx", 429]}"#,
        ))
        .expect("valid");
        let errors = config.routes[0].canary_health.error_statuses();
        assert!(errors.contains(429) && errors.contains(500) && errors.contains(599));
        assert!(!errors.contains(404) && !errors.contains(200));
        let only = parse(&with_route_field(
            r#""canary_health": {"error_statuses": [502, 503, 504]}"#,
        ))
        .expect("valid");
        let only = only.routes[0].canary_health.error_statuses();
        assert!(only.contains(503) && !only.contains(500));
        let default = parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#)).expect("valid");
        let default = default.routes[0].canary_health.error_statuses();
        assert!(default.contains(500) && !default.contains(429));
        let err = parse(&with_route_field(
            r#""canary_health": {"error_statuses": ["2xx"]}"#,
        ))
        .expect_err("a 2xx is no error");
        assert_eq!(
            err.path(),
            Some("routes[0].canary_health.error_statuses[0]")
        );
    }

    #[test]
    fn health_checks_and_outlier_settings_are_checked() {
        let config = parse(&with_pool_field(
            r#""health_check": {"path": "/healthz", "interval": "500ms", "timeout": "200ms",
                "expected_status": [204, "3xx"], "rise": 1, "fall": 2},
               "outlier_detection": {"consecutive_failures": 3, "base_ejection": "1s",
                "max_ejection": "4s", "max_ejected_percent": 100}"#,
        ))
        .expect("valid");
        let pool = config.pool("stable").expect("exists");
        let check = pool.health_check.as_ref().expect("configured");
        assert_eq!(check.interval, Duration::from_millis(500));
        assert!(check.passes(204) && check.passes(302) && !check.passes(200));
        assert_eq!((check.rise, check.fall), (1, 2));
        assert_eq!(pool.outlier.consecutive_failures, 3);
        assert_eq!(pool.outlier.max_ejection, Duration::from_secs(4));
        let defaults = config.pool("canary").expect("exists");
        assert!(defaults.health_check.is_none());
        assert_eq!(defaults.outlier, OutlierDetection::default());

        for (field, path) in [
            (
                r#""health_check": {"path": "healthz"}"#,
                "health_check.path",
            ),
            (
                r#""health_check": {"path": "/", "expected_status": ["6xx"]}"#,
                "health_check.expected_status[0]",
            ),
            (
                r#""health_check": {"path": "/", "interval": "1s", "timeout": "2s"}"#,
                "health_check.timeout",
            ),
            (
                r#""health_check": {"path": "/", "rise": 0}"#,
                "health_check.rise",
            ),
            (
                r#""outlier_detection": {"base_ejection": "1m", "max_ejection": "10s"}"#,
                "outlier_detection.max_ejection",
            ),
            (
                r#""outlier_detection": {"max_ejected_percent": 150}"#,
                "outlier_detection.max_ejected_percent",
            ),
        ] {
            let err = parse(&with_pool_field(field)).expect_err(field);
            assert_eq!(
                err.path(),
                Some(format!("pools.stable.{path}").as_str()),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_field_with_a_control_character_is_named_on_one_line() {
        let text = minimal(r#"{"stable": 9000, "canary": 1000}"#)
            .replace(r#""split""#, "\"spl\\nit\": 1, \"split\"");
        let err = parse(&text).expect_err("unknown field");
        let shown = err.to_string();
        assert!(!shown.contains('\n'), "{shown:?}");
        assert!(shown.contains(r"unknown field `spl\nit`"), "{shown:?}");
    }

    #[test]
    fn the_fast_path_is_on_unless_a_route_turns_it_off() {
        let plain = parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#)).expect("valid");
        assert!(plain.routes[0].fast_path);
        let off = parse(&with_route_field(r#""fast_path": false"#)).expect("valid");
        assert!(!off.routes[0].fast_path);
        let err = parse(&with_route_field(r#""fast_path": "no""#)).expect_err("not a bool");
        assert_eq!(err.line(), Some(8), "{err}");
        assert_eq!(err.path(), Some("routes[0].fast_path"), "{err}");
    }

    #[test]
    fn retries_name_what_they_retry() {
        let config = parse(&with_route_field(
            r#""retries": {"attempts": 2, "on": ["reset", "503"]}"#,
        ))
        .expect("valid");
        let retries = config.routes[0].retries;
        assert_eq!(retries.attempts, 2);
        assert!(retries.on_reset && !retries.on_timeout);
        assert!(retries.on(503) && !retries.on(502) && !retries.on(404));
        let all = parse(&with_route_field(
            r#""retries": {"attempts": 1, "on": ["5xx"]}"#,
        ))
        .expect("valid");
        assert!(all.routes[0].retries.on(500) && all.routes[0].retries.on(599));
        assert_eq!(
            parse(&minimal(r#"{"stable": 9000, "canary": 1000}"#))
                .expect("valid")
                .routes[0]
                .retries
                .attempts,
            0
        );
        let err = parse(&with_route_field(
            r#""retries": {"attempts": 1, "on": ["404"]}"#,
        ))
        .expect_err("4xx is not retryable");
        assert_eq!(err.path(), Some("routes[0].retries.on[0]"));
        let err = parse(&with_route_field(
            r#""retries": {"attempts": 9, "on": ["reset"]}"#,
        ))
        .expect_err("too many");
        assert_eq!(err.path(), Some("routes[0].retries.attempts"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
    }
}
