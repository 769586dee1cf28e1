//! Global mode: the request to an RLS-compatible service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) and what
//! its answer means. Pure: the filter sends and receives through
//! `switchyard_sdk::callout`.

use crate::config::Mode;
use crate::gcra::ceil_secs;
use crate::headers::Quota;
use switchyard_proto::rls::{
    RateLimitDescriptor, RateLimitRequest, RateLimitResponse, rate_limit_descriptor,
    rate_limit_response,
};
use switchyard_sdk::codec::Codec;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// One global rule that applies to the request: one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCheck {
    pub rule: usize,
    pub name: String,
    pub mode: Mode,
    pub entries: Vec<(String, String)>,
}

/// The RLS request: one descriptor per check, in order (the statuses come
/// back in the same order).
pub fn request(domain: &str, checks: &[GlobalCheck]) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: checks
            .iter()
            .map(|c| RateLimitDescriptor {
                entries: c
                    .entries
                    .iter()
                    .map(|(key, value)| rate_limit_descriptor::Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                limit: None,
            })
            .collect(),
        // 0 = the default of one hit.
        hits_addend: 0,
    }
}

/// The bytes a descriptor is remembered by in the local pre-check.
pub fn descriptor_key(domain: &str, entries: &[(String, String)]) -> Vec<u8> {
    let mut key = Vec::with_capacity(domain.len() + 1 + entries.len() * 32);
    key.extend_from_slice(domain.as_bytes());
    key.push(0);
    for (k, v) in entries {
        for part in [k, v] {
            key.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            key.extend_from_slice(part.as_bytes());
        }
    }
    key
}

/// The longest a pre-check holds a descriptor whose limit names no unit
/// (with a unit, the unit: a window resets within it).
pub const PRECHECK_MAX_HOLD_SECS: u64 = 60;

/// One over-limit answer the pre-check remembers: `check` indexes the
/// checks, `hold_ns` is how long it holds, `limit` the service's numbers
/// when it gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub check: usize,
    pub hold_ns: u64,
    pub limit: Option<Limit>,
}

/// A service's `current_limit` as the pre-check keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limit {
    /// `requests_per_unit`.
    pub requests: u32,
    /// The unit, seconds.
    pub window_secs: u32,
    /// The limit's name; empty when the service gave none (the rule's name
    /// stands in) or it is longer than [`MAX_HELD_NAME`].
    pub name: String,
}

/// The longest limit name a pre-check record keeps, bytes.
pub const MAX_HELD_NAME: usize = 64;

impl Limit {
    /// The service's `current_limit`; `None` without a known unit.
    fn of(l: &rate_limit_response::RateLimit) -> Option<Limit> {
        Some(Limit {
            requests: l.requests_per_unit,
            window_secs: u32::try_from(unit_secs(l.unit)?).unwrap_or(u32::MAX),
            name: l.name.clone(),
        })
    }

    /// The RateLimit numbers under this limit for rule `rule` (the limit's
    /// own name when it has one): `remaining` now, `reset_secs` until the
    /// window resets, and whether the request is over it (a rejection's
    /// `retry-after`).
    fn quota(&self, rule: &str, remaining: u64, reset_secs: u64, over: bool) -> Quota {
        Quota {
            name: if self.name.is_empty() {
                rule.to_string()
            } else {
                self.name.clone()
            },
            quota: u64::from(self.requests),
            window_secs: u64::from(self.window_secs),
            remaining,
            reset_secs,
            retry_after_secs: if over { reset_secs.max(1) } else { 0 },
        }
    }
}

/// A pre-check slot's value in shared data (24 bytes and the limit's name):
/// the descriptor's fingerprint, until when it is held (host clock, ns),
/// and the service's limit (window 0 when it gave none), for the RateLimit
/// fields of the rejections the pre-check answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRecord {
    pub owner: u64,
    pub until_ns: u64,
    pub limit: Limit,
}

impl Codec for HoldRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24 + self.limit.name.len());
        v.extend_from_slice(&self.owner.to_le_bytes());
        v.extend_from_slice(&self.until_ns.to_le_bytes());
        v.extend_from_slice(&self.limit.requests.to_le_bytes());
        v.extend_from_slice(&self.limit.window_secs.to_le_bytes());
        v.extend_from_slice(self.limit.name.as_bytes());
        v
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 24 || bytes.len() > 24 + MAX_HELD_NAME {
            return None;
        }
        Some(HoldRecord {
            owner: u64::decode(&bytes[..8])?,
            until_ns: u64::decode(&bytes[8..16])?,
            limit: Limit {
                requests: u32::decode(&bytes[16..20])?,
                window_secs: u32::decode(&bytes[20..24])?,
                name: String::from_utf8(bytes[24..].to_vec()).ok()?,
            },
        })
    }
}

