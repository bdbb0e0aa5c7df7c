//! Listener figures (issue "listener streams"): event latency with 50 subscribers at
//! 5,000 writes/s, write throughput with 0 and 50 subscribers, and a slow subscriber
//! during 100,000 writes (throughput, node memory, RESYNC_REQUIRED and resume).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sitegrid_integration_tests::{NodeProcess, NodeSpec};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::{CacheEvent, EventKind, ListenRequest, PutRequest};
use tonic::transport::{Channel, Endpoint};

use crate::Settings;
use crate::ctl::{Load, measure};

const SUBSCRIBERS: usize = 50;
const PACED_RATE: u64 = 5_000;
const SLOW_WRITES: u64 = 100_000;

/// The key written before the latency run: once every subscriber has its event, none is
/// still working off the throughput run's backlog.
const DRAIN_KEY: &[u8] = b"drain-marker";

/// What the listener benchmarks measured.
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) paced_seconds: f64,
    pub(crate) paced_writes: u64,
    pub(crate) events_received: u64,
    pub(crate) latency_p50_us: u64,
    pub(crate) latency_p99_us: u64,
    pub(crate) latency_max_us: u64,
    pub(crate) writes_0: f64,
    pub(crate) writes_50: f64,
    pub(crate) slow: Slow,
}

/// The slow-subscriber run.
#[derive(Debug, Clone)]
pub(crate) struct Slow {
    pub(crate) writes_without: f64,
    pub(crate) writes_with: f64,
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
    pub(crate) events_before_resync: u64,
    pub(crate) resumed_without_loss: bool,
}

fn client(endpoint: &str) -> anyhow::Result<CacheClient<Channel>> {
    let endpoint = Endpoint::from_shared(endpoint.to_string())?;
    Ok(CacheClient::new(sitegrid_proto::transport::lazy_channel(
        &endpoint, None,
    )))
}

fn rss_bytes(node: &NodeProcess) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid()?))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(kb * 1024)
}

fn listen_request() -> ListenRequest {
    ListenRequest {
        caches: vec!["work".into()],
        with_values: true,
        ..Default::default()
    }
}

/// Runs the listener benchmarks on a fresh node.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let node = NodeProcess::start(NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new("listeners")
    })
    .await?;
    let endpoint = node.endpoint();
    let load = Load {
        op: "put",
        cache: "work",
        concurrency: 64,
        value_size: 256,
        keys: 100_000,
        pipeline: None,
    };

    println!("listeners: write throughput with 0 subscribers");
    let writes_0 = measure(&settings.bin_dir, &endpoint, &load, settings.duration)?.ops_per_sec;
    println!("listeners: {SUBSCRIBERS} subscribers");
    let subscribers = Subscribers::start(&endpoint, SUBSCRIBERS).await?;
    let writes_50 = measure(&settings.bin_dir, &endpoint, &load, settings.duration)?.ops_per_sec;
    println!("  writes/s: {writes_0:.0} without, {writes_50:.0} with {SUBSCRIBERS} subscribers");

    println!("listeners: {PACED_RATE} writes/s, latency to every subscriber");
    let paced = paced_latency(&endpoint, &subscribers, settings.duration).await?;
    subscribers.stop();
    println!(
        "  {} events, p50 {} us, p99 {} us",
        paced.events, paced.p50_us, paced.p99_us
    );

    println!("listeners: a slow subscriber during {SLOW_WRITES} writes");
    let slow = slow_subscriber(settings, &node, &endpoint).await?;
    Ok(Results {
        paced_seconds: paced.seconds,
        paced_writes: paced.writes,
        events_received: paced.events,
        latency_p50_us: paced.p50_us,
        latency_p99_us: paced.p99_us,
        latency_max_us: paced.max_us,
        writes_0,
        writes_50,
        slow,
    })
}

/// Subscribers that record when each paced key's event arrives.
struct Subscribers {
    /// Arrival latencies in microseconds, across all subscribers.
    latencies: Arc<parking_lot::Mutex<Histogram<u64>>>,
    /// Acknowledgement time of paced key n, in ns since `epoch` (0: not yet).
    acks: Arc<Vec<AtomicU64>>,
    epoch: Instant,
    events: Arc<AtomicU64>,
    /// Subscribers that received [`DRAIN_KEY`]'s event.
    drained: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Paced keys are `paced-{n}` with n below this.
const PACED_KEYS: usize = 1_000_000;

impl Subscribers {
    async fn start(endpoint: &str, count: usize) -> anyhow::Result<Subscribers> {
        let latencies = Arc::new(parking_lot::Mutex::new(Histogram::new(3)?));
        let acks: Arc<Vec<AtomicU64>> =
            Arc::new((0..PACED_KEYS).map(|_| AtomicU64::new(0)).collect());
        let epoch = Instant::now();
        let events = Arc::new(AtomicU64::new(0));
        let drained = Arc::new(AtomicU64::new(0));
        let recording = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..count {
            // Each subscriber has its own connection, as separate identity nodes would.
            let mut stream = client(endpoint)?
                .listen(listen_request())
                .await?
                .into_inner();
            let (latencies, acks, events, drained, recording) = (
                latencies.clone(),
                acks.clone(),
                events.clone(),
                drained.clone(),
                recording.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(event)) = stream.message().await {
                    events.fetch_add(1, Ordering::Relaxed);
                    if event.key == DRAIN_KEY {
                        drained.fetch_add(1, Ordering::Release);
                    }
                    if !recording.load(Ordering::Relaxed) {
                        continue;
                    }
                    let Some(n) = paced_number(&event) else {
                        continue;
                    };
                    let arrived = epoch.elapsed().as_nanos() as u64;
                    let acked = acks[n].load(Ordering::Acquire);
                    // An event may beat the acknowledgement to this process: latency 0.
                    let micros = if acked == 0 {
                        0
                    } else {
                        arrived.saturating_sub(acked) / 1_000
                    };
                    let _ = latencies.lock().record(micros.max(1));
                }
            }));
        }
        Ok(Subscribers {
            latencies,
            acks,
            epoch,
            events,
            drained,
            recording,
            tasks,
        })
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

