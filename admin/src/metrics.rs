//! The control plane's metrics, in the data plane's registry, and the
//! text that `GET /metrics` answers with.

use std::sync::OnceLock;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, TextEncoder};
use switchyard_proxy::Metrics;

use crate::rollout::{Rollout, RolloutState};

/// Series the control plane writes.
pub struct AdminMetrics {
    /// Config reloads by result (`applied`, `unchanged`, `rejected`).
    pub reloads: IntCounterVec,
    /// Rollout state per route: 1 for the current state, 0 for the others.
    pub rollout_state: IntGaugeVec,
    /// Automatic fallbacks by route and reason.
    pub fallbacks: IntCounterVec,
    /// 1 while a gate holds a route's rollout (too little canary traffic).
    pub rollout_held: IntGaugeVec,
}

impl AdminMetrics {
    /// The process-wide control-plane metrics, registered on first use.
    pub fn global() -> &'static AdminMetrics {
        static METRICS: OnceLock<AdminMetrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let registry = &Metrics::global().registry;
            let reloads = IntCounterVec::new(
                Opts::new("switchyard_config_reloads_total", "Config reloads, by result."),
                &["result"],
            )
            .expect("valid metric");
            let rollout_state = IntGaugeVec::new(
                Opts::new(
                    "switchyard_rollout_state",
                    "1 for a route's current rollout state (running, paused, waiting, completed, aborted).",
                ),
                &["route", "state"],
            )
            .expect("valid metric");
            let fallbacks = IntCounterVec::new(
                Opts::new(
                    "switchyard_fallbacks_total",
                    "Automatic fallbacks to the baseline, by route and reason.",
                ),
                &["route", "reason"],
            )
            .expect("valid metric");
            let rollout_held = IntGaugeVec::new(
                Opts::new(
                    "switchyard_rollout_held",
                    "1 while a route's rollout step is held because its canary has not yet served enough requests to be judged.",
                ),
                &["route"],
            )
            .expect("valid metric");
            let build_info = IntGaugeVec::new(
                Opts::new("switchyard_build_info", "Always 1; the labels say which build runs."),
                &["version"],
            )
            .expect("valid metric");
            build_info
                .with_label_values(&[env!("CARGO_PKG_VERSION")])
                .set(1);
            for collector in [
                Box::new(reloads.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(rollout_state.clone()),
                Box::new(fallbacks.clone()),
                Box::new(rollout_held.clone()),
                Box::new(build_info),
            ] {
                registry.register(collector).expect("names are unique");
            }
            AdminMetrics {
                reloads,
                rollout_state,
                fallbacks,
                rollout_held,
            }
        })
    }

    /// Sets a route's rollout-state gauges.
    pub fn set_rollout(&self, route: &str, rollout: Option<&Rollout>) {
        for state in RolloutState::ALL {
            let value = i64::from(rollout.is_some_and(|r| r.state == state));
            self.rollout_state
                .with_label_values(&[route, state.name()])
                .set(value);
        }
    }

    /// Drops every series of a route a reload removed: its rollout's and
    /// its fallbacks' (which a counter would otherwise keep for ever).
    pub fn forget_route(&self, route: &str) {
        self.forget_rollout(route);
        for arm in crate::detector::Arm::ALL {
            let _ = self.fallbacks.remove_label_values(&[route, arm.as_str()]);
        }
    }

    /// Drops a route's rollout series (its state and hold): a reload took
    /// its rollout away, with the route or its pools.
    pub fn forget_rollout(&self, route: &str) {
        for state in RolloutState::ALL {
            let _ = self
                .rollout_state
                .remove_label_values(&[route, state.name()]);
        }
        let _ = self.rollout_held.remove_label_values(&[route]);
    }
}

/// Everything in the registry, in Prometheus' text format.
pub fn render() -> Vec<u8> {
    let _ = AdminMetrics::global();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&Metrics::global().registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    out
}
