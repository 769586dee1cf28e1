//! Per-VM state (one VM per worker thread), the thread-locals that let host
//! functions find it, and the panic hook that turns a filter panic into a
//! failed call instead of an abort.
//!
//! Why a hook: the dispatcher's `proxy_on_*` exports are `extern "C"`, so a
//! panic in filter code cannot unwind out of them (Rust aborts). In Envoy
//! such a panic traps the VM. Here the hook reports the message to the
//! waiting test, and the abort that follows is trapped on that worker thread,
//! which then blocks for good: that VM never runs again, the process lives.

use crate::host::{Host, lock};
use crate::types::{LogLevel, Status};
use crate::wire::HeaderMap;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::panic::{self, PanicHookInfo};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;

/// Work posted to a worker by another thread (or by itself), run after the
/// worker's current call returns, like Envoy's dispatcher posts.
pub(crate) enum Task {
    QueueReady { context_id: u32, queue_id: u32 },
}

pub(crate) type Mailbox = Arc<Mutex<VecDeque<Task>>>;

/// What a local reply looked like when the filter sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u32,
    /// Response code details (empty when the filter gave none).
    pub details: String,
    /// Body.
    pub body: Vec<u8>,
    /// Additional headers the filter asked for (names lower-cased).
    pub headers: Vec<(String, Vec<u8>)>,
    /// gRPC status, when the filter sent one (proxy-wasm passes -1 for none).
    pub grpc_status: Option<i32>,
}

impl LocalResponse {
    /// First value of an additional header, lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        first(&self.headers, name)
    }

    /// The body, lossily decoded.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn first(map: &HeaderMap, name: &str) -> Option<String> {
    let name = crate::wire::lower(name);
    map.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Which of a stream's header maps Envoy currently exposes to the VM. Envoy
/// drops its pointer to a map once the filter returns `Continue` for it (and
/// to the request maps on `continue_stream`), so later access fails.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) request_headers: bool,
    pub(crate) request_trailers: bool,
    pub(crate) response_headers: bool,
    pub(crate) response_trailers: bool,
}

#[derive(Default)]
pub(crate) struct StreamState {
    pub(crate) alive: bool,
    /// The maps as last seen (kept for tests and for the access-log phase).
    pub(crate) request_headers: Option<HeaderMap>,
    pub(crate) request_trailers: Option<HeaderMap>,
    pub(crate) response_headers: Option<HeaderMap>,
    pub(crate) response_trailers: Option<HeaderMap>,
    pub(crate) live: Live,
    pub(crate) access_log_phase: bool,
    /// Body buffers the VM can see (None when Envoy has none for the filter).
    pub(crate) request_body: Option<Vec<u8>>,
    pub(crate) response_body: Option<Vec<u8>>,
    pub(crate) request_buffering: bool,
    pub(crate) response_buffering: bool,
    /// Body bytes that went past the filter (upstream / to the client).
    pub(crate) request_body_sent: Vec<u8>,
    pub(crate) response_body_sent: Vec<u8>,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) local_response: Option<LocalResponse>,
    /// A local reply waiting to be encoded through this filter (Envoy sends
    /// it after the VM call returns, through the encoder filter chain).
    pub(crate) pending_local_reply: bool,
    pub(crate) route_cache_clears: u32,
    pub(crate) request_resumes: u32,
    pub(crate) response_resumes: u32,
    pub(crate) reset: bool,
    pub(crate) done_calls: u32,
    /// Every crossing between host and VM made for this stream, in order.
    pub(crate) crossings: Vec<Crossing>,
}

/// One crossing between Envoy and the VM: each costs roughly 0.1–0.9 µs of
/// Envoy CPU (`BENCHMARKS.md`, "What a crossing costs").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// A callback Envoy makes into the VM (`proxy_on_request_headers`, ...).
    Callback(&'static str),
    /// A host call the module makes (`proxy_get_header_map_pairs`, ...).
    HostCall(&'static str),
    /// The host allocating VM memory to hand back a value
    /// (`proxy_on_memory_allocate`).
    Allocation,
}

pub(crate) struct CallResponse {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) trailers: HeaderMap,
}

