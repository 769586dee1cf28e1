//! Stages: filter logic without proxy-wasm contexts.
//!
//! A filter is a [`Stage`]: it is built once per VM from its configuration
//! ([`StageSpec`]) and then called per request with an [`Exchange`], the
//! request as the SDK has already read it. The SDK owns the proxy-wasm root
//! and stream contexts ([`crate::module`]): one module may run one stage
//! (a filter built alone) or several in order (the chain), with one set of
//! Envoy callbacks per request either way.
//!
//! What the [`Exchange`] saves (see `BENCHMARKS.md`, "What a crossing costs"):
//! - each header map is read at most once per phase, with one
//!   `proxy_get_header_map_pairs` call, and kept in step with the stages'
//!   own writes, so later stages and `on_log` read it for free;
//! - header writes are collected and applied once at the end of the phase,
//!   one host call per header (a set supersedes earlier edits of the name);
//! - properties are read once per request and memoised (one host call
//!   each: a CEL list of them through `expr_evaluate` measured slower);
//! - the clock is read once per phase;
//! - decisions of earlier stages ([`Decisions`]) are plain fields, so a
//!   later stage (the access log) reads them without a header a client
//!   could forge.
//!
//! Stage code names no proxy-wasm type, so the emulator drives it through
//! the real ABI and another host ABI could later.

use crate::callout::{
    CalloutError, HttpRequest, HttpResponse, decode_grpc, read_grpc_answer, read_http_answer,
    send_grpc, send_http,
};
use crate::config::ConfigError;
use crate::headers::{Edit, HeaderMap, push_edit};
use crate::host::{self, MapType};
use std::any::Any;
use std::time::Duration;

/// What a stage tells the SDK after a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next stage (and then Envoy's next filter).
    Continue,
    /// Wait: the stage sent a callout whose answer continues the phase.
    Pause,
    /// The stage answered the request itself ([`Exchange::reply`]): later
    /// stages do not run this phase.
    Stop,
}

/// The phases a stage can take part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    RequestHeaders,
    ResponseHeaders,
    ResponseTrailers,
    Log,
}

/// A set of [`Phase`]s, usable in `const` items: which [`Stage`] methods a
/// stage implements ([`StageSpec::phases`]), and so which callbacks its
/// module has Envoy make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    /// Only the request headers.
    pub const REQUEST: Phases = Phases::of(&[Phase::RequestHeaders]);

    /// The set of `phases`.
    pub const fn of(phases: &[Phase]) -> Phases {
        let mut bits = 0;
        let mut i = 0;
        while i < phases.len() {
            bits |= 1 << phases[i] as u8;
            i += 1;
        }
        Phases(bits)
    }

    /// Every phase some of `specs` takes part in.
    pub const fn union(specs: &[StageSpec]) -> Phases {
        let mut bits = 0;
        let mut i = 0;
        while i < specs.len() {
            bits |= specs[i].phases.0;
            i += 1;
        }
        Phases(bits)
    }

    /// Whether `phase` is in the set.
    pub const fn contains(self, phase: Phase) -> bool {
        self.0 & (1 << phase as u8) != 0
    }

    /// Whether both sets name the same callbacks after the request headers
    /// (which every module exports: forged decision headers are stripped
    /// there).
    pub const fn same_after_request(self, other: Phases) -> bool {
        let request = 1 << Phase::RequestHeaders as u8;
        self.0 | request == other.0 | request
    }
}

/// Request headers named like Switchyard's decisions. No stage sets them
/// (decisions travel in [`Decisions`]), so a request carrying one is
/// forging it: every configured module removes them before its stages run,
/// and they never reach a backend nor a record.
pub const DECISION_HEADERS: [&str; 3] = [
    "x-switchyard-route",
    "x-switchyard-endpoint",
    "x-switchyard-ratelimit",
];

/// Decisions stages pass to later stages of the same module. Only stages
/// write them, so a client cannot forge them (unlike a request header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    /// The routing rule that matched (domain-router).
    pub route: Option<String>,
    /// The cluster the request was routed to (domain-router).
    pub cluster: Option<String>,
    /// The picked endpoint, `ip:port` (load-balancer).
    pub endpoint: Option<String>,
    /// The rate-limit verdict: `ok`, `over_limit`, `shadow_over_limit`,
    /// `error`, with `;policy=<rule>` when a rule applied (rate-limit).
    pub rate_limit: Option<String>,
}

