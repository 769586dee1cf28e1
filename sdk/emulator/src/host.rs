//! What Envoy keeps once per process and shares between workers: shared data,
//! shared queues, metrics, the clock, logs and outbound calls.

use crate::types::{LogLevel, MetricType, Status};
use crate::vm::{Mailbox, Task};
use crate::wire;
use crate::worker::WorkerInner;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2026-01-01T00:00:00Z: a fixed, realistic start so tests are reproducible.
const DEFAULT_START_SECS: u64 = 1_767_225_600;

/// Locks ignoring poison: a panic elsewhere must not turn every later host
/// call into a second panic (host functions must never panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One emulated Envoy process running one plugin. Cheap to clone (an `Arc`).
///
/// Build it with [`Host::new`], then start workers with [`Host::start_worker`].
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) init: extern "C" fn(),
    pub(crate) config: HostConfig,
    clock_nanos: AtomicU64,
    pub(crate) state: Mutex<HostState>,
}

pub(crate) struct HostConfig {
    pub(crate) vm_id: String,
    pub(crate) root_id: String,
    pub(crate) plugin_name: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) clusters: Option<BTreeSet<String>>,
    pub(crate) log_level: LogLevel,
    pub(crate) echo_logs: bool,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) cel: bool,
}

/// Configures a [`Host`]; created by [`Host::new`].
pub struct HostBuilder {
    init: extern "C" fn(),
    config: HostConfig,
    start: SystemTime,
}

impl HostBuilder {
    /// Plugin configuration, readable in `on_configure` (Envoy: `configuration`).
    pub fn plugin_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.config.plugin_config = bytes.into();
        self
    }

    /// VM configuration, readable in `on_vm_start` (Envoy: `vm_config.configuration`).
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.config.vm_config = bytes.into();
        self
    }

    /// VM id: the namespace of shared data and shared queues (default `""`).
    pub fn vm_id(mut self, id: impl Into<String>) -> Self {
        self.config.vm_id = id.into();
        self
    }

    /// Root id of the plugin (default `""`); also the default plugin name.
    pub fn root_id(mut self, id: impl Into<String>) -> Self {
        self.config.root_id = id.into();
        self
    }

    /// Plugin name reported by the `plugin_name` property (default: the root id).
    pub fn plugin_name(mut self, name: impl Into<String>) -> Self {
        self.config.plugin_name = name.into();
        self
    }

    /// Restricts HTTP and gRPC callouts to these clusters; without it every
    /// cluster name is accepted.
    pub fn clusters<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.clusters = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Envoy's log level: returned by `proxy_get_log_level`, and messages
    /// below it are dropped (default `Trace`).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.config.log_level = level;
        self
    }

    /// Whether filter logs and host-call failures are also printed to stderr
    /// (captured by the test harness, shown for failing tests). Default on.
    pub fn echo_logs(mut self, on: bool) -> Self {
        self.config.echo_logs = on;
        self
    }

    /// A process-wide property (e.g. `["node", "id"]`), visible in every context.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.config
            .properties
            .insert(wire::property_key(path), value.into());
        self
    }

    /// Whether the `expr_create`/`expr_evaluate` foreign functions (CEL)
    /// exist, as in Envoy builds with the CEL parser (default on); off,
    /// they answer NotFound like Envoy without it.
    pub fn cel(mut self, on: bool) -> Self {
        self.config.cel = on;
        self
    }

    /// Starting time of the emulated clock (default 2026-01-01T00:00:00Z).
    pub fn start_time(mut self, time: SystemTime) -> Self {
        self.start = time;
        self
    }

    /// Finishes the configuration. No VM runs until [`Host::start_worker`].
    pub fn build(self) -> Host {
        Host {
            inner: Arc::new(HostInner {
                init: self.init,
                clock_nanos: AtomicU64::new(nanos_since_epoch(self.start)),
                config: self.config,
                state: Mutex::new(HostState::new()),
            }),
        }
    }
}

/// One message the filter logged through `proxy_log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Worker that logged it (`None`: logged from a thread that is no worker).
    pub worker: Option<usize>,
    /// Level the filter used.
    pub level: LogLevel,
    /// The message, lossily decoded as UTF-8.
    pub message: String,
}

