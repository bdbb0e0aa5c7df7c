//! Two-site figures (issue "cross-site backups"): sync `Put` latency over a link with
//! 10 ms one-way delay, next to `Put` with no backup on the same node, `Ping` of site 2
//! through the link (the round trip gRPC gets from it) and plain TCP round trips through
//! a proxy with the same delay (the round trip the link itself gives, the proxy's own
//! cost included, which a kernel delay such as netem would not add) in the same rounds; and async
//! replication lag at 5,000 writes/s (from the write's acknowledgement in site 1 to its
//! event in site 2) with 10 ms one-way delay, the setting, and with 50 ms, the
//! setting of its convergence test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use sitegrid_integration_tests::proxy::FaultProxy;
use sitegrid_integration_tests::{Direction, NodeSpec, TwoSites};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::{EventKind, ListenRequest, PutRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};

use crate::Settings;
use crate::ctl::{Load, Measurement, measure};

/// One-way delay of the link for the sync figure.
pub(crate) const SYNC_DELAY: Duration = Duration::from_millis(10);
/// One-way delays of the link for the async figures.
pub(crate) const ASYNC_DELAYS: [Duration; 2] =
    [Duration::from_millis(10), Duration::from_millis(50)];
/// What async replication may add to the one-way delay (p99).
pub(crate) const ASYNC_ALLOWANCE: Duration = Duration::from_millis(50);
/// Writes per second for the async figure.
pub(crate) const ASYNC_RATE: u64 = 5_000;
/// Concurrency of the sync figures.
const SYNC_CONCURRENCY: u32 = 16;
/// Bytes of one plain TCP round trip: about a backup of a 256-byte value.
pub(crate) const ECHO_BYTES: usize = 512;

/// What the two-site benchmark measured (medians over rounds for the sync figures).
#[derive(Debug, Clone)]
pub(crate) struct Results {
    pub(crate) local: Measurement,
    pub(crate) sync: Measurement,
    /// `Ping` of site 2 through the link, in the round of `sync`.
    pub(crate) link: Measurement,
    /// Plain TCP round trips through a proxy with the link's delay, in the round of
    /// `sync`.
    pub(crate) tcp: Measurement,
    pub(crate) lags: Vec<(Duration, Lag)>,
}

/// Async replication lag over one link.
#[derive(Debug, Clone)]
pub(crate) struct Lag {
    pub(crate) async_writes: u64,
    pub(crate) async_seconds: f64,
    pub(crate) lag_samples: u64,
    pub(crate) lag_seen: u64,
    pub(crate) lag_p50_us: u64,
    pub(crate) lag_p99_us: u64,
    pub(crate) lag_max_us: u64,
}

fn client(endpoint: &str) -> anyhow::Result<CacheClient<Channel>> {
    let endpoint = Endpoint::from_shared(endpoint.to_string())?;
    Ok(CacheClient::new(sitegrid_proto::transport::lazy_channel(
        &endpoint, None,
    )))
}

/// Runs the two-site benchmark.
pub(crate) async fn run(settings: &Settings) -> anyhow::Result<Results> {
    let spec = |_, name: &str| NodeSpec {
        binary: Some(settings.bin_dir.join("sitegrid")),
        log_filter: Some("warn".into()),
        ..NodeSpec::new(name).with_toml("[caches.scratch]\nlocal_only = true\n")
    };
    // Site 1 reaches site 2 through a proxy that delays both directions.
    let (sites, proxy) = TwoSites::start_behind_proxy(1, spec).await?;
    let first = sites.sites[0].nodes[0].endpoint();
    let second = sites.sites[1].nodes[0].endpoint();
    let through_link = format!("http://{}", proxy.addr());

    proxy.set_delay(Direction::Both, SYNC_DELAY);
    let load = |op, cache| Load {
        op,
        cache,
        concurrency: SYNC_CONCURRENCY,
        value_size: 256,
        keys: 100_000,
        pipeline: None,
    };
    let mut rounds = Vec::new();
    for round in 1..=settings.rounds {
        println!("sites: round {round} of {}", settings.rounds);
        let put = |cache| load("put", cache);
        let local = measure(
            &settings.bin_dir,
            &first,
            &put("scratch"),
            settings.duration,
        )?;
        let sync = measure(&settings.bin_dir, &first, &put("work"), settings.duration)?;
        let link = measure(
            &settings.bin_dir,
            &through_link,
            &load("ping", "work"),
            settings.duration,
        )?;
        let tcp = tcp_round_trips(SYNC_DELAY, SYNC_CONCURRENCY, settings.duration).await?;
        println!(
            "  no backup p50 {:>6} us p99 {:>6} us | sync backup ({} ms each way) p50 {:>6} us p99 {:>6} us | gRPC ping p50 {:>6} us | TCP round trip p50 {:>6} us",
            local.p50_us,
            local.p99_us,
            SYNC_DELAY.as_millis(),
            sync.p50_us,
            sync.p99_us,
            link.p50_us,
            tcp.p50_us
        );
        rounds.push((local, sync, link, tcp));
    }
    rounds.sort_by_key(|(_, sync, _, _)| sync.p50_us);
    let (local, sync, link, tcp) = rounds[rounds.len() / 2].clone();

    let mut lags = Vec::new();
    for delay in ASYNC_DELAYS {
        proxy.set_delay(Direction::Both, delay);
        let round = format!("{}ms", delay.as_millis());
        let lag = async_lag(&first, &second, settings.duration, &round).await?;
        println!(
            "  async lag at {ASYNC_RATE} writes/s ({} ms each way): p50 {} us p99 {} us over {} writes",
            delay.as_millis(),
            lag.lag_p50_us,
            lag.lag_p99_us,
            lag.lag_samples
        );
        lags.push((delay, lag));
    }
    Ok(Results {
        local,
        sync,
        link,
        tcp,
        lags,
    })
}

