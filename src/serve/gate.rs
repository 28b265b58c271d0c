//! The `simulate` reload gate: before a clean new set goes live, replay it against the active
//! one over the store's recent incidents ([`crate::simulate`]) and refuse it when a decision
//! changes dangerously (an approval dropped, an irreversible step newly reachable, a checkpoint
//! moved after the failure). A simulation that cannot run refuses too: the gate fails closed.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::reload::{GateVerdict, ReloadGate};
use crate::plan::RecoverySet;
use crate::simulate::{SimulateOptions, simulate};
use crate::store::RunStore;

/// Replays recent incidents with both sets; rejects dangerous changes.
#[derive(Debug, Clone)]
pub struct SimulateGate {
    store: Arc<dyn RunStore>,
    options: SimulateOptions,
}

impl SimulateGate {
    pub fn new(store: Arc<dyn RunStore>, options: SimulateOptions) -> SimulateGate {
        SimulateGate { store, options }
    }
}

#[async_trait]
impl ReloadGate for SimulateGate {
    fn name(&self) -> &str {
        "simulate"
    }

    async fn check(&self, current: &RecoverySet, proposed: &RecoverySet) -> GateVerdict {
        match simulate(self.store.clone(), current, proposed, &self.options, &|_, _| {}).await {
            Ok(simulation) if simulation.is_dangerous() => GateVerdict::Reject {
                reason: format!(
                    "{} dangerous change(s) in {} of the {} most recent incidents",
                    simulation.counts.dangerous_changes, simulation.counts.dangerous, simulation.counts.simulated
                ),
                details: json!({
                    "counts": simulation.counts,
                    "dangerous": simulation.dangerous().collect::<Vec<_>>(),
                }),
            },
            Ok(simulation) => {
                tracing::info!(
                    simulated = simulation.counts.simulated,
                    changed = simulation.counts.changed,
                    "The simulate gate found no dangerous change."
                );
                GateVerdict::Accept
            }
            Err(error) => GateVerdict::Reject {
                reason: format!("the simulation could not run: {error}"),
                details: json!({"error": error.to_string()}),
            },
        }
    }
}
