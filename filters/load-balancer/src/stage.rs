//! The load-balancer stage: pick on the request headers, learn from the
//! load reports and outcomes of the response (headers and trailers), and
//! run the periodic jobs on ticks.
//!
//! Per request, in steady state (the table unchanged since this VM's last
//! request), the stage reads one 8-byte shared-data key (`table_version`)
//! and nothing else from shared data; the table is fetched and decoded, and
//! the picker rebuilt, only when that version moved.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::codec::{Postcard, fnv1a64};
use switchyard_sdk::config::ConfigError;
use switchyard_sdk::config::Source;
use switchyard_sdk::headers::HeaderMap;
use switchyard_sdk::host;
use switchyard_sdk::job::Job;
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, RootServices, Setup, Stage, StageSpec};

use crate::config::{Config, Mode, ORIGINAL_DST_HEADER, Policy};
use crate::jobs;
use crate::observed::Observed;
use crate::orca::{self, LoadReport, Rejected};
use crate::picker::{Picker, Rng, Signals};
use crate::prequal::{Estimate, Live};
use crate::stats::FILTER;
use crate::store::Store;
use crate::table::{LoadRecord, Table};

/// How modules build this stage (`load_balancer` in a chain).
pub const SPEC: StageSpec = StageSpec {
    name: "load_balancer",
    filter: FILTER,
    build,
    phases: Phases::of(&[
        Phase::RequestHeaders,
        Phase::ResponseHeaders,
        Phase::ResponseTrailers,
    ]),
};

fn build(raw: Source<'_>, setup: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    let config: Config = switchyard_sdk::config::parse(raw)?;
    Ok(Box::new(LoadBalancer::new(config, setup)))
}

/// The load balancer of one VM: the shared-data side, this VM's picking
/// state and the periodic jobs.
pub struct LoadBalancer {
    store: Rc<Store>,
    picking: RefCell<Picking>,
    /// Discovery polls (when `discovery` is configured); its answer may
    /// reschedule it.
    discovery_job: Option<Rc<Job>>,
    /// Weight updates and the end of expired ejections.
    weights_job: Job,
}

/// What only this VM knows.
struct Picking {
    /// The table as last fetched.
    table: Option<Rc<Postcard<Table>>>,
    /// The `table_version` value seen when `table` was fetched: the table
    /// is fetched again when the key holds anything else.
    synced: Option<u64>,
    picker: Option<Picker>,
    rng: Rng,
    /// This VM's random id: seeds where its EDF entries start, so workers
    /// and proxies do not pick in lockstep.
    edf_seed: u64,
    /// Requests this VM has in flight per endpoint slot (P2C, Prequal),
    /// and Prequal's estimates.
    live: Live,
    /// Answers and failures this VM saw per endpoint slot.
    observed: Observed,
    /// The clock at this VM's latest tick (every `TABLE_SYNC_MS`): the
    /// time Prequal's estimates age by, without a clock read per request.
    tick_ns: u64,
}

/// What the stage remembers between the phases of one request.
#[derive(Default)]
struct Request {
    /// The table the pick was made from (or the response was mapped with).
    table: Option<Rc<Postcard<Table>>>,
    /// Picked endpoints (first, then retry hosts), as table indices.
    picks: Vec<usize>,
    /// Slot whose in-flight count this request holds, and the fingerprint
    /// of its endpoint then; taken on release.
    in_flight: Option<(u16, u64)>,
    /// The table index of the endpoint that answered, once known.
    served: Option<usize>,
    /// A valid report came with the response headers: the trailers' is
    /// ignored (Envoy's router also takes one report, headers first).
    report_taken: bool,
    outcome: Outcome,
}

/// Where the request's passive-health outcome stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Outcome {
    /// No response yet.
    #[default]
    Open,
    /// A gRPC response (HTTP status below 500) without `grpc-status` in its
    /// headers: the trailers' `grpc-status` decides. Should they never come
    /// (a reset, maybe by the client), nothing is recorded.
    AwaitingTrailers,
    /// Recorded (or nothing to record): never again for this request.
    Done,
}

