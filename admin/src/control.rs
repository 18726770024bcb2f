//! The control plane: the config file's routes with the runtime state on
//! top, and the one way to change them. A change validates fully, builds a
//! new table off to the side, persists, and only then swaps; a failure at
//! any step leaves the old table serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use std::time::Duration;
use switchyard_config::{Config, HostMatch, PathMatch, Split, Sticky};
use switchyard_proxy::dns::{Addresses, Resolver};
use switchyard_proxy::stats::StatsScope;
use switchyard_proxy::{RouteTable, Routes};

use tokio::sync::{Mutex, Notify};

use crate::error::AdminError;
use crate::events::{EventLog, NewEvent};
use crate::metrics::AdminMetrics;
use crate::rollout::{weights_with, Rollout, RolloutSpec, RolloutState};
use crate::state::{write_atomically, RouteState, RuntimeState, StateStore};

/// The control plane, shared by the admin API and (later) rollouts and reloads.
pub struct ControlPlane {
    routes: Routes,
    store: StateStore,
    events: EventLog,
    /// Serializes changes; never touched by the request path.
    inner: Mutex<Inner>,
    /// Wakes the rollout driver after a change.
    wake: Notify,
    /// The config file, for `PUT /v1/config`.
    config_path: Option<std::path::PathBuf>,
    /// Where this plane's tables keep their stats.
    scope: StatsScope,
    /// The step gate, if any.
    gate: std::sync::RwLock<Option<Arc<dyn StepGate>>>,
    /// Routes whose due step a gate holds: until when, and why. Not
    /// persisted: after a restart the gate is simply asked again.
    holds: std::sync::Mutex<std::collections::HashMap<String, (u64, String)>>,
    /// The process is draining (a SIGTERM came): `/readyz` says so.
    draining: std::sync::atomic::AtomicBool,
    /// The admin API's listener as bound at start: a reload does not
    /// rebind it, so a change to it is reported, not applied.
    bound_admin: switchyard_config::AdminListener,
    /// Rebinds the data plane's listeners on a reload that changes them
    /// (set by whoever runs the data plane); without it, such a change is
    /// reported, not applied.
    listener_hook: std::sync::OnceLock<ListenerHook>,
    admin_check: std::sync::OnceLock<AdminCheck>,
    /// The access log given on the command line, which a config's
    /// `access_log` does not change.
    access_log_flag: std::sync::OnceLock<std::path::PathBuf>,
    /// Held by a config change (a reload, `PUT /v1/config`) from reading
    /// its text to applying it: such changes apply in the order they read,
    /// while the state lock is free for weight changes as the new config's
    /// names are resolved.
    config_change: Mutex<()>,
}

/// Binds what the data plane needs to listen as a config says, all or
/// nothing (the error says what could not be bound or loaded), and returns
/// how to put it in use once the config is persisted.
pub type ListenerHook = Box<dyn Fn(&Config) -> Result<ListenerCommit, String> + Send + Sync>;

/// Checks a new config's admin section as the next start would take it
/// (its TLS files load; an address reachable from other hosts has a
/// token): the section takes effect only after a restart, and a config
/// the restart would refuse is refused now.
pub type AdminCheck =
    Box<dyn Fn(&switchyard_config::AdminListener) -> Result<(), String> + Send + Sync>;

/// Puts the listeners a [`ListenerHook`] bound in use; dropped instead, it
/// closes them and nothing changes.
pub type ListenerCommit = Box<dyn FnOnce() + Send>;

/// Asked before a rollout leaves a step whose pause is over: the place
/// where health gates (enough traffic, no errors) hold or abort a step.
pub trait StepGate: Send + Sync {
    /// Whether `route`'s rollout may move on from its live step.
    fn check(&self, route: &str, rollout: &Rollout) -> GateVerdict;

    /// `route`'s rollout began a step (its first, or the next): what the
    /// canary serves counts for it from now.
    fn step_started(&self, _route: &str) {}
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Move on.
    Proceed,
    /// Stay on this step and ask again shortly; the reason shows in the status.
    Hold(String),
    /// Send all traffic back to the baseline.
    Abort(String),
}

/// How long a held step waits before the gate is asked again.
const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// An operator's action on a rollout.
#[derive(Debug, Clone)]
pub enum RolloutAction {
    /// Stop the clock.
    Pause,
    /// Restart the clock, or pass a manual gate.
    Resume,
    /// All traffic to the target now.
    Promote,
    /// All traffic back to the baseline now, with the reason.
    Abort(String),
}

struct Inner {
    /// The config file as loaded.
    base: Config,
    /// What the API changed.
    state: RuntimeState,
    /// `base` with `state` applied: what the live table was built from.
    effective: Config,
    /// What the endpoint names of `effective` resolved to last.
    addresses: Addresses,
    /// Counts the times a config change replaced `addresses`, so that a
    /// refresh that asked before it does not undo it.
    addresses_epoch: u64,
    /// The data plane's listeners and their TLS settings as bound.
    listening: (
        Vec<std::net::SocketAddr>,
        Vec<switchyard_config::ListenerTls>,
    ),
}

