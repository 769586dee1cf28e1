//! The SDK-owned contexts: one root per plugin, one stream per request,
//! running the module's stages in order ([`crate::dispatch`] maps Envoy's
//! callbacks to them).
//!
//! A module is one stage built alone ([`install_single`]: the plugin
//! configuration is that stage's configuration) or a chain
//! ([`install_chain`]: `{"stages": [{"domain_router": {...}}, {"rate_limit":
//! {...}}]}`, the stages run in the listed order). Either way a request
//! costs one set of Envoy callbacks, each header map is read once per phase,
//! and the stages share one [`Exchange`].
//!
//! Without a valid configuration Envoy refuses the plugin; should a stream
//! still be created (a host that ignores the refusal), it is inert: it lets
//! the request through untouched, never panics.

use crate::callout::Callouts;
use crate::config::{ConfigError, Source};
use crate::host::{self, BufferType, MapType};
use crate::stage::{
    DECISION_HEADERS, Exchange, Flow, Phase, Phases, RootServices, Setup, Stage, StageSpec,
};
use std::rc::Rc;
use std::time::Duration;

/// What a stream callback tells Envoy (the ABI's `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Action {
    Continue = 0,
    Pause = 1,
}

/// Stages in order, each with its filter name (for logs).
type Stages = Vec<(&'static str, Box<dyn Stage>)>;

/// The stages of one plugin, in order, with the filter names for logs.
struct Pipeline {
    stages: Stages,
    root: RootServices,
}

enum Layout {
    Single(StageSpec),
    Chain(&'static [StageSpec]),
}

/// The phases whose callbacks a module with `layout` exports (`module!`
/// checks its `callbacks` against this at compile time); only the request
/// headers without stages.
fn exported_phases(layout: Option<&Layout>) -> Phases {
    match layout {
        Some(Layout::Single(spec)) => spec.phases,
        Some(Layout::Chain(specs)) => Phases::union(specs),
        None => Phases::REQUEST,
    }
}

/// Installs the root of a module that runs `spec` alone. Call it from the
/// module's `_initialize` (see [`crate::module!`]).
pub fn install_single(spec: StageSpec) {
    install(Layout::Single(spec));
}

/// Installs the root of a chain module whose configuration picks stages
/// from `specs` by name.
pub fn install_chain(specs: &'static [StageSpec]) {
    install(Layout::Chain(specs));
}

thread_local! {
    /// What `install` chose; one per VM (a VM is one thread).
    static LAYOUT: std::cell::RefCell<Option<Rc<Layout>>> = const { std::cell::RefCell::new(None) };
}

/// The phases the installed stages take part in (natively: which
/// callbacks the wasm build of this module would export).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn installed_phases() -> Phases {
    LAYOUT.with(|l| exported_phases(l.borrow().as_deref()))
}

fn install(layout: Layout) {
    LAYOUT.with(|l| *l.borrow_mut() = Some(Rc::new(layout)));
    #[cfg(not(target_arch = "wasm32"))]
    emulator::register_flush();
}

/// Natively, lets `switchyard-emulator` flush the VM's counters before a
/// test reads a metric (on wasm a tick does it).
#[cfg(not(target_arch = "wasm32"))]
mod emulator {
    unsafe extern "C" {
        fn switchyard_emulator_register_flush(flush: extern "C" fn());
    }

    extern "C" fn flush() {
        crate::metrics::flush();
    }

    pub(super) fn register_flush() {
        // SAFETY: hands over a plain function pointer.
        unsafe { switchyard_emulator_register_flush(flush) }
    }
}

/// Defines a module's entry point and its response-side callbacks, for one
/// stage or a chain:
///
/// ```ignore
/// switchyard_sdk::module!(single: my_filter::SPEC, callbacks: [response_headers]);
/// switchyard_sdk::module!(chain: STAGES, callbacks: [response_headers, response_trailers, log]);
/// ```
///
/// `callbacks` lists, of `response_headers`, `response_trailers` and `log`,
/// exactly the phases the stages take part in ([`StageSpec::phases`]); the
/// build fails otherwise. Envoy calls a module back only for what it exports,
/// and each callback costs ~2 400 instructions per request even when no stage
/// acts (`BENCHMARKS.md`). Context creation, request headers, deletion,
/// ticks and callout answers are always exported.
#[macro_export]
macro_rules! module {
    (single: $spec:expr, callbacks: [$($cb:ident),* $(,)?]) => {
        $crate::module!(@check &[$spec], [$($cb),*]);
        $crate::module!(@init $crate::module::install_single($spec));
        $($crate::module!(@export $cb);)*
    };
    (chain: $specs:expr, callbacks: [$($cb:ident),* $(,)?]) => {
        $crate::module!(@check $specs, [$($cb),*]);
        $crate::module!(@init $crate::module::install_chain($specs));
        $($crate::module!(@export $cb);)*
    };
    (@check $specs:expr, [$($cb:ident),*]) => {
        const _: () = assert!(
            $crate::stage::Phases::union($specs).same_after_request(
                $crate::stage::Phases::of(&[$($crate::module!(@phase $cb)),*])
            ),
            "module!: `callbacks` must list exactly the response-side phases \
             (response_headers, response_trailers, log) in the stages' `StageSpec::phases`"
        );
    };
    (@phase response_headers) => { $crate::stage::Phase::ResponseHeaders };
    (@phase response_trailers) => { $crate::stage::Phase::ResponseTrailers };
    (@phase log) => { $crate::stage::Phase::Log };
    (@export response_headers) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_response_headers(context: u32, headers: usize, eos: bool) -> u32 {
            $crate::dispatch::proxy_on_response_headers(context, headers, eos)
        }
    };
    (@export response_trailers) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_response_trailers(context: u32, trailers: usize) -> u32 {
            $crate::dispatch::proxy_on_response_trailers(context, trailers)
        }
    };
    (@export log) => {
        #[cfg(target_arch = "wasm32")]
        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_log(context: u32) {
            $crate::dispatch::proxy_on_log(context)
        }
    };
    (@init $install:expr) => {
        #[cfg(target_os = "wasi")]
        unsafe extern "C" {
            fn __wasm_call_ctors();
        }

        /// The module's entry point (WASI reactor): installs the stages.
        #[unsafe(no_mangle)]
        pub extern "C" fn _initialize() {
            #[cfg(target_os = "wasi")]
            // SAFETY: the linker-generated constructor runner, called once
            // before anything else, as a WASI reactor must.
            unsafe {
                __wasm_call_ctors();
            }
            $install;
        }
    };
}

