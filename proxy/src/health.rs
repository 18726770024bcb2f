//! An endpoint's health, from two sources:
//!
//! - **Passive outlier ejection**: an endpoint that fails several times in
//!   a row (no connection, no answer in time, a reset or a malformed
//!   answer — the failures nginx's `max_fails` counts, not the upstream's
//!   own 5xx, which are the canary detector's business) is left out of its
//!   pool for a while, longer each time it happens again.
//! - **Active health checks** ([`crate::health_check`]): `fall` failed
//!   checks in a row take an endpoint down, `rise` passed ones bring it
//!   back, as HAProxy's `check rise 2 fall 3`.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

use switchyard_config::OutlierDetection;

/// One endpoint's record of recent failures and checks.
#[derive(Default)]
pub struct EndpointHealth {
    consecutive: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// Active checks: the endpoint failed `fall` checks and has not yet
    /// passed `rise`.
    checked_down: AtomicBool,
    /// Active checks: passes in a row (> 0) or failures in a row (< 0).
    /// Written by the one checker task of the endpoint.
    check_run: AtomicI32,
}

/// What a check did to an endpoint's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTransition {
    /// The endpoint just went down.
    Down,
    /// The endpoint just came back.
    Up,
}

impl EndpointHealth {
    /// Whether outlier ejection leaves the endpoint out now (`now_ms` on
    /// the stats clock).
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Whether active health checks hold the endpoint down.
    pub fn is_checked_down(&self) -> bool {
        self.checked_down.load(Ordering::Relaxed)
    }

    /// Whether the endpoint takes no requests now, for either reason.
    pub fn is_down(&self, now_ms: u64) -> bool {
        self.is_checked_down() || self.is_ejected(now_ms)
    }

