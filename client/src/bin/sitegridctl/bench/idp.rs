//! `sitegridctl bench --workload idp`: an identity provider's logins, from several sites.
//!
//! Each of `--concurrency` virtual users logs in, refreshes its session, uses an action
//! token, records a login failure, publishes an invalidation and logs out, over and over.
//! Every step goes to a site chosen at random (a load balancer sends back-channel requests
//! of one login flow to either datacenter). Requests use the client library as an
//! identity node would, retries included. What must never happen is counted as an
//! anomaly: a fresh session that was "already there", an action token accepted twice (or
//! by nobody) when two sites race to use it, a refresh that a read in another site does
//! not see.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sitegrid_client::{
    Client, PutIfAbsentOutcome, RemoteCache, ReplaceWithVersionOutcome, WriteOptions,
};
use tokio::time::Instant;

use super::report::Tally;
use crate::args::{BenchArgs, GlobalArgs};
use crate::error::CliError;
use crate::output::Show;

/// The steps of one login, in order.
const STEPS: [&str; 6] = [
    "login",
    "refresh",
    "action-token",
    "login-failure",
    "invalidate",
    "logout",
];

/// How many times a refresh re-reads and tries again after a version mismatch.
const REFRESH_TRIES: usize = 10;

/// The caches of one site.
#[derive(Clone)]
struct Site {
    sessions: RemoteCache,
    tokens: RemoteCache,
    failures: RemoteCache,
    work: RemoteCache,
}

/// Runs the workload for `--duration` (default 10 s) after `--warmup`, and prints the
/// report; fails if any anomaly was seen.
pub(crate) async fn run(
    global: &GlobalArgs,
    args: &BenchArgs,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let endpoints: Vec<Vec<String>> = if args.sites.is_empty() {
        vec![global.endpoint.clone()]
    } else {
        args.sites
            .iter()
            .map(|site| site.split(',').map(str::to_string).collect())
            .collect()
    };
    let mut sites = Vec::new();
    for site in endpoints {
        let client = crate::secured(global, Client::builder(site))
            .request_timeout(global.timeout)
            .connect_timeout(global.timeout)
            .connect()
            .await?;
        sites.push(Site {
            sessions: client.cache("sessions"),
            tokens: client.cache("actionTokens"),
            failures: client.cache("loginFailures"),
            work: client.cache("work"),
        });
    }
    let sites = Arc::new(sites);
    let run_id = fastrand::u64(..);
    let logins = Arc::new(AtomicU64::new(0));
    if !args.warmup.is_zero() {
        phase(&sites, args, run_id, &logins, args.warmup).await;
    }
    let measured = args.duration.unwrap_or(super::DEFAULT_DURATION);
    let started = Instant::now();
    let users = phase(&sites, args, run_id, &logins, measured).await;
    let seconds = started.elapsed().as_secs_f64();
    let report = IdpReport::new(&users, seconds, args.concurrency, sites.len());
    crate::output::emit(out, global.output, &report)?;
    if report.anomalies > 0 {
        return Err(CliError::BenchAnomalies {
            anomalies: report.anomalies,
        });
    }
    if report.logins == 0 {
        return Err(CliError::BenchFailed {
            errors: report.steps.iter().map(|s| s.errors).sum(),
        });
    }
    Ok(())
}

/// What one virtual user (or all of them, merged) saw.
struct Users {
    steps: Vec<Tally>,
    logins: u64,
    anomalies: Vec<String>,
}

impl Users {
    fn new() -> Self {
        Users {
            steps: STEPS.iter().map(|_| Tally::new()).collect(),
            logins: 0,
            anomalies: Vec::new(),
        }
    }
}

