//! Generates prost messages from the vendored protos. `protox` compiles them in
//! pure Rust, so no `protoc` binary is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/xds/data/orca/v3/orca_load_report.proto",
        // Rate limit service; every file is listed because prost generates
        // code only for the files asked for, not for their imports.
        "proto/envoy/service/ratelimit/v3/rls.proto",
        "proto/envoy/extensions/common/ratelimit/v3/ratelimit.proto",
        "proto/envoy/type/v3/ratelimit_unit.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    // BTreeMap keeps encoding deterministic, which tests compare byte for byte.
    config.btree_map(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
