//! Request and response headers, local replies, route-cache control.
//!
//! Values are bytes: clients can send anything in a header, and proxy-wasm's
//! own string getters panic on invalid UTF-8. Failed host calls are logged at
//! debug level and read as "absent" / `false`, which is what a filter wants
//! in the middle of a request.

use crate::host::{self, MapType};

/// A header map of the current stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers(MapType);

/// The request headers (in request callbacks; readable later, e.g. in `on_log`).
pub const REQUEST: Headers = Headers(MapType::HttpRequestHeaders);
/// The response headers (in response callbacks and `on_log`).
pub const RESPONSE: Headers = Headers(MapType::HttpResponseHeaders);

fn logged<T>(r: host::HostResult<T>) -> Option<T> {
    r.map_err(|e| log::debug!("{e}")).ok()
}

impl Headers {
    /// A header's value (the first, when repeated).
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        logged(host::header(self.0, name)).flatten()
    }

    /// A header's value when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|v| String::from_utf8(v).ok())
    }

    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        logged(host::header_pairs(self.0)).unwrap_or_default()
    }

    /// Replaces every value of `name`.
    pub fn set(&self, name: &str, value: impl AsRef<[u8]>) -> bool {
        logged(host::set_header(self.0, name, value.as_ref())).is_some()
    }

    pub fn add(&self, name: &str, value: impl AsRef<[u8]>) -> bool {
        logged(host::add_header(self.0, name, value.as_ref())).is_some()
    }

    pub fn remove(&self, name: &str) -> bool {
        logged(host::remove_header(self.0, name)).is_some()
    }

    /// Removes a header the client may have forged, then sets ours: used for
    /// every header that carries a routing decision to Envoy.
    pub fn replace_trusted(&self, name: &str, value: impl AsRef<[u8]>) -> bool {
        self.remove(name) && self.set(name, value)
    }
}

/// Ends the request with a local reply.
pub fn send_local_response(
    status: u16,
    details: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> bool {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    logged(host::send_local_response(
        u32::from(status),
        details,
        &headers,
        body,
    ))
    .is_some()
}

/// Asks Envoy to pick the route again after a header change. ABI 0.2.1
/// modules get that implicitly on request-header writes; this makes it
/// explicit where the host offers the foreign function.
pub fn clear_route_cache() -> bool {
    logged(host::call_foreign_function("clear_route_cache", &[])).is_some()
}

/// Resumes a request paused by returning `Action::Pause`.
pub fn resume_request() -> bool {
    logged(host::resume(host::StreamType::HttpRequest)).is_some()
}

/// Resumes a paused response.
pub fn resume_response() -> bool {
    logged(host::resume(host::StreamType::HttpResponse)).is_some()
}
