//! The filter's real code through the proxy-wasm ABI, in the host emulator.

use switchyard_emulator::Host;

#[test]
fn adds_the_configured_header() {
    let host = Host::new(switchyard___NAME_SNAKE__::_initialize)
        .plugin_config(r#"{"header": "x-demo", "value": "42"}"#)
        .build();
    let worker = host.start_worker();
    assert!(worker.configured());
    let stream = worker.http_stream();
    stream.request_headers(&[(":path", "/"), (":authority", "example.test")], true);
    stream.response_headers(&[(":status", "200")], true);
    assert_eq!(stream.response_header("x-demo").as_deref(), Some("42"));
    assert_eq!(host.metric("switchyard.__NAME__.responses"), Some(1));
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = Host::new(switchyard___NAME_SNAKE__::_initialize)
        .plugin_config(r#"{"header": "X Bad"}"#)
        .build();
    let worker = host.start_worker();
    assert!(!worker.configured());
    host.expect_log_contains("header: must be a lowercase header name");
}
