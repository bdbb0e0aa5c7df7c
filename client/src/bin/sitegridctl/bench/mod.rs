//! `sitegridctl bench`: a closed-loop load generator built on the client library.
//!
//! `--concurrency` workers (tokio tasks) each send one request, wait for its answer and
//! send the next. A warmup phase runs first and is thrown away; the measured phase runs
//! for `--duration` or until `--requests` were sent. Requests go through the library
//! with retries turned off, so a failure counts as an error instead of hiding in a
//! retry's latency: as unary calls, or with `--pipeline DEPTH` on the library's
//! pipelined path, each worker then sending DEPTH requests at a time, as one `Batch`,
//! and waiting for all their answers (as `redis-benchmark -P` does).

mod idp;
mod keys;
mod report;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sitegrid_client::{Backoff, Client, Outcome, RemoteCache, WriteOptions};
use tokio::time::Instant;

use crate::args::{BenchArgs, BenchOp, GlobalArgs, Workload as Kind};
use crate::error::CliError;
use crate::output::emit;
use keys::KeyPicker;
use report::{BenchReport, Tally};

/// Measured phase length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Runs the bench described by `args` and prints its report.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &BenchArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if args.workload == Kind::Idp {
        return idp::run(global, args, out).await;
    }
    if args.pipeline.is_some() && args.op == BenchOp::Ping {
        return Err(CliError::Usage(
            "--pipeline applies to --op put and get; ping is a unary call".into(),
        ));
    }
    let workload = Arc::new(Workload::connect(global, args).await?);
    if !args.warmup.is_zero() {
        tracing::info!(warmup = ?args.warmup, "warming up");
        run_phase(&workload, Stop::after(args.warmup), args.concurrency).await;
        workload.keys.restart();
    }
    let stop = match args.requests {
        Some(total) => Stop::Requests {
            total,
            issued: AtomicU64::new(0),
        },
        None => Stop::after(args.duration.unwrap_or(DEFAULT_DURATION)),
    };
    let started = Instant::now();
    let tally = run_phase(&workload, stop, args.concurrency).await;
    let report = BenchReport::new(args, &tally, started.elapsed());
    emit(out, global.output, &report)?;
    if report.requests == 0 && report.errors > 0 {
        return Err(CliError::BenchFailed {
            errors: report.errors,
        });
    }
    Ok(())
}

/// What every worker needs, shared.
struct Workload {
    op: BenchOp,
    /// Requests each worker sends at a time.
    depth: usize,
    /// One handle per `--connections`, each on its own client and so its own channels.
    caches: Vec<RemoteCache>,
    /// The value every `put` writes.
    value: Bytes,
    keys: KeyPicker,
    /// Set once the first failure has been logged, so a dead server logs one line, not
    /// one per request.
    error_logged: AtomicBool,
}

impl Workload {
    async fn connect(global: &GlobalArgs, args: &BenchArgs) -> Result<Workload, CliError> {
        let no_retries = Backoff {
            max_attempts: 1,
            ..Backoff::default()
        };
        let mut caches = Vec::new();
        for _ in 0..args.connections {
            let client = crate::secured(global, Client::builder(global.endpoint.iter().cloned()))
                .request_timeout(global.timeout)
                .connect_timeout(global.timeout)
                .backoff(no_retries)
                .pipeline(args.pipeline.is_some())
                .connect()
                .await?;
            caches.push(client.cache(args.cache.as_str()));
        }
        let value: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(args.value_size)
            .collect();
        Ok(Workload {
            op: args.op,
            depth: args.pipeline.unwrap_or(1) as usize,
            caches,
            value: Bytes::from(value),
            keys: KeyPicker::new(args.key_order, args.keys),
            error_logged: AtomicBool::new(false),
        })
    }

    /// Sends one request; `Ok(true)` for a `get` that found nothing.
    async fn request(&self, cache: &RemoteCache) -> sitegrid_client::Result<bool> {
        match self.op {
            BenchOp::Ping => cache.ping().await.map(|()| false),
            BenchOp::Put => {
                let key = self.keys.next_key();
                let value = self.value.clone();
                cache
                    .put(key, value, WriteOptions::new())
                    .await
                    .map(|_| false)
            }
            BenchOp::Get => cache
                .get(self.keys.next_key())
                .await
                .map(|found| found.is_none()),
        }
    }

    /// Sends up to `depth` requests in one [`sitegrid_client::Batch`] (none once `stop`
    /// says so), and tallies each answer with the batch's latency; false if it sent none.
    async fn batch(&self, cache: &RemoteCache, stop: &Stop, tally: &mut Tally) -> bool {
        let mut batch = cache.batch();
        for _ in (0..self.depth).take_while(|_| stop.may_send()) {
            match self.op {
                BenchOp::Put => batch.put(
                    self.keys.next_key(),
                    self.value.clone(),
                    WriteOptions::new(),
                ),
                BenchOp::Get | BenchOp::Ping => batch.get(self.keys.next_key()),
            };
        }
        if batch.is_empty() {
            return false;
        }
        let sent = Instant::now();
        let answers = batch.send().await;
        let latency = sent.elapsed();
        for answer in answers {
            let answer = answer.map(|outcome| matches!(outcome, Outcome::Get(None)));
            self.tally(tally, answer, latency);
        }
        true
    }

    /// Counts one answer: `Ok(true)` for a `get` that found nothing.
    fn tally(&self, tally: &mut Tally, answer: sitegrid_client::Result<bool>, latency: Duration) {
        match answer {
            Ok(miss) => tally.answered(latency, miss),
            Err(error) => {
                tally.failed();
                if !self.error_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %error, "bench request failed, counting errors");
                }
            }
        }
    }
}

/// When a phase ends.
enum Stop {
    /// Workers send no request after this instant.
    At(Instant),
    /// Workers stop once `total` requests were sent, among all of them.
    Requests { total: u64, issued: AtomicU64 },
}

impl Stop {
    fn after(duration: Duration) -> Self {
        Stop::At(Instant::now() + duration)
    }

    /// Whether a worker may send one more request; counts it when it may.
    fn may_send(&self) -> bool {
        match self {
            Stop::At(deadline) => Instant::now() < *deadline,
            Stop::Requests { total, issued } => issued.fetch_add(1, Ordering::Relaxed) < *total,
        }
    }
}

/// Runs `concurrency` workers until `stop`, and merges their tallies.
async fn run_phase(workload: &Arc<Workload>, stop: Stop, concurrency: u32) -> Tally {
    let stop = Arc::new(stop);
    let workers: Vec<_> = (0..concurrency as usize)
        .map(|index| {
            let workload = Arc::clone(workload);
            let stop = Arc::clone(&stop);
            let cache = workload.caches[index % workload.caches.len()].clone();
            tokio::spawn(async move { work(&workload, &cache, &stop).await })
        })
        .collect();
    let mut total = Tally::new();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(&tally),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => tracing::warn!(error = %error, "bench worker cancelled"),
        }
    }
    total
}

/// One worker: requests back to back until `stop`, `depth` at a time (in one batch).
async fn work(workload: &Workload, cache: &RemoteCache, stop: &Stop) -> Tally {
    let mut tally = Tally::new();
    if workload.depth > 1 {
        while workload.batch(cache, stop, &mut tally).await {}
        return tally;
    }
    while stop.may_send() {
        let sent = Instant::now();
        let answer = workload.request(cache).await;
        workload.tally(&mut tally, answer, sent.elapsed());
    }
    tally
}
