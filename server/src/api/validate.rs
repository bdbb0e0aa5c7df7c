//! Request validation: every limit in one place, each error naming the limit it broke.

use std::sync::Arc;

use bytes::Bytes;
use sitegrid_config::LimitsConfig;

use crate::error::{Error, Result};
use crate::store::cache::NewValue;

/// Longest lifespan or max idle accepted: 100 years, in milliseconds. Longer ones are
/// almost certainly a unit mistake (seconds or microseconds for milliseconds).
const MAX_DURATION_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// Checks requests against the node's limits.
#[derive(Debug, Clone)]
pub(crate) struct Validator {
    limits: LimitsConfig,
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

impl Validator {
    pub(crate) fn new(limits: LimitsConfig) -> Validator {
        Validator { limits }
    }

    /// A key to store, copied so the store doesn't keep the request's buffer alive.
    pub(crate) fn key(&self, key: &Bytes) -> Result<Bytes> {
        self.check_key(key)?;
        Ok(Bytes::copy_from_slice(key))
    }

    /// Checks a key that is only looked up.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(invalid("key must not be empty".into()));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(invalid(format!(
                "key is {} bytes, over the limit of {} bytes (limits.max_key_bytes)",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    /// A value, not copied here: a write copies it into its entry (`CacheStore::change`),
    /// so no entry keeps the request's buffer alive either.
    pub(crate) fn value(&self, value: &Bytes) -> Result<Bytes> {
        if value.len() > self.limits.max_value_bytes {
            return Err(invalid(format!(
                "value is {} bytes, over the limit of {} bytes (limits.max_value_bytes)",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(value.clone())
    }

    /// A lifespan or max idle in milliseconds: 0 or positive, at most 100 years.
    pub(crate) fn millis(&self, field: &str, ms: i64) -> Result<u64> {
        if ms < 0 {
            return Err(invalid(format!("{field} must be >= 0, got {ms}")));
        }
        if ms > MAX_DURATION_MS {
            return Err(invalid(format!(
                "{field} must be at most {MAX_DURATION_MS} (100 years), got {ms}"
            )));
        }
        Ok(ms as u64)
    }

    /// An entry's tags: each `name=value` with a non-empty name, within the limits;
    /// duplicates are dropped.
    pub(crate) fn tags(&self, tags: &[String]) -> Result<Box<[Arc<str>]>> {
        if tags.len() > self.limits.max_tags {
            return Err(invalid(format!(
                "{} tags, over the limit of {} (limits.max_tags)",
                tags.len(),
                self.limits.max_tags
            )));
        }
        let mut checked = Vec::with_capacity(tags.len());
        for (index, tag) in tags.iter().enumerate() {
            self.tag(&format!("tags[{index}]"), tag)?;
            checked.push(Arc::<str>::from(tag.as_str()));
        }
        checked.sort_unstable();
        checked.dedup();
        Ok(checked.into_boxed_slice())
    }

    /// A tag filter: empty means none.
    pub(crate) fn tag_filter(&self, tag: &str) -> Result<Option<String>> {
        if tag.is_empty() {
            return Ok(None);
        }
        self.tag("tag", tag)?;
        Ok(Some(tag.to_string()))
    }

    fn tag(&self, field: &str, tag: &str) -> Result<()> {
        if tag.len() > self.limits.max_tag_bytes {
            return Err(invalid(format!(
                "{field} is {} bytes, over the limit of {} bytes (limits.max_tag_bytes)",
                tag.len(),
                self.limits.max_tag_bytes
            )));
        }
        match tag.split_once('=') {
            Some((name, _)) if !name.is_empty() => Ok(()),
            _ => Err(invalid(format!("{field} {tag:?} must be name=value"))),
        }
    }

    /// Number of keys in a GetAll or PutAll.
    pub(crate) fn batch(&self, count: usize) -> Result<()> {
        if count > self.limits.max_batch_entries {
            return Err(invalid(format!(
                "{count} entries, over the limit of {} (limits.max_batch_entries)",
                self.limits.max_batch_entries
            )));
        }
        Ok(())
    }

    /// A value with its settings.
    pub(crate) fn new_value(
        &self,
        value: &Bytes,
        lifespan_ms: i64,
        max_idle_ms: i64,
        tags: &[String],
    ) -> Result<NewValue> {
        Ok(NewValue {
            value: self.value(value)?,
            lifespan_ms: self.millis("lifespan_ms", lifespan_ms)?,
            max_idle_ms: self.millis("max_idle_ms", max_idle_ms)?,
            tags: self.tags(tags)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(LimitsConfig {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_tags: 2,
            max_tag_bytes: 10,
            max_batch_entries: 3,
            ..LimitsConfig::default()
        })
    }

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn keys_must_be_non_empty_and_within_the_limit() {
        let v = validator();
        assert_eq!(message(v.key(&Bytes::new())), "key must not be empty");
        assert_eq!(
            message(v.key(&Bytes::from_static(b"12345"))),
            "key is 5 bytes, over the limit of 4 bytes (limits.max_key_bytes)"
        );
        assert!(v.key(&Bytes::from_static(b"1234")).is_ok());
    }

    #[test]
    fn values_within_the_limit_pass_and_larger_ones_name_it() {
        let v = validator();
        assert!(v.value(&Bytes::new()).is_ok());
        assert!(
            message(v.value(&Bytes::from_static(b"123456789"))).contains("limits.max_value_bytes")
        );
    }

    #[test]
    fn negative_or_absurd_durations_are_refused() {
        let v = validator();
        assert_eq!(
            message(v.millis("lifespan_ms", -1)),
            "lifespan_ms must be >= 0, got -1"
        );
        assert!(message(v.millis("max_idle_ms", i64::MAX)).contains("100 years"));
        assert_eq!(v.millis("lifespan_ms", 0).unwrap(), 0);
    }

    #[test]
    fn tags_must_be_name_value_and_within_the_limits() {
        let v = validator();
        assert_eq!(
            message(v.tags(&["nope".into()])),
            "tags[0] \"nope\" must be name=value"
        );
        assert_eq!(
            message(v.tags(&["=x".into()])),
            "tags[0] \"=x\" must be name=value"
        );
        assert!(
            message(v.tags(&["a=1".into(), "b=2".into(), "c=3".into()]))
                .contains("limits.max_tags")
        );
        assert!(message(v.tags(&["name=toolong".into()])).contains("limits.max_tag_bytes"));
        assert_eq!(v.tags(&["a=1".into(), "a=1".into()]).unwrap().len(), 1);
        assert_eq!(v.tags(&["a=".into()]).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_tag_filter_means_no_filter() {
        let v = validator();
        assert_eq!(v.tag_filter("").unwrap(), None);
        assert_eq!(v.tag_filter("u=1").unwrap().as_deref(), Some("u=1"));
        assert!(v.tag_filter("u").is_err());
    }

    #[test]
    fn batches_are_bounded() {
        assert!(validator().batch(3).is_ok());
        assert!(message(validator().batch(4)).contains("limits.max_batch_entries"));
    }
}
