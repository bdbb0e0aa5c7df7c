//! The node's side of the cross-site relay: the peer sites as the store sees them, and
//! the node as the relay's receiving side sees it.

use bytes::Bytes;
use sitegrid_proto::v1;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use sitegrid_relay::{LocalSite, Relay, SyncOutcome};
use tonic::Status;
use tonic::transport::Channel;

use crate::cluster::{Cluster, codec};
use crate::error::{Error, Result};
use crate::store::Services;
use crate::store::cache::{Touch, WriteResult};
use crate::store::mutation::Mutation;
use crate::store::peers::{Backed, PeerSites};
use crate::store::replication::SiteReplication;
use crate::store::slot_key::RANGES;
use crate::store::write::{Merged, ReplicaOutcome};

/// The relay's peer sites, for the store's write path.
#[derive(Debug)]
pub(crate) struct RelayPeers {
    relay: Relay,
}

impl RelayPeers {
    pub(crate) fn new(relay: Relay) -> RelayPeers {
        RelayPeers { relay }
    }
}

#[tonic::async_trait]
impl PeerSites for RelayPeers {
    fn has_sync_backups(&self, cache: &str) -> bool {
        self.relay.has_sync_backups(cache)
    }

    fn full_outbox(&self, cache: &str) -> Option<String> {
        self.relay.full_outbox(cache)
    }

    async fn enqueue(&self, cache: &str, mutation: &Mutation) -> Result<()> {
        if !self.relay.has_async_backups(cache) {
            return Ok(());
        }
        let message = codec::encode_mutation(mutation, None, None);
        self.relay
            .enqueue(cache, &message, mutation.next())
            .await
            .map_err(|error| Error::Unavailable(error.to_string()))
    }

    async fn share_touches(&self, cache: &str, touches: &[Touch]) {
        if self.relay.has_sync_backups(cache) || self.relay.has_async_backups(cache) {
            self.relay
                .share_touches(cache, codec::encode_touches(touches))
                .await;
        }
    }

    async fn backup(
        &self,
        cache: &str,
        mutation: &Mutation,
        request_id: Option<&str>,
        answer: &WriteResult,
        services: &Services,
    ) -> Result<Backed> {
        let message = codec::encode_mutation(mutation, request_id, Some(answer));
        match self.relay.backup(cache, message, mutation.next()).await {
            SyncOutcome::Done => Ok(Backed::Done),
            SyncOutcome::Busy => Ok(Backed::Busy),
            SyncOutcome::Conflict {
                current,
                recorded,
                voided,
                ..
            } => {
                let current = (!current.is_empty())
                    .then(|| codec::decode_slot(&current, services))
                    .transpose()?;
                let recorded = recorded
                    .map(|answer| codec::decode_answer(&answer, services))
                    .transpose()?;
                Ok(Backed::Conflict {
                    current,
                    recorded,
                    voided,
                })
            }
            SyncOutcome::Unavailable { site, reason } => Err(Error::Unavailable(format!(
                "cache {cache}: the sync backup to site {site} failed ({reason}); the write \
                 was not applied"
            ))),
        }
    }
}

/// The node, for the relay's receiving side: a peer site's backup goes to this site's
/// primary of the key.
#[derive(Debug, Clone)]
pub struct NodeSite {
    cluster: Cluster,
    site: String,
}

impl NodeSite {
    /// The node whose part in its site (`site`) is `cluster`.
    pub fn new(cluster: Cluster, site: &str) -> NodeSite {
        NodeSite {
            cluster,
            site: site.to_string(),
        }
    }

    /// Where a change to `key` of `cache` from a peer site is applied.
    fn primary_of(&self, cache: &str, key: &[u8]) -> std::result::Result<Primary, Status> {
        self.cluster.store().cache(cache)?;
        let key = Bytes::copy_from_slice(key);
        if crate::store::replication::SiteReplication::is_primary(&self.cluster, &key) {
            return Ok(Primary::Here);
        }
        Ok(match self.cluster.view().primary(&key) {
            Some(primary) if primary.name != self.cluster.me().name => {
                Primary::Member(primary.address.clone())
            }
            _ => Primary::Unknown,
        })
    }

    /// A client of the cross-site service of the member at `address`.
    fn site_link(&self, address: &str) -> std::result::Result<SiteLinkClient<Channel>, Status> {
        self.cluster
            .peers()
            .site_link(address)
            .map_err(|error| Status::unavailable(error.to_string()))
    }
}

/// Which node of this site applies a change from a peer site.
enum Primary {
    /// This one.
    Here,
    /// The member at this address.
    Member(String),
    /// None ready, or this node's view is settling.
    Unknown,
}

