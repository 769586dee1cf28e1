//! Configuration: JSON in the plugin's `configuration` field.

use serde::Deserialize;
use switchyard_sdk::config::{ConfigError, Validate, ensure};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Response header to add.
    pub header: String,
    /// Its value.
    pub value: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header: "x-__NAME__".into(),
            value: "on".into(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        ensure(!self.header.is_empty(), "header", "must not be empty")?;
        ensure(
            self.header.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "header",
            "must be a lowercase header name",
        )
    }
}
