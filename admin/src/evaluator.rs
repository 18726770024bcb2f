//! Canary health, off the request path: every 100 ms, each route's pools'
//! outcome counts of the tick just over go to a [`Detector`] per canary
//! pool (any pool of the split but the baseline, with weight); a verdict
//! makes the control plane fall back. The latency threshold the detector
//! derives from the baseline's last 60 s is published to the canary's
//! stats, where the data plane counts slow answers against it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use switchyard_config::CanaryHealth;
use switchyard_proxy::stats::{tick_of, PoolStats, TickCounts, TICK};

use crate::control::{ControlPlane, GateVerdict, StepGate};
use crate::detector::{CanaryCounts, Detector, DetectorConfig, PoolCounts, SlowLately, Verdict};
use crate::events::NewEvent;
use crate::rollout::Rollout;

/// A pool's live error rate is over this many ticks (60 s).
const LIVE_TICKS: usize = 600;

/// Latency snapshots are taken every second and kept for 60 s.
const SNAPSHOT_TICKS: u64 = 10;
const SNAPSHOTS: usize = 61;

/// One canary pool of one route under watch.
struct Watch {
    detector: Detector,
    /// The route's settings the detector was built with.
    settings: CanaryHealth,
    /// The route's weights when the watch began; a change resets it.
    weights: BTreeMap<String, u32>,
    baseline: Arc<PoolStats>,
    canary: Arc<PoolStats>,
    /// The baseline's latency histogram, one cumulative snapshot a second.
    snapshots: VecDeque<Vec<(f64, u64)>>,
    /// Canary requests since the weights last changed.
    served: u64,
    /// The baseline's slow answers of the last ticks.
    baseline_slow: SlowLately,
}

/// What the health endpoint shows for a route.
#[derive(Default)]
struct RouteHealth {
    status: BTreeMap<String, Value>,
    last_verdict: Option<Value>,
    /// Per canary pool: requests served since the route's weights last
    /// changed, i.e. at the current rollout step.
    served: BTreeMap<String, u64>,
    /// Per canary pool: requests served while watched, all told.
    total: BTreeMap<String, u64>,
    /// `total` when the rollout's live step began: the gate counts what
    /// the canary served since (a step at the same weight as the one
    /// before, or one that began since the last tick, starts at zero).
    step_mark: Option<BTreeMap<String, u64>>,
    /// Every pool of the split: its live error rate, p99 and endpoints.
    pools: BTreeMap<String, Value>,
}

/// The evaluator's shared view, for `GET /v1/routes/{route}/health`, and
/// the rollout gate: a step moves on only after its canary has served
/// enough requests to have been judged.
#[derive(Default)]
pub struct HealthBoard {
    routes: Mutex<HashMap<String, RouteHealth>>,
    min_step_requests: AtomicU64,
}

impl StepGate for HealthBoard {
    fn check(&self, route: &str, rollout: &Rollout) -> GateVerdict {
        let min = self.min_step_requests.load(Ordering::Relaxed);
        // A step at 0% sends the canary nothing to judge: it would hold
        // for good.
        if min == 0 || rollout.target_weight() == 0 {
            return GateVerdict::Proceed;
        }
        let served = {
            let routes = self.routes.lock().expect("health lock is never poisoned");
            routes.get(route).map_or(0, |h| {
                let target = &rollout.target;
                match &h.step_mark {
                    Some(mark) => {
                        let total = h.total.get(target).copied().unwrap_or(0);
                        total.saturating_sub(mark.get(target).copied().unwrap_or(0))
                    }
                    // A step that began before this process: since the
                    // weights last changed.
                    None => h.served.get(target).copied().unwrap_or(0),
                }
            })
        };
        if served >= min {
            GateVerdict::Proceed
        } else {
            // Promoting blind would defeat the detector; aborting would
            // punish a release for a quiet hour. Hold, and say why.
            GateVerdict::Hold(format!(
                "holding: the canary has served {served} of the {min} requests a step needs to be judged"
            ))
        }
    }

    fn step_started(&self, route: &str) {
        let mut routes = self.routes.lock().expect("health lock is never poisoned");
        let health = routes.entry(route.to_string()).or_default();
        health.step_mark = Some(health.total.clone());
    }
}

impl HealthBoard {
    /// Requests a canary must serve at a rollout step before it moves on
    /// (0: no minimum).
    pub fn set_min_step_requests(&self, min: u64) {
        self.min_step_requests.store(min, Ordering::Relaxed);
    }

