//! One HTTP stream: decide on the request headers, answer 429 or let it
//! through (after asking the rate limit service for global rules), and add
//! the RateLimit headers to allowed responses when configured.

use crate::config::{FailureMode, Global, Mode, Scope};
use crate::decide::{Check, SlotRef, StoreError, decide};
use crate::filter::Filter;
use crate::gcra::{Bucket, ceil_secs};
use crate::global::{self, GlobalCheck, GlobalVerdict};
use crate::headers::{Quota, rejection_headers};
use crate::request::{self, Request, RequestSource};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_proto::rls::{RateLimitRequest, RateLimitResponse};
use switchyard_sdk::callout::{CalloutError, Callouts};
use switchyard_sdk::http::{self, REQUEST, RESPONSE};
use switchyard_sdk::proxy_wasm::traits::{Context, HttpContext};
use switchyard_sdk::proxy_wasm::types::Action;
use switchyard_sdk::shared::SharedValue;
use switchyard_sdk::{host, properties};

/// Request attributes from the host.
struct HostRequest;

impl RequestSource for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        REQUEST.get(name)
    }
    fn peer_address(&self) -> Option<String> {
        properties::source_address()
    }
    fn route_name(&self) -> Option<String> {
        properties::route_name()
    }
}

/// What the stream remembers between callbacks (shared with the RLS
/// callback closure).
#[derive(Default)]
struct State {
    /// Numbers for the RateLimit headers of an allowed response.
    quota: Option<Quota>,
    shadow_limited: bool,
    rejected: bool,
}

pub struct Stream {
    filter: Rc<Filter>,
    callouts: Callouts,
    state: Rc<RefCell<State>>,
}

