//! [`EventStream`]: a subscription's events, across as many server streams as it takes.
//!
//! The driver here only does I/O: it opens a stream with the request [`ResumeState`]
//! makes, passes each event through it, and when the stream breaks tells it so and opens
//! the next one. Every decision about positions and duplicates is `ResumeState`'s.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::Stream;
use sitegrid_proto::Backoff;
use sitegrid_proto::v1;
use sitegrid_proto::v1::cache_client::CacheClient;
use tonic::codec::Streaming;

use crate::client::{Client, Deadline};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::options::ListenOptions;
use crate::resume::{ResumeState, Step};
use crate::retry::RetryPolicy;

/// The events of a subscription, as returned by [`Client::listen`]; see there for what
/// it guarantees. Ends only after an error the server will not get over (the
/// subscription is refused); dropping it ends the subscription.
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event>> + Send>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// Opens the first stream (retried with the client's backoff) and returns the
    /// subscription's events.
    pub(crate) async fn open(client: Client, options: &ListenOptions) -> Result<EventStream> {
        // A listener reconnects for as long as it lives; the client's backoff still sets
        // the pace.
        let reconnect = Backoff {
            max_attempts: u32::MAX,
            ..*client.backoff()
        };
        let mut driver = Driver {
            state: ResumeState::new(options),
            stream: None,
            queued: VecDeque::new(),
            fruitless: 0,
            finished: false,
            reconnect,
            client,
        };
        let first = *driver.client.backoff();
        driver.stream = Some(driver.open(&first).await?);
        let inner = futures::stream::unfold(driver, |mut driver| async move {
            let item = driver.next().await?;
            Some((item, driver))
        });
        Ok(EventStream {
            inner: Box::pin(inner),
        })
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A server stream and the endpoint it comes from.
struct Open {
    streaming: Streaming<v1::CacheEvent>,
    endpoint: usize,
}

/// Everything the stream keeps between events.
struct Driver {
    client: Client,
    state: ResumeState,
    /// The current server stream; `None` when the next event needs a new one.
    stream: Option<Open>,
    /// Events to hand out before reading on: the invalidations of a start over.
    queued: VecDeque<Event>,
    /// Streams in a row that ended before sending anything: a node that accepts
    /// streams and drops them at once must not be hammered.
    fruitless: u32,
    /// Set once an error ended the subscription.
    finished: bool,
    /// The client's backoff without a limit on attempts.
    reconnect: Backoff,
}

impl Driver {
    /// The next item for the application; `None` once the subscription ended.
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            let Some(open) = self.stream.as_mut() else {
                if let Err(error) = self.reopen().await {
                    return Some(Err(self.finish(error)));
                }
                continue;
            };
            match open.streaming.message().await {
                Ok(Some(event)) => {
                    self.fruitless = 0;
                    match self.state.accept(event) {
                        Step::Deliver(event) => return Some(Ok(event)),
                        Step::Skip => {}
                        Step::Reopen(events) => {
                            tracing::warn!(
                                endpoint = self.client.endpoint_uri(open.endpoint),
                                "listener fell behind, resuming"
                            );
                            self.queued.extend(events);
                            self.stream = None;
                        }
                    }
                }
                // Only a node shutting down ends a stream without a resync.
                Ok(None) => self.broken(None),
                Err(status) => {
                    let endpoint = self.client.endpoint_uri(open.endpoint);
                    let error = Error::from_status(status, endpoint, self.client.request_timeout());
                    if !RetryPolicy::Listen.retries(&error) {
                        return Some(Err(self.finish(error)));
                    }
                    self.broken(Some(error));
                }
            }
        }
    }

    /// Drops the current stream after it ended (`error` is `None`) or failed.
    fn broken(&mut self, error: Option<Error>) {
        let Some(open) = self.stream.take() else {
            return;
        };
        let endpoint = self.client.endpoint_uri(open.endpoint);
        match &error {
            None => tracing::warn!(endpoint, "listen stream ended, resuming"),
            Some(error) => {
                tracing::warn!(endpoint, error = %error, "listen stream failed, resuming")
            }
        }
        if error
            .as_ref()
            .is_none_or(|error| RetryPolicy::Listen.fails_over(error))
        {
            self.client.fail_over_from(open.endpoint);
        }
        self.fruitless = self.fruitless.saturating_add(1);
        let invalidations = self.state.on_break();
        if !invalidations.is_empty() {
            tracing::warn!("listen stream broke during the current state, starting over");
        }
        self.queued.extend(invalidations);
    }

    /// Opens the next stream, after a pause if the last ones ended without a word.
    async fn reopen(&mut self) -> Result<()> {
        if let Some(pause) = self
            .fruitless
            .checked_sub(1)
            .and_then(|retry| self.reconnect.delay(retry))
        {
            tokio::time::sleep(pause).await;
        }
        let reconnect = self.reconnect;
        self.stream = Some(self.open(&reconnect).await?);
        Ok(())
    }

    async fn open(&mut self, backoff: &Backoff) -> Result<Open> {
        let request = self.state.next_request(SystemTime::now());
        let (streaming, endpoint) = self
            .client
            .send_with(
                request,
                // No deadline on the call: a listener's stream lasts as long as it is read.
                Deadline::FirstAnswer,
                RetryPolicy::Listen,
                backoff,
                |channel, request| async move { CacheClient::new(channel).listen(request).await },
            )
            .await?;
        Ok(Open {
            streaming,
            endpoint,
        })
    }

    fn finish(&mut self, error: Error) -> Error {
        tracing::debug!(error = %error, "listener ended");
        self.finished = true;
        self.stream = None;
        error
    }
}
