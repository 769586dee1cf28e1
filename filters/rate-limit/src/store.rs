//! Buckets in Envoy shared data: one key per slot, CAS with bounded retries.

use crate::decide::{SlotRef, Store, StoreError};
use crate::gcra::{self, Bucket, Outcome, Rate};
use switchyard_sdk::shared::{RetryPolicy, SharedValue, Update, UpdateError};

/// Shared data of this Envoy process (one `vm_id`).
pub struct SharedStore {
    policy: RetryPolicy,
    /// CAS conflicts (lost races that were retried) during this request.
    pub cas_retries: u64,
}

impl SharedStore {
    pub fn new(max_attempts: u32) -> Self {
        SharedStore {
            policy: RetryPolicy { max_attempts },
            cas_retries: 0,
        }
    }
}

impl Store for SharedStore {
    fn peek(&mut self, slot: &SlotRef) -> Result<Option<Bucket>, StoreError> {
        SharedValue::<Bucket>::new(slot.shared_key.as_str())
            .get()
            .map(|b| b.map(|b| *b))
            .map_err(|e| StoreError::Host(e.to_string()))
    }

    fn charge(&mut self, slot: &SlotRef, rate: &Rate, now_ns: u64) -> Result<Outcome, StoreError> {
        let value = SharedValue::<Bucket>::new(slot.shared_key.as_str()).with_policy(self.policy);
        let result =
            value.update(
                |current| match gcra::step(current, slot.fingerprint, now_ns, rate) {
                    (Some(next), outcome) => Update::Write(next, outcome),
                    (None, outcome) => Update::Keep(outcome),
                },
            );
        self.cas_retries += value.stats().cas_conflicts;
        result.map_err(|e| match e {
            UpdateError::Contended { .. } => StoreError::Contended,
            UpdateError::Host(h) => StoreError::Host(h.to_string()),
        })
    }
}
