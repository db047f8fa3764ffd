//! The state changes a batch makes, (step id, key, new value or tombstone): what the stateful
//! steps record, the store keeps, the changelog sends to its compacted topic and a restart
//! replays. Their own file, below the steps and the store, so neither imports the other for it.

use std::sync::Arc;

use crate::expr::Val;

/// One state change of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// The id of the step that owns the state.
    pub step: Arc<str>,
    /// Key within the step's state (for a window: `[slot, key]`).
    pub key: Val,
    /// The new value; `None` is a tombstone (the key's state is gone).
    pub value: Option<Val>,
}

/// Where a step records its changes.
pub(crate) struct StepUpdate<'a> {
    pub step: &'a Arc<str>,
    pub changes: &'a mut Vec<StateChange>,
}
