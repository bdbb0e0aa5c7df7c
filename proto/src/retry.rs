//! The one retry policy: capped exponential backoff with full jitter.
//!
//! Used by the client library (retrying UNAVAILABLE / ABORTED with the same request id)
//! and by the server for its internal retries, so both back off the same way.

use std::time::Duration;

/// Capped exponential backoff with full jitter: attempt `n` waits a random time in
/// `[0, min(max_delay, initial_delay * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first wait.
    pub initial_delay: Duration,
    /// No wait is longer than this.
    pub max_delay: Duration,
    /// Attempts in all, the first one included; 1 means "never retry".
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(500),
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 = the first retry), or `None` once the
    /// attempts are used up.
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        if retry.saturating_add(1) >= self.max_attempts {
            return None;
        }
        let ceiling = self
            .initial_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(fastrand::u64(0..=nanos)))
    }

    /// The backoff of the attempts left after a first one failed and its wait
    /// ([`Backoff::delay`]`(0)`) was waited: its delays are this one's from the second
    /// retry on. `None` if there are none left.
    pub fn after_first(&self) -> Option<Backoff> {
        (self.max_attempts > 1).then(|| Backoff {
            initial_delay: self.initial_delay.saturating_mul(2),
            max_delay: self.max_delay,
            max_attempts: self.max_attempts - 1,
        })
    }

    /// Runs `attempt` until it succeeds, fails with an error `retryable` rejects, or the
    /// attempts are used up; waits [`Backoff::delay`] between attempts.
    pub async fn retry<T, E, F, Fut, R, S, SFut>(
        &self,
        mut attempt: F,
        retryable: R,
        sleep: S,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        R: Fn(&E) -> bool,
        S: Fn(Duration) -> SFut,
        SFut: std::future::Future<Output = ()>,
    {
        let mut retry = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) if retryable(&error) => match self.delay(retry) {
                    Some(wait) => {
                        sleep(wait).await;
                        retry += 1;
                    }
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_first_attempt_the_rest_wait_as_they_would_have() {
        let backoff = Backoff {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(30),
            max_attempts: 4,
        };
        let rest = backoff.after_first().unwrap();
        assert_eq!(rest.max_attempts, 3, "attempts left");
        for _ in 0..100 {
            assert!(
                rest.delay(0).unwrap() <= Duration::from_millis(20),
                "the second wait"
            );
            assert!(
                rest.delay(1).unwrap() <= Duration::from_millis(30),
                "capped"
            );
            assert!(rest.delay(2).is_none(), "the last attempt");
        }
        let once = Backoff {
            max_attempts: 1,
            ..backoff
        };
        assert!(
            once.after_first().is_none(),
            "nothing left after one attempt"
        );
    }

    #[test]
    fn delays_grow_up_to_the_cap_and_stop_after_the_last_attempt() {
        let backoff = Backoff {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_attempts: 5,
        };
        for _ in 0..100 {
            assert!(backoff.delay(0).unwrap() <= Duration::from_millis(10));
            assert!(backoff.delay(1).unwrap() <= Duration::from_millis(20));
            assert!(backoff.delay(3).unwrap() <= Duration::from_millis(40));
        }
        assert_eq!(backoff.delay(4), None);
        assert_eq!(backoff.delay(u32::MAX), None);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let backoff = Backoff {
            max_attempts: u32::MAX,
            ..Backoff::default()
        };
        assert!(backoff.delay(1000).unwrap() <= backoff.max_delay);
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        // The futures under test never pend, so one poll with a no-op waker completes them.
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("future pended"),
        }
    }

    #[test]
    fn retry_stops_at_the_first_non_retryable_error() {
        let backoff = Backoff::default();
        let mut calls = 0;
        let result: Result<(), &str> = block_on(backoff.retry(
            || {
                calls += 1;
                let error = if calls < 3 { "busy" } else { "bad input" };
                std::future::ready(Err(error))
            },
            |e| *e == "busy",
            |_| std::future::ready(()),
        ));
        assert_eq!(result, Err("bad input"));
        assert_eq!(calls, 3);
    }

    #[test]
    fn retry_gives_up_after_max_attempts() {
        let backoff = Backoff {
            max_attempts: 4,
            ..Backoff::default()
        };
        let mut calls = 0;
        let result: Result<(), &str> = block_on(backoff.retry(
            || {
                calls += 1;
                std::future::ready(Err("busy"))
            },
            |_| true,
            |_| std::future::ready(()),
        ));
        assert_eq!(result, Err("busy"));
        assert_eq!(calls, 4);
    }
}
