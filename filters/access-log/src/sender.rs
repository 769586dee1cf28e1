//! The HTTP sink: records travel through one shared queue to one sender.
//!
//! Every VM (each worker's and the main thread's) has a `Sender`, but only
//! the VM holding the lease drains the queue. Shared queues are per vm_id
//! and Envoy notifies (`on_queue_ready`) only the VM that registered the
//! queue last, so the holder registers it again on every tick: it becomes
//! the notified VM within one tick of taking the lease, and ticks drain the
//! queue anyway should a notification go elsewhere. A VM that lost the lease
//! keeps flushing what it already holds, so a lease change loses nothing;
//! a VM that shuts down puts what it holds back on the queue.
//!
//! Nothing here waits: on_log only appends to its VM's held batch, which
//! goes on the queue as one item ([`Held`]); the sender's work
//! is a few host calls per item plus one callout per batch, and a slow or dead collector
//! only makes the buffer fill up (then new records are dropped and counted).
//!
//! The lease stays with its holder whatever the collector does: a refused
//! or failed send keeps the batch and backs off, so retries come from one
//! VM at the backoff's pace however many workers tick. (A once-per-interval
//! [`switchyard_sdk::job::Job`] would not fit: the buffer lives in the
//! holder's memory.)
//!
//! Callouts go through the root's [`Callouts`] ([`RootServices`]), which an
//! answer's callback cannot reach; to send the next batch right after an
//! answer, the callback puts an empty item on the queue, and the
//! `on_queue_ready` it brings (with the root services) sends it.

use crate::config::{Format, HttpSink};
use crate::encode;
use crate::shipper::{self, Completion, DropReason, Limits, SendResult, Shipper};
use crate::stats::Metrics;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;
use switchyard_sdk::callout::{CalloutError, Callouts, HttpRequest, HttpResponse};
use switchyard_sdk::host;
use switchyard_sdk::lease::Lease;
use switchyard_sdk::stage::RootServices;

/// Most queue items taken per drain, so one callback stays short on a
/// worker; the rest waits for the next notification or tick.
const MAX_DRAIN: usize = 4096;

/// Header carrying the batch id (same on every retry of a batch).
pub const BATCH_ID_HEADER: &str = "x-switchyard-batch-id";

/// Records joined into one shared-queue item, up to [`ITEM_MAX_RECORDS`]
/// or [`ITEM_MAX_BYTES`] (a longer record goes alone), joined by `\n`: a
/// record's JSON never holds a raw newline (control bytes are escaped).
///
/// Each queue item wakes the sender's VM (a callback, a dequeue and its
/// bookkeeping: ~6 crossings), so a VM holds its records and puts them on
/// the queue together: when an item is full, on the VM's tick and when it
/// shuts down.
#[derive(Default)]
pub struct Held {
    lines: String,
    records: u64,
}

impl Held {
    /// Records held.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Records per queue item at most.
pub const ITEM_MAX_RECORDS: u64 = 64;
/// Bytes per queue item at most.
pub const ITEM_MAX_BYTES: usize = 64 << 10;

/// Where records go: the queue, found by name in this plugin's vm_id.
pub struct QueueRef {
    /// The plugin's vm_id: the scope of the queue name.
    pub vm_id: String,
    /// The queue's name (`http.queue`).
    pub name: String,
    id: Cell<Option<u32>>,
}

impl QueueRef {
    /// A queue found (or created) on first use.
    pub fn new(vm_id: String, name: String) -> Self {
        QueueRef {
            vm_id,
            name,
            id: Cell::new(None),
        }
    }

    /// Registers the queue (creating it, and making this VM the notified one).
    pub fn register(&self) -> Option<u32> {
        match host::register_queue(&self.name) {
            Ok(id) => {
                self.id.set(Some(id));
                Some(id)
            }
            Err(e) => {
                log::warn!("access-log: cannot register queue {}: {e}", self.name);
                None
            }
        }
    }

    /// The queue id; resolves it, and creates the queue if nobody has yet.
    pub fn id(&self) -> Option<u32> {
        if let Some(id) = self.id.get() {
            return Some(id);
        }
        match host::resolve_queue(&self.vm_id, &self.name) {
            Ok(Some(id)) => {
                self.id.set(Some(id));
                Some(id)
            }
            Ok(None) => self.register(),
            Err(e) => {
                log::debug!("access-log: resolve queue {}: {e}", self.name);
                None
            }
        }
    }

    /// Whether `queue_id` (from `on_queue_ready`) is this queue.
    pub fn is(&self, queue_id: u32) -> bool {
        self.id.get() == Some(queue_id)
    }

