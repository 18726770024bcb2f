//! The config crate's one error type.

use std::path::PathBuf;

/// Why a config was refused. Every variant that comes from the text names
/// its line and column (1-based) and the JSON path of the bad field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON of the expected shape (syntax, type, unknown field).
    #[error("{line}:{column}: {path}: {reason}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// JSON path of the field, `.` for the top level.
        path: String,
        /// What serde_json found wrong.
        reason: String,
    },
    /// The JSON is well formed but a value breaks a rule.
    #[error("{line}:{column}: {path}: {reason}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// JSON path of the field.
        path: String,
        /// The rule that was broken.
        reason: String,
    },
}

impl ConfigError {
    /// The 1-based line of the problem, when it came from the text.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// What is wrong, without where.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::Read { source, .. } => source.to_string(),
            ConfigError::Parse { reason, .. } | ConfigError::Invalid { reason, .. } => {
                reason.clone()
            }
        }
    }

    /// The JSON path of the bad field, when it came from the text.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { path, .. } | ConfigError::Invalid { path, .. } => Some(path),
        }
    }
}
