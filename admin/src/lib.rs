//! Switchyard's control plane: the admin HTTP API that changes weights,
//! the durable state behind it, and the event log.
//!
//! - `control`: [`ControlPlane`], config + runtime state, validate → build →
//!   persist → swap.
//! - `api`: [`AdminApi`], paths, authentication, JSON bodies.
//! - `server`: the admin listener ([`server::start`]).
//! - `rollout`: the rollout step machine (strategies, presets, transitions).
//! - `state`: [`StateStore`], atomic writes of the runtime state.
//! - `events`: [`EventLog`], the change log and its JSONL audit file.
//! - `watch`: hot reload of the config file.
//! - `metrics`: control-plane metrics and the `/metrics` text.
//! - `error`: [`AdminError`] and its JSON answer.

mod api;
mod control;
mod error;
mod events;
pub mod metrics;
pub mod rollout;
pub mod server;
mod state;
pub mod watch;

pub use api::AdminApi;
pub use control::{ControlPlane, GateVerdict, RolloutAction, StepGate};
pub use error::AdminError;
pub use events::{Event, EventLog};
pub use state::{RuntimeState, StateStore};