    /// An exchange got an answer: the run of failures is over.
    pub fn succeeded(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// An exchange failed. Returns true when this failure ejected the
    /// endpoint; `may_eject` says whether the pool can spare it.
    pub fn failed(
        &self,
        now_ms: u64,
        outlier: &OutlierDetection,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        // Failures of requests sent before the ejection, that end while it
        // lasts, start no run: back from it, the endpoint needs a new run.
        if outlier.consecutive_failures == 0 || self.is_ejected(now_ms) {
            return false;
        }
        let run = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if run < outlier.consecutive_failures || !may_eject() {
            return false;
        }
        // An endpoint that stayed in for `max_ejection` since its last
        // ejection ended starts again from `base_ejection` (Envoy lowers
        // its multiplier while an endpoint stays healthy): an ejection
        // weeks ago does not make today's the longest.
        let last_end = self.ejected_until_ms.load(Ordering::Relaxed);
        let max = outlier.max_ejection.as_millis() as u64;
        if last_end != 0 && now_ms >= last_end.saturating_add(max) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let base = outlier.base_ejection.as_millis() as u64;
        let length = base
            .saturating_mul(1 << times)
            .min(outlier.max_ejection.as_millis() as u64);
        self.ejected_until_ms
            .store(now_ms + length, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        true
    }

    /// Forgets the active checks' verdict (the pool no longer has checks).
    pub fn clear_checks(&self) {
        if self.is_checked_down() || self.check_run.load(Ordering::Relaxed) != 0 {
            self.checked_down.store(false, Ordering::Relaxed);
            self.check_run.store(0, Ordering::Relaxed);
        }
    }

    /// Records one active check's result; returns a transition when this
    /// check took the endpoint down (`fall` failures in a row) or brought
    /// it back (`rise` passes in a row).
    pub fn checked(&self, passed: bool, rise: u32, fall: u32) -> Option<CheckTransition> {
        let run = self.check_run.load(Ordering::Relaxed);
        let run = match (passed, run > 0) {
            (true, true) => run.saturating_add(1),
            (true, false) => 1,
            (false, false) => run.saturating_sub(1),
            (false, true) => -1,
        };
        self.check_run.store(run, Ordering::Relaxed);
        let down = self.is_checked_down();
        if down && run >= rise as i32 {
            self.checked_down.store(false, Ordering::Relaxed);
            Some(CheckTransition::Up)
        } else if !down && run <= -(fall as i32) {
            self.checked_down.store(true, Ordering::Relaxed);
            Some(CheckTransition::Down)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outlier() -> OutlierDetection {
        OutlierDetection::default()
    }

    #[test]
    fn ejects_after_a_run_and_longer_each_time() {
        let health = EndpointHealth::default();
        let o = outlier();
        let base = o.base_ejection.as_millis() as u64;
        for _ in 0..o.consecutive_failures - 1 {
            assert!(!health.failed(0, &o, || true));
        }
        assert!(health.failed(0, &o, || true));
        assert!(health.is_ejected(base - 1));
        assert!(!health.is_ejected(base));
        for _ in 0..o.consecutive_failures {
            health.failed(base, &o, || true);
        }
        assert!(
            health.is_ejected(3 * base - 1),
            "the second ejection is twice as long"
        );
    }

    #[test]
    fn an_ejection_long_past_counts_no_more() {
        let o = outlier();
        let (base, max) = (
            o.base_ejection.as_millis() as u64,
            o.max_ejection.as_millis() as u64,
        );
        let health = EndpointHealth::default();
        let mut now = 0;
        // Ejected again at once, three times: each ejection is longer.
        for _ in 0..3 {
            for _ in 0..o.consecutive_failures {
                health.failed(now, &o, || true);
            }
            now = health.ejected_until_ms.load(Ordering::Relaxed);
        }
        assert_eq!(now, 7 * base, "1 + 2 + 4 base ejections");
        // In for `max_ejection` since: the next is `base_ejection` again.
        now += max;
        for _ in 0..o.consecutive_failures {
            health.failed(now, &o, || true);
        }
        assert_eq!(health.ejected_until_ms.load(Ordering::Relaxed), now + base);
    }

    #[test]
    fn ejection_follows_the_pool_settings() {
        let o = OutlierDetection {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_millis(1500),
            max_ejected_percent: 100,
        };
        let health = EndpointHealth::default();
        assert!(!health.failed(0, &o, || true));
        assert!(health.failed(0, &o, || true));
        assert!(health.is_ejected(999) && !health.is_ejected(1000));
        health.failed(1000, &o, || true);
        assert!(health.failed(1000, &o, || true));
        assert!(
            health.is_ejected(2499) && !health.is_ejected(2500),
            "capped at max_ejection"
        );
        let off = OutlierDetection {
            consecutive_failures: 0,
            ..o
        };
        let never = EndpointHealth::default();
        for _ in 0..100 {
            assert!(!never.failed(0, &off, || true));
        }
    }

    #[test]
    fn a_success_breaks_the_run_and_a_full_pool_keeps_its_endpoint() {
        let o = outlier();
        let health = EndpointHealth::default();
        for _ in 0..o.consecutive_failures - 1 {
            health.failed(0, &o, || true);
        }
        health.succeeded();
        assert!(!health.failed(0, &o, || true));
        let spared = EndpointHealth::default();
        for _ in 0..o.consecutive_failures {
            assert!(!spared.failed(0, &o, || false));
        }
        assert!(!spared.is_ejected(1));
    }

    #[test]
    fn checks_go_down_after_fall_and_up_after_rise() {
        let health = EndpointHealth::default();
        assert_eq!(health.checked(false, 2, 3), None);
        assert_eq!(health.checked(false, 2, 3), None);
        assert!(!health.is_down(0));
        assert_eq!(health.checked(false, 2, 3), Some(CheckTransition::Down));
        assert!(health.is_down(0));
        assert_eq!(health.checked(false, 2, 3), None, "already down");
        assert_eq!(health.checked(true, 2, 3), None);
        assert_eq!(
            health.checked(false, 2, 3),
            None,
            "a failure restarts the rise"
        );
        assert_eq!(health.checked(true, 2, 3), None);
        assert_eq!(health.checked(true, 2, 3), Some(CheckTransition::Up));
        assert!(!health.is_down(0));
    }
}
