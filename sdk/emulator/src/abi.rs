//! The proxy-wasm ABI 0.2.1 host functions (every `proxy_*` import of
//! proxy-wasm 0.2.5), as native `#[no_mangle]` symbols.
//!
//! Rules every function here follows:
//! - It never unwinds: the body runs under `catch_unwind` and an emulator bug
//!   becomes `InternalFailure` (a panic across `extern "C"` would abort).
//! - It returns only statuses Envoy returns in the same situation; where
//!   proxy-wasm then panics (e.g. a header map that is not available), so
//!   does the filter, and the reason is recorded in [`crate::Host::failures`].
//! - Memory handed to the module comes from the module's own allocator
//!   (`proxy_on_memory_allocate`), because proxy-wasm frees it as a `Vec`.
//! - Enum arguments arrive as `u32`: an out-of-range value must not be UB.

use crate::types::{LogLevel, Status};
use crate::vm::{self, Frame, LocalResponse, VmHandle};
use crate::wire::{self, HeaderMap};
use crate::worker::{flush_request_body, flush_response_body, proxy_on_memory_allocate};
use crate::{GrpcCall, GrpcStream, HttpCall};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, null_mut};
use std::time::Duration;

type HostResult = Result<(), Status>;

thread_local! {
    /// `proxy_on_memory_allocate` calls made by the running host function.
    static ALLOCATIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs a host function body on the calling worker's VM. Off a worker
/// thread there is no VM: `off_worker` decides the answer.
fn host_call(
    call: &'static str,
    off_worker: impl FnOnce() -> Status,
    body: impl FnOnce(&VmHandle) -> HostResult,
) -> u32 {
    let _frame = vm::enter(Frame::Host);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        vm::current().map(|vm| {
            ALLOCATIONS.with(|a| a.set(0));
            let result = body(&vm);
            let mut state = vm.state();
            let effective = state.effective;
            state.count(effective, vm::Crossing::HostCall(call));
            for _ in 0..ALLOCATIONS.with(|a| a.replace(0)) {
                state.count(effective, vm::Crossing::Allocation);
            }
            result
        })
    }));
    let status = match outcome {
        Ok(Some(Ok(()))) => Status::Ok,
        Ok(Some(Err(status))) => status,
        Ok(None) => catch_unwind(AssertUnwindSafe(off_worker)).unwrap_or(Status::InternalFailure),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("non-string panic");
            let detail = format!("emulator bug: host function panicked: {what}");
            let _ = catch_unwind(AssertUnwindSafe(|| {
                if let Some(vm) = vm::current() {
                    vm.fail(call, Status::InternalFailure, detail);
                }
            }));
            Status::InternalFailure
        }
    };
    status as u32
}

/// The usual answer off a worker thread: there is no VM to act on.
fn no_vm(call: &'static str) -> impl FnOnce() -> Status {
    move || {
        eprintln!("switchyard-emulator: {call} called outside an emulator worker thread");
        Status::InternalFailure
    }
}

/// Bytes the module passed in.
///
/// # Safety
/// `data` must be null or valid for reads of `size` bytes for `'a`.
unsafe fn input<'a>(data: *const u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(data, size) }
    }
}

/// Writes one out-parameter, ignoring null.
///
/// # Safety
/// `ptr` must be null or valid for a write of `T`.
unsafe fn put<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: guaranteed by the caller; unaligned in case the module's
        // layout differs from ours.
        unsafe { ptr.write_unaligned(value) }
    }
}

/// Hands bytes to the module in memory it owns; empty → null, as Envoy does.
///
/// # Safety
/// The out-pointers must be valid for writes.
unsafe fn put_bytes(data: &[u8], return_data: *mut *mut u8, return_size: *mut usize) -> HostResult {
    if return_data.is_null() || return_size.is_null() {
        return Err(Status::BadArgument);
    }
    if data.is_empty() {
        // SAFETY: checked non-null above, validity guaranteed by the caller.
        unsafe {
            put(return_data, null_mut());
            put(return_size, 0);
        }
        return Ok(());
    }
    // Counted by `host_call` once the body has released the VM state.
    ALLOCATIONS.with(|a| a.set(a.get() + 1));
    // SAFETY: the module's allocator; returns `data.len()` writable bytes.
    let buffer = vm::vm_call(|| unsafe { proxy_on_memory_allocate(data.len()) });
    if buffer.is_null() {
        return Err(Status::InternalFailure);
    }
    // SAFETY: `buffer` has room for `data.len()` bytes and does not overlap.
    unsafe {
        ptr::copy_nonoverlapping(data.as_ptr(), buffer, data.len());
        put(return_data, buffer);
        put(return_size, data.len());
    }
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn log_level(raw: u32) -> Option<LogLevel> {
    Some(match raw {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        5 => LogLevel::Critical,
        _ => return None,
    })
}

const MAP_NAMES: [&str; 8] = [
    "request headers",
    "request trailers",
    "response headers",
    "response trailers",
    "gRPC initial metadata",
    "gRPC trailing metadata",
    "HTTP call response headers",
    "HTTP call response trailers",
];

fn map_name(map_type: u32) -> &'static str {
    MAP_NAMES
        .get(map_type as usize)
        .copied()
        .unwrap_or("unknown map")
}