impl Stream {
    pub fn new(filter: Rc<Filter>) -> Self {
        Stream {
            filter,
            callouts: Callouts::new(),
            state: Rc::default(),
        }
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        self.callouts
            .on_grpc_response(token, status_code, response_size);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let f = Rc::clone(&self.filter);
        let source = HostRequest;
        let req = Request::new(&source, f.config.trusted_hops);
        let mut checks = Vec::new();
        let mut globals = Vec::new();
        for (i, rule) in f.config.rules.iter().enumerate() {
            if !request::matches(&rule.matcher, &req) {
                continue;
            }
            let Some(parts) = request::key_parts(rule, &req) else {
                continue;
            };
            match (rule.scope, f.rates.get(i).copied().flatten()) {
                (Scope::Local, Some(rate)) => {
                    let slot = f.slots.slot(&request::local_key(&rule.name, &parts));
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
        if checks.is_empty() && globals.is_empty() {
            return Action::Continue;
        }

        let mut store = f.store();
        let verdict = decide(&mut store, &checks, host::now_nanos());
        let m = &f.metrics;
        m.cas_retries.add(store.cas_retries);
        m.slot_collisions.add(verdict.collisions);
        for e in &verdict.store_errors {
            match e {
                StoreError::Contended => m.cas_exhausted.inc(),
                StoreError::Host(why) => {
                    m.store_errors.inc();
                    log::warn!("{}: shared data failed, request denied: {why}", crate::NAME);
                }
            }
        }
        self.state.borrow_mut().shadow_limited = verdict.shadow_limited;
        if let Some(r) = verdict.rejected {
            let name = &f.config.rules[r.rule].name;
            let quota = Quota::local(name, &r.rate, &r.outcome);
            reject(&f, &self.state, name, Some(&quota), 1);
            return Action::Pause;
        }
        self.state.borrow_mut().quota = verdict
            .tightest
            .map(|r| Quota::local(&f.config.rules[r.rule].name, &r.rate, &r.outcome));

        match (&f.config.global, globals.is_empty()) {
            (Some(g), false) => self.ask_service(g, globals),
            _ => {
                allow(&f, &self.state);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let state = self.state.borrow();
        if self.filter.config.response.headers_on_allowed
            && self.filter.config.response.ratelimit_headers
            && !state.rejected
            && let Some(q) = &state.quota
        {
            RESPONSE.set("ratelimit-policy", q.policy());
            RESPONSE.set("ratelimit", q.state());
        }
        Action::Continue
    }
}

impl Stream {
    /// Sends the RLS request and pauses; the callback decides. A descriptor
    /// the service recently said is over limit is rejected right here.
    fn ask_service(&mut self, g: &Global, checks: Vec<GlobalCheck>) -> Action {
        if let Some((name, wait_ns)) = precheck(&self.filter, g, &checks) {
            self.filter.metrics.rls_precheck_limited.inc();
            reject(&self.filter, &self.state, &name, None, ceil_secs(wait_ns));
            return Action::Pause;
        }
        let message = global::request(&g.domain, &checks);
        let filter = Rc::clone(&self.filter);
        let state = Rc::clone(&self.state);
        let sent = self.callouts.grpc::<RateLimitRequest, RateLimitResponse>(
            &g.cluster,
            global::SERVICE,
            global::METHOD,
            &message,
            Duration::from_millis(g.timeout_ms),
            move |result| on_service_answer(&filter, &state, &checks, result),
        );
        match sent {
            Ok(_) => Action::Pause,
            Err(e) => {
                if service_failed(&self.filter, &self.state, &e) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        }
    }
}

/// The RLS answer (or failure) for a paused request.
fn on_service_answer(
    f: &Filter,
    state: &Rc<RefCell<State>>,
    checks: &[GlobalCheck],
    result: Result<RateLimitResponse, CalloutError>,
) {
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            if service_failed(f, state, &e) {
                http::resume_request();
            }
            return;
        }
    };
    if let (Some(table), Some(g)) = (&f.precheck, &f.config.global) {
        let now = host::now_nanos();
        for (i, ns) in global::over_limit_until(&resp, checks) {
            let slot = table.slot(&global::descriptor_key(&g.domain, &checks[i].entries));
            let until = Bucket {
                owner: slot.fingerprint,
                tat_ns: now.saturating_add(ns),
            };
            // Advisory: last writer wins; a lost write only costs a call.
            if let Err(e) = SharedValue::new(slot.shared_key).set(&until) {
                log::debug!("{}: pre-check not recorded: {e}", crate::NAME);
            }
        }
    }
    match global::interpret(&resp, checks) {
        GlobalVerdict::Reject { name, quota } => reject(f, state, &name, quota.as_ref(), 1),
        GlobalVerdict::Allow {
            shadow_limited,
            quota,
        } => {
            {
                let mut s = state.borrow_mut();
                s.shadow_limited |= shadow_limited;
                // The tighter of the local and the global numbers.
                if let Some(q) = quota
                    && s.quota.as_ref().is_none_or(|l| q.remaining < l.remaining)
                {
                    s.quota = Some(q);
                }
            }
            allow(f, state);
            http::resume_request();
        }
    }
}

/// A remembered over-limit answer for one of the enforce descriptors: the
/// rule's name and how long it still holds (ns). Only an exact fingerprint
/// match counts: another descriptor in the slot means "ask the service".
fn precheck(f: &Filter, g: &Global, checks: &[GlobalCheck]) -> Option<(String, u64)> {
    let table = f.precheck.as_ref()?;
    let now = host::now_nanos();
    checks
        .iter()
        .filter(|c| c.mode == Mode::Enforce)
        .find_map(|c| {
            let slot = table.slot(&global::descriptor_key(&g.domain, &c.entries));
            let b = SharedValue::<Bucket>::new(slot.shared_key).get().ok()??;
            (b.owner == slot.fingerprint && b.tat_ns > now)
                .then(|| (c.name.clone(), b.tat_ns - now))
        })
}

/// Applies the failure mode; returns whether the request goes on.
fn service_failed(f: &Filter, state: &Rc<RefCell<State>>, e: &CalloutError) -> bool {
    f.metrics.rls_errors.inc();
    log::warn!("{}: rate limit service failed: {e}", crate::NAME);
    let Some(g) = &f.config.global else {
        return true;
    };
    match g.failure_mode {
        FailureMode::Open => {
            allow(f, state);
            true
        }
        FailureMode::Closed => {
            state.borrow_mut().rejected = true;
            f.metrics.limited.inc();
            let body = br#"{"error":"rate_limit_service_unavailable"}"#;
            http::send_local_response(
                g.status_on_error,
                "switchyard_rate_limit_service_error",
                &[("content-type", "application/json")],
                body,
            );
            false
        }
    }
}

fn allow(f: &Filter, state: &Rc<RefCell<State>>) {
    f.metrics.allowed.inc();
    if state.borrow().shadow_limited {
        f.metrics.shadow_limited.inc();
    }
}

/// Ends the request with the configured rejection. `retry_after_secs` is
/// used when there are no numbers (`quota`) to take it from.
fn reject(
    f: &Filter,
    state: &Rc<RefCell<State>>,
    name: &str,
    quota: Option<&Quota>,
    retry_after_secs: u64,
) {
    {
        let mut s = state.borrow_mut();
        s.rejected = true;
        if s.shadow_limited {
            f.metrics.shadow_limited.inc();
        }
    }
    f.metrics.limited.inc();
    let response = &f.config.response;
    let (mut headers, body) = match quota {
        Some(q) => (rejection_headers(q, response.ratelimit_headers), q.body()),
        None => {
            let secs = retry_after_secs.max(1);
            (
                vec![("retry-after", secs.to_string())],
                serde_json::json!({"error": "rate_limited", "policy": name, "retry_after": secs})
                    .to_string()
                    .into_bytes(),
            )
        }
    };
    headers.push(("content-type", "application/json".to_string()));
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http::send_local_response(response.status, "switchyard_rate_limited", &headers, &body);
}
