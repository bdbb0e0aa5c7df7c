//! What the relay needs from its own node.

use bytes::Bytes;
use sitegrid_proto::v1;
use tonic::Status;

/// The node a relay runs in, as the receiving side of backups sees it.
#[tonic::async_trait]
pub trait LocalSite: Send + Sync + 'static {
    /// Applies a change a peer site's primary is making to `cache`, on this site's
    /// primary of the key (the node forwards it there if it is not) and every ready
    /// member of the site, with the one replication rule, never waiting for a lock.
    /// `from_site` is the sending site (already checked to be a peer).
    async fn apply_backup(
        &self,
        cache: &str,
        from_site: &str,
        mutation: v1::ReplicatedMutation,
    ) -> Result<v1::ApplyOutcome, Status>;

    /// Merges a change a peer site queued for this site (an async backup) with this
    /// site's state of the key, by the cache's merge policy, on this site's primary of
    /// the key (the node sends it there unless `forwarded`, when it answers busy if it is
    /// not the primary) and every ready member of the site; never waits for a lock.
    async fn apply_async(
        &self,
        cache: &str,
        from_site: &str,
        mutation: v1::ReplicatedMutation,
        forwarded: bool,
    ) -> Result<v1::AsyncResult, Status>;

    /// Reconciles `key` of `cache` after a write to it, at version `in_doubt`, got no
    /// answer from a peer site: this site's state of the key gets a new version that
    /// replaces the write in doubt at the peer sites (unless one holds something newer,
    /// which this site then takes).
    async fn reconcile(&self, cache: &str, key: Bytes, in_doubt: u64) -> Result<(), Status>;

    /// Whether this node is the one of its site that decides the site's state of its peer
    /// sites (takes them offline, runs resyncs): one ready node at a time.
    fn decides_site_state(&self) -> bool;

    /// Tells this node's subscribers to `caches` that any entry may have changed unseen
    /// (`INVALIDATE_ALL`), after a resync with a peer site.
    fn invalidate_all(&self, caches: &[String]);

    /// Takes reads of max-idle entries of `cache` made in a peer site: this site's
    /// entries at the versions read count as used then too, on every node of the site.
    async fn touch(&self, cache: &str, touched: Vec<v1::Touched>) -> Result<(), Status>;

    /// Clears `cache` in this site (every node), for an operator's clear of all sites;
    /// answers how many entries were removed here.
    async fn clear(&self, cache: &str) -> Result<u64, Status>;

    /// This node's digest of every key range of `cache`.
    fn range_digests(&self, cache: &str) -> Result<Vec<u64>, Status>;

    /// This node's keys of `ranges` of `cache` (tombstones included), with versions.
    fn range_versions(&self, cache: &str, ranges: &[u32]) -> Result<Vec<v1::KeyVersion>, Status>;

    /// This node's state of `keys` of `cache`, as changes whose record is the key's slot
    /// (keys it holds nothing for are left out).
    fn fetch_keys(
        &self,
        cache: &str,
        keys: &[Bytes],
    ) -> Result<Vec<v1::ReplicatedMutation>, Status>;
}