/// Why a header map is not there, for the failure record.
fn unavailable(vm: &VmHandle, call: &'static str, map_type: u32) -> Status {
    let context = vm.state().effective;
    vm.fail(
        call,
        Status::BadArgument,
        format!(
            "{} not available in context {context} (Envoy exposes a map only during its \
             callback, or while the stream is paused on it)",
            map_name(map_type)
        ),
    )
}

// ---- logging, time, timers ----

/// `proxy_log`: records the message (and echoes it, see `HostBuilder::echo_logs`).
///
/// # Safety
/// Called by proxy-wasm with a valid message buffer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_log(
    level: u32,
    message_data: *const u8,
    message_size: usize,
) -> u32 {
    // SAFETY: the module passes a readable buffer.
    let message = text(unsafe { input(message_data, message_size) });
    host_call(
        "proxy_log",
        // proxy-wasm's logger is global: code on a test thread may log too.
        || {
            eprintln!("[emulator, not a worker] {message}");
            Status::Ok
        },
        |vm| {
            let Some(level) = log_level(level) else {
                return Err(vm.fail(
                    "proxy_log",
                    Status::BadArgument,
                    format!("log level {level}"),
                ));
            };
            vm.host.log(Some(vm.worker), level, message.clone());
            Ok(())
        },
    )
}

/// `proxy_get_log_level`: the host's configured level.
///
/// # Safety
/// `return_level` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_log_level(return_level: *mut u32) -> u32 {
    host_call("proxy_get_log_level", no_vm("proxy_get_log_level"), |vm| {
        // SAFETY: out-pointer from the module.
        unsafe { put(return_level, vm.host.inner.config.log_level as u32) };
        Ok(())
    })
}

/// `proxy_get_current_time_nanoseconds`: the emulated clock.
///
/// # Safety
/// `return_time` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32 {
    host_call(
        "proxy_get_current_time_nanoseconds",
        no_vm("proxy_get_current_time_nanoseconds"),
        |vm| {
            // SAFETY: out-pointer from the module.
            unsafe { put(return_time, vm.host.now_nanos()) };
            Ok(())
        },
    )
}

/// `proxy_set_tick_period_milliseconds`: recorded; 0 turns the timer off.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> u32 {
    host_call(
        "proxy_set_tick_period_milliseconds",
        no_vm("proxy_set_tick_period_milliseconds"),
        |vm| {
            vm.state().tick_period = (period > 0).then(|| Duration::from_millis(period.into()));
            Ok(())
        },
    )
}

// ---- buffers ----

/// `proxy_get_buffer_bytes`: bodies, callout responses, configurations.
///
/// # Safety
/// Out-pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer_type: u32,
    start: usize,
    max_size: usize,
    return_buffer_data: *mut *mut u8,
    return_buffer_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_get_buffer_bytes";
    host_call(CALL, no_vm(CALL), |vm| {
        let slice = |buffer: &[u8]| {
            let from = start.min(buffer.len());
            let to = start.saturating_add(max_size).min(buffer.len());
            buffer[from..to].to_vec()
        };
        let bytes = {
            let config = &vm.host.inner.config;
            let mut state = vm.state();
            match buffer_type {
                0 => state
                    .effective_stream()
                    .and_then(|s| s.request_body.as_deref().map(slice)),
                1 => state
                    .effective_stream()
                    .and_then(|s| s.response_body.as_deref().map(slice)),
                // Network filters are not emulated.
                2 | 3 => None,
                4 => state.http_response.as_ref().map(|r| slice(&r.body)),
                // Envoy answers an empty buffer outside a gRPC callback.
                5 => Some(state.grpc_receive.as_deref().map(slice).unwrap_or_default()),
                6 => Some(slice(&config.vm_config)),
                7 => state.configuring.then(|| slice(&config.plugin_config)),
                // Foreign-function call data: none is ever delivered.
                8 => Some(Vec::new()),
                _ => {
                    drop(state);
                    return Err(vm.fail(
                        CALL,
                        Status::BadArgument,
                        format!("buffer type {buffer_type}"),
                    ));
                }
            }
        };
        let bytes = bytes.ok_or(Status::NotFound)?;
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&bytes, return_buffer_data, return_buffer_size) }
    })
}

/// `proxy_set_buffer_bytes`: Envoy's rules: `start == 0` replaces the first
/// `size` bytes (prepends if `size == 0`), `start >= len` appends, anything
/// else is `BadArgument`.
///
/// # Safety
/// `buffer_data` must be readable for `buffer_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer_type: u32,
    start: usize,
    size: usize,
    buffer_data: *const u8,
    buffer_size: usize,
) -> u32 {
    const CALL: &str = "proxy_set_buffer_bytes";
    // SAFETY: the module passes a readable buffer.
    let data = unsafe { input(buffer_data, buffer_size) };
    host_call(CALL, no_vm(CALL), |vm| {
        let mut state = vm.state();
        let context = state.effective;
        let buffer = match buffer_type {
            0 => state
                .effective_stream()
                .and_then(|s| s.request_body.as_mut()),
            1 => state
                .effective_stream()
                .and_then(|s| s.response_body.as_mut()),
            _ => {
                drop(state);
                return Err(vm.fail(
                    CALL,
                    Status::BadArgument,
                    format!("buffer type {buffer_type} cannot be written"),
                ));
            }
        };
        let Some(buffer) = buffer else {
            drop(state);
            return Err(vm.fail(
                CALL,
                Status::NotFound,
                format!(
                    "no {} body buffer in context {context} (only during a body \
                     callback, or while buffering after Pause)",
                    if buffer_type == 0 {
                        "request"
                    } else {
                        "response"
                    }
                ),
            ));
        };
        if start == 0 {
            // Envoy drains `size` bytes, then prepends the data.
            let tail = buffer.split_off(size.min(buffer.len()));
            buffer.clear();
            buffer.extend_from_slice(data);
            buffer.extend_from_slice(&tail);
        } else if start >= buffer.len() {
            buffer.extend_from_slice(data);
        } else {
            let len = buffer.len();
            drop(state);
            return Err(vm.fail(
                CALL,
                Status::BadArgument,
                format!("start {start} is inside the {len}-byte buffer (only 0 or the end)"),
            ));
        }
        Ok(())
    })
}