    /// The route's detector states and last verdict.
    pub fn describe(&self, route: &str) -> Value {
        let routes = self.routes.lock().expect("health lock is never poisoned");
        match routes.get(route) {
            None => {
                json!({"route": route, "pools": {}, "canaries": {}, "last_verdict": null, "baseline_failing": false})
            }
            Some(health) => {
                let failing = health
                    .status
                    .values()
                    .any(|s| s["is_baseline_failing"] == true);
                json!({
                    "route": route,
                    "pools": health.pools,
                    "canaries": health.status,
                    "served_at_step": health.served,
                    "last_verdict": health.last_verdict,
                    "baseline_failing": failing,
                })
            }
        }
    }
}

/// Starts the evaluator on the current runtime.
pub fn spawn(plane: Arc<ControlPlane>, board: Arc<HealthBoard>) {
    tokio::spawn(async move {
        let mut watches: HashMap<(String, String), Watch> = HashMap::new();
        let mut live: HashMap<(String, String), Live> = HashMap::new();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_tick = tick_of(Instant::now());
        let mut availability = Availability::default();
        loop {
            interval.tick().await;
            let now_tick = tick_of(Instant::now());
            // Every tick that finished since the last run, oldest first.
            while last_tick < now_tick {
                evaluate(&plane, &board, &mut watches, &mut live, last_tick).await;
                last_tick += 1;
            }
            availability.scan(&plane);
        }
    });
}

/// Which endpoints and pools were down at the last scan, so that each
/// change is recorded once as an event: an endpoint taken out by its
/// health checks or by outlier ejection, and a pool with none left, whose
/// share fails open to the other pools of its split.
#[derive(Default)]
struct Availability {
    endpoints: HashMap<(Arc<str>, std::net::SocketAddr), bool>,
    pools: HashMap<(Arc<str>, Arc<str>), bool>,
}

impl Availability {
    fn scan(&mut self, plane: &ControlPlane) {
        let table = plane.routes().snapshot();
        let now_ms = switchyard_proxy::stats::ms_of(Instant::now());
        let record = |kind: &'static str, route: Option<String>, reason: String| {
            plane.events().record(NewEvent {
                who: "health".into(),
                kind,
                route,
                old_weights: None,
                new_weights: None,
                reason,
                evidence: None,
                version: table.version(),
            });
        };
        let mut endpoints = HashMap::new();
        for pool in table.pools() {
            for endpoint in pool.endpoints.iter() {
                let down = endpoint.health.is_down(now_ms);
                let key = (Arc::clone(&pool.name), endpoint.addr);
                let was = self.endpoints.get(&key).copied().unwrap_or(false);
                if down && !was {
                    let why = if endpoint.health.is_checked_down() {
                        "it failed its active health checks"
                    } else {
                        "ejected after repeated gateway failures (outlier detection)"
                    };
                    record(
                        "endpoint_down",
                        None,
                        format!("endpoint {} is down: {why}", endpoint.label),
                    );
                } else if was && !down {
                    record(
                        "endpoint_up",
                        None,
                        format!("endpoint {} takes requests again", endpoint.label),
                    );
                }
                endpoints.insert(key, down);
            }
        }
        self.endpoints = endpoints;
        let mut pools = HashMap::new();
        for route in table.routes() {
            for (pool, weight) in route.weights() {
                let entry = table.pool(pool);
                let down = entry.is_down(now_ms);
                let key = (Arc::clone(&route.name), Arc::clone(&entry.name));
                let was = self.pools.get(&key).copied().unwrap_or(false);
                if down && !was && weight > 0 {
                    // Where its share goes, in the data plane's order.
                    let open = route
                        .fail_open_order(pool)
                        .find(|&p| !table.pool(p).is_down(now_ms));
                    let reason = match open {
                        Some(to) => format!(
                            "every endpoint of pool {} is down: its {weight} basis points fail open to pool {}",
                            entry.name,
                            table.pool(to).name
                        ),
                        None => format!(
                            "every endpoint of pool {} is down and no other pool of the split has one: requests get 503",
                            entry.name
                        ),
                    };
                    record("pool_down", Some(route.name.to_string()), reason);
                } else if was && !down {
                    record(
                        "pool_up",
                        Some(route.name.to_string()),
                        format!("pool {} has endpoints up again", entry.name),
                    );
                }
                pools.insert(key, down && (was || weight > 0));
            }
        }
        self.pools = pools;
    }
}

