//! Panic-free host calls.
//!
//! Every function returns the host's status as a [`HostError`] instead of
//! panicking; header values stay bytes (clients can send anything). This is
//! the only module that calls the host's imports ([`crate::abi`]); the
//! callbacks the host makes into the module are in [`crate::dispatch`].

use crate::abi;
use crate::wire;
use std::ptr::null_mut;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header maps of the ABI (`proxy_get_header_map_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    HttpRequestHeaders = 0,
    HttpRequestTrailers = 1,
    HttpResponseHeaders = 2,
    HttpResponseTrailers = 3,
    GrpcReceiveInitialMetadata = 4,
    GrpcReceiveTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

/// Buffers of the ABI (`proxy_get_buffer_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

/// Log levels of the ABI (`proxy_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Metric kinds of the ABI (`proxy_define_metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// Streams of the ABI (`proxy_continue_stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamType {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

use crate::status::code as status;
pub use crate::status::{HostError, HostResult, code};

fn check(call: &'static str, status: u32) -> HostResult<()> {
    if status == status::OK {
        Ok(())
    } else {
        Err(HostError { call, status })
    }
}

/// Takes ownership of a buffer the host allocated through the module's
/// allocator (`proxy_on_memory_allocate`), as proxy-wasm itself does.
///
/// # Safety
/// `ptr` must be null or come from the host with exactly `len` bytes.
unsafe fn take(ptr: *mut u8, len: usize) -> Option<Vec<u8>> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: the host allocated `len` bytes with the module's allocator.
        Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
    }
}

// ---- logging and time ----

/// Writes one line to Envoy's log. Failures are ignored: there is nowhere
/// else to report them.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length describe `message`.
    unsafe {
        abi::proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// Envoy's current log level for this plugin.
pub fn log_level() -> HostResult<LogLevel> {
    let mut level = 0u32;
    // SAFETY: out-pointer to a local.
    check("proxy_get_log_level", unsafe {
        abi::proxy_get_log_level(&mut level)
    })?;
    Ok(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    })
}

/// Host wall-clock time in nanoseconds since the Unix epoch (0 if the host
/// refuses, which Envoy never does).
pub fn now_nanos() -> u64 {
    let mut t = 0u64;
    // SAFETY: out-pointer to a local.
    unsafe {
        abi::proxy_get_current_time_nanoseconds(&mut t);
    }
    t
}

/// Host wall-clock time.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(now_nanos())
}

/// Asks for `on_tick` every `period` on this VM's root context (0 stops it).
pub fn set_tick_period(period: Duration) -> HostResult<()> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain value.
    check("proxy_set_tick_period_milliseconds", unsafe {
        abi::proxy_set_tick_period_milliseconds(ms)
    })
}

// ---- buffers ----

/// Up to `max` bytes of a buffer from `start`; `None` when there is none.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> HostResult<Option<Vec<u8>>> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the buffer is taken exactly once.
    let status =
        unsafe { abi::proxy_get_buffer_bytes(kind as u32, start, max, &mut ptr, &mut len) };
    match status {
        status::OK => Ok(unsafe { take(ptr, len) }),
        status::NOT_FOUND | status::EMPTY => Ok(None),
        s => Err(HostError {
            call: "proxy_get_buffer_bytes",
            status: s,
        }),
    }
}

// ---- header maps ----

/// All pairs of a header map; values as bytes.
pub fn header_pairs(map: MapType) -> HostResult<Vec<(String, Vec<u8>)>> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the buffer is taken exactly once.
    let status = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut ptr, &mut len) };
    check("proxy_get_header_map_pairs", status)?;
    let bytes = unsafe { take(ptr, len) }.unwrap_or_default();
    wire::decode_map(&bytes).ok_or(HostError {
        call: "proxy_get_header_map_pairs",
        status: status::SERIALIZATION_FAILURE,
    })
}

/// A whole header map in one call, kept as Envoy serialised it
/// ([`HeaderMap::from_wire`]: no copy per header).
pub fn header_map(map: MapType) -> HostResult<crate::headers::HeaderMap> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the buffer is taken exactly once.
    let status = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut ptr, &mut len) };
    check("proxy_get_header_map_pairs", status)?;
    let bytes = unsafe { take(ptr, len) }.unwrap_or_default();
    crate::headers::HeaderMap::from_wire(bytes).ok_or(HostError {
        call: "proxy_get_header_map_pairs",
        status: status::SERIALIZATION_FAILURE,
    })
}

/// One header's value; `None` when absent.
pub fn header(map: MapType, name: &str) -> HostResult<Option<Vec<u8>>> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: `name` is valid for its length; out-pointers to locals.
    let status = unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut ptr, &mut len)
    };
    match status {
        // Envoy answers Ok with no data for an empty value.
        status::OK => Ok(Some(unsafe { take(ptr, len) }.unwrap_or_default())),
        status::NOT_FOUND => Ok(None),
        s => Err(HostError {
            call: "proxy_get_header_map_value",
            status: s,
        }),
    }
}

