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
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let source = utf8_text(bytes)?;
    let mut config = parse(&source)?;
    if let Some(dir) = path.parent() {
        config.rebase_files(dir);
    }
    Ok(config)
}

/// A config's bytes as text; not UTF-8, an error placed at the first bad
/// byte, as for any other error.
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|err| {
        let good = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        ConfigError::Parse {
            line: good.iter().filter(|&&b| b == b'\n').count() + 1,
            column: good.len() - line_start + 1,
            path: ".".to_string(),
            reason: "the file is not UTF-8 text".to_string(),
        }
    })
}

/// An error about a pool's endpoint found after validation (its name does
/// not resolve), placed at the endpoint in `source` as any other error is.
pub fn endpoint_error(source: &str, pool: &str, index: usize, reason: String) -> ConfigError {
    use locate::Segment;
    let path = [
        Segment::Key("pools".to_string()),
        Segment::Key(pool.to_string()),
        Segment::Key("endpoints".to_string()),
        Segment::Index(index),
    ];
    let (line, column) = locate::locate(source, &path);
    ConfigError::Invalid {
        line,
        column,
        path: locate::render(&path),
        reason,
    }
}

impl RawConfig {
    /// Validates a config built in code (the one-route command line, the
    /// embedded default); errors point into its pretty-printed JSON.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let source = serde_json::to_string_pretty(&self).unwrap_or_default();
        validate(&self, &source)
    }
}
