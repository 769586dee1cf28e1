//! Any bytes as a discovery answer: an endpoint list or an error, never a
//! panic; an accepted list respects every bound the table relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_emulator as _;
use switchyard_load_balancer::config::{MAX_PRIORITY, MAX_WEIGHT, Mode};
use switchyard_load_balancer::discovery;

fuzz_target!(|data: &[u8]| {
    for mode in [Mode::Endpoint, Mode::Cluster] {
        if let Ok(list) = discovery::parse(data, mode, 16) {
            assert!(list.len() <= 16);
            for (i, e) in list.iter().enumerate() {
                assert!((1..=MAX_WEIGHT).contains(&e.weight));
                assert!(u32::from(e.priority) <= MAX_PRIORITY);
                assert!(list[..i].iter().all(|o| o.address != e.address));
            }
        }
    }
});