impl LoadBalancer {
    /// The stage for `config` in the VM described by `setup`. Creates the
    /// shared table when no VM has yet, so the first request finds it.
    pub fn new(config: Config, setup: &Setup) -> Self {
        let store = Store::new(config, &setup.plugin_name, setup.config_hash);
        store.carry_over();
        let c = &store.config;
        let discovery_job = c.discovery.as_ref().map(|d| {
            Rc::new(Job::new(
                store.key("job/discovery"),
                Duration::from_millis(d.interval_ms),
            ))
        });
        let weights_job = Job::new(
            store.key("job/weights"),
            Duration::from_millis(c.weighted_round_robin.weight_update_period_ms),
        );
        let me = setup.instance_id;
        let slots = c.max_endpoints as usize;
        let lb = LoadBalancer {
            picking: RefCell::new(Picking {
                table: None,
                synced: None,
                picker: None,
                rng: Rng::new(me ^ host::now_nanos()),
                edf_seed: me,
                live: Live::new(slots, c.prequal.max_age_ms.saturating_mul(1_000_000)),
                tick_ns: 0,
                observed: Observed::new(if c.passive_health.enabled {
                    c.passive_health
                        .success_rate
                        .window_ms
                        .saturating_mul(1_000_000)
                } else {
                    0
                }),
            }),
            store: Rc::new(store),
            discovery_job,
            weights_job,
        };
        lb.current_table(&mut lb.picking.borrow_mut());
        lb
    }

    /// The current table: this VM's copy unless `table_version` moved since
    /// it was fetched (one small read per call; called on the tick, after
    /// a failure and when this VM changed the table, never per pick).
    fn current_table(&self, p: &mut Picking) -> Option<Rc<Postcard<Table>>> {
        let published = match self.store.published_version() {
            Ok(v) => v,
            Err(e) => {
                log::debug!("{FILTER}: reading the table version: {e}");
                return p.table.clone().or_else(|| self.store.table_or_init());
            }
        };
        if let (Some(v), Some(t)) = (published, &p.table)
            && p.synced == Some(v)
        {
            return Some(Rc::clone(t));
        }
        let t = self.store.table_or_init()?;
        if published.is_none() {
            // A table without a version key (its writer failed to publish):
            // publish it, so later requests do not fetch the table again.
            self.store.publish_version(t.0.version);
        }
        p.synced = Some(published.unwrap_or(t.0.version));
        p.table = Some(Rc::clone(&t));
        Some(t)
    }

    /// Removes selection headers the client sent: only this filter decides.
    fn strip_forged(&self, ex: &mut Exchange) {
        let header = self.store.config.header();
        let (own, original_dst) = {
            let req = ex.request();
            (
                req.contains(header),
                header != ORIGINAL_DST_HEADER && req.contains(ORIGINAL_DST_HEADER),
            )
        };
        // A pick set later supersedes the removal: one host call either way.
        if own {
            ex.remove_request_header(header);
        }
        if original_dst {
            ex.remove_request_header(ORIGINAL_DST_HEADER);
        }
        if own || original_dst {
            self.store.stats.forged_headers.inc();
        }
    }

    /// The stickiness key's hash, when the policy hashes and the request has one.
    fn hash_key(&self, ex: &mut Exchange) -> Option<u64> {
        let c = &self.store.config;
        if c.policy != Policy::ConsistentHash {
            return None;
        }
        let h = &c.hash;
        if let Some(name) = &h.header {
            return ex.request().get(name).map(fnv1a64);
        }
        if let Some(name) = &h.cookie {
            // Every `Cookie` line: HTTP/1.1 clients may send several.
            return ex.request().cookie(name).map(fnv1a64);
        }
        if h.client_address {
            let ip = ex.client_address()?;
            return Some(fnv1a64(ip.as_bytes()));
        }
        None
    }

