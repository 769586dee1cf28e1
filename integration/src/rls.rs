//! A rate limit service (RLS) for tests: the gRPC API Envoy's ratelimit
//! filter and Switchyard's rate-limit filter speak
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), served
//! over cleartext HTTP/2 on `127.0.0.1:0` with hyper and prost.
//!
//! Counting is a fixed window per descriptor (as `envoyproxy/ratelimit` does
//! with Redis): `limit` hits per `window`, windows counted from the server's
//! start, so a test that runs inside one window sees exact totals. Several
//! Envoys pointed at one server share its counts.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use switchyard_proto::Message as _;
use switchyard_proto::prost_types;
use switchyard_proto::rls::{RateLimitRequest, RateLimitResponse, rate_limit_response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::server::GrpcBody;

/// The gRPC path of `ShouldRateLimit`.
pub const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// How the service limits.
#[derive(Clone, Debug)]
pub struct RlsSpec {
    /// Hits allowed per descriptor per window.
    pub limit: u32,
    /// Window length (1 s, 60 s and 3600 s are reported with their unit).
    pub window: Duration,
    /// Delay before answering (to make callers time out).
    pub delay: Duration,
}

impl RlsSpec {
    /// `limit` hits per minute.
    pub fn per_minute(limit: u32) -> Self {
        RlsSpec {
            limit,
            window: Duration::from_secs(60),
            delay: Duration::ZERO,
        }
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the service saw.
#[derive(Clone, Debug, Default)]
pub struct RlsStats {
    /// `ShouldRateLimit` calls answered.
    pub calls: u64,
    /// Calls answered `OVER_LIMIT`.
    pub over_limit: u64,
    /// Calls that were not a valid `RateLimitRequest`.
    pub bad_requests: u64,
    /// The most recent request.
    pub last: Option<RateLimitRequest>,
}

/// (domain, descriptor entries, window index).
type WindowKey = (String, Vec<(String, String)>, u64);

struct State {
    spec: RlsSpec,
    origin: Instant,
    /// Hits per descriptor per window.
    counts: HashMap<WindowKey, u64>,
    stats: RlsStats,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running RLS on `127.0.0.1`; stops on drop.
pub struct RlsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl RlsServer {
    /// Binds `127.0.0.1:0` and serves. Must be called inside a tokio runtime.
    pub async fn start(spec: RlsSpec) -> anyhow::Result<RlsServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind RLS listener on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            spec,
            origin: Instant::now(),
            counts: HashMap::new(),
            stats: RlsStats::default(),
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(RlsServer { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> RlsStats {
        lock(&self.state).stats.clone()
    }

    /// Stops serving; established connections are closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    crate::server::serve(
        listener,
        crate::server::Protocol::Http2,
        || {},
        move |req| {
            let state = state.clone();
            async move { handle(&state, req).await }
        },
    )
    .await
}

/// A gRPC response: `message` framed, then trailers with `grpc-status`.
fn grpc_response(message: Option<Vec<u8>>, status: u32, text: &str) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.into());
    if let Ok(v) = text.parse() {
        trailers.insert("grpc-message", v);
    }
    crate::server::grpc_response(message.as_deref(), trailers)
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<GrpcBody> {
    if req.uri().path() != PATH {
        // UNIMPLEMENTED
        return grpc_response(None, 12, "unknown method");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return grpc_response(None, 13, "body read failed"),
    };
    let request = (body.len() >= 5)
        .then(|| RateLimitRequest::decode(&body[5..]).ok())
        .flatten();
    let Some(request) = request else {
        lock(state).stats.bad_requests += 1;
        return grpc_response(None, 3, "not a RateLimitRequest");
    };
    let (response, delay) = {
        let mut s = lock(state);
        let r = s.decide(&request);
        (r, s.spec.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    grpc_response(Some(response.encode_to_vec()), 0, "")
}

impl State {
    fn decide(&mut self, request: &RateLimitRequest) -> RateLimitResponse {
        use rate_limit_response::rate_limit::Unit;
        use rate_limit_response::{Code, DescriptorStatus, RateLimit};
        let window = self.spec.window.max(Duration::from_millis(1));
        let elapsed = self.origin.elapsed();
        let index = (elapsed.as_nanos() / window.as_nanos()) as u64;
        let until_reset = window
            .saturating_mul(u32::try_from(index + 1).unwrap_or(u32::MAX))
            .saturating_sub(elapsed);
        let hits = u64::from(request.hits_addend.max(1));
        let unit = match window.as_secs() {
            1 => Unit::Second,
            60 => Unit::Minute,
            3600 => Unit::Hour,
            _ => Unit::Unknown,
        };
        let limit = u64::from(self.spec.limit);
        let mut over_any = false;
        let statuses = request
            .descriptors
            .iter()
            .map(|d| {
                let entries = d
                    .entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect();
                let count = self
                    .counts
                    .entry((request.domain.clone(), entries, index))
                    .or_default();
                *count += hits;
                let over = *count > limit;
                over_any |= over;
                DescriptorStatus {
                    code: if over { Code::OverLimit } else { Code::Ok } as i32,
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: self.spec.limit,
                        unit: unit as i32,
                    }),
                    limit_remaining: u32::try_from(limit.saturating_sub(*count))
                        .unwrap_or(u32::MAX),
                    duration_until_reset: Some(prost_types::Duration {
                        seconds: i64::try_from(until_reset.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(until_reset.subsec_nanos()).unwrap_or(0),
                    }),
                }
            })
            .collect();
        self.stats.calls += 1;
        self.stats.over_limit += u64::from(over_any);
        self.stats.last = Some(request.clone());
        RateLimitResponse {
            overall_code: if over_any { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            raw_body: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::rls::{RateLimitDescriptor, rate_limit_descriptor};

    fn req(value: &str) -> RateLimitRequest {
        RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![rate_limit_descriptor::Entry {
                    key: "k".into(),
                    value: value.into(),
                }],
                limit: None,
            }],
            hits_addend: 0,
        }
    }

    #[test]
    fn fixed_window_counts_per_descriptor() {
        let mut s = State {
            spec: RlsSpec::per_minute(2),
            origin: Instant::now(),
            counts: HashMap::new(),
            stats: RlsStats::default(),
        };
        let codes: Vec<i32> = (0..3).map(|_| s.decide(&req("a")).overall_code).collect();
        assert_eq!(codes, [1, 1, 2]);
        let r = s.decide(&req("b"));
        assert_eq!(r.overall_code, 1);
        assert_eq!(r.statuses[0].limit_remaining, 1);
        assert_eq!(
            r.statuses[0].current_limit.as_ref().map(|l| l.unit),
            Some(2)
        );
        assert_eq!((s.stats.calls, s.stats.over_limit), (4, 1));
    }
}