impl HoldRecord {
    /// The numbers of a rejection the pre-check answers at `now_ns` for the
    /// rule named `rule` (the name when the service's limit has none), as
    /// the service's own rejection gave them; `None` when it gave no limit.
    pub fn quota(&self, rule: &str, now_ns: u64) -> Option<Quota> {
        if self.limit.window_secs == 0 {
            return None;
        }
        let reset_secs = ceil_secs(self.until_ns.saturating_sub(now_ns)).max(1);
        Some(self.limit.quota(rule, 0, reset_secs, true))
    }
}

/// `duration_until_reset` in ns, saturating (negative parts count as 0).
fn reset_ns(d: &switchyard_proto::prost_types::Duration) -> u64 {
    u64::try_from(d.seconds)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(d.nanos).unwrap_or(0))
}

/// Enforce descriptors the service said are over limit, when it rejected
/// the request (`OVER_LIMIT` overall), with how long they stay so: the
/// local pre-check answers for them until then. A status without a
/// duration is not remembered (nothing says when it ends). The hold is at
/// most the limit's unit (a window resets within it), or
/// [`PRECHECK_MAX_HOLD_SECS`] without one: one absurd answer must not lock
/// a client out until Envoy restarts. An `OK` overall with descriptors over
/// limit (envoyproxy/ratelimit's global shadow mode) holds nothing: the
/// service let the request through.
pub fn over_limit_until(resp: &RateLimitResponse, checks: &[GlobalCheck]) -> Vec<Hold> {
    use rate_limit_response::Code;
    if resp.statuses.len() != checks.len() || resp.overall_code != Code::OverLimit as i32 {
        return Vec::new();
    }
    checks
        .iter()
        .zip(&resp.statuses)
        .enumerate()
        .filter(|(_, (c, s))| c.mode == Mode::Enforce && s.code == Code::OverLimit as i32)
        .filter_map(|(i, (_, s))| {
            let ns = reset_ns(s.duration_until_reset.as_ref()?);
            let limit = s.current_limit.as_ref().and_then(Limit::of).map(|mut l| {
                if l.name.len() > MAX_HELD_NAME {
                    l.name.clear();
                }
                l
            });
            let cap_secs = limit
                .as_ref()
                .map_or(PRECHECK_MAX_HOLD_SECS, |l| u64::from(l.window_secs));
            let hold_ns = ns.min(cap_secs.saturating_mul(1_000_000_000));
            (hold_ns > 0).then_some(Hold {
                check: i,
                hold_ns,
                limit,
            })
        })
        .collect()
}

/// What the service's answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalVerdict {
    Allow {
        /// A shadow rule's descriptor was over limit.
        shadow_limited: bool,
        /// The tightest enforce descriptor's numbers, when the service gave them.
        quota: Option<Quota>,
    },
    Reject {
        /// The rejecting rule's name.
        name: String,
        /// Its numbers, when the service gave them.
        quota: Option<Quota>,
    },
}

fn unit_secs(unit: i32) -> Option<u64> {
    use rate_limit_response::rate_limit::Unit;
    Some(match Unit::try_from(unit).ok()? {
        Unit::Second => 1,
        Unit::Minute => 60,
        Unit::Hour => 3600,
        Unit::Day => 86_400,
        Unit::Month => 30 * 86_400,
        Unit::Year => 365 * 86_400,
        Unit::Unknown => return None,
    })
}

fn quota(name: &str, status: &rate_limit_response::DescriptorStatus) -> Option<Quota> {
    let limit = Limit::of(status.current_limit.as_ref()?)?;
    let window_secs = u64::from(limit.window_secs);
    // A window resets within its unit: a longer answer is capped (and an
    // absurd one no longer wraps around to a short `retry-after`).
    let reset_secs = status
        .duration_until_reset
        .as_ref()
        .map(|d| ceil_secs(reset_ns(d)).min(window_secs))
        .unwrap_or(window_secs);
    let over = status.code == rate_limit_response::Code::OverLimit as i32;
    Some(limit.quota(name, u64::from(status.limit_remaining), reset_secs, over))
}

