//! [`RemoteCache`]: one method per `Cache` RPC, typed.

use bytes::Bytes;
use sitegrid_proto::v1;

use crate::batch::Batch;
use crate::client::{Client, Deadline, cache_client};
use crate::entry_stream::EntryStream;
use crate::error::Result;
use crate::options::{EntriesOptions, WriteOptions};
use crate::types::{
    Entry, PutIfAbsentOutcome, PutOutcome, RemoveOutcome, RemoveWithVersionOutcome, ReplaceOutcome,
    ReplaceWithVersionOutcome, Versioned,
};

/// Builds one of the put-like requests, which have the same fields.
macro_rules! put_like {
    ($request:ident, $cache:expr, $key:expr, $value:expr, $options:expr) => {{
        let mut options = $options;
        v1::$request {
            cache: $cache.name.clone(),
            key: $key.into(),
            value: $value.into(),
            lifespan_ms: options.lifespan_ms(),
            max_idle_ms: options.max_idle_ms(),
            request_id: options.take_request_id(),
            return_previous: options.return_previous,
            tags: options.tags,
        }
    }};
}

/// A named cache on the server; get it with [`Client::cache`]. Cheap to clone.
///
/// Every method is one request, retried as described in the crate docs. Writes carry a
/// request id (the options' or a random one) that stays the same across retries; writes
/// of one key go first to that key's primary once the client knows the site's members.
#[derive(Debug, Clone)]
pub struct RemoteCache {
    client: Client,
    name: String,
}

impl RemoteCache {
    pub(crate) fn new(client: Client, name: String) -> Self {
        RemoteCache { client, name }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An empty round trip to the server.
    pub async fn ping(&self) -> Result<()> {
        self.client
            .unary(v1::PingRequest {}, |channel, request| async move {
                cache_client(channel).ping(request).await
            })
            .await
            .map(|_| ())
    }

    /// Reads `key`; `None` when it is absent or expired.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>> {
        let request = self.get_request(key.into());
        let response = self
            .client
            .read(request, |channel, request| async move {
                cache_client(channel).get(request).await
            })
            .await?;
        Ok(found(response))
    }

