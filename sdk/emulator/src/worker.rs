//! Workers (one OS thread = one VM, because proxy-wasm's dispatcher is
//! thread-local) and the HTTP streams that run on them.
//!
//! Every method that touches the VM sends a closure to the worker thread and
//! blocks until it is done, so a test reads like straight-line Envoy events.

use crate::host::{GrpcCall, Host, HttpCall, WorkerSlot, lock};
use crate::types::Action;
use crate::vm::{
    self, CallResponse, Crossing, LocalResponse, Mailbox, StreamState, Task, VmHandle, VmState,
    callback, vm_call,
};
use crate::wire::{self, HeaderMap};
use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

// The dispatcher's exports, defined `#[no_mangle]` by proxy-wasm itself.
unsafe extern "C" {
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_queue_ready(context_id: u32, queue_id: u32);
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32;
    fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> u32;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_grpc_receive_initial_metadata(context_id: u32, token_id: u32, headers: u32);
    fn proxy_on_grpc_receive(context_id: u32, token_id: u32, response_size: usize);
    fn proxy_on_grpc_receive_trailing_metadata(context_id: u32, token_id: u32, trailers: u32);
    fn proxy_on_grpc_close(context_id: u32, token_id: u32, status_code: u32);
    pub(crate) fn proxy_on_memory_allocate(size: usize) -> *mut u8;
}

/// Envoy numbers contexts per VM; the root context comes first.
const ROOT_CONTEXT_ID: u32 = 1;
/// Guards against a filter that keeps re-posting work to itself forever.
const MAX_FOLLOW_UPS: usize = 100_000;
/// `WasmResult::BrokenConnection`, what Envoy reports for a reset callout.
const BROKEN_CONNECTION: u32 = 11;

type Job = Box<dyn FnOnce() + Send>;

fn action(raw: u32) -> Action {
    if raw == 0 {
        Action::Continue
    } else {
        Action::Pause
    }
}

/// How the emulated upstream answers an HTTP callout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// A response; `:status` is added in front of `headers`.
    Response {
        /// HTTP status.
        status: u16,
        /// Response headers (names are lower-cased).
        headers: Vec<(String, String)>,
        /// Response body.
        body: Vec<u8>,
    },
    /// The callout's timeout fired. Envoy's async client answers this with a
    /// local `504` response, body `upstream request timeout`.
    Timeout,
    /// The upstream reset the stream: 0 headers, 0 body, and
    /// `proxy_get_status` returns (11 BrokenConnection, "reset").
    Reset,
}

impl CallOutcome {
    /// A response with a status, no extra headers and a body.
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Self {
        CallOutcome::Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A response with headers.
    pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        CallOutcome::Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }
}

/// How the emulated upstream answers a unary gRPC call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcOutcome {
    /// Success: `proxy_on_grpc_receive` with the message in the gRPC receive
    /// buffer (Envoy sends no close for a successful unary call).
    Message(Vec<u8>),
    /// Failure: `proxy_on_grpc_close` with `code`; `proxy_get_status`
    /// returns `(code, message)` during the callback.
    Status {
        /// gRPC status code (non-zero for a failure).
        code: u32,
        /// Status message.
        message: String,
    },
}

/// An event from the peer of a gRPC stream the filter opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcStreamEvent {
    /// Initial metadata, readable as map type 4 during the callback.
    InitialMetadata(Vec<(String, Vec<u8>)>),
    /// A message, readable in the gRPC receive buffer.
    Message(Vec<u8>),
    /// Trailing metadata, readable as map type 5 during the callback.
    TrailingMetadata(Vec<(String, Vec<u8>)>),
    /// The peer closed the stream with a status.
    Close {
        /// gRPC status code.
        code: u32,
        /// Status message.
        message: String,
    },
}

enum Reply<R> {
    Done(R),
    Panicked(Box<dyn Any + Send>),
    Crashed(String),
}

pub(crate) struct WorkerInner {
    index: usize,
    host: Host,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Arc<Mutex<VmState>>,
    crash: Arc<Mutex<Option<String>>>,
    started: OnceLock<(bool, bool)>,
}

