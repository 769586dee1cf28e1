//! HTTP and gRPC callouts: captured with their arguments, answered by the
//! test (success, timeout, reset, gRPC failure), delivered to the context
//! and worker that dispatched them.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;
use switchyard_emulator::{CallOutcome, GrpcOutcome, GrpcStreamEvent, Host};

proxy_wasm::main! {{
    // proxy-wasm installs its logger on first use without a lock: two
    // tests starting VMs at once on their threads would both try (and the
    // second panics). Once per process.
    static LOGGER: std::sync::Once = std::sync::Once::new();
    LOGGER.call_once(|| proxy_wasm::set_log_level(LogLevel::Trace));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PollerRoot) });
}}

/// Polls `auth` on every tick and records the answer in shared data.
struct PollerRoot;

impl Context for PollerRoot {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize, _: usize) {
        // After a reset Envoy has no response map at all: reading a header
        // would be BadArgument (a panic in proxy-wasm). Check the count first.
        let status = if headers == 0 {
            "none".to_string()
        } else {
            self.get_http_call_response_header(":status")
                .unwrap_or_default()
        };
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let (code, message) = self.get_grpc_status();
        let reason = format!("{code}:{}", message.unwrap_or_default());
        for (key, value) in [
            ("poll.status", status.as_bytes()),
            ("poll.body", &body),
            ("poll.headers", headers.to_string().as_bytes()),
            ("poll.reason", reason.as_bytes()),
        ] {
            self.set_shared_data(key, Some(value), None)
                .expect("shared data");
        }
        log::info!("poll response token={token} status={status}");
    }
}

impl RootContext for PollerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.set_tick_period(Duration::from_secs(5));
        true
    }

    fn on_tick(&mut self) {
        let headers = vec![
            (":method", "GET"),
            (":path", "/status"),
            (":authority", "auth.internal"),
            ("x-probe", "1"),
        ];
        match self.dispatch_http_call("auth", headers, None, vec![], Duration::from_secs(2)) {
            Ok(token) => log::info!("poll dispatched token={token}"),
            Err(status) => log::warn!("poll rejected: {status:?}"),
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Gates requests on an auth callout (HTTP) or a policy check (gRPC).
struct Gate;

impl Context for Gate {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _: usize) {
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => {
                let body = self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default();
                self.set_http_request_header("x-auth", Some(&String::from_utf8_lossy(&body)));
                self.resume_http_request();
            }
            other => self.send_http_response(
                503,
                vec![("x-auth-status", other.unwrap_or("none"))],
                Some(b"auth unavailable"),
            ),
        }
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, size: usize) {
        if status_code == 0 {
            let reply = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            self.set_http_request_header("x-grpc-reply", Some(&String::from_utf8_lossy(&reply)));
            self.resume_http_request();
        } else {
            let (code, message) = self.get_grpc_status();
            let message = message.unwrap_or_default();
            self.send_http_response(
                502,
                vec![("x-grpc-status", &code.to_string())],
                Some(message.as_bytes()),
            );
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _count: u32) {
        let value = self
            .get_grpc_stream_initial_metadata_value("x-session")
            .unwrap_or_default();
        log::info!(
            "watch metadata x-session={}",
            String::from_utf8_lossy(&value)
        );
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        log::info!("watch message {}", String::from_utf8_lossy(&message));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        log::info!("watch closed {status_code}");
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        match path.as_str() {
            "/check" => {
                let user = self.get_http_request_header("x-user").unwrap_or_default();
                let headers = vec![
                    (":method", "POST"),
                    (":path", "/check"),
                    (":authority", "auth.internal"),
                    ("x-user", user.as_str()),
                ];
                let timeout = Duration::from_millis(750);
                match self.dispatch_http_call("auth", headers, Some(b"who?"), vec![], timeout) {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        self.send_http_response(
                            500,
                            vec![],
                            Some(format!("{status:?}").as_bytes()),
                        );
                        Action::Pause
                    }
                }
            }
            "/grpc" => {
                let call = self.dispatch_grpc_call(
                    "policy",
                    "pkg.Checker",
                    "Check",
                    vec![("x-md", b"v")],
                    Some(b"req"),
                    Duration::from_secs(1),
                );
                match call {
                    Ok(_) => Action::Pause,
                    Err(status) => panic!("grpc call rejected: {status:?}"),
                }
            }
            "/watch" => {
                let token = self
                    .open_grpc_stream("policy", "pkg.Watcher", "Watch", vec![])
                    .expect("stream opens");
                self.send_grpc_stream_message(token, Some(b"hello"), false);
                Action::Continue
            }
            "/bad" => {
                let no_authority = vec![(":method", "GET"), (":path", "/")];
                let result =
                    self.dispatch_http_call("auth", no_authority, None, vec![], Duration::ZERO);
                self.set_http_request_header("x-missing-authority", Some(&format!("{result:?}")));
                let full = vec![(":method", "GET"), (":path", "/"), (":authority", "a")];
                let result = self.dispatch_http_call("nowhere", full, None, vec![], Duration::ZERO);
                self.set_http_request_header("x-unknown-cluster", Some(&format!("{result:?}")));
                let result =
                    self.dispatch_grpc_call("nowhere", "s", "m", vec![], None, Duration::ZERO);
                self.set_http_request_header("x-unknown-grpc", Some(&format!("{result:?}")));
                Action::Continue
            }
            _ => Action::Continue,
        }
    }
}

