//! The access-log stage: the record is built in `on_log`, written to
//! Envoy's log and/or put on the shared queue of the HTTP sink; the sender
//! (lease, queue, batches) runs on the root's ticks and queue notifications.

use crate::config::Config;
use crate::record::{self, Attr, Source};
use crate::sender::{Held, QueueRef, Sender};
use crate::stats::Metrics;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use switchyard_sdk::config::ConfigError;
use switchyard_sdk::headers::HeaderMap;
use switchyard_sdk::host::{self, LogLevel};

use switchyard_sdk::stage::{
    Decisions, Exchange, Phase, Phases, RootServices, Setup, Stage, StageSpec,
};

/// How modules build this stage (`access_log` in a chain).
pub const SPEC: StageSpec = StageSpec {
    name: "access_log",
    filter: crate::FILTER,
    build,
    phases: Phases::of(&[Phase::Log]),
};

fn build(
    config: switchyard_sdk::config::Source<'_>,
    setup: &Setup,
) -> Result<Box<dyn Stage>, ConfigError> {
    let config: Config = switchyard_sdk::config::parse(config)?;
    let filter_state = config.filter_state.as_ref().map(|fs| {
        if fs.decisions_only() {
            FilterStateOut::Decisions(DecisionNames {
                route: format!("{}.route", fs.name),
                endpoint: format!("{}.endpoint", fs.name),
                rate_limit: format!("{}.ratelimit", fs.name),
            })
        } else {
            FilterStateOut::Record(fs.name.clone())
        }
    });
    // Alone in its module no stage leaves decisions: nothing would be set.
    switchyard_sdk::config::ensure(
        setup.in_chain || !matches!(filter_state, Some(FilterStateOut::Decisions(_))),
        "filter_state.content",
        "`decisions` needs the chain module (switchyard.wasm)",
    )?;
    let log = config.log_enabled();
    let builds_records =
        log || config.http.is_some() || matches!(filter_state, Some(FilterStateOut::Record(_)));
    let metrics = Rc::new(Metrics::new());
    let (queue, sender) = match &config.http {
        Some(sink) => {
            let queue = Rc::new(QueueRef::new(setup.vm_id.clone(), sink.queue.clone()));
            // Creates the queue if no VM has yet, so on_log can enqueue at once.
            let _ = queue.id();
            let sender = Sender::new(
                sink.clone(),
                Rc::clone(&queue),
                Rc::clone(&metrics),
                setup.instance_id,
            );
            (Some(queue), Some(sender))
        }
        None => (None, None),
    };
    Ok(Box::new(AccessLog {
        filter_state,
        log,
        builds_records,
        config,
        metrics,
        queue,
        sender,
        held: RefCell::default(),
    }))
}

/// What the `filter_state` sink sets, resolved once per VM.
enum FilterStateOut {
    /// The record, under this name.
    Record(String),
    /// Each decision under its own name.
    Decisions(DecisionNames),
}

/// Filter-state names of the decisions (`filter_state` sink, `decisions`
/// content).
struct DecisionNames {
    route: String,
    endpoint: String,
    rate_limit: String,
}

/// Per-VM state: the configuration, metrics, and the HTTP sink's queue and
/// sender (when configured).
pub struct AccessLog {
    config: Config,
    filter_state: Option<FilterStateOut>,
    /// Records go to Envoy's log ([`Config::log_enabled`]).
    log: bool,
    /// Some sink takes the JSON record (the `decisions` content of the
    /// filter-state sink does not).
    builds_records: bool,
    metrics: Rc<Metrics>,
    queue: Option<Rc<QueueRef>>,
    sender: Option<Rc<Sender>>,
    /// Records waiting for the queue: one item per 64 records, tick or
    /// shutdown ([`Held`]).
    held: RefCell<Held>,
}

impl AccessLog {
    /// Puts this VM's held records on the queue (its tick, its shutdown).
    fn flush_held(&self, queue: &QueueRef) {
        self.with_held(|held| queue.put(held));
    }

    /// Runs `f` on the held records, then counts the records it refused
    /// as dropped and moves `queue_depth` by the change in records held
    /// (held records count as queued until they are on the queue).
    fn with_held(&self, f: impl FnOnce(&mut Held) -> u64) {
        let mut held = self.held.borrow_mut();
        let before = held.records();
        let refused = f(&mut held);
        let after = held.records();
        let m = &self.metrics;
        if refused > 0 {
            m.drop_records(&m.dropped_enqueue, refused);
        }
        if after != before {
            let delta = i64::try_from(after).unwrap_or(i64::MAX)
                - i64::try_from(before).unwrap_or(i64::MAX);
            m.queue_depth.add(delta);
        }
    }
}

/// The request through the module's exchange: header maps read once per
/// request (free when an earlier stage read them), properties read on first
/// use and memoised, decisions as the earlier stages left them.
struct ExchangeSource<'e>(&'e mut Exchange);