impl WorkerInner {
    fn state(&self) -> MutexGuard<'_, VmState> {
        lock(&self.state)
    }

    /// Runs `f` on the worker thread, then whatever follow-up work it caused
    /// (local replies, queue notifications), and returns its result. A filter
    /// panic becomes a panic here, with the filter's message.
    #[track_caller]
    fn call<R: Send + 'static>(&self, f: impl FnOnce(&VmHandle) -> R + Send + 'static) -> R {
        if let Some(message) = lock(&self.crash).clone() {
            panic!(
                "worker {}: the filter panicked earlier, the VM is gone: {message}",
                self.index
            );
        }
        let (tx, rx) = mpsc::channel::<Reply<R>>();
        let report = tx.clone();
        let job: Job = Box::new(move || {
            vm::set_crash_report(Box::new(move |message| {
                let _ = report.send(Reply::Crashed(message));
            }));
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let vm = vm::current().expect("worker thread without a VM");
                let result = f(&vm);
                run_follow_ups(&vm);
                result
            }));
            vm::clear_crash_report();
            let _ = tx.send(match outcome {
                Ok(result) => Reply::Done(result),
                Err(payload) => Reply::Panicked(payload),
            });
        });
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            panic!("worker {} has shut down", self.index);
        }
        match rx.recv() {
            Ok(Reply::Done(result)) => result,
            Ok(Reply::Panicked(payload)) => resume_unwind(payload),
            Ok(Reply::Crashed(message)) => {
                panic!("filter panicked on worker {}: {message}", self.index)
            }
            Err(_) => panic!("worker {} thread ended without answering", self.index),
        }
    }
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop; its thread-locals
        // (the dispatcher and every context) are dropped on that thread.
        lock(&self.jobs).take();
        let crashed = lock(&self.crash).is_some();
        if let Some(thread) = lock(&self.thread).take() {
            // A crashed worker never ends; and a handle dropped on the
            // worker itself (moved into `run`) cannot wait for its own end.
            if !crashed && thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn worker_main(handle: VmHandle, jobs: mpsc::Receiver<Job>) {
    vm::install(handle);
    while let Ok(job) = jobs.recv() {
        job();
    }
}

impl Host {
    /// Runs every live worker's counter flush (modules that sum counters in
    /// the VM register one), so metric reads see what a tick would publish.
    pub(crate) fn flush_metrics(&self) {
        let workers: Vec<Arc<WorkerInner>> = self
            .state()
            .workers
            .iter()
            .filter_map(|w| w.handle.upgrade())
            .collect();
        for w in workers {
            if lock(&w.crash).is_some() {
                continue;
            }
            w.call(|_| {
                if let Some(flush) = vm::FLUSH.with(Cell::get) {
                    vm_call(|| flush());
                }
            });
        }
    }

    /// Starts one Envoy worker: a thread with its own VM that runs
    /// `_initialize`, creates the root context, then `proxy_on_vm_start` and
    /// (if that succeeded) `proxy_on_configure`. Panics if the filter does.
    #[track_caller]
    pub fn start_worker(&self) -> Worker {
        vm::install_panic_hook();
        let state = Arc::new(Mutex::new(VmState::new(ROOT_CONTEXT_ID)));
        let crash = Arc::new(Mutex::new(None));
        let mailbox: Mailbox = Arc::default();
        let (jobs, receiver) = mpsc::channel::<Job>();
        let inner = {
            let mut host = self.state();
            let index = host.workers.len();
            let inner = Arc::new(WorkerInner {
                index,
                host: self.clone(),
                jobs: Mutex::new(Some(jobs)),
                thread: Mutex::new(None),
                state: Arc::clone(&state),
                crash: Arc::clone(&crash),
                started: OnceLock::new(),
            });
            host.workers.push(WorkerSlot {
                mailbox: Arc::clone(&mailbox),
                handle: Arc::downgrade(&inner),
            });
            inner
        };
        let handle = VmHandle {
            host: self.clone(),
            worker: inner.index,
            state,
            mailbox,
            crash,
        };
        let thread = thread::Builder::new()
            .name(format!("emulator-worker-{}", inner.index))
            .stack_size(8 << 20)
            .spawn(move || worker_main(handle, receiver))
            .expect("spawning an emulator worker thread");
        *lock(&inner.thread) = Some(thread);
        let started = inner.call(start_vm);
        let _ = inner.started.set(started);
        Worker { inner }
    }

    /// Delivers an HTTP callout's outcome on the worker that dispatched it.
    #[track_caller]
    pub fn respond_http_call(&self, token: u32, outcome: CallOutcome) {
        let worker = self
            .http_calls()
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.worker);
        let Some(worker) = worker.and_then(|w| self.worker(w)) else {
            panic!("no pending HTTP call with token {token} on a running worker");
        };
        worker.respond_http_call(token, outcome);
    }

    /// Delivers a unary gRPC call's outcome on the worker that dispatched it.
    #[track_caller]
    pub fn respond_grpc_call(&self, token: u32, outcome: GrpcOutcome) {
        let worker = self
            .grpc_calls()
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.worker);
        let Some(worker) = worker.and_then(|w| self.worker(w)) else {
            panic!("no pending gRPC call with token {token} on a running worker");
        };
        worker.respond_grpc_call(token, outcome);
    }

    /// Runs the posted work (queue notifications) of every running worker.
    pub fn drain_all(&self) {
        let count = self.state().workers.len();
        for index in 0..count {
            if let Some(worker) = self.worker(index)
                && lock(&worker.inner.crash).is_none()
            {
                worker.drain();
            }
        }
    }

    fn worker(&self, index: usize) -> Option<Worker> {
        let inner = self.state().workers.get(index)?.handle.upgrade()?;
        Some(Worker { inner })
    }
}

fn set_effective(vm: &VmHandle, context_id: u32) {
    vm.state().effective = context_id;
}