pub(crate) struct VmState {
    pub(crate) root_context_id: u32,
    next_context_id: u32,
    /// Context host calls act on: the one being called, or the one the
    /// filter chose with `proxy_set_effective_context`.
    pub(crate) effective: u32,
    /// True only during `on_configure`: Envoy exposes the plugin
    /// configuration only then.
    pub(crate) configuring: bool,
    pub(crate) tick_period: Option<Duration>,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) http_response: Option<CallResponse>,
    pub(crate) grpc_receive: Option<Vec<u8>>,
    pub(crate) grpc_initial_metadata: Option<HeaderMap>,
    pub(crate) grpc_trailing_metadata: Option<HeaderMap>,
    /// What `proxy_get_status` returns (set while delivering a failure).
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) root_done_calls: u32,
    /// CEL expressions from `expr_create`, by token: per element, the
    /// property key and whether absence reads as `null` (`has()`).
    pub(crate) expressions: Vec<Vec<(Vec<u8>, bool)>>,
}

impl VmState {
    pub(crate) fn new(root_context_id: u32) -> Self {
        VmState {
            root_context_id,
            next_context_id: root_context_id + 1,
            effective: root_context_id,
            configuring: false,
            tick_period: None,
            properties: HashMap::new(),
            streams: HashMap::new(),
            expressions: Vec::new(),
            http_response: None,
            grpc_receive: None,
            grpc_initial_metadata: None,
            grpc_trailing_metadata: None,
            status: (0, Vec::new()),
            root_done_calls: 0,
        }
    }

    pub(crate) fn new_stream(&mut self) -> u32 {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.streams.insert(
            id,
            StreamState {
                alive: true,
                ..StreamState::default()
            },
        );
        id
    }

    /// The stream behind the effective context, if it is a live stream.
    pub(crate) fn effective_stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective).filter(|s| s.alive)
    }

    pub(crate) fn is_known_context(&self, id: u32) -> bool {
        id == self.root_context_id || self.streams.get(&id).is_some_and(|s| s.alive)
    }

    /// A map for reading. `Ok(None)`: not available in this context now.
    pub(crate) fn read_map(&mut self, map_type: u32) -> Result<Option<&HeaderMap>, Status> {
        match map_type {
            0..=3 => {
                let Some(stream) = self.streams.get(&self.effective).filter(|s| s.alive) else {
                    return Ok(None);
                };
                let (map, live) = match map_type {
                    0 => (&stream.request_headers, stream.live.request_headers),
                    // Envoy has no request trailers in the access-log phase.
                    1 => (
                        &stream.request_trailers,
                        stream.live.request_trailers && !stream.access_log_phase,
                    ),
                    2 => (&stream.response_headers, stream.live.response_headers),
                    _ => (&stream.response_trailers, stream.live.response_trailers),
                };
                let visible = live || (stream.access_log_phase && map_type != 1);
                Ok(map.as_ref().filter(|_| visible))
            }
            4 => Ok(self.grpc_initial_metadata.as_ref()),
            5 => Ok(self.grpc_trailing_metadata.as_ref()),
            6 => Ok(self.http_response.as_ref().map(|r| &r.headers)),
            7 => Ok(self.http_response.as_ref().map(|r| &r.trailers)),
            _ => Err(Status::BadArgument),
        }
    }

    /// A map for writing: only a live request/response map of a stream.
    pub(crate) fn write_map(&mut self, map_type: u32) -> Option<&mut HeaderMap> {
        let stream = self.effective_stream()?;
        let (map, live) = match map_type {
            0 => (&mut stream.request_headers, stream.live.request_headers),
            1 => (&mut stream.request_trailers, stream.live.request_trailers),
            2 => (&mut stream.response_headers, stream.live.response_headers),
            3 => (&mut stream.response_trailers, stream.live.response_trailers),
            _ => return None,
        };
        map.as_mut().filter(|_| live)
    }
}

/// Everything a host function needs; one per worker thread.
#[derive(Clone)]
pub(crate) struct VmHandle {
    pub(crate) host: Host,
    pub(crate) worker: usize,
    pub(crate) state: Arc<Mutex<VmState>>,
    pub(crate) mailbox: Mailbox,
    pub(crate) crash: Arc<Mutex<Option<String>>>,
}

impl VmHandle {
    pub(crate) fn state(&self) -> MutexGuard<'_, VmState> {
        lock(&self.state)
    }

    /// Records a failure for tests to inspect and returns its status.
    pub(crate) fn fail(&self, call: &'static str, status: Status, detail: String) -> Status {
        self.host
            .record_failure(Some(self.worker), call, status, detail);
        status
    }
}

