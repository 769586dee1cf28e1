//! `log` crate output to Envoy's log.

use crate::host::{self, LogLevel};

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let line = record.args().to_string();
        PLUGIN_NAME.with(|name| {
            let name = name.borrow();
            host::log(level, own_prefix_stripped(&line, &name));
        });
    }

    fn flush(&self) {}
}

thread_local! {
    /// The plugin's name as Envoy knows it (its `name`), which Envoy already
    /// puts at the start of every line of this plugin.
    static PLUGIN_NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Records the plugin's name (at configure), so lines that start with
/// `<name>: ` lose that prefix: Envoy writes `wasm log <name> <root_id>: `
/// before every line already. A chain module's stages keep theirs (the
/// plugin is `switchyard`, the line says which stage).
pub fn set_plugin_name(name: &str) {
    PLUGIN_NAME.with(|n| *n.borrow_mut() = name.to_string());
}

/// `line` without a leading `<name>: ` (when `name` is non-empty).
fn own_prefix_stripped<'a>(line: &'a str, name: &str) -> &'a str {
    if name.is_empty() {
        return line;
    }
    line.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(line)
}

/// Routes `log::*!` to Envoy at Envoy's level for this plugin (so disabled
/// levels cost no host call) and logs panics at critical level before the VM
/// traps, so the cause shows up in Envoy's log. Safe to call repeatedly.
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    let filter = match host::log_level() {
        Ok(LogLevel::Trace) => log::LevelFilter::Trace,
        Ok(LogLevel::Debug) => log::LevelFilter::Debug,
        Ok(LogLevel::Info) | Err(_) => log::LevelFilter::Info,
        Ok(LogLevel::Warn) => log::LevelFilter::Warn,
        Ok(LogLevel::Error) => log::LevelFilter::Error,
        Ok(_) => log::LevelFilter::Off,
    };
    log::set_max_level(filter);
    #[cfg(target_arch = "wasm32")]
    std::panic::set_hook(Box::new(|info| {
        host::log(LogLevel::Critical, &format!("panic: {info}"));
    }));
}

/// Lines a [`Throttle`] let through or held back, by cause.
#[derive(Debug, Default)]
pub struct Throttle {
    causes: Vec<(String, u64, u64)>,
}

impl Throttle {
    /// Whether a line for `cause` may go out at `now_ns` (at most one per
    /// `period_ns` per cause): `Some(n)` with the lines held back since the
    /// last one that went out, `None` to hold this one back. At most 64
    /// causes are tracked; others share one slot.
    pub fn admit(&mut self, cause: &str, now_ns: u64, period_ns: u64) -> Option<u64> {
        let i = match self.causes.iter().position(|(c, ..)| c == cause) {
            Some(i) => i,
            None if self.causes.len() < 64 => {
                self.causes.push((cause.to_string(), 0, 0));
                self.causes.len() - 1
            }
            None => self.causes.len() - 1,
        };
        // invariant: `i` is a found position, the slot just pushed, or the
        // last of 64 (the list is full there).
        let (_, last, held) = &mut self.causes[i];
        if *last != 0 && now_ns.saturating_sub(*last) < period_ns {
            *held += 1;
            return None;
        }
        *last = now_ns.max(1);
        Some(std::mem::take(held))
    }
}

thread_local! {
    static WARNINGS: std::cell::RefCell<Throttle> = std::cell::RefCell::new(Throttle::default());
}

/// How often one cause of a warning may reach Envoy's log (per VM).
pub const WARN_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// A warning that may recur per request (a service down, shared data
/// failing): at most one line per [`WARN_PERIOD`] per `cause` and VM, the
/// next one saying how many were held back, so an outage does not flood
/// the log. `message` is only built when the line goes out.
pub fn warn_throttled(cause: &str, message: impl FnOnce() -> String) {
    if !log::log_enabled!(log::Level::Warn) {
        return;
    }
    let now = host::now_nanos();
    let period = u64::try_from(WARN_PERIOD.as_nanos()).unwrap_or(u64::MAX);
    if let Some(held) = WARNINGS.with(|w| w.borrow_mut().admit(cause, now, period)) {
        if held > 0 {
            log::warn!(
                "{} ({held} more like it in the last {}s)",
                message(),
                WARN_PERIOD.as_secs()
            );
        } else {
            log::warn!("{}", message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn one_line_per_period_per_cause_with_the_held_back_count() {
        let mut t = Throttle::default();
        let s = 1_000_000_000;
        assert_eq!(t.admit("rls", 5 * s, 10 * s), Some(0));
        for i in 0..20 {
            assert_eq!(t.admit("rls", 5 * s + i, 10 * s), None);
        }
        assert_eq!(t.admit("shared", 6 * s, 10 * s), Some(0), "another cause");
        assert_eq!(t.admit("rls", 15 * s, 10 * s), Some(20));
        assert_eq!(t.admit("rls", 16 * s, 10 * s), None);
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::own_prefix_stripped;

    #[test]
    fn the_plugins_own_name_is_not_repeated() {
        assert_eq!(
            own_prefix_stripped("rate-limit: ready", "rate-limit"),
            "ready"
        );
        // Another stage's name stays (a chain's lines say which stage).
        assert_eq!(
            own_prefix_stripped("rate-limit: ready", "switchyard"),
            "rate-limit: ready"
        );
        assert_eq!(
            own_prefix_stripped("rate-limiter x", "rate-limit"),
            "rate-limiter x"
        );
        assert_eq!(
            own_prefix_stripped("rate-limit: ready", ""),
            "rate-limit: ready"
        );
    }
}
