//! Active HTTP health checks: a thread of its own probes every endpoint of
//! each pool that has a `health_check`, every `interval`, with a GET of
//! the check's path. A status outside the expected ones, no status line
//! within `timeout`, or no connection counts as a failed check; `fall`
//! failures in a row take the endpoint down and `rise` passes bring it back
//! ([`EndpointHealth::checked`]). The probes never run on a worker, so a
//! slow endpoint cannot delay a client's request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use switchyard_config::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::health::{CheckTransition, EndpointHealth};
use crate::route::Routes;
use crate::tls::UpstreamTlsClient;

/// The checker looks at the live table at least this often, so a reload
/// that adds or changes a check takes effect quickly.
const RESCAN: Duration = Duration::from_millis(100);

/// A status line longer than this is not a status line.
const MAX_STATUS_LINE: usize = 1024;

/// The running checker; stops when dropped.
pub struct HealthChecker {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts checking the endpoints of `routes`' live table.
    pub fn start(routes: Routes) -> std::io::Result<HealthChecker> {
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("switchyard-health".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, run(routes, stopped));
            })?;
        Ok(HealthChecker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(routes: Routes, mut stopped: watch::Receiver<bool>) {
    // When each endpoint's next check is due, by pool and address, and
    // the interval it was set by.
    let mut due: HashMap<(Arc<str>, SocketAddr), (Instant, Duration)> = HashMap::new();
    loop {
        let table = routes.snapshot();
        let now = Instant::now();
        let mut wake = now + RESCAN;
        let mut seen = Vec::new();
        for pool in table.pools() {
            let Some(check) = &pool.health_check else {
                // A check removed by a reload no longer holds anything down.
                for endpoint in pool.endpoints.iter() {
                    endpoint.health.clear_checks();
                }
                continue;
            };
            for endpoint in pool.endpoints.iter() {
                let key = (Arc::clone(&pool.name), endpoint.addr);
                let (next, interval) = due.entry(key.clone()).or_insert((now, check.interval));
                // A reload that changed the interval takes effect now, not
                // after the old interval.
                if *interval != check.interval {
                    *next = (*next).min(now);
                    *interval = check.interval;
                }
                if *next <= now {
                    // The timeout is at most the interval (validated), so
                    // a probe is over before the next one starts.
                    *next = now + check.interval;
                    tokio::task::spawn_local(check_endpoint(
                        Arc::clone(check),
                        endpoint.addr,
                        endpoint.tls.clone(),
                        Arc::clone(&endpoint.health),
                        Arc::clone(&endpoint.label),
                    ));
                }
                wake = wake.min(*next);
                seen.push(key);
            }
        }
        due.retain(|key, _| seen.contains(key));
        drop(table);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

async fn check_endpoint(
    check: Arc<HealthCheck>,
    addr: SocketAddr,
    tls: Option<Arc<UpstreamTlsClient>>,
    health: Arc<EndpointHealth>,
    label: Arc<str>,
) {
    let outcome = match probe(&check, addr, tls.as_deref()).await {
        Ok(status) if check.passes(status) => Ok(()),
        Ok(status) => Err(format!("status {status}")),
        Err(reason) => Err(reason),
    };
    match (
        health.checked(outcome.is_ok(), check.rise, check.fall),
        outcome,
    ) {
        (Some(CheckTransition::Down), Err(reason)) => {
            warn!(backend = %label, reason = %reason, fall = check.fall, "endpoint down: health checks failed");
        }
        (Some(CheckTransition::Up), _) => {
            info!(backend = %label, rise = check.rise, "endpoint up: health checks pass again");
        }
        _ => {}
    }
}

/// One check: the status code the endpoint answered, or why there was none.
/// A pool that speaks TLS is checked over TLS, verified as requests are.
pub async fn probe(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&UpstreamTlsClient>,
) -> Result<u16, String> {
    match tokio::time::timeout(check.timeout, exchange(check, addr, tls)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no status within {:?}", check.timeout)),
    }
}

async fn exchange(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&UpstreamTlsClient>,
) -> Result<u16, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    match tls {
        None => exchange_on(check, addr, stream).await,
        Some(tls) => {
            let stream = tls
                .connect(stream)
                .await
                .map_err(|err| format!("TLS handshake: {err}"))?;
            exchange_on(check, addr, stream).await
        }
    }
}

async fn exchange_on<S>(check: &HealthCheck, addr: SocketAddr, mut stream: S) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = match &check.host {
        Some(host) => host.clone(),
        None => addr.to_string(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: switchyard-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| format!("send: {err}"))?;
    let mut buffer = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    // Inside an interim (1xx) head: skipping to its blank line.
    let mut interim = false;
    loop {
        if len == buffer.len() {
            return Err("status line too long".into());
        }
        let read = stream
            .read(&mut buffer[len..])
            .await
            .map_err(|err| format!("receive: {err}"))?;
        if read == 0 {
            return Err("closed before a status line".into());
        }
        len += read;
        loop {
            if interim {
                // Keep the last three bytes: a blank line may straddle reads.
                match memchr::memmem::find(&buffer[..len], b"\r\n\r\n") {
                    Some(at) => {
                        buffer.copy_within(at + 4..len, 0);
                        len -= at + 4;
                        interim = false;
                    }
                    None => {
                        let keep = len.min(3);
                        buffer.copy_within(len - keep..len, 0);
                        len = keep;
                        break;
                    }
                }
            }
            let Some(end) = memchr::memmem::find(&buffer[..len], b"\r\n") else {
                break;
            };
            let status = status_of(&buffer[..end]).ok_or("malformed status line")?;
            // An interim answer (103 Early Hints, 100) comes before the
            // final one, which decides (RFC 9110 §15.2).
            if (100..200).contains(&status) && status != 101 {
                buffer.copy_within(end..len, 0);
                len -= end;
                interim = true;
                continue;
            }
            return Ok(status);
        }
    }
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 20x OK"), None);
        assert_eq!(status_of(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
    }
}