fn paced_number(event: &CacheEvent) -> Option<usize> {
    std::str::from_utf8(&event.key)
        .ok()?
        .strip_prefix("paced-")?
        .parse()
        .ok()
}

struct Paced {
    seconds: f64,
    writes: u64,
    events: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// Writes at `PACED_RATE` for `duration`, recording each acknowledgement.
async fn paced_latency(
    endpoint: &str,
    subscribers: &Subscribers,
    duration: Duration,
) -> anyhow::Result<Paced> {
    let mut writer = client(endpoint)?;
    // The subscribers may still be working off the throughput run's events.
    writer
        .put(PutRequest {
            cache: "work".into(),
            key: Bytes::from_static(DRAIN_KEY),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while subscribers.drained.load(Ordering::Acquire) < SUBSCRIBERS as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the subscribers did not work off the throughput run's events in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    subscribers.recording.store(true, Ordering::Relaxed);
    let events_before = subscribers.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let total = (PACED_RATE as f64 * duration.as_secs_f64()) as usize;
    let total = total.min(PACED_KEYS);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0usize;
    let mut writes = tokio::task::JoinSet::new();
    while sent < total {
        tick.tick().await;
        // Catch up to the rate since the start, so the average stays at PACED_RATE.
        let due = ((started.elapsed().as_secs_f64() * PACED_RATE as f64) as usize).min(total);
        while sent < due {
            let n = sent;
            sent += 1;
            let mut writer = writer.clone();
            let acks = subscribers.acks.clone();
            let epoch = subscribers.epoch;
            writes.spawn(async move {
                let request = PutRequest {
                    cache: "work".into(),
                    key: Bytes::from(format!("paced-{n}")),
                    value: Bytes::from_static(&[b'v'; 256]),
                    ..Default::default()
                };
                if writer.put(request).await.is_ok() {
                    acks[n].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                }
            });
        }
    }
    while writes.join_next().await.is_some() {}
    // Let the last events reach every subscriber.
    let expected = events_before + (total * SUBSCRIBERS) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers.events.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    subscribers.recording.store(false, Ordering::Relaxed);
    let histogram = subscribers.latencies.lock();
    Ok(Paced {
        seconds,
        writes: total as u64,
        events: subscribers.events.load(Ordering::Relaxed) - events_before,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
    })
}

/// 100,000 writes with and without a subscriber that reads one event a second.
async fn slow_subscriber(
    settings: &Settings,
    node: &NodeProcess,
    endpoint: &str,
) -> anyhow::Result<Slow> {
    let fill = |label: &str| -> anyhow::Result<f64> {
        let load = Load {
            op: "put",
            cache: "loginFailures",
            concurrency: 64,
            value_size: 256,
            keys: SLOW_WRITES,
            pipeline: None,
        };
        let m = crate::ctl::fill(&settings.bin_dir, endpoint, &load, SLOW_WRITES)?;
        println!("  {label}: {:.0} writes/s", m.ops_per_sec);
        Ok(m.ops_per_sec)
    };
    let writes_without = fill("without a listener")?;
    let rss_before = rss_bytes(node)?;

    let request = ListenRequest {
        caches: vec!["loginFailures".into()],
        with_values: true,
        ..Default::default()
    };
    let mut stream = client(endpoint)?
        .listen(request.clone())
        .await?
        .into_inner();
    let reading = Arc::new(AtomicBool::new(true));
    let slow_reader = {
        let reading = reading.clone();
        tokio::spawn(async move {
            let mut received = Vec::new();
            while reading.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                    Ok(Ok(Some(event))) => received.push(event),
                    Ok(_) => return (received, stream),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (received, stream)
        })
    };
    let writes_with = fill("with a slow listener")?;
    let rss_after = rss_bytes(node)?;
    reading.store(false, Ordering::Relaxed);
    let (mut received, mut stream) = slow_reader.await?;

    // Now read on at full speed: the stream must end with RESYNC_REQUIRED.
    let mut resync = None;
    while let Some(event) = stream.message().await? {
        if event.kind == EventKind::ResyncRequired as i32 {
            resync = Some(event.version);
            break;
        }
        received.push(event);
    }
    let resync =
        resync.ok_or_else(|| anyhow::anyhow!("the slow listener never got RESYNC_REQUIRED"))?;
    let events_before_resync = received.len() as u64;
    // Resuming from there yields every key written, one way or the other.
    let mut keys: HashSet<Bytes> = received.into_iter().map(|e| e.key).collect();
    let resume = ListenRequest {
        resume_from_version: resync,
        ..request
    };
    let mut resumed = client(endpoint)?.listen(resume).await?.into_inner();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (keys.len() as u64) < SLOW_WRITES && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), resumed.message()).await {
            Ok(Ok(Some(event))) => {
                keys.insert(event.key);
            }
            _ => break,
        }
    }
    Ok(Slow {
        writes_without,
        writes_with,
        rss_before,
        rss_after,
        events_before_resync,
        resumed_without_loss: keys.len() as u64 == SLOW_WRITES,
    })
}