/// The root context of one plugin: its configuration and stages.
pub(crate) struct ModuleRoot {
    layout: Option<Rc<Layout>>,
    /// [`exported_phases`] of `layout`, for every stream's [`Exchange`].
    phases: Phases,
    pipeline: Option<Rc<Pipeline>>,
    /// Per stage: when its next `on_tick` is due (host clock, ns).
    next_tick_ns: Vec<u64>,
}

fn setup_for(src: Source<'_>, in_chain: bool) -> Setup {
    Setup {
        in_chain,
        plugin_name: crate::properties::plugin_name().unwrap_or_default(),
        config_hash: src.fnv1a64(),
        instance_id: crate::vm::instance_id(),
        vm_id: crate::properties::plugin_vm_id().unwrap_or_default(),
    }
}

/// The chain configuration: a list of one-key objects. Each stage's
/// configuration stays raw JSON text until its own parser reads it: a
/// `Value` tree of a 100 000-domain table would cost several times the
/// text, in every VM.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChainConfig {
    stages: Vec<std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>>,
}

impl crate::config::Validate for ChainConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        crate::config::ensure(
            !self.stages.is_empty(),
            "stages",
            "must list at least one stage",
        )
    }
}

fn build_chain(specs: &[StageSpec], src: Source<'_>) -> Result<Stages, ConfigError> {
    let chain: ChainConfig = crate::config::parse(src)?;
    let mut stages = Vec::new();
    for (i, entry) in chain.stages.iter().enumerate() {
        let at = format!("stages[{i}]");
        let mut it = entry.iter();
        let (Some((name, value)), None) = (it.next(), it.next()) else {
            return Err(ConfigError::new(
                at,
                "must be an object with exactly one key, the stage name",
            ));
        };
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(ConfigError::new(
                at,
                format!("unknown stage `{name}`, expected one of {known:?}"),
            ));
        };
        // One of each: two instances of a stage would share its metrics and
        // shared-data keys in this VM. invariant: `i` comes from enumerating
        // `chain.stages`, so `..i` is in bounds.
        if let Some(j) = chain.stages[..i].iter().position(|e| e.contains_key(name)) {
            return Err(ConfigError::new(
                at,
                format!("`{name}` already appears in stages[{j}]; list each stage once"),
            ));
        }
        let src = Source::Bytes(value.get().as_bytes());
        let stage = (spec.build)(src, &setup_for(src, true))
            .map_err(|e| e.within(&format!("{at}.{name}")))?;
        stages.push((spec.filter, stage));
    }
    Ok(stages)
}