    /// Writes `key` unconditionally.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<PutOutcome> {
        let key: Bytes = key.into();
        let request = self.put_request(key.clone(), value.into(), options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).put(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Writes `key` only if it is absent; otherwise answers with the entry already there.
    pub async fn put_if_absent(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<PutIfAbsentOutcome> {
        let key: Bytes = key.into();
        let request = self.put_if_absent_request(key.clone(), value.into(), options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).put_if_absent(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Writes `key` only if it is present.
    pub async fn replace(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<ReplaceOutcome> {
        let key: Bytes = key.into();
        let request = self.replace_request(key.clone(), value.into(), options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).replace(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Writes `key` only if its current version is `expected_version`; otherwise answers
    /// with the current entry.
    pub async fn replace_with_version(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        expected_version: u64,
        options: WriteOptions,
    ) -> Result<ReplaceWithVersionOutcome> {
        let key: Bytes = key.into();
        let request =
            self.replace_with_version_request(key.clone(), value.into(), expected_version, options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).replace_with_version(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Removes `key` if present, answering with the removed entry. Only the options'
    /// `request_id` is used.
    pub async fn remove(
        &self,
        key: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<RemoveOutcome> {
        let key: Bytes = key.into();
        let request = self.remove_request(key.clone(), options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).remove(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Removes `key` only if its current version is `expected_version`; otherwise
    /// answers with the current entry. Only the options' `request_id` is used.
    pub async fn remove_with_version(
        &self,
        key: impl Into<Bytes>,
        expected_version: u64,
        options: WriteOptions,
    ) -> Result<RemoveWithVersionOutcome> {
        let key: Bytes = key.into();
        let request = self.remove_with_version_request(key.clone(), expected_version, options);
        let response = self
            .client
            .write(&key, request, |channel, request| async move {
                cache_client(channel).remove_with_version(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Several single-key requests to send together; see [`Batch`].
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }

    pub(crate) fn get_request(&self, key: Bytes) -> v1::GetRequest {
        v1::GetRequest {
            cache: self.name.clone(),
            key,
        }
    }

    pub(crate) fn put_request(
        &self,
        key: Bytes,
        value: Bytes,
        options: WriteOptions,
    ) -> v1::PutRequest {
        put_like!(PutRequest, self, key, value, options)
    }

    pub(crate) fn put_if_absent_request(
        &self,
        key: Bytes,
        value: Bytes,
        options: WriteOptions,
    ) -> v1::PutIfAbsentRequest {
        put_like!(PutIfAbsentRequest, self, key, value, options)
    }

    pub(crate) fn replace_request(
        &self,
        key: Bytes,
        value: Bytes,
        options: WriteOptions,
    ) -> v1::ReplaceRequest {
        put_like!(ReplaceRequest, self, key, value, options)
    }

    pub(crate) fn replace_with_version_request(
        &self,
        key: Bytes,
        value: Bytes,
        expected_version: u64,
        mut options: WriteOptions,
    ) -> v1::ReplaceWithVersionRequest {
        v1::ReplaceWithVersionRequest {
            cache: self.name.clone(),
            key,
            value,
            expected_version,
            lifespan_ms: options.lifespan_ms(),
            max_idle_ms: options.max_idle_ms(),
            request_id: options.take_request_id(),
            tags: options.tags,
        }
    }

    pub(crate) fn remove_request(
        &self,
        key: Bytes,
        mut options: WriteOptions,
    ) -> v1::RemoveRequest {
        v1::RemoveRequest {
            cache: self.name.clone(),
            key,
            request_id: options.take_request_id(),
        }
    }

    pub(crate) fn remove_with_version_request(
        &self,
        key: Bytes,
        expected_version: u64,
        mut options: WriteOptions,
    ) -> v1::RemoveWithVersionRequest {
        v1::RemoveWithVersionRequest {
            cache: self.name.clone(),
            key,
            expected_version,
            request_id: options.take_request_id(),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Reads several keys; absent keys are left out, the others come in request order.
    pub async fn get_all(
        &self,
        keys: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Result<Vec<Entry>> {
        let request = v1::GetAllRequest {
            cache: self.name.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
        };
        let response = self
            .client
            .unary(request, |channel, request| async move {
                cache_client(channel).get_all(request).await
            })
            .await?;
        Ok(response.entries.into_iter().map(Entry::from).collect())
    }

    /// Writes several entries unconditionally, each on its own (not atomically), all with
    /// the options' lifespan, max idle and tags; the request id covers the whole batch.
    /// Answers the version of each write, in order. The batch goes to any ready node,
    /// which forwards each entry to its primary.
    pub async fn put_all<K, V>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        mut options: WriteOptions,
    ) -> Result<Vec<u64>>
    where
        K: Into<Bytes>,
        V: Into<Bytes>,
    {
        let (lifespan_ms, max_idle_ms) = (options.lifespan_ms(), options.max_idle_ms());
        let entries = entries
            .into_iter()
            .map(|(key, value)| v1::PutAllEntry {
                key: key.into(),
                value: value.into(),
                lifespan_ms,
                max_idle_ms,
                tags: options.tags.clone(),
            })
            .collect();
        let request = v1::PutAllRequest {
            cache: self.name.clone(),
            entries,
            request_id: options.take_request_id(),
        };
        let response = self
            .client
            .unary(request, |channel, request| async move {
                cache_client(channel).put_all(request).await
            })
            .await?;
        Ok(response.versions)
    }

    /// Iterates the cache (or the entries carrying a tag) as a stream of entries, which
    /// the server sends in batches. Only opening the stream is retried; an error while
    /// streaming ends it. The request timeout bounds the wait for each batch, not the
    /// whole iteration.
    pub async fn entries(&self, options: EntriesOptions) -> Result<EntryStream> {
        let request = v1::EntriesRequest {
            cache: self.name.clone(),
            batch_size: options.batch_size,
            tag: options.tag.unwrap_or_default(),
            with_values: options.with_values,
        };
        let (streaming, endpoint) = self
            .client
            .send(
                request,
                Deadline::FirstAnswer,
                |channel, request| async move { cache_client(channel).entries(request).await },
            )
            .await?;
        Ok(EntryStream::new(
            streaming,
            endpoint.to_owned(),
            self.client.request_timeout(),
        ))
    }

    /// Removes every entry carrying `tag` (`name=value`); answers how many.
    pub async fn remove_by_tag(&self, tag: impl Into<String>) -> Result<u64> {
        let request = v1::RemoveByTagRequest {
            cache: self.name.clone(),
            tag: tag.into(),
        };
        let response = self
            .client
            .unary(request, |channel, request| async move {
                cache_client(channel).remove_by_tag(request).await
            })
            .await?;
        Ok(response.removed)
    }

    /// Number of live entries.
    pub async fn size(&self) -> Result<u64> {
        let request = v1::SizeRequest {
            cache: self.name.clone(),
        };
        let response = self
            .client
            .unary(request, |channel, request| async move {
                cache_client(channel).size(request).await
            })
            .await?;
        Ok(response.size)
    }

    /// Removes every entry of the cache on the site; answers how many.
    pub async fn clear(&self) -> Result<u64> {
        Ok(self.clear_where(false).await?.removed)
    }

    /// Removes every entry of the cache in this site and in every peer site it is backed
    /// up to; answers the entries removed here and in the peer sites. Fails with
    /// UNAVAILABLE naming the sites not cleared (this one is cleared then).
    pub async fn clear_all_sites(&self) -> Result<(u64, u64)> {
        let response = self.clear_where(true).await?;
        Ok((response.removed, response.removed_in_peer_sites))
    }

    async fn clear_where(&self, all_sites: bool) -> Result<v1::ClearResponse> {
        let request = v1::ClearRequest {
            cache: self.name.clone(),
            all_sites,
        };
        self.client
            .unary(request, |channel, request| async move {
                cache_client(channel).clear(request).await
            })
            .await
    }
}

/// The entry a `Get` found, if any.
pub(crate) fn found(response: v1::GetResponse) -> Option<Versioned> {
    response.found.then(|| Versioned {
        value: response.value,
        metadata: response.metadata.unwrap_or_default().into(),
    })
}
