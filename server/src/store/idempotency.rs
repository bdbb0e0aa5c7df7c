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
use tokio::sync::watch;

use crate::store::time::{TimeSource, UnixMillis};

type Id = (Arc<str>, String);

#[derive(Debug)]
enum State<T> {
    /// A run is under way; its answer will be sent here (`None` until then).
    Running(watch::Receiver<Option<T>>),
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
    states: HashMap<Id, State<T>>,
    /// Finished ids in the order they finished, for eviction.
    finished: VecDeque<(UnixMillis, Id)>,
}

/// Releases a running id if its run is abandoned (failed or cancelled).
struct RunGuard<'a, T: Clone> {
    owner: &'a Idempotency<T>,
    id: Option<Id>,
}

impl<T: Clone> Drop for RunGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.owner.inner.lock().states.remove(&id);
        }
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
                states: HashMap::new(),
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
        let id: Id = (cache.clone(), request_id.to_string());
        let sender = loop {
            let waiting = {
                let mut inner = self.inner.lock();
                self.evict(&mut inner);
                match inner.states.get(&id) {
                    Some(State::Done(answer)) => return Ok(answer.clone()),
                    Some(State::Running(receiver)) => receiver.clone(),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        inner.states.insert(id.clone(), State::Running(receiver));
                        break sender;
                    }
                }
            };
            // Wait for the running request; if it is abandoned, try to become the runner.
            let mut waiting = waiting;
            if let Ok(answer) = waiting.wait_for(Option::is_some).await {
                return Ok(answer.clone().expect("waited for an answer"));
            }
        };
        let mut guard = RunGuard {
            owner: self,
            id: Some(id.clone()),
        };
        let answer = run().await?;
        let now = self.time.now_ms();
        {
            let mut inner = self.inner.lock();
            inner.states.insert(id.clone(), State::Done(answer.clone()));
            inner.finished.push_back((now, id));
        }
        guard.id = None;
        let _ = sender.send(Some(answer.clone()));
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
