//! Per-VM state shared by the root context and every stream: the current
//! table, its metrics, and the shared-data side of table reloads.

use crate::config::Config;
use crate::publish::{self, Blob};
use crate::router::Router;
use crate::table;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use switchyard_sdk::codec::Codec;
use switchyard_sdk::host::{self, CasOutcome};
use switchyard_sdk::metrics::{self, Counter, Gauge};
use switchyard_sdk::shared::SharedValue;

pub const FILTER: &str = "domain-router";

pub struct Metrics {
    pub matches: Counter,
    pub no_match: Counter,
    pub client_header_stripped: Counter,
    pub table_version: Gauge,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub poll_errors: Counter,
}

impl Metrics {
    fn new() -> Self {
        let c = |n: &str| Counter::new(&metrics::name(FILTER, n));
        Metrics {
            matches: c("matches"),
            no_match: c("no_match"),
            client_header_stripped: c("client_header_stripped"),
            table_version: Gauge::new(&metrics::name(FILTER, "table_version")),
            reloads: c("reloads"),
            reload_failures: c("reload_failures"),
            poll_errors: c("poll_errors"),
        }
    }
}

/// The table a worker routes with. Swapped as a whole: streams clone the
/// `Rc` at the start of a request, so a swap never changes a request's rules
/// half-way.
pub struct Loaded {
    pub router: Rc<Router>,
    /// Shared-data generation (0 = the inline table).
    pub generation: u64,
    pub etag: String,
    /// `rule.<name>.matches`, by the router's rule-name index.
    pub rule_counters: Rc<[Counter]>,
}

/// Shared-data handles of a VM that follows a control endpoint.
pub struct Sync {
    pub prefix: String,
    pointer: SharedValue<u64>,
    /// A generation this VM could not load: not retried on every request.
    failed_generation: Cell<u64>,
}

pub struct Core {
    pub config: Config,
    pub no_match_body: Vec<u8>,
    pub metrics: Metrics,
    pub sync: Option<Sync>,
    loaded: RefCell<Loaded>,
}

fn rule_counters(router: &Router) -> Rc<[Counter]> {
    router
        .rule_names()
        .iter()
        .map(|n| Counter::new(&metrics::name(FILTER, &format!("rule.{n}.matches"))))
        .collect()
}

impl Core {
    /// Builds the VM state; the inline table was validated with the config.
    pub fn new(mut config: Config) -> Result<Core, String> {
        // The document is not kept once compiled: for a large table it is
        // larger than the compiled router, and a later table reuses its space.
        let router = match config.table.take() {
            Some(doc) => table::compile(&doc).map_err(|e| format!("table: {e}"))?,
            None => Router::empty(),
        };
        let no_match_body = serde_json::to_vec(&config.no_match.body).unwrap_or_default();
        let sync = config.control.as_ref().map(|c| {
            let prefix = c.shared_prefix();
            Sync {
                pointer: SharedValue::new(publish::pointer_key(&prefix)),
                prefix,
                failed_generation: Cell::new(0),
            }
        });
        let core = Core {
            config,
            no_match_body,
            metrics: Metrics::new(),
            sync,
            loaded: RefCell::new(Loaded {
                rule_counters: rule_counters(&router),
                router: Rc::new(router),
                generation: 0,
                etag: String::new(),
            }),
        };
        core.report_version();
        Ok(core)
    }

    /// The current table and its counters.
    pub fn current(&self) -> (Rc<Router>, Rc<[Counter]>) {
        let l = self.loaded.borrow();
        (Rc::clone(&l.router), Rc::clone(&l.rule_counters))
    }

    pub fn loaded_generation(&self) -> u64 {
        self.loaded.borrow().generation
    }

    pub fn loaded_etag(&self) -> String {
        self.loaded.borrow().etag.clone()
    }

    fn report_version(&self) {
        let l = self.loaded.borrow();
        self.metrics
            .table_version
            .set(l.router.version.unwrap_or(l.generation));
    }

    fn install(&self, router: Router, generation: u64, etag: String) {
        let counters = rule_counters(&router);
        *self.loaded.borrow_mut() = Loaded {
            router: Rc::new(router),
            generation,
            etag,
            rule_counters: counters,
        };
        self.report_version();
    }