fn start_vm(vm: &VmHandle) -> (bool, bool) {
    let init = vm.host.inner.init;
    let config = &vm.host.inner.config;
    vm_call(|| init());
    vm::reassert_panic_hook();
    set_effective(vm, ROOT_CONTEXT_ID);
    // SAFETY: the dispatcher's exports take plain integers.
    callback(vm, ROOT_CONTEXT_ID, "proxy_on_context_create", || unsafe {
        proxy_on_context_create(ROOT_CONTEXT_ID, 0)
    });
    let vm_config_size = config.vm_config.len();
    set_effective(vm, ROOT_CONTEXT_ID);
    // SAFETY: as above.
    let started = callback(vm, ROOT_CONTEXT_ID, "proxy_on_vm_start", || unsafe {
        proxy_on_vm_start(ROOT_CONTEXT_ID, vm_config_size)
    });
    if !started {
        return (false, false);
    }
    let plugin_config_size = config.plugin_config.len();
    {
        let mut state = vm.state();
        state.configuring = true;
        state.effective = ROOT_CONTEXT_ID;
    }
    // SAFETY: as above.
    let configured = callback(vm, ROOT_CONTEXT_ID, "proxy_on_configure", || unsafe {
        proxy_on_configure(ROOT_CONTEXT_ID, plugin_config_size)
    });
    vm.state().configuring = false;
    (true, configured)
}

/// Local replies and queue notifications caused by a call run right after
/// it, on the same thread, as Envoy runs its deferred actions and posts.
fn run_follow_ups(vm: &VmHandle) {
    for _ in 0..MAX_FOLLOW_UPS {
        let reply = {
            let mut state = vm.state();
            state
                .streams
                .iter_mut()
                .find(|(_, s)| s.pending_local_reply && s.alive)
                .map(|(id, s)| {
                    s.pending_local_reply = false;
                    (*id, s.local_response.clone())
                })
        };
        if let Some((id, Some(reply))) = reply {
            encode_local_reply(vm, id, reply);
            continue;
        }
        let task = lock(&vm.mailbox).pop_front();
        match task {
            Some(Task::QueueReady {
                context_id,
                queue_id,
            }) => {
                let known = vm.state().is_known_context(context_id);
                if known {
                    set_effective(vm, context_id);
                    // SAFETY: plain integers.
                    callback(vm, context_id, "proxy_on_queue_ready", || unsafe {
                        proxy_on_queue_ready(context_id, queue_id)
                    });
                }
            }
            None => return,
        }
    }
    vm.host.record_failure(
        Some(vm.worker),
        "emulator",
        crate::types::Status::InternalFailure,
        format!("stopped after {MAX_FOLLOW_UPS} follow-up calls (queue or local-reply loop?)"),
    );
}

/// Envoy sends a local reply through the encoder filters, this one included.
fn encode_local_reply(vm: &VmHandle, id: u32, reply: LocalResponse) {
    let mut headers: HeaderMap = vec![(":status".into(), reply.status.to_string().into_bytes())];
    if !reply.body.is_empty() {
        headers.push((
            "content-length".into(),
            reply.body.len().to_string().into_bytes(),
        ));
        headers.push(("content-type".into(), b"text/plain".to_vec()));
    }
    headers.extend(reply.headers.iter().cloned());
    let end_of_stream = reply.body.is_empty();
    response_headers(vm, id, headers, end_of_stream);
    if !end_of_stream {
        response_body(vm, id, &reply.body, true);
    }
}

fn with_stream<R>(vm: &VmHandle, id: u32, f: impl FnOnce(&mut StreamState) -> R) -> Option<R> {
    let mut state = vm.state();
    state.effective = id;
    state.streams.get_mut(&id).map(f)
}

fn request_headers(vm: &VmHandle, id: u32, headers: HeaderMap, end_of_stream: bool) -> Action {
    let count = headers.len();
    with_stream(vm, id, |s| {
        s.request_headers = Some(headers);
        s.live.request_headers = true;
    });
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_request_headers", || unsafe {
        proxy_on_request_headers(id, count, end_of_stream)
    }));
    if result == Action::Continue {
        with_stream(vm, id, |s| s.live.request_headers = false);
    }
    result
}

fn request_body(vm: &VmHandle, id: u32, chunk: &[u8], end_of_stream: bool) -> Action {
    let size = with_stream(vm, id, |s| {
        let buffer = s.request_body.get_or_insert_with(Vec::new);
        if !s.request_buffering {
            buffer.clear();
        }
        buffer.extend_from_slice(chunk);
        buffer.len()
    })
    .unwrap_or(0);
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_request_body", || unsafe {
        proxy_on_request_body(id, size, end_of_stream)
    }));
    with_stream(vm, id, |s| {
        if result == Action::Continue {
            s.request_buffering = false;
            let sent = s.request_body.take().unwrap_or_default();
            s.request_body_sent.extend_from_slice(&sent);
        } else {
            s.request_buffering = true;
        }
    });
    result
}

fn request_trailers(vm: &VmHandle, id: u32, trailers: HeaderMap) -> Action {
    let count = trailers.len();
    with_stream(vm, id, |s| {
        s.request_trailers = Some(trailers);
        s.live.request_trailers = true;
    });
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_request_trailers", || unsafe {
        proxy_on_request_trailers(id, count)
    }));
    if result == Action::Continue {
        with_stream(vm, id, |s| {
            s.live.request_trailers = false;
            flush_request_body(s);
        });
    }
    result
}

