//! Options of writes, of iteration and of listeners, and the request ids that make
//! writes idempotent.

use std::time::Duration;

use bytes::Bytes;

/// How a write stores its entry, and under which request id it is sent.
///
/// Build it with [`WriteOptions::new`] and the chaining setters, or as a struct literal
/// with `..Default::default()`. The remove operations only read `request_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// How long the entry lives after this write; `None` (or zero) means never, unless
    /// the cache's config sets a default.
    pub lifespan: Option<Duration>,
    /// How long the entry lives without being read or written; `None` (or zero) means
    /// never, unless the cache's config sets a default.
    pub max_idle: Option<Duration>,
    /// Tags of the entry, each `name=value` (e.g. `user=u1`).
    pub tags: Vec<String>,
    /// Ask for the entry this write replaces (`put`, `replace`).
    pub return_previous: bool,
    /// Idempotency id; when `None`, the client makes a random one. Either way the same id
    /// goes with every retry, so the server applies the write once. Set it yourself to
    /// keep that guarantee across your own retries too.
    pub request_id: Option<String>,
}

impl WriteOptions {
    /// Options with everything left to the server's defaults.
    pub fn new() -> Self {
        WriteOptions::default()
    }

    /// Sets the lifespan.
    #[must_use]
    pub fn lifespan(mut self, lifespan: Duration) -> Self {
        self.lifespan = Some(lifespan);
        self
    }

    /// Sets the max idle time.
    #[must_use]
    pub fn max_idle(mut self, max_idle: Duration) -> Self {
        self.max_idle = Some(max_idle);
        self
    }

    /// Adds a tag (`name=value`).
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Asks for the replaced entry.
    #[must_use]
    pub fn return_previous(mut self, return_previous: bool) -> Self {
        self.return_previous = return_previous;
        self
    }

    /// Sets the request id.
    #[must_use]
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// The request id to send: the caller's, or a new random one.
    pub(crate) fn take_request_id(&mut self) -> String {
        self.request_id.take().unwrap_or_else(new_request_id)
    }

    pub(crate) fn lifespan_ms(&self) -> i64 {
        duration_ms(self.lifespan)
    }

    pub(crate) fn max_idle_ms(&self) -> i64 {
        duration_ms(self.max_idle)
    }
}

/// What [`RemoteCache::entries`](crate::RemoteCache::entries) streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntriesOptions {
    /// Entries per streamed batch; 0 lets the server choose (1000).
    pub batch_size: u32,
    /// Only entries carrying this tag (`name=value`).
    pub tag: Option<String>,
    /// Include values; otherwise entries come with empty values (keys and metadata only).
    pub with_values: bool,
}

impl Default for EntriesOptions {
    fn default() -> Self {
        EntriesOptions {
            batch_size: 0,
            tag: None,
            with_values: true,
        }
    }
}

impl EntriesOptions {
    /// Every entry, with values, in batches of the server's default size.
    pub fn new() -> Self {
        EntriesOptions::default()
    }

    /// Sets the batch size.
    #[must_use]
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Restricts the iteration to entries carrying `tag`.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Includes values or not.
    #[must_use]
    pub fn with_values(mut self, with_values: bool) -> Self {
        self.with_values = with_values;
        self
    }
}

/// Default of [`ListenOptions::resume_margin`].
const DEFAULT_RESUME_MARGIN: Duration = Duration::from_secs(10);

/// What [`Client::listen`](crate::Client::listen) follows, and how it resumes.
///
/// Build it with [`ListenOptions::new`] and the chaining setters, or as a struct literal
/// with `..Default::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// The caches to follow; at least one.
    pub caches: Vec<String>,
    /// Send every current entry first (as created), then the changes.
    pub include_current_state: bool,
    /// Only keys starting with these bytes; empty means every key.
    pub key_prefix: Bytes,
    /// Only entries carrying this tag (`name=value`); removals may come whatever the
    /// removed entry's tags were.
    pub tag: Option<String>,
    /// Include values and metadata in changes; otherwise keys and versions only.
    pub with_values: bool,
    /// Replay what changed after this version first (the current state of every key
    /// changed since, removals included); 0 means live changes only.
    pub from_version: u64,
    /// How far before the last version seen a reconnected stream resumes. Changes of
    /// different keys may arrive out of version order, by at most the time a write is in
    /// flight (seconds for a write from another site): the margin must cover that, and
    /// the clock differences between sites, whose clocks give versions. Duplicates it
    /// causes are dropped. (This machine's clock plays no part.)
    pub resume_margin: Duration,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            caches: Vec::new(),
            include_current_state: false,
            key_prefix: Bytes::new(),
            tag: None,
            with_values: false,
            from_version: 0,
            resume_margin: DEFAULT_RESUME_MARGIN,
        }
    }
}

