//! The control plane: the config file's routes with the runtime state on
//! top, and the one way to change them. A change validates fully, builds a
//! new table off to the side, persists, and only then swaps; a failure at
//! any step leaves the old table serving.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use switchyard_config::{Config, HostMatch, PathMatch, Split, Sticky};
use switchyard_proxy::{RouteTable, Routes};
use tokio::sync::Mutex;

use crate::error::AdminError;
use crate::events::{EventLog, NewEvent};
use crate::state::{RouteState, RuntimeState, StateStore};

/// The control plane, shared by the admin API and (later) rollouts and reloads.
pub struct ControlPlane {
    routes: Routes,
    store: StateStore,
    events: EventLog,
    /// Serializes changes; never touched by the request path.
    inner: Mutex<Inner>,
}

struct Inner {
    /// The config file as loaded.
    base: Config,
    /// What the API changed.
    state: RuntimeState,
    /// `base` with `state` applied: what the live table was built from.
    effective: Config,
}

impl ControlPlane {
    /// Applies the stored state on top of `base`, builds the first table,
    /// and returns the plane with the [`Routes`] the data plane serves.
    pub fn start(
        base: Config,
        store: StateStore,
        mut state: RuntimeState,
    ) -> Result<Arc<ControlPlane>, AdminError> {
        let events = EventLog::open(store.dir())?;
        let dropped = prune_state(&base, &mut state);
        state.version += 1;
        let effective = effective_config(&base, &state);
        let table = RouteTable::build(&effective, state.version).map_err(AdminError::Build)?;
        store.persist(&state)?;
        for (route, reason) in dropped {
            events.record(NewEvent {
                who: "startup".into(),
                kind: "state_dropped",
                route: Some(route),
                old_weights: None,
                new_weights: None,
                reason,
                version: state.version,
            });
        }
        Ok(Arc::new(ControlPlane {
            routes: Routes::new(table),
            store,
            events,
            inner: Mutex::new(Inner {
                base,
                state,
                effective,
            }),
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
        let mut inner = self.inner.lock().await;
        check_version(if_match, inner.state.version)?;
        let current = inner
            .effective
            .routes
            .iter()
            .find(|r| r.name == route)
            .ok_or_else(|| AdminError::UnknownRoute {
                route: route.to_string(),
            })?;
        let new_weights = current
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
        let old_weights = current.split.weight_map();

        let mut state = inner.state.clone();
        state.version += 1;
        state.routes.insert(
            route.to_string(),
            RouteState {
                weights: new_weights.clone(),
            },
        );
        let effective = effective_config(&inner.base, &state);
        let table = RouteTable::build(&effective, state.version).map_err(AdminError::Build)?;
        self.store.persist(&state)?;
        self.routes.replace(table);
        let version = state.version;
        inner.state = state;
        inner.effective = effective;
        self.events.record(NewEvent {
            who: who.to_string(),
            kind: "weights",
            route: Some(route.to_string()),
            old_weights: Some(old_weights),
            new_weights: Some(new_weights),
            reason: "weights set through the admin API".into(),
            version,
        });
        Ok(version)
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
                            "endpoints": pool.endpoints.iter().map(|e| json!({"address": e.address, "weight": e.weight})).collect::<Vec<_>>(),
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
                "rollout": Value::Null,
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

fn check_version(if_match: Option<&str>, current: u64) -> Result<(), AdminError> {
    let Some(given) = if_match else {
        return Ok(());
    };
    let given = given.trim();
    if given == "*" {
        return Ok(());
    }
    // ETags are `"N"`; a weak `W/"N"` compares the same here.
    let bare = given.trim_start_matches("W/").trim_matches('"');
    if bare.parse::<u64>().ok() == Some(current) {
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
        true
    });
    dropped
}

/// The config with the runtime weights applied.
fn effective_config(base: &Config, state: &RuntimeState) -> Config {
    let mut config = base.clone();
    for route in &mut config.routes {
        if let Some(route_state) = state.routes.get(&route.name) {
            route.split = Split::from_weights(&route.split.baseline, &route_state.weights);
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
