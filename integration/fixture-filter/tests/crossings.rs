//! The SDK fixture's crossings per GET (the `make bench` fixture variant),
//! held to a budget and recorded in `build/crossings.json`.

use switchyard_emulator::Host;

/// 4 callbacks (context create, request headers, response headers,
/// delete); request map read (1 + 1 allocation); the count's CAS update:
/// shared-data read (1 + 1) + write; the sequence header replace; the
/// response stamp replace (the counter is flushed on the tick). Was 15;
/// 12 with `proxy_on_log` exported.
const FIXTURE_GET_BUDGET: usize = 11;

#[test]
fn a_get_stays_within_budget() {
    let host = Host::new(switchyard_fixture_filter::_initialize)
        .plugin_config(r#"{"stamp": "bench"}"#)
        .build();
    let worker = host.start_worker();
    assert!(worker.configured());
    let s = worker.http_stream();
    s.request_headers(
        &[
            (":authority", "bench.local"),
            (":path", "/"),
            (":method", "GET"),
        ],
        true,
    );
    s.response_headers(&[(":status", "200")], false);
    s.response_body(b"ok", true);
    s.finish();
    assert_eq!(
        s.response_header("x-switchyard-fixture").as_deref(),
        Some("bench")
    );
    let c = s.crossings();
    println!("fixture: {c}");
    assert!(c.total() <= FIXTURE_GET_BUDGET, "{c}");

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/crossings.json");
    c.record(&path, "fixture");
}
