//! Scenarios: a YAML file says which Envoy config and filters, which
//! backends (capacity, latency, errors, load reports, events over time),
//! which traffic (flows of open- or closed-loop phases with host, path,
//! header and client-address mixes) and which assertions; the runner
//! starts it all, drives the traffic, and writes a JSON result, the
//! access-log records and an HTML report with charts.
//!
//! - [`spec`]: the file format and its validation (errors name the field);
//! - [`driver`]: the traffic (flows, phases, replays), one [`driver::Obs`]
//!   per request;
//! - [`run`]: the orchestration, [`run::run`];
//! - [`results`]: totals, time series, assertion verdicts, the table;
//! - [`mix`]: host/path/status mixes of recordings and replays;
//! - [`html`]: the report (SVG charts by `plotters`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchyard_integration::scenario::{Scenario, run::{run, RunOptions}};
//! let s = Scenario::load("integration/scenarios/demo.yaml")?;
//! let out = run(&s, RunOptions { scale: s.quick_scale, ..RunOptions::default() }).await?;
//! println!("{}\nreport: {}", out.table, out.html.display());
//! assert!(out.passed(), "{:?}", out.result.failures());
//! # Ok(()) }
//! ```

pub mod driver;
pub mod envoy_config;
pub mod html;
pub mod mix;
pub mod results;
pub mod run;
pub mod spec;

pub use spec::Scenario;

use std::path::PathBuf;

/// `integration/scenarios/`.
pub fn scenarios_dir() -> PathBuf {
    crate::paths::workspace_root().join("integration/scenarios")
}

/// Every `*.yaml` file in [`scenarios_dir`], sorted.
pub fn all_scenario_files() -> anyhow::Result<Vec<PathBuf>> {
    crate::paths::files_with_extension(&scenarios_dir(), &["yaml", "yml"])
}
