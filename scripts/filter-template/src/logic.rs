//! The filter's decisions, free of host calls so they unit-test natively.

use crate::config::Config;

/// The header to add to a response.
pub fn response_header(config: &Config) -> (&str, &str) {
    (&config.header, &config.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_header() {
        assert_eq!(response_header(&Config::default()), ("x-__NAME__", "on"));
    }
}