    /// Picks endpoints for the request and hands them to Envoy.
    fn pick(&self, ex: &mut Exchange) {
        let stats = &self.store.stats;
        let config = &self.store.config;
        let key = self.hash_key(ex);
        let mut p = self.picking.borrow_mut();
        let p = &mut *p;
        // The table is re-synced on every tick (20 ms), not per
        // request: a request reads no shared data to pick.
        let table = match p.table.clone() {
            // This VM itself changed the table (an ejection, a discovery
            // answer): follow it now.
            Some(_) if self.store.take_published_here() => self.current_table(p),
            Some(t) => Some(t),
            None => self.current_table(p),
        };
        let Some(table) = table else {
            stats.no_endpoint.inc();
            return;
        };
        let t = &table.0;
        let stale = p.picker.as_ref().is_none_or(|k| {
            k.version != t.version
                || k.endpoints != t.endpoints.len()
                || k.observed_generation != p.observed.generation
        });
        if stale {
            // A slot freed by a removed endpoint goes to the next one added:
            // this worker's record of it starts over (counts, reports,
            // failures), or the newcomer inherits them.
            for e in &t.endpoints {
                if p.live.adopt(e.slot, e.fingerprint()) {
                    p.observed.forget(e.slot);
                }
            }
            let previous = p.picker.take();
            p.picker = Some(Picker::build(
                t,
                config,
                ex.now_nanos(),
                p.edf_seed,
                previous,
                &p.observed,
            ));
        }
        let signals = LiveSignals {
            table: t,
            live: &p.live,
            now: p.tick_ns,
        };
        let picked = p
            .picker
            .as_mut()
            .and_then(|k| k.pick(key, &mut p.rng, &signals, config.mode == Mode::Endpoint));
        let Some((pick, first)) = picked.and_then(|k| {
            let first = t.endpoints.get(k.first)?;
            Some((k, first))
        }) else {
            stats.no_endpoint.inc();
            return;
        };
        let value = match config.mode {
            Mode::Endpoint => {
                let listed: Vec<&str> = std::iter::once(pick.first)
                    .chain(pick.retries.iter().copied())
                    .filter_map(|i| t.endpoints.get(i).map(|e| e.address.as_str()))
                    .collect();
                override_host_list(&listed)
            }
            Mode::OriginalDst | Mode::Cluster => first.address.clone(),
        };
        // A replace drops client copies and makes Envoy pick the route again.
        ex.set_request_header(config.header(), value);
        ex.decisions.endpoint = Some(first.address.clone());
        stats.pick(&first.name);
        let slot = first.slot;
        p.live.start(slot, p.tick_ns);
        let r = ex.state::<Request>();
        r.in_flight = Some((slot, first.fingerprint()));
        r.picks = std::iter::once(pick.first).chain(pick.retries).collect();
        r.table = Some(Rc::clone(&table));
    }

    /// The table this request's response maps to: the one it was picked
    /// from, else this VM's copy (never a fetch on the response path).
    fn request_table(&self, ex: &mut Exchange) -> Option<Rc<Postcard<Table>>> {
        if let Some(t) = ex.state::<Request>().table.clone() {
            return Some(t);
        }
        let t = self.picking.borrow().table.clone()?;
        ex.state::<Request>().table = Some(Rc::clone(&t));
        Some(t)
    }

    /// The table index of the endpoint that answered, if known.
    fn served(&self, ex: &mut Exchange, t: &Table) -> Option<usize> {
        let first = ex.state::<Request>().picks.first().copied();
        match self.store.config.mode {
            // The cluster header and ORIGINAL_DST's header name exactly
            // where the request went.
            Mode::Cluster | Mode::OriginalDst => first,
            // override_host may have moved on to a retry host or the
            // fallback policy: ask Envoy.
            Mode::Endpoint => {
                let up = ex.property_str(&["upstream", "address"])?;
                t.endpoints.iter().position(|e| e.address == up)
            }
        }
    }

