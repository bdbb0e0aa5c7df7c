//! Free loopback ports for nodes that must know their ports before they start.
//!
//! A port taken from the kernel with `bind(0)` and released again is an ephemeral port:
//! the next outgoing connection of any test (a client, a proxy, a node's peer channel)
//! may be given it before the node binds it, and the node then fails with "Address
//! already in use". So node ports come from below the kernel's ephemeral range, which
//! outgoing connections never use, handed out once per test process by a counter (a
//! restarted node keeps its ports, and no other node of the process is given them), and
//! checked free for TCP and UDP before they are handed out (another test process may be
//! using the same block).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range the allocator cycles through.
const BLOCK: u32 = 10_000;

/// The lowest ephemeral port of this machine (Linux default 32768).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .filter(|low: &u32| *low > BLOCK + 1024)
        .unwrap_or(32_768)
}

/// A loopback address whose port no process listens on (TCP or UDP) and that this
/// process has not handed out before.
pub fn free_loopback_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let first = ephemeral_low() - BLOCK;
    // Test processes started one after another (pids close together) start far apart
    // in the block: 1,009 ports apart for consecutive pids.
    let start = (std::process::id() % BLOCK) * 1_009 % BLOCK;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..BLOCK {
        let port = (first + NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK) as u16;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {first}..{}", first + BLOCK);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice_and_lie_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let addr = free_loopback_addr();
            assert!(u32::from(addr.port()) < low, "{addr} is ephemeral");
            assert!(seen.insert(addr.port()), "{addr} handed out twice");
        }
    }
}