/// Facts about the VM a stage is built in.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Envoy's plugin name (`name` in the Wasm filter config).
    pub plugin_name: String,
    /// FNV-1a of this stage's configuration bytes: keys shared data per
    /// configuration, so a reloaded config never reads the old one's state.
    pub config_hash: u64,
    /// Random per-VM id ([`crate::vm::instance_id`]).
    pub instance_id: u64,
    /// The Envoy VM id (scope of shared data and queues).
    pub vm_id: String,
    /// Whether the stage is built into a chain module (other stages may
    /// leave [`Decisions`]); `false` alone in its module.
    pub in_chain: bool,
}

/// Builds a stage from its configuration (JSON, read with
/// [`crate::config::parse`]); errors name the field.
pub type BuildStage = fn(crate::config::Source<'_>, &Setup) -> Result<Box<dyn Stage>, ConfigError>;

/// How a module builds one kind of stage from its configuration.
#[derive(Clone, Copy)]
pub struct StageSpec {
    /// The stage's name: its key in the chain configuration
    /// (`{"stages":[{"<name>": {...}}]}`), e.g. `rate_limit`.
    pub name: &'static str,
    /// The filter's name in logs and metric names, e.g. `rate-limit`.
    pub filter: &'static str,
    /// Builds the stage from its configuration bytes (JSON). Errors name the
    /// field; the module prefixes the stage's position in a chain.
    pub build: BuildStage,
    /// The phases whose [`Stage`] method this stage implements, e.g.
    /// `Phases::of(&[Phase::RequestHeaders, Phase::Log])`. A module has
    /// Envoy call it back only for the phases its stages list (each
    /// callback Envoy makes costs ~2 400 instructions even when no stage
    /// acts; `BENCHMARKS.md`): the method of a phase not listed never
    /// runs. The request headers callback is always made.
    pub phases: Phases,
}

/// Root-level services a stage uses outside requests.
pub struct RootServices {
    /// Callouts whose answers come back to the root context (polls,
    /// shipping).
    pub callouts: crate::callout::Callouts,
}

/// One filter's logic. Every method has a default that does nothing, so a
/// stage implements only the phases it needs, and lists them in its
/// [`StageSpec::phases`]: the module has Envoy call it back only for those.
pub trait Stage {
    /// Request headers arrived (`on_http_request_headers`).
    fn on_request_headers(&self, _ex: &mut Exchange) -> Flow {
        Flow::Continue
    }
    /// Response headers arrived (`on_http_response_headers`).
    fn on_response_headers(&self, _ex: &mut Exchange) -> Flow {
        Flow::Continue
    }
    /// Response trailers arrived (`on_http_response_trailers`; gRPC puts
    /// its status and load reports there).
    fn on_response_trailers(&self, _ex: &mut Exchange) -> Flow {
        Flow::Continue
    }
    /// The stream is complete (`on_log`): every map is readable.
    fn on_log(&self, _ex: &mut Exchange) {}
    /// The stream is gone (`on_delete`): release what the request held.
    /// Runs for every stream, also one that never reached `on_log`.
    fn on_stream_end(&self, _ex: &mut Exchange) {}
    /// How often this stage wants [`Stage::on_tick`]; `None`: never.
    fn tick_period(&self) -> Option<Duration> {
        None
    }
    /// The root's timer fired (every VM; use [`crate::job::Job`] for work
    /// that must run once across workers).
    fn on_tick(&self, _root: &RootServices) {}
    /// A shared queue registered by this VM has items.
    fn on_queue_ready(&self, _root: &RootServices, _queue_id: u32) {}
    /// The VM is shutting down.
    fn on_shutdown(&self, _root: &RootServices) {}
}

type GrpcDone = Box<dyn FnOnce(&mut Exchange, Result<Vec<u8>, CalloutError>) -> Flow>;
type HttpDone = Box<dyn FnOnce(&mut Exchange, Result<HttpResponse, CalloutError>) -> Flow>;

enum Pending {
    Grpc(GrpcDone),
    Http(HttpDone),
}

/// A local reply a stage asked for; sent once the stage returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    /// `%RESPONSE_CODE_DETAILS%` in Envoy's access log.
    pub details: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Lazily read header map of one kind.
#[derive(Default)]
struct MapView {
    map: Option<HeaderMap>,
    edits: Vec<Edit>,
}

/// The request as every stage of a module sees it: header maps read once,
/// writes collected, properties memoised, decisions, per-stage state.
pub struct Exchange {
    request: MapView,
    response: MapView,
    trailers: MapView,
    /// Memoised properties by path (paths are static: no key allocation).
    properties: Vec<(&'static [&'static str], Option<Vec<u8>>)>,
    now: Option<u64>,
    /// The clock as first read while the request headers were handled.
    request_clock: Option<u64>,
    /// The phase running now (callout answers run in their own phase).
    phase: Phase,
    /// Whether the request ended with its headers (no body).
    request_ended: bool,
    /// Decisions of the stages that ran so far.
    pub decisions: Decisions,
    state: Vec<Option<Box<dyn Any>>>,
    current: usize,
    reply: Option<LocalReply>,
    /// Whether a local reply has been sent for this stream.
    replied: bool,
    pending: Vec<(u32, usize, Phase, Pending)>,
    /// The phases the module's callbacks cover ([`StageSpec::phases`] of
    /// its stages): an edit of a map whose phase never runs is dropped.
    exported: Phases,
}