async fn evaluate(
    plane: &Arc<ControlPlane>,
    board: &HealthBoard,
    watches: &mut HashMap<(String, String), Watch>,
    live: &mut HashMap<(String, String), Live>,
    tick: u64,
) {
    let table = plane.routes().snapshot();
    let mut verdicts = Vec::new();
    let mut alive = Vec::new();
    let mut present = Vec::new();
    for route in table.routes() {
        // Every pool's tick is taken, watched or not, so the ring holds
        // no stale counts when a pool becomes a canary later.
        let counts: HashMap<u16, _> = route
            .all_stats()
            .iter()
            .map(|(pool, stats)| (*pool, stats.take_tick(tick)))
            .collect();
        let weights: BTreeMap<String, u32> = route
            .weights()
            .map(|(pool, w)| (table.pool(pool).name.to_string(), w))
            .collect();
        let now_ms = switchyard_proxy::stats::ms_of(Instant::now());
        for (pool, stats) in route.all_stats() {
            let name = table.pool(*pool).name.to_string();
            present.push((route.name.to_string(), name.clone()));
            let window = live
                .entry((route.name.to_string(), name.clone()))
                .or_default();
            window.add(counts[pool]);
            if tick.is_multiple_of(SNAPSHOT_TICKS) {
                let endpoints = &table.pool(*pool).endpoints;
                let up = endpoints
                    .iter()
                    .filter(|e| !e.health.is_down(now_ms))
                    .count();
                let described = window.describe(stats, (up, endpoints.len()));
                let mut routes = board.routes.lock().expect("health lock is never poisoned");
                let health = routes.entry(route.name.to_string()).or_default();
                health.pools.insert(name, described);
            }
        }
        let baseline_counts = counts[&route.baseline];
        let baseline_stats = stats_of(route, route.baseline);
        let baseline_weight = route
            .weights()
            .find(|&(pool, _)| pool == route.baseline)
            .map_or(0, |(_, weight)| weight);
        for (pool, weight) in route.weights() {
            if pool == route.baseline || weight == 0 {
                continue;
            }
            let key = (route.name.to_string(), table.pool(pool).name.to_string());
            alive.push(key.clone());
            let settings = route.canary_health;
            if watches.get(&key).is_some_and(|w| {
                w.settings != settings || !Arc::ptr_eq(&w.baseline, baseline_stats)
            }) {
                // The route's settings changed (a reload), or its baseline
                // did (a reload, a completed rollout): start over, judged
                // against the new one.
                watches.remove(&key);
            }
            let slo_us = settings
                .max_latency_ms
                .map_or(u64::MAX, |ms| (ms * 1000.0) as u64);
            stats_of(route, pool)
                .slo_after_us
                .store(slo_us, Ordering::Relaxed);
            let fresh = !watches.contains_key(&key);
            let watch = watches.entry(key.clone()).or_insert_with(|| Watch {
                detector: detector_for(settings),
                settings,
                weights: weights.clone(),
                baseline: Arc::clone(baseline_stats),
                canary: Arc::clone(stats_of(route, pool)),
                snapshots: VecDeque::new(),
                served: 0,
                baseline_slow: SlowLately::default(),
            });
            if fresh {
                // p0 is the baseline's last 60 s from the first tick on
                // (a rollout's first step, a canary turned on again), not
                // only what it served since: the ticks before this one,
                // with no canary answers.
                let key = (
                    route.name.to_string(),
                    table.pool(route.baseline).name.to_string(),
                );
                if let Some(history) = live.get(&key) {
                    let before = history.ticks.len().saturating_sub(1);
                    for &(requests, errors) in history.ticks.iter().take(before) {
                        let baseline = PoolCounts {
                            requests,
                            errors,
                            ..PoolCounts::default()
                        };
                        watch.detector.observe(baseline, CanaryCounts::default());
                    }
                    // And its latency over the same time, for the bar.
                    watch.snapshots = history.snapshots.clone();
                }
            }
            if watch.weights != weights {
                // A weight change starts the test over (the spec's reset).
                watch.detector.reset();
                watch.weights = weights.clone();
                watch.served = 0;
            }
            if tick.is_multiple_of(SNAPSHOT_TICKS) {
                publish_latency_threshold(watch, baseline_weight == 0);
            }
            let canary = counts[&pool];
            watch.served += canary.requests;
            // When the baseline itself is slow lately (a shared slowdown:
            // saturation, a slow dependency) and too quiet for the latency
            // test to follow it, the canary's slow answers of this tick are
            // not held against it (see `SlowLately`).
            let (latency_requests, baseline_slow) = baseline_counts.latency();
            watch.baseline_slow.push(latency_requests, baseline_slow);
            let min_requests = watch.detector.config().judged_window_min_requests;
            let (canary_slow, canary_overdue) = match watch.baseline_slow.excuses(min_requests) {
                true => (0, 0),
                false => (canary.slow, canary.overdue),
            };
            let canary_counts = CanaryCounts {
                requests: canary.requests,
                errors: canary.errors,
                slow: canary_slow,
                over_slo_latency: canary.over_slo,
                late: canary.late,
                overdue: canary_overdue,
                // The SLO is absolute: no shared slowness excuses it.
                late_slo: canary.late_slo,
                overdue_slo: canary.overdue_slo,
            };
            let verdict = if baseline_weight == 0 {
                // All traffic on the canary: judged against what the
                // baseline served before.
                watch.detector.observe_without_baseline(canary_counts)
            } else {
                let baseline = PoolCounts {
                    requests: baseline_counts.requests,
                    errors: baseline_counts.errors,
                    latency_requests,
                    slow: baseline_slow,
                };
                watch.detector.observe(baseline, canary_counts)
            };
            let status = serde_json::to_value(watch.detector.status()).unwrap_or(Value::Null);
            {
                let mut routes = board.routes.lock().expect("health lock is never poisoned");
                let health = routes.entry(key.0.clone()).or_default();
                health.status.insert(key.1.clone(), status);
                health.served.insert(key.1.clone(), watch.served);
                *health.total.entry(key.1.clone()).or_default() += canary.requests;
            }
            if let Some(verdict) = verdict {
                let lately = watch.baseline_slow.lately();
                verdicts.push((key, verdict, weights.clone(), lately));
            }
        }
    }
    watches.retain(|key, _| alive.contains(key));
    live.retain(|key, _| present.contains(key));
    {
        let mut routes = board.routes.lock().expect("health lock is never poisoned");
        // A route a reload removed goes, and with it what it counted.
        routes.retain(|route, _| present.iter().any(|(r, _)| r == route));
        for (route, health) in routes.iter_mut() {
            let here = |pool: &String| present.contains(&(route.clone(), pool.clone()));
            health.total.retain(|pool, _| here(pool));
            if let Some(mark) = health.step_mark.as_mut() {
                mark.retain(|pool, _| here(pool));
            }
            health
                .pools
                .retain(|pool, _| present.contains(&(route.clone(), pool.clone())));
            health
                .status
                .retain(|pool, _| alive.contains(&(route.clone(), pool.clone())));
            health
                .served
                .retain(|pool, _| alive.contains(&(route.clone(), pool.clone())));
        }
    }
    for ((route, pool), verdict, weights, baseline_slow) in verdicts {
        let judged = Judged {
            weights: &weights,
            baseline_slow,
        };
        fall_back(plane, board, &route, &pool, &verdict, judged).await;
        watches.remove(&(route, pool));
    }
}

