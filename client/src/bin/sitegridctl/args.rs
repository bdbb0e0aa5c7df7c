//! Command-line arguments (clap derive): global options and every subcommand.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::OutputFormat;

const OUTPUT_HELP: &str = "\
Output format.

table: human-readable lines; keys and values print as UTF-8 text when valid, otherwise \
as `base64:` followed by their base64 encoding.

json: one JSON object per line and per result (one per entry for `cache entries`, one \
per event for `cache listen`). Keys \
and values are JSON strings when they are valid UTF-8, otherwise objects \
{\"base64\": \"...\"} holding their standard base64 encoding. Times are Unix \
milliseconds (`created_ms`, `last_used_ms`); `lifespan_ms` and `max_idle_ms` are null \
when the entry does not expire that way.";

/// sitegrid's operator CLI: cache reads and writes, cluster status, and a load generator.
///
/// Exit code: 0 on success (a condition that does not hold, such as `put-if-absent` on a
/// present key, is a success), 1 when a request failed, 2 on bad usage.
#[derive(Debug, Parser)]
#[command(name = "sitegridctl", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Server endpoint, `host:port` or `http://host:port`; give several (repeated or
    /// comma-separated) to fail over between the nodes of a site.
    #[arg(
        long,
        short = 'e',
        env = "SITEGRID_ENDPOINT",
        default_value = "127.0.0.1:11222",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) endpoint: Vec<String>,
    /// Output format: table or json.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = OutputFormat::Table,
        long_help = OUTPUT_HELP,
        global = true
    )]
    pub(crate) output: OutputFormat,
    /// Timeout of each request (and of connecting), e.g. `500ms`, `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub(crate) timeout: Duration,
    /// Bearer token of a principal of the nodes' `[[security.principals]]`.
    #[arg(long, env = "SITEGRID_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Use TLS, trusting the certificate authorities in this PEM file.
    #[arg(long, env = "SITEGRID_TLS_CA", global = true)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// With --tls-ca: a client certificate chain (PEM) to present...
    #[arg(long, env = "SITEGRID_TLS_CERT", global = true, requires_all = ["tls_ca", "tls_key"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// ...and its private key (PEM).
    #[arg(long, env = "SITEGRID_TLS_KEY", global = true, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// With --tls-ca: the name the nodes' certificates must carry (their site's name,
    /// say) instead of the endpoint's host.
    #[arg(
        long,
        env = "SITEGRID_TLS_SERVER_NAME",
        global = true,
        requires = "tls_ca"
    )]
    pub(crate) tls_server_name: Option<String>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Read and write the entries of a cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Cluster and node status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Peer sites: this site's state of each, taking them offline, bringing them online,
    /// resyncs. Every command acts for the whole site (all caches) from any node.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Built-in load generator: closed-loop workers issuing one operation back to back.
    Bench(BenchArgs),
    /// Bearer tokens for `[[security.principals]]`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a random token; print it (give it to the application) and its SHA-256 (put
    /// it in the nodes' `token_sha256`). Nothing is sent anywhere.
    New,
    /// Print the SHA-256 of a token read from stdin, for `token_sha256`.
    Hash,
}

/// Cache subcommands. KEY is text, or `base64:...` for arbitrary bytes; VALUE is text,
/// `base64:...`, or `@path` for the contents of a file.
#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Read one entry.
    Get(KeyArgs),
    /// Write an entry unconditionally.
    Put(WriteArgs),
    /// Write an entry only if the key is absent; otherwise print the existing entry.
    PutIfAbsent(WriteArgs),
    /// Write an entry only if the key is present.
    Replace(WriteArgs),
    /// Write an entry only if the key has the given version.
    ReplaceWithVersion(VersionedWriteArgs),
    /// Remove an entry.
    Remove(RemoveArgs),
    /// Remove an entry only if it has the given version.
    RemoveWithVersion(VersionedRemoveArgs),
    /// Print the number of live entries.
    Size(CacheArg),
    /// Remove every entry of the cache on this site (with --all-sites, in its peer sites
    /// too).
    Clear(ClearArgs),
    /// List the entries of the cache (or those carrying a tag).
    Entries(EntriesArgs),
    /// Remove every entry carrying a tag.
    RemoveByTag(RemoveByTagArgs),
    /// Print the changes of caches as they happen, until Ctrl-C or `--count` events.
    ///
    /// Survives node failures and restarts: it reconnects (to the next endpoint if need
    /// be) and resumes where it was, printing each change once. When it cannot rule out
    /// having missed changes, it prints `invalidate_all` for the cache first.
    Listen(ListenArgs),
}

