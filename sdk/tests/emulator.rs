//! The SDK through its own ABI dispatcher in the host emulator: CAS under
//! contention, lease failover, once-per-interval jobs, callouts, config
//! refusal, bytes in headers.

use serde::Deserialize;
use std::cell::RefCell;
use std::time::Duration;
use switchyard_emulator::{CallOutcome, Host};
use switchyard_sdk::callout::{CalloutError, HttpRequest};
use switchyard_sdk::config::{ConfigError, Validate, ensure};
use switchyard_sdk::job::Job;
use switchyard_sdk::lease::Lease;
use switchyard_sdk::shared::{SharedValue, Update, UpdateError};
use switchyard_sdk::stage::{Exchange, Flow, Phases, RootServices, Setup, Stage, StageSpec};
use switchyard_sdk::{host, vm};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TestConfig {
    lease_ttl_ms: u64,
    poll_cluster: Option<String>,
}

impl Validate for TestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(self.lease_ttl_ms > 0, "lease_ttl_ms", "must be > 0")
    }
}

/// A root context that elects a tick leader and, as leader, polls a cluster.
/// A stage that elects a tick leader and, as leader, polls a cluster; its
/// streams record what they see of `x-bin`.
struct TestStage {
    lease: Lease,
    job: Job,
    config: TestConfig,
}

const SPEC: StageSpec = StageSpec {
    name: "sdk_test",
    filter: "sdk-test",
    build,
    phases: Phases::REQUEST,
};

fn build(
    raw: switchyard_sdk::config::Source<'_>,
    _: &Setup,
) -> Result<Box<dyn Stage>, ConfigError> {
    let config: TestConfig = switchyard_sdk::config::parse(raw)?;
    Ok(Box::new(TestStage {
        lease: Lease::new(
            "test/leader-lease",
            Duration::from_millis(config.lease_ttl_ms),
            vm::instance_id(),
        ),
        job: Job::new("test/job", Duration::from_secs(1)),
        config,
    }))
}

extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}

