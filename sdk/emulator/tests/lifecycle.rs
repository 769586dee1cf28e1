//! A small filter written with plain proxy-wasm traits, driven through the
//! real dispatcher: configuration, header and body mutation, local replies,
//! metrics across workers, properties, time, and filter panics.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_emulator::Host;

proxy_wasm::main! {{
    // proxy-wasm installs its logger on first use without a lock: two
    // tests starting VMs at once on their threads would both try (and the
    // second panics). Once per process.
    static LOGGER: std::sync::Once = std::sync::Once::new();
    LOGGER.call_once(|| proxy_wasm::set_log_level(LogLevel::Trace));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GreeterRoot::default()) });
}}

/// Plugin configuration: `tag=<value>;deny=<path>`.
#[derive(Default)]
struct Config {
    tag: String,
    deny: String,
}

#[derive(Default)]
struct GreeterRoot {
    config: Rc<Config>,
    requests: Option<u32>,
}

impl Context for GreeterRoot {}

impl RootContext for GreeterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(raw) = self.get_plugin_configuration() else {
            log::error!("greeter: no configuration");
            return false;
        };
        let mut config = Config::default();
        for part in String::from_utf8_lossy(&raw).split(';') {
            match part.split_once('=') {
                Some(("tag", v)) => config.tag = v.to_string(),
                Some(("deny", v)) => config.deny = v.to_string(),
                _ => {}
            }
        }
        if config.tag.is_empty() {
            log::error!("greeter: tag missing");
            return false;
        }
        self.requests = hostcalls::define_metric(MetricType::Counter, "greeter.requests").ok();
        log::info!("greeter configured tag={} deny={}", config.tag, config.deny);
        self.config = Rc::new(config);
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Greeter {
            id: context_id,
            config: Rc::clone(&self.config),
            requests: self.requests,
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Greeter {
    id: u32,
    config: Rc<Config>,
    requests: Option<u32>,
    path: String,
}

impl Context for Greeter {}

impl HttpContext for Greeter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(id) = self.requests {
            hostcalls::increment_metric(id, 1).expect("counter increments");
        }
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        if self.path == "/panic" {
            panic!("boom: deliberate filter panic");
        }
        if self.path == self.config.deny {
            self.send_http_response(403, vec![("x-denied-by", "greeter")], Some(b"denied"));
            return Action::Pause;
        }
        self.add_http_request_header("x-tag", &self.config.tag);
        let _ = self.call_foreign_function("clear_route_cache", None);
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.set_http_request_header("x-now", Some(&now.to_string()));
        let text = |v: Option<Vec<u8>>| v.map(|b| String::from_utf8_lossy(&b).into_owned());
        let client = text(self.get_property(vec!["source", "address"]));
        self.set_http_request_header("x-client", client.as_deref());
        let zone = text(self.get_property(vec!["node", "locality", "zone"]));
        self.set_http_request_header("x-zone", zone.as_deref());
        let root = text(self.get_property(vec!["plugin_root_id"]));
        self.set_http_request_header("x-root-id", root.as_deref());
        let missing = self.get_property(vec!["no", "such", "property"]).is_none();
        self.set_http_request_header("x-missing", Some(&missing.to_string()));
        let method = text(self.get_property(vec!["request", "method"]));
        self.set_http_request_header("x-method", method.as_deref());
        self.set_property(vec!["greeter", "seen"], Some(b"yes"));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.path != "/upper" {
            return Action::Continue;
        }
        if !end_of_stream {
            // Envoy buffers; the next callback sees everything so far.
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-served-by", Some("greeter"));
        if self.path == "/late-read" {
            // A real bug class: Envoy no longer exposes the request headers
            // here, returns BadArgument, and proxy-wasm panics.
            let _ = self.get_http_request_header("x-tag");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The access-log phase sees the final request headers.
        let tag = self.get_http_request_header("x-tag").unwrap_or_default();
        log::info!("access log stream={} path={} tag={tag}", self.id, self.path);
    }
}

fn host() -> Host {
    Host::new(_initialize)
        .root_id("greeter")
        .plugin_config("tag=blue;deny=/admin")
        .property(&["node", "locality", "zone"], "eu-west-1a")
        .build()
}

const GET: [(&str, &str); 3] = [
    (":method", "GET"),
    (":path", "/hello"),
    (":authority", "svc"),
];

#[test]
fn configuration_reaches_on_configure() {
    let host = host();
    let worker = host.start_worker();
    assert!(worker.vm_started());
    assert!(worker.configured());
    let record = host.expect_log_contains("greeter configured tag=blue deny=/admin");
    assert_eq!(record.level, switchyard_emulator::LogLevel::Info);
    assert_eq!(record.worker, Some(0));

    let unconfigured = Host::new(_initialize).build();
    let worker = unconfigured.start_worker();
    assert!(!worker.configured(), "empty configuration must be rejected");
    unconfigured.expect_log_contains("greeter: no configuration");
}

#[test]
fn request_headers_are_mutated() {
    let host = host();
    let stream = host.start_worker().http_stream();
    assert_eq!(
        stream.request_headers(&GET, true),
        switchyard_emulator::Action::Continue
    );
    assert_eq!(stream.request_header("x-tag").as_deref(), Some("blue"));
    assert_eq!(stream.request_header("X-Tag").as_deref(), Some("blue"));
    assert_eq!(stream.route_cache_clears(), 1);
    assert!(stream.local_response().is_none());
    let names: Vec<String> = stream
        .request_headers_now()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(&names[..4], [":method", ":path", ":authority", "x-tag"]);

    assert_eq!(
        stream.response_headers(&[(":status", "200")], true),
        switchyard_emulator::Action::Continue
    );
    assert_eq!(
        stream.response_header("x-served-by").as_deref(),
        Some("greeter")
    );
    stream.finish();
    assert!(stream.is_finished());
    host.expect_log_contains(&format!(
        "access log stream={} path=/hello tag=blue",
        stream.id()
    ));
}

#[test]
fn local_reply_is_recorded_and_encoded_through_the_filter() {
    let host = host();
    let stream = host.start_worker().http_stream();
    let denied = [
        (":method", "GET"),
        (":path", "/admin"),
        (":authority", "svc"),
    ];
    assert_eq!(
        stream.request_headers(&denied, true),
        switchyard_emulator::Action::Pause
    );
    let reply = stream.expect_local_response(403);
    assert_eq!(reply.body_text(), "denied");
    assert_eq!(reply.header("x-denied-by").as_deref(), Some("greeter"));
    assert_eq!(reply.grpc_status, None);
    // Envoy sends the local reply through the encoder filters, this one too.
    assert_eq!(stream.response_header(":status").as_deref(), Some("403"));
    assert_eq!(
        stream.response_header("x-served-by").as_deref(),
        Some("greeter")
    );
    assert_eq!(stream.response_body_sent(), b"denied");
    assert_eq!(stream.request_header("x-tag"), None);
}

#[test]
fn counter_aggregates_across_workers_under_one_id() {
    let host = host();
    let first = host.start_worker();
    let second = host.start_worker();
    for (worker, requests) in [(&first, 3), (&second, 2)] {
        for _ in 0..requests {
            let stream = worker.http_stream();
            stream.request_headers(&GET, true);
            stream.finish();
        }
    }
    assert_eq!(host.metric("greeter.requests"), Some(5));
    let define = || hostcalls::define_metric(MetricType::Counter, "greeter.requests");
    let id_first = first.run(define).expect("defined");
    let id_second = second.run(define).expect("defined");
    assert_eq!(id_first, id_second);
    assert_eq!(host.metric_id("greeter.requests"), Some(id_first));
    assert_eq!(second.run(move || hostcalls::get_metric(id_first)), Ok(5));
}

#[test]
fn metric_rules_follow_envoy() {
    let host = host();
    let worker = host.start_worker();
    let results = worker.run(|| {
        let counter = hostcalls::define_metric(MetricType::Counter, "c").expect("counter");
        let gauge = hostcalls::define_metric(MetricType::Gauge, "g").expect("gauge");
        let histogram = hostcalls::define_metric(MetricType::Histogram, "h").expect("histogram");
        (
            hostcalls::increment_metric(counter, -1),
            hostcalls::increment_metric(counter, 0),
            hostcalls::increment_metric(gauge, 10)
                .and_then(|()| hostcalls::increment_metric(gauge, -3)),
            hostcalls::record_metric(histogram, 42)
                .and_then(|()| hostcalls::record_metric(histogram, 7)),
            hostcalls::get_metric(gauge),
            hostcalls::get_metric(histogram),
            hostcalls::increment_metric(0xdead_0000, 1),
        )
    });
    assert_eq!(
        results.0,
        Err(Status::BadArgument),
        "negative counter increment"
    );
    assert_eq!(
        results.1,
        Err(Status::BadArgument),
        "zero counter increment"
    );
    assert_eq!(results.2, Ok(()));
    assert_eq!(results.3, Ok(()));
    assert_eq!(results.4, Ok(7));
    assert_eq!(results.5, Err(Status::BadArgument));
    assert_eq!(results.6, Err(Status::NotFound));
    assert_eq!(host.histogram("h"), Some(vec![42, 7]));
    assert_eq!(host.metrics().get("g"), Some(&7));
}

#[test]
fn time_is_controlled_by_the_test() {
    let host = host();
    let worker = host.start_worker();
    let start = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    assert_eq!(host.now(), start, "clock starts at 2026-01-01T00:00:00Z");
    let seen_now = |worker: &switchyard_emulator::Worker| {
        let stream = worker.http_stream();
        stream.request_headers(&GET, true);
        stream.request_header("x-now")
    };
    assert_eq!(seen_now(&worker).as_deref(), Some("1767225600"));
    host.advance(Duration::from_secs(90));
    assert_eq!(seen_now(&worker).as_deref(), Some("1767225690"));
    host.set_time(UNIX_EPOCH + Duration::from_secs(2_000_000_000));
    assert_eq!(seen_now(&worker).as_deref(), Some("2000000000"));
    let seen = worker.run(|| hostcalls::get_current_time().expect("time"));
    assert_eq!(seen, host.now());
    assert!(seen > SystemTime::UNIX_EPOCH);
}

#[test]
fn properties_come_from_stream_worker_and_host() {
    let host = host();
    let worker = host.start_worker();
    worker.set_property(&["source", "address"], "10.0.0.9:1000");
    let stream = worker.http_stream();
    stream.set_property(&["source", "address"], "192.0.2.7:5555");
    stream.request_headers(&GET, true);
    assert_eq!(
        stream.request_header("x-client").as_deref(),
        Some("192.0.2.7:5555")
    );
    assert_eq!(
        stream.request_header("x-zone").as_deref(),
        Some("eu-west-1a")
    );
    assert_eq!(
        stream.request_header("x-root-id").as_deref(),
        Some("greeter")
    );
    assert_eq!(stream.request_header("x-missing").as_deref(), Some("true"));
    assert_eq!(stream.request_header("x-method").as_deref(), Some("GET"));
    let seen = stream.run(|| hostcalls::get_property(vec!["greeter", "seen"]));
    assert_eq!(seen, Ok(Some(b"yes".to_vec())));

    // Without a stream value, the worker-level one shows.
    let other = worker.http_stream();
    other.request_headers(&GET, true);
    assert_eq!(
        other.request_header("x-client").as_deref(),
        Some("10.0.0.9:1000")
    );
}

#[test]
fn buffered_body_is_rewritten() {
    let host = host();
    let stream = host.start_worker().http_stream();
    let upper = [
        (":method", "POST"),
        (":path", "/upper"),
        (":authority", "svc"),
    ];
    assert_eq!(
        stream.request_headers(&upper, false),
        switchyard_emulator::Action::Continue
    );
    assert_eq!(
        stream.request_body(b"hello ", false),
        switchyard_emulator::Action::Pause
    );
    assert_eq!(stream.request_body_sent(), b"");
    assert_eq!(
        stream.request_body(b"world", true),
        switchyard_emulator::Action::Continue
    );
    assert_eq!(stream.request_body_sent(), b"HELLO WORLD");
}

#[test]
#[should_panic(expected = "boom: deliberate filter panic")]
fn filter_panic_fails_the_call_with_its_message() {
    let host = host();
    let stream = host.start_worker().http_stream();
    let panic = [
        (":method", "GET"),
        (":path", "/panic"),
        (":authority", "svc"),
    ];
    stream.request_headers(&panic, true);
}

#[test]
fn filter_panic_kills_only_that_vm() {
    let host = host();
    let doomed = host.start_worker();
    let healthy = host.start_worker();
    let stream = doomed.http_stream();
    let panic = [
        (":method", "GET"),
        (":path", "/panic"),
        (":authority", "svc"),
    ];
    let failure = catch_unwind(AssertUnwindSafe(|| stream.request_headers(&panic, true)))
        .expect_err("the call must fail");
    let message = failure
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("filter panicked on worker 0"), "{message}");
    assert!(
        message.contains("boom: deliberate filter panic"),
        "{message}"
    );
    assert!(
        message.contains("lifecycle.rs"),
        "location included: {message}"
    );
    assert!(doomed.crash_message().is_some());
    // proxy-wasm's panic hook logs at Critical; so does the emulator.
    let critical = host.expect_log_contains("boom: deliberate filter panic");
    assert_eq!(critical.level, switchyard_emulator::LogLevel::Critical);
    // The VM is gone, as in Envoy after a trap...
    assert!(catch_unwind(AssertUnwindSafe(|| doomed.tick())).is_err());
    // ...but the other worker's VM is fine.
    let stream = healthy.http_stream();
    assert_eq!(
        stream.request_headers(&GET, true),
        switchyard_emulator::Action::Continue
    );
    assert!(healthy.crash_message().is_none());
}

#[test]
fn reading_request_headers_in_the_response_phase_panics_like_envoy() {
    let host = host();
    let stream = host.start_worker().http_stream();
    let late = [
        (":method", "GET"),
        (":path", "/late-read"),
        (":authority", "svc"),
    ];
    assert_eq!(
        stream.request_headers(&late, true),
        switchyard_emulator::Action::Continue
    );
    let failure = catch_unwind(AssertUnwindSafe(|| {
        stream.response_headers(&[(":status", "200")], true)
    }))
    .expect_err("proxy-wasm panics on BadArgument");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("unexpected status: 2"), "{message}");
    let failures = host.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].call, "proxy_get_header_map_value");
    assert_eq!(failures[0].status, switchyard_emulator::Status::BadArgument);
    assert!(failures[0].detail.contains("request headers not available"));
}

#[test]
fn host_calls_off_a_worker_thread_fail_without_aborting() {
    // No VM on the test thread: proxy-wasm sees InternalFailure and panics
    // normally (no abort across the extern "C" boundary).
    let host = host();
    let _worker = host.start_worker();
    assert!(catch_unwind(hostcalls::get_current_time).is_err());
    assert_eq!(
        hostcalls::log(LogLevel::Info, "from the test thread"),
        Ok(())
    );
}
