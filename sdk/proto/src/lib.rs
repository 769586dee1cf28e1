//! Protobuf messages used by Switchyard filters and the test harness.
//!
//! Generated at build time by `prost-build` from the `.proto` files under
//! `proto/`, so the filters (wasm) and the harness (native) share one
//! definition of every message on the wire.

/// `xds.data.orca.v3`: the ORCA load report backends send in
/// `endpoint-load-metrics-bin` / `endpoint-load-metrics: BIN ...`.
pub mod orca {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/xds.data.orca.v3.rs"));
}

/// Envoy's rate limit service (RLS) API. prost refers between packages by
/// relative paths, so the modules nest as the proto packages do.
pub mod envoy {
    pub mod service {
        pub mod ratelimit {
            /// `ShouldRateLimit(RateLimitRequest) -> RateLimitResponse`.
            pub mod v3 {
                #![allow(clippy::all, missing_docs)]
                include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                /// `RateLimitDescriptor`.
                pub mod v3 {
                    #![allow(clippy::all, missing_docs)]
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.common.ratelimit.v3.rs"
                    ));
                }
            }
        }
    }
    pub mod r#type {
        /// `RateLimitUnit`.
        pub mod v3 {
            #![allow(clippy::all, missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// Short paths: `rls::RateLimitRequest`, `rls::RateLimitDescriptor`, ...
pub mod rls {
    pub use super::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    pub use super::envoy::service::ratelimit::v3::*;
    pub use super::envoy::r#type::v3::RateLimitUnit;
}

pub use prost::Message;
/// Well-known types the messages use (`Duration` in the RLS response).
pub use prost_types;