pub(crate) fn flush_request_body(s: &mut StreamState) {
    if s.request_buffering {
        s.request_buffering = false;
        let sent = s.request_body.take().unwrap_or_default();
        s.request_body_sent.extend_from_slice(&sent);
    }
}

pub(crate) fn flush_response_body(s: &mut StreamState) {
    if s.response_buffering {
        s.response_buffering = false;
        let sent = s.response_body.take().unwrap_or_default();
        s.response_body_sent.extend_from_slice(&sent);
    }
}

fn response_headers(vm: &VmHandle, id: u32, headers: HeaderMap, end_of_stream: bool) -> Action {
    let count = headers.len();
    with_stream(vm, id, |s| {
        s.response_headers = Some(headers);
        s.live.response_headers = true;
    });
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_response_headers", || unsafe {
        proxy_on_response_headers(id, count, end_of_stream)
    }));
    if result == Action::Continue {
        with_stream(vm, id, |s| s.live.response_headers = false);
    }
    result
}

fn response_body(vm: &VmHandle, id: u32, chunk: &[u8], end_of_stream: bool) -> Action {
    let size = with_stream(vm, id, |s| {
        let buffer = s.response_body.get_or_insert_with(Vec::new);
        if !s.response_buffering {
            buffer.clear();
        }
        buffer.extend_from_slice(chunk);
        buffer.len()
    })
    .unwrap_or(0);
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_response_body", || unsafe {
        proxy_on_response_body(id, size, end_of_stream)
    }));
    with_stream(vm, id, |s| {
        if result == Action::Continue {
            s.response_buffering = false;
            let sent = s.response_body.take().unwrap_or_default();
            s.response_body_sent.extend_from_slice(&sent);
        } else {
            s.response_buffering = true;
        }
    });
    result
}

fn response_trailers(vm: &VmHandle, id: u32, trailers: HeaderMap) -> Action {
    let count = trailers.len();
    with_stream(vm, id, |s| {
        s.response_trailers = Some(trailers);
        s.live.response_trailers = true;
    });
    // SAFETY: plain integers.
    let result = action(callback(vm, id, "proxy_on_response_trailers", || unsafe {
        proxy_on_response_trailers(id, count)
    }));
    if result == Action::Continue {
        with_stream(vm, id, |s| {
            s.live.response_trailers = false;
            flush_response_body(s);
        });
    }
    result
}

/// End of an HTTP stream as Envoy runs it: access log (`proxy_on_log`),
/// then filter destruction (`proxy_on_done`, `proxy_on_delete`).
fn finish(vm: &VmHandle, id: u32) {
    with_stream(vm, id, |s| s.access_log_phase = true);
    // SAFETY: plain integers.
    callback(vm, id, "proxy_on_log", || unsafe { proxy_on_log(id) });
    with_stream(vm, id, |s| s.access_log_phase = false);
    // Envoy ignores on_done's answer for HTTP streams.
    // SAFETY: plain integers.
    callback(vm, id, "proxy_on_done", || unsafe { proxy_on_done(id) });
    set_effective(vm, id);
    // SAFETY: plain integers.
    callback(vm, id, "proxy_on_delete", || unsafe { proxy_on_delete(id) });
    {
        let mut state = vm.state();
        if let Some(s) = state.streams.get_mut(&id) {
            s.alive = false;
            s.live = vm::Live::default();
            s.pending_local_reply = false;
        }
        state.effective = state.root_context_id;
    }
    vm.host.cancel_callouts(vm.worker, id);
}

fn lower_map(headers: &[(&str, &[u8])]) -> HeaderMap {
    headers
        .iter()
        .map(|(k, v)| (wire::lower(k), v.to_vec()))
        .collect()
}

fn lower_str_map(headers: &[(&str, &str)]) -> HeaderMap {
    headers
        .iter()
        .map(|(k, v)| (wire::lower(k), v.as_bytes().to_vec()))
        .collect()
}

