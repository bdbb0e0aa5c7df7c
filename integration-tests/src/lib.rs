//! Test harness for real `sitegrid` processes on loopback.
//!
//! - [`node`]: launch a node process with its own config, data dir and free ports; kill,
//!   pause, stop and restart it; it dies with the test, whatever happens.
//! - [`wait`]: poll a condition until a deadline, never sleep blindly.
//! - [`ports`]: free loopback ports.
//! - [`site`]: several nodes of one site, each told about the others.
//! - [`sites`]: two sites, each naming the other as its peer.
//! - [`checks`]: checkers of recorded histories.
//! - [`http`]: a tiny HTTP/1.1 GET for `/ready` and `/metrics`.
//! - [`requests`]: the requests tests build over and over.
//! - [`rpc`]: single-key requests sent unary or pipelined, for tests of both paths.
//! - [`witness`]: the witness process that grants take-offline.
//! - [`chaos`]: the fault-injection suite: topologies, nemeses, workloads, checkers.

pub mod chaos;
pub mod checks;
pub mod http;
pub mod node;
pub mod pki;
pub mod ports;
pub mod proxy;
pub mod requests;
pub mod rpc;
pub mod site;
pub mod sites;
pub mod wait;
pub mod witness;

pub use node::{NodeAddrs, NodeProcess, NodeSpec};
pub use proxy::{Direction, FaultProxy, ProxyStats};
pub use site::Site;
pub use sites::TwoSites;
pub use wait::eventually;
pub use witness::WitnessProcess;
