//! salvage: declarative, policy-driven recovery for AI-agent and workflow runs.
//!
//! [`telemetry`] (metric names and buckets, through the `metrics` facade) and [`trace_context`]
//! (the W3C trace context kept in the journal) are used by every module.
//! Modules follow the data: [`limits`] (the bounds on every input) and [`diagnostics`] (drawing
//! errors) → [`model`] (runs) → [`store`] (where runs live) → [`inspect`]
//! (the read-side operator surfaces) → [`policy`] (sandboxed Rhai decisions) → [`playbook`]
//! (recovery playbooks compiled into checked graphs) → [`plan`] (incident → explained plan) →
//! [`execute`] (the runner) → [`simulate`] (a proposed policy replayed over past incidents) →
//! [`serve`] (the daemon) → [`cli`]. See `ARCHITECTURE.md`.

pub mod cli;
pub mod diagnostics;
pub mod execute;
pub mod inspect;
pub mod limits;
pub mod model;
pub mod plan;
pub mod playbook;
pub mod policy;
pub mod serve;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod trace_context;
pub mod web;