/// Reads the answer to [`request`]`(_, checks)`. As in Envoy, anything but
/// `OVER_LIMIT` overall lets the request through.
pub fn interpret(resp: &RateLimitResponse, checks: &[GlobalCheck]) -> GlobalVerdict {
    use rate_limit_response::Code;
    let overall_over = resp.overall_code == Code::OverLimit as i32;
    let per_descriptor = resp.statuses.len() == checks.len();
    if !per_descriptor {
        // No per-descriptor detail: the overall code stands for every rule.
        let enforce = checks.iter().find(|c| c.mode == Mode::Enforce);
        return match (overall_over, enforce) {
            (true, Some(c)) => GlobalVerdict::Reject {
                name: c.name.clone(),
                quota: None,
            },
            (over, _) => GlobalVerdict::Allow {
                shadow_limited: over,
                quota: None,
            },
        };
    }
    let mut shadow_limited = false;
    let mut reject: Option<(String, Option<Quota>)> = None;
    let mut tightest: Option<Quota> = None;
    for (check, status) in checks.iter().zip(&resp.statuses) {
        let over = status.code == Code::OverLimit as i32;
        let q = quota(&check.name, status);
        match (check.mode, over) {
            (Mode::Shadow, true) => shadow_limited = true,
            (Mode::Shadow, false) => {}
            (Mode::Enforce, true) => {
                let longer = match (&reject, &q) {
                    (None, _) => true,
                    (Some((_, Some(old))), Some(new)) => {
                        new.retry_after_secs > old.retry_after_secs
                    }
                    (Some((_, None)), Some(_)) => true,
                    (Some(_), None) => false,
                };
                if longer {
                    reject = Some((check.name.clone(), q));
                }
            }
            (Mode::Enforce, false) => {
                if let Some(q) = q
                    && tightest.as_ref().is_none_or(|t| q.remaining < t.remaining)
                {
                    tightest = Some(q);
                }
            }
        }
    }
    match reject {
        // A service may say OVER_LIMIT per descriptor but OK overall: the
        // overall code is what Envoy acts on, so do we.
        Some((name, quota)) if overall_over => GlobalVerdict::Reject { name, quota },
        _ => GlobalVerdict::Allow {
            shadow_limited: shadow_limited || (reject.is_some() && !overall_over),
            quota: tightest,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::Message;
    use switchyard_proto::rls::rate_limit_response::{DescriptorStatus, RateLimit, rate_limit};

    fn check(rule: usize, mode: Mode) -> GlobalCheck {
        GlobalCheck {
            rule,
            name: format!("r{rule}"),
            mode,
            entries: vec![("remote_address".into(), "7.7.7.7".into())],
        }
    }

    fn status(over: bool, remaining: u32) -> DescriptorStatus {
        DescriptorStatus {
            code: if over { 2 } else { 1 },
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: 10,
                unit: rate_limit::Unit::Minute as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(prost_types_duration(12, 500_000_000)),
        }
    }

    fn prost_types_duration(seconds: i64, nanos: i32) -> switchyard_proto::prost_types::Duration {
        switchyard_proto::prost_types::Duration { seconds, nanos }
    }

    fn resp(overall_over: bool, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
        RateLimitResponse {
            overall_code: if overall_over { 2 } else { 1 },
            statuses,
            raw_body: Vec::new(),
        }
    }

    #[test]
    fn request_wire_format() {
        let r = request("edge", &[check(0, Mode::Enforce)]);
        let bytes = r.encode_to_vec();
        // domain = 1 (tag 0x0a), descriptors = 2 (0x12) containing entries = 1
        // (0x0a) with key = 1, value = 2.
        assert_eq!(&bytes[..6], b"\x0a\x04edge");
        assert_eq!(bytes[6], 0x12);
        let back = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.descriptors[0].entries[0].key, "remote_address");
        assert_eq!(back, r);
    }

    #[test]
    fn over_limit_rejects_with_the_services_numbers() {
        let checks = [check(0, Mode::Enforce), check(1, Mode::Enforce)];
        let v = interpret(
            &resp(true, vec![status(false, 5), status(true, 0)]),
            &checks,
        );
        let GlobalVerdict::Reject { name, quota } = v else {
            panic!("{v:?}")
        };
        assert_eq!(name, "r1");
        let q = quota.unwrap();
        assert_eq!((q.quota, q.window_secs, q.remaining), (10, 60, 0));
        assert_eq!((q.reset_secs, q.retry_after_secs), (13, 13));
    }

    #[test]
    fn ok_gives_the_tightest_quota_and_shadow_counts() {
        let checks = [
            check(0, Mode::Enforce),
            check(1, Mode::Enforce),
            check(2, Mode::Shadow),
        ];
        let v = interpret(
            &resp(
                false,
                vec![status(false, 5), status(false, 2), status(true, 0)],
            ),
            &checks,
        );
        match v {
            GlobalVerdict::Allow {
                shadow_limited,
                quota: Some(q),
            } => {
                assert!(shadow_limited);
                assert_eq!(q.remaining, 2);
            }
            other => panic!("{other:?}"),
        }
        // Only the shadow descriptor over limit, overall OVER_LIMIT: allowed.
        let v = interpret(
            &resp(
                true,
                vec![status(false, 5), status(false, 2), status(true, 0)],
            ),
            &checks,
        );
        assert!(
            matches!(
                v,
                GlobalVerdict::Allow {
                    shadow_limited: true,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn an_ok_answer_holds_nothing_whatever_its_descriptors_say() {
        // envoyproxy/ratelimit's global shadow mode: descriptor OVER_LIMIT,
        // overall OK. The service let the request through; on the old rule
        // the pre-check rejected the next 30 s of the client's requests.
        let checks = [check(0, Mode::Enforce)];
        let r = resp(false, vec![status(true, 0)]);
        assert!(over_limit_until(&r, &checks).is_empty());
        assert!(matches!(
            interpret(&r, &checks),
            GlobalVerdict::Allow { .. }
        ));
    }

    #[test]
    fn absurd_reset_durations_are_capped_not_wrapped() {
        let checks = [check(0, Mode::Enforce)];
        for seconds in [18_446_744_074, 3_153_600_000, i64::MAX] {
            let mut s = status(true, 0);
            s.duration_until_reset = Some(prost_types_duration(seconds, 999_999_999));
            let r = resp(true, vec![s.clone()]);
            // Held for the limit's unit (a minute) at most.
            assert_eq!(over_limit_until(&r, &checks)[0].hold_ns, 60_000_000_000);
            // Told to retry after that minute: on the old arithmetic
            // 18 446 744 074 s wrapped around to `retry-after: 1`.
            match interpret(&r, &checks) {
                GlobalVerdict::Reject { quota: Some(q), .. } => {
                    assert_eq!((q.reset_secs, q.retry_after_secs), (60, 60), "{seconds}");
                }
                other => panic!("{other:?}"),
            }
            // Without a unit: held for at most PRECHECK_MAX_HOLD_SECS.
            s.current_limit = None;
            let r = resp(true, vec![s]);
            assert_eq!(
                over_limit_until(&r, &checks)[0],
                Hold {
                    check: 0,
                    hold_ns: PRECHECK_MAX_HOLD_SECS * 1_000_000_000,
                    limit: None,
                }
            );
        }
        // Negative parts count as 0: nothing to hold.
        let mut s = status(true, 0);
        s.duration_until_reset = Some(prost_types_duration(-5, -1));
        assert!(over_limit_until(&resp(true, vec![s]), &checks).is_empty());
    }

    #[test]
    fn over_limit_descriptors_are_remembered_for_their_reset_time() {
        let checks = [
            check(0, Mode::Enforce),
            check(1, Mode::Shadow),
            check(2, Mode::Enforce),
        ];
        let mut no_duration = status(true, 0);
        no_duration.duration_until_reset = None;
        let r = resp(true, vec![status(true, 0), status(true, 0), no_duration]);
        assert_eq!(
            over_limit_until(&r, &checks),
            [Hold {
                check: 0,
                hold_ns: 12_500_000_000,
                limit: Some(Limit {
                    requests: 10,
                    window_secs: 60,
                    name: String::new(),
                }),
            }]
        );
        assert!(over_limit_until(&resp(true, vec![]), &checks).is_empty());
        let a = descriptor_key("d", &[("k".into(), "ab".into())]);
        let b = descriptor_key("d", &[("ka".into(), "b".into())]);
        assert_ne!(a, b);
    }

    #[test]
    fn without_statuses_the_overall_code_decides() {
        let checks = [check(0, Mode::Enforce)];
        assert_eq!(
            interpret(&resp(true, vec![]), &checks),
            GlobalVerdict::Reject {
                name: "r0".into(),
                quota: None
            }
        );
        assert_eq!(
            interpret(&RateLimitResponse::default(), &checks),
            GlobalVerdict::Allow {
                shadow_limited: false,
                quota: None
            }
        );
        let shadow = [check(0, Mode::Shadow)];
        assert!(matches!(
            interpret(&resp(true, vec![]), &shadow),
            GlobalVerdict::Allow {
                shadow_limited: true,
                ..
            }
        ));
    }
}