/// Handle to one emulated Envoy worker (a thread running one VM).
///
/// Dropping the last handle (streams hold one too) stops the thread, which
/// drops the filter's contexts there.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.inner.index)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Index of this worker in its host (0, 1, ... in start order).
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// The host this worker belongs to.
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// Id of this VM's root context.
    pub fn root_context_id(&self) -> u32 {
        ROOT_CONTEXT_ID
    }

    /// What `proxy_on_vm_start` answered.
    pub fn vm_started(&self) -> bool {
        self.inner.started.get().is_some_and(|s| s.0)
    }

    /// What `proxy_on_configure` answered (false if it was not called
    /// because `proxy_on_vm_start` failed). Envoy rejects the plugin if false.
    pub fn configured(&self) -> bool {
        self.inner.started.get().is_some_and(|s| s.1)
    }

    /// The panic message if the filter panicked on this worker (its VM is
    /// dead then, and every later call on it panics).
    pub fn crash_message(&self) -> Option<String> {
        lock(&self.inner.crash).clone()
    }

    /// Fires the root context's timer: `proxy_on_tick`. Panics if the filter
    /// set no tick period: Envoy would never call `on_tick` then.
    #[track_caller]
    pub fn tick(&self) {
        if self.tick_period().is_none() {
            panic!(
                "worker {}: the filter set no tick period, Envoy never calls on_tick",
                self.inner.index
            );
        }
        self.inner.call(|vm| {
            set_effective(vm, ROOT_CONTEXT_ID);
            // SAFETY: plain integers.
            callback(vm, ROOT_CONTEXT_ID, "proxy_on_tick", || unsafe {
                proxy_on_tick(ROOT_CONTEXT_ID)
            });
        });
    }

    /// Shuts the VM down as Envoy does when a worker's plugin goes away
    /// (proxy-wasm-cpp-host `WasmBase::startShutdown`): `proxy_on_done`,
    /// then `proxy_on_delete` of the root context. The worker takes no more
    /// streams or ticks after this (Envoy would not send any).
    #[track_caller]
    pub fn shutdown(&self) {
        self.inner.call(|vm| {
            set_effective(vm, ROOT_CONTEXT_ID);
            // SAFETY: plain integers.
            callback(vm, ROOT_CONTEXT_ID, "proxy_on_done", || unsafe {
                proxy_on_done(ROOT_CONTEXT_ID)
            });
            // SAFETY: plain integers.
            callback(vm, ROOT_CONTEXT_ID, "proxy_on_delete", || unsafe {
                proxy_on_delete(ROOT_CONTEXT_ID)
            });
        });
    }

    /// Tick period the root context asked for (`None`: no timer).
    pub fn tick_period(&self) -> Option<Duration> {
        self.inner.state().tick_period
    }

    /// Runs `f` on this worker's thread, inside its VM, with the root context
    /// effective: `proxy_wasm::hostcalls` work there as in the filter.
    /// Do not call the `proxy_on_*` exports from `f`; use this API instead.
    #[track_caller]
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.inner.call(move |vm| {
            set_effective(vm, ROOT_CONTEXT_ID);
            f()
        })
    }

    /// Runs the work posted to this worker (queue-ready notifications).
    /// Every call already does this when it ends; this is the call for a
    /// worker that has nothing else to do.
    #[track_caller]
    pub fn drain(&self) {
        self.inner.call(|_| ());
    }

    /// Sets a property visible in every context of this worker (e.g.
    /// `["listener_direction"]`); stream properties take precedence.
    pub fn set_property(&self, path: &[&str], value: impl Into<Vec<u8>>) {
        self.inner
            .state()
            .properties
            .insert(wire::property_key(path), value.into());
    }

    /// Starts an HTTP stream: `proxy_on_context_create(new_id, root)`.
    #[track_caller]
    pub fn http_stream(&self) -> Stream {
        let id = self.inner.call(|vm| {
            let id = vm.state().new_stream();
            set_effective(vm, id);
            // SAFETY: plain integers.
            callback(vm, id, "proxy_on_context_create", || unsafe {
                proxy_on_context_create(id, ROOT_CONTEXT_ID)
            });
            id
        });
        Stream {
            worker: self.clone(),
            id,
        }
    }

    /// Answers an HTTP callout this worker's VM dispatched: makes the
    /// response readable (map type 6, buffer type 4) and calls
    /// `proxy_on_http_call_response` on the dispatching context.
    #[track_caller]
    pub fn respond_http_call(&self, token: u32, outcome: CallOutcome) {
        let call = self.take_pending(token, |s| &mut s.http_calls, |c: &HttpCall| c.token);
        self.inner
            .call(move |vm| deliver_http_response(vm, call, outcome));
    }

    /// Answers a unary gRPC call this worker's VM dispatched.
    #[track_caller]
    pub fn respond_grpc_call(&self, token: u32, outcome: GrpcOutcome) {
        let call = self.take_pending(token, |s| &mut s.grpc_calls, |c: &GrpcCall| c.token);
        self.inner
            .call(move |vm| deliver_grpc_response(vm, &call, outcome));
    }

    /// Delivers an event from the peer of a gRPC stream this worker opened.
    #[track_caller]
    pub fn grpc_stream_event(&self, token: u32, event: GrpcStreamEvent) {
        let context_id = {
            let mut host = self.inner.host.state();
            let Some(position) = host
                .grpc_streams
                .iter()
                .position(|s| s.token == token && s.worker == self.inner.index)
            else {
                panic!(
                    "worker {} has no open gRPC stream with token {token}",
                    self.inner.index
                );
            };
            let context_id = host.grpc_streams[position].context_id;
            if matches!(event, GrpcStreamEvent::Close { .. }) {
                host.grpc_streams.remove(position);
            }
            context_id
        };
        self.inner
            .call(move |vm| deliver_grpc_stream_event(vm, context_id, token, event));
    }

    #[track_caller]
    fn take_pending<T>(
        &self,
        token: u32,
        list: impl FnOnce(&mut crate::host::HostState) -> &mut Vec<T>,
        token_of: impl Fn(&T) -> u32,
    ) -> T
    where
        T: Owner,
    {
        let mut host = self.inner.host.state();
        let calls = list(&mut host);
        let Some(position) = calls.iter().position(|c| token_of(c) == token) else {
            panic!("no pending call with token {token} (answered already, or its context ended)");
        };
        if calls[position].worker() != self.inner.index {
            panic!(
                "call {token} belongs to worker {}, not worker {}",
                calls[position].worker(),
                self.inner.index
            );
        }
        calls.remove(position)
    }
}