impl Exchange {
    pub(crate) fn new(stages: usize, exported: Phases) -> Self {
        Exchange {
            request: MapView::default(),
            response: MapView::default(),
            trailers: MapView::default(),
            properties: Vec::new(),
            now: None,
            request_clock: None,
            phase: Phase::RequestHeaders,
            request_ended: false,
            decisions: Decisions::default(),
            state: (0..stages).map(|_| None).collect(),
            current: 0,
            reply: None,
            replied: false,
            pending: Vec::new(),
            exported,
        }
    }

    fn view(&mut self, kind: MapType) -> &mut MapView {
        match kind {
            MapType::HttpResponseHeaders => &mut self.response,
            MapType::HttpResponseTrailers => &mut self.trailers,
            _ => &mut self.request,
        }
    }

    fn map(&mut self, kind: MapType) -> &HeaderMap {
        let view = self.view(kind);
        view.map.get_or_insert_with(|| {
            host::header_map(kind)
                .map_err(|e| log::debug!("{e}"))
                .unwrap_or_default()
        })
    }

    fn edit(&mut self, kind: MapType, edit: Edit) {
        let phase = match kind {
            MapType::HttpResponseHeaders => Phase::ResponseHeaders,
            MapType::HttpResponseTrailers => Phase::ResponseTrailers,
            _ => Phase::RequestHeaders,
        };
        // Edits are applied at the end of their map's phase; without its
        // callback that never comes (a stage that edits the response from
        // the request phase must list the response phase).
        if phase != Phase::RequestHeaders && !self.exported.contains(phase) {
            crate::logging::warn_throttled("edit-without-phase", || {
                format!(
                    "{edit:?} dropped: no stage of this module lists {phase:?} in \
                     StageSpec::phases, so Envoy never calls that phase"
                )
            });
            return;
        }
        let view = self.view(kind);
        if let Some(map) = &mut view.map {
            match &edit {
                Edit::Set(n, v) => map.set(n, v),
                Edit::Add(n, v) => map.add(n, v),
                Edit::Remove(n) => {
                    map.remove(n);
                }
            }
        }
        push_edit(&mut view.edits, edit);
    }

    /// The request headers (read from Envoy on first use).
    pub fn request(&mut self) -> &HeaderMap {
        self.map(MapType::HttpRequestHeaders)
    }

    /// The response headers (read from Envoy on first use, from the
    /// response phase on).
    pub fn response(&mut self) -> &HeaderMap {
        self.map(MapType::HttpResponseHeaders)
    }

    /// The response trailers (in the trailers phase and `on_log`).
    pub fn response_trailers(&mut self) -> &HeaderMap {
        self.map(MapType::HttpResponseTrailers)
    }