    /// Loads the published table if the pointer moved. Cheap when it did not:
    /// one shared-data read of 8 bytes, no decode.
    pub fn refresh(&self) {
        let Some(sync) = &self.sync else { return };
        let generation = match sync.pointer.get() {
            Ok(Some(g)) => *g,
            Ok(None) => return,
            Err(e) => {
                log::debug!("{FILTER}: reading the table pointer: {e}");
                return;
            }
        };
        if generation <= self.loaded_generation() || generation == sync.failed_generation.get() {
            return;
        }
        let key = publish::slot_key(&sync.prefix, generation);
        let blob = match host::shared_data(&key) {
            Ok((Some(bytes), _)) => Blob::decode(&bytes),
            Ok((None, _)) => None,
            Err(e) => {
                log::debug!("{FILTER}: reading {key}: {e}");
                return;
            }
        };
        let Some(blob) = blob.filter(|b| b.generation >= generation) else {
            sync.failed_generation.set(generation);
            log::error!("{FILTER}: generation {generation} missing or unreadable in {key}");
            return;
        };
        match table::parse(&blob.json) {
            Ok(router) => {
                log::info!(
                    "{FILTER}: loaded table generation {} (version {:?}, etag {:?}, {} domains)",
                    blob.generation,
                    router.version,
                    blob.etag,
                    router.domain_count()
                );
                self.install(router, blob.generation, blob.etag);
            }
            Err(e) => {
                sync.failed_generation.set(generation);
                self.metrics.reload_failures.inc();
                log::error!("{FILTER}: published generation {generation} rejected: {e}");
            }
        }
    }

    /// A table answered by the control endpoint (leader only): validated,
    /// published for every VM and installed here. Returns whether it was
    /// accepted.
    pub fn accept(&self, body: &[u8], etag: &str) -> bool {
        let Some(sync) = &self.sync else { return false };
        let max = self
            .config
            .control
            .as_ref()
            .map_or(0, |c| c.max_table_bytes);
        let parsed = if body.len() > max {
            Err(format!("{} bytes, above max_table_bytes {max}", body.len()))
        } else {
            table::parse(body).map_err(|e| e.to_string())
        };
        let router = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.metrics.reload_failures.inc();
                log::error!(
                    "{FILTER}: rejected table from the control endpoint (etag {etag:?}): {e}; \
                     keeping generation {}",
                    self.loaded_generation()
                );
                return false;
            }
        };
        match publish_blob(sync, body, etag) {
            Ok(generation) => {
                log::info!(
                    "{FILTER}: published table generation {generation} (version {:?}, etag {etag:?}, \
                     {} domains, {} tenant keys, {} bytes)",
                    router.version,
                    router.domain_count(),
                    router.tenant_key_count(),
                    body.len()
                );
                self.metrics.reloads.inc();
                self.install(router, generation, etag.to_string());
                true
            }
            Err(e) => {
                log::warn!("{FILTER}: table not published, retrying next poll: {e}");
                false
            }
        }
    }
}

/// Writes the slot, then moves the pointer with CAS; the generation.
fn publish_blob(sync: &Sync, json: &[u8], etag: &str) -> Result<u64, String> {
    let pointer_key = publish::pointer_key(&sync.prefix);
    let (current, cas) = host::shared_data(&pointer_key).map_err(|e| e.to_string())?;
    let current = current.as_deref().and_then(u64::decode).unwrap_or(0);
    let generation = current + 1;
    let blob = Blob {
        generation,
        etag: etag.to_string(),
        json: json.to_vec(),
    };
    let slot = publish::slot_key(&sync.prefix, generation);
    host::set_shared_data(&slot, &blob.encode(), 0).map_err(|e| e.to_string())?;
    match host::set_shared_data(&pointer_key, &generation.encode(), cas) {
        Ok(CasOutcome::Written) => Ok(generation),
        Ok(CasOutcome::Conflict) => Err("another VM published concurrently".into()),
        Err(e) => Err(e.to_string()),
    }
}