/// Hands a filter panic's message to the caller waiting for the current call.
pub(crate) type CrashReport = Box<dyn FnOnce(String)>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Frame {
    /// Emulator or test code: panics unwind normally.
    Outside,
    /// Inside a `proxy_on_*` export: a panic here cannot unwind.
    Vm,
    /// Inside a host function: panics are caught and become a status.
    Host,
}

thread_local! {
    // Const-initialised and without destructors, so these stay usable while
    // other thread-locals are torn down.
    static FRAME: Cell<Frame> = const { Cell::new(Frame::Outside) };
    static CURRENT: OnceCell<VmHandle> = const { OnceCell::new() };
    static CRASH_REPORT: RefCell<Option<CrashReport>> = const { RefCell::new(None) };
    /// Set once the filter panicked on this thread: its VM is dead.
    static DYING: Cell<bool> = const { Cell::new(false) };
}

/// Restores the previous frame when dropped (also while unwinding).
pub(crate) struct FrameGuard(Frame);

impl Drop for FrameGuard {
    fn drop(&mut self) {
        let _ = FRAME.try_with(|f| f.set(self.0));
    }
}

pub(crate) fn enter(frame: Frame) -> FrameGuard {
    FrameGuard(
        FRAME
            .try_with(|f| f.replace(frame))
            .unwrap_or(Frame::Outside),
    )
}

/// Makes this thread a worker. Called before `_initialize` so this
/// thread-local is destroyed after proxy-wasm's dispatcher (destructors run
/// in reverse order), letting filter `Drop`s still call the host.
pub(crate) fn install(handle: VmHandle) {
    let _ = CURRENT.try_with(|c| c.set(handle));
}

/// The VM of the calling thread, if it is a worker.
pub(crate) fn current() -> Option<VmHandle> {
    CURRENT.try_with(|c| c.get().cloned()).ok().flatten()
}

/// Where the panic hook sends a filter panic's message during a call.
pub(crate) fn set_crash_report(report: CrashReport) {
    let _ = CRASH_REPORT.try_with(|r| {
        if let Ok(mut slot) = r.try_borrow_mut() {
            *slot = Some(report);
        }
    });
}

pub(crate) fn clear_crash_report() {
    let _ = CRASH_REPORT.try_with(|r| {
        if let Ok(mut slot) = r.try_borrow_mut() {
            slot.take();
        }
    });
}

impl VmState {
    /// Records a crossing against `context` (when it is a stream).
    pub(crate) fn count(&mut self, context: u32, crossing: Crossing) {
        if let Some(s) = self.streams.get_mut(&context) {
            s.crossings.push(crossing);
        }
    }
}

thread_local! {
    /// Set by a module's native stub for a callback its wasm build does not
    /// export (see [`switchyard_emulator_unexported_callback`]).
    static UNEXPORTED: Cell<bool> = const { Cell::new(false) };
}

thread_local! {
    /// The module's "hand your buffered counters to the host" function, if
    /// it registered one ([`switchyard_emulator_register_flush`]).
    pub(crate) static FLUSH: Cell<Option<extern "C" fn()>> = const { Cell::new(None) };
}

/// Called by a module that sums counters in the VM (the Switchyard SDK):
/// the emulator runs `flush` on each worker before a test reads a metric,
/// as if a tick had just happened.
#[unsafe(no_mangle)]
pub extern "C" fn switchyard_emulator_register_flush(flush: extern "C" fn()) {
    FLUSH.with(|f| f.set(Some(flush)));
}

/// Called by a module's native stub of a callback that its wasm build does
/// not export: Envoy would not make that call, so it is not counted.
#[unsafe(no_mangle)]
pub extern "C" fn switchyard_emulator_unexported_callback() {
    UNEXPORTED.with(|u| u.set(true));
}

/// Calls the module's callback `name` for `context`, counting the crossing
/// (unless the module says Envoy would not call it).
pub(crate) fn callback<R>(
    vm: &VmHandle,
    context: u32,
    name: &'static str,
    f: impl FnOnce() -> R,
) -> R {
    UNEXPORTED.with(|u| u.set(false));
    let before = vm.state().streams.get(&context).map(|s| s.crossings.len());
    let r = vm_call(f);
    if !UNEXPORTED.with(|u| u.replace(false)) {
        let mut state = vm.state();
        if let (Some(s), Some(at)) = (state.streams.get_mut(&context), before) {
            // The callback comes before the host calls it made.
            let at = at.min(s.crossings.len());
            s.crossings.insert(at, Crossing::Callback(name));
        }
    }
    r
}

