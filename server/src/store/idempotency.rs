//! Idempotent retries: a write retried with the same request id returns the first answer.
//!
//! The first request with an id runs; any request with the same id that arrives while it
//! runs waits for its answer; any that arrives later, within the window, gets the kept
//! answer. If the first run fails, the id is released, so a retry runs again.
//!
//! Answers are kept in two generations: new ones go into the current generation, which
//! becomes the previous one (and the previous one is dropped) once it is a whole window
//! old or holds half of `store.idempotency_max_entries`. So an answer is kept at least
//! `store.idempotency_window` (unless the table fills sooner) and at most twice that,
//! memory stays bounded, and forgetting old answers costs nothing per request.
//!
//! The table also remembers, for as long, which versions of a key are void: writes in
//! doubt that their site then undid ([`Idempotency::void`]). An answer kept for such a
//! write is not an answer: a retry of it runs again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::store::time::{TimeSource, UnixMillis};

/// A 128-bit digest of (cache, request id): fixed size, no allocation per request, and
/// as unlikely to collide as two random request ids are to be equal.
pub type Id = u128;

fn id_of(cache: &str, request_id: &str) -> Id {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(cache.len() as u64).to_le_bytes());
    hasher.update(cache.as_bytes());
    hasher.update(request_id.as_bytes());
    hasher.digest128()
}

/// A 128-bit digest of (cache, key, version), for the set of void versions.
fn void_id_of(cache: &str, key: &[u8], version: u64) -> Id {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&(cache.len() as u64).to_le_bytes());
    hasher.update(cache.as_bytes());
    hasher.update(&version.to_le_bytes());
    hasher.update(key);
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

type States<T> = HashMap<Id, State<T>, foldhash::fast::FixedState>;
type Voids = std::collections::HashSet<Id, foldhash::fast::FixedState>;

/// An answer, run now or kept from an earlier run of the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran<T> {
    /// Run now.
    Fresh(T),
    /// Kept from an earlier run.
    Replayed(T),
}

impl<T> Ran<T> {
    /// The answer.
    pub fn into_inner(self) -> T {
        match self {
            Ran::Fresh(answer) | Ran::Replayed(answer) => answer,
        }
    }
}

#[derive(Debug)]
struct Inner<T> {
    /// Where new ids go.
    current: States<T>,
    /// The generation before; looked in, never added to.
    previous: States<T>,
    /// Void versions (see [`void_id_of`]) since `current` began, and in the generation
    /// before.
    voids: [Voids; 2],
    /// When `current` began.
    current_since: UnixMillis,
}

impl<T> Inner<T> {
    fn get_mut(&mut self, id: &Id) -> Option<&mut State<T>> {
        match self.current.get_mut(id) {
            Some(state) => Some(state),
            None => self.previous.get_mut(id),
        }
    }

