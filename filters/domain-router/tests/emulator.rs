//! The filter's real code through the proxy-wasm ABI, in the host emulator.

use switchyard_emulator::{Action, CallOutcome, Host, Worker};

const TABLE: &str = r#"{"version": 1, "virtual_hosts": [
  {"domains": ["shop.example.com"], "rules": [
    {"name": "shop-admin", "match": {"path": {"prefix": "/admin"}}, "cluster": "admin",
     "request_headers_to_set": [{"name": "x-admin", "value": "yes"}],
     "request_headers_to_remove": ["x-debug"], "host_rewrite": "admin.internal"},
    {"cluster": "shop"}]},
  {"domains": ["*.example.com"], "rules": [{"cluster": "wild"}]}]}"#;

fn plugin(extra: &str) -> String {
    format!(r#"{{"table": {TABLE}{extra}}}"#)
}

/// A host running the router with the inline table and `extra` fields.
fn router(extra: &str) -> Host {
    Host::new(switchyard_domain_router::init)
        .plugin_config(plugin(extra))
        .build()
}

fn get(
    worker: &Worker,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> switchyard_emulator::Stream {
    let stream = worker.http_stream();
    let mut headers = vec![(":authority", host), (":path", path), (":method", "GET")];
    headers.extend_from_slice(extra);
    stream.request_headers(&headers, true);
    stream
}

#[test]
fn routes_by_host_and_path_and_applies_rule_edits() {
    let host = router("");
    let worker = host.start_worker();
    assert!(worker.configured());

    let s = get(&worker, "Shop.Example.com:8443", "/", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop")
    );
    // The header replace clears Envoy's route cache itself (ABI 0.2.1): no
    // extra foreign-function call.
    assert_eq!(s.route_cache_clears(), 0);

    let s = get(&worker, "shop.example.com", "/admin/x", &[("x-debug", "1")]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("admin")
    );
    assert_eq!(s.request_header("x-admin").as_deref(), Some("yes"));
    assert_eq!(s.request_header("x-debug"), None);
    assert_eq!(
        s.request_header(":authority").as_deref(),
        Some("admin.internal")
    );

    let s = get(&worker, "a.example.com", "/", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("wild")
    );

    assert_eq!(host.metric("switchyard.domain-router.matches"), Some(3));
    assert_eq!(
        host.metric("switchyard.domain-router.rule.shop-admin.matches"),
        Some(1)
    );
    assert_eq!(
        host.metric("switchyard.domain-router.table_version"),
        Some(1)
    );
}

#[test]
fn client_cannot_pick_the_cluster() {
    let host = router(r#", "no_match": {"action": "pass_through"}"#);
    let worker = host.start_worker();
    let s = get(
        &worker,
        "shop.example.com",
        "/",
        &[("x-switchyard-cluster", "admin")],
    );
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop")
    );
    // No match + pass-through: the forged header is gone, nothing replaces it.
    let s = get(
        &worker,
        "other.test",
        "/",
        &[("x-switchyard-cluster", "admin")],
    );
    assert_eq!(s.request_header("x-switchyard-cluster"), None);
    assert!(s.local_response().is_none());
    assert_eq!(
        host.metric("switchyard.domain-router.client_header_stripped"),
        Some(2)
    );
    assert_eq!(host.metric("switchyard.domain-router.no_match"), Some(1));
}

#[test]
fn no_match_answers_the_configured_json() {
    let host = router(
        r#", "no_match": {"action": "local_reply", "status": 421, "body": {"error": "unknown host"}}"#,
    );
    let worker = host.start_worker();
    let stream = worker.http_stream();
    let action = stream.request_headers(
        &[
            (":authority", "nope.test"),
            (":path", "/"),
            (":method", "GET"),
        ],
        true,
    );
    assert_eq!(action, Action::Pause);
    let reply = stream.expect_local_response(421);
    assert_eq!(reply.body, br#"{"error":"unknown host"}"#.to_vec());
}

#[test]
fn bad_config_is_refused_and_names_the_field() {
    let host = Host::new(switchyard_domain_router::init)
        .plugin_config(r#"{"table": {"virtual_hosts": [{"domains": ["a"], "rules": [{"match": {"path": {"regex": "("}}, "cluster": "c"}]}]}}"#)
        .build();
    let worker = host.start_worker();
    assert!(!worker.configured());
    host.expect_log_contains("table.virtual_hosts[0].rules[0].match.path.regex: invalid regex");
}

const CONTROL: &str =
    r#", "control": {"cluster": "control", "path": "/table", "poll_interval_ms": 1000}"#;

fn table_routing(host: &str, cluster: &str, version: u64) -> String {
    format!(
        r#"{{"version": {version}, "virtual_hosts": [{{"domains": ["{host}"], "rules": [{{"cluster": "{cluster}"}}]}}]}}"#
    )
}

#[test]
fn control_tables_are_polled_by_one_worker_and_seen_by_all() {
    let host = router(CONTROL);
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    assert_eq!(
        w1.tick_period(),
        Some(std::time::Duration::from_millis(100))
    );
    w1.tick();
    w2.tick();
    // Only the lease holder polls.
    let call = host.expect_http_call("control");
    assert_eq!(call.header(":path"), Some("/table"));
    assert_eq!(call.header("if-none-match"), None);
    let poller = if call.worker == w1.index() { &w1 } else { &w2 };
    let other = if call.worker == w1.index() { &w2 } else { &w1 };
    poller.respond_http_call(
        call.token,
        CallOutcome::response(
            200,
            &[("etag", "\"v2\"")],
            table_routing("shop.example.com", "shop-v2", 2),
        ),
    );
    // The other worker loads the published table on its next tick (tables
    // are not looked up per request: that would cost a shared-data read).
    host.advance(std::time::Duration::from_millis(100));
    other.tick();
    let s = get(other, "shop.example.com", "/", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop-v2")
    );
    assert_eq!(
        host.metric("switchyard.domain-router.table_version"),
        Some(2)
    );
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(1));

    // Next poll: If-None-Match; 304 changes nothing.
    host.advance(std::time::Duration::from_millis(1000));
    poller.tick();
    let call = host.expect_http_call("control");
    assert_eq!(call.header("if-none-match"), Some("\"v2\""));
    poller.respond_http_call(call.token, CallOutcome::status(304, ""));

    // The next poll; answered 200 with `etag` and `body`.
    let poll_answer = |etag: &str, body: &str| {
        host.advance(std::time::Duration::from_millis(1000));
        poller.tick();
        let call = host.expect_http_call("control");
        poller.respond_http_call(
            call.token,
            CallOutcome::response(200, &[("etag", etag)], body.to_string()),
        );
        call
    };
    let broken = r#"{"virtual_hosts": [{"domains": ["x"], "rules": [{"cluster": ""}]}]}"#;
    let failures = || host.metric("switchyard.domain-router.reload_failures");

    // A broken table is rejected, counted and logged; the old one stays.
    poll_answer("\"v3\"", broken);
    assert_eq!(failures(), Some(1));
    host.expect_log_contains("virtual_hosts[0].rules[0].cluster: must not be empty");
    for w in [&w1, &w2] {
        let s = get(w, "shop.example.com", "/", &[]);
        assert_eq!(
            s.request_header("x-switchyard-cluster").as_deref(),
            Some("shop-v2")
        );
    }
    // The rejected ETag is remembered and sent as If-None-Match. A server
    // that ignores it sends the same broken table with the same ETag
    // (found in real Envoy: logged and counted on every poll): neither
    // counted nor logged again.
    let call = poll_answer("\"v3\"", broken);
    assert_eq!(call.header("if-none-match"), Some("\"v3\""));
    assert_eq!(failures(), Some(1));
    // Nor is an unchanged good table installed again.
    let v4 = table_routing("shop.example.com", "shop-v4", 4);
    poll_answer("\"v4\"", &v4);
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(2));
    poll_answer("\"v4\"", &v4);
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(2));
    // The body decides, not the ETag: a new table under the old ETag is
    // installed, and without any ETag an unchanged answer is still
    // unchanged (both found in real Envoy).
    let v5 = table_routing("shop.example.com", "shop-v5", 5);
    poll_answer("\"v4\"", &v5);
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(3));
    assert_eq!(
        get(poller, "shop.example.com", "/", &[])
            .request_header("x-switchyard-cluster")
            .as_deref(),
        Some("shop-v5")
    );
    poll_answer("", &v5);
    poll_answer("", &v5);
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(3));
    poll_answer("", broken);
    poll_answer("", broken);
    assert_eq!(failures(), Some(2));
}