impl ControlPlane {
    /// Applies the stored state on top of `base`, builds the first table,
    /// and returns the plane with the [`Routes`] the data plane serves.
    pub fn start(
        base: Config,
        config_path: Option<std::path::PathBuf>,
        store: StateStore,
        mut state: RuntimeState,
    ) -> Result<Arc<ControlPlane>, AdminError> {
        let events = EventLog::open(store.dir(), store.audit_limit())?;
        // Versions never go back, a reset state included: an ETag handed
        // out before must not name another table later.
        state.version = state.version.max(events.version());
        let dropped = prune_state(&base, &mut state);
        let now = now_ms();
        for route in state.routes.values_mut() {
            if let Some(rollout) = route.rollout.as_mut() {
                rollout.clamp_start(now);
            }
        }
        state.version += 1;
        let effective = effective_config(&base, &state);
        let scope = StatsScope::default();
        let addresses = Addresses::resolve_blocking(&effective).map_err(AdminError::Build)?;
        let table = RouteTable::build_resolved(&effective, state.version, &scope, &addresses)
            .map_err(AdminError::Build)?;
        store.persist(&state)?;
        // A rollout that was running when the process stopped is reported
        // as it is, before any step of it moves.
        for (route, runtime) in &state.routes {
            if let Some(rollout) = &runtime.rollout {
                AdminMetrics::global().set_rollout(route, Some(rollout));
            }
        }
        for (route, reason) in dropped {
            events.record(NewEvent {
                who: "startup".into(),
                kind: "state_dropped",
                route: Some(route),
                old_weights: None,
                new_weights: None,
                reason,
                evidence: None,
                version: state.version,
            });
        }
        Ok(Arc::new(ControlPlane {
            bound_admin: base.admin.clone(),
            listener_hook: std::sync::OnceLock::new(),
            admin_check: std::sync::OnceLock::new(),
            access_log_flag: std::sync::OnceLock::new(),
            config_change: Mutex::new(()),
            routes: Routes::new(table),
            store,
            events,
            inner: Mutex::new(Inner {
                addresses,
                addresses_epoch: 0,
                listening: (base.listeners.clone(), base.tls.clone()),
                base,
                state,
                effective,
            }),
            wake: Notify::new(),
            config_path,
            scope,
            gate: std::sync::RwLock::new(None),
            holds: std::sync::Mutex::new(std::collections::HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The live table, for the data plane.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The process stops: from now on `/readyz` answers 503, so a load
    /// balancer (or Kubernetes) takes it out while it drains.
    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the process is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The live table's version.
    pub fn version(&self) -> u64 {
        self.routes.snapshot().version()
    }

    /// Sets one route's weights. `if_match` (the `If-Match` value) must
    /// name the current version when given.
    pub async fn set_weights(
        &self,
        route: &str,
        weights: &BTreeMap<String, i64>,
        if_match: Option<&str>,
        who: &str,
    ) -> Result<u64, AdminError> {
        let change = |config: &switchyard_config::Route, state: &mut RouteState| {
            if let Some(rollout) = state.rollout.as_ref().filter(|r| r.is_active()) {
                return Err(AdminError::Conflict {
                    message: format!(
                        "route {route:?} has a {} rollout in progress; promote or abort it first",
                        rollout.strategy
                    ),
                });
            }
            state.weights = config
                .split
                .check_weights(weights)
                .map_err(|(pool, reason)| AdminError::Invalid {
                    code: if pool.is_some() {
                        "invalid_weight"
                    } else {
                        "weights_do_not_sum"
                    },
                    message: format!("route {route:?}: {reason}"),
                    field: pool.map_or_else(|| "weights".to_string(), |p| format!("weights.{p}")),
                })?;
            Ok(("weights", "weights set through the admin API".to_string()))
        };
        self.change(route, if_match, who, change).await
    }

    /// Starts a rollout on `route`; its first step takes effect at once.
    pub async fn start_rollout(
        &self,
        route: &str,
        spec: &RolloutSpec,
        if_match: Option<&str>,
        who: &str,
    ) -> Result<u64, AdminError> {
        let (strategy, steps) = spec.steps().map_err(|err| AdminError::Invalid {
            code: "invalid_rollout",
            message: format!("route {route:?}: {}", err.message),
            field: err.field.to_string(),
        })?;
        let change = |config: &switchyard_config::Route, state: &mut RouteState| {
            if let Some(rollout) = state.rollout.as_ref().filter(|r| r.is_active()) {
                return Err(AdminError::Conflict {
                    message: format!(
                        "route {route:?} already has a {} rollout in progress",
                        rollout.strategy
                    ),
                });
            }
            let baseline = &config.split.baseline;
            let candidates: Vec<&String> =
                state.weights.keys().filter(|p| *p != baseline).collect();
            let target = match &spec.target {
                Some(target) if candidates.contains(&target) => target.clone(),
                Some(target) => {
                    return Err(AdminError::Invalid {
                        code: "invalid_rollout",
                        message: format!(
                            "route {route:?}: target {target:?} is not a non-baseline pool of the split"
                        ),
                        field: "target".into(),
                    })
                }
                None if candidates.len() == 1 => candidates[0].clone(),
                None => {
                    return Err(AdminError::Invalid {
                        code: "invalid_rollout",
                        message: format!(
                            "route {route:?}: name the target pool, one of {candidates:?}"
                        ),
                        field: "target".into(),
                    })
                }
            };
            // Every step must fit beside the other pools, not only the
            // first: a later one that cannot would hold the rollout for ever.
            for (i, step) in steps.iter().enumerate() {
                if weights_with(&state.weights, baseline, &target, step.weight).is_none() {
                    return Err(AdminError::Invalid {
                        code: "invalid_rollout",
                        message: format!(
                            "route {route:?}: step {} ({} basis points to {target}) does not fit beside the other pools' weights",
                            i + 1,
                            step.weight
                        ),
                        field: "steps".into(),
                    });
                }
            }
            let rollout = Rollout::start(strategy.clone(), target, steps.clone(), now_ms());
            apply_rollout(route, baseline, state, rollout)?;
            Ok(("rollout_started", format!("{strategy} rollout started")))
        };
        let version = self.change(route, if_match, who, change).await?;
        self.wake.notify_one();
        Ok(version)
    }

    /// Pauses, resumes, promotes or aborts `route`'s rollout.
    pub async fn control_rollout(
        &self,
        route: &str,
        action: RolloutAction,
        if_match: Option<&str>,
        who: &str,
    ) -> Result<u64, AdminError> {
        self.control_judged(route, action, if_match, who, None)
            .await
    }

    /// [`ControlPlane::control_rollout`] for a verdict on `judged`: if the
    /// route's rollout is no longer that one (at that step), nothing
    /// changes.
    async fn control_judged(
        &self,
        route: &str,
        action: RolloutAction,
        if_match: Option<&str>,
        who: &str,
        judged: Option<&Rollout>,
    ) -> Result<u64, AdminError> {
        let change = |config: &switchyard_config::Route, state: &mut RouteState| {
            let Some(mut rollout) = state.rollout.clone().filter(|r| r.is_active()) else {
                return Err(AdminError::Conflict {
                    message: format!("route {route:?} has no rollout in progress"),
                });
            };
            let moved_on = judged.is_some_and(|judged| {
                (
                    &judged.strategy,
                    &judged.target,
                    judged.step,
                    judged.step_started_ms,
                ) != (
                    &rollout.strategy,
                    &rollout.target,
                    rollout.step,
                    rollout.step_started_ms,
                )
            });
            if moved_on {
                return Err(AdminError::Conflict {
                    message: format!("route {route:?}'s rollout moved on since it was judged"),
                });
            }
            let now = now_ms();
            // A pause or resume that would change nothing is refused, not
            // recorded as a change.
            let nothing_to_do = match action {
                RolloutAction::Pause if rollout.state != RolloutState::Running => {
                    Some("only a running step's clock can be paused")
                }
                RolloutAction::Resume if rollout.state == RolloutState::Running => {
                    Some("its clock is running: there is nothing to resume")
                }
                _ => None,
            };
            if let Some(why) = nothing_to_do {
                return Err(AdminError::Conflict {
                    message: format!(
                        "route {route:?}'s rollout is {}: {why}",
                        rollout.state.name()
                    ),
                });
            }
            let (kind, reason) = match action {
                RolloutAction::Pause => {
                    rollout.pause(now);
                    ("rollout_paused", "paused by an operator".to_string())
                }
                RolloutAction::Resume => {
                    rollout.resume(now);
                    ("rollout_resumed", "resumed by an operator".to_string())
                }
                RolloutAction::Promote => {
                    rollout.promote(now);
                    ("rollout_promoted", "promoted by an operator".to_string())
                }
                RolloutAction::Abort(ref reason) => {
                    rollout.abort(reason.clone());
                    ("rollout_aborted", reason.clone())
                }
            };
            apply_rollout(route, &config.split.baseline, state, rollout)?;
            Ok((kind, reason))
        };
        let version = self.change(route, if_match, who, change).await?;
        self.wake.notify_one();
        Ok(version)
    }

    /// Installs the gate asked before each step moves on, replacing any.
    pub fn set_gate(&self, gate: Arc<dyn StepGate>) {
        *self.gate.write().expect("gate lock is never poisoned") = Some(gate);
    }

    /// Records that a gate holds `route`'s rollout (until when, and why),
    /// or no longer does; keeps `switchyard_rollout_held` in step. Returns
    /// the hold it replaces.
    fn set_hold(&self, route: &str, hold: Option<(u64, String)>) -> Option<(u64, String)> {
        AdminMetrics::global()
            .rollout_held
            .with_label_values(&[route])
            .set(i64::from(hold.is_some()));
        let mut holds = self.holds.lock().expect("holds lock is never poisoned");
        match hold {
            Some(hold) => holds.insert(route.to_string(), hold),
            None => holds.remove(route),
        }
    }

    /// Why a gate holds `route`'s rollout, if it does.
    pub fn hold_reason(&self, route: &str) -> Option<String> {
        let holds = self.holds.lock().expect("holds lock is never poisoned");
        holds.get(route).map(|(_, reason)| reason.clone())
    }

    /// Moves every rollout whose step is over to its next step, unless the
    /// gate holds or aborts it. Returns when the next step is due (unix
    /// ms), if any rollout is running.
    pub async fn tick(&self) -> Option<u64> {
        let now = now_ms();
        let due: Vec<(String, Rollout)> = {
            let mut inner = self.inner.lock().await;
            for state in inner.state.routes.values_mut() {
                if let Some(rollout) = state.rollout.as_mut() {
                    rollout.clamp_start(now);
                }
            }
            let holds = self.holds.lock().expect("holds lock is never poisoned");
            inner
                .state
                .routes
                .iter()
                .filter_map(|(name, s)| Some((name, s.rollout.as_ref()?)))
                .filter(|(_, r)| r.due_ms().is_some_and(|d| d <= now))
                .filter(|(name, _)| holds.get(*name).is_none_or(|(until, _)| *until <= now))
                .map(|(name, r)| (name.clone(), r.clone()))
                .collect()
        };
        for (route, rollout) in due {
            let gate = self
                .gate
                .read()
                .expect("gate lock is never poisoned")
                .clone();
            let verdict = match gate {
                Some(gate) => gate.check(&route, &rollout),
                None => GateVerdict::Proceed,
            };
            match verdict {
                GateVerdict::Proceed => {
                    self.set_hold(&route, None);
                    self.advance(&route, now).await;
                }
                GateVerdict::Hold(reason) => {
                    let previous = self.set_hold(
                        &route,
                        Some((now + HOLD_RECHECK.as_millis() as u64, reason.clone())),
                    );
                    // Once, when the hold begins: the reason's count moves
                    // at each recheck while traffic trickles in.
                    if previous.is_none() {
                        self.events.record(NewEvent {
                            who: "gate".into(),
                            kind: "rollout_held",
                            route: Some(route.clone()),
                            old_weights: None,
                            new_weights: None,
                            reason,
                            evidence: None,
                            version: self.version(),
                        });
                    }
                }
                GateVerdict::Abort(reason) => {
                    self.set_hold(&route, None);
                    let abort = RolloutAction::Abort(reason);
                    if let Err(err) = self
                        .control_judged(&route, abort, None, "gate", Some(&rollout))
                        .await
                    {
                        tracing::warn!(route = %route, error = %err, "gate abort failed");
                    }
                }
            }
        }
        let inner = self.inner.lock().await;
        let holds = self.holds.lock().expect("holds lock is never poisoned");
        inner
            .state
            .routes
            .iter()
            .filter_map(|(name, s)| {
                let due = s.rollout.as_ref().and_then(Rollout::due_ms)?;
                Some(holds.get(name).map_or(due, |(until, _)| due.max(*until)))
            })
            .min()
    }

    async fn advance(&self, route: &str, now: u64) {
        let change = |config: &switchyard_config::Route, state: &mut RouteState| {
            let Some(mut rollout) = state.rollout.clone() else {
                return Err(AdminError::Conflict {
                    message: "rollout gone".into(),
                });
            };
            if rollout.due_ms().is_none_or(|d| d > now) {
                return Err(AdminError::Conflict {
                    message: "step no longer due".into(),
                });
            }
            rollout.advance(now);
            let reason = format!(
                "step {}/{}: {}.{:02}% to {}",
                rollout.step + 1,
                rollout.steps.len(),
                rollout.target_weight() / 100,
                rollout.target_weight() % 100,
                rollout.target
            );
            let kind = if rollout.is_active() {
                "rollout_step"
            } else {
                "rollout_completed"
            };
            apply_rollout(route, &config.split.baseline, state, rollout)?;
            Ok((kind, reason))
        };
        match self.change(route, None, "rollout", change).await {
            Ok(_) | Err(AdminError::Conflict { .. }) => {}
            Err(err) => {
                tracing::warn!(route = %route, error = %err, "rollout step failed; will retry")
            }
        }
    }

    /// Drives rollouts on the current runtime: wakes when a step is due or
    /// when a change may have moved the next deadline.
    pub fn spawn_driver(self: &Arc<Self>) {
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let started = now_ms();
                let next = plane.tick().await;
                let wait = match next {
                    // Due before the tick and still due: the step failed
                    // (its state could not be stored). It retries after a
                    // second rather than spinning.
                    Some(due) if due <= started => Duration::from_secs(1),
                    Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1)),
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
                    _ = plane.wake.notified() => {}
                }
            }
        });
    }

