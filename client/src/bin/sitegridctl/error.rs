//! The CLI's errors and the exit code each one maps to.

use std::process::ExitCode;

use crate::input::InputError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A KEY or VALUE argument is unusable: bad usage.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A request failed, or the endpoints are unusable.
    #[error(transparent)]
    Client(#[from] sitegrid_client::Error),
    /// Printing the result failed.
    #[error("cannot write output")]
    Output(#[from] std::io::Error),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// A site named on the command line is not a peer site of the node's site.
    #[error("{site:?} is not a peer site of site {of}")]
    UnknownSite {
        /// The site named.
        site: String,
        /// The node's site.
        of: String,
    },
    /// A bench saw what must never happen (a token used twice, a refresh lost).
    #[error("the bench saw {anomalies} anomalies")]
    BenchAnomalies {
        /// How many.
        anomalies: u64,
    },
    /// A bench ran but not one of its requests succeeded.
    #[error("no bench request succeeded ({errors} errors)")]
    BenchFailed {
        /// Requests that failed.
        errors: u64,
    },
}

impl CliError {
    /// 2 for bad usage, 1 for everything else.
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Input(_)
            | CliError::Usage(_)
            | CliError::UnknownSite { .. }
            | CliError::Client(
                sitegrid_client::Error::InvalidEndpoint { .. } | sitegrid_client::Error::NoEndpoint,
            ) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }

    /// Whether the output was closed by its reader (`sitegridctl ... | head`): not worth
    /// complaining about.
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The text printed after `error: `: the message and its causes. Client errors already
    /// carry their causes in their message.
    pub(crate) fn report(&self) -> String {
        let mut text = self.to_string();
        if matches!(self, CliError::Client(_)) {
            return text;
        }
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sitegrid_client::ErrorCode;

    #[test]
    fn server_errors_exit_1_and_usage_errors_exit_2() {
        let server = CliError::from(sitegrid_client::Error::Server {
            code: ErrorCode::NotFound,
            message: "unknown cache nope".into(),
        });
        assert_eq!(server.exit_code(), ExitCode::from(1));
        assert_eq!(server.report(), "not_found: unknown cache nope");
        let endpoint = CliError::from(sitegrid_client::Error::NoEndpoint);
        assert_eq!(endpoint.exit_code(), ExitCode::from(2));
        let input = CliError::from(crate::input::parse_key("base64:!").unwrap_err());
        assert_eq!(input.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn usage_error_reports_include_their_cause() {
        let input = CliError::from(crate::input::parse_key("base64:!").unwrap_err());
        let report = input.report();
        assert!(report.starts_with("key is not valid base64: "), "{report}");
    }
}
