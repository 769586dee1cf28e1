//! Passive health: consecutive failures (5xx answers, connect failures and
//! resets) eject an endpoint for a time that grows with each ejection, as
//! long as the share of ejected endpoints stays under a maximum.

use switchyard_sdk::codec::Codec;

/// Consecutive failures of one endpoint, shared by all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthRecord {
    /// Fingerprint of the endpoint address (a slot may be reassigned).
    pub fingerprint: u64,
    pub consecutive: u32,
}

impl Codec for HealthRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.fingerprint.to_le_bytes().to_vec();
        v.extend_from_slice(&self.consecutive.to_le_bytes());
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 12 {
            return None;
        }
        Some(HealthRecord {
            fingerprint: u64::decode(&bytes[..8])?,
            consecutive: u32::decode(&bytes[8..])?,
        })
    }
}

/// What one outcome does to the shared record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to write (a success on a clean record).
    Keep,
    /// Write this record.
    Write(HealthRecord),
    /// The threshold was reached: write the reset record and eject.
    Eject(HealthRecord),
}

/// Applies one outcome to the current record of endpoint `fingerprint`.
pub fn step(current: Option<HealthRecord>, fingerprint: u64, failed: bool, threshold: u32) -> Step {
    let consecutive = match current {
        Some(r) if r.fingerprint == fingerprint => r.consecutive,
        _ => 0,
    };
    let fresh = |consecutive| HealthRecord {
        fingerprint,
        consecutive,
    };
    if !failed {
        return if consecutive == 0 && current.is_some_and(|r| r.fingerprint == fingerprint) {
            Step::Keep
        } else {
            Step::Write(fresh(0))
        };
    }
    let n = consecutive.saturating_add(1);
    if n >= threshold.max(1) {
        Step::Eject(fresh(0))
    } else {
        Step::Write(fresh(n))
    }
}

/// How long the `nth` ejection (1-based) lasts: `base × n`, at most `max`
/// (Envoy's outlier detection grows it the same way).
pub fn ejection_ns(base_ns: u64, max_ns: u64, nth: u32) -> u64 {
    base_ns.saturating_mul(u64::from(nth.max(1))).min(max_ns)
}

/// Whether one more of `total` endpoints may be ejected while `ejected`
/// already are: the share stays within `max_percent`, but a single ejection
/// is always allowed (as Envoy does).
pub fn may_eject(total: usize, ejected: usize, max_percent: u32) -> bool {
    if total == 0 {
        return false;
    }
    ejected == 0 || (ejected + 1) * 100 <= total * max_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_in_a_row_ejects() {
        let fp = 42;
        let mut rec = None;
        for _ in 0..2 {
            match step(rec, fp, true, 3) {
                Step::Write(r) => rec = Some(r),
                s => panic!("{s:?}"),
            }
        }
        assert_eq!(rec.map(|r| r.consecutive), Some(2));
        assert_eq!(
            step(rec, fp, true, 3),
            Step::Eject(HealthRecord {
                fingerprint: fp,
                consecutive: 0
            })
        );
    }

    #[test]
    fn success_resets_and_clean_success_writes_nothing() {
        let rec = HealthRecord {
            fingerprint: 1,
            consecutive: 2,
        };
        assert_eq!(
            step(Some(rec), 1, false, 3),
            Step::Write(HealthRecord {
                fingerprint: 1,
                consecutive: 0
            })
        );
        let clean = HealthRecord {
            fingerprint: 1,
            consecutive: 0,
        };
        assert_eq!(step(Some(clean), 1, false, 3), Step::Keep);
        // Another endpoint's leftovers in the slot do not count.
        assert_eq!(
            step(Some(rec), 9, true, 3),
            Step::Write(HealthRecord {
                fingerprint: 9,
                consecutive: 1
            })
        );
    }

    #[test]
    fn ejection_time_grows_to_the_cap() {
        assert_eq!(ejection_ns(30, 300, 1), 30);
        assert_eq!(ejection_ns(30, 300, 3), 90);
        assert_eq!(ejection_ns(30, 300, 50), 300);
        assert_eq!(ejection_ns(u64::MAX, u64::MAX, 9), u64::MAX);
    }

    #[test]
    fn ejected_share_is_capped() {
        assert!(may_eject(3, 0, 10), "one is always allowed");
        assert!(!may_eject(3, 1, 50), "2 of 3 > 50%");
        assert!(may_eject(4, 1, 50));
        assert!(!may_eject(4, 2, 50));
        assert!(!may_eject(0, 0, 100));
    }

    #[test]
    fn record_codec() {
        let r = HealthRecord {
            fingerprint: u64::MAX,
            consecutive: 7,
        };
        assert_eq!(HealthRecord::decode(&r.encode()), Some(r));
        assert_eq!(HealthRecord::decode(&[1, 2]), None);
    }
}