/// Calls record which worker dispatched them.
trait Owner {
    fn worker(&self) -> usize;
}

impl Owner for HttpCall {
    fn worker(&self) -> usize {
        self.worker
    }
}

impl Owner for GrpcCall {
    fn worker(&self) -> usize {
        self.worker
    }
}

fn deliver_http_response(vm: &VmHandle, call: HttpCall, outcome: CallOutcome) {
    let (response, status) = match outcome {
        CallOutcome::Response {
            status,
            headers,
            body,
        } => {
            let mut map: HeaderMap = vec![(":status".into(), status.to_string().into_bytes())];
            map.extend(
                headers
                    .into_iter()
                    .map(|(k, v)| (wire::lower(&k), v.into_bytes())),
            );
            let response = CallResponse {
                headers: map,
                body,
                trailers: Vec::new(),
            };
            (Some(response), (0, Vec::new()))
        }
        CallOutcome::Timeout => {
            let body = b"upstream request timeout".to_vec();
            let headers = vec![
                (":status".to_string(), b"504".to_vec()),
                (
                    "content-length".to_string(),
                    body.len().to_string().into_bytes(),
                ),
                ("content-type".to_string(), b"text/plain".to_vec()),
            ];
            let response = CallResponse {
                headers,
                body,
                trailers: Vec::new(),
            };
            (Some(response), (0, Vec::new()))
        }
        CallOutcome::Reset => (None, (BROKEN_CONNECTION, b"reset".to_vec())),
    };
    let sizes = response.as_ref().map_or((0, 0, 0), |r| {
        (r.headers.len(), r.body.len(), r.trailers.len())
    });
    {
        let mut state = vm.state();
        state.http_response = response;
        state.status = status;
        // Envoy delivers callout answers on the root context: a module
        // must make the sender effective itself (proxy_set_effective_context).
        state.effective = ROOT_CONTEXT_ID;
    }
    // SAFETY: plain integers.
    callback(
        vm,
        call.context_id,
        "proxy_on_http_call_response",
        || unsafe {
            proxy_on_http_call_response(ROOT_CONTEXT_ID, call.token, sizes.0, sizes.1, sizes.2)
        },
    );
    let mut state = vm.state();
    state.http_response = None;
    state.status = (0, Vec::new());
}

fn deliver_grpc_response(vm: &VmHandle, call: &GrpcCall, outcome: GrpcOutcome) {
    match outcome {
        GrpcOutcome::Message(message) => {
            let size = message.len();
            {
                let mut state = vm.state();
                state.grpc_receive = Some(message);
                // Envoy delivers callout answers on the root context: a module
                // must make the sender effective itself (proxy_set_effective_context).
                state.effective = ROOT_CONTEXT_ID;
            }
            // SAFETY: plain integers.
            callback(vm, call.context_id, "proxy_on_grpc_receive", || unsafe {
                proxy_on_grpc_receive(ROOT_CONTEXT_ID, call.token, size)
            });
            vm.state().grpc_receive = None;
        }
        GrpcOutcome::Status { code, message } => {
            {
                let mut state = vm.state();
                state.status = (code, message.into_bytes());
                // Envoy delivers callout answers on the root context: a module
                // must make the sender effective itself (proxy_set_effective_context).
                state.effective = ROOT_CONTEXT_ID;
            }
            // SAFETY: plain integers.
            callback(vm, call.context_id, "proxy_on_grpc_close", || unsafe {
                proxy_on_grpc_close(ROOT_CONTEXT_ID, call.token, code)
            });
            vm.state().status = (0, Vec::new());
        }
    }
}

fn deliver_grpc_stream_event(vm: &VmHandle, context_id: u32, token: u32, event: GrpcStreamEvent) {
    set_effective(vm, context_id);
    match event {
        GrpcStreamEvent::InitialMetadata(map) => {
            let count = u32::try_from(map.len()).unwrap_or(u32::MAX);
            vm.state().grpc_initial_metadata = Some(lower_owned(map));
            // SAFETY: plain integers.
            callback(
                vm,
                context_id,
                "proxy_on_grpc_receive_initial_metadata",
                || unsafe { proxy_on_grpc_receive_initial_metadata(context_id, token, count) },
            );
            vm.state().grpc_initial_metadata = None;
        }
        GrpcStreamEvent::Message(message) => {
            let size = message.len();
            vm.state().grpc_receive = Some(message);
            // SAFETY: plain integers.
            callback(vm, context_id, "proxy_on_grpc_receive", || unsafe {
                proxy_on_grpc_receive(context_id, token, size)
            });
            vm.state().grpc_receive = None;
        }
        GrpcStreamEvent::TrailingMetadata(map) => {
            let count = u32::try_from(map.len()).unwrap_or(u32::MAX);
            vm.state().grpc_trailing_metadata = Some(lower_owned(map));
            // SAFETY: plain integers.
            callback(
                vm,
                context_id,
                "proxy_on_grpc_receive_trailing_metadata",
                || unsafe { proxy_on_grpc_receive_trailing_metadata(context_id, token, count) },
            );
            vm.state().grpc_trailing_metadata = None;
        }
        GrpcStreamEvent::Close { code, message } => {
            vm.state().status = (code, message.into_bytes());
            // SAFETY: plain integers.
            callback(vm, context_id, "proxy_on_grpc_close", || unsafe {
                proxy_on_grpc_close(context_id, token, code)
            });
            vm.state().status = (0, Vec::new());
        }
    }
}

