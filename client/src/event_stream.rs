//! [`EventStream`]: a subscription's events, across as many server streams as it takes.
//!
//! The driver here only does I/O: it opens a stream with the request [`ResumeState`]
//! makes, passes each event through it, hands out the events it has ready, and when the
//! stream breaks tells it so and opens the next one. Every decision about positions,
//! duplicates and what the application gets is `ResumeState`'s.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::client::cache_client;
use futures::Stream;
use sitegrid_proto::Backoff;
use sitegrid_proto::v1;
use tonic::codec::Streaming;

use crate::client::{Client, Deadline, Target};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::options::ListenOptions;
use crate::resume::{Restart, ResumeState, Step};
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
    /// Opens the subscription and reads its first stream up to its first `SYNCED` marker,
    /// holding back the events before it; until then, opening a stream is retried with
    /// the client's backoff, and an error that outlasts it is returned.
    pub(crate) async fn open(client: Client, options: &ListenOptions) -> Result<EventStream> {
        // Once started, a listener reconnects for as long as it lives; the client's
        // backoff still sets the pace.
        let reconnect = Backoff {
            max_attempts: u32::MAX,
            ..*client.backoff()
        };
        let mut driver = Driver {
            state: ResumeState::new(options),
            stream: None,
            fruitless: 0,
            finished: false,
            reconnect,
            client,
        };
        driver.start().await?;
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
    /// The bookkeeping, and the events ready for the application.
    state: ResumeState,
    /// The current server stream; `None` when the next event needs a new one.
    stream: Option<Open>,
    /// Streams in a row that ended before sending anything: a node that accepts
    /// streams and drops them at once must not be hammered.
    fruitless: u32,
    /// Set once an error ended the subscription.
    finished: bool,
    /// The client's backoff without a limit on attempts.
    reconnect: Backoff,
}

impl Driver {
    /// Reads until the subscription's first `SYNCED` marker, which is its start.
    async fn start(&mut self) -> Result<()> {
        while !self.state.started() {
            self.advance().await?;
        }
        Ok(())
    }

    /// The next item for the application; `None` once the subscription ended.
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.state.next_event() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if let Err(error) = self.advance().await {
                return Some(Err(self.finish(error)));
            }
        }
    }

    /// One step: opens a stream if there is none, else reads one event, or the end of
    /// the stream. Fails only with an error that ends the subscription.
    async fn advance(&mut self) -> Result<()> {
        let Some(open) = self.stream.as_mut() else {
            return self.reopen().await;
        };
        match open.streaming.message().await {
            Ok(Some(event)) => {
                self.fruitless = 0;
                if let Step::Reopen(restart) = self.state.accept(event) {
                    let endpoint = self.client.endpoint_uri(open.endpoint);
                    match restart {
                        Restart::Resume => {
                            tracing::warn!(endpoint, "listener fell behind, resuming")
                        }
                        Restart::StartOver => tracing::warn!(
                            endpoint,
                            "listener fell behind during the current state, starting over"
                        ),
                    }
                    self.stream = None;
                }
            }
            // Only a node shutting down ends a stream without a resync.
            Ok(None) => self.broken(None),
            Err(status) => {
                let endpoint = self.client.endpoint_uri(open.endpoint);
                let error = Error::from_status(status, &endpoint, self.client.request_timeout());
                if !RetryPolicy::Listen.retries(&error) {
                    return Err(error);
                }
                self.broken(Some(error));
            }
        }
        Ok(())
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
        if self.state.on_break() == Restart::StartOver {
            tracing::warn!("listen stream broke during the current state, starting over");
        }
    }

    /// Opens the next stream, after a pause if the last ones ended without a word. Before
    /// the start this is retried like a request (so `listen` fails rather than waiting
    /// for good on an unreachable cluster), after it without a limit.
    async fn reopen(&mut self) -> Result<()> {
        if let Some(pause) = self
            .fruitless
            .checked_sub(1)
            .and_then(|retry| self.reconnect.delay(retry))
        {
            tokio::time::sleep(pause).await;
        }
        let backoff = if self.state.started() {
            self.reconnect
        } else {
            *self.client.backoff()
        };
        let request = self.state.next_request();
        let (streaming, endpoint) = self
            .client
            .send_with(
                Target::AnyNode,
                request,
                // No deadline on the call: a listener's stream lasts as long as it is read.
                Deadline::FirstAnswer,
                RetryPolicy::Listen,
                &backoff,
                |channel, request| async move { cache_client(channel).listen(request).await },
            )
            .await?;
        self.stream = Some(Open {
            streaming,
            endpoint,
        });
        Ok(())
    }

    fn finish(&mut self, error: Error) -> Error {
        tracing::debug!(error = %error, "listener ended");
        self.finished = true;
        self.stream = None;
        error
    }
}
