//! sitegrid's cross-site relay (backups to peer sites, site state, resync).
//!
//! Not built yet: cross-site backups are their own issue. The relay will talk to the
//! local node only through a small trait that the server implements, so that this crate
//! never depends on `sitegrid-server`.