    /// Counts a report and stores an accepted one for the serving endpoint.
    fn learn(
        &self,
        ex: &mut Exchange,
        t: &Table,
        served: Option<usize>,
        report: Result<LoadReport, Rejected>,
    ) {
        let stats = &self.store.stats;
        let r = match report {
            Ok(r) => r,
            Err(rejected) => {
                stats.rejected(rejected.reason);
                log::debug!("{FILTER}: load report rejected: {rejected}");
                return;
            }
        };
        stats.reports_accepted.inc();
        let Some(e) = served.and_then(|i| t.endpoints.get(i)) else {
            return;
        };
        let config = &self.store.config;
        let utilization = r.utilization_for(&config.weighted_round_robin.utilization_metrics);
        let at_ns = response_stamp(ex, self.picking.borrow().tick_ns);
        let mut picking = self.picking.borrow_mut();
        if config.policy.uses_estimates() && picking.live.owns(e.slot, e.fingerprint()) {
            let rif = r
                .named_metrics
                .get(&config.prequal.in_flight_metric)
                .copied();
            picking.live.report(e.slot, rif, utilization, at_ns);
        }
        drop(picking);
        self.store.store_report(
            e.slot,
            LoadRecord {
                fingerprint: e.fingerprint(),
                at_ns,
                qps: r.rps_fractional,
                eps: r.eps,
                utilization,
            },
        );
    }

    /// Records the request's outcome, once: the hosts listed before the one
    /// that served failed (Envoy moved on only after a connect failure or
    /// reset), the serving one by `failed`.
    fn record(&self, ex: &mut Exchange, t: &Table, failed: bool) {
        // Prequal's latency: Envoy's own measure of the upstream (its
        // router adds it to every response it proxies), no clock read;
        // successful answers only (a fast failure is no fast endpoint).
        let service_ms = (self.store.config.policy.uses_estimates() && !failed)
            .then(|| {
                ex.response()
                    .get_str(UPSTREAM_SERVICE_TIME)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .flatten();
        let r = ex.state::<Request>();
        if r.outcome == Outcome::Done {
            return;
        }
        r.outcome = Outcome::Done;
        let Some(s) = r.served else {
            return;
        };
        let mut outcomes: Vec<(usize, bool)> = Vec::with_capacity(1);
        if let Some(k) = r.picks.iter().position(|&p| p == s) {
            outcomes.extend(r.picks[..k].iter().map(|&p| (p, true)));
        }
        outcomes.push((s, failed));
        let mut picking = self.picking.borrow_mut();
        let now = response_stamp(ex, picking.tick_ns);
        if let (Some(ms), Some(e)) = (service_ms, t.endpoints.get(s))
            && picking.live.owns(e.slot, e.fingerprint())
        {
            picking
                .live
                .latency(e.slot, ms.saturating_mul(1_000_000), now);
        }
        let mut any_failed = false;
        for (i, failed) in outcomes {
            if let Some(e) = t.endpoints.get(i) {
                let fingerprint = e.fingerprint();
                self.store
                    .record_outcome(&e.address, e.slot, fingerprint, failed);
                // The slot may have gone to another endpoint since the pick.
                if picking.live.owns(e.slot, fingerprint) {
                    picking.observed.record(e.slot, failed, now);
                    picking.live.answered(e.slot, failed);
                }
                any_failed |= failed;
            }
        }
        // A failure may mean another worker has just ejected the endpoint:
        // check the table now rather than at the next tick (one small read,
        // on failures only), so this worker stops sending there at once.
        if any_failed {
            self.current_table(&mut picking);
        }
    }
}

/// When a response's bookkeeping (report stamps, latencies, failure
/// windows) happened, without a clock read: the later of this VM's latest
/// tick (at most `TABLE_SYNC_MS` old) and the clock a stage read as the
/// request arrived; the clock itself only before the first tick. Not the
/// request's start alone: a report answered after a long queue would
/// look older than one a later, faster request brought, and be dropped.
fn response_stamp(ex: &mut Exchange, tick_ns: u64) -> u64 {
    match tick_ns.max(ex.request_phase_clock().unwrap_or(0)) {
        0 => ex.now_nanos(),
        t => t,
    }
}

/// Envoy's router puts the upstream's time to the response headers, in
/// ms, on every response it proxies (unless `suppress_envoy_headers`).
const UPSTREAM_SERVICE_TIME: &str = "x-envoy-upstream-service-time";

/// The picker's view of this worker's signals at one pick.
struct LiveSignals<'a> {
    table: &'a Table,
    live: &'a Live,
    now: u64,
}

impl Signals for LiveSignals<'_> {
    fn utilization(&self, i: usize) -> f64 {
        self.table
            .endpoints
            .get(i)
            .map_or(f64::MAX, |e| e.utilization)
    }

