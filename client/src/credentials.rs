//! How a client proves who it is: a bearer token sent with every call, and TLS (with a
//! client certificate, if it has one) on every connection.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};

/// The bearer token every call carries, if the client has one.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself.
        f.debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Calls carry `authorization: Bearer <token>`; `None` if the token can't be sent in
    /// a header (it is not visible ASCII).
    pub(crate) fn bearer(token: &str) -> Option<Credentials> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
        value.set_sensitive(true);
        Some(Credentials {
            authorization: Some(value),
        })
    }

    /// Adds the credentials to a request.
    pub(crate) fn sign<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
    }
}
