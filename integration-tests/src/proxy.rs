//! A TCP fault-injection proxy on loopback, standing in for netem (which this machine
//! lacks) between a site and the site it talks to.
//!
//! [`FaultProxy`] forwards every connection it accepts to one target. The test changes
//! faults at any time, and they apply to open and new connections alike: one-way delay,
//! a blackhole per direction, refusing new connections, resetting every open one.
//!
//! Each direction of a connection is a delay line: a reader stamps every chunk with the
//! time it is due and hands it to a writer, which sends chunks in order once due. Many
//! chunks are in flight at once, so latency does not cap throughput. The writer waits on
//! a timerfd, to the kernel's precision: tokio's timers round each deadline up to the next
//! millisecond, which made a 10 ms delay about 11.3 ms.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The most bytes one read takes off a socket.
const CHUNK_SIZE: usize = 16 * 1024;

/// Chunks in flight per direction of a connection. Bounded so that a stalled receiver
/// pushes back on the sender as TCP would; at 50 ms of delay this still passes about
/// 80,000 chunks a second.
const CHUNKS_IN_FLIGHT: usize = 4096;

/// What a lost segment costs a TCP connection: the minimum retransmission timeout.
const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);

/// Pause after a failed `accept`, so that running out of file descriptors does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Which way bytes flow through the proxy, for choosing where a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting side to the target.
    ToTarget,
    /// From the target back to the connecting side.
    FromTarget,
    /// Both ways.
    Both,
}

impl Direction {
    /// The indexes into [`Shared::bytes`] and [`Faults::links`] this direction covers.
    fn links(self) -> &'static [usize] {
        match self {
            Direction::ToTarget => &[TO_TARGET],
            Direction::FromTarget => &[FROM_TARGET],
            Direction::Both => &[TO_TARGET, FROM_TARGET],
        }
    }
}

/// Index of the link carrying bytes to the target.
const TO_TARGET: usize = 0;
/// Index of the link carrying bytes back from the target.
const FROM_TARGET: usize = 1;

/// Counters since the proxy started, for tests to assert on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted and forwarded to the target.
    pub connections_accepted: u64,
    /// Connections closed on arrival because [`FaultProxy::refuse_new`] was on.
    pub connections_refused: u64,
    /// Bytes written to the target.
    pub bytes_to_target: u64,
    /// Bytes written back to the connecting side.
    pub bytes_from_target: u64,
}

/// A running proxy; dropping it (or [`FaultProxy::stop`]) stops accepting and closes
/// every connection.
pub struct FaultProxy {
    /// Where the proxy listens, always on loopback.
    addr: SocketAddr,
    /// Faults and counters, shared with every connection task.
    shared: Arc<Shared>,
    /// Dropped to tell the accept task to stop; it then ends every connection task.
    stop: oneshot::Sender<()>,
    /// The accept task, awaited by [`FaultProxy::stop`].
    accept_task: JoinHandle<()>,
}

/// What the proxy and its connection tasks share.
struct Shared {
    target: SocketAddr,
    /// Locked only to read or change settings, never across an await.
    faults: Mutex<Faults>,
    /// Bumped by [`FaultProxy::reset_all`]; every connection watches it.
    reset: watch::Sender<()>,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    /// Bytes written, indexed by [`TO_TARGET`] and [`FROM_TARGET`].
    bytes: [AtomicU64; 2],
}

/// The faults in force; the default is none.
#[derive(Debug, Default)]
struct Faults {
    refuse_new: bool,
    /// Indexed by [`TO_TARGET`] and [`FROM_TARGET`].
    links: [LinkFaults; 2],
}

/// The faults on one direction of every connection.
#[derive(Debug, Clone, Copy, Default)]
struct LinkFaults {
    delay: Duration,
    /// Chance that a chunk is "lost" and waits for its retransmission.
    loss: f64,
    blackhole: bool,
}

/// Bytes read from one side, waiting to be written to the other.
struct Chunk {
    /// When the chunk may be written: the read time plus the delay in force then.
    due: Instant,
    bytes: Vec<u8>,
}

