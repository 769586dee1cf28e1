//! The rate-limit stage: decide on the request headers, answer 429 or let
//! the request through (after asking the rate limit service for global
//! rules), and add the RateLimit headers to allowed responses when
//! configured. The verdict goes to later stages as
//! [`Decisions::rate_limit`](switchyard_sdk::stage::Decisions).

use crate::config::{FailureMode, Global, Mode, Scope};
use crate::decide::{Check, SlotRef, StoreError, decide};
use crate::filter::Filter;
use crate::gcra::ceil_secs;
use crate::global::{self, GlobalCheck, GlobalVerdict, HoldRecord};
use crate::headers::{Quota, rejection_body, rejection_headers};
use crate::request::{self, Request, RequestSource};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_proto::rls::{RateLimitRequest, RateLimitResponse};
use switchyard_sdk::callout::CalloutError;
use switchyard_sdk::config::ConfigError;
use switchyard_sdk::config::Source;
use switchyard_sdk::shared::SharedValue;
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

/// How modules build this stage (`rate_limit` in a chain).
pub const SPEC: StageSpec = StageSpec {
    name: "rate_limit",
    filter: crate::NAME,
    build,
    phases: Phases::of(&[Phase::RequestHeaders, Phase::ResponseHeaders]),
};

fn build(config: Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    let config = switchyard_sdk::config::parse(config)?;
    let filter = Filter::new(config);
    // Every bucket key exists before the first request, so two workers can
    // never both create (and both admit on) the same fresh slot.
    if filter.rates.iter().any(Option::is_some) {
        match filter.slots.create_all() {
            Ok(0) => {}
            Ok(n) => log::debug!("{}: created {n} bucket slots", crate::NAME),
            Err(e) => log::warn!(
                "{}: creating bucket slots: {e}; first use of the missing ones is not exact",
                crate::NAME
            ),
        }
    }
    Ok(Box::new(RateLimit {
        filter: Rc::new(filter),
    }))
}

/// Request attributes through the stage's exchange (read once, memoised).
struct ExchangeSource<'e>(RefCell<&'e mut Exchange>);

impl RequestSource for ExchangeSource<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.borrow_mut().request().get(name).map(<[u8]>::to_vec)
    }
    fn client_address(&self) -> Option<String> {
        self.0.borrow_mut().client_address()
    }
    fn route_name(&self) -> Option<String> {
        self.0.borrow_mut().property_str(&["xds", "route_name"])
    }
}

/// What the stage remembers between phases of one request.
#[derive(Default)]
struct State {
    /// Numbers for the RateLimit headers of an allowed response.
    quota: Option<Quota>,
    shadow_limited: bool,
    rejected: bool,
}

pub struct RateLimit {
    filter: Rc<Filter>,
}

impl Stage for RateLimit {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        let f = &self.filter;
        let mut checks = Vec::new();
        let mut globals = Vec::new();
        {
            let source = ExchangeSource(RefCell::new(&mut *ex));
            let req = Request::new(&source);
            for (i, rule) in f.config.rules.iter().enumerate() {
                if !request::matches(&rule.matcher, &req) {
                    continue;
                }
                let Some(parts) = request::key_parts(rule, &req) else {
                    continue;
                };
                match (rule.scope, f.rates.get(i).copied().flatten()) {
                    (Scope::Local, Some(rate)) => {
                        let name = f.bucket_names.get(i).unwrap_or(&rule.name);
                        let slot = f.slots.slot(&request::local_key(name, &parts));
                        checks.push(Check {
                            rule: i,
                            slot: SlotRef {
                                shared_key: slot.shared_key,
                                fingerprint: slot.fingerprint,
                            },
                            rate,
                            mode: rule.mode,
                        });
                    }
                    (Scope::Global, _) => globals.push(GlobalCheck {
                        rule: i,
                        name: rule.name.clone(),
                        mode: rule.mode,
                        entries: request::descriptor_entries(rule, &parts),
                    }),
                    // invariant: validation requires a limit on local rules.
                    (Scope::Local, None) => {}
                }
            }
        }
        if checks.is_empty() && globals.is_empty() {
            return Flow::Continue;
        }

