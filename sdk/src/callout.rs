//! HTTP and unary gRPC callouts with per-call closures.
//!
//! proxy-wasm delivers every callout answer to one trait method of the
//! context that dispatched it, identified by a token. [`Callouts`] keeps the
//! closure per token, turns the answer into a `Result`, and calls it:
//! transport failures (unknown cluster, timeout, reset), non-2xx statuses and
//! undecodable gRPC messages arrive as [`CalloutError`]s, never as panics.
//!
//! Glue: own a `Callouts` in the context and forward
//! `on_http_call_response(token, _, body_size, _)` to
//! [`Callouts::on_http_response`] and `on_grpc_call_response(token, status,
//! size)` to [`Callouts::on_grpc_response`].

use crate::status::HostError;
#[cfg(feature = "host")]
pub use dispatch::Callouts;
#[cfg(feature = "host")]
pub(crate) use dispatch::{decode_grpc, read_grpc_answer, read_http_answer, send_grpc, send_http};
use std::fmt;
use std::time::Duration;

/// An HTTP request to an Envoy cluster.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub cluster: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl HttpRequest {
    /// `GET path` on `cluster`, with `:authority` = cluster name and a 5 s timeout.
    pub fn get(cluster: &str, path: &str) -> Self {
        HttpRequest {
            cluster: cluster.to_string(),
            method: "GET".into(),
            authority: cluster.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// `POST path` with a body.
    pub fn post(cluster: &str, path: &str, body: Vec<u8>) -> Self {
        HttpRequest {
            method: "POST".into(),
            body: Some(body),
            ..HttpRequest::get(cluster, path)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A callout's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a callout did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutError {
    /// Envoy refused to send it: unknown cluster (BadArgument) or bad headers.
    Dispatch(HostError),
    /// No response at all: the stream was reset or the connection lost
    /// (Envoy reports these as an answer without a `:status`). A timeout
    /// or an unreachable upstream arrives as Envoy's own 504 / 503 instead,
    /// i.e. as [`CalloutError::Status`].
    NoResponse,
    /// The upstream answered with a non-2xx status.
    Status(HttpResponse),
    /// gRPC call ended with a non-OK status.
    Grpc { code: u32, message: String },
    /// The answer arrived but could not be read or decoded.
    Invalid(String),
}

impl fmt::Display for CalloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalloutError::Dispatch(e) => write!(f, "callout not sent: {e}"),
            CalloutError::NoResponse => {
                write!(f, "no response (reset or connection lost)")
            }
            CalloutError::Status(r) => write!(f, "upstream answered {}", r.status),
            CalloutError::Grpc { code, message } => write!(f, "grpc status {code}: {message}"),
            CalloutError::Invalid(why) => write!(f, "invalid response: {why}"),
        }
    }
}

impl std::error::Error for CalloutError {}

impl CalloutError {
    /// What usually causes this error, for a log line an operator can act on.
    pub fn likely_cause(&self) -> &'static str {
        match self {
            // Envoy answers BadArgument, ParseFailure or InternalFailure
            // depending on the release and the call kind.
            CalloutError::Dispatch(_) => {
                "Envoy refused to start the call: the cluster is not defined in Envoy or has no \
                 healthy hosts"
            }
            CalloutError::NoResponse => "the connection was reset or refused",
            CalloutError::Status(r) if r.status == 503 => {
                "no healthy upstream, or the upstream is overloaded"
            }
            CalloutError::Status(r) if r.status == 504 => "the upstream did not answer in time",
            CalloutError::Status(_) => "the upstream answered with an error",
            CalloutError::Grpc { code: 14, .. } => "the service is unavailable (connect failure)",
            CalloutError::Grpc { code: 4, .. } => "the service did not answer in time",
            CalloutError::Grpc { .. } => "the service answered with a gRPC error",
            CalloutError::Invalid(_) => "the answer could not be decoded",
        }
    }
}

/// Turns what Envoy delivered into a result: no `:status` means the stream
/// failed in transport; non-2xx (Envoy's own 503/504 included) is an error
/// carrying the response.
pub fn classify_http(
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
) -> Result<HttpResponse, CalloutError> {
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .map(|(_, v)| v.clone());
    let Some(status) = status else {
        return Err(CalloutError::NoResponse);
    };
    let status: u16 = std::str::from_utf8(&status)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            CalloutError::Invalid(format!(":status {:?}", String::from_utf8_lossy(&status)))
        })?;
    let response = HttpResponse {
        status,
        headers,
        body,
    };
    if (200..300).contains(&status) {
        Ok(response)
    } else {
        Err(CalloutError::Status(response))
    }
}

#[cfg(feature = "host")]
mod dispatch {
    use super::{CalloutError, HttpRequest, HttpResponse, classify_http};
    use crate::host::{self, BufferType, MapType};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    type HttpDone = Box<dyn FnOnce(Result<HttpResponse, CalloutError>)>;
    type GrpcDone = Box<dyn FnOnce(Result<Vec<u8>, CalloutError>)>;

    enum Pending {
        Http(HttpDone),
        Grpc(GrpcDone),
    }

    /// Pending callouts of one context.
    #[derive(Default)]
    pub struct Callouts {
        pending: RefCell<HashMap<u32, Pending>>,
    }

