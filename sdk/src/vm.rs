//! Identity of this VM among the VMs of one Envoy process.

use crate::shared::{SharedValue, Update};
use std::cell::Cell;

thread_local! {
    static INSTANCE: Cell<u64> = const { Cell::new(0) };
}

/// Shared-data key of the instance counter.
pub const INSTANCE_SEQ_KEY: &str = "switchyard/vm-instance-seq";

/// A number unique to this VM within the Envoy process (1, 2, ...), taken
/// from a shared counter on first use. 0 only if shared data is unusable.
pub fn instance_id() -> u64 {
    INSTANCE.with(|cell| {
        if cell.get() == 0 {
            let seq = SharedValue::<u64>::new(INSTANCE_SEQ_KEY);
            let id = seq
                .update(|n| {
                    let next = n.copied().unwrap_or(0) + 1;
                    Update::Write(next, next)
                })
                .unwrap_or(0);
            cell.set(id);
        }
        cell.get()
    })
}
