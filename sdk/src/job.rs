//! Periodic work that runs once per interval across all workers.
//!
//! Envoy ticks every VM (one per worker, plus the main thread). A [`Job`]
//! keeps the time of its next run in shared data; on a tick each VM reads it
//! and the first to move it forward with CAS runs the job. So the job runs
//! at most once per interval process-wide whatever the worker count, and a
//! run that fails (a refused callout, an unreachable cluster) simply waits
//! for the next interval: no VM "gives up" its turn to another one that
//! would fail the same way at once.
//!
//! Cost: one shared-data read per VM per interval, not per tick (each VM
//! remembers the next-run time it last saw or wrote, and reads again only
//! once that time has come), one CAS write per run. A run moved sooner by
//! [`Job::schedule`] is seen at once by the VM that moved it, by the others
//! when their remembered time comes.

#[cfg(feature = "host")]
pub use host_job::Job;

/// Whether a run is due at `now_ns` given the stored next-run time.
pub fn due(next_run_ns: Option<u64>, now_ns: u64) -> bool {
    next_run_ns.is_none_or(|next| now_ns >= next)
}

#[cfg(feature = "host")]
mod host_job {
    use super::due;
    use crate::shared::{SharedValue, Update, UpdateError};
    use std::time::Duration;

    /// One periodic job, named by a shared-data key.
    pub struct Job {
        next_run: SharedValue<u64>,
        interval_ns: u64,
        /// The next-run time this VM last read or wrote: no read before it.
        known_next: std::cell::Cell<Option<u64>>,
    }

    impl Job {
        /// `key` must be unique per job and plugin configuration.
        pub fn new(key: impl Into<String>, interval: Duration) -> Self {
            Job {
                next_run: SharedValue::new(key),
                interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
                known_next: std::cell::Cell::new(None),
            }
        }

        /// Claims the run due at `now_ns`: true for exactly one VM per
        /// interval (the caller then runs the job). Errors from shared data
        /// read as "not mine".
        pub fn claim(&self, now_ns: u64) -> bool {
            if !due(self.known_next.get(), now_ns) {
                return false;
            }
            let next = now_ns.saturating_add(self.interval_ns);
            let mut seen = None;
            let r: Result<bool, UpdateError> = self.next_run.update(|cur| {
                if due(cur.copied(), now_ns) {
                    seen = Some(next);
                    Update::Write(next, true)
                } else {
                    seen = cur.copied();
                    Update::Keep(false)
                }
            });
            // On an error nothing is remembered: the next tick reads again.
            self.known_next.set(if r.is_ok() { seen } else { None });
            r.unwrap_or(false)
        }

        /// Moves the next run to `at_ns` (e.g. sooner after a change, or
        /// later after a long-running callout); last writer wins.
        pub fn schedule(&self, at_ns: u64) {
            self.known_next.set(Some(at_ns));
            let _ = self.next_run.set(&at_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn due_rules() {
        assert!(due(None, 0));
        assert!(due(Some(100), 100));
        assert!(!due(Some(101), 100));
    }
}