/// A detector with the route's settings over the defaults; settings the
/// detector refuses (validated by the config already) fall back to them.
fn detector_for(settings: CanaryHealth) -> Detector {
    let mut config = DetectorConfig::default();
    fn set<T: Copy>(field: &mut T, value: Option<T>) {
        if let Some(value) = value {
            *field = value;
        }
    }
    let c = &mut config;
    set(&mut c.threshold, settings.threshold);
    set(&mut c.long_window_ticks, settings.long_window_ticks);
    set(&mut c.short_window_ticks, settings.short_window_ticks);
    set(&mut c.burst_window_ticks, settings.burst_window_ticks);
    // A long window shorter than the short windows' defaults (given ones
    // are validated against it) bounds them: they are at most as long.
    c.short_window_ticks = c.short_window_ticks.min(c.long_window_ticks);
    c.burst_window_ticks = c.burst_window_ticks.min(c.long_window_ticks);
    set(&mut c.canary_delay_ticks, settings.judge_delay_ticks);
    set(
        &mut c.short_window_min_requests,
        settings.short_window_min_requests,
    );
    set(
        &mut c.burst_window_min_requests,
        settings.burst_window_min_requests,
    );
    set(&mut c.margin_std_errors, settings.margin_std_errors);
    set(&mut c.p0_floor, settings.p0_floor);
    set(&mut c.slow_arm_ratio, settings.slow_arm_ratio);
    set(&mut c.slow_arm_min_increase, settings.slow_arm_min_increase);
    set(&mut c.fast_arm_ratio, settings.fast_arm_ratio);
    set(&mut c.fast_arm_min_increase, settings.fast_arm_min_increase);
    set(&mut c.latency_p0, settings.latency_p0);
    set(&mut c.latency_p1, settings.latency_p1);
    set(&mut c.latency_ratio, settings.latency_ratio);
    set(
        &mut c.latency_min_increase_ms,
        settings.latency_min_increase_ms,
    );
    config.max_error_rate = settings.max_error_rate;
    config.max_latency_ms = settings.max_latency_ms;
    Detector::new(config).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "canary-health settings refused; using the defaults");
        Detector::new(DetectorConfig::default()).expect("the default detector config is valid")
    })
}