    /// Brings `on_queue_ready` to the VM that registered the queue: an
    /// empty item, which [`Sender`] skips.
    pub fn wake(&self) {
        if !self.enqueue("") {
            log::debug!("access-log: cannot wake the sender through {}", self.name);
        }
    }

    /// Adds `line` to `held`: `held` goes on the queue first if `line`
    /// would overflow it, and after if it is then full. Returns how many
    /// records the host refused (the caller counts them dropped).
    pub fn hold(&self, held: &mut Held, line: &str) -> u64 {
        let mut refused = 0;
        if !held.lines.is_empty() && held.lines.len() + 1 + line.len() > ITEM_MAX_BYTES {
            refused += self.put(held);
        }
        if !held.lines.is_empty() {
            held.lines.push('\n');
        }
        held.lines.push_str(line);
        held.records += 1;
        if held.records >= ITEM_MAX_RECORDS || held.lines.len() >= ITEM_MAX_BYTES {
            refused += self.put(held);
        }
        refused
    }

    /// Puts `held` on the queue as one item and empties it; returns how
    /// many records the host refused.
    pub fn put(&self, held: &mut Held) -> u64 {
        let Held { lines, records } = std::mem::take(held);
        if records > 0 && !self.enqueue(&lines) {
            records
        } else {
            0
        }
    }

    /// Puts one item on the queue; false if the host refused.
    pub fn enqueue(&self, record: &str) -> bool {
        let Some(id) = self.id() else { return false };
        match host::enqueue(id, record.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                // A stale id (cannot happen within one process, but cheap to
                // handle): forget it and try once more.
                log::debug!("access-log: enqueue: {e}");
                self.id.set(None);
                self.id()
                    .is_some_and(|id| host::enqueue(id, record.as_bytes()).is_ok())
            }
        }
    }
}

/// One VM's sender: drains the queue while it holds the lease, and ships
/// what it holds (see the module docs).
pub struct Sender {
    sink: HttpSink,
    queue: Rc<QueueRef>,
    lease: Lease,
    shipper: RefCell<Shipper>,
    metrics: Rc<Metrics>,
    /// What this VM last added to the `queue_depth` gauge.
    reported_depth: Cell<u64>,
    /// Consecutive failed sends, to log the first and then every 100th.
    failures_in_row: Cell<u64>,
    me: Weak<Sender>,
}

impl Sender {
    /// A sender for `sink`; `instance` tells VMs apart (lease, batch ids).
    pub fn new(
        sink: HttpSink,
        queue: Rc<QueueRef>,
        metrics: Rc<Metrics>,
        instance: u64,
    ) -> Rc<Self> {
        let tick = Duration::from_millis(sink.tick_ms);
        // A few ticks, so one late tick does not hand the lease over.
        let ttl = (tick * 5).max(Duration::from_millis(500));
        let lease = Lease::new(
            format!("switchyard/access-log/{}/sender", sink.queue),
            ttl,
            instance,
        );
        let shipper = Shipper::new(Limits::from_config(&sink), instance);
        Rc::new_cyclic(|me| Sender {
            sink,
            queue,
            lease,
            shipper: RefCell::new(shipper),
            metrics,
            reported_depth: Cell::new(0),
            failures_in_row: Cell::new(0),
            me: me.clone(),
        })
    }