/// Which cache.
#[derive(Debug, Args)]
pub(crate) struct CacheArg {
    /// Cache name, e.g. `sessions`.
    #[arg(long, short = 'c')]
    pub(crate) cache: String,
}

/// A cache to clear, and where.
#[derive(Debug, Args)]
pub(crate) struct ClearArgs {
    /// Cache name, e.g. `sessions`.
    #[arg(long, short = 'c')]
    pub(crate) cache: String,
    /// Clear it in every peer site it is backed up to as well.
    #[arg(long)]
    pub(crate) all_sites: bool,
}

/// A cache and a key.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    #[command(flatten)]
    pub(crate) cache: CacheArg,
    /// The key: text, or `base64:...`.
    pub(crate) key: String,
}

/// A write: cache, key, value and how to store it.
#[derive(Debug, Args)]
pub(crate) struct WriteArgs {
    #[command(flatten)]
    pub(crate) target: KeyArgs,
    /// The value: text, `base64:...`, or `@path` for a file's contents.
    pub(crate) value: String,
    /// Lifespan of the entry, e.g. `30s`, `2h`; default: never (or the cache's default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) lifespan: Option<Duration>,
    /// Max idle time of the entry, e.g. `10m`; default: never (or the cache's default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) max_idle: Option<Duration>,
    /// A tag `name=value` for the entry; repeat for several.
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Idempotency id; default: a random one.
    #[arg(long)]
    pub(crate) request_id: Option<String>,
    /// Print the entry this write replaced (put, replace).
    #[arg(long)]
    pub(crate) return_previous: bool,
}

/// A write conditioned on the key's version.
#[derive(Debug, Args)]
pub(crate) struct VersionedWriteArgs {
    #[command(flatten)]
    pub(crate) write: WriteArgs,
    /// The version the key must have.
    #[arg(long = "version")]
    pub(crate) expected_version: u64,
}

/// A removal.
#[derive(Debug, Args)]
pub(crate) struct RemoveArgs {
    #[command(flatten)]
    pub(crate) target: KeyArgs,
    /// Idempotency id; default: a random one.
    #[arg(long)]
    pub(crate) request_id: Option<String>,
}

/// A removal conditioned on the key's version.
#[derive(Debug, Args)]
pub(crate) struct VersionedRemoveArgs {
    #[command(flatten)]
    pub(crate) remove: RemoveArgs,
    /// The version the key must have.
    #[arg(long = "version")]
    pub(crate) expected_version: u64,
}

/// Iteration options.
#[derive(Debug, Args)]
pub(crate) struct EntriesArgs {
    #[command(flatten)]
    pub(crate) cache: CacheArg,
    /// Only entries carrying this tag (`name=value`).
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Entries per batch the server sends; default: the server's (1000).
    #[arg(long)]
    pub(crate) batch_size: Option<u32>,
    /// Print keys and metadata without values.
    #[arg(long)]
    pub(crate) keys_only: bool,
}

/// What `cache listen` follows.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// Cache to follow; repeat (or separate with commas) for several.
    #[arg(long = "cache", short = 'c', required = true, value_delimiter = ',')]
    pub(crate) caches: Vec<String>,
    /// First print what changed after this version (the current state of every key
    /// changed since, removals included).
    #[arg(long)]
    pub(crate) from_version: Option<u64>,
    /// First print every current entry, as `created`.
    #[arg(long)]
    pub(crate) current_state: bool,
    /// Only keys starting with this (text, or `base64:...`).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Only entries carrying this tag (`name=value`).
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Print keys and versions without values and metadata.
    #[arg(long)]
    pub(crate) keys_only: bool,
    /// Exit after printing this many events.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// How far back before the last version seen a reconnection resumes; must cover the
    /// time a write from another site may be in flight, and clock differences.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) resume_margin: Duration,
}