impl ModuleRoot {
    pub(crate) fn new() -> Self {
        let layout = LAYOUT.with(|l| l.borrow().clone());
        ModuleRoot {
            phases: exported_phases(layout.as_deref()),
            layout,
            pipeline: None,
            next_tick_ns: Vec::new(),
        }
    }

    pub(crate) fn on_http_call_response(&self, token: u32, body_size: usize) {
        if let Some(p) = &self.pipeline {
            p.root.callouts.on_http_response(token, body_size);
        }
    }

    pub(crate) fn on_grpc_call_response(&self, token: u32, status_code: u32, size: usize) {
        if let Some(p) = &self.pipeline {
            p.root.callouts.on_grpc_response(token, status_code, size);
        }
    }

    pub(crate) fn on_shutdown(&self) {
        crate::metrics::flush();
        if let Some(p) = &self.pipeline {
            for (_, s) in &p.stages {
                s.on_shutdown(&p.root);
            }
        }
    }

    /// `config_size`: the plugin configuration's length in bytes, as Envoy
    /// passes it to `proxy_on_configure`.
    pub(crate) fn on_configure(&mut self, config_size: usize) -> bool {
        if let Some(name) = crate::properties::plugin_name() {
            crate::logging::set_plugin_name(&name);
        }
        // Read in chunks as it is parsed: a large table is never in VM
        // memory whole next to what is built from it.
        let len = config_size;
        let read = |at: usize, max: usize| {
            host::buffer(BufferType::PluginConfiguration, at, max)
                .unwrap_or_else(|e| {
                    log::error!("cannot read the plugin configuration: {e}");
                    None
                })
                .unwrap_or_default()
        };
        let src = Source::Chunked { len, read: &read };
        let Some(layout) = self.layout.clone() else {
            log::error!("no stages installed in this module");
            return false;
        };
        let (what, built) = match &*layout {
            Layout::Single(spec) => (
                spec.filter,
                (spec.build)(src, &setup_for(src, false)).map(|s| vec![(spec.filter, s)]),
            ),
            Layout::Chain(specs) => ("switchyard", build_chain(specs, src)),
        };
        let stages = match built {
            Ok(s) => s,
            Err(e) => {
                // Envoy keeps the old plugin (and its VM state) when a new
                // configuration is refused.
                log::error!("{what}: invalid configuration: {e}");
                return false;
            }
        };
        // The root ticks at the fastest stage's period, and at least every
        // counter flush period; each stage's own period is kept below.
        let tick = stages
            .iter()
            .filter_map(|(_, s)| s.tick_period())
            .chain([crate::metrics::FLUSH_PERIOD])
            .min()
            .unwrap_or(crate::metrics::FLUSH_PERIOD);
        if let Err(e) = host::set_tick_period(tick.max(Duration::from_millis(1))) {
            log::error!("{what}: cannot set the tick period: {e}");
            return false;
        }
        self.next_tick_ns = vec![0; stages.len()];
        self.pipeline = Some(Rc::new(Pipeline {
            stages,
            root: RootServices {
                callouts: Callouts::new(),
            },
        }));
        true
    }

    pub(crate) fn on_tick(&mut self) {
        crate::metrics::flush();
        let Some(p) = &self.pipeline else { return };
        let now = host::now_nanos();
        for ((_, s), next) in p.stages.iter().zip(self.next_tick_ns.iter_mut()) {
            let Some(period) = s.tick_period() else {
                continue;
            };
            if now < *next {
                continue;
            }
            // A tick a little early counts: ticks are not exact.
            let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
            *next = now.saturating_add(period_ns - period_ns / 10);
            s.on_tick(&p.root);
        }
        crate::metrics::flush();
    }

    pub(crate) fn on_queue_ready(&self, queue_id: u32) {
        if let Some(p) = &self.pipeline {
            for (_, s) in &p.stages {
                s.on_queue_ready(&p.root, queue_id);
            }
        }
    }

    /// A new stream; inert (passes everything through) without a valid
    /// configuration.
    pub(crate) fn new_stream(&self) -> ModuleStream {
        ModuleStream {
            exchange: match &self.pipeline {
                Some(p) => Exchange::new(p.stages.len(), self.phases),
                None => Exchange::new(0, self.phases),
            },
            pipeline: self.pipeline.clone(),
        }
    }
}

/// One HTTP stream: the stages' shared [`Exchange`].
pub(crate) struct ModuleStream {
    pipeline: Option<Rc<Pipeline>>,
    exchange: Exchange,
}