// ---- header maps ----

/// `proxy_get_header_map_pairs`: empty when the map is not available.
///
/// # Safety
/// Out-pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map_type: u32,
    return_map_data: *mut *mut u8,
    return_map_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_get_header_map_pairs";
    host_call(CALL, no_vm(CALL), |vm| {
        let bytes = {
            let mut state = vm.state();
            match state.read_map(map_type) {
                Ok(Some(map)) if !map.is_empty() => wire::serialize_map(map),
                Ok(_) => Vec::new(),
                Err(status) => {
                    drop(state);
                    return Err(vm.fail(CALL, status, format!("map type {map_type}")));
                }
            }
        };
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&bytes, return_map_data, return_map_size) }
    })
}

/// `proxy_set_header_map_pairs`: replaces the whole map (names lower-cased).
///
/// # Safety
/// `map_data` must be readable for `map_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_set_header_map_pairs(
    map_type: u32,
    map_data: *const u8,
    map_size: usize,
) -> u32 {
    const CALL: &str = "proxy_set_header_map_pairs";
    // SAFETY: the module passes a readable buffer.
    let data = unsafe { input(map_data, map_size) };
    host_call(CALL, no_vm(CALL), |vm| {
        let Some(pairs) = wire::deserialize_map(data) else {
            return Err(vm.fail(CALL, Status::BadArgument, "malformed map".into()));
        };
        let mut state = vm.state();
        let Some(map) = state.write_map(map_type) else {
            drop(state);
            return Err(unavailable(vm, CALL, map_type));
        };
        *map = pairs
            .into_iter()
            .map(|(k, v)| (wire::lower(&k), v))
            .collect();
        Ok(())
    })
}

/// `proxy_get_header_map_value`: the first value (Envoy's choice); a map
/// that is not available is `BadArgument` (NotFound in the access-log phase).
///
/// # Safety
/// `key_data` readable, out-pointers writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_get_header_map_value";
    // SAFETY: the module passes a readable buffer.
    let key = wire::lower(&text(unsafe { input(key_data, key_size) }));
    host_call(CALL, no_vm(CALL), |vm| {
        let value = {
            let mut state = vm.state();
            let access_log = state.effective_stream().is_some_and(|s| s.access_log_phase);
            match state.read_map(map_type) {
                Ok(Some(map)) => map.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                Ok(None) if access_log => None,
                Ok(None) => {
                    drop(state);
                    return Err(unavailable(vm, CALL, map_type));
                }
                Err(status) => {
                    drop(state);
                    return Err(vm.fail(CALL, status, format!("map type {map_type}")));
                }
            }
        };
        let value = value.ok_or(Status::NotFound)?;
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&value, return_value_data, return_value_size) }
    })
}

/// Applies a change to a writable header map, or fails like Envoy.
fn edit_map(
    vm: &VmHandle,
    call: &'static str,
    map_type: u32,
    edit: impl FnOnce(&mut HeaderMap),
) -> HostResult {
    let mut state = vm.state();
    match state.write_map(map_type) {
        Some(map) => {
            edit(map);
            Ok(())
        }
        None => {
            drop(state);
            Err(unavailable(vm, call, map_type))
        }
    }
}

/// `proxy_remove_header_map_value`: removes every value of the header.
///
/// # Safety
/// `key_data` must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
) -> u32 {
    const CALL: &str = "proxy_remove_header_map_value";
    // SAFETY: the module passes a readable buffer.
    let key = wire::lower(&text(unsafe { input(key_data, key_size) }));
    host_call(CALL, no_vm(CALL), |vm| {
        edit_map(vm, CALL, map_type, |map| map.retain(|(k, _)| *k != key))
    })
}

/// `proxy_replace_header_map_value`: sets the first value, drops the others,
/// appends if absent (Envoy's `setCopy`).
///
/// # Safety
/// Input buffers must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> u32 {
    const CALL: &str = "proxy_replace_header_map_value";
    // SAFETY: the module passes readable buffers.
    let (key, value) = unsafe {
        (
            wire::lower(&text(input(key_data, key_size))),
            input(value_data, value_size).to_vec(),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        edit_map(vm, CALL, map_type, |map| {
            match map.iter().position(|(k, _)| *k == key) {
                Some(first) => {
                    map[first].1 = value.clone();
                    let mut index = 0;
                    map.retain(|(k, _)| {
                        let keep = *k != key || index == first;
                        index += 1;
                        keep
                    });
                }
                None => map.push((key.clone(), value.clone())),
            }
        })
    })
}

