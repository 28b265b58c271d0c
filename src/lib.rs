//! salvage: declarative, policy-driven recovery for AI-agent and workflow runs.
//!
//! Modules follow the data: [`model`] (runs) → [`store`] (where runs live) → [`inspect`]
//! (the read-side operator surfaces) → [`cli`]. See `ARCHITECTURE.md`.

pub mod cli;
pub mod inspect;
pub mod model;
pub mod store;
