//! Passive outlier ejection: an endpoint that fails several times in a row
//! (no connection, no answer in time, a reset or a malformed answer — the
//! failures nginx's `max_fails` counts, not the upstream's own 5xx, which
//! are the canary detector's business) is left out of its pool for a
//! while, longer each time it happens again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Failures in a row that eject an endpoint (nginx's `max_fails`-like).
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// The first ejection's length; each further one doubles it.
pub const BASE_EJECTION_MS: u64 = 10_000;
/// No ejection lasts longer than this.
pub const MAX_EJECTION_MS: u64 = 300_000;
/// At most this share of a pool is ejected at once, but always at least
/// one endpoint (as Envoy's `max_ejection_percent`).
pub const MAX_EJECTED_SHARE: f64 = 0.5;

/// One endpoint's record of recent failures.
#[derive(Default)]
pub struct EndpointHealth {
    consecutive: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

impl EndpointHealth {
    /// Whether the endpoint is left out now (`now_ms` on the stats clock).
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// An exchange got an answer: the run of failures is over.
    pub fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// An exchange failed. Returns true when this failure ejected the
    /// endpoint; `may_eject` says whether the pool can spare it.
    pub fn failed(&self, now_ms: u64, may_eject: impl FnOnce() -> bool) -> bool {
        let run = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if run < CONSECUTIVE_FAILURES || self.is_ejected(now_ms) || !may_eject() {
            return false;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let length = (BASE_EJECTION_MS << times).min(MAX_EJECTION_MS);
        self.ejected_until_ms
            .store(now_ms + length, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_a_run_and_longer_each_time() {
        let health = EndpointHealth::default();
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            assert!(!health.failed(0, || true));
        }
        assert!(health.failed(0, || true));
        assert!(health.is_ejected(BASE_EJECTION_MS - 1));
        assert!(!health.is_ejected(BASE_EJECTION_MS));
        for _ in 0..CONSECUTIVE_FAILURES {
            health.failed(BASE_EJECTION_MS, || true);
        }
        assert!(
            health.is_ejected(3 * BASE_EJECTION_MS - 1),
            "the second ejection is twice as long"
        );
    }

    #[test]
    fn a_success_breaks_the_run_and_a_full_pool_keeps_its_endpoint() {
        let health = EndpointHealth::default();
        for _ in 0..CONSECUTIVE_FAILURES - 1 {
            health.failed(0, || true);
        }
        health.succeeded();
        assert!(!health.failed(0, || true));
        let spared = EndpointHealth::default();
        for _ in 0..CONSECUTIVE_FAILURES {
            assert!(!spared.failed(0, || false));
        }
        assert!(!spared.is_ejected(1));
    }
}