impl ExchangeSource<'_> {
    /// Whether `attr` comes from a property read; `false` where
    /// [`Self::shortcut`] has it without one. The one place that decides.
    fn read_as_property(&mut self, attr: Attr) -> bool {
        match attr {
            Attr::UpstreamCluster => self.0.decisions.cluster.is_none(),
            Attr::ResponseCode => self.status().is_none(),
            Attr::Duration => false,
            Attr::StartTime => self.0.request_phase_clock().is_none(),
            Attr::BytesReceived => !self.0.request_ended_with_headers(),
            _ => true,
        }
    }

    /// An integer attribute without a property read (when
    /// [`Self::read_as_property`] says so).
    fn shortcut(&mut self, attr: Attr) -> Option<u64> {
        match attr {
            // The final response map's `:status` is `response.code` (the
            // map is read anyway for the record), one crossing pair less.
            Attr::ResponseCode => self.status(),
            // At `on_log` the last byte is out: now − `request.time` is
            // Envoy's total duration, for one clock read instead of a
            // property.
            Attr::Duration => {
                let start = self.number(Attr::StartTime)?;
                Some(self.0.now_nanos().saturating_sub(start))
            }
            // A stage read the clock as the request headers arrived (the
            // rate limit does): that is the start, within microseconds of
            // Envoy's `request.time`, without a property read.
            Attr::StartTime => self.0.request_phase_clock(),
            // A request that ended with its headers has no body.
            Attr::BytesReceived => Some(0),
            _ => None,
        }
    }

    /// The final response's `:status`.
    fn status(&mut self) -> Option<u64> {
        self.0
            .response()
            .get_str(":status")
            .and_then(|s| s.trim().parse::<u64>().ok())
    }
}

impl Source for ExchangeSource<'_> {
    fn request(&mut self) -> &HeaderMap {
        self.0.request()
    }

    fn response(&mut self) -> &HeaderMap {
        self.0.response()
    }

    fn text(&mut self, attr: Attr) -> Option<&[u8]> {
        // The router stage's cluster is Envoy's (a `cluster_header` route):
        // no property read when it ran.
        if !self.read_as_property(attr) {
            return match attr {
                Attr::UpstreamCluster => self.0.decisions.cluster.as_deref().map(str::as_bytes),
                _ => None,
            };
        }
        self.0.property(attr.path())
    }

    fn number(&mut self, attr: Attr) -> Option<u64> {
        if !self.read_as_property(attr) {
            return self.shortcut(attr);
        }
        self.0
            .property_int(attr.path())
            .and_then(|n| u64::try_from(n).ok())
    }

    fn client_address(&mut self) -> Option<String> {
        self.0.client_address()
    }

    fn decisions(&self) -> &Decisions {
        &self.0.decisions
    }
}

impl AccessLog {
    /// Each decision of the request as filter state `wasm.<name>.<field>`
    /// ([`DecisionNames`]).
    fn set_decisions(&self, names: &DecisionNames, ex: &Exchange) {
        let d = &ex.decisions;
        for (name, value) in [
            (&names.route, &d.route),
            (&names.endpoint, &d.endpoint),
            (&names.rate_limit, &d.rate_limit),
        ] {
            if let Some(v) = value {
                self.set_filter_state(ex, name, v.as_bytes());
            }
        }
    }

    /// Counted, not logged: Envoy refuses only a read-only name, the same
    /// for every request.
    fn set_filter_state(&self, ex: &Exchange, name: &str, value: &[u8]) {
        if ex.set_filter_state(name, value).is_err() {
            self.metrics.filter_state_failures.inc();
        }
    }
}

impl Stage for AccessLog {
    fn on_log(&self, ex: &mut Exchange) {
        let m = &self.metrics;
        if let Some(FilterStateOut::Decisions(names)) = &self.filter_state {
            self.set_decisions(names, ex);
        }
        if !self.builds_records {
            return;
        }
        // Attributes are read one by one (`Exchange::property`), not in
        // one CEL list through `expr_evaluate`: in Envoy 1.40 that cost
        // ~13 µs more per request than the reads it saved (BENCHMARKS.md,
        // seventh session).
        let mut source = ExchangeSource(ex);
        if record::decide(&self.config.sampling, &mut source).is_none() {
            m.sampled_out.inc();
            return;
        }
        let line = record::line(&self.config, &mut source);
        m.records.inc();
        // Straight to the host: `log::info!` would format a second copy.
        if self.log && log::log_enabled!(log::Level::Info) {
            host::log(LogLevel::Info, &line);
        }
        if let Some(FilterStateOut::Record(name)) = &self.filter_state {
            self.set_filter_state(source.0, name, line.as_bytes());
        }
        if let Some(queue) = &self.queue {
            self.with_held(|held| queue.hold(held, &line));
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.sender.as_ref().map(|s| s.tick_period())
    }

    fn on_tick(&self, root: &RootServices) {
        if let Some(queue) = &self.queue {
            self.flush_held(queue);
        }
        if let Some(sender) = &self.sender {
            sender.on_tick(root);
        }
    }

    fn on_queue_ready(&self, root: &RootServices, queue_id: u32) {
        if let Some(sender) = &self.sender {
            sender.on_queue_ready(root, queue_id);
        }
    }

    fn on_shutdown(&self, _root: &RootServices) {
        if let Some(queue) = &self.queue {
            self.flush_held(queue);
        }
        if let Some(sender) = &self.sender {
            sender.release();
        }
    }
}