/// Sets a header, replacing every existing value.
pub fn set_header(map: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers and lengths describe live slices.
    check("proxy_replace_header_map_value", unsafe {
        abi::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Appends a header value (keeps existing ones).
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> HostResult<()> {
    // SAFETY: pointers and lengths describe live slices.
    check("proxy_add_header_map_value", unsafe {
        abi::proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a header (absent is fine).
pub fn remove_header(map: MapType, name: &str) -> HostResult<()> {
    // SAFETY: pointer and length describe `name`.
    let status =
        unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    match status {
        status::OK | status::NOT_FOUND => Ok(()),
        s => Err(HostError {
            call: "proxy_remove_header_map_value",
            status: s,
        }),
    }
}

// ---- properties ----

/// A property such as `["source", "address"]`; `None` when Envoy has none.
pub fn property(path: &[&str]) -> HostResult<Option<Vec<u8>>> {
    let encoded = wire::encode_path(path);
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: `encoded` is live; out-pointers to locals.
    let status =
        unsafe { abi::proxy_get_property(encoded.as_ptr(), encoded.len(), &mut ptr, &mut len) };
    match status {
        status::OK => Ok(Some(unsafe { take(ptr, len) }.unwrap_or_default())),
        status::NOT_FOUND | status::EMPTY => Ok(None),
        s => Err(HostError {
            call: "proxy_get_property",
            status: s,
        }),
    }
}

/// Sets a property of the stream. In Envoy a one-segment path `[name]` is
/// filter state `wasm.<name>`, a bytes value that Envoy's access logs
/// print with `%FILTER_STATE(wasm.<name>:PLAIN)%`.
/// Errors: `proxy_set_property`'s status (no stream, a read-only name).
pub fn set_property(path: &[&str], value: &[u8]) -> HostResult<()> {
    // One segment is its own encoding: no copy.
    let encoded;
    let key: &[u8] = match path {
        [one] => one.as_bytes(),
        _ => {
            encoded = wire::encode_path(path);
            &encoded
        }
    };
    // SAFETY: both buffers are live for the call.
    let status =
        unsafe { abi::proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    check("proxy_set_property", status)
}

// ---- shared data ----

/// A shared-data value and its CAS token; `(None, 0)` when the key is absent.
pub fn shared_data(key: &str) -> HostResult<(Option<Vec<u8>>, u32)> {
    let (mut ptr, mut len, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: `key` is live; out-pointers to locals.
    let status = unsafe {
        abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas)
    };
    match status {
        status::OK => Ok((unsafe { take(ptr, len) }, cas)),
        status::NOT_FOUND => Ok((None, 0)),
        s => Err(HostError {
            call: "proxy_get_shared_data",
            status: s,
        }),
    }
}

/// Outcome of a conditional shared-data write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Written,
    /// Someone wrote the key after our read: read again and retry.
    Conflict,
}

/// Writes `value` if the key's CAS token is still `cas` (0 = unconditional).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> HostResult<CasOutcome> {
    // SAFETY: pointers and lengths describe live slices.
    let status = unsafe {
        abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    };
    match status {
        status::OK => Ok(CasOutcome::Written),
        status::CAS_MISMATCH => Ok(CasOutcome::Conflict),
        s => Err(HostError {
            call: "proxy_set_shared_data",
            status: s,
        }),
    }
}

// ---- shared queues ----

/// Registers (or re-opens) a queue owned by this VM; `on_queue_ready` fires here.
pub fn register_queue(name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: `name` is live; out-pointer to a local.
    check("proxy_register_shared_queue", unsafe {
        abi::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

/// Finds a queue registered by VM `vm_id`.
pub fn resolve_queue(vm_id: &str, name: &str) -> HostResult<Option<u32>> {
    let mut id = 0u32;
    // SAFETY: slices are live; out-pointer to a local.
    let status = unsafe {
        abi::proxy_resolve_shared_queue(
            vm_id.as_ptr(),
            vm_id.len(),
            name.as_ptr(),
            name.len(),
            &mut id,
        )
    };
    match status {
        status::OK => Ok(Some(id)),
        status::NOT_FOUND => Ok(None),
        s => Err(HostError {
            call: "proxy_resolve_shared_queue",
            status: s,
        }),
    }
}

pub fn enqueue(queue: u32, value: &[u8]) -> HostResult<()> {
    // SAFETY: `value` is live.
    check("proxy_enqueue_shared_queue", unsafe {
        abi::proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len())
    })
}

/// The next item, or `None` when the queue is empty.
pub fn dequeue(queue: u32) -> HostResult<Option<Vec<u8>>> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the buffer is taken exactly once.
    let status = unsafe { abi::proxy_dequeue_shared_queue(queue, &mut ptr, &mut len) };
    match status {
        status::OK => Ok(Some(unsafe { take(ptr, len) }.unwrap_or_default())),
        status::EMPTY => Ok(None),
        s => Err(HostError {
            call: "proxy_dequeue_shared_queue",
            status: s,
        }),
    }
}

// ---- streams ----

/// Resumes a paused request or response.
pub fn resume(stream: StreamType) -> HostResult<()> {
    // SAFETY: plain value.
    check("proxy_continue_stream", unsafe {
        abi::proxy_continue_stream(stream as u32)
    })
}

/// Ends the stream with a local reply. `details` shows up as
/// `%RESPONSE_CODE_DETAILS%` in Envoy's access log.
pub fn send_local_response(
    status_code: u32,
    details: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> HostResult<()> {
    let headers = wire::encode_map(headers);
    // SAFETY: pointers and lengths describe live slices.
    check("proxy_send_local_response", unsafe {
        abi::proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// The gRPC status of the callout being answered: code and message.
pub fn grpc_status() -> HostResult<(u32, Option<Vec<u8>>)> {
    let (mut code, mut ptr, mut len) = (0u32, null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the buffer is taken exactly once.
    check("proxy_get_status", unsafe {
        abi::proxy_get_status(&mut code, &mut ptr, &mut len)
    })?;
    Ok((code, unsafe { take(ptr, len) }))
}

/// Calls an Envoy foreign function such as `clear_route_cache`.
pub fn call_foreign_function(name: &str, args: &[u8]) -> HostResult<Option<Vec<u8>>> {
    let (mut ptr, mut len) = (null_mut(), 0usize);
    // SAFETY: slices are live; out-pointers to locals.
    check("proxy_call_foreign_function", unsafe {
        abi::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            args.as_ptr(),
            args.len(),
            &mut ptr,
            &mut len,
        )
    })?;
    Ok(unsafe { take(ptr, len) })
}

/// Makes `context_id` the context later host calls act on (Envoy delivers
/// callout answers on another context than the one that sent them).
pub fn set_effective_context(context_id: u32) -> HostResult<()> {
    // SAFETY: plain value.
    check("proxy_set_effective_context", unsafe {
        abi::proxy_set_effective_context(context_id)
    })
}

// ---- metrics ----

pub fn define_metric(kind: MetricType, name: &str) -> HostResult<u32> {
    let mut id = 0u32;
    // SAFETY: `name` is live; out-pointer to a local.
    check("proxy_define_metric", unsafe {
        abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> HostResult<()> {
    // SAFETY: plain values.
    check("proxy_increment_metric", unsafe {
        abi::proxy_increment_metric(id, offset)
    })
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    // SAFETY: plain values.
    check("proxy_record_metric", unsafe {
        abi::proxy_record_metric(id, value)
    })
}

pub fn metric_value(id: u32) -> HostResult<u64> {
    let mut v = 0u64;
    // SAFETY: out-pointer to a local.
    check("proxy_get_metric", unsafe {
        abi::proxy_get_metric(id, &mut v)
    })?;
    Ok(v)
}

// ---- callouts ----

fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
}

/// Dispatches an HTTP call to Envoy cluster `cluster`; the answer arrives
/// as `proxy_on_http_call_response` on the calling context, with the
/// returned token. Envoy refuses with BadArgument for an unknown cluster
/// or missing `:method`, `:path`, `:authority`.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> HostResult<u32> {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let headers = wire::encode_map(&pairs);
    let trailers = wire::encode_map::<&str, &[u8]>(&[]);
    let body = body.unwrap_or_default();
    let mut token = 0u32;
    // SAFETY: pointers and lengths describe live slices; out-pointer to a local.
    check("proxy_http_call", unsafe {
        abi::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms(timeout),
            &mut token,
        )
    })?;
    crate::dispatch::callout_sent(crate::dispatch::Callout::Http, token);
    Ok(token)
}

/// Dispatches a unary gRPC call; the answer arrives as `proxy_on_grpc_receive`
/// (success) or `proxy_on_grpc_close` (failure) on the calling context.
pub fn dispatch_grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    message: &[u8],
    timeout: Duration,
) -> HostResult<u32> {
    let metadata = wire::encode_map(metadata);
    let mut token = 0u32;
    // SAFETY: pointers and lengths describe live slices; out-pointer to a local.
    check("proxy_grpc_call", unsafe {
        abi::proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms(timeout),
            &mut token,
        )
    })?;
    crate::dispatch::callout_sent(crate::dispatch::Callout::Grpc, token);
    Ok(token)
}
