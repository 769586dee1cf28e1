//! A log collector for tests: an HTTP server on `127.0.0.1:0` that accepts
//! batches of access-log records (JSON lines, or OTLP/HTTP JSON logs),
//! checks that every line is valid JSON, stores the records and counts them
//! by request id.
//!
//! It can be switched down mid-test ([`Mode::Unavailable`]: every post gets
//! 503; [`Mode::Refusing`]: the port is closed, connections are refused and
//! open ones are cut) and up again on the same port.
//!
//! Batches carry `x-switchyard-batch-id`; a batch id seen before is
//! acknowledged but not stored again (a sender retrying a batch whose answer
//! got lost), and counted in [`CollectorStats::duplicate_batches`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Header with the sender's batch id (the access-log filter sets it).
pub const BATCH_ID_HEADER: &str = "x-switchyard-batch-id";

/// How the collector answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Stores batches, answers 200.
    Up,
    /// Answers every post with 503 without storing anything.
    Unavailable,
    /// Not listening: connections are refused, open ones closed.
    Refusing,
}

/// Counters of what arrived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectorStats {
    /// Batches stored (200).
    pub batches: u64,
    /// Posts answered 503 (Unavailable mode).
    pub rejected_posts: u64,
    /// Batches whose id was already stored: acknowledged, not stored.
    pub duplicate_batches: u64,
    /// Records stored.
    pub records: u64,
    /// Distinct request ids among them.
    pub unique_request_ids: u64,
    /// Records whose request id had been stored before.
    pub duplicate_records: u64,
    /// Records without a request id.
    pub records_without_id: u64,
    /// Lines that were not a JSON object (each one a bug in the sender).
    pub bad_lines: u64,
}

#[derive(Default)]
struct State {
    stats: CollectorStats,
    batch_ids: HashSet<String>,
    by_request_id: HashMap<String, u64>,
    records: Vec<Value>,
    bodies: Vec<Bytes>,
    bad_lines: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    mode: Mutex<Mode>,
    /// Added before answering, in ms (a slow collector).
    delay_ms: AtomicU64,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running collector. Dropping it stops the server.
pub struct Collector {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
}

impl Collector {
    /// Starts on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the collector")?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            mode: Mutex::new(Mode::Up),
            delay_ms: AtomicU64::new(0),
        });
        let c = Collector {
            inner,
            addr,
            server: Mutex::new(None),
        };
        c.serve(listener);
        Ok(c)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let inner = Arc::clone(&inner);
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(Arc::clone(&inner), req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // Dropping the listener and aborting the connections: refused.
            conns.abort_all();
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some((task, stop_tx));
    }

    async fn stop_server(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((task, stop)) = server {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Switches the behaviour; `Refusing` closes the port, leaving it
    /// reopens it (same port).
    pub async fn set_mode(&self, mode: Mode) -> anyhow::Result<()> {
        let before = self.inner.mode();
        *self.inner.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        match (before == Mode::Refusing, mode == Mode::Refusing) {
            (false, true) => self.stop_server().await,
            (true, false) => {
                let deadline = Instant::now() + Duration::from_secs(5);
                let listener = loop {
                    match TcpListener::bind(self.addr).await {
                        Ok(l) => break l,
                        Err(e) if Instant::now() < deadline => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => bail!("collector cannot listen on {} again: {e}", self.addr),
                    }
                };
                self.serve(listener);
            }
            _ => {}
        }
        Ok(())
    }

    /// Delay before each answer (a slow collector).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inner.delay_ms.store(ms, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CollectorStats {
        self.inner.state().stats.clone()
    }

    /// Times each request id was stored.
    pub fn request_ids(&self) -> HashMap<String, u64> {
        self.inner.state().by_request_id.clone()
    }

    /// Every stored record, flat (OTLP attributes turned back into fields).
    pub fn records(&self) -> Vec<Value> {
        self.inner.state().records.clone()
    }

    /// The first few lines that were not JSON objects.
    pub fn bad_lines(&self) -> Vec<String> {
        self.inner.state().bad_lines.clone()
    }

    /// Whether any received body (stored, duplicate or rejected) contains `needle`.
    pub fn bodies_contain(&self, needle: &[u8]) -> bool {
        self.inner
            .state()
            .bodies
            .iter()
            .any(|b| b.windows(needle.len().max(1)).any(|w| w == needle))
    }

    /// The stored records as JSON lines (input for [`crate::replay`]).
    pub fn to_json_lines(&self) -> String {
        let state = self.inner.state();
        let mut out = String::new();
        for r in &state.records {
            out.push_str(&r.to_string());
            out.push('\n');
        }
        out
    }

    /// Waits until `done(stats)` holds; the last stats either way.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&CollectorStats) -> bool,
    ) -> (bool, CollectorStats) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if done(&s) {
                return (true, s);
            }
            if Instant::now() >= deadline {
                return (false, s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some((task, stop)) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(true);
            task.abort();
        }
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let batch_id = req
        .headers()
        .get(BATCH_ID_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "body")),
    };
    let delay = inner.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut state = inner.state();
    state.bodies.push(body.clone());
    if inner.mode() != Mode::Up {
        state.stats.rejected_posts += 1;
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "down"));
    }
    if let Some(id) = &batch_id
        && !state.batch_ids.insert(id.clone())
    {
        state.stats.duplicate_batches += 1;
        return Ok(reply(StatusCode::OK, "duplicate"));
    }
    state.stats.batches += 1;
    for record in parse_body(&body, &mut state) {
        state.stats.records += 1;
        match request_id(&record) {
            Some(id) => {
                let n = state.by_request_id.entry(id).or_insert(0);
                *n += 1;
                if *n == 1 {
                    state.stats.unique_request_ids += 1;
                } else {
                    state.stats.duplicate_records += 1;
                }
            }
            None => state.stats.records_without_id += 1,
        }
        state.records.push(record);
    }
    Ok(reply(StatusCode::OK, "ok"))
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Records of a body: OTLP JSON when it is one object with `resourceLogs`,
/// else JSON lines (every line must be an object).
fn parse_body(body: &[u8], state: &mut State) -> Vec<Value> {
    if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body)
        && let Some(resource_logs) = doc.get("resourceLogs")
    {
        return otlp_records(resource_logs);
    }
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v @ Value::Object(_)) => out.push(v),
            _ => {
                state.stats.bad_lines += 1;
                if state.bad_lines.len() < 20 {
                    state
                        .bad_lines
                        .push(String::from_utf8_lossy(line).into_owned());
                }
            }
        }
    }
    out
}

