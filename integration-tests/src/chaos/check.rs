//! Checkers: each reads a recorded history (and the nodes' final states) in one pass and
//! lists the anomalies it finds, without trusting anything the servers say about
//! themselves beyond the answers recorded.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use super::history::{AddOp, ListenerLog, Outcome, Received, ReplaceOp, Snapshot, TokenOp};

/// The cache of single-use tokens.
pub const TOKENS: &str = "actionTokens";
/// The cache of session keys (versioned replaces) and of the acknowledged set.
pub const SESSIONS: &str = "sessions";

/// The key of token `n`.
pub fn token_key(n: u32) -> Bytes {
    Bytes::from(format!("token-{n}"))
}

/// The key of session `n`.
pub fn session_key(n: u32) -> Bytes {
    Bytes::from(format!("sess-{n}"))
}

/// Something a guarantee forbids, found in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// The checker that found it.
    pub checker: &'static str,
    /// What it is.
    pub detail: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

fn anomaly(checker: &'static str, detail: String) -> Anomaly {
    Anomaly { checker, detail }
}

/// At most one winner per token across all sites; every loser was told the holder was
/// the winner, or an attempt whose client got no answer (an indeterminate write may be
/// seen, and later replaced when its site reconciles it: its client never used the
/// token); and the token holds the winner's value on every node at the end.
pub fn one_winner_per_token(ops: &[TokenOp], finals: &[(String, Snapshot)]) -> Vec<Anomaly> {
    const NAME: &str = "one winner per token";
    let mut found = Vec::new();
    let attempts: HashMap<&Bytes, &TokenOp> = ops.iter().map(|op| (&op.value, op)).collect();
    let in_doubt = |token: u32, value: &Bytes| {
        attempts
            .get(value)
            .is_some_and(|op| op.token == token && op.outcome == Outcome::Indeterminate)
    };
    let mut winners: HashMap<u32, &TokenOp> = HashMap::new();
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok && o.stored) {
        let first = *winners.entry(op.token).or_insert(op);
        if !std::ptr::eq(first, op) {
            found.push(anomaly(
                NAME,
                format!(
                    "token {} won twice: {:?} in site {} and {:?} in site {}",
                    op.token,
                    first.value,
                    first.site + 1,
                    op.value,
                    op.site + 1
                ),
            ));
        }
    }
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok && !o.stored) {
        match (winners.get(&op.token), &op.existing) {
            (_, None) => found.push(anomaly(
                NAME,
                format!("a loser of token {} was not told the holder", op.token),
            )),
            (Some(winner), Some(existing)) if *existing == winner.value => {}
            (_, Some(existing)) if in_doubt(op.token, existing) => {}
            (winner, Some(existing)) => found.push(anomaly(
                NAME,
                format!(
                    "a loser of token {} was told {existing:?} holds it, but {:?} won it \
                     (that attempt: {:?})",
                    op.token,
                    winner.map(|w| &w.value),
                    attempts
                        .get(existing)
                        .map(|a| (a.token, a.outcome, a.stored, &a.existing)),
                ),
            )),
        }
    }
    for (token, winner) in &winners {
        for (node, snapshot) in finals {
            let held = snapshot.get(&(TOKENS.to_string(), token_key(*token)));
            if held.map(|(value, _)| value) != Some(&winner.value) {
                found.push(anomaly(
                    NAME,
                    format!(
                        "token {token} was won by {:?} but {node} holds {:?} at the end",
                        winner.value,
                        held.map(|(value, _)| value)
                    ),
                ));
            }
        }
    }
    found
}

