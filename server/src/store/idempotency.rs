//! Idempotent retries: a write retried with the same request id returns the first answer.
//!
//! The first request with an id runs; any request with the same id that arrives while it
//! runs waits for its answer; any that arrives later, within the window, gets the kept
//! answer. If the first run fails, the id is released, so a retry runs again. Answers are
//! kept for `store.idempotency_window` and at most `store.idempotency_max_entries` of
//! them, oldest dropped first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::time::{TimeSource, UnixMillis};

/// A 128-bit digest of (cache, request id): fixed size, no allocation per request, and
/// as unlikely to collide as two random request ids are to be equal.
type Id = u128;

fn id_of(cache: &str, request_id: &str) -> Id {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(cache.len() as u64).to_le_bytes());
    hasher.update(cache.as_bytes());
    hasher.update(request_id.as_bytes());
    hasher.digest128()
}

#[derive(Debug)]
enum State<T> {
    /// A run is under way; duplicates that arrive meanwhile wait on the `Notify`, made
    /// only when the first of them arrives (duplicates are rare, runs are not).
    Running(Option<Arc<Notify>>),
    /// The run finished with this answer.
    Done(T),
}

/// Kept answers by (cache, request id).
#[derive(Debug)]
pub struct Idempotency<T> {
    window_ms: u64,
    max_entries: usize,
    time: Arc<dyn TimeSource>,
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    states: HashMap<Id, State<T>, foldhash::fast::FixedState>,
    /// Finished ids in the order they finished, for eviction.
    finished: VecDeque<(UnixMillis, Id)>,
}

/// Ends a run: records its answer, or releases the id if the run was abandoned (failed
/// or cancelled), and wakes the duplicates waiting either way.
struct RunGuard<'a, T: Clone> {
    owner: &'a Idempotency<T>,
    id: Option<Id>,
}

impl<T: Clone> RunGuard<'_, T> {
    fn finish(&mut self, answer: Option<T>) {
        let Some(id) = self.id.take() else { return };
        let mut inner = self.owner.inner.lock();
        let previous = match answer {
            Some(answer) => {
                let now = self.owner.time.now_ms();
                inner.finished.push_back((now, id));
                inner.states.insert(id, State::Done(answer))
            }
            None => inner.states.remove(&id),
        };
        drop(inner);
        if let Some(State::Running(Some(waiters))) = previous {
            waiters.notify_waiters();
        }
    }
}

