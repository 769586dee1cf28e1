//! The callbacks Envoy makes into the module (the proxy-wasm ABI 0.2.1
//! exports), mapped to the SDK's contexts in [`crate::module`].
//!
//! Only callbacks a stage can use are exported, because Envoy's Wasm host
//! (proxy-wasm-cpp-host) skips a callback the module does not export, and
//! each one it makes costs a crossing (`BENCHMARKS.md`, "What a crossing
//! costs"):
//! `proxy_on_done`, the body callbacks, request trailers and gRPC metadata
//! are not exported, and response headers, response trailers and `on_log`
//! only when a stage of the module takes part in that phase
//! ([`crate::stage::StageSpec::phases`], exported by [`crate::module!`]). A
//! GET then costs 3 to 5 callbacks (context create, request headers, the
//! phases in use, delete) instead of the 7 a module built with the
//! `proxy-wasm` crate pays.
//!
//! Natively (for the `switchyard-emulator`, which links every callback) the
//! unexported ones exist as stubs that tell the emulator they would not be
//! called by Envoy, so its crossing counts match the wasm module.
//!
//! A callback never panics and never holds a borrow across stage code: a
//! context is cloned out of the map (`Rc`) before it runs, and a busy or
//! unknown context makes the callback a no-op.

use crate::module::{Action, ModuleRoot, ModuleStream};
use crate::stage::Phase;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::rc::Rc;

#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Rc<RefCell<ModuleRoot>>>,
    /// Stream id → the stream.
    streams: HashMap<u32, Rc<RefCell<ModuleStream>>>,
    /// Callout token → the context that sent it (answers go back there).
    /// Envoy numbers HTTP and gRPC calls separately.
    http_tokens: HashMap<u32, u32>,
    grpc_tokens: HashMap<u32, u32>,
}

/// The kinds of callout, each with its own token space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callout {
    Http,
    Grpc,
}

impl Contexts {
    fn tokens(&mut self, kind: Callout) -> &mut HashMap<u32, u32> {
        match kind {
            Callout::Http => &mut self.http_tokens,
            Callout::Grpc => &mut self.grpc_tokens,
        }
    }
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
    /// The context whose callback is running (0: none).
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

/// Records that the running context sent callout `token`.
pub(crate) fn callout_sent(kind: Callout, token: u32) {
    let current = CURRENT.with(Cell::get);
    CONTEXTS.with(|c| {
        c.borrow_mut().tokens(kind).insert(token, current);
    });
}

fn root(id: u32) -> Option<Rc<RefCell<ModuleRoot>>> {
    CONTEXTS.with(|c| c.borrow().roots.get(&id).cloned())
}

fn stream(id: u32) -> Option<Rc<RefCell<ModuleStream>>> {
    CONTEXTS.with(|c| c.borrow().streams.get(&id).cloned())
}

/// Runs `f` as context `id`'s callback (for callout bookkeeping).
fn as_context<R>(id: u32, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(id));
    let r = f();
    CURRENT.with(|c| c.set(previous));
    r
}

fn with_root<R>(id: u32, default: R, f: impl FnOnce(&mut ModuleRoot) -> R) -> R {
    let Some(r) = root(id) else { return default };
    let Ok(mut r) = r.try_borrow_mut() else {
        return default;
    };
    as_context(id, || f(&mut r))
}

fn with_stream(id: u32, f: impl FnOnce(&mut ModuleStream) -> Action) -> u32 {
    let Some(s) = stream(id) else {
        return Action::Continue as u32;
    };
    let Ok(mut s) = s.try_borrow_mut() else {
        return Action::Continue as u32;
    };
    as_context(id, || f(&mut s)) as u32
}

/// Marks the ABI version this module implements.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills with values it hands back (freed as a `Vec<u8>`
/// by [`crate::host`]).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: capacity is `size`; the bytes are written by the host before
    // anyone reads them.
    unsafe { v.set_len(size) };
    Box::into_raw(v.into_boxed_slice()) as *mut u8
}