/// An HTTP callout the filter dispatched that has not been answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    /// Token `proxy_http_call` returned; answer with it.
    pub token: u32,
    /// Index of the worker whose VM dispatched the call.
    pub worker: usize,
    /// Context that dispatched the call; the response is delivered to it.
    pub context_id: u32,
    /// Cluster name.
    pub upstream: String,
    /// Request headers (pseudo-headers included), values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Vec<(String, String)>,
    /// Timeout the filter asked for.
    pub timeout: Duration,
}

impl HttpCall {
    /// First value of a request header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = wire::lower(name);
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A unary gRPC call the filter dispatched that has not been answered yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// Token `proxy_grpc_call` returned (odd, as in Envoy).
    pub token: u32,
    /// Index of the worker whose VM dispatched the call.
    pub worker: usize,
    /// Context that dispatched the call.
    pub context_id: u32,
    /// Cluster name (or serialized `GrpcService`).
    pub upstream: String,
    /// Fully qualified service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// Serialized request message.
    pub message: Vec<u8>,
    /// Timeout the filter asked for.
    pub timeout: Duration,
}

/// A gRPC stream the filter opened and has not been closed by the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcStream {
    /// Token `proxy_grpc_stream` returned (even, as in Envoy).
    pub token: u32,
    /// Index of the worker whose VM opened the stream.
    pub worker: usize,
    /// Context that opened the stream.
    pub context_id: u32,
    /// Cluster name.
    pub upstream: String,
    /// Fully qualified service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// Messages the filter sent, in order.
    pub sent: Vec<Vec<u8>>,
    /// Whether the filter half-closed (sent `end_stream` or called close).
    pub local_closed: bool,
}

/// A host call that failed for a reason a test probably wants to see (bad
/// arguments, a map or buffer that is not available in the current context).
/// proxy-wasm panics on most of these statuses, as it would in Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFailure {
    /// Worker the call came from.
    pub worker: Option<usize>,
    /// The import, e.g. `"proxy_get_header_map_value"`.
    pub call: &'static str,
    /// Status returned to the module.
    pub status: Status,
    /// Why.
    pub detail: String,
}

impl fmt::Display for HostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {:?}: {}", self.call, self.status, self.detail)
    }
}

pub(crate) struct Queue {
    /// Worker and context that registered last: Envoy notifies only them.
    owner: (usize, u32),
    items: VecDeque<Vec<u8>>,
}

pub(crate) struct Metric {
    name: String,
    kind: MetricType,
    value: u64,
    samples: Vec<u64>,
}

pub(crate) struct WorkerSlot {
    pub(crate) mailbox: Mailbox,
    pub(crate) handle: Weak<WorkerInner>,
}

pub(crate) struct HostState {
    shared_data: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    cas_mismatches: u64,
    shared_reads: u64,
    queues: BTreeMap<u32, Queue>,
    queue_ids: HashMap<(String, String), u32>,
    next_queue_id: u32,
    metrics: Vec<Metric>,
    metric_ids: HashMap<(u32, String), u32>,
    logs: Vec<LogRecord>,
    pub(crate) http_calls: Vec<HttpCall>,
    next_http_token: u32,
    pub(crate) grpc_calls: Vec<GrpcCall>,
    pub(crate) grpc_streams: Vec<GrpcStream>,
    next_grpc_token: u32,
    failures: Vec<HostFailure>,
    pub(crate) workers: Vec<WorkerSlot>,
}