fn stats_of(route: &switchyard_proxy::route::RouteEntry, pool: u16) -> &Arc<PoolStats> {
    route
        .all_stats()
        .iter()
        .find(|(index, _)| *index == pool)
        .map(|(_, stats)| stats)
        .expect("every pool of a split has stats")
}

/// Takes a latency snapshot and sets the canary's slow threshold from the
/// baseline's last 60 s.
fn publish_latency_threshold(watch: &mut Watch, frozen: bool) {
    // A baseline that takes no traffic by design keeps the bar of what it
    // served last (its window would empty, and the test go blind).
    if !frozen || watch.snapshots.is_empty() {
        let now = watch.baseline.latency_snapshot();
        watch.snapshots.push_back(now);
        if watch.snapshots.len() > SNAPSHOTS {
            watch.snapshots.pop_front();
        }
    }
    let (Some(oldest), Some(newest)) = (watch.snapshots.front(), watch.snapshots.back()) else {
        return;
    };
    let window = window_of(newest, oldest);
    let threshold = watch.detector.config().latency_threshold_ms(&window);
    let micros = threshold.map_or(u64::MAX, |ms| (ms * 1000.0) as u64);
    watch.canary.slow_after_us.store(micros, Ordering::Relaxed);
    // The baseline is measured against the same bar, so that a slowdown
    // both pools share is not blamed on the canary.
    watch
        .baseline
        .slow_after_us
        .store(micros, Ordering::Relaxed);
}

/// Per bucket, the responses between two cumulative histogram snapshots.
fn window_of(now: &[(f64, u64)], oldest: &[(f64, u64)]) -> Vec<(f64, u64)> {
    let mut previous = 0;
    now.iter()
        .zip(oldest.iter())
        .map(|(&(bound, total), &(_, then))| {
            let cumulative = total.saturating_sub(then);
            let in_bucket = cumulative.saturating_sub(previous);
            previous = cumulative;
            (bound, in_bucket)
        })
        .collect()
}

/// One pool of one route over the last 60 s, watched by a detector or
/// not, for `ctl status`: requests, errors and the latency histogram.
#[derive(Default)]
struct Live {
    ticks: VecDeque<(u64, u64)>,
    requests: u64,
    errors: u64,
    snapshots: VecDeque<Vec<(f64, u64)>>,
}

impl Live {
    fn add(&mut self, counts: TickCounts) {
        self.ticks.push_back((counts.requests, counts.errors));
        self.requests += counts.requests;
        self.errors += counts.errors;
        if self.ticks.len() > LIVE_TICKS {
            if let Some((requests, errors)) = self.ticks.pop_front() {
                self.requests -= requests;
                self.errors -= errors;
            }
        }
    }

    /// Takes a latency snapshot and describes the window.
    fn describe(&mut self, stats: &PoolStats, endpoints: (usize, usize)) -> Value {
        let now = stats.latency_snapshot();
        if self.snapshots.is_empty() {
            // The histogram counts from the start: the first window is all of it.
            self.snapshots
                .push_back(now.iter().map(|&(bound, _)| (bound, 0)).collect());
        }
        self.snapshots.push_back(now);
        if self.snapshots.len() > SNAPSHOTS {
            self.snapshots.pop_front();
        }
        let newest = self.snapshots.back().expect("just pushed");
        let window = window_of(newest, &self.snapshots[0]);
        json!({
            "requests_60s": self.requests,
            "errors_60s": self.errors,
            "error_rate": (self.requests > 0).then(|| self.errors as f64 / self.requests as f64),
            "p99_ms": crate::detector::quantile_ms(&window, 0.99),
            "endpoints_up": endpoints.0,
            "endpoints": endpoints.1,
        })
    }
}

