//! A control endpoint for tests: serves one document (e.g. a routing table)
//! with an `ETag`, answers `304` to a matching `If-None-Match`, and lets the
//! test replace the document while Envoy polls it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server has served so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Every request received.
    pub requests: u64,
    /// Requests answered `304 Not Modified`.
    pub not_modified: u64,
    /// Requests answered with the document (200).
    pub served: u64,
}

struct State {
    body: Bytes,
    /// `"<n>"`, n counting the documents set so far.
    etag: String,
    version: u64,
    stats: ControlStats,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server, on `127.0.0.1:<port>`; stops on drop.
pub struct ControlServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Serves `document` (at every path) from now on. Call inside a tokio runtime.
    pub async fn start(document: impl Into<Bytes>) -> anyhow::Result<ControlServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("bind control server on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            body: document.into(),
            etag: "\"1\"".into(),
            version: 1,
            stats: ControlStats::default(),
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(ControlServer { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the document; returns its new ETag.
    pub fn set_document(&self, document: impl Into<Bytes>) -> String {
        let mut s = lock(&self.state);
        s.version += 1;
        s.etag = format!("\"{}\"", s.version);
        s.body = document.into();
        s.etag.clone()
    }

    /// The current ETag.
    pub fn etag(&self) -> String {
        lock(&self.state).etag.clone()
    }

    pub fn stats(&self) -> ControlStats {
        lock(&self.state).stats.clone()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn handle(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    s.stats.requests += 1;
    let etag = HeaderValue::from_str(&s.etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let fresh = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|v| v.as_bytes() == s.etag.as_bytes());
    let (status, body) = if fresh {
        s.stats.not_modified += 1;
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        s.stats.served += 1;
        (StatusCode::OK, s.body.clone())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(ETAG, etag);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    crate::server::serve(
        listener,
        crate::server::Protocol::Http1,
        || {},
        move |req: Request<Incoming>| {
            let state = state.clone();
            async move {
                let resp = handle(&state, &req);
                // Drain the request body so keep-alive works.
                let _ = req.into_body().collect().await;
                resp
            }
        },
    )
    .await
}
