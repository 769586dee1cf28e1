//! A bounded key space for shared data.
//!
//! Envoy never evicts shared-data keys, so one key per client address or
//! tenant would grow memory without limit. A [`SlotTable`] maps any key onto
//! a fixed number of shared-data keys; the value stored in a slot should
//! record the owner's fingerprint so the caller sees collisions and can apply
//! its own policy (e.g. a rate limiter lets colliding keys share one bucket,
//! erring toward limiting, never toward letting everything through).

use crate::codec::{fnv1a64, mix64};

/// A fixed number of shared-data keys (`<prefix>/<slot>`) standing in for an
/// unbounded key space. Memory is bounded by `slots × value size` no matter
/// how many distinct keys arrive.
#[derive(Debug, Clone)]
pub struct SlotTable {
    prefix: String,
    slots: u32,
}

/// Where a key lives: the shared-data key of its slot and the key's
/// fingerprint, which the slot's value should record to detect collisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub shared_key: String,
    pub index: u32,
    pub fingerprint: u64,
}

impl SlotTable {
    /// `slots` is clamped to at least 1.
    pub fn new(prefix: impl Into<String>, slots: u32) -> Self {
        SlotTable {
            prefix: prefix.into(),
            slots: slots.max(1),
        }
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn slot(&self, key: &[u8]) -> Slot {
        let fingerprint = fnv1a64(key);
        // FNV's low bits spread poorly over similar keys (addresses differing
        // in one octet): mix before reducing to a slot.
        let index = (mix64(fingerprint) % u64::from(self.slots)) as u32;
        Slot {
            shared_key: format!("{}/{}", self.prefix, index),
            index,
            fingerprint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn slots_are_bounded_and_deterministic() {
        let t = SlotTable::new("rl", 64);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10_000u32 {
            let s = t.slot(format!("10.0.{}.{}", i / 256, i % 256).as_bytes());
            assert!(s.index < 64);
            assert_eq!(s.shared_key, format!("rl/{}", s.index));
            seen.insert(s.index);
        }
        // All slots get used: the hash spreads.
        assert_eq!(seen.len(), 64);
        assert_eq!(t.slot(b"a"), t.slot(b"a"));
        assert_eq!(SlotTable::new("x", 0).slots(), 1);
    }
}