thread_local! {
    /// The last poll outcome in this VM ("ok 200" / "err ..."), read by tests
    /// through `Worker::run`.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
    /// How often this VM won the job's claim.
    static JOB_RUNS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

fn record_poll(outcome: Result<u16, CalloutError>) {
    let text = match outcome {
        Ok(status) => format!("ok {status}"),
        Err(e) => format!("err {e}"),
    };
    LAST.with(|l| *l.borrow_mut() = Some(text));
}

fn last_poll() -> Option<String> {
    LAST.with(|l| l.borrow().clone())
}

type Seen = (Option<Vec<u8>>, Option<String>);

thread_local! {
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

impl Stage for TestStage {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        let map = ex.request();
        let seen = (
            map.get("x-bin").map(<[u8]>::to_vec),
            map.get_str("x-bin").map(str::to_string),
        );
        SEEN.with(|s| *s.borrow_mut() = Some(seen));
        Flow::Continue
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(Duration::from_millis(500))
    }

    fn on_tick(&self, root: &RootServices) {
        if self.job.claim(host::now_nanos()) {
            JOB_RUNS.with(|r| r.set(r.get() + 1));
        }
        if !self.lease.acquire().unwrap_or(false) {
            return;
        }
        let leader = SharedValue::<u64>::new("test/leader");
        let _ = leader.set(&vm::instance_id());
        if let Some(cluster) = &self.config.poll_cluster {
            let sent = root
                .callouts
                .http(HttpRequest::get(cluster, "/endpoints"), |r| {
                    record_poll(r.map(|resp| resp.status))
                });
            if let Err(e) = sent {
                record_poll(Err(e));
            }
        }
    }
}

const CONFIG: &str = r#"{"lease_ttl_ms": 3000}"#;

fn shared_u64(host: &Host, key: &str) -> Option<u64> {
    let (bytes, _) = host.shared_data(key)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[test]
fn two_workers_hammering_one_counter_lose_no_update() {
    let host = Host::new(init).plugin_config(CONFIG).build();
    let workers = [host.start_worker(), host.start_worker()];
    const PER_WORKER: u64 = 5_000;
    // Keys known up front are created at configure time (see shared.rs).
    workers[0].run(|| SharedValue::<u64>::new("test/counter").ensure(&0).unwrap());
    let conflicts: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .map(|w| {
                s.spawn(move || {
                    w.run(|| {
                        let counter = SharedValue::<u64>::new("test/counter");
                        let mut done = 0;
                        while done < PER_WORKER {
                            match counter.update(|n| {
                                // Work between the read and the write, as a
                                // real filter has: it opens the race window.
                                std::thread::yield_now();
                                Update::Write(n.copied().unwrap_or(0) + 1, ())
                            }) {
                                Ok(()) => done += 1,
                                // Out of retries: nothing was written, so try again.
                                Err(UpdateError::Contended { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                        counter.stats().cas_conflicts
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(
        shared_u64(&host, "test/counter"),
        Some(2 * PER_WORKER),
        "lost updates"
    );
    assert!(
        conflicts > 0,
        "the workers never raced: the test proves nothing"
    );
    assert_eq!(
        host.cas_mismatches(),
        conflicts,
        "host and SDK agree on CAS retries"
    );
    println!("CAS conflicts retried: {conflicts}");
}

#[test]
fn lease_fails_over_when_the_holder_stops_ticking() {
    let host = Host::new(init).plugin_config(CONFIG).build();
    let a = host.start_worker();
    let b = host.start_worker();
    let id_a = a.run(vm::instance_id);
    let id_b = b.run(vm::instance_id);
    assert_ne!(id_a, id_b);

    a.tick();
    b.tick();
    assert_eq!(
        shared_u64(&host, "test/leader"),
        Some(id_a),
        "first ticker leads"
    );
    for _ in 0..5 {
        host.advance(Duration::from_secs(1));
        b.tick();
        a.tick();
        assert_eq!(
            shared_u64(&host, "test/leader"),
            Some(id_a),
            "A renews, B waits"
        );
    }
    // A stops ticking (stuck or gone). B takes over only after the TTL.
    host.advance(Duration::from_millis(2_000));
    b.tick();
    assert_eq!(
        shared_u64(&host, "test/leader"),
        Some(id_a),
        "not expired yet"
    );
    host.advance(Duration::from_millis(1_001));
    b.tick();
    assert_eq!(shared_u64(&host, "test/leader"), Some(id_b), "B took over");
    // A comes back: B holds a live lease, so A does not lead.
    host.advance(Duration::from_secs(1));
    a.tick();
    b.tick();
    assert_eq!(shared_u64(&host, "test/leader"), Some(id_b));
}

#[test]
fn leader_callouts_resolve_through_closures() {
    let config = r#"{"lease_ttl_ms": 3000, "poll_cluster": "control"}"#;
    let host = Host::new(init)
        .plugin_config(config)
        .clusters(["control"])
        .build();
    let w = host.start_worker();
    w.tick();
    let call = host.expect_http_call("control");
    assert_eq!(call.header(":path"), Some("/endpoints"));
    assert_eq!(call.header(":method"), Some("GET"));
    w.respond_http_call(call.token, CallOutcome::status(200, "[]"));
    let got = w.run(last_poll);
    assert_eq!(got.as_deref(), Some("ok 200"));

    host.advance(Duration::from_secs(1));
    w.tick();
    let call = host.http_calls().pop().expect("second poll");
    // Envoy's async client answers a timeout with its own 504.
    w.respond_http_call(call.token, CallOutcome::Timeout);
    assert_eq!(
        w.run(last_poll).as_deref(),
        Some("err upstream answered 504")
    );

    host.advance(Duration::from_secs(1));
    w.tick();
    let call = host.http_calls().pop().expect("poll after timeout");
    w.respond_http_call(call.token, CallOutcome::Reset);
    assert_eq!(
        w.run(last_poll).as_deref(),
        Some("err no response (reset or connection lost)")
    );

    host.advance(Duration::from_secs(1));
    w.tick();
    let call = host.http_calls().pop().expect("third poll");
    w.respond_http_call(call.token, CallOutcome::status(503, "busy"));
    assert_eq!(
        w.run(last_poll).as_deref(),
        Some("err upstream answered 503")
    );
}

#[test]
fn dispatch_to_an_unknown_cluster_is_an_error_value() {
    let config = r#"{"lease_ttl_ms": 3000, "poll_cluster": "nope"}"#;
    let host = Host::new(init)
        .plugin_config(config)
        .clusters(["control"])
        .build();
    let w = host.start_worker();
    w.tick();
    assert!(host.http_calls().is_empty());
    let got = w.run(last_poll);
    assert!(
        got.as_deref()
            .is_some_and(|s| s.starts_with("err callout not sent")),
        "{got:?}"
    );
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    let host = Host::new(init)
        .plugin_config(r#"{"lease_ttl_ms": 0}"#)
        .build();
    let w = host.start_worker();
    assert!(!w.configured());
    host.expect_log_contains("sdk-test: invalid configuration: lease_ttl_ms: must be > 0");
    let host = Host::new(init).plugin_config(r#"{"lease_ttl": 5}"#).build();
    assert!(!host.start_worker().configured());
    host.expect_log_contains("unknown field `lease_ttl`");
}

#[test]
fn header_values_that_are_not_utf8_do_not_panic() {
    let host = Host::new(init).plugin_config(CONFIG).build();
    let w = host.start_worker();
    let s = w.http_stream();
    s.request_headers_bytes(&[(":path", b"/"), ("x-bin", b"\xff\xfe\x00ok")], true);
    let (raw, text) = w
        .run(|| SEEN.with(|s| s.borrow_mut().take()))
        .expect("callback ran");
    assert_eq!(raw.as_deref(), Some(&b"\xff\xfe\x00ok"[..]));
    assert_eq!(text, None, "not UTF-8: no string, and no panic");
    // Outside its callback Envoy refuses the map (BadArgument), which
    // proxy-wasm's getters turn into a panic; the SDK returns a value.
    let err = s.run(|| host::header(host::MapType::HttpRequestHeaders, "x-bin").err());
    assert_eq!(err.map(|e| e.status), Some(host::code::BAD_ARGUMENT));
}

#[test]
fn a_job_runs_once_per_interval_whatever_the_worker_count() {
    let host = Host::new(init).plugin_config(CONFIG).build();
    let workers: Vec<_> = (0..4).map(|_| host.start_worker()).collect();
    // 10 s of ticks every 500 ms on four workers: a 1 s job runs 10 times.
    for _ in 0..20 {
        for w in &workers {
            w.tick();
        }
        host.advance(Duration::from_millis(500));
    }
    let runs: u32 = workers
        .iter()
        .map(|w| w.run(|| JOB_RUNS.with(|r| r.get())))
        .sum();
    assert_eq!(runs, 10, "once per interval across workers");
}