    fn in_flight(&self, i: usize) -> u32 {
        self.table
            .endpoints
            .get(i)
            .map_or(u32::MAX, |e| self.live.in_flight(e.slot))
    }

    fn estimate(&self, i: usize) -> Estimate {
        match self.table.endpoints.get(i) {
            Some(e) => self.live.estimate(e.slot, self.now),
            None => Estimate::UNKNOWN,
        }
    }
}

/// The load report of one header map and which report headers it holds.
fn read_report(map: &HeaderMap, max_bytes: usize) -> ReportHeaders {
    let bin: Vec<&[u8]> = map.values(orca::BIN_HEADER).collect();
    let text: Vec<&[u8]> = map.values(orca::HEADER).collect();
    ReportHeaders {
        report: orca::parse_report(&bin, &text, max_bytes),
        bin: !bin.is_empty(),
        text: !text.is_empty(),
    }
}

struct ReportHeaders {
    report: Option<Result<LoadReport, Rejected>>,
    bin: bool,
    text: bool,
}

/// Whether a response is gRPC (`application/grpc`, `+proto`, `;...`), whose
/// status comes in `grpc-status` (gRPC-Web's travels in the body: not
/// gRPC here).
fn is_grpc(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.trim().strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// Whether a `grpc-status` is a failure of the endpoint: the codes Envoy
/// maps to a 5xx (`Grpc::Utility::grpcToHttpStatus`): UNKNOWN, DEADLINE_
/// EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, and an
/// unknown, unreadable or missing status. Other codes (NOT_FOUND,
/// INVALID_ARGUMENT, ...) are the application's answer, as a 4xx is.
fn grpc_failed(status: Option<&[u8]>) -> bool {
    let code = status
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.trim().parse::<u32>().ok());
    match code {
        Some(code) => matches!(code, 2 | 4 | 12..=15) || code > 16,
        None => true,
    }
}