fn host() -> Host {
    Host::new(_initialize).clusters(["auth", "policy"]).build()
}

fn shared(host: &Host, key: &str) -> String {
    let (value, _) = host.shared_data(key).unwrap_or_default();
    String::from_utf8(value).expect("utf-8")
}

fn request(path: &str) -> [(&str, &str); 4] {
    [
        (":method", "GET"),
        (":path", path),
        (":authority", "svc"),
        ("x-user", "alice"),
    ]
}

#[test]
fn tick_period_is_recorded() {
    let worker = host().start_worker();
    assert_eq!(worker.tick_period(), Some(Duration::from_secs(5)));
}

#[test]
fn tick_dispatches_a_callout_that_the_test_answers() {
    let host = host();
    let worker = host.start_worker();
    worker.tick();
    let call = host.expect_http_call("auth");
    assert_eq!(call.worker, 0);
    assert_eq!(call.context_id, worker.root_context_id());
    assert_eq!(call.header(":path"), Some("/status"));
    assert_eq!(call.header(":authority"), Some("auth.internal"));
    assert_eq!(call.header("x-probe"), Some("1"));
    assert_eq!(call.timeout, Duration::from_secs(2));
    assert!(call.body.is_empty());

    worker.respond_http_call(
        call.token,
        CallOutcome::response(200, &[("content-type", "text/plain")], "ok"),
    );
    assert!(host.http_calls().is_empty(), "answered calls are gone");
    assert_eq!(shared(&host, "poll.status"), "200");
    assert_eq!(shared(&host, "poll.body"), "ok");
    assert_eq!(shared(&host, "poll.headers"), "2");
}

#[test]
fn timeout_and_reset_are_delivered_like_envoy() {
    let host = host();
    let worker = host.start_worker();

    // Envoy's async client turns a timeout into a local 504 response.
    worker.tick();
    worker.respond_http_call(host.expect_http_call("auth").token, CallOutcome::Timeout);
    assert_eq!(shared(&host, "poll.status"), "504");
    assert_eq!(shared(&host, "poll.body"), "upstream request timeout");

    // A reset delivers no headers and no body; the status says why.
    worker.tick();
    worker.respond_http_call(host.expect_http_call("auth").token, CallOutcome::Reset);
    assert_eq!(shared(&host, "poll.status"), "none");
    assert_eq!(shared(&host, "poll.headers"), "0");
    assert_eq!(shared(&host, "poll.body"), "");
    assert_eq!(shared(&host, "poll.reason"), "11:reset");
}

#[test]
fn stream_callout_pauses_then_resumes() {
    let host = host();
    let worker = host.start_worker();
    let stream = worker.http_stream();
    assert_eq!(
        stream.request_headers(&request("/check"), true),
        switchyard_emulator::Action::Pause
    );
    let call = host.expect_http_call("auth");
    assert_eq!(call.context_id, stream.id());
    assert_eq!(call.header("x-user"), Some("alice"));
    assert_eq!(call.body, b"who?");
    assert_eq!(call.timeout, Duration::from_millis(750));
    assert!(!stream.resumed());

    host.respond_http_call(call.token, CallOutcome::status(200, "alice-ok"));
    assert!(stream.request_resumed());
    assert_eq!(stream.request_header("x-auth").as_deref(), Some("alice-ok"));
    assert!(stream.local_response().is_none());
}

#[test]
fn stream_callout_failure_sends_a_local_reply() {
    let host = host();
    let worker = host.start_worker();
    let stream = worker.http_stream();
    stream.request_headers(&request("/check"), true);
    let token = host.expect_http_call("auth").token;
    worker.respond_http_call(token, CallOutcome::status(403, "no"));
    let reply = stream.expect_local_response(503);
    assert_eq!(reply.header("x-auth-status").as_deref(), Some("403"));
    assert_eq!(reply.body_text(), "auth unavailable");
    assert!(!stream.request_resumed());
}

#[test]
fn callouts_of_a_finished_stream_are_cancelled() {
    let host = host();
    let worker = host.start_worker();
    let stream = worker.http_stream();
    stream.request_headers(&request("/check"), true);
    let token = host.expect_http_call("auth").token;
    stream.finish();
    assert!(host.http_calls().is_empty());
    let late = catch_unwind(AssertUnwindSafe(|| {
        worker.respond_http_call(token, CallOutcome::status(200, ""))
    }));
    assert!(late.is_err(), "a cancelled call cannot be answered");
}

