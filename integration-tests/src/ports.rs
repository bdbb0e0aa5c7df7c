//! Free loopback ports for nodes that must know their ports before they start.

use std::net::{SocketAddr, TcpListener};

/// A loopback address with a port nobody listens on right now. The port is released
/// before the node binds it; the kernel does not hand the same ephemeral port out again
/// soon, so collisions between tests are unlikely, and a node that loses the race fails
/// to start with a clear error rather than talking to the wrong process.
pub fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("read its address")
}