/// No fork in any session key's version chain (two acknowledged replaces from one
/// expected version, or two with one new version), and no lost update: the key's final
/// version is at least every acknowledged replace's, and where they are equal the value
/// is that replace's.
pub fn no_fork_no_lost_update(ops: &[ReplaceOp], finals: &[(String, Snapshot)]) -> Vec<Anomaly> {
    const NAME: &str = "versioned replace";
    let mut found = Vec::new();
    let mut from: HashMap<(u32, u64), &ReplaceOp> = HashMap::new();
    let mut to: HashMap<(u32, u64), &ReplaceOp> = HashMap::new();
    let mut newest: HashMap<u32, &ReplaceOp> = HashMap::new();
    for op in ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok && o.replaced)
    {
        for (seen, version, what) in [
            (&mut from, op.expected, "replaced twice from"),
            (&mut to, op.version, "got twice"),
        ] {
            if let Some(first) = seen.insert((op.key, version), op) {
                found.push(anomaly(
                    NAME,
                    format!(
                        "fork: session {} {what} version {version} ({:?} and {:?})",
                        op.key, first.value, op.value
                    ),
                ));
            }
        }
        let latest = newest.entry(op.key).or_insert(op);
        if op.version > latest.version {
            *latest = op;
        }
    }
    for (key, latest) in &newest {
        for (node, snapshot) in finals {
            match snapshot.get(&(SESSIONS.to_string(), session_key(*key))) {
                Some((_, version)) if *version > latest.version => {}
                Some((value, version)) if *version == latest.version && *value == latest.value => {}
                held => found.push(anomaly(
                    NAME,
                    format!(
                        "lost update: session {key} was replaced with {:?} at version {} but \
                         {node} holds {held:?} at the end",
                        latest.value, latest.version
                    ),
                )),
            }
        }
    }
    found
}

/// Every acknowledged add is on every node at the end, at its version or newer.
pub fn acknowledged_present(ops: &[AddOp], finals: &[(String, Snapshot)]) -> Vec<Anomaly> {
    const NAME: &str = "acknowledged writes";
    let mut found = Vec::new();
    for (node, snapshot) in finals {
        let missing: Vec<&AddOp> = ops
            .iter()
            .filter(|op| op.outcome == Outcome::Ok)
            .filter(|op| {
                snapshot
                    .get(&(SESSIONS.to_string(), op.key.clone()))
                    .is_none_or(|(_, version)| *version < op.version)
            })
            .collect();
        if let Some(first) = missing.first() {
            found.push(anomaly(
                NAME,
                format!(
                    "{} acknowledged writes missing on {node}, e.g. {:?} at version {}",
                    missing.len(),
                    first.key,
                    first.version
                ),
            ));
        }
    }
    found
}

/// Each listener received every acknowledged add sent after its subscription started
/// (at that version or a newer one), unless an invalidation received after the add was
/// sent told it to drop its copies; and each key's changes came in version order, once.
pub fn listeners_complete(listeners: &[ListenerLog], adds: &[AddOp]) -> Vec<Anomaly> {
    const NAME: &str = "listeners";
    let mut found = Vec::new();
    for (index, log) in listeners.iter().enumerate() {
        // The newest version received of each key, and of each key since the last
        // invalidation: after one, the application holds nothing, and the replay that
        // follows may send again what it had (announced, so not an anomaly).
        let mut seen: HashMap<&Bytes, u64> = HashMap::new();
        let mut since_invalidation: HashMap<&Bytes, u64> = HashMap::new();
        let mut disordered = 0;
        for (_, received) in &log.received {
            match received {
                Received::Change { key, version } => {
                    let last = since_invalidation.entry(key).or_insert(0);
                    if *version <= *last {
                        disordered += 1;
                    }
                    *last = (*last).max(*version);
                    let newest = seen.entry(key).or_insert(0);
                    *newest = (*newest).max(*version);
                }
                Received::InvalidateAll => since_invalidation.clear(),
            }
        }
        if disordered > 0 {
            found.push(anomaly(
                NAME,
                format!(
                    "listener {index} (site {}) got {disordered} changes out of version \
                     order or twice",
                    log.site + 1
                ),
            ));
        }
        let last_invalidation = log
            .received
            .iter()
            .filter(|(_, r)| *r == Received::InvalidateAll)
            .map(|(at, _)| *at)
            .max();
        let missed: Vec<&AddOp> = adds
            .iter()
            .filter(|op| op.outcome == Outcome::Ok && op.invoked >= log.started)
            .filter(|op| seen.get(&op.key).is_none_or(|v| *v < op.version))
            .filter(|op| last_invalidation.is_none_or(|at| at < op.invoked))
            .collect();
        if let Some(first) = missed.first() {
            found.push(anomaly(
                NAME,
                format!(
                    "listener {index} (site {}) missed {} acknowledged writes with no \
                     invalidation after them, e.g. {:?} at version {}",
                    log.site + 1,
                    missed.len(),
                    first.key,
                    first.version
                ),
            ));
        }
    }
    found
}

