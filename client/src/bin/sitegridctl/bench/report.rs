//! What a bench measured, and how it prints.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::args::{BenchArgs, BenchOp};
use crate::output::Show;

/// Highest latency the histograms tell apart; slower requests count as this.
const MAX_TRACKED_MICROS: u64 = 60_000_000;

/// Counts and latencies of one worker, or of all of them merged.
pub(crate) struct Tally {
    /// Latency of every answered request (misses included), in microseconds.
    latency_us: Histogram<u64>,
    /// Requests answered, misses included.
    answered: u64,
    /// `get` requests that found no entry.
    misses: u64,
    /// Requests that failed.
    errors: u64,
}

impl Tally {
    /// An empty tally.
    pub(crate) fn new() -> Self {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
                .expect("constant histogram bounds are valid"),
            answered: 0,
            misses: 0,
            errors: 0,
        }
    }

    /// Counts an answered request that took `latency`; `miss` for a `get` that found nothing.
    pub(crate) fn answered(&mut self, latency: Duration, miss: bool) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        self.answered += 1;
        self.misses += u64::from(miss);
    }

    /// Requests answered and requests failed.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.answered, self.errors)
    }

    /// The latency at quantile `q` (0 to 1) of the answered requests, in microseconds; 0
    /// if none was answered.
    pub(crate) fn quantile_us(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_quantile(q)
        }
    }

    /// Counts a failed request.
    pub(crate) fn failed(&mut self) {
        self.errors += 1;
    }

    /// Adds `other`'s counts and latencies to this one.
    pub(crate) fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.answered += other.answered;
        self.misses += other.misses;
        self.errors += other.errors;
    }
}

/// The figures a bench prints; the JSON field names are stable, for scripts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchReport {
    pub(crate) op: &'static str,
    pub(crate) cache: String,
    pub(crate) concurrency: u32,
    /// Requests in flight per worker on the pipelined path; 0 for unary calls.
    pub(crate) pipeline: u32,
    /// Requests answered (misses included).
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) misses: u64,
    /// Length of the measured phase.
    pub(crate) seconds: f64,
    /// `requests / seconds`.
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    pub(crate) value_size: usize,
}

impl BenchReport {
    /// The report of a bench run with `args` that measured `tally` over `elapsed`.
    pub(crate) fn new(args: &BenchArgs, tally: &Tally, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        let ops_per_sec = if seconds > 0.0 {
            tally.answered as f64 / seconds
        } else {
            0.0
        };
        let latency = &tally.latency_us;
        let quantile = |q: f64| tally.quantile_us(q);
        BenchReport {
            op: op_name(args.op),
            cache: args.cache.clone(),
            concurrency: args.concurrency,
            pipeline: args.pipeline.unwrap_or(0),
            requests: tally.answered,
            errors: tally.errors,
            misses: tally.misses,
            seconds,
            ops_per_sec,
            p50_us: quantile(0.5),
            p90_us: quantile(0.9),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: if latency.is_empty() { 0 } else { latency.max() },
            value_size: args.value_size,
        }
    }
}

fn op_name(op: BenchOp) -> &'static str {
    match op {
        BenchOp::Ping => "ping",
        BenchOp::Put => "put",
        BenchOp::Get => "get",
    }
}

impl Show for BenchReport {
    fn table(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "op            {}", self.op);
        let _ = writeln!(text, "cache         {}", self.cache);
        let _ = writeln!(text, "concurrency   {}", self.concurrency);
        let path = match self.pipeline {
            0 => "unary".to_owned(),
            depth => format!("pipelined, depth {depth}"),
        };
        let _ = writeln!(text, "path          {path}");
        let _ = writeln!(text, "requests      {}", self.requests);
        let _ = writeln!(text, "errors        {}", self.errors);
        let _ = writeln!(text, "misses        {}", self.misses);
        let _ = writeln!(text, "seconds       {:.3}", self.seconds);
        let _ = writeln!(text, "ops/s         {:.1}", self.ops_per_sec);
        let _ = writeln!(
            text,
            "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        );
        let _ = writeln!(text, "value size    {}", self.value_size);
        text
    }