#[tonic::async_trait]
impl LocalSite for NodeSite {
    async fn apply_backup(
        &self,
        cache: &str,
        from_site: &str,
        mutation: v1::ReplicatedMutation,
    ) -> std::result::Result<v1::ApplyOutcome, Status> {
        match self.primary_of(cache, &mutation.key)? {
            Primary::Here => {}
            Primary::Member(address) => {
                let answer = self
                    .site_link(&address)?
                    .backup(v1::BackupRequest {
                        cache: cache.to_string(),
                        mutation: Some(mutation),
                        from_site: from_site.to_string(),
                    })
                    .await?;
                return answer.into_inner().outcome.ok_or_else(|| {
                    Status::internal("a member answered a backup without an outcome")
                });
            }
            Primary::Unknown => {
                return Err(Status::unavailable(format!(
                    "site {}: no ready primary for the key",
                    self.site
                )));
            }
        }
        let store = self.cluster.store();
        let request_id = mutation.request_id.clone();
        let change = codec::decode_mutation(mutation, store.services())?;
        let (key, version) = (change.mutation.key.clone(), change.mutation.next());
        let outcome = store.apply_backup(cache, change).await?;
        // Refused: the write may be this very one, retried on another primary of the
        // sending site after the first failed; its answer here is the answer, if the key
        // still holds what it wrote. Or it may be one this site undid.
        let (recorded, voided) = match &outcome {
            ReplicaOutcome::Conflict(current) => (
                store.recorded_answer(cache, &request_id, current.as_ref()),
                store.is_void(cache, &key, version),
            ),
            _ => (None, false),
        };
        let (result, current) = match outcome {
            ReplicaOutcome::Applied => (v1::ApplyResult::Applied, None),
            ReplicaOutcome::AlreadyApplied => (v1::ApplyResult::AlreadyApplied, None),
            ReplicaOutcome::Busy => (v1::ApplyResult::Busy, None),
            ReplicaOutcome::Conflict(current) => (v1::ApplyResult::Conflict, current),
        };
        Ok(v1::ApplyOutcome {
            result: result as i32,
            current: current.as_ref().map(codec::encode_slot).unwrap_or_default(),
            recorded_answer: recorded.as_deref().map(codec::encode_answer),
            voided,
        })
    }

    async fn apply_async(
        &self,
        cache: &str,
        from_site: &str,
        mutation: v1::ReplicatedMutation,
        forwarded: bool,
    ) -> std::result::Result<v1::AsyncResult, Status> {
        match self.primary_of(cache, &mutation.key)? {
            Primary::Here => {}
            // Nowhere to send it, or sent on once already: it comes again.
            Primary::Unknown => return Ok(v1::AsyncResult::Busy),
            Primary::Member(_) if forwarded => return Ok(v1::AsyncResult::Busy),
            Primary::Member(address) => {
                let answer = self
                    .site_link(&address)?
                    .apply_async(v1::ApplyAsyncRequest {
                        from_site: from_site.to_string(),
                        changes: vec![v1::AsyncChange {
                            cache: cache.to_string(),
                            mutation: Some(mutation),
                        }],
                        forwarded: true,
                    })
                    .await?
                    .into_inner();
                return Ok(answer
                    .results
                    .first()
                    .and_then(|r| v1::AsyncResult::try_from(*r).ok())
                    .unwrap_or(v1::AsyncResult::Busy));
            }
        }
        let store = self.cluster.store();
        let key = Bytes::copy_from_slice(&mutation.key);
        let slot = codec::decode_slot(&mutation.record, store.services())?;
        let (result, outcome) = match store.merge_backup(cache, key, slot).await? {
            Merged::Taken => (v1::AsyncResult::Taken, "remote_wins"),
            Merged::Kept | Merged::Restamped(_) => (v1::AsyncResult::Kept, "local_wins"),
            Merged::Busy => (v1::AsyncResult::Busy, "busy"),
        };
        metrics::counter!(
            "sitegrid_async_merges_total",
            "site" => from_site.to_string(),
            "cache" => cache.to_string(),
            "outcome" => outcome
        )
        .increment(1);
        Ok(result)
    }

    async fn reconcile(
        &self,
        cache: &str,
        key: Bytes,
        in_doubt: u64,
    ) -> std::result::Result<(), Status> {
        Ok(self.cluster.store().restamp(cache, key, in_doubt).await?)
    }

    async fn touch(
        &self,
        cache: &str,
        touched: Vec<v1::Touched>,
    ) -> std::result::Result<(), Status> {
        let touches = codec::decode_touches(touched);
        self.cluster.store().cache(cache)?.take_touches(&touches);
        self.cluster.share_touches(cache, &touches).await;
        Ok(())
    }

    async fn clear(&self, cache: &str) -> std::result::Result<u64, Status> {
        let removed = self.cluster.store().clear(cache).await?;
        tracing::info!(cache, removed, "cache cleared by a peer site");
        Ok(removed)
    }

    fn decides_site_state(&self) -> bool {
        self.cluster.decides_site_state()
    }

    fn invalidate_all(&self, caches: &[String]) {
        let store = self.cluster.store();
        for cache in caches {
            if let Ok(cache) = store.cache(cache) {
                cache.announce_invalidate_all();
            }
        }
    }

    fn range_digests(&self, cache: &str) -> std::result::Result<Vec<u64>, Status> {
        let cache = self.cluster.store().cache(cache)?;
        Ok(cache.keyspace.read().digests().to_vec())
    }

    fn range_versions(
        &self,
        cache: &str,
        ranges: &[u32],
    ) -> std::result::Result<Vec<v1::KeyVersion>, Status> {
        let cache = self.cluster.store().cache(cache)?;
        let keyspace = cache.keyspace.read();
        let mut keys = Vec::new();
        for range in ranges {
            let range = *range as usize;
            if range >= RANGES {
                return Err(Status::invalid_argument(format!(
                    "key range {range} does not exist (there are {RANGES})"
                )));
            }
            let (slots, _) = keyspace.range_slots(range, None, usize::MAX);
            keys.extend(slots.into_iter().map(|(key, slot)| v1::KeyVersion {
                key,
                version: slot.version(),
            }));
        }
        Ok(keys)
    }

    fn fetch_keys(
        &self,
        cache: &str,
        keys: &[Bytes],
    ) -> std::result::Result<Vec<v1::ReplicatedMutation>, Status> {
        let cache = self.cluster.store().cache(cache)?;
        let keyspace = cache.keyspace.read();
        Ok(keys
            .iter()
            .filter_map(|key| {
                let slot = keyspace.slot(key)?;
                Some(v1::ReplicatedMutation {
                    key: key.clone(),
                    prev: 0,
                    record: codec::encode_slot(slot),
                    request_id: String::new(),
                    answer: None,
                    undoes: 0,
                })
            })
            .collect())
    }
}