#[test]
fn invalid_callouts_are_rejected_like_envoy() {
    let host = host();
    let stream = host.start_worker().http_stream();
    assert_eq!(
        stream.request_headers(&request("/bad"), true),
        switchyard_emulator::Action::Continue
    );
    assert_eq!(
        stream.request_header("x-missing-authority").as_deref(),
        Some("Err(BadArgument)")
    );
    assert_eq!(
        stream.request_header("x-unknown-cluster").as_deref(),
        Some("Err(BadArgument)")
    );
    assert_eq!(
        stream.request_header("x-unknown-grpc").as_deref(),
        Some("Err(ParseFailure)")
    );
    assert!(host.http_calls().is_empty());
    let details: Vec<String> = host.failures().into_iter().map(|f| f.detail).collect();
    assert!(
        details.contains(&"missing :authority header".to_string()),
        "{details:?}"
    );
    assert!(
        details.contains(&"unknown cluster \"nowhere\"".to_string()),
        "{details:?}"
    );
}

#[test]
fn responses_go_to_the_worker_that_dispatched() {
    let host = host();
    let first = host.start_worker();
    let second = host.start_worker();
    first.tick();
    second.tick();
    let calls = host.http_calls();
    assert_eq!(calls.len(), 2);
    let token_of = |worker: usize| {
        calls
            .iter()
            .find(|c| c.worker == worker)
            .map(|c| c.token)
            .expect("one call per worker")
    };
    let wrong = catch_unwind(AssertUnwindSafe(|| {
        first.respond_http_call(token_of(1), CallOutcome::status(200, ""))
    }));
    let message = wrong
        .expect_err("wrong worker")
        .downcast_ref::<String>()
        .cloned();
    assert!(message.unwrap_or_default().contains("belongs to worker 1"));

    host.respond_http_call(token_of(1), CallOutcome::status(201, ""));
    host.respond_http_call(token_of(0), CallOutcome::status(202, ""));
    assert_eq!(host.expect_log_contains("status=201").worker, Some(1));
    assert_eq!(host.expect_log_contains("status=202").worker, Some(0));
}

#[test]
fn grpc_unary_success_and_failure() {
    let host = host();
    let worker = host.start_worker();

    let granted = worker.http_stream();
    assert_eq!(
        granted.request_headers(&request("/grpc"), true),
        switchyard_emulator::Action::Pause
    );
    let calls = host.grpc_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.token % 2, 1, "unary call tokens are odd, as in Envoy");
    assert_eq!(
        (call.upstream.as_str(), call.service.as_str()),
        ("policy", "pkg.Checker")
    );
    assert_eq!(call.method, "Check");
    assert_eq!(call.message, b"req");
    assert_eq!(call.metadata, vec![("x-md".to_string(), b"v".to_vec())]);
    assert_eq!(call.timeout, Duration::from_secs(1));
    worker.respond_grpc_call(call.token, GrpcOutcome::Message(b"granted".to_vec()));
    assert!(granted.request_resumed());
    assert_eq!(
        granted.request_header("x-grpc-reply").as_deref(),
        Some("granted")
    );

    let refused = worker.http_stream();
    refused.request_headers(&request("/grpc"), true);
    let token = host.grpc_calls()[0].token;
    host.respond_grpc_call(
        token,
        GrpcOutcome::Status {
            code: 14,
            message: "policy unavailable".into(),
        },
    );
    let reply = refused.expect_local_response(502);
    assert_eq!(reply.header("x-grpc-status").as_deref(), Some("14"));
    assert_eq!(reply.body_text(), "policy unavailable");
    assert!(host.grpc_calls().is_empty());
}

#[test]
fn grpc_stream_events_reach_the_stream() {
    let host = host();
    let worker = host.start_worker();
    let stream = worker.http_stream();
    assert_eq!(
        stream.request_headers(&request("/watch"), true),
        switchyard_emulator::Action::Continue
    );
    let open = host.grpc_streams();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].token % 2, 0, "stream tokens are even, as in Envoy");
    assert_eq!(open[0].method, "Watch");
    assert_eq!(open[0].sent, vec![b"hello".to_vec()]);
    let token = open[0].token;

    let metadata = vec![("x-session".to_string(), b"s-1".to_vec())];
    worker.grpc_stream_event(token, GrpcStreamEvent::InitialMetadata(metadata));
    worker.grpc_stream_event(token, GrpcStreamEvent::Message(b"update-1".to_vec()));
    worker.grpc_stream_event(
        token,
        GrpcStreamEvent::Close {
            code: 0,
            message: String::new(),
        },
    );
    host.expect_log_contains("watch metadata x-session=s-1");
    host.expect_log_contains("watch message update-1");
    host.expect_log_contains("watch closed 0");
    assert!(host.grpc_streams().is_empty());
    assert!(host.failures().is_empty(), "{:?}", host.failures());
}