/// `proxy_add_header_map_value`: appends a value (keeps existing ones).
///
/// # Safety
/// Input buffers must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map_type: u32,
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> u32 {
    const CALL: &str = "proxy_add_header_map_value";
    // SAFETY: the module passes readable buffers.
    let (key, value) = unsafe {
        (
            wire::lower(&text(input(key_data, key_size))),
            input(value_data, value_size).to_vec(),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        edit_map(vm, CALL, map_type, |map| {
            map.push((key.clone(), value.clone()))
        })
    })
}

// ---- properties ----

/// Properties Envoy derives from the stream's headers (a small subset).
fn derived_property(vm: &VmHandle, key: &[u8]) -> Option<Vec<u8>> {
    let mut state = vm.state();
    let stream = state.effective_stream()?;
    let request = |name: &str| {
        stream
            .request_headers
            .as_ref()
            .and_then(|m| m.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    };
    let path = || request(":path");
    match key {
        b"request\0path" => path(),
        b"request\0url_path" => {
            path().map(|p| p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec())
        }
        b"request\0query" => path().map(|p| {
            p.iter()
                .position(|b| *b == b'?')
                .map_or_else(Vec::new, |at| p[at + 1..].to_vec())
        }),
        b"request\0method" => request(":method"),
        b"request\0host" => request(":authority"),
        b"request\0scheme" => request(":scheme"),
        b"request\0id" => request("x-request-id"),
        b"request\0useragent" => request("user-agent"),
        b"request\0referer" => request("referer"),
        // Integers are 8 little-endian bytes, as Envoy serializes them.
        b"response\0code" => stream
            .response_headers
            .as_ref()
            .and_then(|m| m.iter().find(|(k, _)| k == ":status"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .map(|code| code.to_le_bytes().to_vec()),
        _ => None,
    }
}

/// `proxy_get_property`: stream properties, then ones derived from the
/// stream's headers, then worker, host and plugin properties; else NotFound.
///
/// # Safety
/// `path_data` readable, out-pointers writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_property(
    path_data: *const u8,
    path_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_get_property";
    // SAFETY: the module passes a readable buffer.
    let key = unsafe { input(path_data, path_size) }.to_vec();
    host_call(CALL, no_vm(CALL), |vm| {
        let value = property_value(vm, &key);
        let value = value.ok_or(Status::NotFound)?;
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&value, return_value_data, return_value_size) }
    })
}

/// A property as `proxy_get_property` and CEL see it: the stream's, one
/// derived from its headers, or the process-wide ones.
fn property_value(vm: &VmHandle, key: &[u8]) -> Option<Vec<u8>> {
    let config = &vm.host.inner.config;
    let explicit = {
        let mut state = vm.state();
        let from_stream = state
            .effective_stream()
            .and_then(|s| s.properties.get(key).cloned());
        from_stream.or_else(|| state.properties.get(key).cloned())
    };
    explicit
        .or_else(|| derived_property(vm, key))
        .or_else(|| config.properties.get(key).cloned())
        .or_else(|| match key {
            b"plugin_name" if config.plugin_name.is_empty() => {
                Some(config.root_id.clone().into_bytes())
            }
            b"plugin_name" => Some(config.plugin_name.clone().into_bytes()),
            b"plugin_root_id" => Some(config.root_id.clone().into_bytes()),
            b"plugin_vm_id" => Some(config.vm_id.clone().into_bytes()),
            _ => None,
        })
}

/// `proxy_set_property`: stored on the stream (Envoy keeps it in the
/// stream's filter state); outside a stream Envoy answers NotFound.
///
/// # Safety
/// Input buffers must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_set_property(
    path_data: *const u8,
    path_size: usize,
    value_data: *const u8,
    value_size: usize,
) -> u32 {
    const CALL: &str = "proxy_set_property";
    // SAFETY: the module passes readable buffers.
    let (key, value) = unsafe {
        (
            input(path_data, path_size).to_vec(),
            input(value_data, value_size).to_vec(),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let mut state = vm.state();
        let context = state.effective;
        match state.effective_stream() {
            Some(stream) => {
                stream.properties.insert(key, value);
                Ok(())
            }
            None => {
                drop(state);
                Err(vm.fail(
                    CALL,
                    Status::NotFound,
                    format!("context {context} has no stream to hold the property"),
                ))
            }
        }
    })
}

// ---- shared data and queues ----

/// `proxy_get_shared_data`: value and CAS, or NotFound.
///
/// # Safety
/// `key_data` readable, out-pointers writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_shared_data(
    key_data: *const u8,
    key_size: usize,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
    return_cas: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_get_shared_data";
    // SAFETY: the module passes a readable buffer.
    let key = text(unsafe { input(key_data, key_size) });
    host_call(CALL, no_vm(CALL), |vm| {
        let (value, cas) = vm.host.get_shared(&key).ok_or(Status::NotFound)?;
        // SAFETY: out-pointers from the module.
        unsafe {
            put_bytes(&value, return_value_data, return_value_size)?;
            put(return_cas, cas);
        }
        Ok(())
    })
}

