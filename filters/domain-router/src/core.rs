//! Per-VM state shared by the root context and every stream: the current
//! table, its metrics, and the shared-data side of table reloads.

use crate::config::Config;
use crate::publish::{self, Header};
use crate::router::Router;
use crate::table;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use switchyard_sdk::codec::Codec;
use switchyard_sdk::config::Source;
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
        // Moved out: `config` keeps only the settings.
        let router = config.table.take().map_or_else(Router::empty, |t| t.0);
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
        let header = match host::shared_data(&key) {
            Ok((Some(bytes), _)) => Header::decode(&bytes),
            Ok((None, _)) => None,
            Err(e) => {
                log::debug!("{FILTER}: reading {key}: {e}");
                return;
            }
        };
        let Some(header) = header.filter(|h| h.generation >= generation) else {
            sync.failed_generation.set(generation);
            log::error!("{FILTER}: generation {generation} missing or unreadable in {key}");
            return;
        };
        // Chunks are parsed as they are read; one of another generation
        // means the slot is being rewritten: try again later.
        let torn = Cell::new(false);
        let read = |at: usize, max: usize| {
            let index = at / publish::CHUNK;
            let chunk_key = publish::chunk_key(&sync.prefix, header.generation, index);
            let stored = host::shared_data(&chunk_key).ok().and_then(|(v, _)| v);
            let bytes = stored
                .as_deref()
                .and_then(|c| publish::chunk_of(header.generation, c))
                .and_then(|c| c.get(at % publish::CHUNK..))
                .map(|c| c[..c.len().min(max)].to_vec());
            bytes.unwrap_or_else(|| {
                torn.set(true);
                Vec::new()
            })
        };
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        match table::parse(Source::Chunked { len, read: &read }) {
            _ if torn.get() => {
                log::debug!(
                    "{FILTER}: generation {} was rewritten while read; trying again",
                    header.generation
                );
            }
            Ok(router) => {
                log::info!(
                    "{FILTER}: loaded table generation {} (version {:?}, etag {:?}, {} domains; VM memory {})",
                    header.generation,
                    router.version,
                    header.etag,
                    router.domain_count(),
                    vm_memory()
                );
                self.install(router, header.generation, header.etag);
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
                     {} domains, {} tenant keys, {} bytes; VM memory {})",
                    router.version,
                    router.domain_count(),
                    router.tenant_key_count(),
                    body.len(),
                    vm_memory()
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

/// The VM's linear memory for a log line, e.g. `14.2 MiB`.
pub fn vm_memory() -> String {
    switchyard_sdk::vm::memory_bytes().map_or_else(
        || "unknown".into(),
        |b| format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
    )
}

/// Writes the slot (chunks, then header), then moves the pointer with CAS;
/// the generation.
fn publish_blob(sync: &Sync, json: &[u8], etag: &str) -> Result<u64, String> {
    let pointer_key = publish::pointer_key(&sync.prefix);
    let (current, cas) = host::shared_data(&pointer_key).map_err(|e| e.to_string())?;
    let current = current.as_deref().and_then(u64::decode).unwrap_or(0);
    let generation = current + 1;
    let slot = publish::slot_key(&sync.prefix, generation);
    // Chunks the slot's previous table had beyond this one's are emptied:
    // Envoy never evicts shared data, so they would hold memory for nothing.
    let previous_chunks = host::shared_data(&slot)
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|v| Header::decode(&v))
        .map_or(0, |h| h.chunks());
    let header = Header {
        generation,
        etag: etag.to_string(),
        len: json.len() as u64,
    };
    for (i, chunk) in json.chunks(publish::CHUNK).enumerate() {
        let key = publish::chunk_key(&sync.prefix, generation, i);
        host::set_shared_data(&key, &publish::encode_chunk(generation, chunk), 0)
            .map_err(|e| e.to_string())?;
    }
    for i in header.chunks()..previous_chunks {
        let key = publish::chunk_key(&sync.prefix, generation, i);
        host::set_shared_data(&key, &[], 0).map_err(|e| e.to_string())?;
    }
    host::set_shared_data(&slot, &header.encode(), 0).map_err(|e| e.to_string())?;
    match host::set_shared_data(&pointer_key, &generation.encode(), cas) {
        Ok(CasOutcome::Written) => Ok(generation),
        Ok(CasOutcome::Conflict) => Err("another VM published concurrently".into()),
        Err(e) => Err(e.to_string()),
    }
}
