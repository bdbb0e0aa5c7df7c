//! Which key each bench request uses.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::args::KeyOrder;

/// Key space of a random-order bench when `--keys` is not given.
const DEFAULT_RANDOM_KEYS: u64 = 100_000;

/// Hands out key numbers to all workers of a bench.
#[derive(Debug)]
pub(crate) struct KeyPicker {
    order: KeyOrder,
    /// Keys are `bench-0` .. `bench-{space - 1}`; `None`: unbounded (sequential only).
    space: Option<u64>,
    /// Next number of a sequential bench, shared so no two requests take the same one.
    next: AtomicU64,
}

impl KeyPicker {
    /// A picker for `--key-order order --keys keys`.
    pub(crate) fn new(order: KeyOrder, keys: Option<u64>) -> Self {
        let space = match order {
            KeyOrder::Random => Some(keys.unwrap_or(DEFAULT_RANDOM_KEYS)),
            KeyOrder::Sequential => keys,
        };
        KeyPicker {
            order,
            space: space.map(|s| s.max(1)),
            next: AtomicU64::new(0),
        }
    }

    /// The number of the next request's key.
    pub(crate) fn next_number(&self) -> u64 {
        match (self.order, self.space) {
            (KeyOrder::Random, space) => fastrand::u64(0..space.unwrap_or(DEFAULT_RANDOM_KEYS)),
            (KeyOrder::Sequential, space) => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                space.map_or(n, |space| n % space)
            }
        }
    }

    /// The next request's key, `bench-{n}`.
    pub(crate) fn next_key(&self) -> Bytes {
        Bytes::from(format!("bench-{}", self.next_number()))
    }

    /// Starts the sequence again from 0, so the measured phase rewrites the warmup's keys
    /// instead of adding to them.
    pub(crate) fn restart(&self) {
        self.next.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sequential_keys_count_up_without_bound_by_default() {
        let picker = KeyPicker::new(KeyOrder::Sequential, None);
        let numbers: Vec<u64> = (0..5).map(|_| picker.next_number()).collect();
        assert_eq!(numbers, [0, 1, 2, 3, 4]);
        assert_eq!(picker.next_key(), "bench-5");
    }

    #[test]
    fn sequential_keys_wrap_around_a_given_key_space() {
        let picker = KeyPicker::new(KeyOrder::Sequential, Some(3));
        let numbers: Vec<u64> = (0..7).map(|_| picker.next_number()).collect();
        assert_eq!(numbers, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn restarting_begins_the_sequence_at_zero_again() {
        let picker = KeyPicker::new(KeyOrder::Sequential, None);
        picker.next_number();
        picker.next_number();
        picker.restart();
        assert_eq!(picker.next_number(), 0);
    }

    #[test]
    fn concurrent_workers_never_take_the_same_sequential_key() {
        let picker = KeyPicker::new(KeyOrder::Sequential, None);
        let numbers: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| (0..1000).map(|_| picker.next_number()).collect::<Vec<_>>())
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let distinct: HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!(distinct.len(), 4000);
        assert_eq!(distinct.iter().max(), Some(&3999));
    }

    #[test]
    fn random_keys_stay_inside_the_key_space() {
        let picker = KeyPicker::new(KeyOrder::Random, Some(10));
        let seen: HashSet<u64> = (0..1000).map(|_| picker.next_number()).collect();
        assert!(seen.iter().all(|&n| n < 10));
        assert!(seen.len() > 1);
        let default = KeyPicker::new(KeyOrder::Random, None);
        assert!((0..1000).all(|_| default.next_number() < DEFAULT_RANDOM_KEYS));
    }
}