        let mut store = f.store();
        let verdict = decide(&mut store, &checks, ex.now_nanos());
        let m = &f.metrics;
        m.cas_retries.add(store.cas_retries);
        m.slot_collisions.add(verdict.collisions);
        for e in &verdict.store_errors {
            match e {
                StoreError::Contended => m.cas_exhausted.inc(),
                StoreError::Host(why) => {
                    m.store_errors.inc();
                    switchyard_sdk::logging::warn_throttled("rate-limit/shared-data", || {
                        format!("{}: shared data failed, request denied: {why}", crate::NAME)
                    });
                }
            }
        }
        ex.state::<State>().shadow_limited = verdict.shadow_limited;
        if let Some(r) = verdict.rejected {
            let name = &f.config.rules[r.rule].name;
            let quota = Quota::local(name, &r.rate, &r.outcome);
            return reject(f, ex, name, Some(&quota), 1);
        }
        let quota = verdict
            .tightest
            .map(|r| Quota::local(&f.config.rules[r.rule].name, &r.rate, &r.outcome));
        ex.state::<State>().quota = quota;

        match (&f.config.global, globals.is_empty()) {
            (Some(g), false) => ask_service(&self.filter, ex, g, globals),
            _ => {
                allow(f, ex);
                Flow::Continue
            }
        }
    }

    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        let response = &self.filter.config.response;
        if !(response.headers_on_allowed && response.ratelimit_headers) {
            return Flow::Continue;
        }
        let headers = ex
            .state_ref::<State>()
            .filter(|s| !s.rejected)
            .and_then(|s| s.quota.as_ref())
            .map(|q| (q.policy(), q.state()));
        if let Some((policy, state)) = headers {
            ex.set_response_header("ratelimit-policy", policy);
            ex.set_response_header("ratelimit", state);
        }
        Flow::Continue
    }
}

/// Sends the RLS request and pauses; the answer decides. A descriptor the
/// service recently said is over limit is rejected right here.
fn ask_service(f: &Rc<Filter>, ex: &mut Exchange, g: &Global, checks: Vec<GlobalCheck>) -> Flow {
    if let Some((name, hold, now)) = precheck(f, ex, g, &checks) {
        f.metrics.rls_precheck_limited.inc();
        let quota = hold.quota(&name, now);
        let wait_secs = ceil_secs(hold.until_ns.saturating_sub(now));
        return reject(f, ex, &name, quota.as_ref(), wait_secs);
    }
    let message = global::request(&g.domain, &checks);
    let filter = Rc::clone(f);
    let sent = ex.grpc_call::<RateLimitRequest, RateLimitResponse>(
        Phase::RequestHeaders,
        &g.cluster,
        global::SERVICE,
        global::METHOD,
        &message,
        Duration::from_millis(g.timeout_ms),
        move |ex, result| on_service_answer(&filter, ex, &checks, result),
    );
    match sent {
        Ok(()) => Flow::Pause,
        Err(e) => service_failed(f, ex, &e),
    }
}

/// The RLS answer (or failure) for a paused request.
fn on_service_answer(
    f: &Filter,
    ex: &mut Exchange,
    checks: &[GlobalCheck],
    result: Result<RateLimitResponse, CalloutError>,
) -> Flow {
    let resp = match result {
        Ok(r) => r,
        Err(e) => return service_failed(f, ex, &e),
    };
    if let (Some(table), Some(g)) = (&f.precheck, &f.config.global) {
        let now = ex.now_nanos();
        for hold in global::over_limit_until(&resp, checks) {
            let Some(c) = checks.get(hold.check) else {
                continue;
            };
            let slot = table.slot(&global::descriptor_key(&g.domain, &c.entries));
            let until = HoldRecord {
                owner: slot.fingerprint,
                until_ns: now.saturating_add(hold.hold_ns),
                limit: hold.limit.unwrap_or_default(),
            };
            // Advisory: last writer wins; a lost write only costs a call.
            if let Err(e) = SharedValue::new(slot.shared_key).set(&until) {
                log::debug!("{}: pre-check not recorded: {e}", crate::NAME);
            }
        }
    }
    match global::interpret(&resp, checks) {
        GlobalVerdict::Reject { name, quota } => reject(f, ex, &name, quota.as_ref(), 1),
        GlobalVerdict::Allow {
            shadow_limited,
            quota,
        } => {
            let s = ex.state::<State>();
            s.shadow_limited |= shadow_limited;
            // The tighter of the local and the global numbers.
            if let Some(q) = quota
                && s.quota.as_ref().is_none_or(|l| q.remaining < l.remaining)
            {
                s.quota = Some(q);
            }
            allow(f, ex);
            Flow::Continue
        }
    }
}