    fn json(&self) -> Value {
        json!({
            "op": self.op,
            "cache": self.cache,
            "concurrency": self.concurrency,
            "pipeline": self.pipeline,
            "requests": self.requests,
            "errors": self.errors,
            "misses": self.misses,
            "seconds": self.seconds,
            "ops_per_sec": self.ops_per_sec,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "value_size": self.value_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser as _;

    fn bench_args(extra: &[&str]) -> BenchArgs {
        let args = ["sitegridctl", "bench"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(args).unwrap().command {
            Command::Bench(args) => args,
            other => panic!("expected bench, got {other:?}"),
        }
    }

    /// A tally of 1000 answered requests taking 1..=1000 us, two of them misses.
    fn sample_tally() -> Tally {
        let mut tally = Tally::new();
        for micros in 1..=1000 {
            tally.answered(Duration::from_micros(micros), micros <= 2);
        }
        tally
    }

    #[test]
    fn percentiles_ops_and_counts_come_from_the_tally() {
        let mut tally = sample_tally();
        tally.failed();
        let args = bench_args(&["--op", "get", "--concurrency", "8"]);
        let report = BenchReport::new(&args, &tally, Duration::from_secs(2));
        assert_eq!(report.op, "get");
        assert_eq!(report.concurrency, 8);
        assert_eq!(report.requests, 1000);
        assert_eq!(report.misses, 2);
        assert_eq!(report.errors, 1);
        assert_eq!(report.seconds, 2.0);
        assert_eq!(report.ops_per_sec, 500.0);
        assert_eq!(
            (
                report.p50_us,
                report.p90_us,
                report.p99_us,
                report.p999_us,
                report.max_us
            ),
            (500, 900, 990, 999, 1000)
        );
    }

    #[test]
    fn merged_worker_tallies_add_up() {
        let mut total = Tally::new();
        total.merge(&sample_tally());
        total.merge(&sample_tally());
        let report = BenchReport::new(&bench_args(&[]), &total, Duration::from_secs(1));
        assert_eq!(report.requests, 2000);
        assert_eq!(report.misses, 4);
        assert_eq!(report.p50_us, 500);
        assert_eq!(report.max_us, 1000);
    }

    #[test]
    fn an_empty_run_reports_zeros_instead_of_failing() {
        let report = BenchReport::new(&bench_args(&[]), &Tally::new(), Duration::ZERO);
        assert_eq!(report.ops_per_sec, 0.0);
        assert_eq!((report.p50_us, report.max_us), (0, 0));
    }

    #[test]
    fn latencies_beyond_the_histogram_count_as_its_maximum() {
        let mut tally = Tally::new();
        tally.answered(Duration::from_secs(3600), false);
        let report = BenchReport::new(&bench_args(&[]), &tally, Duration::from_secs(1));
        assert!(report.max_us >= MAX_TRACKED_MICROS);
    }

    #[test]
    fn the_json_report_has_the_stable_field_names() {
        let report = BenchReport::new(
            &bench_args(&["--op", "put"]),
            &sample_tally(),
            Duration::from_secs(1),
        );
        let json = report.json();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "cache",
                "concurrency",
                "errors",
                "max_us",
                "misses",
                "op",
                "ops_per_sec",
                "p50_us",
                "p90_us",
                "p999_us",
                "p99_us",
                "pipeline",
                "requests",
                "seconds",
                "value_size",
            ]
        );
        assert_eq!(json["op"], "put");
        assert_eq!(json["value_size"], 256);
    }

    #[test]
    fn the_table_report_shows_latencies_in_microseconds() {
        let report = BenchReport::new(
            &bench_args(&["--op", "ping"]),
            &sample_tally(),
            Duration::from_secs(1),
        );
        let table = report.table();
        assert!(table.starts_with("op            ping\n"), "{table}");
        assert!(
            table.contains("latency (us)  p50 500  p90 900  p99 990  p99.9 999  max 1000\n"),
            "{table}"
        );
    }
}
