//! CPU time per request: what the serving processes and the load generator spent over
//! one measurement, read from `/proc` (user plus system time, in the kernel's clock
//! ticks: 10 ms at the usual 100 per second, well under 1% of a run of seconds).

use std::time::Duration;

use anyhow::Context;
use nix::unistd::{SysconfVar, sysconf};

/// CPU time per request of one measurement, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PerRequest {
    /// The serving processes' time, summed (every node of a site).
    pub(crate) server_us: f64,
    /// The load generator's (`sitegridctl bench`, `redis-benchmark`).
    pub(crate) client_us: f64,
}

/// The processes' CPU time so far, and the time of this process's children that have
/// been waited for (the load generator, once its run returned).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    servers: Duration,
    children: Duration,
}

impl Snapshot {
    /// The CPU time of `servers` and of the children waited for so far.
    pub(crate) fn take(servers: &[u32]) -> anyhow::Result<Snapshot> {
        let mut servers_ticks = 0;
        for pid in servers {
            let fields = stat_fields(&format!("/proc/{pid}/stat"))?;
            servers_ticks += fields.utime + fields.stime;
        }
        let own = stat_fields("/proc/self/stat")?;
        let per_second = sysconf(SysconfVar::CLK_TCK)?
            .filter(|&ticks| ticks > 0)
            .context("no clock tick rate")?;
        let ticks = |count: u64| Duration::from_secs_f64(count as f64 / per_second as f64);
        Ok(Snapshot {
            servers: ticks(servers_ticks),
            children: ticks(own.cutime + own.cstime),
        })
    }

    /// CPU per request from this snapshot to `later`, over `requests` requests.
    pub(crate) fn per_request(&self, later: &Snapshot, requests: f64) -> PerRequest {
        let us = |from: Duration, to: Duration| {
            to.saturating_sub(from).as_secs_f64() * 1e6 / requests.max(1.0)
        };
        PerRequest {
            server_us: us(self.servers, later.servers),
            client_us: us(self.children, later.children),
        }
    }
}

/// The time fields of a `/proc/PID/stat` line, in clock ticks.
struct TimeFields {
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn stat_fields(path: &str) -> anyhow::Result<TimeFields> {
    let line = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&line).with_context(|| format!("unexpected {path}: {line}"))
}

/// Fields 14 to 17 (utime, stime, cutime, cstime) of a stat line. The second field, the
/// command in parentheses, may hold spaces and parentheses itself: fields are counted
/// from its last `)`.
fn parse_stat(line: &str) -> Option<TimeFields> {
    let (_, rest) = line.rsplit_once(')')?;
    // rest starts with field 3 (the state).
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match fields[..] {
        [utime, stime, cutime, cstime] => Some(TimeFields {
            utime,
            stime,
            cutime,
            cstime,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_commands_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    731 95 12 3 20 0 9 0 5000 1000000 200 18446744073709551615";
        let fields = parse_stat(line).unwrap();
        assert_eq!(
            (fields.utime, fields.stime, fields.cutime, fields.cstime),
            (731, 95, 12, 3)
        );
        assert!(parse_stat("4242 (cut short) S 1 2").is_none());
    }

    #[test]
    fn this_process_and_its_waited_children_are_metered() {
        let me = std::process::id();
        let before = Snapshot::take(&[me]).unwrap();
        // Burn some CPU in a child, then in this process.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        // A fixed amount of work: CPU time, whatever else runs on the machine.
        let mut x = 0u64;
        for _ in 0..50_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = Snapshot::take(&[me]).unwrap();
        let cost = before.per_request(&after, 1.0);
        // At least two clock ticks (10 ms each at the usual rate).
        assert!(cost.server_us >= 20_000.0, "{cost:?}");
        assert!(cost.client_us > 0.0, "{cost:?}");
    }
}
