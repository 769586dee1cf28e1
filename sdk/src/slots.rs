//! A bounded key space for shared data.
//!
//! Envoy never evicts shared-data keys, so one key per client address or
//! tenant would grow memory without limit. A [`SlotTable`] maps any key onto
//! a fixed number of shared-data keys; the value stored in a slot should
//! record the owner's fingerprint so the caller sees collisions and can apply
//! its own policy (e.g. a rate limiter lets colliding keys share one bucket,
//! erring toward limiting, never toward letting everything through).
//!
//! First use is exact only if the key already exists: Envoy's
//! `proxy_set_shared_data` writes an absent key unconditionally, whatever
//! CAS token is given (proxy-wasm-cpp-host `SharedData::set`), so two
//! workers creating the same key at once both succeed and one update is
//! lost. [`SlotTable::create_all`] creates every slot once, at configure
//! time, so the request path only ever CAS-updates existing keys.

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

    /// The shared-data key recording that every slot exists
    /// (`<prefix>/ready`, value: the slot count as 4 LE bytes).
    #[cfg(feature = "host")]
    fn ready_key(&self) -> String {
        format!("{}/ready", self.prefix)
    }

    /// Creates every slot that does not exist yet (an empty value), then
    /// records that they all do; a VM that finds the record skips the walk.
    /// Returns how many keys were created.
    ///
    /// Run it where no request is served yet (a stage's build, i.e. the
    /// plugin's configure): Envoy configures the main-thread VM before the
    /// workers', so the slots exist before the first request. Cost: one
    /// shared-data read per slot on the first VM (65 536 slots: tens of ms),
    /// and Envoy's memory for every slot up front (README of the caller).
    ///
    /// Errors: the first failing host call; slots created before it stay,
    /// and absent ones are still created on first use (not exact).
    #[cfg(feature = "host")]
    pub fn create_all(&self) -> Result<u32, crate::host::HostError> {
        use crate::host;
        let ready = self.ready_key();
        let (marker, _) = host::shared_data(&ready)?;
        if marker.as_deref() == Some(&self.slots.to_le_bytes()[..]) {
            return Ok(0);
        }
        let mut created = 0;
        for index in 0..self.slots {
            let key = format!("{}/{}", self.prefix, index);
            // Only absent keys: an existing one may hold a live bucket.
            if host::shared_data(&key)?.1 == 0 {
                host::set_shared_data(&key, &[], 0)?;
                created += 1;
            }
        }
        host::set_shared_data(&ready, &self.slots.to_le_bytes(), 0)?;
        Ok(created)
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