/// `proxy_set_shared_data`: CAS 0 is unconditional; a stale CAS on an
/// existing key is `CasMismatch`.
///
/// # Safety
/// Input buffers must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_set_shared_data(
    key_data: *const u8,
    key_size: usize,
    value_data: *const u8,
    value_size: usize,
    cas: u32,
) -> u32 {
    const CALL: &str = "proxy_set_shared_data";
    // SAFETY: the module passes readable buffers.
    let (key, value) = unsafe {
        (
            text(input(key_data, key_size)),
            input(value_data, value_size),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| vm.host.set_shared(&key, value, cas))
}

/// `proxy_register_shared_queue`: id of `(vm_id, name)`; the registering
/// context is notified of new items (the last registrant wins, as in Envoy).
///
/// # Safety
/// `name_data` readable, `return_id` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_register_shared_queue(
    name_data: *const u8,
    name_size: usize,
    return_id: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_register_shared_queue";
    // SAFETY: the module passes a readable buffer.
    let name = text(unsafe { input(name_data, name_size) });
    host_call(CALL, no_vm(CALL), |vm| {
        let context = vm.state().effective;
        let id = vm.host.register_queue(&name, (vm.worker, context));
        // SAFETY: out-pointer from the module.
        unsafe { put(return_id, id) };
        Ok(())
    })
}

/// `proxy_resolve_shared_queue`: id of a registered queue, or NotFound.
///
/// # Safety
/// Input buffers readable, `return_id` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_resolve_shared_queue(
    vm_id_data: *const u8,
    vm_id_size: usize,
    name_data: *const u8,
    name_size: usize,
    return_id: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_resolve_shared_queue";
    // SAFETY: the module passes readable buffers.
    let (vm_id, name) = unsafe {
        (
            text(input(vm_id_data, vm_id_size)),
            text(input(name_data, name_size)),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let id = vm
            .host
            .resolve_queue(&vm_id, &name)
            .ok_or(Status::NotFound)?;
        // SAFETY: out-pointer from the module.
        unsafe { put(return_id, id) };
        Ok(())
    })
}

/// `proxy_dequeue_shared_queue`: oldest item, `Empty`, or `NotFound`.
///
/// # Safety
/// Out-pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_dequeue_shared_queue(
    queue_id: u32,
    return_value_data: *mut *mut u8,
    return_value_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_dequeue_shared_queue";
    host_call(CALL, no_vm(CALL), |vm| {
        let item = vm.host.dequeue(queue_id)?;
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&item, return_value_data, return_value_size) }
    })
}

/// `proxy_enqueue_shared_queue`: appends and posts `proxy_on_queue_ready` to
/// the registrant's worker (run after that worker's current or next call).
///
/// # Safety
/// `value_data` must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_enqueue_shared_queue(
    queue_id: u32,
    value_data: *const u8,
    value_size: usize,
) -> u32 {
    const CALL: &str = "proxy_enqueue_shared_queue";
    // SAFETY: the module passes a readable buffer.
    let value = unsafe { input(value_data, value_size) };
    host_call(CALL, no_vm(CALL), |vm| vm.host.enqueue(queue_id, value))
}

// ---- stream control ----

/// `proxy_continue_stream`: resumes a paused request or response. Like Envoy,
/// it drops the filter's access to the request maps and body.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_continue_stream(stream_type: u32) -> u32 {
    const CALL: &str = "proxy_continue_stream";
    host_call(CALL, no_vm(CALL), |vm| {
        let mut state = vm.state();
        let Some(stream) = state.effective_stream() else {
            // Envoy: no stream callbacks on a root context, nothing to do.
            return Ok(());
        };
        match stream_type {
            0 | 1 => {
                if stream_type == 0 {
                    stream.request_resumes += 1;
                } else {
                    stream.response_resumes += 1;
                    flush_response_body(stream);
                }
                flush_request_body(stream);
                stream.live.request_headers = false;
                stream.live.request_trailers = false;
                Ok(())
            }
            // Network streams are not emulated.
            2 | 3 => Ok(()),
            _ => {
                drop(state);
                Err(vm.fail(
                    CALL,
                    Status::BadArgument,
                    format!("stream type {stream_type}"),
                ))
            }
        }
    })
}

/// `proxy_close_stream`: resets the HTTP stream.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_close_stream(stream_type: u32) -> u32 {
    const CALL: &str = "proxy_close_stream";
    host_call(CALL, no_vm(CALL), |vm| {
        if stream_type > 3 {
            return Err(vm.fail(
                CALL,
                Status::BadArgument,
                format!("stream type {stream_type}"),
            ));
        }
        if stream_type <= 1
            && let Some(stream) = vm.state().effective_stream()
        {
            stream.reset = true;
        }
        Ok(())
    })
}

/// `proxy_send_local_response`: recorded on the stream, then (after the
/// current call, as Envoy defers it) encoded through this filter's response
/// callbacks. From a root context Envoy silently ignores it.
///
/// # Safety
/// Input buffers must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_send_local_response(
    status_code: u32,
    status_code_details_data: *const u8,
    status_code_details_size: usize,
    body_data: *const u8,
    body_size: usize,
    headers_data: *const u8,
    headers_size: usize,
    grpc_status: i32,
) -> u32 {
    const CALL: &str = "proxy_send_local_response";
    // SAFETY: the module passes readable buffers.
    let (details, body, headers) = unsafe {
        (
            text(input(status_code_details_data, status_code_details_size)),
            input(body_data, body_size).to_vec(),
            input(headers_data, headers_size),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let Some(headers) = wire::deserialize_map(headers) else {
            return Err(vm.fail(CALL, Status::BadArgument, "malformed headers".into()));
        };
        let reply = LocalResponse {
            status: status_code,
            details,
            body,
            headers: headers
                .into_iter()
                .map(|(k, v)| (wire::lower(&k), v))
                .collect(),
            grpc_status: (0..=16).contains(&grpc_status).then_some(grpc_status),
        };
        let mut state = vm.state();
        if let Some(stream) = state.effective_stream() {
            // Once the response has started Envoy can only reset the stream.
            if stream.response_headers.is_some() {
                stream.reset = true;
            } else {
                stream.pending_local_reply = true;
            }
            stream.local_response = Some(reply);
        }
        Ok(())
    })
}

