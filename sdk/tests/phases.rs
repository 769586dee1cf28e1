//! `StageSpec::phases`: a module has Envoy call it back only for the phases
//! its stages take part in, and a stage method of a phase not listed never
//! runs (the wasm module does not export that callback; natively the
//! emulator hears of it and counts no crossing).

use switchyard_emulator::{Crossing, Host};
use switchyard_sdk::config::{ConfigError, Source};
use switchyard_sdk::stage::{Exchange, Flow, Phase, Phases, Setup, Stage, StageSpec};

/// Marks each phase it runs in with a response header (or, in `on_log`, a
/// property), whatever its spec lists.
struct Marker;

impl Stage for Marker {
    fn on_request_headers(&self, ex: &mut Exchange) -> Flow {
        // Applied at the end of the response phase, if that phase runs.
        ex.set_response_header("x-queued-in-request", "1");
        Flow::Continue
    }

    fn on_response_headers(&self, ex: &mut Exchange) -> Flow {
        ex.set_response_header("x-response-phase", "ran");
        Flow::Continue
    }

    fn on_log(&self, ex: &mut Exchange) {
        let _ = ex.set_filter_state("log_phase", b"ran");
    }
}

fn build(_: Source<'_>, _: &Setup) -> Result<Box<dyn Stage>, ConfigError> {
    Ok(Box::new(Marker))
}

const REQUEST_ONLY: StageSpec = StageSpec {
    name: "marker",
    filter: "marker",
    build,
    phases: Phases::REQUEST,
};

const ALL: StageSpec = StageSpec {
    phases: Phases::of(&[
        Phase::RequestHeaders,
        Phase::ResponseHeaders,
        Phase::ResponseTrailers,
        Phase::Log,
    ]),
    ..REQUEST_ONLY
};

extern "C" fn init_request_only() {
    switchyard_sdk::module::install_single(REQUEST_ONLY);
}

extern "C" fn init_all() {
    switchyard_sdk::module::install_single(ALL);
}

/// A GET with a response and trailers; the callbacks counted, whether the
/// response phase ran, whether the log phase ran, whether the response
/// edit queued in the request phase was applied, the host's log.
struct Get {
    callbacks: Vec<&'static str>,
    response_ran: bool,
    log_ran: bool,
    queued_edit_applied: bool,
    logs: String,
}

fn get(init: extern "C" fn()) -> Get {
    let host = Host::new(init).build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{:?}", host.logs());
    let s = worker.http_stream();
    s.request_headers(&[(":method", "GET"), (":path", "/")], true);
    s.response_headers(&[(":status", "200")], false);
    s.response_trailers(&[("grpc-status", "0")]);
    s.finish();
    let callbacks = s
        .crossings()
        .0
        .iter()
        .filter_map(|c| match c {
            Crossing::Callback(name) => Some(*name),
            _ => None,
        })
        .collect();
    Get {
        callbacks,
        response_ran: s.response_header("x-response-phase").is_some(),
        log_ran: s.property(&["log_phase"]).is_some(),
        queued_edit_applied: s.response_header("x-queued-in-request").is_some(),
        logs: format!("{:?}", host.logs()),
    }
}

#[test]
fn a_stage_listing_only_request_headers_gets_no_response_or_log_callback() {
    let g = get(init_request_only);
    assert_eq!(
        g.callbacks,
        [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_delete"
        ]
    );
    assert!(!g.response_ran && !g.log_ran);
    // The response edit it queued could never be applied: dropped, and
    // said so in the log.
    assert!(!g.queued_edit_applied);
    assert!(
        g.logs
            .contains("dropped: no stage of this module lists ResponseHeaders"),
        "{}",
        g.logs
    );
}

#[test]
fn a_stage_listing_every_phase_gets_every_callback() {
    let g = get(init_all);
    assert_eq!(
        g.callbacks,
        [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_response_trailers",
            "proxy_on_log",
            "proxy_on_delete"
        ]
    );
    assert!(g.response_ran && g.log_ran && g.queued_edit_applied);
    assert!(!g.logs.contains("dropped"), "{}", g.logs);
}

#[test]
fn a_chain_gets_the_union_of_its_stages_phases() {
    assert_eq!(Phases::union(&[REQUEST_ONLY, ALL]), Phases::union(&[ALL]));
    assert!(!Phases::union(&[REQUEST_ONLY]).contains(Phase::Log));
    assert!(
        Phases::of(&[Phase::Log])
            .same_after_request(Phases::of(&[Phase::RequestHeaders, Phase::Log]))
    );
}