#[test]
fn generations_alternate_between_two_slots() {
    let host = router(CONTROL);
    let w = host.start_worker();
    for v in 1..=5u64 {
        host.advance(std::time::Duration::from_millis(1000));
        w.tick();
        let call = host.expect_http_call("control");
        let etag = format!("\"v{v}\"");
        w.respond_http_call(
            call.token,
            CallOutcome::response(
                200,
                &[("etag", etag.as_str())],
                table_routing("h.test", &format!("c{v}"), v),
            ),
        );
        let s = get(&w, "h.test", "/", &[]);
        assert_eq!(
            s.request_header("x-switchyard-cluster"),
            Some(format!("c{v}"))
        );
    }
    let prefix = "switchyard/domain-router/control/table";
    assert!(host.shared_data(&format!("{prefix}/table/0")).is_some());
    assert!(host.shared_data(&format!("{prefix}/table/1")).is_some());
    assert!(host.shared_data(&format!("{prefix}/table/2")).is_none());
    let (pointer, _) = host.shared_data(&format!("{prefix}/current")).unwrap();
    assert_eq!(pointer, 5u64.to_le_bytes().to_vec());
}

/// A table of `n` virtual hosts `h<i>.test` → `cluster`, several chunks long.
fn many_hosts(n: usize, cluster: &str) -> String {
    let hosts: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"domains": ["h{i}.test"], "rules": [{{"cluster": "{cluster}"}}]}}"#))
        .collect();
    format!(r#"{{"virtual_hosts": [{}]}}"#, hosts.join(","))
}

