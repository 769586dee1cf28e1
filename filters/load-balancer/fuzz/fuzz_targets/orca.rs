//! Any bytes in either ORCA header: a report or a reason, never a panic,
//! and an accepted report is always finite and non-negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_emulator as _;
use switchyard_load_balancer::orca;

fuzz_target!(|data: &[u8]| {
    for r in [
        orca::parse_header(data, 4096),
        orca::parse_bin_header(data, 4096),
    ] {
        if let Ok(r) = r {
            let all = [
                r.cpu_utilization,
                r.mem_utilization,
                r.application_utilization,
                r.rps_fractional,
                r.eps,
            ];
            let maps = r
                .named_metrics
                .values()
                .chain(r.utilization.values())
                .chain(r.request_cost.values());
            for v in all.iter().chain(maps) {
                assert!(v.is_finite() && *v >= 0.0, "accepted {v}");
            }
            let u = r.utilization_for(&["x".to_string()]);
            assert!(u.is_finite() && u >= 0.0);
        }
    }
});