/// A remembered over-limit answer for one of the enforce descriptors: the
/// rule's name, the record and the clock it was read at. Only an exact
/// fingerprint match counts: another descriptor in the slot means "ask the
/// service".
fn precheck(
    f: &Filter,
    ex: &mut Exchange,
    g: &Global,
    checks: &[GlobalCheck],
) -> Option<(String, HoldRecord, u64)> {
    let table = f.precheck.as_ref()?;
    let now = ex.now_nanos();
    checks
        .iter()
        .filter(|c| c.mode == Mode::Enforce)
        .find_map(|c| {
            let slot = table.slot(&global::descriptor_key(&g.domain, &c.entries));
            let h = SharedValue::<HoldRecord>::new(slot.shared_key)
                .get()
                .ok()??;
            (h.owner == slot.fingerprint && h.until_ns > now)
                .then(|| (c.name.clone(), (*h).clone(), now))
        })
}

/// Applies the failure mode: [`Flow::Continue`] (fail open) or the error reply.
fn service_failed(f: &Filter, ex: &mut Exchange, e: &CalloutError) -> Flow {
    f.metrics.rls_errors.inc();
    let Some(g) = &f.config.global else {
        return Flow::Continue;
    };
    // One line per cause per 10 s, not one per request during an outage.
    let cause = match e {
        CalloutError::Dispatch(_) => "rate-limit/rls-dispatch",
        CalloutError::Grpc { .. } => "rate-limit/rls-grpc",
        _ => "rate-limit/rls-other",
    };
    switchyard_sdk::logging::warn_throttled(cause, || {
        format!(
            "{}: rate limit service (cluster {:?}) failed: {e}; likely cause: {}; failure mode {:?}",
            crate::NAME,
            g.cluster,
            e.likely_cause(),
            g.failure_mode
        )
    });
    match g.failure_mode {
        FailureMode::Open => {
            allow(f, ex);
            Flow::Continue
        }
        FailureMode::Closed => {
            let s = ex.state::<State>();
            s.rejected = true;
            // As `allow` and `reject` do: a shadow rule over its limit
            // counts whatever happens to the request.
            if s.shadow_limited {
                f.metrics.shadow_limited.inc();
            }
            ex.decisions.rate_limit = Some("error".into());
            f.metrics.limited.inc();
            ex.reply(
                g.status_on_error,
                "switchyard_rate_limit_service_error",
                &[("content-type", "application/json")],
                &br#"{"error":"rate_limit_service_unavailable"}"#[..],
            )
        }
    }
}

fn allow(f: &Filter, ex: &mut Exchange) {
    f.metrics.allowed.inc();
    let s = ex.state::<State>();
    let shadow = s.shadow_limited;
    let policy = s.quota.as_ref().map(|q| q.name.clone());
    if shadow {
        f.metrics.shadow_limited.inc();
    }
    let verdict = if shadow { "shadow_over_limit" } else { "ok" };
    ex.decisions.rate_limit = Some(match policy {
        Some(p) => format!("{verdict};policy={p}"),
        None => verdict.to_string(),
    });
}

/// Ends the request with the configured rejection. `retry_after_secs` is
/// used when there are no numbers (`quota`) to take it from.
fn reject(
    f: &Filter,
    ex: &mut Exchange,
    name: &str,
    quota: Option<&Quota>,
    retry_after_secs: u64,
) -> Flow {
    let s = ex.state::<State>();
    s.rejected = true;
    if s.shadow_limited {
        f.metrics.shadow_limited.inc();
    }
    f.metrics.limited.inc();
    ex.decisions.rate_limit = Some(format!("over_limit;policy={name}"));
    let response = &f.config.response;
    let (mut headers, body) = match quota {
        Some(q) => (rejection_headers(q, response.ratelimit_headers), q.body()),
        None => {
            let secs = retry_after_secs.max(1);
            (
                vec![("retry-after", secs.to_string())],
                rejection_body(name, secs),
            )
        }
    };
    headers.push(("content-type", "application/json".to_string()));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ex.reply(response.status, "switchyard_rate_limited", &headers, body)
}
