//! Every plugin configuration in `envoy-configs/*.yaml` (and the ECDS
//! resources in `envoy-configs/ecds/`) is accepted by the
//! module its `vm_config` loads, through the real ABI in the emulator:
//! `envoy --mode validate` (make validate-configs) does not read them.

use switchyard_emulator::Host;

mod snippets;

use snippets::{files, module, plugins};

#[test]
fn every_snippet_configures_its_module() {
    let mut checked = 0;
    // The snippets, and the ECDS resource files they serve.
    for path in files() {
        let yaml = std::fs::read_to_string(&path).expect("snippet readable");
        for (config, file) in plugins(&yaml) {
            let Some(init) = module(&file) else {
                panic!("{}: unknown module {file:?}", path.display());
            };
            let host = Host::new(init).plugin_config(config).build();
            let worker = host.start_worker();
            assert!(
                worker.configured(),
                "{} ({file}): {:?}",
                path.display(),
                host.logs()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} plugin configurations found");
}
