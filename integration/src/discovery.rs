//! A scripted HTTP server on 127.0.0.1: an endpoint-discovery source for
//! the load balancer, and an upstream with byte-exact headers.
//!
//! Every request gets the current [`Script`] (status, headers, body). As a
//! discovery source, [`DiscoveryServer::set_endpoints`] serves
//! `{"endpoints": [...]}`; as an upstream, [`DiscoveryServer::set_response`]
//! sends whatever a test needs (malformed load reports that the regular
//! backend cannot produce, such as garbage base64 or 64 KiB values). It can
//! be stopped (port closed, connections dropped: a crashed process) and
//! restarted on the same port.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

/// What every request is answered with.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(br#"{"endpoints":[]}"#),
        }
    }
}

struct State {
    script: Mutex<Script>,
    requests: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server. Dropping it stops it.
pub struct DiscoveryServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl DiscoveryServer {
    /// Binds `127.0.0.1:0`; serves an empty endpoint list until told otherwise.
    pub async fn start() -> anyhow::Result<DiscoveryServer> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            script: Mutex::new(Script::default()),
            requests: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(DiscoveryServer {
            addr,
            state,
            task: Mutex::new(Some(task)),
        })
    }

    /// A server answering like a harness backend named `name` (200, body
    /// `<name>\n`, `x-switchyard-backend: <name>`), plus `extra` headers.
    pub async fn upstream(name: &str, extra: &[(&str, &str)]) -> anyhow::Result<DiscoveryServer> {
        let s = DiscoveryServer::start().await?;
        s.set_upstream(name, extra);
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `{"endpoints": endpoints}` from now on.
    pub fn set_endpoints(&self, endpoints: serde_json::Value) {
        let body = serde_json::json!({ "endpoints": endpoints }).to_string();
        self.set_response(200, &[("content-type", "application/json")], body);
    }

    /// Answers with exactly this from now on.
    pub fn set_response(&self, status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) {
        *lock(&self.state.script) = Script {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
        };
    }

    /// Answers like backend `name` with `extra` headers.
    pub fn set_upstream(&self, name: &str, extra: &[(&str, &str)]) {
        let mut headers = vec![
            (crate::backend::BACKEND_HEADER, name),
            ("content-type", "text/plain"),
        ];
        headers.extend_from_slice(extra);
        self.set_response(200, &headers, format!("{name}\n"));
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Closes the port and every connection (a crash).
    pub async fn stop(&self) {
        let task = lock(&self.task).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await;
        let mut last = None;
        // The port was ours a moment ago; retry briefly in case the kernel
        // has not released it yet.
        for _ in 0..50 {
            match bind(self.addr) {
                Ok(listener) => {
                    let task = tokio::spawn(accept_loop(listener, self.state.clone()));
                    *lock(&self.task) = Some(task);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("bind failed")))
            .with_context(|| format!("rebinding {}", self.addr))
    }
}

impl Drop for DiscoveryServer {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("bind {addr}"))?;
    Ok(socket.listen(256)?)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let _ = req.into_body().collect().await;
    let script = lock(&state.script).clone();
    let mut resp = Response::new(Full::new(script.body));
    *resp.status_mut() = StatusCode::from_u16(script.status).unwrap_or(StatusCode::OK);
    for (k, v) in &script.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    resp
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    crate::server::serve(
        listener,
        crate::server::Protocol::Http1,
        || {},
        move |req| handle(state.clone(), req),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_scripts_and_restarts_on_the_same_port() {
        let s = DiscoveryServer::start().await.unwrap();
        let r = traffic::get(s.addr(), "d", "/endpoints", &[])
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.text()),
            (200, r#"{"endpoints":[]}"#.to_string())
        );
        s.set_endpoints(serde_json::json!([{"address": "127.0.0.1:1"}]));
        let r = traffic::get(s.addr(), "d", "/", &[]).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["endpoints"][0]["address"], "127.0.0.1:1");

        let big = "x".repeat(64 * 1024);
        s.set_upstream("raw", &[("endpoint-load-metrics", &big)]);
        let r = traffic::get(s.addr(), "d", "/", &[]).await.unwrap();
        assert_eq!(r.backend(), Some("raw"));
        assert_eq!(
            r.header("endpoint-load-metrics").map(str::len),
            Some(64 * 1024)
        );

        s.stop().await;
        assert!(traffic::get(s.addr(), "d", "/", &[]).await.is_err());
        s.restart().await.unwrap();
        let r = traffic::get(s.addr(), "d", "/", &[]).await.unwrap();
        assert_eq!(r.backend(), Some("raw"));
        assert_eq!(s.requests(), 4);
    }
}