/// OTLP log records back to flat records: attributes as fields.
fn otlp_records(resource_logs: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for rl in resource_logs.as_array().into_iter().flatten() {
        for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
            for lr in sl["logRecords"].as_array().into_iter().flatten() {
                let mut m = Map::new();
                for a in lr["attributes"].as_array().into_iter().flatten() {
                    if let Some(k) = a["key"].as_str() {
                        m.insert(k.to_string(), from_any_value(&a["value"]));
                    }
                }
                out.push(Value::Object(m));
            }
        }
    }
    out
}

fn from_any_value(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(i) = v.get("intValue") {
        return match i {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
            other => other.clone(),
        };
    }
    if let Some(d) = v.get("doubleValue") {
        return d.clone();
    }
    if let Some(a) = v.get("arrayValue") {
        return Value::Array(
            a["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(from_any_value)
                .collect(),
        );
    }
    if let Some(kv) = v.get("kvlistValue") {
        let mut m = Map::new();
        for e in kv["values"].as_array().into_iter().flatten() {
            if let Some(k) = e["key"].as_str() {
                m.insert(k.to_string(), from_any_value(&e["value"]));
            }
        }
        return Value::Object(m);
    }
    Value::Null
}

/// The request id of a record in either naming.
pub fn request_id(record: &Value) -> Option<String> {
    if let Some(s) = record.get("request_id").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    match record.get("http.request.header.x-request-id")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first()?.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::{HttpClient, RequestSpec};

    async fn post(c: &Collector, batch: &str, body: &str) -> anyhow::Result<u16> {
        let spec = RequestSpec::get("collector", "/v1/logs")
            .method("POST")
            .header(BATCH_ID_HEADER, batch)
            .body(body.to_string());
        Ok(HttpClient::new().send(c.addr(), &spec).await?.status)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_counts_dedupes_and_goes_down_and_up() {
        let c = Collector::start().await.unwrap();
        let body = "{\"request_id\":\"a\"}\n{\"request_id\":\"b\"}\nnot json\n";
        assert_eq!(post(&c, "1", body).await.unwrap(), 200);
        assert_eq!(
            post(&c, "1", body).await.unwrap(),
            200,
            "retry of a stored batch"
        );
        let s = c.stats();
        assert_eq!(
            (
                s.batches,
                s.duplicate_batches,
                s.records,
                s.unique_request_ids,
                s.bad_lines
            ),
            (1, 1, 2, 2, 1)
        );
        assert_eq!(c.bad_lines(), vec!["not json".to_string()]);

        c.set_mode(Mode::Unavailable).await.unwrap();
        assert_eq!(post(&c, "2", "{\"request_id\":\"c\"}").await.unwrap(), 503);
        c.set_mode(Mode::Refusing).await.unwrap();
        assert!(post(&c, "3", "{}").await.is_err(), "connection refused");
        c.set_mode(Mode::Up).await.unwrap();
        assert_eq!(
            post(
                &c,
                "2",
                "{\"http.request.header.x-request-id\":[\"c\"]}\n{\"request_id\":\"a\"}"
            )
            .await
            .unwrap(),
            200
        );
        let s = c.stats();
        assert_eq!(
            (s.rejected_posts, s.unique_request_ids, s.duplicate_records),
            (1, 3, 1)
        );
        assert!(c.bodies_contain(b"\"c\""));
        assert!(!c.bodies_contain(b"SECRET"));
        assert_eq!(c.request_ids().get("a"), Some(&2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_bodies_are_flattened() {
        let c = Collector::start().await.unwrap();
        let body = serde_json::json!({"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[
            {"key":"http.request.header.x-request-id","value":{"arrayValue":{"values":[{"stringValue":"r1"}]}}},
            {"key":"http.response.status_code","value":{"intValue":"200"}},
            {"key":"request_headers","value":{"kvlistValue":{"values":[{"key":"x-a","value":{"stringValue":"1"}}]}}}
        ]}]}]}]});
        assert_eq!(post(&c, "9", &body.to_string()).await.unwrap(), 200);
        let r = c.records();
        assert_eq!(r.len(), 1);
        assert_eq!(request_id(&r[0]).as_deref(), Some("r1"));
        assert_eq!(r[0]["http.response.status_code"], 200);
        assert_eq!(r[0]["request_headers"]["x-a"], "1");
    }
}
