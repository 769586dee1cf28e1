//! A unary gRPC backend over cleartext HTTP/2 (prior knowledge) that
//! reports its load the gRPC way: `endpoint-load-metrics-bin` (a base64
//! `OrcaLoadReport`) in the trailing metadata, beside `grpc-status: 0`.
//!
//! Any method answers with an empty message. The response headers carry
//! `x-switchyard-backend: <name>` so traffic can be attributed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::HeaderMap;
use hyper::header::HeaderValue;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backend::{LoadReport, ORCA_BIN_HEADER};
use crate::server::{Protocol, grpc_response, serve};

struct Shared {
    name: HeaderValue,
    report: Mutex<LoadReport>,
    requests: AtomicU64,
}

/// A running gRPC backend; stops when dropped.
pub struct GrpcBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl GrpcBackend {
    /// Starts on `127.0.0.1:0`, reporting `report` in every answer's
    /// trailers.
    pub async fn start(name: &str, report: LoadReport) -> anyhow::Result<GrpcBackend> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: HeaderValue::from_str(name)?,
            report: Mutex::new(report),
            requests: AtomicU64::new(0),
        });
        let handler = shared.clone();
        let task = tokio::spawn(async move {
            serve(
                listener,
                Protocol::Http2,
                || {},
                move |_req| {
                    let shared = handler.clone();
                    async move {
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        let report = shared
                            .report
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .to_bin_base64();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        if let Ok(v) = HeaderValue::from_str(&report) {
                            trailers.insert(ORCA_BIN_HEADER, v);
                        }
                        let mut resp = grpc_response(Some(&[]), trailers);
                        resp.headers_mut()
                            .insert("x-switchyard-backend", shared.name.clone());
                        resp
                    }
                },
            )
            .await
        });
        Ok(GrpcBackend { addr, shared, task })
    }

    /// The bound address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Reports `report` from now on.
    pub fn set_report(&self, report: LoadReport) {
        *self
            .shared
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = report;
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}