// ---- callouts ----

fn lossy(map: HeaderMap) -> Vec<(String, String)> {
    map.into_iter().map(|(k, v)| (k, text(&v))).collect()
}

/// `proxy_http_call`: validated like Envoy (known cluster, `:method`,
/// `:path` and `:authority` present) and recorded for the test to answer.
///
/// # Safety
/// Input buffers readable, `return_token` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_http_call(
    upstream_data: *const u8,
    upstream_size: usize,
    headers_data: *const u8,
    headers_size: usize,
    body_data: *const u8,
    body_size: usize,
    trailers_data: *const u8,
    trailers_size: usize,
    timeout: u32,
    return_token: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_http_call";
    // SAFETY: the module passes readable buffers.
    let (upstream, headers, body, trailers) = unsafe {
        (
            text(input(upstream_data, upstream_size)),
            input(headers_data, headers_size),
            input(body_data, body_size).to_vec(),
            input(trailers_data, trailers_size),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let (Some(headers), Some(trailers)) = (
            wire::deserialize_map(headers),
            wire::deserialize_map(trailers),
        ) else {
            return Err(vm.fail(CALL, Status::BadArgument, "malformed headers".into()));
        };
        if !vm.host.cluster_known(&upstream) {
            return Err(vm.fail(
                CALL,
                Status::BadArgument,
                format!("unknown cluster {upstream:?}"),
            ));
        }
        let headers: HeaderMap = headers
            .into_iter()
            .map(|(k, v)| (wire::lower(&k), v))
            .collect();
        for required in [":method", ":path", ":authority"] {
            if !headers.iter().any(|(k, _)| k == required) {
                return Err(vm.fail(
                    CALL,
                    Status::BadArgument,
                    format!("missing {required} header"),
                ));
            }
        }
        let context_id = vm.state().effective;
        let token = {
            let mut host = vm.host.state();
            let token = host.next_http_token();
            host.http_calls.push(HttpCall {
                token,
                worker: vm.worker,
                context_id,
                upstream,
                headers: lossy(headers),
                body,
                trailers: lossy(trailers),
                timeout: Duration::from_millis(timeout.into()),
            });
            token
        };
        // SAFETY: out-pointer from the module.
        unsafe { put(return_token, token) };
        Ok(())
    })
}

/// `proxy_grpc_call`: recorded for the test to answer; an unknown cluster is
/// `ParseFailure` (Envoy first tries to parse it as a `GrpcService`).
///
/// # Safety
/// Input buffers readable, `return_callout_id` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_grpc_call(
    upstream_data: *const u8,
    upstream_size: usize,
    service_name_data: *const u8,
    service_name_size: usize,
    method_name_data: *const u8,
    method_name_size: usize,
    initial_metadata_data: *const u8,
    initial_metadata_size: usize,
    message_data: *const u8,
    message_size: usize,
    timeout: u32,
    return_callout_id: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_grpc_call";
    // SAFETY: the module passes readable buffers.
    let (upstream, service, method, metadata, message) = unsafe {
        (
            text(input(upstream_data, upstream_size)),
            text(input(service_name_data, service_name_size)),
            text(input(method_name_data, method_name_size)),
            input(initial_metadata_data, initial_metadata_size),
            input(message_data, message_size).to_vec(),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let Some(metadata) = wire::deserialize_map(metadata) else {
            return Err(vm.fail(CALL, Status::ParseFailure, "malformed metadata".into()));
        };
        if !vm.host.cluster_known(&upstream) {
            return Err(vm.fail(
                CALL,
                Status::ParseFailure,
                format!("unknown cluster {upstream:?}"),
            ));
        }
        let context_id = vm.state().effective;
        let token = {
            let mut host = vm.host.state();
            let token = host.next_grpc_token(false);
            host.grpc_calls.push(GrpcCall {
                token,
                worker: vm.worker,
                context_id,
                upstream,
                service,
                method,
                metadata,
                message,
                timeout: Duration::from_millis(timeout.into()),
            });
            token
        };
        // SAFETY: out-pointer from the module.
        unsafe { put(return_callout_id, token) };
        Ok(())
    })
}

/// `proxy_grpc_stream`: opens a recorded stream (see `Worker::grpc_stream_event`).
///
/// # Safety
/// Input buffers readable, `return_stream_id` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_grpc_stream(
    upstream_data: *const u8,
    upstream_size: usize,
    service_name_data: *const u8,
    service_name_size: usize,
    method_name_data: *const u8,
    method_name_size: usize,
    initial_metadata_data: *const u8,
    initial_metadata_size: usize,
    return_stream_id: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_grpc_stream";
    // SAFETY: the module passes readable buffers.
    let (upstream, service, method, metadata) = unsafe {
        (
            text(input(upstream_data, upstream_size)),
            text(input(service_name_data, service_name_size)),
            text(input(method_name_data, method_name_size)),
            input(initial_metadata_data, initial_metadata_size),
        )
    };
    host_call(CALL, no_vm(CALL), |vm| {
        let Some(metadata) = wire::deserialize_map(metadata) else {
            return Err(vm.fail(CALL, Status::ParseFailure, "malformed metadata".into()));
        };
        if !vm.host.cluster_known(&upstream) {
            return Err(vm.fail(
                CALL,
                Status::ParseFailure,
                format!("unknown cluster {upstream:?}"),
            ));
        }
        let context_id = vm.state().effective;
        let token = {
            let mut host = vm.host.state();
            let token = host.next_grpc_token(true);
            host.grpc_streams.push(GrpcStream {
                token,
                worker: vm.worker,
                context_id,
                upstream,
                service,
                method,
                metadata,
                sent: Vec::new(),
                local_closed: false,
            });
            token
        };
        // SAFETY: out-pointer from the module.
        unsafe { put(return_stream_id, token) };
        Ok(())
    })
}