impl ListenOptions {
    /// Live changes of `caches`, keys and versions only, resuming 10 s back.
    pub fn new(caches: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ListenOptions {
            caches: caches.into_iter().map(Into::into).collect(),
            ..ListenOptions::default()
        }
    }

    /// Sends the current entries first, or not.
    #[must_use]
    pub fn include_current_state(mut self, include_current_state: bool) -> Self {
        self.include_current_state = include_current_state;
        self
    }

    /// Restricts the events to keys starting with `prefix`.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Restricts the events to entries carrying `tag`.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Includes values and metadata, or not.
    #[must_use]
    pub fn with_values(mut self, with_values: bool) -> Self {
        self.with_values = with_values;
        self
    }

    /// Replays the changes after `version` first.
    #[must_use]
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = version;
        self
    }

    /// Sets the resume margin.
    #[must_use]
    pub fn resume_margin(mut self, margin: Duration) -> Self {
        self.resume_margin = margin;
        self
    }
}

/// A new random request id: 128 bits as 32 hex digits, enough that two clients never
/// pick the same one inside the server's idempotency window.
pub(crate) fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Milliseconds as the wire wants them: 0 for "never", and a sub-millisecond duration
/// rounded up so that it does not turn into "never".
fn duration_ms(duration: Option<Duration>) -> i64 {
    let Some(duration) = duration else { return 0 };
    let millis = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(millis).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn request_ids_are_32_hex_digits_and_unique() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn a_caller_request_id_is_used_as_given() {
        let mut options = WriteOptions::new().request_id("login-42");
        assert_eq!(options.take_request_id(), "login-42");
    }

    #[test]
    fn writes_without_request_id_get_a_fresh_one_each() {
        let first = WriteOptions::new().take_request_id();
        let second = WriteOptions::new().take_request_id();
        assert_eq!(first.len(), 32);
        assert_ne!(first, second);
    }

    #[test]
    fn durations_become_milliseconds_rounded_up() {
        assert_eq!(duration_ms(None), 0);
        assert_eq!(duration_ms(Some(Duration::ZERO)), 0);
        assert_eq!(duration_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(duration_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(duration_ms(Some(Duration::MAX)), i64::MAX);
    }

    #[test]
    fn setters_fill_the_options() {
        let options = WriteOptions::new()
            .lifespan(Duration::from_secs(30))
            .max_idle(Duration::from_secs(600))
            .tag("user=u1")
            .tag("realm=r1")
            .return_previous(true);
        assert_eq!(options.lifespan_ms(), 30_000);
        assert_eq!(options.max_idle_ms(), 600_000);
        assert_eq!(options.tags, ["user=u1", "realm=r1"]);
        assert!(options.return_previous);
    }

    #[test]
    fn listen_options_default_to_live_keys_only_with_a_ten_second_margin() {
        let options = ListenOptions::new(["work", "sessions"]);
        assert_eq!(options.caches, ["work", "sessions"]);
        assert!(!options.with_values);
        assert!(!options.include_current_state);
        assert_eq!(options.from_version, 0);
        assert_eq!(options.resume_margin, Duration::from_secs(10));
        let options = options
            .with_values(true)
            .include_current_state(true)
            .key_prefix("user:")
            .tag("realm=r1")
            .from_version(7)
            .resume_margin(Duration::from_secs(30));
        assert_eq!(options.key_prefix, "user:");
        assert_eq!(options.tag.as_deref(), Some("realm=r1"));
        assert_eq!(options.from_version, 7);
        assert_eq!(options.resume_margin, Duration::from_secs(30));
    }
}