    fn remove(&mut self, id: &Id) -> Option<State<T>> {
        self.current.remove(id).or_else(|| self.previous.remove(id))
    }
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
        let previous = inner.remove(&id);
        if let Some(answer) = answer {
            inner.current.insert(id, State::Done(answer));
        }
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
                current: HashMap::default(),
                previous: HashMap::default(),
                voids: Default::default(),
                current_since: 0,
            }),
        }
    }

    /// Runs `run` once per (cache, request id); without an id it just runs.
    ///
    /// `run` gives the answer, and possibly an error to hand this caller instead (a write
    /// in doubt: its answer is kept for the retry). The result says whether the answer
    /// was kept from an earlier run.
    pub async fn run<E, F, Fut>(
        &self,
        cache: &str,
        request_id: Option<&str>,
        run: F,
    ) -> Result<Ran<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, Option<E>), E>>,
    {
        let Some(request_id) = request_id.filter(|id| !id.is_empty()) else {
            return match run().await? {
                (answer, None) => Ok(Ran::Fresh(answer)),
                (_, Some(error)) => Err(error),
            };
        };
        let id = id_of(cache, request_id);
        loop {
            let notify: Arc<Notify>;
            let notified;
            let dropped;
            {
                let mut inner = self.inner.lock();
                dropped = self.rotate(&mut inner);
                match inner.get_mut(&id) {
                    Some(State::Done(answer)) => return Ok(Ran::Replayed(answer.clone())),
                    Some(State::Running(waiters)) => {
                        notify = waiters.get_or_insert_with(Default::default).clone();
                    }
                    None => {
                        inner.current.insert(id, State::Running(None));
                        break;
                    }
                }
                // Made while the lock is held, so the runner's `notify_waiters` (which
                // needs the lock first) can't happen before it and be missed.
                notified = notify.notified();
            }
            drop(dropped);
            notified.await;
            // The run finished or was abandoned: look again.
        }
        let mut guard = RunGuard {
            owner: self,
            id: Some(id),
        };
        let (answer, deferred) = run().await?;
        guard.finish(Some(answer.clone()));
        match deferred {
            None => Ok(Ran::Fresh(answer)),
            Some(error) => Err(error),
        }
    }

    /// Keeps the answer of a write that ran elsewhere (a change replicated with its
    /// request id), unless an answer is already kept.
    pub fn record(&self, cache: &str, request_id: &str, answer: T) {
        if request_id.is_empty() {
            return;
        }
        self.keep(id_of(cache, request_id), answer);
    }

    /// Keeps an answer by its id (one another node kept), unless one is already kept.
    pub fn keep(&self, id: Id, answer: T) {
        let mut inner = self.inner.lock();
        let dropped = self.rotate(&mut inner);
        if inner.get_mut(&id).is_none() {
            inner.current.insert(id, State::Done(answer));
        }
        drop(inner);
        drop(dropped);
    }

    /// Every answer kept, by id, older ones first: what a node catching up copies, so a
    /// retry that lands on it after the node that ran the write is gone gets the answer.
    pub fn kept(&self) -> Vec<(Id, T)> {
        let inner = self.inner.lock();
        inner
            .previous
            .iter()
            .chain(inner.current.iter())
            .filter_map(|(id, state)| match state {
                State::Done(answer) => Some((*id, answer.clone())),
                State::Running(_) => None,
            })
            .collect()
    }

    /// The answer kept for a request id, if any.
    pub fn recorded(&self, cache: &str, request_id: &str) -> Option<T> {
        if request_id.is_empty() {
            return None;
        }
        match self.inner.lock().get_mut(&id_of(cache, request_id)) {
            Some(State::Done(answer)) => Some(answer.clone()),
            _ => None,
        }
    }

    /// Forgets the answer kept for a request id (one found void): a retry runs again.
    pub fn forget(&self, cache: &str, request_id: &str) {
        let id = id_of(cache, request_id);
        let mut inner = self.inner.lock();
        if matches!(inner.get_mut(&id), Some(State::Done(_))) {
            inner.remove(&id);
        }
    }

    /// Remembers that the write that made `version` of `key` did not happen: it was in
    /// doubt, and its site replaced it. Whatever answer was kept for it is void.
    pub fn void(&self, cache: &str, key: &[u8], version: u64) {
        self.keep_void(void_id_of(cache, key, version));
    }

    /// Every void version remembered (as digests): what a node catching up copies, with
    /// the answers.
    pub fn voids(&self) -> Vec<Id> {
        let inner = self.inner.lock();
        inner.voids.iter().flatten().copied().collect()
    }

    /// Remembers a void version another node remembered (a digest from [`voids`]).
    ///
    /// [`voids`]: Idempotency::voids
    pub fn keep_void(&self, id: Id) {
        let mut inner = self.inner.lock();
        let dropped = self.rotate(&mut inner);
        inner.voids[0].insert(id);
        drop(inner);
        drop(dropped);
    }

    /// Whether `version` of `key` is void (see [`Idempotency::void`]).
    pub fn is_void(&self, cache: &str, key: &[u8], version: u64) -> bool {
        let id = void_id_of(cache, key, version);
        self.inner
            .lock()
            .voids
            .iter()
            .any(|voids| voids.contains(&id))
    }

    /// Starts a new generation when the current one is a window old or holds half the
    /// allowed entries; returns the dropped generation, to be freed after the lock is
    /// released.
    fn rotate(&self, inner: &mut Inner<T>) -> Option<States<T>> {
        let now = self.time.now_ms();
        let age = now.saturating_sub(inner.current_since);
        let full = inner.current.len() + inner.voids[0].len() >= self.max_entries.div_ceil(2);
        if !(age >= self.window_ms || full) {
            return None;
        }
        let current = std::mem::take(&mut inner.current);
        let mut dropped = std::mem::replace(&mut inner.previous, current);
        inner.voids.rotate_right(1);
        inner.voids[0].clear();
        if age >= self.window_ms.saturating_mul(2) {
            // Nothing was asked for a whole window: the newer generation is over too.
            dropped.extend(inner.previous.drain());
            inner.voids[1].clear();
        }
        inner.current_since = now;
        // Runs under way must stay findable: their duplicates wait on them.
        inner
            .current
            .extend(dropped.extract_if(|_, state| matches!(state, State::Running(_))));
        Some(dropped)
    }

    /// Number of ids remembered (running or done).
    pub fn remembered(&self) -> usize {
        let inner = self.inner.lock();
        inner.current.len() + inner.previous.len()
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

    /// Runs a request whose fresh answer would be `value`.
    async fn once(
        table: &Idempotency<u32>,
        cache: &str,
        id: Option<&str>,
        value: u32,
    ) -> Result<Ran<u32>, &'static str> {
        table
            .run(cache, id, || async move { Ok((value, None)) })
            .await
    }

    #[tokio::test]
    async fn answers_kept_on_one_table_replay_on_another_that_copied_them() {
        let time = ManualTimeSource::starting_at(0);
        let (first, second) = (table(time.clone()), table(time));
        assert_eq!(once(&first, "c", Some("r1"), 7).await, Ok(Ran::Fresh(7)));
        for (id, answer) in first.kept() {
            second.keep(id, answer);
        }
        assert_eq!(
            once(&second, "c", Some("r1"), 8).await,
            Ok(Ran::Replayed(7))
        );
        // An answer already kept is not replaced by a copied one.
        second.keep(id_of("c", "r1"), 9);
        assert_eq!(
            once(&second, "c", Some("r1"), 8).await,
            Ok(Ran::Replayed(7))
        );
        assert_eq!(once(&second, "c", Some("r2"), 8).await, Ok(Ran::Fresh(8)));
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_answer_without_running_again() {
        let table = table(ManualTimeSource::starting_at(0));
        let runs = AtomicU32::new(0);
        let run = || async { Ok::<_, ()>((runs.fetch_add(1, Ordering::SeqCst) + 10, None)) };
        assert_eq!(table.run("c", Some("r1"), run).await, Ok(Ran::Fresh(10)));
        assert_eq!(table.run("c", Some("r1"), run).await, Ok(Ran::Replayed(10)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another id, or no id, runs.
        assert_eq!(table.run("c", Some("r2"), run).await, Ok(Ran::Fresh(11)));
        assert_eq!(table.run("c", None, run).await, Ok(Ran::Fresh(12)));
    }

    #[tokio::test]
    async fn the_same_id_in_another_cache_is_another_request() {
        let table = table(ManualTimeSource::starting_at(0));
        assert_eq!(once(&table, "c", Some("r"), 1).await, Ok(Ran::Fresh(1)));
        assert_eq!(once(&table, "other", Some("r"), 2).await, Ok(Ran::Fresh(2)));
    }

    #[tokio::test]
    async fn a_failed_run_lets_the_retry_run() {
        let table = table(ManualTimeSource::starting_at(0));
        let failed = table
            .run("c", Some("r"), || async { Err::<(u32, _), _>("busy") })
            .await;
        assert_eq!(failed, Err("busy"));
        assert_eq!(once(&table, "c", Some("r"), 7).await, Ok(Ran::Fresh(7)));
    }

    #[tokio::test]
    async fn an_answer_in_doubt_is_kept_for_the_retry_while_this_caller_gets_the_error() {
        let table = table(ManualTimeSource::starting_at(0));
        let in_doubt = table
            .run("c", Some("r"), || async { Ok((5, Some("unreachable"))) })
            .await;
        assert_eq!(in_doubt, Err("unreachable"));
        assert_eq!(once(&table, "c", Some("r"), 6).await, Ok(Ran::Replayed(5)));
        // Without an id there is nothing to keep.
        let no_id = table
            .run("c", None, || async { Ok((5, Some("unreachable"))) })
            .await;
        assert_eq!(no_id, Err("unreachable"));
    }

    #[tokio::test]
    async fn answers_recorded_from_elsewhere_are_found_and_replayed() {
        let table = table(ManualTimeSource::starting_at(0));
        table.record("c", "r", 9);
        table.record("c", "r", 10); // the first kept answer stays
        assert_eq!(table.recorded("c", "r"), Some(9));
        assert_eq!(table.recorded("c", "other"), None);
        assert_eq!(once(&table, "c", Some("r"), 1).await, Ok(Ran::Replayed(9)));
    }

    #[tokio::test]
    async fn answers_are_kept_at_least_the_window_and_forgotten_within_two() {
        let time = ManualTimeSource::starting_at(0);
        let table = table(time.clone());
        once(&table, "c", Some("r"), 1).await.unwrap();
        time.advance_ms(999);
        assert_eq!(once(&table, "c", Some("r"), 2).await, Ok(Ran::Replayed(1)));
        time.advance_ms(1); // a new generation begins; the answer moves to the previous one
        assert_eq!(once(&table, "c", Some("r"), 3).await, Ok(Ran::Replayed(1)));
        time.advance_ms(1_000); // and that one is dropped
        assert_eq!(once(&table, "c", Some("r"), 4).await, Ok(Ran::Fresh(4)));
    }

    #[tokio::test]
    async fn at_most_max_entries_answers_are_kept() {
        let table = table(ManualTimeSource::starting_at(0));
        for i in 0..10 {
            once(&table, "c", Some(&format!("r{i}")), i).await.unwrap();
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
                    .run("c", Some("r"), || async {
                        released.await.unwrap();
                        Ok::<_, ()>((1, None))
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
                    .run("c", Some("r"), || async { Ok::<_, ()>((2, None)) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(Ran::Fresh(1)));
        assert_eq!(second.await.unwrap(), Ok(Ran::Replayed(1)));
    }

    #[tokio::test]
    async fn a_void_version_is_remembered_a_window_and_a_forgotten_answer_runs_again() {
        let time = ManualTimeSource::starting_at(0);
        let table = Idempotency::<u32>::new(1_000, 100, time.clone());
        table.void("c", b"k", 7);
        assert!(table.is_void("c", b"k", 7));
        assert!(!table.is_void("c", b"k", 8));
        assert!(!table.is_void("c", b"other", 7));
        assert!(!table.is_void("d", b"k", 7));
        // A node catching up copies them.
        let copy = Idempotency::<u32>::new(1_000, 100, time.clone());
        for id in table.voids() {
            copy.keep_void(id);
        }
        assert!(copy.is_void("c", b"k", 7));
        assert!(!copy.is_void("c", b"k", 8));
        assert_eq!(once(&table, "c", Some("r"), 1).await, Ok(Ran::Fresh(1)));
        table.forget("c", "r");
        assert_eq!(once(&table, "c", Some("r"), 2).await, Ok(Ran::Fresh(2)));
        // Kept at least a window, like the answers.
        time.advance_ms(1_000);
        table.keep(0, 0);
        assert!(table.is_void("c", b"k", 7));
        time.advance_ms(2_000);
        table.keep(1, 0);
        assert!(!table.is_void("c", b"k", 7));
    }
}