    /// Sets a request header (replacing every value); applied at the end of
    /// the phase. In ABI 0.2.1 a request-header change clears Envoy's route
    /// cache, so the route is picked again.
    pub fn set_request_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.edit(
            MapType::HttpRequestHeaders,
            Edit::Set(name.to_string(), value.as_ref().to_vec()),
        );
    }

    /// Removes every value of a request header.
    pub fn remove_request_header(&mut self, name: &str) {
        self.edit(MapType::HttpRequestHeaders, Edit::Remove(name.to_string()));
    }

    /// Removes whichever of `names` the request carries. The request map
    /// is read once per request and kept for the later phases (`on_log`
    /// reads it from here), so this costs no crossing when any stage reads
    /// the request headers at all.
    pub(crate) fn strip_request_headers(&mut self, names: &[&str]) {
        for name in names {
            if self.request().contains(name) {
                self.remove_request_header(name);
            }
        }
    }

    /// Sets a response header (replacing every value).
    pub fn set_response_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.edit(
            MapType::HttpResponseHeaders,
            Edit::Set(name.to_string(), value.as_ref().to_vec()),
        );
    }

    /// Removes every value of a response header.
    pub fn remove_response_header(&mut self, name: &str) {
        self.edit(MapType::HttpResponseHeaders, Edit::Remove(name.to_string()));
    }

    /// Removes every value of a response trailer.
    pub fn remove_response_trailer(&mut self, name: &str) {
        self.edit(
            MapType::HttpResponseTrailers,
            Edit::Remove(name.to_string()),
        );
    }

    /// Applies the collected edits of `kind` to Envoy: one host call each.
    pub(crate) fn flush(&mut self, kind: MapType) {
        let edits = std::mem::take(&mut self.view(kind).edits);
        for e in edits {
            let r = match &e {
                Edit::Set(n, v) => host::set_header(kind, n, v),
                Edit::Add(n, v) => host::add_header(kind, n, v),
                Edit::Remove(n) => host::remove_header(kind, n),
            };
            if let Err(err) = r {
                log::debug!("header edit {e:?}: {err}");
            }
        }
    }

    /// A property such as `["source", "address"]`, read once per request.
    pub fn property(&mut self, path: &'static [&'static str]) -> Option<&[u8]> {
        let i = match self.properties.iter().position(|(p, _)| *p == path) {
            Some(i) => i,
            None => {
                let value = host::property(path)
                    .map_err(|e| log::debug!("{e}"))
                    .ok()
                    .flatten();
                self.properties.push((path, value));
                self.properties.len() - 1
            }
        };
        self.properties.get(i).and_then(|(_, v)| v.as_deref())
    }

    /// A string property (UTF-8), memoised.
    pub fn property_str(&mut self, path: &'static [&'static str]) -> Option<String> {
        self.property(path)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }

    /// An integer property (8 bytes little-endian), memoised.
    pub fn property_int(&mut self, path: &'static [&'static str]) -> Option<i64> {
        self.property(path).and_then(crate::properties::decode_i64)
    }

    /// Puts `value` in the stream's filter state as `wasm.<name>` (Envoy),
    /// where Envoy's own access logs read it: set in `on_log`, it is there
    /// for the connection manager's access logs, which run after the
    /// filters' (`%FILTER_STATE(wasm.<name>:PLAIN)%`). One host call that
    /// returns nothing. Errors: the host's status (e.g. a read-only name);
    /// the caller counts or logs it.
    pub fn set_filter_state(&self, name: &str, value: &[u8]) -> Result<(), host::HostError> {
        host::set_property(&[name], value)
    }

    /// Host wall-clock time (ns since the epoch), read once per phase.
    pub fn now_nanos(&mut self) -> u64 {
        if let Some(now) = self.now {
            return now;
        }
        let now = host::now_nanos();
        self.now = Some(now);
        if self.phase == Phase::RequestHeaders && self.request_clock.is_none() {
            self.request_clock = Some(now);
        }
        now
    }

    /// The clock as a stage read it while the request headers were
    /// handled, if one did (ns since the epoch). Within microseconds of
    /// Envoy's `request.time` for a request whose headers arrive at once.
    pub fn request_phase_clock(&self) -> Option<u64> {
        self.request_clock
    }

    /// Whether the request ended with its headers (`end_of_stream` of the
    /// request-headers callback): it has no body, so `request.size` is 0.
    pub fn request_ended_with_headers(&self) -> bool {
        self.request_ended
    }

    /// The client's address as Envoy determined it (`source.address`
    /// without the port, an IPv6 zone kept: the text Envoy's own access log
    /// prints), memoised. Envoy's `use_remote_address` and
    /// `xff_num_trusted_hops` decide it; see [`crate::client_addr`].
    pub fn client_address(&mut self) -> Option<String> {
        self.property(&["source", "address"])
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(crate::client_addr::host_of)
            .map(str::to_string)
    }

    /// This stage's per-request state (created on first use).
    pub fn state<T: Default + 'static>(&mut self) -> &mut T {
        let i = self.current;
        if self.state.len() <= i {
            self.state.resize_with(i + 1, || None);
        }
        // invariant: resized above to hold index `i`.
        let slot = &mut self.state[i];
        if !slot.as_ref().is_some_and(|b| b.is::<T>()) {
            *slot = Some(Box::new(T::default()));
        }
        match slot.as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(t) => t,
            // invariant: the slot was just filled with a `T`.
            None => unreachable_state(),
        }
    }

    /// This stage's per-request state if it has any.
    pub fn state_ref<T: 'static>(&self) -> Option<&T> {
        self.state.get(self.current)?.as_ref()?.downcast_ref::<T>()
    }

    /// Ends the request with a local reply; return the result from the
    /// phase method (`return ex.reply(...)`).
    pub fn reply(
        &mut self,
        status: u16,
        details: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> Flow {
        self.reply = Some(LocalReply {
            status,
            details: details.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        });
        Flow::Stop
    }

    /// Whether a local reply was sent for this stream (by any stage).
    pub fn replied(&self) -> bool {
        self.replied
    }

    /// Sends a unary gRPC call; `done` runs with the answer and its flow
    /// continues the phase. Return [`Flow::Pause`] after a successful send.
    #[allow(clippy::too_many_arguments)]
    pub fn grpc_call<Req, Resp>(
        &mut self,
        phase: Phase,
        cluster: &str,
        service: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
        done: impl FnOnce(&mut Exchange, Result<Resp, CalloutError>) -> Flow + 'static,
    ) -> Result<(), CalloutError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let token = send_grpc(cluster, service, method, request, timeout)?;
        let decode =
            move |ex: &mut Exchange, r: Result<Vec<u8>, CalloutError>| done(ex, decode_grpc(r));
        self.pending
            .push((token, self.current, phase, Pending::Grpc(Box::new(decode))));
        Ok(())
    }

    /// Sends an HTTP call; like [`Exchange::grpc_call`].
    pub fn http_call(
        &mut self,
        phase: Phase,
        req: HttpRequest,
        done: impl FnOnce(&mut Exchange, Result<HttpResponse, CalloutError>) -> Flow + 'static,
    ) -> Result<(), CalloutError> {
        let token = send_http(&req)?;
        self.pending
            .push((token, self.current, phase, Pending::Http(Box::new(done))));
        Ok(())
    }

    pub(crate) fn begin_phase(&mut self, phase: Phase) {
        self.now = None;
        self.phase = phase;
    }

    pub(crate) fn set_request_ended(&mut self, ended: bool) {
        self.request_ended = ended;
    }

    pub(crate) fn set_current(&mut self, stage: usize) {
        self.current = stage;
    }

    pub(crate) fn take_reply(&mut self) -> Option<LocalReply> {
        self.reply.take()
    }

    pub(crate) fn mark_replied(&mut self) {
        self.replied = true;
    }

    /// Runs the pending callout `token` with its answer; returns the stage
    /// and phase it belongs to and the stage's flow.
    pub(crate) fn answer_grpc(
        &mut self,
        token: u32,
        status_code: u32,
        size: usize,
    ) -> Option<(usize, Phase, Flow)> {
        let i = self.pending.iter().position(|(t, ..)| *t == token)?;
        let (_, stage, phase, pending) = self.pending.swap_remove(i);
        let Pending::Grpc(done) = pending else {
            return None;
        };
        let result = read_grpc_answer(status_code, size);
        self.current = stage;
        self.begin_phase(phase);
        Some((stage, phase, done(self, result)))
    }

    /// Like [`Exchange::answer_grpc`] for an HTTP call.
    pub(crate) fn answer_http(
        &mut self,
        token: u32,
        body_size: usize,
    ) -> Option<(usize, Phase, Flow)> {
        let i = self.pending.iter().position(|(t, ..)| *t == token)?;
        let (_, stage, phase, pending) = self.pending.swap_remove(i);
        let Pending::Http(done) = pending else {
            return None;
        };
        let result = read_http_answer(body_size);
        self.current = stage;
        self.begin_phase(phase);
        Some((stage, phase, done(self, result)))
    }
}

#[cold]
fn unreachable_state() -> ! {
    // invariant: `state` fills the slot with a `T` right before reading it.
    std::process::abort()
}
