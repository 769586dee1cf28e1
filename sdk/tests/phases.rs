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
/// response phase ran, whether the log phase ran.
fn get(init: extern "C" fn()) -> (Vec<&'static str>, bool, bool) {
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
    let response_ran = s.response_header("x-response-phase").is_some();
    let log_ran = s.property(&["log_phase"]).is_some();
    (callbacks, response_ran, log_ran)
}

#[test]
fn a_stage_listing_only_request_headers_gets_no_response_or_log_callback() {
    let (callbacks, response_ran, log_ran) = get(init_request_only);
    assert_eq!(
        callbacks,
        [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_delete"
        ]
    );
    assert!(!response_ran && !log_ran);
}

#[test]
fn a_stage_listing_every_phase_gets_every_callback() {
    let (callbacks, response_ran, log_ran) = get(init_all);
    assert_eq!(
        callbacks,
        [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_response_headers",
            "proxy_on_response_trailers",
            "proxy_on_log",
            "proxy_on_delete"
        ]
    );
    assert!(response_ran && log_ran);
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