impl HostState {
    fn new() -> Self {
        HostState {
            shared_data: HashMap::new(),
            next_cas: 1,
            cas_mismatches: 0,
            shared_reads: 0,
            queues: BTreeMap::new(),
            queue_ids: HashMap::new(),
            next_queue_id: 1,
            metrics: Vec::new(),
            metric_ids: HashMap::new(),
            logs: Vec::new(),
            http_calls: Vec::new(),
            next_http_token: 1,
            grpc_calls: Vec::new(),
            grpc_streams: Vec::new(),
            next_grpc_token: 1,
            failures: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// Envoy's CAS counter: process-wide, never 0 (0 means "unconditional").
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        cas
    }

    pub(crate) fn next_http_token(&mut self) -> u32 {
        let token = self.next_http_token;
        self.next_http_token = self.next_http_token.wrapping_add(1).max(1);
        token
    }

    /// gRPC tokens: odd for unary calls, even for streams (Envoy's split).
    pub(crate) fn next_grpc_token(&mut self, stream: bool) -> u32 {
        let mut token = self.next_grpc_token;
        if token.is_multiple_of(2) != stream {
            token += 1;
        }
        self.next_grpc_token = token.wrapping_add(1).max(1);
        token
    }
}

fn nanos_since_epoch(time: SystemTime) -> u64 {
    let nanos = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

fn metric_type(raw: u32) -> Option<MetricType> {
    match raw {
        0 => Some(MetricType::Counter),
        1 => Some(MetricType::Gauge),
        2 => Some(MetricType::Histogram),
        _ => None,
    }
}

impl Host {
    /// Starts configuring a host for the filter whose `_initialize` (the
    /// function `proxy_wasm::main!` generates) is `init`.
    #[expect(
        clippy::new_ret_no_self,
        reason = "reads as `Host::new(init)...build()`"
    )]
    pub fn new(init: extern "C" fn()) -> HostBuilder {
        HostBuilder {
            init,
            config: HostConfig {
                vm_id: String::new(),
                root_id: String::new(),
                plugin_name: String::new(),
                vm_config: Vec::new(),
                plugin_config: Vec::new(),
                clusters: None,
                log_level: LogLevel::Trace,
                echo_logs: true,
                properties: HashMap::new(),
                cel: true,
            },
            start: UNIX_EPOCH + Duration::from_secs(DEFAULT_START_SECS),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, HostState> {
        lock(&self.inner.state)
    }

    // ---- clock ----

    /// Current emulated time (what `proxy_get_current_time_nanoseconds` returns).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    pub(crate) fn now_nanos(&self) -> u64 {
        self.inner.clock_nanos.load(Ordering::SeqCst)
    }

    /// Sets the emulated clock.
    pub fn set_time(&self, time: SystemTime) {
        self.inner
            .clock_nanos
            .store(nanos_since_epoch(time), Ordering::SeqCst);
    }

    /// Moves the emulated clock forward. Ticks are not fired: call
    /// [`crate::Worker::tick`] for that.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .inner
            .clock_nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }

    // ---- shared data ----

