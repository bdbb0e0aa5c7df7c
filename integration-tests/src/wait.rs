//! Waiting on conditions with a deadline instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `condition` until it holds or `timeout` passes; the error names `what`.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
