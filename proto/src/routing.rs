//! Which node of a site is a key's primary: rendezvous (highest random weight) hashing of
//! the key over the names of the site's ready members.
//!
//! Every node, and every client that knows the members, computes the same primary from
//! the same member list; when a member joins or leaves, only the keys it wins or held
//! move. The hash is xxh3, a published algorithm, so the choice is the same everywhere.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The weight of `node` for a key whose keyspace hash is `key_hash`.
pub fn weight(node: &str, key_hash: u64) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), key_hash)
}

/// The primary among `nodes` of a key whose keyspace hash is `key_hash` (see
/// `sitegrid_server`'s keyspace order: xxh3 of the key): the node of highest weight,
/// ties broken by name. `None` if there is no node.
pub fn primary<'a>(key_hash: u64, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by(|a, b| {
        weight(a, key_hash)
            .cmp(&weight(b, key_hash))
            .then_with(|| a.cmp(b))
    })
}

/// The keyspace hash of a key: xxh3 with seed 0.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_does_not_depend_on_the_order_of_the_members() {
        let nodes = ["n1", "n2", "n3"];
        for i in 0..100 {
            let hash = key_hash(format!("k{i}").as_bytes());
            let forward = primary(hash, nodes);
            let backward = primary(hash, nodes.iter().rev().copied());
            assert_eq!(forward, backward);
        }
    }

    #[test]
    fn keys_spread_over_members_and_only_a_leaver_s_keys_move() {
        let three = ["n1", "n2", "n3"];
        let two = ["n1", "n3"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            let hash = key_hash(format!("k{i}").as_bytes());
            let before = primary(hash, three).unwrap();
            *counts.entry(before).or_insert(0) += 1;
            let after = primary(hash, two).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "a key not held by the leaver moved");
            }
        }
        for node in three {
            assert!(counts[node] > 800, "{counts:?}");
        }
        assert_eq!(primary(1, std::iter::empty()), None);
    }
}
