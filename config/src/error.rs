//! Configuration errors: each names the file or field and what is wrong with it.

use std::path::PathBuf;

/// `Result` with [`ConfigError`].
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a sitegrid config.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or other origin) of the text.
        origin: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// An environment override has a value that does not parse.
    #[error("environment variable {variable}: {message}")]
    Env {
        /// The variable.
        variable: String,
        /// What is wrong with its value.
        message: String,
    },
    /// Values parse but break a rule.
    #[error("invalid config: {}", problems.join("; "))]
    Invalid {
        /// Each problem as `field.path: what is wrong`.
        problems: Vec<String>,
    },
}
