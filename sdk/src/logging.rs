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
        host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
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