/// What a verdict was reached on: the weights, and the baseline's slow
/// answers (and all its answers) over the shared-slowness look.
struct Judged<'a> {
    weights: &'a BTreeMap<String, u32>,
    baseline_slow: (u64, u64),
}

async fn fall_back(
    plane: &ControlPlane,
    board: &HealthBoard,
    route: &str,
    pool: &str,
    verdict: &Verdict,
    judged: Judged<'_>,
) {
    let latency = matches!(verdict.arm.as_str(), "latency" | "slo_latency");
    let (baseline_slow, baseline_answers) = judged.baseline_slow;
    let unanswered = verdict.canary_unanswered;
    let mut evidence = json!({
        "pool": pool,
        "arm": verdict.arm.as_str(),
        "s": verdict.s,
        "threshold": verdict.threshold,
        "p0": verdict.p0,
        "p1": verdict.p1,
        "canary_events": verdict.canary_events,
        "canary_requests": verdict.canary_requests,
        "baseline_errors_60s": verdict.baseline_errors,
        "baseline_requests_60s": verdict.baseline_requests,
        "baseline_failing": verdict.is_baseline_failing,
    });
    // The baseline's side of the comparison: its slow answers for a
    // latency arm (the errors were quoted as if they were slow answers).
    let baseline = match latency {
        true => {
            evidence["canary_unanswered"] = json!(unanswered);
            evidence["baseline_slow"] = json!(baseline_slow);
            evidence["baseline_answers"] = json!(baseline_answers);
            format!("baseline {baseline_slow} of {baseline_answers} slow lately")
        }
        false => format!(
            "baseline {} of {} over 60 s",
            verdict.baseline_errors, verdict.baseline_requests
        ),
    };
    // A request unanswered past the bar (or SLO) counts as a slow
    // response.
    let past = match verdict.arm {
        crate::detector::Arm::SloLatency => "the SLO",
        _ => "the bar",
    };
    let what = match (latency, unanswered) {
        (true, 0) => "slow responses".to_string(),
        (true, n) => format!("slow responses ({n} of them unanswered past {past})"),
        (false, _) => "errors".to_string(),
    };
    let reason = format!(
        "canary {pool} {what}: {} of {} since the test was last clear (allowed rate {:.4}, tested against {:.4}; S {:.1} >= {:.0}); {baseline}",
        verdict.canary_events,
        verdict.canary_requests,
        verdict.p0,
        verdict.p1,
        verdict.s,
        verdict.threshold,
    );
    tracing::warn!(
        route,
        pool,
        arm = verdict.arm.as_str(),
        "canary judged bad; falling back to the baseline"
    );
    match plane
        .fall_back(
            route,
            reason,
            verdict.arm.as_str(),
            evidence.clone(),
            Some(judged.weights),
        )
        .await
    {
        Ok(_) => {
            let mut routes = board.routes.lock().expect("health lock is never poisoned");
            routes.entry(route.to_string()).or_default().last_verdict = Some(evidence);
        }
        Err(crate::AdminError::Conflict { message }) => {
            tracing::debug!(route, %message, "no fallback needed")
        }
        Err(err) => tracing::error!(route, error = %err, "fallback failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_reach_the_detector_and_the_rest_keep_their_defaults() {
        let settings = CanaryHealth {
            threshold: Some(12.0),
            long_window_ticks: Some(300),
            judge_delay_ticks: Some(0),
            burst_window_min_requests: Some(20),
            fast_arm_min_increase: Some(0.3),
            latency_ratio: Some(2.0),
            ..CanaryHealth::default()
        };
        let detector = detector_for(settings);
        let config = detector.config();
        let defaults = DetectorConfig::default();
        assert_eq!(config.threshold, 12.0);
        assert_eq!(config.long_window_ticks, 300);
        assert_eq!(config.canary_delay_ticks, 0);
        assert_eq!(config.burst_window_min_requests, 20);
        assert_eq!(config.fast_arm_min_increase, 0.3);
        assert_eq!(config.latency_ratio, 2.0);
        assert_eq!(config.short_window_ticks, defaults.short_window_ticks);
        assert_eq!(config.slow_arm_ratio, defaults.slow_arm_ratio);
        assert_eq!(config.latency_p0, defaults.latency_p0);
    }
}