#[test]
fn large_tables_travel_in_chunks_and_a_torn_read_is_retried() {
    let host = router(CONTROL);
    let w1 = host.start_worker();
    let w2 = host.start_worker();
    let answer = |v: u64, body: String| {
        host.advance(std::time::Duration::from_millis(1000));
        w1.tick();
        w2.tick();
        let call = host.expect_http_call("control");
        let poller = if call.worker == w1.index() { &w1 } else { &w2 };
        let etag = format!("\"v{v}\"");
        poller.respond_http_call(
            call.token,
            CallOutcome::response(200, &[("etag", etag.as_str())], body),
        );
        call.worker
    };
    let big = many_hosts(5_000, "big");
    assert!(
        big.len() > 4 * 65_536,
        "{} bytes: several chunks",
        big.len()
    );
    let poller = answer(1, big.clone());
    let other = if poller == w1.index() { &w2 } else { &w1 };
    let cluster = |w: &Worker, h: &str| get(w, h, "/", &[]).request_header("x-switchyard-cluster");

    // A chunk of another generation (the slot being rewritten): the read is
    // torn, nothing is installed and nothing counted as a failure.
    let prefix = "switchyard/domain-router/control/table";
    let chunk = format!("{prefix}/table/1/2");
    let (good, _) = host.shared_data(&chunk).expect("chunk 2 stored");
    let mut other_generation = good.clone();
    other_generation[..8].copy_from_slice(&3u64.to_le_bytes());
    host.set_shared_data(&chunk, &other_generation);
    host.advance(std::time::Duration::from_millis(100));
    other.tick();
    assert_eq!(cluster(other, "h4999.test"), None);
    assert_eq!(
        host.metric("switchyard.domain-router.reload_failures"),
        Some(0)
    );
    // Restored: the next tick loads it.
    host.set_shared_data(&chunk, &good);
    host.advance(std::time::Duration::from_millis(100));
    other.tick();
    assert_eq!(cluster(other, "h4999.test").as_deref(), Some("big"));
    assert_eq!(cluster(other, "h0.test").as_deref(), Some("big"));

    // Generation 3 goes to the same slot, smaller: its unused chunk keys
    // are emptied, not left holding the old table.
    answer(2, many_hosts(10, "two"));
    answer(3, many_hosts(10, "three"));
    assert_eq!(host.shared_data(&chunk).map(|(v, _)| v), Some(Vec::new()));
    host.advance(std::time::Duration::from_millis(100));
    other.tick();
    assert_eq!(cluster(other, "h9.test").as_deref(), Some("three"));
    assert_eq!(cluster(other, "h4999.test"), None);
}