impl<T: Clone> Drop for RunGuard<'_, T> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl<T: Clone + Send + Sync> Idempotency<T> {
    /// A table keeping answers `window_ms` long, at most `max_entries` of them.
    pub fn new(window_ms: u64, max_entries: usize, time: Arc<dyn TimeSource>) -> Self {
        Idempotency {
            window_ms,
            max_entries,
            time,
            inner: Mutex::new(Inner {
                states: HashMap::default(),
                finished: VecDeque::new(),
            }),
        }
    }

    /// Runs `run` once per (cache, request id); without an id it just runs.
    pub async fn run<E, F, Fut>(
        &self,
        cache: &Arc<str>,
        request_id: Option<&str>,
        run: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Some(request_id) = request_id.filter(|id| !id.is_empty()) else {
            return run().await;
        };
        let id = id_of(cache, request_id);
        loop {
            let notify: Arc<Notify>;
            let notified;
            {
                let mut inner = self.inner.lock();
                self.evict(&mut inner);
                match inner.states.get_mut(&id) {
                    Some(State::Done(answer)) => return Ok(answer.clone()),
                    Some(State::Running(waiters)) => {
                        notify = waiters.get_or_insert_with(Default::default).clone();
                    }
                    None => {
                        inner.states.insert(id, State::Running(None));
                        break;
                    }
                }
                // Made while the lock is held, so the runner's `notify_waiters` (which
                // needs the lock first) can't happen before it and be missed.
                notified = notify.notified();
            }
            notified.await;
            // The run finished or was abandoned: look again.
        }
        let mut guard = RunGuard {
            owner: self,
            id: Some(id),
        };
        let answer = run().await?;
        guard.finish(Some(answer.clone()));
        Ok(answer)
    }

    fn evict(&self, inner: &mut Inner<T>) {
        let now = self.time.now_ms();
        while let Some((finished_ms, _)) = inner.finished.front() {
            let expired = finished_ms.saturating_add(self.window_ms) <= now;
            if !expired && inner.finished.len() <= self.max_entries {
                break;
            }
            let (_, id) = inner.finished.pop_front().expect("front exists");
            if matches!(inner.states.get(&id), Some(State::Done(_))) {
                inner.states.remove(&id);
            }
        }
    }

    /// Number of ids remembered (running or done).
    pub fn remembered(&self) -> usize {
        self.inner.lock().states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::time::ManualTimeSource;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn table(time: Arc<ManualTimeSource>) -> Idempotency<u32> {
        Idempotency::new(1_000, 3, time)
    }

    fn cache() -> Arc<str> {
        Arc::from("c")
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_answer_without_running_again() {
        let table = table(ManualTimeSource::starting_at(0));
        let runs = AtomicU32::new(0);
        let run = || async { Ok::<_, ()>(runs.fetch_add(1, Ordering::SeqCst) + 10) };
        assert_eq!(table.run(&cache(), Some("r1"), run).await, Ok(10));
        assert_eq!(table.run(&cache(), Some("r1"), run).await, Ok(10));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another id, or no id, runs.
        assert_eq!(table.run(&cache(), Some("r2"), run).await, Ok(11));
        assert_eq!(table.run(&cache(), None, run).await, Ok(12));
    }

    #[tokio::test]
    async fn the_same_id_in_another_cache_is_another_request() {
        let table = table(ManualTimeSource::starting_at(0));
        assert_eq!(
            table
                .run(&cache(), Some("r"), || async { Ok::<_, ()>(1) })
                .await,
            Ok(1)
        );
        let other: Arc<str> = Arc::from("other");
        assert_eq!(
            table
                .run(&other, Some("r"), || async { Ok::<_, ()>(2) })
                .await,
            Ok(2)
        );
    }

    #[tokio::test]
    async fn a_failed_run_lets_the_retry_run() {
        let table = table(ManualTimeSource::starting_at(0));
        assert_eq!(
            table
                .run(&cache(), Some("r"), || async { Err::<u32, _>("busy") })
                .await,
            Err("busy")
        );
        assert_eq!(
            table
                .run(&cache(), Some("r"), || async { Ok::<_, &str>(7) })
                .await,
            Ok(7)
        );
    }

    #[tokio::test]
    async fn answers_are_forgotten_after_the_window() {
        let time = ManualTimeSource::starting_at(0);
        let table = table(time.clone());
        table
            .run(&cache(), Some("r"), || async { Ok::<_, ()>(1) })
            .await
            .unwrap();
        time.advance_ms(999);
        assert_eq!(
            table
                .run(&cache(), Some("r"), || async { Ok::<_, ()>(2) })
                .await,
            Ok(1)
        );
        time.advance_ms(1);
        assert_eq!(
            table
                .run(&cache(), Some("r"), || async { Ok::<_, ()>(3) })
                .await,
            Ok(3)
        );
    }

    #[tokio::test]
    async fn at_most_max_entries_answers_are_kept() {
        let table = table(ManualTimeSource::starting_at(0));
        for i in 0..10 {
            table
                .run(&cache(), Some(&format!("r{i}")), || async {
                    Ok::<_, ()>(i)
                })
                .await
                .unwrap();
        }
        assert!(table.remembered() <= 4, "kept {}", table.remembered());
    }

    #[tokio::test]
    async fn a_duplicate_arriving_during_the_run_waits_for_its_answer() {
        let table = Arc::new(table(ManualTimeSource::starting_at(0)));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let table = table.clone();
            tokio::spawn(async move {
                table
                    .run(&cache(), Some("r"), || async {
                        released.await.unwrap();
                        Ok::<_, ()>(1)
                    })
                    .await
            })
        };
        // Wait until the first run holds the id.
        while table.remembered() == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let table = table.clone();
            tokio::spawn(async move {
                table
                    .run(&cache(), Some("r"), || async { Ok::<_, ()>(2) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(second.await.unwrap(), Ok(1));
    }
}