impl Stage for LoadBalancer {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        self.strip_forged(ex);
        self.pick(ex);
        Flow::Continue
    }

    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        let config = &self.store.config;
        let found = read_report(ex.response(), config.max_report_bytes as usize);
        if config.strip_load_reports {
            if found.bin {
                ex.remove_response_header(orca::BIN_HEADER);
            }
            if found.text {
                ex.remove_response_header(orca::HEADER);
            }
        }
        // `grpc`: None for plain HTTP; for gRPC, the verdict of a
        // `grpc-status` in the headers (a trailers-only answer) if any.
        let (http_failed, grpc) = {
            let m = ex.response();
            let status = m
                .get_str(":status")
                .and_then(|s| s.trim().parse::<u16>().ok())
                .unwrap_or(0);
            let grpc = is_grpc(m.get_str("content-type"))
                .then(|| m.get("grpc-status").map(|v| grpc_failed(Some(v))));
            (status >= 500, grpc)
        };
        let Some(table) = self.request_table(ex) else {
            return Flow::Continue;
        };
        let t = &table.0;
        let served = self.served(ex, t);
        ex.state::<Request>().served = served;
        if let Some(report) = found.report {
            ex.state::<Request>().report_taken = report.is_ok();
            self.learn(ex, t, served, report);
        }
        match grpc {
            // An HTTP failure needs no gRPC status.
            _ if http_failed => self.record(ex, t, true),
            None => self.record(ex, t, false),
            Some(Some(failed)) => self.record(ex, t, failed),
            Some(None) => ex.state::<Request>().outcome = Outcome::AwaitingTrailers,
        }
        Flow::Continue
    }

    fn on_response_trailers(&self, ex: &mut Exchange) -> Flow {
        let config = &self.store.config;
        let found = read_report(ex.response_trailers(), config.max_report_bytes as usize);
        if config.strip_load_reports {
            if found.bin {
                ex.remove_response_trailer(orca::BIN_HEADER);
            }
            if found.text {
                ex.remove_response_trailer(orca::HEADER);
            }
        }
        let grpc_verdict = grpc_failed(ex.response_trailers().get("grpc-status"));
        let Some(table) = ex.state::<Request>().table.clone() else {
            return Flow::Continue;
        };
        let t = &table.0;
        let r = ex.state::<Request>();
        let (served, report_taken, outcome) = (r.served, r.report_taken, r.outcome);
        if let Some(report) = found.report.filter(|_| !report_taken) {
            self.learn(ex, t, served, report);
        }
        if outcome == Outcome::AwaitingTrailers {
            self.record(ex, t, grpc_verdict);
        }
        Flow::Continue
    }

    fn on_stream_end(&self, ex: &mut Exchange) {
        // `take`: the count is released once, whatever ran before.
        if let Some((slot, fingerprint)) = ex.state::<Request>().in_flight.take() {
            let mut p = self.picking.borrow_mut();
            if p.live.owns(slot, fingerprint) {
                p.live.finish(slot);
            }
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.store.config.tick_ms()))
    }

    fn on_tick(&self, root: &RootServices) {
        let now = host::now_nanos();
        if let (Some(d), Some(job)) = (&self.store.config.discovery, &self.discovery_job)
            && job.claim(now)
        {
            jobs::poll(&self.store, &root.callouts, d, job, now);
        }
        if self.weights_job.claim(now) {
            jobs::update_weights(&self.store, now);
        }
        // Follow the published table (weights, ejections, discovery): the
        // one shared-data read that requests no longer make.
        if let Ok(mut p) = self.picking.try_borrow_mut() {
            p.tick_ns = now;
            self.store.take_published_here();
            self.current_table(&mut p);
        }
    }
}

/// Entries of the override-host header: Envoy takes one per attempt and,
/// once the list is used up, lets the cluster's fallback policy pick from
/// the whole cluster — draining and ejected endpoints included. So the
/// list is padded to this length by repeating the picked endpoints: a route
/// with up to 10 retries never leaves them.
pub const LISTED_ATTEMPTS: usize = 11;

/// `first,retry,...` for `override_host`, padded to [`LISTED_ATTEMPTS`]
/// entries by cycling through the picked endpoints (which are all eligible).
pub fn override_host_list(picked: &[&str]) -> String {
    let mut v = String::new();
    for (i, addr) in picked.iter().cycle().take(LISTED_ATTEMPTS).enumerate() {
        if i > 0 {
            v.push(',');
        }
        v.push_str(addr);
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_override_list_covers_ten_retries_with_picked_endpoints_only() {
        let v = super::override_host_list(&["a:1", "b:1", "c:1"]);
        assert_eq!(v.split(',').count(), super::LISTED_ATTEMPTS);
        assert_eq!(&v[..11], "a:1,b:1,c:1");
        assert!(v.split(',').all(|e| ["a:1", "b:1", "c:1"].contains(&e)));
        assert_eq!(super::override_host_list(&["a:1"]).split(',').count(), 11);
        assert_eq!(super::override_host_list(&[]), "");
    }

    use super::*;

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some("application/grpc")));
        assert!(is_grpc(Some("application/grpc+proto")));
        assert!(is_grpc(Some("application/grpc;charset=utf-8")));
        assert!(!is_grpc(Some("application/grpc-web")));
        assert!(!is_grpc(Some("application/json")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn grpc_failures_are_the_5xx_kind() {
        for ok in ["0", "1", "3", "5", "7", "8", "9", "10", "11", "16", " 0 "] {
            assert!(!grpc_failed(Some(ok.as_bytes())), "{ok}");
        }
        for failed in ["2", "4", "12", "13", "14", "15", "17", "x", "", "-1"] {
            assert!(grpc_failed(Some(failed.as_bytes())), "{failed}");
        }
        assert!(grpc_failed(None), "a gRPC answer must carry its status");
    }
}
