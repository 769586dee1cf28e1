//! The domain-router stage: strips the client's routing header, asks the
//! table, and hands the chosen cluster to Envoy's `cluster_header` route;
//! on the tick, loads tables other VMs published and (once per poll
//! interval across all workers) polls the control endpoint.

use crate::config::{Config, NoMatchAction};
use crate::core::{Core, FILTER};
use crate::domain::normalize_host;
use crate::matcher::RequestView;
use crate::publish::{self, PollClock};
use crate::router::{Decision, SplitKey};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::callout::{CalloutError, HttpRequest};
use switchyard_sdk::codec::{Postcard, fnv1a64};
use switchyard_sdk::config::ConfigError;
use switchyard_sdk::config::Source;
use switchyard_sdk::headers::HeaderMap;
use switchyard_sdk::host;
use switchyard_sdk::job::Job;
use switchyard_sdk::shared::SharedValue;
use switchyard_sdk::stage::{Exchange, Flow, Phases, RootServices, Setup, Stage, StageSpec};

/// How modules build this stage (`domain_router` in a chain).
pub const SPEC: StageSpec = StageSpec {
    name: "domain_router",
    filter: FILTER,
    build,
    phases: Phases::REQUEST,
};

fn build(config: Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    let config: Config = switchyard_sdk::config::parse(config)?;
    let core = Core::new(config).map_err(|e| ConfigError::new("", e))?;
    if let Some(c) = &core.config.control
        && c.max_table_bytes > crate::config::ENVOY_CALLOUT_BODY_LIMIT
    {
        log::warn!(
            "{}: control.max_table_bytes {} is above the {} bytes Envoy delivers to a callout: a larger table ends as \"no response\"",
            crate::core::FILTER,
            c.max_table_bytes,
            crate::config::ENVOY_CALLOUT_BODY_LIMIT
        );
    }
    let (router, _) = core.current();
    if router.domain_count() > 0 {
        log::info!(
            "{}: configured with a table of {} domains (VM memory {})",
            crate::core::FILTER,
            router.domain_count(),
            crate::core::vm_memory()
        );
    }
    let last_etag = core
        .sync
        .as_ref()
        .map(|sync| Rc::new(SharedValue::new(format!("{}/seen-answer", sync.prefix))));
    let poll = core
        .config
        .control
        .as_ref()
        .zip(core.sync.as_ref())
        .map(|(c, sync)| {
            // Ticks only sample the schedule: claim a tick early.
            Job::new(
                publish::lease_key(&sync.prefix),
                c.poll_interval().saturating_sub(c.tick_period()),
            )
        });
    Ok(Box::new(DomainRouter {
        core: Rc::new(core),
        poll,
        clock: Rc::default(),
        last_etag,
    }))
}

thread_local! {
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

/// Entropy for splits of requests without any key header: time and a
/// per-VM sequence (only needs to spread, not to be secret).
fn fallback_random(now: u64) -> u64 {
    let seq = SEQ.with(|s| {
        s.set(s.get().wrapping_add(1));
        s.get()
    });
    now ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The request as the matchers see it: the map the SDK read once.
struct View<'a>(&'a HeaderMap);

impl RequestView for View<'_> {
    fn path(&self) -> &[u8] {
        self.0.get(":path").unwrap_or_default()
    }
    fn method(&self) -> &[u8] {
        self.0.get(":method").unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.get(name).map(<[u8]>::to_vec)
    }
    fn header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.0.values(name).map(<[u8]>::to_vec).collect()
    }
}

pub struct DomainRouter {
    core: Rc<Core>,
    /// Once per poll interval across workers (control endpoint only).
    poll: Option<Job>,
    /// This VM's poll in flight, so a slow answer is not overtaken.
    clock: Rc<RefCell<PollClock>>,
    /// ETag of the last answer seen by any VM (good or rejected), in shared
    /// data: the next poll (maybe another VM's) sends it as If-None-Match,
    /// so a rejected table is reported once, not on every poll.
    last_etag: Option<Rc<SharedValue<Postcard<SeenAnswer>>>>,
}