/// Runs every virtual user for `length`, and merges what they saw.
async fn phase(
    sites: &Arc<Vec<Site>>,
    args: &BenchArgs,
    run_id: u64,
    logins: &Arc<AtomicU64>,
    length: Duration,
) -> Users {
    let until = Instant::now() + length;
    let users: Vec<_> = (0..args.concurrency)
        .map(|user| {
            let (sites, logins) = (Arc::clone(sites), Arc::clone(logins));
            let value = "s".repeat(args.value_size);
            tokio::spawn(async move {
                let mut seen = Users::new();
                while Instant::now() < until {
                    let n = logins.fetch_add(1, Ordering::Relaxed);
                    let login = Login {
                        sites: &sites,
                        id: format!("{run_id:x}-{user}-{n}"),
                        user: format!("u{user}-{n}"),
                        value: &value,
                    };
                    if login.run(&mut seen).await {
                        seen.logins += 1;
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Users::new();
    for user in users {
        let Ok(seen) = user.await else { continue };
        for (total, step) in all.steps.iter_mut().zip(&seen.steps) {
            total.merge(step);
        }
        all.logins += seen.logins;
        all.anomalies.extend(seen.anomalies);
    }
    all
}

/// One login flow of one virtual user.
struct Login<'a> {
    sites: &'a [Site],
    /// Unique to this login: its session and token keys.
    id: String,
    /// The user tag of its session, for the logout.
    user: String,
    value: &'a str,
}

impl Login<'_> {
    fn site(&self) -> &Site {
        &self.sites[fastrand::usize(..self.sites.len())]
    }

    /// Runs every step; whether all of them succeeded.
    async fn run(&self, seen: &mut Users) -> bool {
        let session = format!("session-{}", self.id);
        let mut ok = true;
        // Log in: a new session.
        let options = WriteOptions::new()
            .max_idle(Duration::from_secs(1_800))
            .tag(format!("user={}", self.user))
            .tag("realm=bench");
        let sent = Instant::now();
        let version = match self
            .site()
            .sessions
            .put_if_absent(session.clone(), self.value.to_string(), options)
            .await
        {
            Ok(PutIfAbsentOutcome::Stored { version }) => {
                seen.steps[0].answered(sent.elapsed(), false);
                version
            }
            Ok(PutIfAbsentOutcome::Present(_)) => {
                seen.steps[0].answered(sent.elapsed(), false);
                seen.anomalies
                    .push(format!("{session}: a new session was already there"));
                return false;
            }
            Err(_) => {
                seen.steps[0].failed();
                return false;
            }
        };
        // Refresh it: a versioned replace, again after a mismatch.
        let sent = Instant::now();
        match self.refresh(&session, version).await {
            Ok(refreshed) => {
                seen.steps[1].answered(sent.elapsed(), false);
                // Acknowledged means visible in every site.
                let other = self.site();
                if let Ok(read) = other.sessions.get(session.clone()).await {
                    let read = read.map(|entry| entry.metadata.version);
                    if read.is_none_or(|read| read < refreshed) {
                        seen.anomalies.push(format!(
                            "{session}: refresh to version {refreshed} lost (read {read:?})"
                        ));
                    }
                }
            }
            Err(()) => {
                seen.steps[1].failed();
                ok = false;
            }
        }
        // Use an action token once: two sites race to.
        let token = format!("token-{}", self.id);
        let (first, second) = (self.site(), self.site());
        let sent = Instant::now();
        let (a, b) = tokio::join!(
            first
                .tokens
                .put_if_absent(token.clone(), "used", WriteOptions::new()),
            second
                .tokens
                .put_if_absent(token.clone(), "used", WriteOptions::new()),
        );
        match (a, b) {
            (Ok(a), Ok(b)) => {
                seen.steps[2].answered(sent.elapsed(), false);
                let stored = [a, b]
                    .iter()
                    .filter(|o| matches!(o, PutIfAbsentOutcome::Stored { .. }))
                    .count();
                if stored != 1 {
                    seen.anomalies
                        .push(format!("{token}: accepted {stored} times, not once"));
                }
            }
            _ => {
                seen.steps[2].failed();
                ok = false;
            }
        }
        // Record a login failure (an async cache).
        let sent = Instant::now();
        let failure = self
            .site()
            .failures
            .put(
                format!("failures-{}", self.user),
                "1",
                WriteOptions::new().lifespan(Duration::from_secs(900)),
            )
            .await;
        ok &= record(&mut seen.steps[3], sent, failure.is_ok());
        // Publish an invalidation for every identity node.
        let sent = Instant::now();
        let invalidation = self
            .site()
            .work
            .put(
                format!("invalidate-{}", self.id),
                "realm=bench",
                WriteOptions::new().lifespan(Duration::from_secs(120)),
            )
            .await;
        ok &= record(&mut seen.steps[4], sent, invalidation.is_ok());
        // Log out: every session of the user.
        let sent = Instant::now();
        let logout = self
            .site()
            .sessions
            .remove_by_tag(format!("user={}", self.user))
            .await;
        ok &= record(&mut seen.steps[5], sent, logout.is_ok());
        ok
    }

    /// Replaces the session at `version`, re-reading after a mismatch; the version of
    /// the refresh.
    async fn refresh(&self, session: &str, mut version: u64) -> Result<u64, ()> {
        for _ in 0..REFRESH_TRIES {
            let site = self.site();
            let outcome = site
                .sessions
                .replace_with_version(
                    session.to_string(),
                    self.value.to_string(),
                    version,
                    WriteOptions::new()
                        .max_idle(Duration::from_secs(1_800))
                        .tag(format!("user={}", self.user))
                        .tag("realm=bench"),
                )
                .await
                .map_err(|_| ())?;
            match outcome {
                ReplaceWithVersionOutcome::Replaced { version } => return Ok(version),
                ReplaceWithVersionOutcome::NotReplaced {
                    current: Some(current),
                } => version = current.metadata.version,
                ReplaceWithVersionOutcome::NotReplaced { current: None } => return Err(()),
            }
        }
        Err(())
    }
}

/// Counts one step's request in `tally`; returns `ok`.
fn record(tally: &mut Tally, sent: Instant, ok: bool) -> bool {
    if ok {
        tally.answered(sent.elapsed(), false);
    } else {
        tally.failed();
    }
    ok
}

/// One step's figures.
struct StepReport {
    name: &'static str,
    answered: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
}

/// What an idp bench measured.
struct IdpReport {
    users: u32,
    sites: usize,
    seconds: f64,
    logins: u64,
    logins_per_sec: f64,
    steps: Vec<StepReport>,
    anomalies: u64,
    examples: Vec<String>,
}

impl IdpReport {
    fn new(seen: &Users, seconds: f64, users: u32, sites: usize) -> Self {
        let steps = STEPS
            .iter()
            .zip(&seen.steps)
            .map(|(name, tally)| {
                let (answered, errors) = tally.counts();
                StepReport {
                    name,
                    answered,
                    errors,
                    p50_us: tally.quantile_us(0.5),
                    p99_us: tally.quantile_us(0.99),
                }
            })
            .collect();
        IdpReport {
            users,
            sites,
            seconds,
            logins: seen.logins,
            logins_per_sec: if seconds > 0.0 {
                seen.logins as f64 / seconds
            } else {
                0.0
            },
            steps,
            anomalies: seen.anomalies.len() as u64,
            examples: seen.anomalies.iter().take(10).cloned().collect(),
        }
    }
}

impl Show for IdpReport {
    fn table(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "workload      idp");
        let _ = writeln!(text, "sites         {}", self.sites);
        let _ = writeln!(text, "users         {}", self.users);
        let _ = writeln!(text, "seconds       {:.3}", self.seconds);
        let _ = writeln!(text, "logins        {}", self.logins);
        let _ = writeln!(text, "logins/s      {:.1}", self.logins_per_sec);
        let _ = writeln!(text, "anomalies     {}", self.anomalies);
        for example in &self.examples {
            let _ = writeln!(text, "  {example}");
        }
        let _ = writeln!(text, "step            answered   errors   p50 µs   p99 µs");
        for step in &self.steps {
            let _ = writeln!(
                text,
                "{:<14} {:>9} {:>8} {:>8} {:>8}",
                step.name, step.answered, step.errors, step.p50_us, step.p99_us
            );
        }
        text
    }

    fn json(&self) -> Value {
        json!({
            "workload": "idp",
            "sites": self.sites,
            "users": self.users,
            "seconds": self.seconds,
            "logins": self.logins,
            "logins_per_sec": self.logins_per_sec,
            "anomalies": self.anomalies,
            "anomaly_examples": self.examples,
            "steps": self.steps.iter().map(|s| json!({
                "step": s.name,
                "answered": s.answered,
                "errors": s.errors,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
            })).collect::<Vec<_>>(),
        })
    }
}