    /// Value and CAS of a shared-data key, as `proxy_get_shared_data` sees it.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.state().shared_data.get(key).cloned()
    }

    /// The shared-data keys that end with `suffix`, sorted (filters derive
    /// keys from plugin names and configuration hashes a test need not
    /// rebuild).
    pub fn shared_keys_ending(&self, suffix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .state()
            .shared_data
            .keys()
            .filter(|k| k.ends_with(suffix))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// Sets a shared-data key unconditionally (as a filter would with CAS 0);
    /// returns the new CAS.
    pub fn set_shared_data(&self, key: &str, value: impl AsRef<[u8]>) -> u32 {
        let mut state = self.state();
        let cas = state.next_cas();
        state
            .shared_data
            .insert(key.to_string(), (value.as_ref().to_vec(), cas));
        cas
    }

    /// Takes over `old`'s shared data and clock: the same Envoy process
    /// after a configuration update (new VMs, and the shared data Envoy
    /// keeps for the process's life). Call before starting workers.
    pub fn inherit(&self, old: &Host) {
        self.set_time(old.now());
        for key in old.shared_keys_ending("") {
            if let Some((value, _)) = old.shared_data(&key) {
                self.set_shared_data(&key, value);
            }
        }
    }

    /// How many `proxy_set_shared_data` calls returned `CasMismatch` so far.
    pub fn cas_mismatches(&self) -> u64 {
        self.state().cas_mismatches
    }

    pub(crate) fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let mut state = self.state();
        state.shared_reads += 1;
        state.shared_data.get(key).cloned()
    }

    /// How many `proxy_get_shared_data` calls the modules made so far.
    pub fn shared_reads(&self) -> u64 {
        self.state().shared_reads
    }

    /// Envoy semantics: a non-zero CAS must match an existing key's CAS; a new
    /// key or CAS 0 always succeeds; every success bumps the key's CAS.
    pub(crate) fn set_shared(&self, key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
        let mut state = self.state();
        if let Some((_, current)) = state.shared_data.get(key)
            && cas != 0
            && cas != *current
        {
            state.cas_mismatches += 1;
            return Err(Status::CasMismatch);
        }
        let next = state.next_cas();
        state
            .shared_data
            .insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    // ---- shared queues ----

    /// Items waiting in the queue `name` of this host's VM id (oldest first).
    pub fn shared_queue(&self, name: &str) -> Option<Vec<Vec<u8>>> {
        let state = self.state();
        let id = state
            .queue_ids
            .get(&(self.inner.config.vm_id.clone(), name.to_string()))?;
        let queue = state.queues.get(id)?;
        Some(queue.items.iter().cloned().collect())
    }

    /// Registers (or re-registers) a queue; the last registrant is notified,
    /// as in Envoy, and items already queued are kept.
    pub(crate) fn register_queue(&self, name: &str, owner: (usize, u32)) -> u32 {
        let mut state = self.state();
        let key = (self.inner.config.vm_id.clone(), name.to_string());
        if let Some(&id) = state.queue_ids.get(&key) {
            if let Some(queue) = state.queues.get_mut(&id) {
                queue.owner = owner;
            }
            return id;
        }
        let id = state.next_queue_id;
        state.next_queue_id += 1;
        state.queue_ids.insert(key, id);
        state.queues.insert(
            id,
            Queue {
                owner,
                items: VecDeque::new(),
            },
        );
        id
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.state()
            .queue_ids
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut state = self.state();
        let queue = state.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// Appends and posts `on_queue_ready` to the owning worker's mailbox; it
    /// runs there after that worker's current (or next) call.
    pub(crate) fn enqueue(&self, id: u32, value: &[u8]) -> Result<(), Status> {
        let mut state = self.state();
        let queue = state.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.push_back(value.to_vec());
        let (worker, context_id) = queue.owner;
        if let Some(slot) = state.workers.get(worker) {
            lock(&slot.mailbox).push_back(Task::QueueReady {
                context_id,
                queue_id: id,
            });
        }
        Ok(())
    }

    // ---- metrics ----

    /// Value of a counter or gauge by name.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.flush_metrics();
        let state = self.state();
        state
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind != MetricType::Histogram)
            .map(|m| m.value)
    }

    /// Id `proxy_define_metric` returned for `name` (any type).
    pub fn metric_id(&self, name: &str) -> Option<u32> {
        let state = self.state();
        state
            .metric_ids
            .iter()
            .find(|((_, n), _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Values recorded into a histogram, in order.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        let state = self.state();
        state
            .metrics
            .iter()
            .find(|m| m.name == name && m.kind == MetricType::Histogram)
            .map(|m| m.samples.clone())
    }

    /// All counters and gauges by name.
    pub fn metrics(&self) -> BTreeMap<String, u64> {
        let state = self.state();
        state
            .metrics
            .iter()
            .filter(|m| m.kind != MetricType::Histogram)
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// Ids carry the type in the low two bits, as in Envoy; the same type and
    /// name get the same id in every worker.
    pub(crate) fn define_metric(&self, raw_type: u32, name: &str) -> Result<u32, Status> {
        let kind = metric_type(raw_type).ok_or(Status::BadArgument)?;
        let mut state = self.state();
        if let Some(&id) = state.metric_ids.get(&(raw_type, name.to_string())) {
            return Ok(id);
        }
        let index = u32::try_from(state.metrics.len()).map_err(|_| Status::InternalFailure)?;
        let id = ((index + 1) << 2) | raw_type;
        state.metrics.push(Metric {
            name: name.to_string(),
            kind,
            value: 0,
            samples: Vec::new(),
        });
        state.metric_ids.insert((raw_type, name.to_string()), id);
        Ok(id)
    }

    fn metric_mut(state: &mut HostState, id: u32) -> Option<&mut Metric> {
        let index = usize::try_from((id >> 2).checked_sub(1)?).ok()?;
        let metric = state.metrics.get_mut(index)?;
        (metric.kind as u32 == id & 3).then_some(metric)
    }

    pub(crate) fn get_metric(&self, id: u32) -> Result<u64, Status> {
        let mut state = self.state();
        let metric = Self::metric_mut(&mut state, id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(metric.value),
        }
    }

    pub(crate) fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        let mut state = self.state();
        let metric = Self::metric_mut(&mut state, id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter => metric.value = metric.value.saturating_add(value),
            MetricType::Gauge => metric.value = value,
            _ => metric.samples.push(value),
        }
        Ok(())
    }

    /// Envoy: counters only go up (offset must be > 0, else BadArgument);
    /// gauges go both ways; histograms cannot be incremented.
    pub(crate) fn increment_metric(&self, id: u32, offset: i64) -> Result<(), Status> {
        let mut state = self.state();
        let metric = Self::metric_mut(&mut state, id).ok_or(Status::NotFound)?;
        match metric.kind {
            MetricType::Counter if offset > 0 => {
                metric.value = metric.value.saturating_add(offset.unsigned_abs());
            }
            MetricType::Gauge if offset >= 0 => {
                metric.value = metric.value.saturating_add(offset.unsigned_abs());
            }
            MetricType::Gauge => metric.value = metric.value.saturating_sub(offset.unsigned_abs()),
            _ => return Err(Status::BadArgument),
        }
        Ok(())
    }

    // ---- logs ----

    /// Every message logged so far, in order.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.state().logs.clone()
    }

    /// Returns and forgets the messages logged so far.
    pub fn take_logs(&self) -> Vec<LogRecord> {
        std::mem::take(&mut self.state().logs)
    }

    /// Messages containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogRecord> {
        let state = self.state();
        state
            .logs
            .iter()
            .filter(|r| r.message.contains(needle))
            .cloned()
            .collect()
    }

    /// The first message containing `needle`; panics listing all messages if
    /// there is none.
    #[track_caller]
    pub fn expect_log_contains(&self, needle: &str) -> LogRecord {
        let logs = self.logs();
        match logs.iter().find(|r| r.message.contains(needle)) {
            Some(record) => record.clone(),
            None => panic!(
                "no log message contains {needle:?}; logged:\n{}",
                logs.iter()
                    .map(|r| format!("  [{:?} worker {:?}] {}", r.level, r.worker, r.message))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    pub(crate) fn log(&self, worker: Option<usize>, level: LogLevel, message: String) {
        if (level as u32) < (self.inner.config.log_level as u32) {
            return;
        }
        if self.inner.config.echo_logs {
            let who = worker.map_or_else(|| "-".to_string(), |w| w.to_string());
            eprintln!("[emulator worker {who}] {level:?}: {message}");
        }
        self.state().logs.push(LogRecord {
            worker,
            level,
            message,
        });
    }

    // ---- callouts ----

    /// HTTP callouts dispatched and not answered yet (cancelled ones are gone).
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.state().http_calls.clone()
    }

    /// The single pending HTTP call to `upstream`; panics if there is none
    /// or more than one.
    #[track_caller]
    pub fn expect_http_call(&self, upstream: &str) -> HttpCall {
        let calls = self.http_calls();
        let mut matching = calls.iter().filter(|c| c.upstream == upstream);
        match (matching.next(), matching.next()) {
            (Some(call), None) => call.clone(),
            _ => panic!(
                "expected exactly one pending HTTP call to {upstream:?}; pending: {calls:#?}"
            ),
        }
    }

    /// Unary gRPC calls dispatched and not answered yet.
    pub fn grpc_calls(&self) -> Vec<GrpcCall> {
        self.state().grpc_calls.clone()
    }

    /// gRPC streams opened and not closed by the peer yet.
    pub fn grpc_streams(&self) -> Vec<GrpcStream> {
        self.state().grpc_streams.clone()
    }

    pub(crate) fn cluster_known(&self, name: &str) -> bool {
        self.inner
            .config
            .clusters
            .as_ref()
            .is_none_or(|clusters| clusters.contains(name))
    }

    /// Envoy cancels a context's outstanding callouts when it is deleted.
    pub(crate) fn cancel_callouts(&self, worker: usize, context_id: u32) {
        let mut state = self.state();
        let owned = |w: usize, c: u32| w == worker && c == context_id;
        state.http_calls.retain(|c| !owned(c.worker, c.context_id));
        state.grpc_calls.retain(|c| !owned(c.worker, c.context_id));
        state
            .grpc_streams
            .retain(|c| !owned(c.worker, c.context_id));
    }

    // ---- failures ----

    /// Host calls that failed with a status worth seeing (see [`HostFailure`]).
    pub fn failures(&self) -> Vec<HostFailure> {
        self.state().failures.clone()
    }

    pub(crate) fn record_failure(
        &self,
        worker: Option<usize>,
        call: &'static str,
        status: Status,
        detail: String,
    ) {
        let failure = HostFailure {
            worker,
            call,
            status,
            detail,
        };
        if self.inner.config.echo_logs {
            eprintln!("[emulator worker {worker:?}] host call failed: {failure}");
        }
        self.state().failures.push(failure);
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("vm_id", &self.inner.config.vm_id)
            .field("root_id", &self.inner.config.root_id)
            .finish_non_exhaustive()
    }
}
