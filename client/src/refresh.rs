//! Keeping a client's topology fresh: a background task asks a ready node for the site's
//! members (`ClusterStatus`) when the client is made, every few seconds after that, and
//! at once when a request meets an unreachable, not ready or silent node.
//!
//! The task holds the client only weakly, and not at all while it waits on the network,
//! so it never keeps a client alive; the last clone of the client aborts it. It never
//! makes a request fail either: a refresh that gets no answer leaves the topology as it
//! was, and requests go on with it.

use std::sync::Arc;
use std::time::Duration;

use sitegrid_proto::v1;
use sitegrid_proto::v1::admin_client::AdminClient;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tonic::transport::Channel;

use crate::client::{Client, WeakClient};
use crate::credentials::Credentials;
use crate::error::Error;

/// The least time between two refreshes: when a node dies, every request in flight
/// asks for one.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(250);

/// The longest wait for one node's answer: a status is cheap to give, and a node that
/// hangs must not hold up learning from the others for a whole request timeout.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The refresh task of one client; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Refresher {
    /// Ends the task's wait for the next periodic refresh.
    wake: Arc<Notify>,
    task: AbortHandle,
}

impl Refresher {
    /// Starts refreshing the topology of `client` every `interval`, beginning now.
    pub(crate) fn spawn(client: WeakClient, interval: Duration) -> Refresher {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(client, Arc::clone(&wake), interval));
        Refresher {
            wake,
            task: task.abort_handle(),
        }
    }

    /// Asks for a refresh as soon as the last one is [`MIN_REFRESH_GAP`] old. Wakes that
    /// come while one is under way make one more, not one each.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The task, for tests to see it end.
    #[cfg(test)]
    pub(crate) fn task_handle(&self) -> AbortHandle {
        self.task.clone()
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(client: WeakClient, wake: Arc<Notify>, interval: Duration) {
    loop {
        let Some(strong) = client.upgrade() else {
            return;
        };
        let sources = sources(&strong);
        let timeout = strong.request_timeout().min(ASK_TIMEOUT);
        let credentials = strong.credentials().clone();
        // Not held across the wait on the network: the client may be dropped meanwhile.
        drop(strong);
        let status = ask(sources, timeout, &credentials).await;
        let Some(strong) = client.upgrade() else {
            return;
        };
        if let Some(status) = status {
            strong.learn(&status);
        }
        drop(strong);
        tokio::time::sleep(MIN_REFRESH_GAP).await;
        tokio::select! {
            () = tokio::time::sleep(interval.saturating_sub(MIN_REFRESH_GAP)) => {}
            () = wake.notified() => {}
        }
    }
}

/// The endpoints to ask, with their channels: the read order, from the endpoint in use.
fn sources(client: &Client) -> Vec<(String, Channel)> {
    let nodes = client.nodes();
    let topology = &nodes.topology;
    let order = topology.endpoints_for_read();
    let current = client.current_endpoint();
    let start = order
        .iter()
        .position(|&index| index == current)
        .unwrap_or(0);
    order
        .iter()
        .cycle()
        .skip(start)
        .take(order.len())
        .map(|&index| {
            (
                topology.uri(index).to_owned(),
                nodes.connections[index].channel.clone(),
            )
        })
        .collect()
}

/// The status of the first of `sources` that answers and is ready; `None` if none is.
async fn ask(
    sources: Vec<(String, Channel)>,
    timeout: Duration,
    credentials: &Credentials,
) -> Option<v1::ClusterStatusResponse> {
    for (endpoint, channel) in sources {
        let mut request = tonic::Request::new(v1::ClusterStatusRequest {});
        credentials.sign(&mut request);
        request.set_timeout(timeout);
        let mut admin = AdminClient::new(channel);
        match tokio::time::timeout(timeout, admin.cluster_status(request)).await {
            Ok(Ok(response)) => {
                let status = response.into_inner();
                if status.ready {
                    return Some(status);
                }
                tracing::debug!(endpoint, "node not ready, asking another for the topology");
            }
            Ok(Err(status)) => {
                let error = Error::from_status(status, &endpoint, timeout);
                tracing::debug!(endpoint, error = %error, "topology refresh failed");
            }
            Err(_elapsed) => tracing::debug!(endpoint, "topology refresh timed out"),
        }
    }
    None
}
