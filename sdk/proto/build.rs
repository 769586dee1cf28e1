//! Generates prost messages from the vendored protos. `protox` compiles them in
//! pure Rust, so no `protoc` binary is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/xds/data/orca/v3/orca_load_report.proto"];
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
