//! Any bytes as a table document: parsing never panics, and a table that
//! parses answers any request (hosts and paths cut from the same input)
//! without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_domain_router::domain::normalize_host;
use switchyard_domain_router::matcher::RequestView;
use switchyard_domain_router::router::SplitKey;
use switchyard_domain_router::table;

struct Req<'a> {
    path: &'a [u8],
    header: &'a [u8],
}

impl RequestView for Req<'_> {
    fn path(&self) -> &[u8] {
        self.path
    }
    fn method(&self) -> &[u8] {
        b"GET"
    }
    fn header(&self, _: &str) -> Option<Vec<u8>> {
        Some(self.header.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(router) = table::parse(data) else {
        return;
    };
    let mut random = || 1u64;
    let mut key = SplitKey {
        request_id_header: "x-request-id",
        random: &mut random,
    };
    let mut host = Vec::new();
    for chunk in data.chunks(24) {
        normalize_host(chunk, &mut host);
        let req = Req {
            path: chunk,
            header: chunk,
        };
        let _ = router.decide(&host, &req, &mut key);
    }
});