/// `proxy_grpc_send`: records a message on an open stream.
///
/// # Safety
/// `message_ptr` must be readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_grpc_send(
    token: u32,
    message_ptr: *const u8,
    message_len: usize,
    end_stream: bool,
) -> u32 {
    const CALL: &str = "proxy_grpc_send";
    // SAFETY: the module passes a readable buffer.
    let message = unsafe { input(message_ptr, message_len) }.to_vec();
    host_call(CALL, no_vm(CALL), |vm| {
        if token % 2 == 1 {
            return Err(vm.fail(
                CALL,
                Status::BadArgument,
                format!("{token} is a unary call"),
            ));
        }
        let mut host = vm.host.state();
        let stream = host
            .grpc_streams
            .iter_mut()
            .find(|s| s.token == token && s.worker == vm.worker)
            .ok_or(Status::NotFound)?;
        stream.sent.push(message);
        stream.local_closed |= end_stream;
        Ok(())
    })
}

/// Removes a pending unary call or stream of this worker.
fn drop_callout(vm: &VmHandle, token: u32, close_only: bool) -> HostResult {
    let mut host = vm.host.state();
    if token % 2 == 1 {
        let before = host.grpc_calls.len();
        host.grpc_calls
            .retain(|c| !(c.token == token && c.worker == vm.worker));
        return if host.grpc_calls.len() < before {
            Ok(())
        } else {
            Err(Status::NotFound)
        };
    }
    let position = host
        .grpc_streams
        .iter()
        .position(|s| s.token == token && s.worker == vm.worker)
        .ok_or(Status::NotFound)?;
    if close_only {
        host.grpc_streams[position].local_closed = true;
    } else {
        host.grpc_streams.remove(position);
    }
    Ok(())
}

/// `proxy_grpc_cancel`: drops a pending call or stream (no more callbacks).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_grpc_cancel(token_id: u32) -> u32 {
    const CALL: &str = "proxy_grpc_cancel";
    host_call(CALL, no_vm(CALL), |vm| drop_callout(vm, token_id, false))
}

/// `proxy_grpc_close`: cancels a unary call, half-closes a stream.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_grpc_close(token_id: u32) -> u32 {
    const CALL: &str = "proxy_grpc_close";
    host_call(CALL, no_vm(CALL), |vm| drop_callout(vm, token_id, true))
}

/// `proxy_get_status`: the status of the failure being delivered (gRPC
/// close, reset HTTP callout); `(0, none)` otherwise.
///
/// # Safety
/// Out-pointers must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_status(
    return_code: *mut u32,
    return_message_data: *mut *mut u8,
    return_message_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_get_status";
    host_call(CALL, no_vm(CALL), |vm| {
        let (code, message) = vm.state().status.clone();
        // SAFETY: out-pointers from the module.
        unsafe {
            put(return_code, code);
            put_bytes(&message, return_message_data, return_message_size)
        }
    })
}

// ---- contexts, foreign functions ----

/// `proxy_set_effective_context`: the root or a live stream of this VM.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_effective_context(context_id: u32) -> u32 {
    const CALL: &str = "proxy_set_effective_context";
    host_call(CALL, no_vm(CALL), |vm| {
        let mut state = vm.state();
        if state.is_known_context(context_id) {
            state.effective = context_id;
            Ok(())
        } else {
            drop(state);
            Err(vm.fail(
                CALL,
                Status::BadArgument,
                format!("no live context {context_id}"),
            ))
        }
    })
}

/// `proxy_done`: the root context finished what `on_done` deferred.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_done() -> u32 {
    host_call("proxy_done", no_vm("proxy_done"), |vm| {
        let mut state = vm.state();
        match state.effective_stream() {
            Some(stream) => stream.done_calls += 1,
            None => state.root_done_calls += 1,
        }
        Ok(())
    })
}

