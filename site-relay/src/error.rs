//! The relay's errors.

/// What can go wrong setting up the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A peer site's endpoint is not a usable address.
    #[error("sites.{site}.endpoints: {endpoint:?} is not a valid endpoint: {reason}")]
    InvalidEndpoint {
        /// The peer site.
        site: String,
        /// The endpoint as configured.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The witness's endpoint is not a usable address.
    #[error("witness.endpoint: {endpoint:?} is not a valid endpoint: {reason}")]
    InvalidWitness {
        /// The endpoint as configured.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The outbox of async backups failed on disk.
    #[error("the outbox of async backups: {0}")]
    Outbox(String),
}
