//! Switchyard's control plane: the admin HTTP API that changes weights,
//! the durable state behind it, and the event log.
//!
//! - `control`: [`ControlPlane`], config + runtime state, validate → build →
//!   persist → swap.
//! - `api`: [`AdminApi`], paths, authentication, JSON bodies.
//! - `server`: the admin listener ([`server::start`]).
//! - `rollout`: the rollout step machine (strategies, presets, transitions).
//! - `detector`: the statistical canary detector ([`detector::Detector`]),
//!   CUSUM tests of the canary's errors and latency against the baseline.
//! - `state`: [`StateStore`], atomic writes of the runtime state.
//! - `events`: [`EventLog`], the change log and its JSONL audit file.
//! - `watch`: hot reload of the config file.
//! - `evaluator`: feeds each canary's ticks to its detector; falls back on a verdict.
//! - `metrics`: control-plane metrics and the `/metrics` text.
//! - `error`: [`AdminError`] and its JSON answer.

mod api;
mod control;
pub mod detector;
mod error;
pub mod evaluator;
pub mod events;
pub mod metrics;
pub mod rollout;
pub mod server;
mod state;
pub mod watch;

pub use api::AdminApi;
pub use control::{
    build_error_at, AdminCheck, ControlPlane, GateVerdict, ListenerCommit, ListenerHook,
    RolloutAction, StepGate,
};
pub use error::AdminError;
pub use events::{Event, EventLog};
pub use state::{RuntimeState, StateStore};
