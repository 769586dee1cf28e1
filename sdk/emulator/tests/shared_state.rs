//! Process-wide state shared by workers: shared data with CAS under real
//! contention, and shared queues with `on_queue_ready` delivered to the VM
//! that registered the queue.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::sync::Barrier;
use std::thread;
use switchyard_emulator::{Host, Worker};

proxy_wasm::main! {{
    // proxy-wasm installs its logger on first use without a lock: two
    // tests starting VMs at once on their threads would both try (and the
    // second panics). Once per process.
    static LOGGER: std::sync::Once = std::sync::Once::new();
    LOGGER.call_once(|| proxy_wasm::set_log_level(LogLevel::Info));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(CounterRoot { context_id, retries: None })
    });
}}

/// Increments per tick; the test runs ticks on two workers at once.
const BATCH: u64 = 500;
const ROUNDS: u64 = 10;
const VM_ID: &str = "counter-vm";

struct CounterRoot {
    context_id: u32,
    retries: Option<u32>,
}

impl CounterRoot {
    /// The classic read-modify-write loop on shared data.
    fn increment(&self, key: &str) {
        loop {
            let (value, cas) = self.get_shared_data(key);
            let current: u64 = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let next = (current + 1).to_string();
            // Widen the read-modify-write window, as a worker preempted
            // between the two calls would, so the workers really collide.
            std::thread::yield_now();
            match self.set_shared_data(key, Some(next.as_bytes()), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => {
                    if let Some(id) = self.retries {
                        hostcalls::increment_metric(id, 1).expect("counter");
                    }
                }
                Err(other) => panic!("set_shared_data failed: {other:?}"),
            }
        }
    }
}

impl Context for CounterRoot {}

impl RootContext for CounterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Every worker registers; Envoy notifies the last registrant.
        self.set_tick_period(std::time::Duration::from_secs(1));
        let queue = self.register_shared_queue("events");
        log::info!("root {} registered queue {queue}", self.context_id);
        self.retries = hostcalls::define_metric(MetricType::Counter, "counter.cas_retries").ok();
        true
    }

    fn on_tick(&mut self) {
        for _ in 0..BATCH {
            self.increment("hits");
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            log::info!("dequeued {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CounterStream {
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct CounterStream {
    path: String,
}

impl Context for CounterStream {}

impl HttpContext for CounterStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        Action::Continue
    }

    fn on_log(&mut self) {
        let queue = self
            .resolve_shared_queue(VM_ID, "events")
            .expect("queue registered in on_configure");
        self.enqueue_shared_queue(queue, Some(format!("done {}", self.path).as_bytes()))
            .expect("enqueue");
    }
}

fn host() -> Host {
    Host::new(_initialize)
        .vm_id(VM_ID)
        // 2 × 5000 increments would drown a failure report in log lines.
        .echo_logs(false)
        .build()
}

fn request(worker: &Worker, path: &str) {
    let stream = worker.http_stream();
    stream.request_headers(
        &[(":method", "GET"), (":path", path), (":authority", "x")],
        true,
    );
    stream.finish();
}

#[test]
fn cas_increments_from_two_workers_are_exact() {
    let host = host();
    // Seed the key: a CAS loop cannot protect the very first insert.
    assert_eq!(host.set_shared_data("hits", "0"), 1);
    let workers = [host.start_worker(), host.start_worker()];
    let barrier = Barrier::new(workers.len());
    thread::scope(|scope| {
        for worker in &workers {
            let barrier = &barrier;
            scope.spawn(move || {
                for _ in 0..ROUNDS {
                    // Both workers start each round together to collide.
                    barrier.wait();
                    worker.tick();
                }
            });
        }
    });
    let total = 2 * ROUNDS * BATCH;
    let (value, cas) = host.shared_data("hits").expect("key exists");
    assert_eq!(String::from_utf8(value).expect("utf-8"), total.to_string());
    // One CAS bump per successful set: the seed, then every increment.
    assert_eq!(u64::from(cas), total + 1);
    let mismatches = host.cas_mismatches();
    println!("{mismatches} CAS mismatches over {total} increments");
    assert!(
        mismatches > 0,
        "two workers racing must collide at least once"
    );
    assert_eq!(host.metric("counter.cas_retries"), Some(mismatches));
}

#[test]
fn cas_rules_follow_envoy() {
    let host = host();
    let worker = host.start_worker();
    let (missing, first, stale, unconditional, fresh, after) = worker.run(|| {
        let missing = hostcalls::get_shared_data("k").expect("get");
        // A new key ignores the CAS.
        let first = hostcalls::set_shared_data("k", Some(b"a"), Some(12345));
        let (_, cas) = hostcalls::get_shared_data("k").expect("get");
        let cas = cas.expect("a set key has a CAS");
        let stale = hostcalls::set_shared_data("k", Some(b"b"), Some(cas + 1000));
        let unconditional = hostcalls::set_shared_data("k", Some(b"c"), None);
        let (_, cas) = hostcalls::get_shared_data("k").expect("get");
        let fresh = hostcalls::set_shared_data("k", Some(b"d"), cas);
        let after = hostcalls::get_shared_data("k").expect("get");
        (missing, first, stale, unconditional, fresh, after)
    });
    assert_eq!(missing, (None, None));
    assert_eq!(first, Ok(()));
    assert_eq!(stale, Err(Status::CasMismatch));
    assert_eq!(unconditional, Ok(()));
    assert_eq!(fresh, Ok(()));
    assert_eq!(after.0.as_deref(), Some(&b"d"[..]));
    assert_eq!(host.shared_data("k").map(|(_, cas)| cas), after.1);
    assert_eq!(host.cas_mismatches(), 1);
}

#[test]
fn queue_ready_runs_on_the_worker_that_registered_last() {
    let host = host();
    let first = host.start_worker();
    let second = host.start_worker();
    request(&first, "/a");
    // Enqueued on worker 0, but the notification is posted to worker 1.
    assert_eq!(host.shared_queue("events"), Some(vec![b"done /a".to_vec()]));
    assert!(host.logs_containing("dequeued").is_empty());
    second.drain();
    let record = host.expect_log_contains("dequeued done /a");
    assert_eq!(record.worker, Some(second.index()));
    assert_eq!(host.shared_queue("events"), Some(vec![]));
}

#[test]
fn queue_ready_on_the_same_worker_runs_right_after_the_call() {
    let host = host();
    let worker = host.start_worker();
    request(&worker, "/b");
    request(&worker, "/c");
    let dequeued: Vec<String> = host
        .logs_containing("dequeued")
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(dequeued, ["dequeued done /b", "dequeued done /c"]);
}

#[test]
fn queue_errors_follow_envoy() {
    let host = host();
    let worker = host.start_worker();
    let (enqueue, dequeue_unknown, resolve_unknown, dequeue_empty) = worker.run(|| {
        let queue = hostcalls::resolve_shared_queue(VM_ID, "events")
            .expect("resolve")
            .expect("registered");
        (
            hostcalls::enqueue_shared_queue(queue + 100, Some(b"x")),
            hostcalls::dequeue_shared_queue(queue + 100),
            hostcalls::resolve_shared_queue("other-vm", "events"),
            hostcalls::dequeue_shared_queue(queue),
        )
    });
    assert_eq!(enqueue, Err(Status::NotFound));
    assert_eq!(dequeue_unknown, Err(Status::NotFound));
    assert_eq!(resolve_unknown, Ok(None));
    assert_eq!(dequeue_empty, Ok(None));
}