/// Every node of every site holds the same keys, values and versions.
pub fn converged(finals: &[(String, Snapshot)]) -> Vec<Anomaly> {
    let Some((first_node, first)) = finals.first() else {
        return Vec::new();
    };
    finals[1..]
        .iter()
        .filter_map(|(node, snapshot)| {
            let differing = first
                .iter()
                .filter(|(key, state)| snapshot.get(*key) != Some(state))
                .map(|(key, _)| key)
                .chain(snapshot.keys().filter(|key| !first.contains_key(*key)))
                .collect::<Vec<_>>();
            let example = differing.first()?;
            Some(anomaly(
                "converged",
                format!(
                    "{node} and {first_node} differ in {} keys, e.g. {example:?}: {:?} / {:?}",
                    differing.len(),
                    snapshot.get(*example),
                    first.get(*example)
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each checker finds the anomaly it exists for in a history that has it, and none
    //! in the same history without it.

    use std::time::{Duration, Instant};

    use super::*;

    fn token(
        token: u32,
        value: &str,
        site: usize,
        stored: bool,
        existing: Option<&str>,
    ) -> TokenOp {
        TokenOp {
            token,
            value: Bytes::from(value.to_string()),
            site,
            outcome: Outcome::Ok,
            stored,
            existing: existing.map(|e| Bytes::from(e.to_string())),
        }
    }

    fn snapshot(entries: &[(&str, &str, &str, u64)]) -> Snapshot {
        entries
            .iter()
            .map(|(cache, key, value, version)| {
                (
                    (cache.to_string(), Bytes::from(key.to_string())),
                    (Bytes::from(value.to_string()), *version),
                )
            })
            .collect()
    }

    #[test]
    fn a_token_won_in_two_sites_is_an_anomaly() {
        let finals = vec![("n1".to_string(), snapshot(&[(TOKENS, "token-1", "a", 5)]))];
        let mut ops = vec![
            token(1, "a", 0, true, None),
            token(1, "b", 1, false, Some("a")),
            token(1, "c", 1, false, None),
        ];
        ops[2].outcome = Outcome::Indeterminate;
        assert_eq!(one_winner_per_token(&ops, &finals), []);
        ops.push(token(1, "d", 1, true, None));
        let found = one_winner_per_token(&ops, &finals);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("won twice"), "{found:?}");
    }

    #[test]
    fn a_loser_told_another_holder_or_a_final_value_not_the_winners_is_an_anomaly() {
        let ops = vec![
            token(1, "a", 0, true, None),
            token(1, "b", 1, false, Some("x")),
        ];
        let finals = vec![("n1".to_string(), snapshot(&[(TOKENS, "token-1", "b", 5)]))];
        let found = one_winner_per_token(&ops, &finals);
        assert_eq!(found.len(), 2, "{found:?}");
        // Told of an attempt that got no answer: it may have been seen before its site
        // reconciled it away.
        let mut in_doubt = token(1, "x", 1, false, None);
        in_doubt.outcome = Outcome::Indeterminate;
        let ops = vec![ops[0].clone(), ops[1].clone(), in_doubt];
        let finals = vec![("n1".to_string(), snapshot(&[(TOKENS, "token-1", "a", 5)]))];
        assert_eq!(one_winner_per_token(&ops, &finals), []);
    }

    fn replace(key: u32, expected: u64, value: &str, version: u64) -> ReplaceOp {
        ReplaceOp {
            key,
            expected,
            value: Bytes::from(value.to_string()),
            outcome: Outcome::Ok,
            replaced: true,
            version,
        }
    }

    #[test]
    fn two_replaces_from_one_version_are_a_fork_and_an_older_final_state_a_lost_update() {
        let ops = vec![replace(1, 10, "a", 20), replace(1, 20, "b", 30)];
        let finals = vec![("n1".to_string(), snapshot(&[(SESSIONS, "sess-1", "b", 30)]))];
        assert_eq!(no_fork_no_lost_update(&ops, &finals), []);

        let forked = vec![replace(1, 10, "a", 20), replace(1, 10, "b", 30)];
        let found = no_fork_no_lost_update(&forked, &finals);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.starts_with("fork"), "{found:?}");

        let behind = vec![("n1".to_string(), snapshot(&[(SESSIONS, "sess-1", "a", 20)]))];
        let found = no_fork_no_lost_update(&ops, &behind);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.starts_with("lost update"), "{found:?}");
    }

    fn add(key: &str, invoked: Instant, version: u64) -> AddOp {
        AddOp {
            key: Bytes::from(key.to_string()),
            invoked,
            outcome: Outcome::Ok,
            version,
        }
    }

    #[test]
    fn an_acknowledged_add_missing_on_one_node_is_an_anomaly() {
        let now = Instant::now();
        let ops = vec![add("ack-1", now, 7)];
        let held = snapshot(&[(SESSIONS, "ack-1", "v", 7)]);
        let finals = vec![("n1".to_string(), held.clone()), ("n2".to_string(), held)];
        assert_eq!(acknowledged_present(&ops, &finals), []);
        let finals = vec![
            ("n1".to_string(), snapshot(&[])),
            ("n2".to_string(), snapshot(&[])),
        ];
        assert_eq!(acknowledged_present(&ops, &finals).len(), 2);
    }

    #[test]
    fn a_listener_gap_is_an_anomaly_unless_an_invalidation_came_after_the_write() {
        let start = Instant::now();
        let later = start + Duration::from_millis(10);
        let adds = vec![add("ack-1", later, 7), add("ack-2", later, 8)];
        let mut log = ListenerLog {
            site: 0,
            started: start,
            received: vec![(
                later,
                Received::Change {
                    key: Bytes::from("ack-1"),
                    version: 7,
                },
            )],
        };
        let found = listeners_complete(std::slice::from_ref(&log), &adds);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("missed 1"), "{found:?}");
        log.received
            .push((later + Duration::from_millis(1), Received::InvalidateAll));
        assert_eq!(listeners_complete(std::slice::from_ref(&log), &adds), []);
        // After an invalidation a change may come again; twice after it, it may not.
        let again = Received::Change {
            key: Bytes::from("ack-1"),
            version: 7,
        };
        log.received.push((later, again.clone()));
        assert_eq!(listeners_complete(std::slice::from_ref(&log), &adds), []);
        log.received.push((later, again));
        let found = listeners_complete(&[log], &adds);
        assert!(
            found[0].detail.contains("out of version order"),
            "{found:?}"
        );
    }

    #[test]
    fn nodes_that_differ_in_one_key_have_not_converged() {
        let a = snapshot(&[(SESSIONS, "k", "v", 1)]);
        let b = snapshot(&[(SESSIONS, "k", "v", 2)]);
        assert_eq!(
            converged(&[("n1".into(), a.clone()), ("n2".into(), a.clone())]),
            []
        );
        assert_eq!(converged(&[("n1".into(), a), ("n2".into(), b)]).len(), 1);
    }
}
