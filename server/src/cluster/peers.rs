//! Channels to the other members of the site, by gRPC address, made on first use.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use sitegrid_proto::tls::ClientTls;
use sitegrid_proto::v1::admin_client::AdminClient;
use sitegrid_proto::v1::replication_service_client::ReplicationServiceClient;
use sitegrid_proto::v1::site_link_client::SiteLinkClient;
use tonic::transport::Channel;

/// How long opening a connection to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Channels to members.
#[derive(Debug, Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    max_message_bytes: usize,
    /// TLS to members, whose certificates must name the site.
    tls: Option<ClientTls>,
}

impl Peers {
    /// Channels carrying messages up to `max_message_bytes`, over `tls` if given.
    pub fn new(max_message_bytes: usize, tls: Option<ClientTls>) -> Peers {
        Peers {
            channels: Mutex::new(HashMap::new()),
            max_message_bytes,
            tls,
        }
    }

    /// A replication client for the member at `address`.
    pub fn client(
        &self,
        address: &str,
    ) -> Result<ReplicationServiceClient<Channel>, tonic::transport::Error> {
        Ok(ReplicationServiceClient::new(self.channel(address)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// An admin client for the member at `address`.
    pub fn admin(&self, address: &str) -> Result<AdminClient<Channel>, tonic::transport::Error> {
        Ok(AdminClient::new(self.channel(address)?))
    }

    /// A client of the cross-site service of the member at `address`.
    pub fn site_link(
        &self,
        address: &str,
    ) -> Result<SiteLinkClient<Channel>, tonic::transport::Error> {
        Ok(SiteLinkClient::new(self.channel(address)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// The channel to the member at `address`, made on first use.
    fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = sitegrid_proto::transport::internal_endpoint(address, CONNECT_TIMEOUT)?;
        let channel = sitegrid_proto::transport::lazy_channel(&endpoint, self.tls.clone());
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Forgets the channel to `address` (a member that left, or a restarted one).
    pub fn forget(&self, address: &str) {
        self.channels.lock().remove(address);
    }
}