/// The last control answer any VM processed (good or rejected): its ETag,
/// sent as If-None-Match, and a hash of its body, which decides whether a
/// 200 answer is new.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct SeenAnswer {
    etag: String,
    body_hash: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl DomainRouter {
    fn route(&self, ex: &mut Exchange, d: &Decision<'_>) {
        if let Some(extras) = d.extras {
            for name in &extras.remove {
                ex.remove_request_header(name);
            }
            for (name, value) in &extras.set {
                ex.set_request_header(name, value);
            }
            if let Some(host) = &extras.host_rewrite {
                ex.set_request_header(":authority", host);
            }
        }
        // Written last, so a rule's own header edits cannot touch it. A
        // replace removes the client's copies and (ABI 0.2.1) clears the
        // route cache: no separate remove or clear_route_cache.
        ex.set_request_header(&self.core.config.cluster_header, d.cluster);
    }

    fn no_match(&self, ex: &mut Exchange) -> Flow {
        self.core.metrics.no_match.inc();
        let nm = &self.core.config.no_match;
        match nm.action {
            NoMatchAction::PassThrough => Flow::Continue,
            NoMatchAction::LocalReply => ex.reply(
                nm.status,
                "domain_router_no_match",
                &[("content-type", "application/json")],
                self.core.no_match_body.clone(),
            ),
        }
    }

    /// Polls the control endpoint when this VM won the interval's claim.
    fn poll(&self, root: &RootServices) {
        let (Some(control), Some(job)) = (&self.core.config.control, &self.poll) else {
            return;
        };
        let now = host::now_nanos();
        let stuck_after = nanos(Duration::from_millis(control.timeout_ms) + Duration::from_secs(5));
        if !self.clock.borrow().due(now, stuck_after) || !job.claim(now) {
            return;
        }
        let seen = self
            .last_etag
            .as_ref()
            .and_then(|e| e.get().ok().flatten())
            .map(|e| e.0.clone());
        let seen_body = seen.as_ref().map(|s| s.body_hash);
        let etag = seen
            .map(|s| s.etag)
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| self.core.loaded_etag());
        let mut req = HttpRequest::get(&control.cluster, &control.path)
            .authority(control.authority.as_deref().unwrap_or(&control.cluster))
            .timeout(Duration::from_millis(control.timeout_ms))
            .header("accept", "application/json");
        let conditional = !etag.is_empty();
        if conditional {
            req = req.header("if-none-match", &etag);
        }
        // The job spaces polls; the clock only guards this VM's own one.
        self.clock.borrow_mut().started(now, 0);
        let (core, clock, last_etag) = (
            Rc::clone(&self.core),
            Rc::clone(&self.clock),
            self.last_etag.clone(),
        );
        let sent = root.callouts.http(req, move |result| {
            clock.borrow_mut().finished();
            let cluster = core
                .config
                .control
                .as_ref()
                .map_or("", |c| c.cluster.as_str());
            // Counted, and said at most once per poll interval process-wide.
            let failed = |why: std::fmt::Arguments| {
                core.metrics.poll_errors.inc();
                log::warn!("{FILTER}: the control endpoint (cluster {cluster}) {why}");
            };
            match result {
                // Only a 200 carries a whole table (a 204 has none, a 206
                // a part of one).
                Ok(resp) if resp.status != 200 => failed(format_args!(
                    "answered {} without a table: only 200 carries one",
                    resp.status
                )),
                Ok(resp) => {
                    let etag = resp
                        .header("etag")
                        .map(|e| String::from_utf8_lossy(e).into_owned())
                        .unwrap_or_default();
                    // The same body as the last answer (a server that
                    // ignores If-None-Match, or sends no ETag): the same
                    // table, good or rejected, is neither installed nor
                    // reported again. The body decides, not the ETag: a new
                    // table under an old ETag is still a new table.
                    let body_hash = fnv1a64(&resp.body);
                    if seen_body == Some(body_hash) {
                        log::debug!("{FILTER}: table not modified (same answer)");
                        return;
                    }
                    core.accept(&resp.body, &etag);
                    let answer = SeenAnswer { etag, body_hash };
                    if let Some(seen) = &last_etag
                        && let Err(e) = seen.set(&Postcard(answer))
                    {
                        log::debug!("{FILTER}: recording the answer: {e}");
                    }
                }
                Err(CalloutError::Status(r)) if r.status == 304 && conditional => {
                    log::debug!("{FILTER}: table not modified");
                }
                // Not Modified, to a request without If-None-Match: there is
                // no table to keep, so requests stay unrouted.
                Err(CalloutError::Status(r)) if r.status == 304 => {
                    failed(format_args!(
                        "answered 304 to an unconditional poll: no table yet"
                    ));
                }
                Err(e) => {
                    let hint = if matches!(e, CalloutError::NoResponse) {
                        "; an answer over 32 MiB (Envoy's limit for a callout) also ends so"
                    } else {
                        ""
                    };
                    failed(format_args!("failed a poll: {e}{hint}"));
                }
            }
        });
        if let Err(e) = sent {
            self.clock.borrow_mut().finished();
            self.core.metrics.poll_errors.inc();
            // At most once per poll interval process-wide (the job's claim).
            log::warn!(
                "{FILTER}: cannot poll the control endpoint (cluster {:?}): {e}; likely cause: {}",
                control.cluster,
                e.likely_cause()
            );
        }
    }
}

impl Stage for DomainRouter {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        let core = &self.core;
        // Until this VM has a published table, look for one on every
        // request, not only on the tick: a worker must not answer "no
        // route" for a tick after another worker got the first table. Once
        // loaded, swaps wait for the tick (no shared-data read per request).
        if core.sync.is_some() && core.loaded_generation() == 0 {
            core.refresh();
        }
        let header = core.config.cluster_header.as_str();
        // Whatever the outcome, a client never picks the cluster itself.
        if ex.request().contains(header) {
            ex.remove_request_header(header);
            core.metrics.client_header_stripped.inc();
        }
        let (router, counters) = core.current();
        // Called only when a split has no key header: the clock is read then.
        let mut random = || fallback_random(host::now_nanos());
        let mut key = SplitKey {
            request_id_header: &core.config.request_id_header,
            random: &mut random,
        };
        let request = ex.request();
        let mut host = Vec::new();
        normalize_host(request.get(":authority").unwrap_or_default(), &mut host);
        let decided = router.decide(&host, &View(request), &mut key).map(|d| {
            let rule = d
                .stat
                .and_then(|i| router.rule_names().get(usize::try_from(i).ok()?))
                .map(|n| n.to_string());
            (d, rule)
        });
        match decided {
            Some((d, rule)) => {
                core.metrics.matches.inc();
                if let Some(c) = d.stat.and_then(|i| counters.get(usize::try_from(i).ok()?)) {
                    c.inc();
                }
                self.route(ex, &d);
                ex.decisions.cluster = Some(d.cluster.to_string());
                ex.decisions.route = rule;
                Flow::Continue
            }
            None => self.no_match(ex),
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.core.config.control.as_ref().map(|c| c.tick_period())
    }

    fn on_tick(&self, root: &RootServices) {
        // Tables other VMs published load here, not per request: a new
        // table is in use on every worker within one tick period.
        self.core.refresh();
        self.poll(root);
    }
}
