//! Switchyard's configuration: parsing and validation, nothing else (no
//! sockets, clocks or globals).
//!
//! - `raw`: serde types that mirror the JSON file (`RawConfig`).
//! - `validate`: `RawConfig` → [`Config`], every error with line, column and JSON path.
//! - `model`: the validated types the proxy trusts.
//! - `locate`: finds a JSON path's line in the source text.
//! - `error`: [`ConfigError`].

mod error;
mod locate;
mod model;
pub mod raw;
mod validate;

pub use error::ConfigError;
pub use model::*;
pub use raw::RawConfig;
pub use validate::{parse, parse_duration, parse_raw, validate};

use std::path::Path;

/// Reads and validates one config file. Relative TLS file names are taken
/// relative to the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = parse(&source)?;
    if let Some(dir) = path.parent() {
        config.rebase_files(dir);
    }
    Ok(config)
}

impl RawConfig {
    /// Validates a config built in code (the one-route command line, the
    /// embedded default); errors point into its pretty-printed JSON.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let source = serde_json::to_string_pretty(&self).unwrap_or_default();
        validate(&self, &source)
    }
}
