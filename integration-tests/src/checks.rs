//! Checkers that read a recorded history of answers rather than trusting the server.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::{GetAllRequest, PutIfAbsentRequest, PutIfAbsentResponse};

use crate::NodeProcess;

/// The latest a site may take a dead peer offline, counted from the peer's death:
/// `min_wait` + 2 heartbeat intervals (the promise), plus 500 ms for a killed process to
/// start refusing connections and for scheduling on a loaded machine.
pub fn take_offline_deadline(min_wait: Duration, heartbeat: Duration) -> Duration {
    min_wait + 2 * heartbeat + Duration::from_millis(500)
}

/// Attempt number `attempt` of client `client` in a race on `tokens` tokens, where every
/// client tries every token, each client in its own order: the token, and its
/// `PutIfAbsent` of `client-{client}` to `actionTokens`, with a request id of its own
/// (the same on every retry, so the attempt applies once). What
/// [`one_winner_per_token`] checks.
pub fn token_attempt(client: usize, attempt: usize, tokens: usize) -> (usize, PutIfAbsentRequest) {
    let token = (attempt * 7 + client * 131) % tokens;
    let request = PutIfAbsentRequest {
        cache: "actionTokens".into(),
        key: Bytes::from(format!("token-{token}")),
        value: Bytes::from(format!("client-{client}")),
        request_id: format!("client-{client}-token-{token}"),
        ..Default::default()
    };
    (token, request)
}

/// Checks a race of `PutIfAbsent` on `tokens` tokens, where client `c` wrote the value
/// `client-{c}`: `answers` holds (token, client, answer) for every attempt. Exactly one
/// winner per token; every loser was told `stored = false` with the winner's value and
/// version, and was not the winner. Returns each token's (winning client, version).
pub fn one_winner_per_token(
    answers: &[(usize, usize, PutIfAbsentResponse)],
    tokens: usize,
) -> HashMap<usize, (usize, u64)> {
    let mut winners: HashMap<usize, (usize, u64)> = HashMap::new();
    for (token, client, answer) in answers {
        if answer.stored {
            assert!(
                winners.insert(*token, (*client, answer.version)).is_none(),
                "token {token} won twice"
            );
        }
    }
    assert_eq!(winners.len(), tokens, "every token has a winner");
    for (token, client, answer) in answers {
        if !answer.stored {
            let existing = answer
                .existing
                .as_ref()
                .unwrap_or_else(|| panic!("a loser of token {token} was not told the winner"));
            let (winner, version) = winners[token];
            assert_ne!(
                *client, winner,
                "the winner of token {token} was told it lost"
            );
            assert_eq!(existing.value, format!("client-{winner}").as_bytes());
            assert_eq!(
                existing.metadata.as_ref().map(|m| m.version),
                Some(version),
                "token {token}"
            );
        }
    }
    winners
}

/// The keys `prefix0`, `prefix1`, ... (`count` of them) of `cache` that `node` holds, in
/// that order, as (key, value, version).
pub async fn contents(
    node: &NodeProcess,
    cache: &str,
    prefix: &str,
    count: usize,
) -> Vec<(Bytes, Bytes, u64)> {
    let mut reader = CacheClient::new(node.channel().await.unwrap());
    let mut all = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let entries = reader
            .get_all(GetAllRequest {
                cache: cache.into(),
                keys: chunk
                    .iter()
                    .map(|i| Bytes::from(format!("{prefix}{i}")))
                    .collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        all.extend(
            entries
                .into_iter()
                .map(|e| (e.key, e.value, e.metadata.unwrap().version)),
        );
    }
    all
}