#[test]
fn a_304_to_an_unconditional_poll_and_a_206_are_poll_errors() {
    let host = router(CONTROL);
    let w = host.start_worker();
    w.tick();
    // Nothing polled before: no If-None-Match, so a 304 keeps nothing. On
    // the old rule it went by with a debug line and no counter.
    let call = host.expect_http_call("control");
    assert_eq!(call.header("if-none-match"), None);
    w.respond_http_call(call.token, CallOutcome::status(304, ""));
    assert_eq!(host.metric("switchyard.domain-router.poll_errors"), Some(1));
    host.expect_log_contains("answered 304 to an unconditional poll");
    // A 206 (part of a body) is no table, whatever it holds: on the old
    // rule it was installed.
    host.advance(std::time::Duration::from_millis(1000));
    w.tick();
    let call = host.expect_http_call("control");
    w.respond_http_call(
        call.token,
        CallOutcome::response(206, &[], table_routing("shop.example.com", "partial", 2)),
    );
    assert_eq!(host.metric("switchyard.domain-router.poll_errors"), Some(2));
    assert_eq!(host.metric("switchyard.domain-router.reloads"), Some(0));
    let s = get(&w, "shop.example.com", "/", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop"),
        "the inline table stays"
    );
}

#[test]
fn unreachable_control_endpoint_keeps_the_inline_table() {
    let host = Host::new(switchyard_domain_router::init)
        .plugin_config(plugin(CONTROL))
        .clusters(["other"])
        .build();
    let w = host.start_worker();
    w.tick();
    assert_eq!(host.metric("switchyard.domain-router.poll_errors"), Some(1));
    let s = get(&w, "shop.example.com", "/", &[]);
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop")
    );
}

/// `envoy --mode validate` does not run `on_configure`: check the shipped
/// snippet's plugin configuration here.
#[test]
fn envoy_configs_snippet_is_accepted() {
    let yaml = include_str!("../../../envoy-configs/domain-router.yaml");
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("value: |"));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let header = lines.next().expect("a `value: |` block");
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || indent(l) > indent(header))
        .collect();
    let host = Host::new(switchyard_domain_router::init)
        .plugin_config(block.join("\n"))
        .build();
    let worker = host.start_worker();
    assert!(worker.configured(), "{:?}", host.logs());
    let s = get(
        &worker,
        "a.tenants.example.com",
        "/",
        &[("x-tenant-id", "globex")],
    );
    assert_eq!(
        s.request_header("x-switchyard-cluster").as_deref(),
        Some("shop-v2")
    );
}

/// Crossings of a plain GET through the router alone: 3 callbacks
/// (context create, request headers, delete; the module exports no
/// response or log callback) + the request map read (1 call + 1
/// allocation) + one header replace (the cluster; it also clears the route
/// cache). Counters are summed in the VM and flushed on the tick. Was 18
/// with the proxy-wasm dispatcher and per-header reads, 8 with the
/// response-headers and log callbacks exported.
const ROUTER_GET_BUDGET: usize = 6;

#[test]
fn a_get_stays_within_its_crossing_budget() {
    let host = router("");
    let worker = host.start_worker();
    let s = get(&worker, "shop.example.com", "/", &[("x-request-id", "r1")]);
    s.response_headers(&[(":status", "200")], false);
    s.response_body(b"ok", true);
    s.finish();
    let c = s.crossings();
    println!("{c}");
    assert!(c.total() <= ROUTER_GET_BUDGET, "{c}");
}
