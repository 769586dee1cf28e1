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

/// Enforce descriptors the service said are over limit, with how long they
/// stay so (ns): the local pre-check answers for them until then. A status
/// without a duration is not remembered (nothing says when it ends).
pub fn over_limit_until(resp: &RateLimitResponse, checks: &[GlobalCheck]) -> Vec<(usize, u64)> {
    if resp.statuses.len() != checks.len() {
        return Vec::new();
    }
    checks
        .iter()
        .zip(&resp.statuses)
        .enumerate()
        .filter(|(_, (c, s))| {
            c.mode == Mode::Enforce && s.code == rate_limit_response::Code::OverLimit as i32
        })
        .filter_map(|(i, (_, s))| {
            let d = s.duration_until_reset.as_ref()?;
            let ns = u64::try_from(d.seconds)
                .ok()?
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(d.nanos).ok()?);
            (ns > 0).then_some((i, ns))
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
    let limit = status.current_limit.as_ref()?;
    let window_secs = unit_secs(limit.unit)?;
    let reset_secs = status
        .duration_until_reset
        .as_ref()
        .map(|d| {
            let ns = u64::try_from(d.seconds).unwrap_or(0) * 1_000_000_000
                + u64::try_from(d.nanos).unwrap_or(0);
            ceil_secs(ns)
        })
        .unwrap_or(window_secs);
    let over = status.code == rate_limit_response::Code::OverLimit as i32;
    Some(Quota {
        name: if limit.name.is_empty() {
            name.to_string()
        } else {
            limit.name.clone()
        },
        quota: u64::from(limit.requests_per_unit),
        window_secs,
        remaining: u64::from(status.limit_remaining),
        reset_secs,
        retry_after_secs: if over { reset_secs.max(1) } else { 0 },
    })
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
    fn over_limit_descriptors_are_remembered_for_their_reset_time() {
        let checks = [
            check(0, Mode::Enforce),
            check(1, Mode::Shadow),
            check(2, Mode::Enforce),
        ];
        let mut no_duration = status(true, 0);
        no_duration.duration_until_reset = None;
        let r = resp(true, vec![status(true, 0), status(true, 0), no_duration]);
        assert_eq!(over_limit_until(&r, &checks), [(0, 12_500_000_000)]);
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