/// `proxy_call_foreign_function`: `clear_route_cache` (counted per stream),
/// and, unless the host was built without CEL, `expr_create`,
/// `expr_evaluate` and `expr_delete` for CEL lists of attributes (see
/// [`parse_cel_list`]); other names are NotFound, as in an Envoy without
/// them.
///
/// # Safety
/// Input buffers readable, out-pointers writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_call_foreign_function(
    function_name_data: *const u8,
    function_name_size: usize,
    arguments_data: *const u8,
    arguments_size: usize,
    results_data: *mut *mut u8,
    results_size: *mut usize,
) -> u32 {
    const CALL: &str = "proxy_call_foreign_function";
    // SAFETY: the module passes readable buffers.
    let name = text(unsafe { input(function_name_data, function_name_size) });
    let args = unsafe { input(arguments_data, arguments_size) }.to_vec();
    host_call(CALL, no_vm(CALL), |vm| {
        let cel = vm.host.inner.config.cel;
        let result = match name.as_str() {
            "clear_route_cache" => {
                if let Some(stream) = vm.state().effective_stream() {
                    stream.route_cache_clears += 1;
                }
                Vec::new()
            }
            "expr_create" if cel => {
                let elements = parse_cel_list(&text(&args)).ok_or(Status::BadArgument)?;
                let mut state = vm.state();
                state.expressions.push(elements);
                let token = u32::try_from(state.expressions.len() - 1)
                    .map_err(|_| Status::InternalFailure)?;
                token.to_le_bytes().to_vec()
            }
            "expr_evaluate" if cel => {
                let token: [u8; 4] = args
                    .as_slice()
                    .try_into()
                    .map_err(|_| Status::BadArgument)?;
                let elements = vm
                    .state()
                    .expressions
                    .get(u32::from_le_bytes(token) as usize)
                    .cloned()
                    .ok_or(Status::NotFound)?;
                let mut list = Vec::new();
                for (key, has) in elements {
                    let element = match property_value(vm, &key) {
                        // `has(x) ? [x] : []` reads as a nested list.
                        Some(v) if has => cel_list(&[v]),
                        Some(v) => v,
                        None if has => cel_list(&[]),
                        // CEL: no such attribute, the whole list errs.
                        None => return Err(Status::InternalFailure),
                    };
                    list.push(element);
                }
                cel_list(&list)
            }
            "expr_delete" if cel => Vec::new(),
            _ => return Err(Status::NotFound),
        };
        // SAFETY: out-pointers from the module.
        unsafe { put_bytes(&result, results_data, results_size) }
    })
}

/// The CEL this emulator evaluates: a list whose elements are each an
/// attribute path (`request.protocol`) or `has(p) ? [p] : []`. Per element,
/// the property key and whether absence is an empty list; `None` for anything
/// else (Envoy would parse more; the SDK sends only this).
fn parse_cel_list(expr: &str) -> Option<Vec<(Vec<u8>, bool)>> {
    let inner = expr.trim().strip_prefix('[')?.strip_suffix(']')?;
    let path = |p: &str| {
        let p = p.trim();
        let ok = !p.is_empty()
            && p.split('.').all(|s| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        ok.then(|| p.replace('.', "\0").into_bytes())
    };
    inner
        .split(',')
        .map(|e| {
            let e = e.trim();
            match e.strip_prefix("has(") {
                Some(rest) => {
                    let (tested, rest) = rest.split_once(')')?;
                    let (then, otherwise) = rest.trim().strip_prefix('?')?.split_once(':')?;
                    let then = then.trim().strip_prefix('[')?.strip_suffix(']')?;
                    let key = path(tested)?;
                    (path(then)? == key && otherwise.trim() == "[]").then_some((key, true))
                }
                None => Some((path(e)?, false)),
            }
        })
        .collect()
}

/// A CEL list as Envoy 1.36+ serialises one for `expr_evaluate`: like a
/// header map whose names are the elements, each serialised as
/// `proxy_get_property` would (strings raw, integers 8 bytes), with empty
/// values.
fn cel_list(elements: &[Vec<u8>]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = elements.iter().map(|e| (e.as_slice(), &[][..])).collect();
    crate::wire::serialize_map(&pairs)
}

// ---- metrics ----

/// `proxy_define_metric`: the same id for the same type and name in every worker.
///
/// # Safety
/// `name_data` readable, `return_id` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_define_metric(
    metric_type: u32,
    name_data: *const u8,
    name_size: usize,
    return_id: *mut u32,
) -> u32 {
    const CALL: &str = "proxy_define_metric";
    // SAFETY: the module passes a readable buffer.
    let name = text(unsafe { input(name_data, name_size) });
    host_call(CALL, no_vm(CALL), |vm| {
        let id = vm
            .host
            .define_metric(metric_type, &name)
            .map_err(|status| {
                vm.fail(
                    CALL,
                    status,
                    format!("metric type {metric_type} for {name:?}"),
                )
            })?;
        // SAFETY: out-pointer from the module.
        unsafe { put(return_id, id) };
        Ok(())
    })
}

/// `proxy_get_metric`: counter or gauge value.
///
/// # Safety
/// `return_value` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32 {
    const CALL: &str = "proxy_get_metric";
    host_call(CALL, no_vm(CALL), |vm| {
        let value = vm.host.get_metric(metric_id)?;
        // SAFETY: out-pointer from the module.
        unsafe { put(return_value, value) };
        Ok(())
    })
}

/// `proxy_record_metric`: counters add, gauges set, histograms record.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_record_metric(metric_id: u32, value: u64) -> u32 {
    const CALL: &str = "proxy_record_metric";
    host_call(CALL, no_vm(CALL), |vm| {
        vm.host.record_metric(metric_id, value)
    })
}

/// `proxy_increment_metric`: counters need a positive offset (else
/// BadArgument, as in Envoy); gauges take either sign.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32 {
    const CALL: &str = "proxy_increment_metric";
    host_call(CALL, no_vm(CALL), |vm| {
        vm.host
            .increment_metric(metric_id, offset)
            .map_err(|status| {
                if status == Status::BadArgument {
                    vm.fail(
                        CALL,
                        status,
                        format!("offset {offset} for metric {metric_id}"),
                    )
                } else {
                    status
                }
            })
    })
}
