//! Plugin configuration: JSON in the plugin's `configuration` field.

use crate::table::{Table, valid_header_name};
use serde::Deserialize;
use std::time::Duration;
use switchyard_sdk::config::{ConfigError, Validate, ensure};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Request header carrying the chosen cluster to Envoy's `cluster_header`
    /// route. Always removed from client requests first.
    pub cluster_header: String,
    /// Key of weighted splits when a rule has no sticky header.
    pub request_id_header: String,
    /// What happens when no rule matches.
    pub no_match: NoMatch,
    /// The table to start with (and to keep, without `control`), compiled
    /// as it is read.
    pub table: Option<Table>,
    /// Where newer tables come from.
    pub control: Option<Control>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_header: "x-switchyard-cluster".into(),
            request_id_header: "x-request-id".into(),
            no_match: NoMatch::default(),
            table: None,
            control: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoMatchAction {
    /// Answer with `status` and the JSON `body`.
    LocalReply,
    /// Leave the request to Envoy's own routes (the routing header is absent).
    PassThrough,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoMatch {
    pub action: NoMatchAction,
    pub status: u16,
    /// Any JSON value; sent as `application/json`.
    pub body: serde_json::Value,
}

impl Default for NoMatch {
    fn default() -> Self {
        NoMatch {
            action: NoMatchAction::LocalReply,
            status: 404,
            body: serde_json::json!({"error": "no_route", "message": "no route for this host"}),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// Envoy cluster of the control endpoint.
    pub cluster: String,
    /// Path that answers the table (JSON) with an `ETag`.
    pub path: String,
    /// `:authority` of the poll; default: the cluster name.
    pub authority: Option<String>,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    /// Larger answers are rejected as bad tables. Envoy itself ends an
    /// HTTP callout whose answer is over [`ENVOY_CALLOUT_BODY_LIMIT`], so a
    /// larger value is accepted but never reached (a warning says so).
    pub max_table_bytes: usize,
}

/// The largest answer body Envoy delivers to an HTTP callout (its async
/// client's buffer): 32 MiB. A larger answer ends as "no response" (seen
/// with Envoy 1.40: a 31 MiB table loads, a 33 MiB one never does).
pub const ENVOY_CALLOUT_BODY_LIMIT: usize = 32 << 20;

impl Default for Control {
    fn default() -> Self {
        Control {
            cluster: String::new(),
            path: "/".into(),
            authority: None,
            poll_interval_ms: 5_000,
            timeout_ms: 2_000,
            max_table_bytes: ENVOY_CALLOUT_BODY_LIMIT,
        }
    }
}

impl Control {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Ticks sample the poll schedule (and let idle workers load new
    /// tables): a tenth of the period, 20 ms..1 s.
    pub fn tick_period(&self) -> Duration {
        (self.poll_interval() / 10).clamp(Duration::from_millis(20), Duration::from_secs(1))
    }

    /// Shared-data namespace: VMs polling the same endpoint share tables.
    pub fn shared_prefix(&self) -> String {
        format!("switchyard/domain-router/{}{}", self.cluster, self.path)
    }
}

impl Validate for Control {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.cluster.is_empty(), "cluster", "must not be empty")?;
        ensure(self.path.starts_with('/'), "path", "must start with '/'")?;
        ensure(
            self.poll_interval_ms >= 100,
            "poll_interval_ms",
            "must be at least 100",
        )?;
        ensure(
            (1..=60_000).contains(&self.timeout_ms),
            "timeout_ms",
            "must be 1..=60000",
        )?;
        ensure(self.max_table_bytes > 0, "max_table_bytes", "must be > 0")
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, path) in [
            (&self.cluster_header, "cluster_header"),
            (&self.request_id_header, "request_id_header"),
        ] {
            ensure(
                valid_header_name(name),
                path,
                "must be a lowercase header name",
            )?;
        }
        if self.no_match.action == NoMatchAction::LocalReply {
            ensure(
                (200..=599).contains(&self.no_match.status),
                "no_match.status",
                "must be 200..=599",
            )?;
        }
        if let Some(c) = &self.control {
            c.validate().map_err(|e| e.within("control"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::config::parse;

    #[test]
    fn defaults() {
        let c: Config = parse(b"{}").unwrap();
        assert_eq!(c.cluster_header, "x-switchyard-cluster");
        assert_eq!(c.no_match.action, NoMatchAction::LocalReply);
        assert_eq!(c.no_match.status, 404);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |s: &str| parse::<Config>(s.as_bytes()).unwrap_err().to_string();
        assert!(err(r#"{"cluster_header": "X-Bad"}"#).starts_with("cluster_header: "));
        assert!(
            err(r#"{"no_match": {"action": "local_reply", "status": 99}}"#)
                .starts_with("no_match.status")
        );
        assert!(err(r#"{"no_match": {"action": "drop"}}"#).contains("unknown variant"));
        assert!(
            err(r#"{"control": {"cluster": "c", "poll_interval_ms": 5}}"#)
                .starts_with("control.poll_interval_ms")
        );
        assert!(
            err(
                r#"{"table": {"virtual_hosts": [{"domains": ["*"], "rules": [{"cluster": ""}]}]}}"#
            )
            .starts_with("table.virtual_hosts[0].rules[0].cluster: must not be empty")
        );
    }

    #[test]
    fn tick_period_is_bounded() {
        let c = |ms| Control {
            poll_interval_ms: ms,
            ..Control::default()
        };
        assert_eq!(c(100).tick_period(), Duration::from_millis(20));
        assert_eq!(c(1000).tick_period(), Duration::from_millis(100));
        assert_eq!(c(60_000).tick_period(), Duration::from_secs(1));
    }
}