/// Round trips of [`ECHO_BYTES`] over plain TCP connections (one per worker,
/// `concurrency` workers, closed loop) for `duration`, through a fault proxy delaying
/// each direction by `delay` to an echo server: the round trip the link gives below
/// gRPC, the proxy's own cost included.
async fn tcp_round_trips(
    delay: Duration,
    concurrency: u32,
    duration: Duration,
) -> anyhow::Result<Measurement> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let target = echo.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    let proxy = FaultProxy::start(target)?;
    proxy.set_delay(Direction::Both, delay);
    let through = proxy.addr();
    let until = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(through).await?;
                stream.set_nodelay(true)?;
                let sent = vec![7u8; ECHO_BYTES];
                let mut back = vec![0u8; ECHO_BYTES];
                let mut latencies = Histogram::<u64>::new(3)?;
                while Instant::now() < until {
                    let started = Instant::now();
                    stream.write_all(&sent).await?;
                    stream.read_exact(&mut back).await?;
                    latencies.record(started.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new(3)?;
    for worker in workers {
        latencies.add(worker.await??)?;
    }
    proxy.stop().await;
    server.abort();
    Ok(Measurement {
        errors: 0,
        ops_per_sec: latencies.len() as f64 / duration.as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        cpu: None,
    })
}

/// Writes `loginFailures` (async backups) in site 1 at [`ASYNC_RATE`] for `duration`
/// (keys named after `round`) and times each write from its acknowledgement to its
/// event in site 2.
async fn async_lag(
    first: &str,
    second: &str,
    duration: Duration,
    round: &str,
) -> anyhow::Result<Lag> {
    let mut events = client(second)?
        .listen(ListenRequest {
            caches: vec!["loginFailures".into()],
            with_values: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    let arrivals: Arc<Mutex<HashMap<Bytes, Instant>>> = Arc::default();
    let listener = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = events.message().await {
                if matches!(event.kind(), EventKind::Created | EventKind::Modified) {
                    arrivals
                        .lock()
                        .expect("not poisoned")
                        .insert(event.key, Instant::now());
                }
            }
        })
    };
    let writer = client(first)?;
    let acks: Arc<Mutex<HashMap<Bytes, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let per_tick = ASYNC_RATE / 1_000;
    let mut writes = Vec::new();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        ticks.tick().await;
        for _ in 0..per_tick {
            let key = Bytes::from(format!("lag-{round}-{sent}"));
            sent += 1;
            let mut writer = writer.clone();
            let acks = acks.clone();
            writes.push(tokio::spawn(async move {
                let request = PutRequest {
                    cache: "loginFailures".into(),
                    key: key.clone(),
                    value: Bytes::from_static(b"1"),
                    ..Default::default()
                };
                if writer.put(request).await.is_ok() {
                    acks.lock()
                        .expect("not poisoned")
                        .insert(key, Instant::now());
                }
            }));
        }
    }
    for write in writes {
        write.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let acked = acks.lock().expect("not poisoned").len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().expect("not poisoned").len() < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listener.abort();
    let acks = acks.lock().expect("not poisoned");
    let arrivals = arrivals.lock().expect("not poisoned");
    let mut lag = Histogram::<u64>::new(3)?;
    let seen = acks
        .keys()
        .filter(|key| arrivals.contains_key(*key))
        .count() as u64;
    for (key, acked_at) in acks.iter() {
        // A write never seen in site 2 counts as lagging by the whole wait.
        let arrived = arrivals.get(key).copied().unwrap_or(deadline);
        lag.record(arrived.saturating_duration_since(*acked_at).as_micros() as u64)?;
    }
    Ok(Lag {
        async_writes: sent,
        async_seconds: seconds,
        lag_samples: lag.len(),
        lag_seen: seen,
        lag_p50_us: lag.value_at_quantile(0.5),
        lag_p99_us: lag.value_at_quantile(0.99),
        lag_max_us: lag.max(),
    })
}