fn lower_owned(map: Vec<(String, Vec<u8>)>) -> HeaderMap {
    map.into_iter().map(|(k, v)| (wire::lower(&k), v)).collect()
}

/// One HTTP stream on a worker. Drive it with the request/response methods
/// in the order Envoy would, then [`Stream::finish`].
#[derive(Clone)]
pub struct Stream {
    worker: Worker,
    id: u32,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("worker", &self.worker.index())
            .field("id", &self.id)
            .finish()
    }
}

impl Stream {
    /// The stream's context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The worker this stream runs on.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    fn read<R>(&self, f: impl FnOnce(&StreamState) -> R) -> R {
        let state = self.worker.inner.state();
        match state.streams.get(&self.id) {
            Some(stream) => f(stream),
            None => f(&StreamState::default()),
        }
    }

    #[track_caller]
    fn drive<R: Send + 'static>(&self, f: impl FnOnce(&VmHandle, u32) -> R + Send + 'static) -> R {
        if !self.read(|s| s.alive) {
            panic!("stream {} has finished", self.id);
        }
        let id = self.id;
        self.worker.inner.call(move |vm| f(vm, id))
    }

    /// Sets a property of this stream (e.g. `["source", "address"]`).
    pub fn set_property(&self, path: &[&str], value: impl Into<Vec<u8>>) {
        let mut state = self.worker.inner.state();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream
                .properties
                .insert(wire::property_key(path), value.into());
        }
    }

    /// A property of this stream as it stands now: one the test set, or one
    /// the module set with `proxy_set_property` (Envoy's filter state
    /// `wasm.<name>` for a one-segment path `[name]`).
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.read(|s| s.properties.get(&wire::property_key(path)).cloned())
    }

    /// Request headers arrive: `proxy_on_request_headers`. Names are
    /// lower-cased, as Envoy does.
    #[track_caller]
    pub fn request_headers(&self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        let map = lower_str_map(headers);
        self.drive(move |vm, id| request_headers(vm, id, map, end_of_stream))
    }

    /// Like [`Stream::request_headers`], with raw (possibly non-UTF-8) values.
    #[track_caller]
    pub fn request_headers_bytes(&self, headers: &[(&str, &[u8])], end_of_stream: bool) -> Action {
        let map = lower_map(headers);
        self.drive(move |vm, id| request_headers(vm, id, map, end_of_stream))
    }

    /// A request body chunk: `proxy_on_request_body`. After a `Pause` the
    /// filter sees the whole buffered body, as with Envoy's buffering.
    #[track_caller]
    pub fn request_body(&self, chunk: &[u8], end_of_stream: bool) -> Action {
        let chunk = chunk.to_vec();
        self.drive(move |vm, id| request_body(vm, id, &chunk, end_of_stream))
    }

    /// Request trailers: `proxy_on_request_trailers`.
    #[track_caller]
    pub fn request_trailers(&self, trailers: &[(&str, &str)]) -> Action {
        let map = lower_str_map(trailers);
        self.drive(move |vm, id| request_trailers(vm, id, map))
    }

    /// Response headers arrive: `proxy_on_response_headers`.
    #[track_caller]
    pub fn response_headers(&self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        let map = lower_str_map(headers);
        self.drive(move |vm, id| response_headers(vm, id, map, end_of_stream))
    }

    /// Like [`Stream::response_headers`], with raw values.
    #[track_caller]
    pub fn response_headers_bytes(&self, headers: &[(&str, &[u8])], end_of_stream: bool) -> Action {
        let map = lower_map(headers);
        self.drive(move |vm, id| response_headers(vm, id, map, end_of_stream))
    }

    /// A response body chunk: `proxy_on_response_body`.
    #[track_caller]
    pub fn response_body(&self, chunk: &[u8], end_of_stream: bool) -> Action {
        let chunk = chunk.to_vec();
        self.drive(move |vm, id| response_body(vm, id, &chunk, end_of_stream))
    }

    /// Response trailers: `proxy_on_response_trailers`.
    #[track_caller]
    pub fn response_trailers(&self, trailers: &[(&str, &str)]) -> Action {
        let map = lower_str_map(trailers);
        self.drive(move |vm, id| response_trailers(vm, id, map))
    }

    /// Ends the stream as Envoy does: `proxy_on_log`, `proxy_on_done`,
    /// `proxy_on_delete`. Outstanding callouts of the stream are cancelled.
    #[track_caller]
    pub fn finish(&self) {
        self.drive(finish);
    }

    /// Runs `f` on the worker with this stream as the effective context, so
    /// `proxy_wasm::hostcalls` act on it.
    #[track_caller]
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.drive(move |vm, id| {
            set_effective(vm, id);
            f()
        })
    }

    /// Whether [`Stream::finish`] ran.
    pub fn is_finished(&self) -> bool {
        !self.read(|s| s.alive)
    }

    /// First value of a request header as it stands now (after the filter's
    /// changes), lossily decoded.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.request_headers.as_ref().and_then(|m| vm::first(m, name)))
    }

    /// All request headers as they stand now.
    pub fn request_headers_now(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.request_headers.clone().unwrap_or_default())
    }

    /// First value of a response header as it stands now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.read(|s| s.response_headers.as_ref().and_then(|m| vm::first(m, name)))
    }

    /// All response headers as they stand now.
    pub fn response_headers_now(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.response_headers.clone().unwrap_or_default())
    }

    /// Request trailers as they stand now.
    pub fn request_trailers_now(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.request_trailers.clone().unwrap_or_default())
    }

    /// Response trailers as they stand now.
    pub fn response_trailers_now(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| s.response_trailers.clone().unwrap_or_default())
    }

    /// Request body bytes the filter let through so far (after its changes).
    pub fn request_body_sent(&self) -> Vec<u8> {
        self.read(|s| s.request_body_sent.clone())
    }

    /// Response body bytes the filter let through so far.
    pub fn response_body_sent(&self) -> Vec<u8> {
        self.read(|s| s.response_body_sent.clone())
    }

    /// The local reply the filter sent, if any (the last one).
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.read(|s| s.local_response.clone())
    }

    /// The local reply, asserting its status.
    #[track_caller]
    pub fn expect_local_response(&self, status: u32) -> LocalResponse {
        match self.local_response() {
            Some(reply) if reply.status == status => reply,
            Some(reply) => panic!("expected a local {status} reply, got {reply:?}"),
            None => panic!("expected a local {status} reply, the filter sent none"),
        }
    }

    /// Every crossing between host and VM made for this stream so far, in
    /// order: callbacks, host calls and host→VM allocations.
    pub fn crossings(&self) -> Crossings {
        Crossings(self.read(|s| s.crossings.clone()))
    }

    /// How often the filter called the `clear_route_cache` foreign function.
    pub fn route_cache_clears(&self) -> u32 {
        self.read(|s| s.route_cache_clears)
    }

    /// Whether the filter resumed the request (`proxy_continue_stream`).
    pub fn request_resumed(&self) -> bool {
        self.read(|s| s.request_resumes > 0)
    }

    /// Whether the filter resumed the response.
    pub fn response_resumed(&self) -> bool {
        self.read(|s| s.response_resumes > 0)
    }

    /// Whether the filter resumed either direction.
    pub fn resumed(&self) -> bool {
        self.request_resumed() || self.response_resumed()
    }

    /// Whether the filter reset the stream (`proxy_close_stream`, or a local
    /// reply after the response had started).
    pub fn was_reset(&self) -> bool {
        self.read(|s| s.reset)
    }
}

