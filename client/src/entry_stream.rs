//! [`EntryStream`]: the entries of a cache, flattened from the batches the server streams.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use sitegrid_proto::v1;
use tonic::codec::Streaming;

use crate::error::{Error, Result};
use crate::types::Entry;

/// The entries of a cache, as returned by [`RemoteCache::entries`](crate::RemoteCache::entries); ends after the last
/// entry or after the first error.
pub struct EntryStream {
    inner: Pin<Box<dyn Stream<Item = Result<Entry>> + Send>>,
}

impl std::fmt::Debug for EntryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryStream").finish_non_exhaustive()
    }
}

/// What the stream keeps between entries.
struct BatchState {
    streaming: Streaming<v1::EntriesResponse>,
    endpoint: String,
    timeout: Duration,
    /// Entries of the current batch not handed out yet.
    pending: VecDeque<v1::Entry>,
}

impl EntryStream {
    pub(crate) fn new(
        streaming: Streaming<v1::EntriesResponse>,
        endpoint: String,
        timeout: Duration,
    ) -> Self {
        let state = BatchState {
            streaming,
            endpoint,
            timeout,
            pending: VecDeque::new(),
        };
        let inner = futures::stream::try_unfold(state, |mut state| async move {
            loop {
                if let Some(entry) = state.pending.pop_front() {
                    return Ok(Some((Entry::from(entry), state)));
                }
                let batch = tokio::time::timeout(state.timeout, state.streaming.message())
                    .await
                    .map_err(|_elapsed| Error::Timeout {
                        endpoint: state.endpoint.clone(),
                        after: state.timeout,
                    })?
                    .map_err(|status| Error::from_status(status, &state.endpoint, state.timeout))?;
                match batch {
                    Some(batch) => state.pending.extend(batch.entries),
                    None => return Ok(None),
                }
            }
        });
        EntryStream {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for EntryStream {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