    /// Sends `req` (pseudo-headers from its fields); the token, or Envoy's
    /// refusal.
    pub(crate) fn send_http(req: &HttpRequest) -> Result<u32, CalloutError> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", &req.method),
            (":path", &req.path),
            (":authority", &req.authority),
        ];
        headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        host::dispatch_http_call(&req.cluster, &headers, req.body.as_deref(), req.timeout)
            .map_err(CalloutError::Dispatch)
    }

    /// Sends a unary gRPC call with a prost message; the token, or Envoy's
    /// refusal.
    pub(crate) fn send_grpc<Req: prost::Message>(
        cluster: &str,
        service: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<u32, CalloutError> {
        let bytes = request.encode_to_vec();
        host::dispatch_grpc_call(cluster, service, method, &[], &bytes, timeout)
            .map_err(CalloutError::Dispatch)
    }

    /// A gRPC answer's message decoded as `Resp`.
    pub(crate) fn decode_grpc<Resp: prost::Message + Default>(
        answer: Result<Vec<u8>, CalloutError>,
    ) -> Result<Resp, CalloutError> {
        answer.and_then(|b| {
            Resp::decode(b.as_slice()).map_err(|e| CalloutError::Invalid(e.to_string()))
        })
    }

    /// The HTTP callout answer being delivered, as a result.
    pub(crate) fn read_http_answer(body_size: usize) -> Result<HttpResponse, CalloutError> {
        host::header_pairs(MapType::HttpCallResponseHeaders)
            .map_err(|e| CalloutError::Invalid(e.to_string()))
            .and_then(|headers| {
                let body = if body_size == 0 {
                    Vec::new()
                } else {
                    host::buffer(BufferType::HttpCallResponseBody, 0, body_size)
                        .map_err(|e| CalloutError::Invalid(e.to_string()))?
                        .unwrap_or_default()
                };
                classify_http(headers, body)
            })
    }

    /// The unary gRPC answer being delivered (`status_code` 0: the message).
    pub(crate) fn read_grpc_answer(status_code: u32, size: usize) -> Result<Vec<u8>, CalloutError> {
        if status_code != 0 {
            let message = host::grpc_status()
                .ok()
                .and_then(|(_, m)| m)
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .unwrap_or_default();
            Err(CalloutError::Grpc {
                code: status_code,
                message,
            })
        } else {
            host::buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .map(Option::unwrap_or_default)
                .map_err(|e| CalloutError::Invalid(e.to_string()))
        }
    }

    impl Callouts {
        pub fn new() -> Self {
            Self::default()
        }

        /// Number of callouts awaiting an answer.
        pub fn pending(&self) -> usize {
            self.pending.borrow().len()
        }

        /// Sends `req`; `done` runs with the outcome when Envoy answers. An
        /// immediate refusal is returned instead and `done` is dropped.
        pub fn http(
            &self,
            req: HttpRequest,
            done: impl FnOnce(Result<HttpResponse, CalloutError>) + 'static,
        ) -> Result<u32, CalloutError> {
            let token = send_http(&req)?;
            self.pending
                .borrow_mut()
                .insert(token, Pending::Http(Box::new(done)));
            Ok(token)
        }

        /// Sends a unary gRPC call with a prost message; `done` gets the decoded
        /// answer.
        pub fn grpc<Req, Resp>(
            &self,
            cluster: &str,
            service: &str,
            method: &str,
            request: &Req,
            timeout: Duration,
            done: impl FnOnce(Result<Resp, CalloutError>) + 'static,
        ) -> Result<u32, CalloutError>
        where
            Req: prost::Message,
            Resp: prost::Message + Default,
        {
            let token = send_grpc(cluster, service, method, request, timeout)?;
            let decode = move |r: Result<Vec<u8>, CalloutError>| done(decode_grpc(r));
            self.pending
                .borrow_mut()
                .insert(token, Pending::Grpc(Box::new(decode)));
            Ok(token)
        }

        /// Forward `on_http_call_response` here. Unknown tokens are ignored.
        pub fn on_http_response(&self, token: u32, body_size: usize) {
            if let Some(Pending::Http(done)) = self.take(token) {
                done(read_http_answer(body_size));
            }
        }

        /// Forward `on_grpc_call_response` here. Unknown tokens are ignored.
        pub fn on_grpc_response(&self, token: u32, status_code: u32, response_size: usize) {
            if let Some(Pending::Grpc(done)) = self.take(token) {
                done(read_grpc_answer(status_code, response_size));
            }
        }

        fn take(&self, token: u32) -> Option<Pending> {
            self.pending.borrow_mut().remove(&token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn classify_outcomes() {
        assert_eq!(classify_http(vec![], vec![]), Err(CalloutError::NoResponse));
        let ok = classify_http(h(&[(":status", "204")]), vec![]).unwrap();
        assert_eq!(ok.status, 204);
        match classify_http(h(&[(":status", "503")]), b"x".to_vec()) {
            Err(CalloutError::Status(r)) => assert_eq!((r.status, r.body), (503, b"x".to_vec())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_http(h(&[(":status", "abc")]), vec![]),
            Err(CalloutError::Invalid(_))
        ));
    }
}