// Handles are shared across test threads (e.g. two threads ticking two workers).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Worker>();
    send_sync::<Stream>();
    send_sync::<Host>();
};

/// The crossings of one stream (see [`Stream::crossings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crossings(pub Vec<Crossing>);

impl Crossings {
    /// All crossings.
    pub fn total(&self) -> usize {
        self.0.len()
    }

    /// Callbacks into the VM.
    pub fn callbacks(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c, Crossing::Callback(_)))
            .count()
    }

    /// Host calls made by the module.
    pub fn host_calls(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c, Crossing::HostCall(_)))
            .count()
    }

    /// Host→VM allocations (values handed back).
    pub fn allocations(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c, Crossing::Allocation))
            .count()
    }

    /// Records `total()` under `key` in the JSON object at `path` (other
    /// keys kept; the file and its folder created when missing): how the
    /// crossing tests hand their counts to `make bench`. Best effort.
    pub fn record(&self, path: &std::path::Path, key: &str) {
        record_count(path, key, self.total());
    }

    /// Crossings after the first `n` (e.g. those of one phase).
    pub fn since(&self, n: usize) -> Crossings {
        Crossings(self.0.get(n..).unwrap_or_default().to_vec())
    }
}

impl fmt::Display for Crossings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} crossings ({} callbacks, {} host calls, {} allocations):",
            self.total(),
            self.callbacks(),
            self.host_calls(),
            self.allocations()
        )?;
        for c in &self.0 {
            match c {
                Crossing::Callback(n) => write!(f, " cb:{n}")?,
                Crossing::HostCall(n) => write!(f, " {n}")?,
                Crossing::Allocation => write!(f, " +alloc")?,
            }
        }
        Ok(())
    }
}

/// Writes `key: count` into the flat JSON object of numbers at `path`.
fn record_count(path: &std::path::Path, key: &str, count: usize) {
    let mut entries: Vec<(String, usize)> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((
                k.trim().trim_matches('"').to_string(),
                v.trim().parse().ok()?,
            ))
        })
        .filter(|(k, _)| k != key)
        .collect();
    entries.push((key.to_string(), count));
    entries.sort();
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, format!("{{\n{}\n}}\n", body.join(",\n")));
}