/// Removal by tag.
#[derive(Debug, Args)]
pub(crate) struct RemoveByTagArgs {
    #[command(flatten)]
    pub(crate) cache: CacheArg,
    /// The tag, `name=value`.
    pub(crate) tag: String,
}

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The answering node: its site, readiness, version, the site's members and its
    /// caches.
    Status,
}

/// Site subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Per peer site: state, epoch, since when, failures, keys in doubt, keys written
    /// while it was offline, the outbox, and the last resync.
    Status,
    /// Take a peer site offline: writes stop waiting for it and are recorded for it.
    TakeOffline(SiteArg),
    /// Resync with a peer site, then bring it online.
    BringOnline(SiteArg),
    /// Resync with a peer site now (a consistency check if it is online).
    Resync(SiteArg),
    /// Progress of the resync with a peer site; in a terminal, a progress bar that
    /// follows it until it ends.
    ResyncStatus(SiteArg),
    /// Stop a running resync; a peer being brought online stays offline.
    CancelResync(SiteArg),
    /// Compare this site with a peer site by digests; nothing is moved.
    Diff(SiteArg),
}

/// A peer site.
#[derive(Debug, Args)]
pub(crate) struct SiteArg {
    /// The peer site's name.
    pub(crate) site: String,
}

/// Load generator settings.
///
/// Workers are tokio tasks, each sending its next request as soon as the previous one
/// answered. Requests are not retried: failures count as errors. For `--op get`, fill
/// the cache first (e.g. a put bench with `--key-order sequential`); misses are counted
/// separately.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What the workers do: one operation (`--op`) back to back, or the steps of an
    /// identity provider's logins (`idp`).
    #[arg(long, value_enum, default_value_t = Workload::Op)]
    pub(crate) workload: Workload,
    /// For `--workload idp`: the endpoints of one site, comma-separated; repeat for each
    /// site. Every step goes to a site chosen at random, as a load balancer sends
    /// back-channel requests. Default: the `--endpoint`s, as one site.
    #[arg(long = "site")]
    pub(crate) sites: Vec<String>,
    /// Operation to issue.
    #[arg(long, value_enum, default_value_t = BenchOp::Ping)]
    pub(crate) op: BenchOp,
    /// Cache to use.
    #[arg(long, short = 'c', default_value = "work")]
    pub(crate) cache: String,
    /// Number of workers (requests in flight).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) concurrency: u32,
    /// How long to measure; default 10s unless --requests is given.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub(crate) duration: Option<Duration>,
    /// Measure this many requests in all, instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) requests: Option<u64>,
    /// Load before measuring, not counted; `0s` to skip.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: Duration,
    /// Size of the values written, in bytes.
    #[arg(long, default_value_t = 256)]
    pub(crate) value_size: usize,
    /// Key space: keys are `bench-0` .. `bench-{N-1}`. Default: 100000 for random order;
    /// unbounded for sequential order (each request a new key), which wraps around
    /// when N is given.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) keys: Option<u64>,
    /// Key choice: random in the key space, or sequential from a shared counter (restarted
    /// after the warmup), so `--op put --requests 1000000 --key-order sequential` writes
    /// exactly 1,000,000 distinct keys.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub(crate) key_order: KeyOrder,
    /// Send `put` and `get` on the client's pipelined path (a few `PipelineBatch` streams
    /// per endpoint) with DEPTH requests in flight per worker: each worker sends DEPTH
    /// requests as one batch (the client library's `Batch`), waits for all their answers
    /// and sends the next DEPTH, as `redis-benchmark -P DEPTH` does. Without it, each
    /// request is one unary call.
    #[arg(long, value_name = "DEPTH", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) pipeline: Option<u32>,
    /// Number of gRPC connections the workers are spread over (per endpoint).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) connections: u32,
}