    /// Resolves the endpoint names again every `dns.refresh`, on the
    /// current runtime. A changed answer builds and swaps a table with the
    /// new addresses; the config's version stays, as nothing it says
    /// changed. A name that does not resolve keeps its last addresses.
    pub fn spawn_resolver(self: &Arc<Self>) {
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            let mut failing = std::collections::HashSet::new();
            loop {
                let refresh = plane.refresh_names(&mut failing).await;
                tokio::time::sleep(refresh).await;
            }
        });
    }

    /// One round of [`ControlPlane::spawn_resolver`]; when the next is due.
    async fn refresh_names(&self, failing: &mut std::collections::HashSet<String>) -> Duration {
        let (dns, names, epoch) = {
            let inner = self.inner.lock().await;
            let names: Vec<String> = inner
                .effective
                .endpoint_names()
                .into_iter()
                .map(str::to_string)
                .collect();
            (inner.effective.dns.clone(), names, inner.addresses_epoch)
        };
        if names.is_empty() {
            return dns.refresh;
        }
        // Asked without the lock: a slow name server does not hold up
        // admin calls.
        let resolver = Resolver::new(&dns);
        // A name not answered within the interval (a second at least)
        // keeps its addresses this round; the others' answers go on.
        let within = dns.refresh.max(Duration::from_secs(1));
        let found = resolver.lookup_all(&names, within).await;
        let mut answers = Vec::with_capacity(names.len());
        for (name, found) in names.into_iter().zip(found) {
            match found {
                Ok(addrs) => {
                    if failing.remove(&name) {
                        tracing::info!(name, "endpoint name resolves again");
                    }
                    answers.push((name, addrs));
                }
                Err(err) => {
                    if failing.insert(name.clone()) {
                        tracing::warn!(name, error = %err, "endpoint name does not resolve; its last addresses stay");
                    }
                }
            }
        }
        let mut inner = self.inner.lock().await;
        // A config change resolved its names since: its answers stand.
        if inner.addresses_epoch != epoch {
            return dns.refresh;
        }
        let mut addresses = inner.addresses.clone();
        let mut changed = Vec::new();
        for (name, addrs) in answers {
            if addresses.get(&name) != Some(&addrs[..]) {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                changed.push(format!("{name} -> {}", list.join(", ")));
                addresses.insert(&name, addrs);
            }
        }
        if changed.is_empty() {
            return dns.refresh;
        }
        let live = self.routes.snapshot();
        let built = RouteTable::build_with_pools_of(
            &inner.effective,
            inner.state.version,
            &self.scope,
            &live,
            &addresses,
        );
        drop(live);
        match built {
            Ok(table) => {
                self.routes.replace(table);
                inner.addresses = addresses;
                tracing::info!(changed = %changed.join("; "), "endpoint names resolve to new addresses; table swapped");
            }
            Err(err) => {
                tracing::warn!(error = %err, changed = %changed.join("; "), "endpoint names resolve to new addresses, but no table builds with them; the last addresses stay");
            }
        }
        dns.refresh
    }

    /// One change to one route: `change` edits the route's runtime state
    /// (weights, rollout) and names the event; then a new table is built,
    /// the state persisted, and the table swapped — or nothing changes.
    async fn change<F>(
        &self,
        route: &str,
        if_match: Option<&str>,
        who: &str,
        change: F,
    ) -> Result<u64, AdminError>
    where
        F: FnOnce(
            &switchyard_config::Route,
            &mut RouteState,
        ) -> Result<(&'static str, String), AdminError>,
    {
        self.change_with_evidence(route, if_match, who, None, change)
            .await
    }

    /// [`ControlPlane::change`], with evidence for the event.
    async fn change_with_evidence<F>(
        &self,
        route: &str,
        if_match: Option<&str>,
        who: &str,
        evidence: Option<Value>,
        change: F,
    ) -> Result<u64, AdminError>
    where
        F: FnOnce(
            &switchyard_config::Route,
            &mut RouteState,
        ) -> Result<(&'static str, String), AdminError>,
    {
        let mut inner = self.inner.lock().await;
        // An unknown route is a 404 whatever the precondition says (RFC
        // 9110 §13.2.1: it is checked only where the request would succeed).
        let current = inner
            .effective
            .routes
            .iter()
            .find(|r| r.name == route)
            .ok_or_else(|| AdminError::UnknownRoute {
                route: route.to_string(),
            })?;
        check_version(if_match, inner.state.version)?;
        let old_weights = current.split.weight_map();
        let mut route_state =
            inner
                .state
                .routes
                .get(route)
                .cloned()
                .unwrap_or_else(|| RouteState {
                    weights: old_weights.clone(),
                    rollout: None,
                    baseline: None,
                });
        let step_of = |state: &RouteState| {
            state
                .rollout
                .as_ref()
                .filter(|r| r.is_active())
                .map(|r| (r.step, r.step_started_ms))
        };
        let step_before = step_of(&route_state);
        let (kind, reason) = change(current, &mut route_state)?;
        let new_weights = route_state.weights.clone();
        let step_began = step_of(&route_state).is_some_and(|s| Some(s) != step_before);

        let rollout_now = route_state.rollout.clone();
        let mut state = inner.state.clone();
        state.version += 1;
        state.routes.insert(route.to_string(), route_state);
        let effective = effective_config(&inner.base, &state);
        // Only weights or a rollout changed: the pools are the live ones.
        let live = self.routes.snapshot();
        let table = RouteTable::build_with_pools_of(
            &effective,
            state.version,
            &self.scope,
            &live,
            &inner.addresses,
        )
        .map_err(AdminError::Build)?;
        drop(live);
        self.store.persist(&state)?;
        self.routes.replace(table);
        let version = state.version;
        inner.state = state;
        inner.effective = effective;
        AdminMetrics::global().set_rollout(route, rollout_now.as_ref());
        if step_began {
            let gate = self
                .gate
                .read()
                .expect("gate lock is never poisoned")
                .clone();
            if let Some(gate) = gate {
                gate.step_started(route);
            }
        }
        if !rollout_now
            .as_ref()
            .is_some_and(|r| r.state == crate::rollout::RolloutState::Running)
        {
            // A hold ends with the rollout (a fallback, an abort, a promotion).
            self.set_hold(route, None);
        }
        self.events.record(NewEvent {
            who: who.to_string(),
            kind,
            route: Some(route.to_string()),
            old_weights: Some(old_weights),
            new_weights: Some(new_weights),
            reason,
            evidence,
            version,
        });
        Ok(version)
    }

    /// Falls back: all of `route`'s traffic to its baseline at once, the
    /// rollout (if any) aborted with the reason, persisted like any change,
    /// and an event with the detector's evidence. It stays so until an
    /// operator acts.
    pub async fn fall_back(
        &self,
        route: &str,
        reason: String,
        arm: &str,
        evidence: Value,
        judged: Option<&BTreeMap<String, u32>>,
    ) -> Result<u64, AdminError> {
        let change = |config: &switchyard_config::Route, state: &mut RouteState| {
            // A verdict on weights that have changed since (an operator's
            // change, a rollout step, a reload that swapped the pool)
            // judged a split that is no longer served: the evaluator
            // judges the new one from its next tick.
            if judged.is_some_and(|judged| *judged != state.weights) {
                return Err(AdminError::Conflict {
                    message: format!("route {route:?} changed since it was judged"),
                });
            }
            let baseline = &config.split.baseline;
            // Two canaries judged bad in one tick: the first fallback moved
            // all traffic; the second changes nothing and is not counted.
            let on_baseline = state
                .weights
                .iter()
                .all(|(pool, weight)| pool == baseline || *weight == 0);
            if on_baseline && !state.rollout.as_ref().is_some_and(|r| r.is_active()) {
                return Err(AdminError::Conflict {
                    message: format!("route {route:?} already sends everything to {baseline}"),
                });
            }
            for (pool, weight) in state.weights.iter_mut() {
                *weight = if pool == baseline {
                    switchyard_config::TOTAL_WEIGHT
                } else {
                    0
                };
            }
            if let Some(rollout) = state.rollout.as_mut().filter(|r| r.is_active()) {
                rollout.abort(reason.clone());
            }
            Ok(("fallback", reason.clone()))
        };
        let version = self
            .change_with_evidence(route, None, "canary-health", Some(evidence), change)
            .await?;
        AdminMetrics::global()
            .fallbacks
            .with_label_values(&[route, arm])
            .inc();
        self.wake.notify_one();
        Ok(version)
    }

    /// Loads the config file again. A valid file becomes the new base
    /// (runtime state applied on top, state for removed routes or changed
    /// pools dropped); an invalid one changes nothing and is recorded as an
    /// event with its line and reason.
    pub async fn reload(
        &self,
        path: &std::path::Path,
        who: &str,
    ) -> Result<Option<u64>, AdminError> {
        // Read under the lock: a reload that read the file before a
        // `PUT /v1/config` wrote it would apply the older text after it.
        let _changing = self.config_change.lock().await;
        let loaded = switchyard_config::load(path);
        let base = match loaded {
            Ok(base) => base,
            Err(err) => {
                let reason = match &err {
                    switchyard_config::ConfigError::Read { .. } => format!(
                        "{err}: {}",
                        std::error::Error::source(&err)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    ),
                    _ => format!("{}:{err}", path.display()),
                };
                AdminMetrics::global()
                    .reloads
                    .with_label_values(&["rejected"])
                    .inc();
                let version = self.inner.lock().await.state.version;
                self.record_rejection(who, &reason, version);
                return Err(AdminError::Invalid {
                    code: "invalid_config",
                    message: reason,
                    field: "config".into(),
                });
            }
        };
        let reason = format!("{} loaded", path.display());
        let resolved = Addresses::resolve(&base).await;
        let mut inner = self.inner.lock().await;
        let applied = self
            .apply_base(&mut inner, base, resolved, who, reason, None)
            .await;
        let result = match &applied {
            Ok(Some(_)) => "applied",
            Ok(None) => "unchanged",
            Err(_) => "rejected",
        };
        AdminMetrics::global()
            .reloads
            .with_label_values(&[result])
            .inc();
        applied
    }

    /// A config whose table cannot be built (an endpoint that does not
    /// resolve): refused and recorded, placed at its line in `text` (the
    /// body of `PUT /v1/config`; else the config file) when it can be.
    fn refuse_build(
        &self,
        who: &str,
        err: switchyard_proxy::ForwardError,
        base: &Config,
        text: Option<&str>,
        version: u64,
    ) -> AdminError {
        let (text, prefix) = match (text, &self.config_path) {
            (Some(text), _) => (Some(text.to_string()), String::new()),
            (None, Some(path)) => (
                std::fs::read_to_string(path).ok(),
                format!("{}:", path.display()),
            ),
            (None, None) => (None, String::new()),
        };
        let placed = text.and_then(|text| build_error_at(base, &text, &err));
        let Some(placed) = placed else {
            let err = AdminError::Build(err);
            self.record_rejection(who, &err.to_response_message(), version);
            return err;
        };
        let message = format!("{prefix}{placed}");
        self.record_rejection(who, &message, version);
        AdminError::Invalid {
            code: "invalid_config",
            message,
            field: placed.path().unwrap_or("config").to_string(),
        }
    }

    /// Logs and records a refused config; the running one stays.
    fn record_rejection(&self, who: &str, reason: &str, version: u64) {
        tracing::warn!(reason = %reason, "config reload refused; the running config stays");
        self.events.record(NewEvent {
            who: who.to_string(),
            kind: "config_rejected",
            route: None,
            old_weights: None,
            new_weights: None,
            reason: reason.to_string(),
            evidence: None,
            version,
        });
    }

    /// Lets reloads rebind the data plane's listeners through `hook`
    /// (once; later calls are ignored).
    pub fn set_listener_hook(&self, hook: ListenerHook) {
        let _ = self.listener_hook.set(hook);
    }

    /// Lets reloads check the admin section with `check` (once; later
    /// calls are ignored).
    pub fn set_admin_check(&self, check: AdminCheck) {
        let _ = self.admin_check.set(check);
    }

    /// The access log was given on the command line: a config's
    /// `access_log` no longer moves it.
    pub fn pin_access_log(&self, path: std::path::PathBuf) {
        let _ = self.access_log_flag.set(path);
    }

    /// Replaces the whole config (`PUT /v1/config`): validated like
    /// `switchyard check`, built, written over the config file (atomically),
    /// then swapped in. Without a config file there is nothing to persist
    /// it to, and the call is refused.
    pub async fn replace_config(
        &self,
        text: &str,
        if_match: Option<&str>,
        who: &str,
    ) -> Result<u64, AdminError> {
        let Some(path) = &self.config_path else {
            return Err(AdminError::Conflict {
                message: "started without --config: there is no config file to replace".into(),
            });
        };
        let mut base = switchyard_config::parse(text).map_err(|err| AdminError::Invalid {
            code: "invalid_config",
            message: err.to_string(),
            field: err.path().unwrap_or("config").to_string(),
        })?;
        // Relative certificate files are relative to the config file, as
        // when the file is loaded.
        if let Some(dir) = path.parent() {
            base.rebase_files(dir);
        }
        let _changing = self.config_change.lock().await;
        check_version(if_match, self.inner.lock().await.state.version)?;
        // Resolved without the state lock: a weight change or a fallback
        // meanwhile does not wait on a name server.
        let resolved = Addresses::resolve(&base).await;
        let mut inner = self.inner.lock().await;
        check_version(if_match, inner.state.version)?;
        let reason = "config replaced through the admin API".to_string();
        let version = self
            .apply_base(&mut inner, base, resolved, who, reason, Some((path, text)))
            .await?;
        Ok(version.unwrap_or(inner.state.version))
    }

    /// Makes `base` the config: prunes the state against it, builds the
    /// table, persists (the file, when given, then the state), swaps.
    async fn apply_base(
        &self,
        inner: &mut Inner,
        base: Config,
        resolved: Result<Addresses, switchyard_proxy::ForwardError>,
        who: &str,
        reason: String,
        write_file: Option<(&std::path::Path, &str)>,
    ) -> Result<Option<u64>, AdminError> {
        if base == inner.base && write_file.is_none() {
            return Ok(None);
        }
        let mut state = inner.state.clone();
        let dropped = prune_state(&base, &mut state);
        state.version += 1;
        let effective = effective_config(&base, &state);
        // A new config's names were resolved again (the caller did, before
        // taking the lock), as a restart would.
        let built = match resolved {
            Ok(addresses) => {
                RouteTable::build_resolved(&effective, state.version, &self.scope, &addresses)
                    .map(|table| (table, addresses))
            }
            Err(err) => Err(err),
        };
        let (table, addresses) = match built {
            Ok(built) => built,
            Err(err) => {
                let text = write_file.map(|(_, text)| text);
                return Err(self.refuse_build(who, err, &base, text, inner.state.version));
            }
        };
        if base.admin != self.bound_admin {
            if let Some(check) = self.admin_check.get() {
                check(&base.admin).map_err(|message| {
                    self.record_rejection(who, &message, inner.state.version);
                    AdminError::Invalid {
                        code: "invalid_config",
                        message,
                        field: "admin".into(),
                    }
                })?;
            }
        }
        // A new access log must open before anything changes.
        let log_moves =
            self.access_log_flag.get().is_none() && base.access_log != inner.base.access_log;
        if let (true, Some(path)) = (log_moves, &base.access_log) {
            let opened = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            if let Err(err) = opened {
                let message = format!("the access log {} cannot be opened: {err}", path.display());
                self.record_rejection(who, &message, inner.state.version);
                return Err(AdminError::Invalid {
                    code: "invalid_config",
                    message,
                    field: "access_log.path".into(),
                });
            }
        }
        let mut reason = reason;
        let listening = (base.listeners.clone(), base.tls.clone());
        let rebound = listening != inner.listening;
        let mut commit = None;
        if rebound {
            match self.listener_hook.get() {
                // All or nothing: refused, nothing changes.
                Some(hook) => {
                    commit = Some(hook(&base).map_err(|message| {
                        self.record_rejection(who, &message, inner.state.version);
                        AdminError::Invalid {
                            code: "listener_unavailable",
                            message,
                            field: "listeners".into(),
                        }
                    })?)
                }
                None => {
                    reason.push_str(
                        "; the listeners (addresses or TLS settings) changed, which takes a restart here: they stay as started",
                    );
                    tracing::warn!(
                        "config reload: listener changes take effect only after a restart"
                    );
                }
            }
        }
        if base.admin != self.bound_admin {
            reason.push_str(
                "; the admin listener changed, which takes a restart: it stays as started",
            );
            tracing::warn!(
                "config reload: an admin listener change takes effect only after a restart"
            );
        }
        // The file, then the state; a state that cannot be stored puts
        // the file back, so that a refused call changes nothing, after a
        // restart either.
        let previous = match write_file {
            Some((path, text)) => {
                let previous = std::fs::read(path).map_err(|source| AdminError::Storage {
                    what: "reading",
                    path: path.to_path_buf(),
                    source,
                })?;
                write_atomically(path, text.as_bytes())?;
                Some((path, previous))
            }
            None => None,
        };
        if let Err(err) = self.store.persist(&state) {
            if let Some((path, previous)) = previous {
                if let Err(undo) = write_atomically(path, &previous) {
                    tracing::error!(error = %undo, "cannot put the config file back after a failed change");
                }
            }
            // Not persisted: `commit` is dropped, closing what it bound.
            return Err(err);
        }
        if let Some(commit) = commit {
            commit();
            reason.push_str("; listeners now ");
            let addrs: Vec<String> = base.listeners.iter().map(ToString::to_string).collect();
            reason.push_str(&addrs.join(", "));
            inner.listening = listening;
        }
        if log_moves {
            match switchyard_proxy::access_log::set(base.access_log.as_deref()) {
                Ok(()) => match &base.access_log {
                    Some(path) => {
                        reason.push_str("; access log now ");
                        reason.push_str(&path.display().to_string());
                    }
                    None => reason.push_str("; access log off"),
                },
                Err(err) => {
                    tracing::error!(error = %err, "the access log opened a moment ago cannot be opened now; it stays as it was");
                }
            }
        }
        self.routes.replace(table);
        let version = state.version;
        // A route the config no longer has takes its series with it.
        for gone in inner
            .base
            .routes
            .iter()
            .filter(|old| !base.routes.iter().any(|r| r.name == old.name))
        {
            AdminMetrics::global().forget_route(&gone.name);
        }
        inner.base = base;
        inner.state = state;
        inner.effective = effective;
        inner.addresses = addresses;
        inner.addresses_epoch += 1;
        self.events.record(NewEvent {
            who: who.to_string(),
            kind: "config_reload",
            route: None,
            old_weights: None,
            new_weights: None,
            reason,
            evidence: None,
            version,
        });
        for (route, reason) in dropped {
            // Its rollout, if any, went with its state.
            AdminMetrics::global().forget_rollout(&route);
            self.holds
                .lock()
                .expect("holds lock is never poisoned")
                .remove(&route);
            self.events.record(NewEvent {
                who: who.to_string(),
                kind: "state_dropped",
                route: Some(route),
                old_weights: None,
                new_weights: None,
                reason,
                evidence: None,
                version,
            });
        }
        self.wake.notify_one();
        Ok(Some(version))
    }

    /// The live routes as JSON, with their version.
    pub async fn describe(&self, route: Option<&str>) -> Result<(u64, Value), AdminError> {
        let inner = self.inner.lock().await;
        let config = &inner.effective;
        let describe_route = |r: &switchyard_config::Route| {
            let pools: serde_json::Map<String, Value> = r
                .split
                .weights
                .iter()
                .filter_map(|(name, _)| config.pool(name))
                .map(|pool| {
                    (
                        pool.name.clone(),
                        json!({
                            "policy": pool.policy.name(),
                            "endpoints": pool.endpoints.iter().map(|e| {
                                let mut endpoint = json!({"address": e.address, "weight": e.weight});
                                // A name: the addresses it stands for now.
                                if let Some(addrs) = inner.addresses.get(&e.address) {
                                    endpoint["resolved"] = json!(addrs.iter().map(ToString::to_string).collect::<Vec<_>>());
                                }
                                endpoint
                            }).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            json!({
                "name": r.name,
                "match": describe_match(&r.matcher),
                "baseline": r.split.baseline,
                "weights": r.split.weight_map(),
                "pools": pools,
                "sticky": r.sticky.as_ref().map(|s| match s {
                    Sticky::Header(h) => json!({"header": h}),
                    Sticky::Cookie { name, set } => json!({"cookie": name, "set_cookie": set}),
                }),
                "override": r.pool_override.as_ref().map(|o| json!({"header": o.header, "cookie": o.cookie})),
                "rollout": inner.state.routes.get(&r.name).and_then(|s| s.rollout.as_ref()).map(|rollout| {
                    let mut described = describe_rollout(rollout);
                    if rollout.is_active() {
                        if let Some(hold) = self.hold_reason(&r.name) {
                            described["held"] = json!(hold);
                        }
                    }
                    described
                }),
            })
        };
        let version = inner.state.version;
        match route {
            None => Ok((
                version,
                json!({
                    "version": version,
                    "routes": config.routes.iter().map(describe_route).collect::<Vec<_>>(),
                }),
            )),
            Some(name) => {
                let found = config
                    .routes
                    .iter()
                    .find(|r| r.name == name)
                    .ok_or_else(|| AdminError::UnknownRoute {
                        route: name.to_string(),
                    })?;
                let mut value = describe_route(found);
                value["version"] = json!(version);
                Ok((version, value))
            }
        }
    }
}

/// A rollout's status as the API shows it.
pub fn describe_rollout(rollout: &Rollout) -> Value {
    json!({
        "strategy": rollout.strategy,
        "target": rollout.target,
        "state": rollout.state,
        "step": rollout.step + 1,
        "steps": rollout.steps.len(),
        "weight": rollout.target_weight(),
        "remaining_ms": rollout.remaining(now_ms()).map(|d| d.as_millis() as u64),
        "plan": rollout.steps,
        "reason": rollout.reason,
    })
}

/// Sets the route's weights to what the rollout's live step says.
fn apply_rollout(
    route: &str,
    baseline: &str,
    state: &mut RouteState,
    rollout: Rollout,
) -> Result<(), AdminError> {
    state.weights = weights_with(
        &state.weights,
        baseline,
        &rollout.target,
        rollout.target_weight(),
    )
    .ok_or_else(|| AdminError::Invalid {
        code: "invalid_rollout",
        message: format!(
            "route {route:?}: other pools hold too much weight for {} to reach {} basis points",
            rollout.target,
            rollout.target_weight()
        ),
        field: "steps".into(),
    })?;
    // A rollout done with all traffic on its target makes the target the
    // stable pool, as Argo Rollouts does: the pool a fallback returns to,
    // and the one the next rollout moves away from (so blue-green flips
    // alternate).
    if rollout.state == RolloutState::Completed
        && state.weights.get(&rollout.target) == Some(&10_000)
    {
        state.baseline = Some(rollout.target.clone());
    }
    state.rollout = Some(rollout);
    Ok(())
}

/// Wall-clock milliseconds: rollout timestamps are persisted and must
/// mean the same after a restart.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn check_version(if_match: Option<&str>, current: u64) -> Result<(), AdminError> {
    let Some(given) = if_match else {
        return Ok(());
    };
    let given = given.trim();
    if given == "*" {
        return Ok(());
    }
    // A list of entity-tags, compared strongly (RFC 9110 §13.1.1): the
    // same characters (`"01"` is not `"1"`); a weak `W/"N"` never matches.
    let current_tag = current.to_string();
    let matches = given.split(',').any(|tag| {
        tag.trim()
            .strip_prefix('"')
            .and_then(|tag| tag.strip_suffix('"'))
            .is_some_and(|n| n == current_tag)
    });
    if matches {
        Ok(())
    } else {
        Err(AdminError::Stale {
            given: given.to_string(),
            current,
        })
    }
}

/// Drops state for routes the config no longer has, or whose pools changed:
/// the config file defines routes and pools, the state only their weights.
fn prune_state(base: &Config, state: &mut RuntimeState) -> Vec<(String, String)> {
    let mut dropped = Vec::new();
    state.routes.retain(|name, route_state| {
        let Some(route) = base.routes.iter().find(|r| &r.name == name) else {
            dropped.push((name.clone(), "route is no longer in the config".to_string()));
            return false;
        };
        let pools: Vec<&str> = route_state.weights.keys().map(String::as_str).collect();
        if route.split.pools().into_iter().collect::<Vec<_>>() != pools {
            dropped.push((
                name.clone(),
                "the route's pools changed in the config; its configured weights apply".to_string(),
            ));
            return false;
        }
        let baseline = route_state
            .baseline
            .as_deref()
            .unwrap_or(&route.split.baseline);
        let active = route_state.rollout.as_ref().filter(|r| r.is_active());
        if active.is_some_and(|r| r.target == baseline) {
            // It could move no traffic: its steps and its abort would both
            // set the same pool.
            dropped.push((
                name.clone(),
                "the rollout's target is now the route's baseline; its configured weights apply"
                    .to_string(),
            ));
            return false;
        }
        true
    });
    dropped
}

/// The config with the runtime weights applied.
fn effective_config(base: &Config, state: &RuntimeState) -> Config {
    let mut config = base.clone();
    for route in &mut config.routes {
        if let Some(route_state) = state.routes.get(&route.name) {
            let baseline = route_state
                .baseline
                .as_deref()
                .unwrap_or(&route.split.baseline);
            route.split = Split::from_weights(baseline, &route_state.weights);
        }
    }
    config
}

fn describe_match(m: &switchyard_config::Match) -> Value {
    let mut out = serde_json::Map::new();
    match &m.host {
        Some(HostMatch::Exact(h)) => {
            out.insert("host".into(), json!(h));
        }
        Some(HostMatch::Suffix(s)) => {
            out.insert("host".into(), json!(format!("*{s}")));
        }
        None => {}
    }
    match &m.path {
        Some(PathMatch::Prefix(p)) => {
            out.insert("path_prefix".into(), json!(p));
        }
        Some(PathMatch::Exact(p)) => {
            out.insert("path_exact".into(), json!(p));
        }
        None => {}
    }
    if !m.methods.is_empty() {
        out.insert("methods".into(), json!(m.methods));
    }
    if !m.headers.is_empty() {
        let headers: serde_json::Map<String, Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.insert("headers".into(), Value::Object(headers));
    }
    Value::Object(out)
}

/// A table build error placed at its line in `text`, the source of
/// `config`, as `switchyard check` reports it: an endpoint that does not
/// resolve. `None` for errors that have no place in the file.
pub fn build_error_at(
    config: &Config,
    text: &str,
    err: &switchyard_proxy::ForwardError,
) -> Option<switchyard_config::ConfigError> {
    let switchyard_proxy::ForwardError::Resolve {
        pool,
        address,
        source,
    } = err
    else {
        return None;
    };
    let index = config
        .pools
        .iter()
        .find(|p| &p.name == pool)?
        .endpoints
        .iter()
        .position(|e| &e.address == address)?;
    let reason = format!("{address} does not resolve: {source}");
    Some(switchyard_config::endpoint_error(text, pool, index, reason))
}
