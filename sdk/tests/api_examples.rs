//! The SDK README's "API by example", compiled and run in the emulator:
//! headers, properties, shared data and an HTTP callout in one stage.
//! Keep the README's snippets in step with this file.

use switchyard_emulator::{CallOutcome, Host};
use switchyard_sdk::callout::HttpRequest;
use switchyard_sdk::config::{ConfigError, Source};
use switchyard_sdk::shared::{SharedValue, Update};
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

const SPEC: StageSpec = StageSpec {
    name: "example",
    filter: "example",
    build,
    phases: Phases::REQUEST,
};

fn build(_: Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(Example {
        hits: SharedValue::new("example/hits"),
    }))
}

extern "C" fn init() {
    switchyard_sdk::module::install_single(SPEC);
}

struct Example {
    /// Requests seen by every worker of this Envoy (shared data).
    hits: SharedValue<u64>,
}

impl Stage for Example {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        // Headers: the map is read once per phase (repeated headers kept);
        // writes are applied once at the end of the phase.
        let tenant = ex
            .request()
            .get_str("x-tenant")
            .unwrap_or("none")
            .to_string();
        ex.set_request_header("x-tenant-seen", &tenant);

        // Properties: memoised per request.
        let protocol = ex
            .property_str(&["request", "protocol"])
            .unwrap_or_default();
        ex.set_request_header("x-protocol-seen", &protocol);

        // Shared data: a CAS read-modify-write every worker sees.
        let hits = self
            .hits
            .update(|n| {
                let next = n.copied().unwrap_or(0) + 1;
                Update::Write(next, next)
            })
            .unwrap_or(0);
        ex.set_request_header("x-hits", hits.to_string());

        // A callout: the request waits for the answer, then goes on or
        // gets a local reply.
        let check = HttpRequest::get("auth", &format!("/check?tenant={tenant}"));
        let sent = ex.http_call(Phase::RequestHeaders, check, |ex, answer| match answer {
            Ok(r) if r.status == 200 => Flow::Continue,
            _ => ex.reply(403, "auth_denied", &[], "denied\n"),
        });
        match sent {
            Ok(()) => Flow::Pause,
            Err(_) => ex.reply(503, "auth_unreachable", &[], "try later\n"),
        }
    }
}

#[test]
fn headers_properties_shared_data_and_a_callout() {
    let host = Host::new(init).build();
    let worker = host.start_worker();
    assert!(worker.configured());
    for (i, (tenant, answer)) in [("acme", 200), ("evil", 403)].into_iter().enumerate() {
        let s = worker.http_stream();
        s.set_property(&["request", "protocol"], b"HTTP/2".to_vec());
        s.set_property(&["source", "address"], b"127.0.0.1:5000".to_vec());
        s.request_headers(
            &[
                (":method", "GET"),
                (":path", "/"),
                (":authority", "a.test"),
                ("x-tenant", tenant),
            ],
            true,
        );
        let call = host.http_calls().pop().expect("the callout");
        assert_eq!(call.upstream, "auth");
        assert!(
            call.headers
                .iter()
                .any(|(k, v)| k == ":path" && v == &format!("/check?tenant={tenant}"))
        );
        worker.respond_http_call(call.token, CallOutcome::status(answer, ""));
        if answer == 200 {
            assert!(s.request_resumed());
            assert_eq!(s.request_header("x-tenant-seen").as_deref(), Some(tenant));
            assert_eq!(
                s.request_header("x-protocol-seen").as_deref(),
                Some("HTTP/2")
            );
            assert_eq!(
                s.request_header("x-hits").as_deref(),
                Some(&*(i + 1).to_string())
            );
        } else {
            assert_eq!(s.expect_local_response(403).body, b"denied\n");
        }
    }
}
