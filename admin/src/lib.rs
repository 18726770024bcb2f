//! The Switchyard control plane: the admin HTTP API (weights, rollouts,
//! durable state). Not built yet; issue 4 fills this crate.
