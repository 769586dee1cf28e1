//! Typed shared data with CAS, snapshot caching and a bounded key space.
//!
//! Envoy keeps shared data per process (per `vm_id`) and never evicts a key.
//! So:
//! - [`SharedValue`] reads through a per-VM cache keyed by the CAS token: the
//!   hot path is one host call, and decoding happens only when another VM
//!   wrote since.
//! - [`SharedValue::update`] is read-modify-write with CAS, retried at most
//!   [`RetryPolicy::max_attempts`] times. When retries run out it returns
//!   [`UpdateError::Contended`] and writes nothing: the caller decides what
//!   contention means (a rate limiter denies, a counter drops and counts).
//! - Creating a key cannot be made atomic: Envoy accepts any CAS token for a
//!   key that does not exist yet, so two VMs that both saw "absent" can both
//!   write. [`SharedValue::ensure`] creates keys known up front in
//!   `on_configure`, before traffic, where such a race only writes the same
//!   initial value twice. `update` on an absent key first writes an empty
//!   placeholder and then updates it with CAS, which narrows the window to a
//!   placeholder landing on a value another VM updated in the microseconds
//!   between — call `ensure` where that matters.
//!
//! [`crate::slots::SlotTable`] bounds the number of keys.

use crate::codec::Codec;
use crate::host::{self, CasOutcome, HostError};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

/// How hard [`SharedValue::update`] tries before giving up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Workers are few (one VM per core): 16 rounds of losing the race in a
        // row means pathological contention, not bad luck.
        RetryPolicy { max_attempts: 16 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    Host(HostError),
    /// Every attempt lost the CAS race; nothing was written.
    Contended {
        attempts: u32,
    },
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Host(e) => write!(f, "{e}"),
            UpdateError::Contended { attempts } => {
                write!(
                    f,
                    "shared data contended: gave up after {attempts} CAS attempts"
                )
            }
        }
    }
}

impl From<HostError> for UpdateError {
    fn from(e: HostError) -> Self {
        UpdateError::Host(e)
    }
}

/// What an update closure decides.
pub enum Update<T, R> {
    /// Write this value, then return `R`.
    Write(T, R),
    /// Leave the value as it is and return `R`.
    Keep(R),
}

/// Counters a [`SharedValue`] keeps about itself (per VM).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub reads: u64,
    pub decodes: u64,
    pub cas_conflicts: u64,
    pub contended: u64,
    /// Values present but not decodable (another version of the plugin?).
    pub corrupt: u64,
}

/// One typed shared-data key.
pub struct SharedValue<T> {
    key: String,
    policy: RetryPolicy,
    cache: RefCell<Option<(u32, Rc<T>)>>,
    stats: Cell<StoreStats>,
}

impl<T: Codec> SharedValue<T> {
    pub fn new(key: impl Into<String>) -> Self {
        SharedValue {
            key: key.into(),
            policy: RetryPolicy::default(),
            cache: RefCell::new(None),
            stats: Cell::new(StoreStats::default()),
        }
    }

    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut StoreStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Current value and its CAS token; decodes only when the token changed.
    /// An undecodable value reads as absent (and is counted as corrupt).
    fn read(&self) -> Result<(Option<Rc<T>>, u32), HostError> {
        let (bytes, cas) = host::shared_data(&self.key)?;
        self.bump(|s| s.reads += 1);
        let Some(bytes) = bytes.filter(|b| !b.is_empty()) else {
            return Ok((None, cas));
        };
        if let Some((cached_cas, value)) = self.cache.borrow().as_ref()
            && *cached_cas == cas
        {
            return Ok((Some(Rc::clone(value)), cas));
        }
        self.bump(|s| s.decodes += 1);
        match T::decode(&bytes) {
            Some(v) => {
                let v = Rc::new(v);
                *self.cache.borrow_mut() = Some((cas, Rc::clone(&v)));
                Ok((Some(v), cas))
            }
            None => {
                self.bump(|s| s.corrupt += 1);
                Ok((None, cas))
            }
        }
    }

    /// The current value (cached by CAS token).
    pub fn get(&self) -> Result<Option<Rc<T>>, HostError> {
        Ok(self.read()?.0)
    }

    /// Writes unconditionally.
    pub fn set(&self, value: &T) -> Result<(), HostError> {
        host::set_shared_data(&self.key, &value.encode(), 0).map(|_| ())
    }

    /// Creates the key with `initial` if it does not exist. Call it in
    /// `on_configure` for keys known up front (see the module docs).
    pub fn ensure(&self, initial: &T) -> Result<(), HostError> {
        let (bytes, _) = host::shared_data(&self.key)?;
        if bytes.is_none() {
            self.set(initial)?;
        }
        Ok(())
    }

    /// Read-modify-write with CAS. `f` may run several times (once per
    /// attempt) and must not have side effects beyond its return value.
    pub fn update<R>(
        &self,
        mut f: impl FnMut(Option<&T>) -> Update<T, R>,
    ) -> Result<R, UpdateError> {
        for _ in 0..self.policy.max_attempts {
            let (current, cas) = self.read()?;
            if cas == 0 {
                // Absent: any write would be unconditional. Create an empty
                // placeholder and run `f` on a base that has a CAS token.
                host::set_shared_data(&self.key, &[], 0)?;
                continue;
            }
            match f(current.as_deref()) {
                Update::Keep(r) => return Ok(r),
                Update::Write(next, r) => {
                    let bytes = next.encode();
                    match host::set_shared_data(&self.key, &bytes, cas)? {
                        CasOutcome::Written => return Ok(r),
                        CasOutcome::Conflict => self.bump(|s| s.cas_conflicts += 1),
                    }
                }
            }
        }
        self.bump(|s| s.contended += 1);
        Err(UpdateError::Contended {
            attempts: self.policy.max_attempts,
        })
    }
}
