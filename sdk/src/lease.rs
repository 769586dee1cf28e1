//! One worker at a time: a lease in shared data.
//!
//! Envoy runs one VM per worker thread and ticks every root context. Work
//! that must happen once per process (polling an endpoint, flushing a batch)
//! goes to whoever holds the lease: a shared-data record `(holder, expiry)`
//! taken and renewed with CAS. A holder that stops renewing (its worker is
//! stuck or gone) loses the lease once it expires, and the next ticking VM
//! takes over.

use crate::codec::Codec;
#[cfg(feature = "host")]
pub use acquire::Lease;

/// The lease record: who holds it and until when (host clock, ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: u64,
    pub expires_at_ns: u64,
}

impl Codec for LeaseRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.holder.to_le_bytes().to_vec();
        v.extend_from_slice(&self.expires_at_ns.to_le_bytes());
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        Some(LeaseRecord {
            // invariant: the length is exactly 16 (checked above).
            holder: u64::decode(&bytes[..8])?,
            expires_at_ns: u64::decode(&bytes[8..])?,
        })
    }
}

/// Whether `me` may write a new record at `now_ns` over `current`: when
/// nobody holds it, it expired, or `me` already holds it (renewal).
pub fn may_take(current: Option<LeaseRecord>, me: u64, now_ns: u64) -> bool {
    match current {
        None => true,
        Some(r) => r.holder == me || now_ns >= r.expires_at_ns,
    }
}

#[cfg(feature = "host")]
mod acquire {
    use super::{LeaseRecord, may_take};
    use crate::codec::Codec;
    use crate::host::{self, CasOutcome, HostError};
    use std::cell::Cell;
    use std::time::Duration;

    /// A process-wide lease named by a shared-data key.
    pub struct Lease {
        key: String,
        ttl: Duration,
        me: u64,
        held: Cell<bool>,
    }

    impl Lease {
        /// `me` must differ between VMs: use [`crate::vm::instance_id`].
        pub fn new(key: impl Into<String>, ttl: Duration, me: u64) -> Self {
            Lease {
                key: key.into(),
                ttl,
                me,
                held: Cell::new(false),
            }
        }

        /// Takes or renews the lease; true while this VM holds it. Call on every
        /// tick, with a TTL of a few tick periods so one late tick does not flap.
        pub fn acquire(&self) -> Result<bool, HostError> {
            let now = host::now_nanos();
            let (bytes, cas) = host::shared_data(&self.key)?;
            let current = bytes.as_deref().and_then(LeaseRecord::decode);
            if !may_take(current, self.me, now) {
                self.held.set(false);
                return Ok(false);
            }
            let ttl_ns = u64::try_from(self.ttl.as_nanos()).unwrap_or(u64::MAX);
            let next = LeaseRecord {
                holder: self.me,
                expires_at_ns: now.saturating_add(ttl_ns),
            };
            let won = host::set_shared_data(&self.key, &next.encode(), cas)? == CasOutcome::Written;
            self.held.set(won);
            Ok(won)
        }

        /// Whether the last [`Lease::acquire`] succeeded.
        pub fn held(&self) -> bool {
            self.held.get()
        }

        /// Gives the lease up now (e.g. on VM shutdown) so another VM need not
        /// wait for the expiry.
        pub fn release(&self) -> Result<(), HostError> {
            let (bytes, cas) = host::shared_data(&self.key)?;
            if bytes
                .as_deref()
                .and_then(LeaseRecord::decode)
                .map(|r| r.holder)
                == Some(self.me)
            {
                let free = LeaseRecord {
                    holder: 0,
                    expires_at_ns: 0,
                };
                host::set_shared_data(&self.key, &free.encode(), cas)?;
            }
            self.held.set(false);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn take_rules() {
        let held = Some(LeaseRecord {
            holder: 1,
            expires_at_ns: 100,
        });
        assert!(may_take(None, 2, 0));
        assert!(may_take(held, 1, 50), "holder renews");
        assert!(!may_take(held, 2, 99), "others wait for expiry");
        assert!(may_take(held, 2, 100), "expired: anyone");
    }

    #[test]
    fn record_codec() {
        let r = LeaseRecord {
            holder: u64::MAX - 1,
            expires_at_ns: 1 << 40,
        };
        assert_eq!(LeaseRecord::decode(&r.encode()), Some(r));
        assert_eq!(LeaseRecord::decode(&[0; 15]), None);
    }
}