    /// How often every VM should tick (lease renewal, flush checks).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(self.sink.tick_ms)
    }

    /// Renews or takes the lease; the holder registers the queue (so it is
    /// the VM notified) and drains it. Every VM ships what it holds.
    pub fn on_tick(&self, root: &RootServices) {
        let holder = self.lease.acquire().unwrap_or_else(|e| {
            log::debug!("access-log: lease: {e}");
            false
        });
        if holder {
            self.queue.register();
            self.drain();
        }
        self.pump(&root.callouts);
        self.report_depth();
    }

    /// Records (or a wake-up) arrived on queue `queue_id`.
    pub fn on_queue_ready(&self, root: &RootServices, queue_id: u32) {
        if !self.queue.is(queue_id) {
            return;
        }
        if self.lease.held() {
            self.drain();
        }
        self.pump(&root.callouts);
        self.report_depth();
    }

    /// The VM is shutting down: what this sender holds (in flight,
    /// awaiting a retry, buffered) goes back on the queue for the next
    /// holder, and the lease is given up. A batch in flight may then be
    /// delivered twice (its answer never reaches this VM); none is lost.
    pub fn release(&self) {
        let records = self.shipper.borrow_mut().take_all();
        let mut held = Held::default();
        let mut refused = 0;
        for r in &records {
            refused += self.queue.hold(&mut held, r);
        }
        refused += self.queue.put(&mut held);
        if refused > 0 {
            self.metrics
                .drop_records(&self.metrics.dropped_enqueue, refused);
        }
        self.report_depth();
        let _ = self.lease.release();
    }

    fn drain(&self) {
        let Some(queue) = self.queue.id() else { return };
        let now = host::now_nanos();
        let mut shipper = self.shipper.borrow_mut();
        for _ in 0..MAX_DRAIN {
            match host::dequeue(queue) {
                // A wake-up (see `QueueRef::wake`), not a record.
                Ok(Some(bytes)) if bytes.is_empty() => {}
                // One VM's held records, joined by `\n` (see the stage).
                Ok(Some(bytes)) => {
                    let item = String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    for record in item.split('\n').filter(|r| !r.is_empty()) {
                        if !shipper.push(record.to_string(), now) {
                            self.metrics
                                .drop_records(&self.metrics.dropped_buffer_full, 1);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("access-log: dequeue: {e}");
                    break;
                }
            }
        }
    }

    /// Sends the next batch if one is due (one in flight at a time).
    fn pump(&self, callouts: &Callouts) {
        let now = host::now_nanos();
        let (id, attempt, body) = {
            let mut shipper = self.shipper.borrow_mut();
            let Some(batch) = shipper.next_batch(now) else {
                return;
            };
            let body = match self.sink.format {
                Format::JsonLines => encode::json_lines(&batch.records),
                Format::OtlpJson => encode::otlp_logs(&batch.records, now, "envoy"),
            };
            (batch.id, batch.attempt, body)
        };
        let content_type = match self.sink.format {
            Format::JsonLines => "application/x-ndjson",
            Format::OtlpJson => "application/json",
        };
        let authority = if self.sink.authority.is_empty() {
            &self.sink.cluster
        } else {
            &self.sink.authority
        };
        let request = HttpRequest::post(&self.sink.cluster, &self.sink.path, body)
            .authority(authority)
            .header("content-type", content_type)
            .header(BATCH_ID_HEADER, &format!("{id:016x}"))
            .header("x-switchyard-batch-attempt", &attempt.to_string())
            .timeout(Duration::from_millis(self.sink.timeout_ms));
        let me = self.me.clone();
        self.metrics.batches_sent.inc();
        let sent = callouts.http(request, move |result| {
            if let Some(sender) = me.upgrade() {
                sender.on_result(id, result);
            }
        });
        if let Err(e) = sent {
            self.finish(id, SendResult::Retryable, &e.to_string());
        }
    }

    fn on_result(&self, id: u64, result: Result<HttpResponse, CalloutError>) {
        let (status, why) = match &result {
            Ok(r) => (Some(r.status), String::new()),
            Err(CalloutError::Status(r)) => {
                (Some(r.status), format!("collector answered {}", r.status))
            }
            Err(e) => (None, e.to_string()),
        };
        self.finish(id, shipper::classify(status), &why);
        self.report_depth();
        if self.shipper.borrow().held() > 0 {
            self.queue.wake();
        }
    }

    fn finish(&self, id: u64, result: SendResult, why: &str) {
        let completion = self
            .shipper
            .borrow_mut()
            .complete(id, result, host::now_nanos());
        let m = &self.metrics;
        match completion {
            Completion::Delivered { records } => {
                m.delivered.add(records as u64);
                if self.failures_in_row.replace(0) > 0 {
                    log::info!(
                        "access-log: collector {} reachable again",
                        self.sink.cluster
                    );
                }
                return;
            }
            Completion::Unknown => return,
            Completion::RetryAt { attempt, .. } => {
                self.log_failure(&format!(
                    "batch {id:016x} attempt {attempt} failed ({why}); retrying"
                ));
            }
            Completion::Dropped { records, reason } => {
                let counter = match reason {
                    DropReason::Rejected => &m.dropped_rejected,
                    DropReason::AttemptsExhausted => &m.dropped_attempts,
                    DropReason::BufferFull => &m.dropped_buffer_full,
                };
                m.drop_records(counter, records as u64);
                log::warn!(
                    "access-log: batch {id:016x} of {records} records dropped ({reason:?}: {why})"
                );
            }
        }
        m.batch_failures.inc();
    }

    fn log_failure(&self, message: &str) {
        let n = self.failures_in_row.get() + 1;
        self.failures_in_row.set(n);
        if n == 1 || n.is_multiple_of(100) {
            log::warn!("access-log: {message} [{n} failures in a row]");
        }
    }

    /// Keeps the gauge equal to the sum of every VM's held records.
    fn report_depth(&self) {
        let held = self.shipper.borrow().held() as u64;
        let before = self.reported_depth.replace(held);
        if held != before {
            let delta =
                i64::try_from(held).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
            self.metrics.queue_depth.add(delta);
        }
    }
}