/// How a forwarded connection came to an end.
enum Ending {
    /// Both sides closed cleanly; their end-of-stream was passed on.
    Closed,
    /// A read or write failed; both sides are reset.
    Failed(io::Error),
    /// [`FaultProxy::reset_all`] was called; both sides are reset.
    Reset,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1` with a free port that forwards to `target`, with no
    /// faults. Must be called within a tokio runtime.
    pub fn start(target: SocketAddr) -> anyhow::Result<FaultProxy> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            reset: watch::Sender::new(()),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let (stop, stopped) = oneshot::channel();
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(FaultProxy {
            addr,
            shared,
            stop,
            accept_task,
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays every byte going in `direction` by `delay`, on top of what it took before.
    /// Chunks already read keep the delay they were read under.
    pub fn set_delay(&self, direction: Direction, delay: Duration) {
        let mut faults = self.shared.faults.lock();
        for &link in direction.links() {
            faults.links[link].delay = delay;
        }
    }

    /// Loses each chunk read in `direction` with `probability`, as TCP sees loss: the
    /// chunk arrives a retransmission timeout (200 ms) late, and everything behind it on
    /// its connection waits for it. No byte is dropped.
    pub fn set_loss(&self, direction: Direction, probability: f64) {
        let mut faults = self.shared.faults.lock();
        for &link in direction.links() {
            faults.links[link].loss = probability;
        }
    }

    /// Silently discards every byte read in `direction` from now on; connections stay
    /// open and end-of-stream still passes. Chunks already read are still delivered.
    pub fn blackhole(&self, direction: Direction) {
        let mut faults = self.shared.faults.lock();
        for &link in direction.links() {
            faults.links[link].blackhole = true;
        }
    }

    /// While `refuse` holds, new connections are reset as soon as they are accepted, as
    /// by a dead peer; open connections are not touched.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.faults.lock().refuse_new = refuse;
    }

    /// Resets every open connection on both sides (an RST, not a clean close).
    pub fn reset_all(&self) {
        self.shared.reset.send_replace(());
    }

    /// Clears every delay, loss, blackhole and refusal. Open connections go on; bytes already
    /// blackholed stay lost.
    pub fn heal(&self) {
        *self.shared.faults.lock() = Faults::default();
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let shared = &self.shared;
        ProxyStats {
            connections_accepted: shared.connections_accepted.load(Ordering::Relaxed),
            connections_refused: shared.connections_refused.load(Ordering::Relaxed),
            bytes_to_target: shared.bytes[TO_TARGET].load(Ordering::Relaxed),
            bytes_from_target: shared.bytes[FROM_TARGET].load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every connection, returning once all are closed.
    pub async fn stop(self) {
        drop(self.stop);
        if let Err(error) = self.accept_task.await {
            warn!(error = %error, "fault proxy accept task failed");
        }
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped), then ends every
/// connection task and waits for them.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    if shared.faults.lock().refuse_new {
                        shared.connections_refused.fetch_add(1, Ordering::Relaxed);
                        debug!(peer = %peer, "fault proxy refused a connection");
                        abort(&client);
                        continue;
                    }
                    shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    // Subscribed here, so a reset between accept and connect still counts.
                    let reset = shared.reset.subscribe();
                    connections.spawn(forward_connection(client, peer, shared.clone(), reset));
                }
                Err(error) => {
                    warn!(error = %error, "fault proxy accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(joined) = connections.join_next() => {
                if let Err(error) = joined {
                    warn!(error = %error, "fault proxy connection task failed");
                }
            }
        }
    }
    connections.shutdown().await;
}

/// Connects to the target and forwards both ways until both sides close, an I/O error,
/// or a reset.
async fn forward_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut reset: watch::Receiver<()>,
) {
    let mut target = match TcpStream::connect(shared.target).await {
        Ok(target) => target,
        Err(error) => {
            debug!(peer = %peer, target = %shared.target, error = %error, "fault proxy could not reach the target");
            abort(&client);
            return;
        }
    };
    // Small messages must not wait for Nagle's algorithm on top of the injected delay.
    for stream in [&client, &target] {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(peer = %peer, error = %error, "fault proxy could not set TCP_NODELAY");
        }
    }
    let ending = {
        let (client_read, client_write) = client.split();
        let (target_read, target_write) = target.split();
        let forward = async {
            tokio::try_join!(
                pipe(&shared, TO_TARGET, client_read, target_write),
                pipe(&shared, FROM_TARGET, target_read, client_write),
            )
        };
        tokio::select! {
            forwarded = forward => match forwarded {
                Ok(_) => Ending::Closed,
                Err(error) => Ending::Failed(error),
            },
            _ = reset.changed() => Ending::Reset,
        }
    };
    match ending {
        Ending::Closed => debug!(peer = %peer, "fault proxy connection closed"),
        Ending::Failed(error) => {
            debug!(peer = %peer, error = %error, "fault proxy connection failed");
            abort(&client);
            abort(&target);
        }
        Ending::Reset => {
            debug!(peer = %peer, "fault proxy connection reset");
            abort(&client);
            abort(&target);
        }
    }
}

/// Forwards one direction as a delay line: the reader stamps chunks, the writer sends
/// each once due, and end-of-stream is passed on after the last chunk.
async fn pipe(
    shared: &Shared,
    link: usize,
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
) -> io::Result<()> {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buffer = vec![0; CHUNK_SIZE];
        loop {
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                // Dropping the sender lets the writer drain and then shut down.
                return Ok::<_, io::Error>(());
            }
            let now = Instant::now();
            let faults = shared.faults.lock().links[link];
            if faults.blackhole {
                continue;
            }
            let lost = faults.loss > 0.0 && fastrand::f64() < faults.loss;
            let chunk = Chunk {
                due: now
                    + faults.delay
                    + if lost {
                        RETRANSMIT_DELAY
                    } else {
                        Duration::ZERO
                    },
                bytes: buffer[..read].to_vec(),
            };
            if chunks_tx.send(chunk).await.is_err() {
                // The writer has failed; its error ends the connection.
                return Ok(());
            }
        }
    };
    let timer = PreciseTimer::new()?;
    let write = async move {
        while let Some(chunk) = chunks_rx.recv().await {
            timer.sleep_until(chunk.due).await?;
            to.write_all(&chunk.bytes).await?;
            shared.bytes[link].fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// A one-shot timer on a timerfd, woken through tokio's reactor.
struct PreciseTimer(AsyncFd<Timerfd>);

struct Timerfd(TimerFd);

impl AsRawFd for Timerfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    fn new() -> io::Result<PreciseTimer> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: `Timerfd` owns the descriptor (a `TimerFd` holds an `OwnedFd`), so it
        // stays open, and the same, for as long as the `AsyncFd` holds it.
        let registered =
            unsafe { AsyncFd::register_with_interest(Timerfd(timer), Interest::READABLE) };
        Ok(PreciseTimer(registered.map_err(io::Error::from)?))
    }

    async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        let wait = due.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        self.0.get_ref().0.set(
            Expiration::OneShot(TimeSpec::from_duration(wait)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut ready = self.0.readable().await?;
            // Reading the expiration count clears it; EAGAIN (not yet) is WouldBlock.
            match ready.try_io(|timer| Ok(timer.get_ref().0.wait()?)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Closes `stream` with an RST rather than a FIN once it is dropped.
fn abort(stream: &TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(error = %error, "fault proxy could not set SO_LINGER to zero");
    }
}