fn map_of(phase: Phase) -> Option<MapType> {
    match phase {
        Phase::RequestHeaders => Some(MapType::HttpRequestHeaders),
        Phase::ResponseHeaders => Some(MapType::HttpResponseHeaders),
        Phase::ResponseTrailers => Some(MapType::HttpResponseTrailers),
        Phase::Log => None,
    }
}

impl ModuleStream {
    /// Runs `phase` from stage `from` on; what Envoy should do next.
    fn run(&mut self, phase: Phase, from: usize) -> Action {
        let Some(p) = self.pipeline.clone() else {
            return Action::Continue;
        };
        let ex = &mut self.exchange;
        let mut action = Action::Continue;
        for (i, (_, stage)) in p.stages.iter().enumerate().skip(from) {
            ex.set_current(i);
            let flow = match phase {
                Phase::RequestHeaders => stage.on_request_headers(ex),
                Phase::ResponseHeaders => stage.on_response_headers(ex),
                Phase::ResponseTrailers => stage.on_response_trailers(ex),
                Phase::Log => {
                    stage.on_log(ex);
                    Flow::Continue
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Pause => {
                    action = Action::Pause;
                    break;
                }
                Flow::Stop => {
                    action = Action::Pause;
                    break;
                }
            }
        }
        if phase == Phase::RequestHeaders && from == 0 {
            // Client copies of decision headers go with the phase's other
            // edits (after the stages: a stage that read the map makes the
            // check free).
            ex.strip_request_headers(&DECISION_HEADERS);
        }
        if let Some(kind) = map_of(phase) {
            ex.flush(kind);
        }
        if let Some(reply) = ex.take_reply() {
            ex.mark_replied();
            // Answered here: the request goes to no cluster or endpoint,
            // whatever an earlier stage picked.
            ex.decisions.cluster = None;
            ex.decisions.endpoint = None;
            let headers: Vec<(&str, &[u8])> = reply
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            if let Err(e) = host::send_local_response(
                u32::from(reply.status),
                &reply.details,
                &headers,
                &reply.body,
            ) {
                log::warn!("local reply {} not sent: {e}", reply.status);
            }
        }
        action
    }

    fn phase(&mut self, phase: Phase) -> Action {
        self.exchange.begin_phase(phase);
        self.run(phase, 0)
    }

    /// A callout answer arrived for stage `stage` in `phase`: the chain
    /// goes on after that stage, and Envoy resumes when it all continued.
    fn resumed(&mut self, answered: Option<(usize, Phase, Flow)>) {
        let Some((stage, phase, flow)) = answered else {
            return;
        };
        let action = match flow {
            Flow::Continue => self.run(phase, stage + 1),
            Flow::Pause => return,
            Flow::Stop => {
                // Send the reply the callback asked for (no further stages).
                let _ = self.run_reply_only(phase);
                return;
            }
        };
        if action == Action::Continue {
            let stream = match phase {
                Phase::RequestHeaders => host::StreamType::HttpRequest,
                _ => host::StreamType::HttpResponse,
            };
            if let Err(e) = host::resume(stream) {
                log::debug!("resume: {e}");
            }
        }
    }

    fn run_reply_only(&mut self, phase: Phase) -> Action {
        let n = self.pipeline.as_ref().map_or(0, |p| p.stages.len());
        // Running from past the last stage only flushes edits and sends the reply.
        self.run(phase, n)
    }
}

impl ModuleStream {
    pub(crate) fn on_grpc_call_response(&mut self, token: u32, status_code: u32, size: usize) {
        let answered = self.exchange.answer_grpc(token, status_code, size);
        self.resumed(answered);
    }

    pub(crate) fn on_http_call_response(&mut self, token: u32, body_size: usize) {
        let answered = self.exchange.answer_http(token, body_size);
        self.resumed(answered);
    }

    pub(crate) fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        self.exchange.set_request_ended(end_of_stream);
        self.phase(Phase::RequestHeaders)
    }

    pub(crate) fn on_response_headers(&mut self) -> Action {
        self.phase(Phase::ResponseHeaders)
    }

    pub(crate) fn on_response_trailers(&mut self) -> Action {
        self.phase(Phase::ResponseTrailers)
    }

    pub(crate) fn on_log(&mut self) {
        self.phase(Phase::Log);
    }
}

impl Drop for ModuleStream {
    fn drop(&mut self) {
        // Dropped on `proxy_on_delete`: every stream ends here.
        if let Some(p) = self.pipeline.clone() {
            for (i, (_, s)) in p.stages.iter().enumerate() {
                self.exchange.set_current(i);
                s.on_stream_end(&mut self.exchange);
            }
        }
    }
}