/// A root context (parent 0) or an HTTP stream of root `parent`.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent: u32) {
    if parent == 0 {
        CONTEXTS.with(|c| {
            c.borrow_mut()
                .roots
                .insert(context_id, Rc::new(RefCell::new(ModuleRoot::new())));
        });
        return;
    }
    let stream = match root(parent) {
        Some(r) => match r.try_borrow() {
            Ok(r) => r.new_stream(),
            Err(_) => return,
        },
        None => return,
    };
    CONTEXTS.with(|c| {
        c.borrow_mut()
            .streams
            .insert(context_id, Rc::new(RefCell::new(stream)));
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
    crate::logging::init();
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with_root(context_id, false, |r| {
        r.on_configure(plugin_configuration_size)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with_root(context_id, (), ModuleRoot::on_tick);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_queue_ready(context_id: u32, queue_id: u32) {
    with_root(context_id, (), |r| r.on_queue_ready(queue_id));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, eos: bool) -> u32 {
    with_stream(context_id, |s| s.on_request_headers(eos))
}

// The response-side callbacks are exported by `crate::module!` only for the
// phases a module's stages take part in (`StageSpec::phases`); these are
// their bodies. Natively every one is linked, and one the wasm build would
// not export tells the emulator so.

/// `proxy_on_response_headers` (exported by [`crate::module!`]).
#[doc(hidden)]
#[cfg_attr(not(target_arch = "wasm32"), unsafe(no_mangle))]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: bool) -> u32 {
    if !exported(Phase::ResponseHeaders) {
        return Action::Continue as u32;
    }
    with_stream(context_id, ModuleStream::on_response_headers)
}

/// `proxy_on_response_trailers` (exported by [`crate::module!`]).
#[doc(hidden)]
#[cfg_attr(not(target_arch = "wasm32"), unsafe(no_mangle))]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    if !exported(Phase::ResponseTrailers) {
        return Action::Continue as u32;
    }
    with_stream(context_id, ModuleStream::on_response_trailers)
}

/// `proxy_on_log` (exported by [`crate::module!`]).
#[doc(hidden)]
#[cfg_attr(not(target_arch = "wasm32"), unsafe(no_mangle))]
pub extern "C" fn proxy_on_log(context_id: u32) {
    if !exported(Phase::Log) {
        return;
    }
    with_stream(context_id, |s| {
        s.on_log();
        Action::Continue
    });
}

/// Whether the module exports `phase`'s callback. On wasm the export's
/// presence decides (`crate::module!` checks it against the stages at
/// compile time); natively the emulator links every callback, so the
/// installed stages decide and the emulator hears of a callback Envoy
/// would not make.
fn exported(phase: Phase) -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        let _ = phase;
        true
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let exported = crate::module::installed_phases().contains(phase);
        if !exported {
            unexported::unexported();
        }
        exported
    }
}

/// The context is gone: a stream ends here (its stages' `on_stream_end`
/// runs as it drops), a root's stages get `on_shutdown`.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    let (stream, root) = CONTEXTS.with(|c| {
        let mut c = c.borrow_mut();
        c.http_tokens.retain(|_, ctx| *ctx != context_id);
        c.grpc_tokens.retain(|_, ctx| *ctx != context_id);
        (c.streams.remove(&context_id), c.roots.remove(&context_id))
    });
    as_context(context_id, || {
        drop(stream);
        if let Some(r) = root
            && let Ok(r) = r.try_borrow()
        {
            r.on_shutdown();
        }
    });
}

/// Where a callout answer goes: the context that sent it, made the
/// effective one (Envoy may deliver the answer on another context, e.g. the
/// root: a resume or a header read must act on the stream).
fn answer_target(kind: Callout, context_id: u32, token: u32) -> u32 {
    let target = CONTEXTS.with(|c| {
        c.borrow_mut()
            .tokens(kind)
            .remove(&token)
            .unwrap_or(context_id)
    });
    if let Err(e) = crate::host::set_effective_context(target) {
        log::debug!("callout answer for context {target}: {e}");
    }
    target
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    let target = answer_target(Callout::Http, context_id, token);
    if stream(target).is_some() {
        with_stream(target, |s| {
            s.on_http_call_response(token, body_size);
            Action::Continue
        });
    } else {
        with_root(target, (), |r| r.on_http_call_response(token, body_size));
    }
}

/// A unary gRPC answer (success).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive(context_id: u32, token: u32, size: usize) {
    grpc_answer(context_id, token, 0, size);
}

/// A gRPC call ended without an answer (`status_code` non-zero).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_close(context_id: u32, token: u32, status_code: u32) {
    // A close after a successful receive is the end of a call already
    // answered: its token is gone.
    if CONTEXTS.with(|c| c.borrow().grpc_tokens.contains_key(&token)) {
        grpc_answer(context_id, token, status_code.max(1), 0);
    }
}

fn grpc_answer(context_id: u32, token: u32, status: u32, size: usize) {
    let target = answer_target(Callout::Grpc, context_id, token);
    if stream(target).is_some() {
        with_stream(target, |s| {
            s.on_grpc_call_response(token, status, size);
            Action::Continue
        });
    } else {
        with_root(target, (), |r| r.on_grpc_call_response(token, status, size));
    }
}

/// Natively, the callbacks a Switchyard module does not export, so the
/// emulator (which links every callback) can tell they would not run.
#[cfg(not(target_arch = "wasm32"))]
mod unexported {
    unsafe extern "C" {
        /// Defined by `switchyard-emulator`: "this callback is not exported".
        fn switchyard_emulator_unexported_callback();
    }

    pub(super) fn unexported() {
        // SAFETY: a plain notification without arguments.
        unsafe { switchyard_emulator_unexported_callback() }
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_done(_: u32) -> bool {
        unexported();
        true
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_request_body(_: u32, _: usize, _: bool) -> u32 {
        unexported();
        0
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_request_trailers(_: u32, _: usize) -> u32 {
        unexported();
        0
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_response_body(_: u32, _: usize, _: bool) -> u32 {
        unexported();
        0
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_grpc_receive_initial_metadata(_: u32, _: u32, _: u32) {
        unexported();
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn proxy_on_grpc_receive_trailing_metadata(_: u32, _: u32, _: u32) {
        unexported();
    }
}