/// Calls into the module: marks the frame so the hook knows a panic here is
/// fatal to the VM.
pub(crate) fn vm_call<R>(f: impl FnOnce() -> R) -> R {
    let _frame = enter(Frame::Vm);
    f()
}

static HOOK: Once = Once::new();

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The hook that was in place before the emulator's (std's default).
static DEFAULT_HOOK: OnceLock<PanicHook> = OnceLock::new();

static REASSERTED: Once = Once::new();

/// Installs the process-wide panic hook and the SIGABRT trap, once.
pub(crate) fn install_panic_hook() {
    HOOK.call_once(|| {
        DEFAULT_HOOK.get_or_init(panic::take_hook);
        abort_trap::install();
        panic::set_hook(Box::new(emulator_hook));
    });
}

/// Called after a module's `_initialize`: the first module to run may have
/// installed its own panic hook (proxy-wasm does, once per process, on its
/// first `set_log_level`), which would hide filter panics from the emulator.
/// Later modules cannot (that install happens once), so this runs once:
/// replacing the hook while a dead VM's thread is parked could block.
pub(crate) fn reassert_panic_hook() {
    REASSERTED.call_once(|| panic::set_hook(Box::new(emulator_hook)));
}

fn default_hook(info: &PanicHookInfo<'_>) {
    if let Some(d) = DEFAULT_HOOK.get() {
        d(info);
    }
}

fn emulator_hook(info: &PanicHookInfo<'_>) {
    if FRAME.try_with(Cell::get) != Ok(Frame::Vm) {
        default_hook(info);
        return;
    }
    let first = !DYING.try_with(|d| d.replace(true)).unwrap_or(true);
    if first {
        vm_panicked(info);
        default_hook(info);
    }
    // Otherwise this is the second, non-unwinding panic ("panic in a
    // function that cannot unwind") that precedes the abort we trap.
    // libtest's hook would lock stdout and stderr for good before that
    // abort, so it is skipped.
}

/// Records the crash and tells the waiting caller. Runs in the hook, before
/// unwinding starts.
fn vm_panicked(info: &PanicHookInfo<'_>) {
    let message = match info.location() {
        Some(at) => format!("{} (at {at})", payload(info)),
        None => payload(info).to_string(),
    };
    if let Some(vm) = current() {
        // What proxy-wasm's own hook would have logged.
        vm.host
            .log(Some(vm.worker), LogLevel::Critical, info.to_string());
        *lock(&vm.crash) = Some(message.clone());
    }
    let report = CRASH_REPORT
        .try_with(|r| r.try_borrow_mut().ok().and_then(|mut s| s.take()))
        .ok()
        .flatten();
    if let Some(report) = report {
        report(message);
    }
}

fn payload<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    info.payload_as_str().unwrap_or("non-string panic payload")
}

/// Stops the abort that follows a filter panic from killing the process.
///
/// Unwinding out of the dispatcher's `extern "C"` exports makes Rust print
/// "thread caused non-unwinding panic. aborting." and call `abort()`, which
/// raises SIGABRT on that thread. The handler blocks that (dying) worker
/// thread forever, which is what a trapped VM is: it never runs again. The
/// panic hook has returned by then, so no lock of std's is held. Any other
/// thread's abort goes ahead as usual (the handler returns and `abort()`
/// terminates the process).
#[cfg(unix)]
mod abort_trap {
    use super::DYING;
    use std::cell::Cell;
    use std::ffi::c_int;

    const SIGABRT: c_int = 6;

    unsafe extern "C" {
        fn signal(signum: c_int, handler: usize) -> usize;
        fn pause() -> c_int;
    }

    extern "C" fn on_abort(_signal: c_int) {
        // A const thread-local without destructor: a plain TLS read,
        // async-signal-safe in practice.
        if DYING.try_with(Cell::get).unwrap_or(false) {
            loop {
                // SAFETY: pause() only waits for a signal.
                unsafe { pause() };
            }
        }
    }

    pub(super) fn install() {
        let handler: extern "C" fn(c_int) = on_abort;
        // SAFETY: installs a handler that is async-signal-safe (see above).
        unsafe { signal(SIGABRT, handler as usize) };
    }
}

#[cfg(not(unix))]
mod abort_trap {
    /// Elsewhere a filter panic aborts the test process.
    pub(super) fn install() {}
}