/// What a bench's workers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// One operation (`--op`) back to back.
    Op,
    /// Virtual users of an identity provider: log in (a session, `PutIfAbsent`), refresh
    /// it (`ReplaceWithVersion`, retried on a version mismatch), use an action token once
    /// (two sites race to), record a login failure, publish an invalidation on `work`, log
    /// out (`RemoveByTag`); anomalies (a token used twice, a refresh lost) are counted.
    Idp,
}

/// Operation a bench issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchOp {
    /// Empty round trip.
    Ping,
    /// Unconditional write of `--value-size` bytes.
    Put,
    /// Read.
    Get,
}

/// How a bench picks keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KeyOrder {
    /// Uniformly at random in the key space.
    Random,
    /// The next number from a counter shared by all workers.
    Sequential,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sitegridctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoints_may_be_repeated_or_comma_separated() {
        let cli = parse(&["-e", "a:1,b:2", "--endpoint", "c:3", "cluster", "status"]).unwrap();
        assert_eq!(cli.global.endpoint, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn put_takes_durations_tags_and_request_id() {
        let cli = parse(&[
            "cache",
            "put",
            "--cache",
            "sessions",
            "k",
            "v",
            "--lifespan",
            "30s",
            "--max-idle",
            "10m",
            "--tag",
            "user=u1",
            "--tag",
            "realm=r1",
            "--request-id",
            "r-1",
        ])
        .unwrap();
        let Command::Cache(CacheCommand::Put(write)) = cli.command else {
            panic!("expected cache put");
        };
        assert_eq!(write.target.cache.cache, "sessions");
        assert_eq!(write.lifespan, Some(Duration::from_secs(30)));
        assert_eq!(write.max_idle, Some(Duration::from_secs(600)));
        assert_eq!(write.tags, ["user=u1", "realm=r1"]);
        assert_eq!(write.request_id.as_deref(), Some("r-1"));
    }

    #[test]
    fn version_of_a_conditional_write_is_its_expected_version() {
        let cli = parse(&[
            "cache",
            "replace-with-version",
            "--cache",
            "work",
            "k",
            "v",
            "--version",
            "42",
        ])
        .unwrap();
        let Command::Cache(CacheCommand::ReplaceWithVersion(args)) = cli.command else {
            panic!("expected replace-with-version");
        };
        assert_eq!(args.expected_version, 42);
    }

    #[test]
    fn listen_takes_several_caches_and_its_filters() {
        let cli = parse(&[
            "cache",
            "listen",
            "--cache",
            "work",
            "-c",
            "sessions,tokens",
            "--from-version",
            "42",
            "--keys-only",
            "--current-state",
            "--prefix",
            "user:",
            "--tag",
            "realm=r1",
            "--count",
            "3",
        ])
        .unwrap();
        let Command::Cache(CacheCommand::Listen(args)) = cli.command else {
            panic!("expected cache listen");
        };
        assert_eq!(args.caches, ["work", "sessions", "tokens"]);
        assert_eq!(args.from_version, Some(42));
        assert!(args.keys_only && args.current_state);
        assert_eq!(args.prefix.as_deref(), Some("user:"));
        assert_eq!(args.tag.as_deref(), Some("realm=r1"));
        assert_eq!(args.count, Some(3));
        assert_eq!(args.resume_margin, Duration::from_secs(10));
    }

    #[test]
    fn listen_needs_a_cache_and_a_positive_count() {
        let error = parse(&["cache", "listen"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let error = parse(&["cache", "listen", "-c", "work", "--count", "0"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn bench_rejects_duration_together_with_requests() {
        let error = parse(&["bench", "--duration", "5s", "--requests", "10"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        // clap exits with 2 on usage errors, as the CLI promises.
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn bench_defaults_match_the_documentation() {
        let cli = parse(&["bench"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench");
        };
        assert_eq!(args.op, BenchOp::Ping);
        assert_eq!(args.cache, "work");
        assert_eq!(args.concurrency, 64);
        assert_eq!(args.warmup, Duration::from_secs(2));
        assert_eq!(args.value_size, 256);
        assert_eq!(args.connections, 1);
        assert_eq!(args.key_order, KeyOrder::Random);
    }
}
