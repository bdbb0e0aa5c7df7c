//! The fault proxy over real loopback TCP: against a small echo server, or against a
//! listener the test accepts on itself so it can drive each side of a connection.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sitegrid_integration_tests::{Direction, FaultProxy, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Long enough for anything on loopback that should happen.
const PROMPTLY: Duration = Duration::from_secs(5);

/// How long a read waits to show that nothing arrives.
const SILENCE: Duration = Duration::from_millis(200);

/// An echo server on loopback, aborted when dropped.
struct EchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                connections.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    // Copies until end-of-stream, then closes: a half-close comes back.
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        EchoServer { addr, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = tokio::time::timeout(PROMPTLY, TcpStream::connect(proxy.addr()))
        .await
        .expect("connected in time")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A connection through `proxy` to `target`, as (the connecting side, the target side).
async fn connected_pair(proxy: &FaultProxy, target: &TcpListener) -> (TcpStream, TcpStream) {
    let client = connect(proxy).await;
    let (server, _) = tokio::time::timeout(PROMPTLY, target.accept())
        .await
        .expect("the proxy reached the target in time")
        .unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buffer = vec![0; len];
    tokio::time::timeout(PROMPTLY, stream.read_exact(&mut buffer))
        .await
        .expect("bytes in time")
        .unwrap();
    buffer
}

async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    read_exactly(stream, message.len()).await
}

/// Asserts that `stream` sees end-of-stream or an error promptly, never data.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buffer = [0; 16];
    match tokio::time::timeout(PROMPTLY, stream.read(&mut buffer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(read)) => panic!("read {read} bytes from a connection that should be closed"),
        Err(_) => panic!("connection still open after {PROMPTLY:?}"),
    }
}

#[tokio::test]
async fn bytes_pass_through_unchanged_both_ways_and_are_counted() {
    let echo = EchoServer::start().await;
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

    let (mut read, mut write) = connect(&proxy).await.into_split();
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            write.write_all(&sent).await.unwrap();
            write.shutdown().await.unwrap();
        }
    });
    let mut received = Vec::new();
    tokio::time::timeout(PROMPTLY, read.read_to_end(&mut received))
        .await
        .expect("the echo and its end-of-stream in time")
        .unwrap();
    writer.await.unwrap();

    assert!(received == sent, "echo differs from what was sent");
    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.bytes_to_target, sent.len() as u64);
    assert_eq!(stats.bytes_from_target, sent.len() as u64);
}

#[tokio::test]
async fn delay_slows_each_round_trip_but_many_messages_stay_in_flight_at_once() {
    let echo = EchoServer::start().await;
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"before").await, b"before");

    // Set on the open connection: faults apply to existing connections too.
    proxy.set_delay(Direction::Both, Duration::from_millis(50));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"one").await, b"one");
    let one_round_trip = started.elapsed();
    assert!(
        one_round_trip >= Duration::from_millis(100),
        "a round trip took {one_round_trip:?} under 50 ms each way"
    );

    // 200 messages a millisecond apart, so that the proxy reads each on its own rather
    // than a few coalesced chunks: paying the delay one chunk at a time would take 10 s
    // each way, a delay line takes the 200 ms of sending plus one round trip.
    let messages: Vec<[u8; 8]> = (0..200u64).map(u64::to_be_bytes).collect();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn({
        let messages = messages.clone();
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(1));
            pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for message in messages {
                pace.tick().await;
                write.write_all(&message).await.unwrap();
            }
        }
    });
    let mut received = vec![0; messages.len() * 8];
    tokio::time::timeout(PROMPTLY, read.read_exact(&mut received))
        .await
        .expect("every message in time")
        .unwrap();
    let all_messages = started.elapsed();
    writer.await.unwrap();

    assert!(
        received == messages.concat(),
        "messages reordered or changed"
    );
    assert!(
        all_messages >= Duration::from_millis(100),
        "the messages skipped the delay: {all_messages:?}"
    );
    assert!(
        all_messages < Duration::from_secs(2),
        "200 paced messages took {all_messages:?}: the delay is not a delay line"
    );
}

#[tokio::test]
async fn blackhole_silences_one_direction_while_the_other_still_delivers() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(target.local_addr().unwrap()).unwrap();
    let (mut client, mut server) = connected_pair(&proxy, &target).await;

    proxy.blackhole(Direction::ToTarget);
    client.write_all(b"lost").await.unwrap();
    let mut buffer = [0; 4];
    let silent = tokio::time::timeout(SILENCE, server.read(&mut buffer)).await;
    assert!(silent.is_err(), "a blackholed byte arrived: {silent:?}");
    server.write_all(b"back").await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"back");
    assert_eq!(proxy.stats().bytes_to_target, 0);

    // Discarded, not held up: after heal only the new bytes arrive.
    proxy.heal();
    client.write_all(b"found").await.unwrap();
    assert_eq!(
        read_exactly(&mut server, 5).await,
        b"found",
        "bytes sent after heal arrive, blackholed ones stay lost"
    );

    proxy.blackhole(Direction::FromTarget);
    server.write_all(b"lost").await.unwrap();
    let silent = tokio::time::timeout(SILENCE, client.read(&mut buffer)).await;
    assert!(silent.is_err(), "a blackholed byte arrived: {silent:?}");
    client.write_all(b"there").await.unwrap();
    assert_eq!(read_exactly(&mut server, 5).await, b"there");
}

#[tokio::test]
async fn heal_clears_every_fault_for_a_fresh_connection() {
    let echo = EchoServer::start().await;
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.set_delay(Direction::Both, Duration::from_secs(60));
    proxy.blackhole(Direction::Both);
    proxy.refuse_new(true);

    proxy.heal();
    let mut stream = connect(&proxy).await;
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, b"healed").await, b"healed");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(proxy.stats().connections_refused, 0);
}

#[tokio::test]
async fn refuse_new_closes_new_connections_but_leaves_open_ones_alone() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(target.local_addr().unwrap()).unwrap();
    let (mut open_client, mut open_server) = connected_pair(&proxy, &target).await;

    proxy.refuse_new(true);
    match TcpStream::connect(proxy.addr()).await {
        Ok(mut refused) => assert_closed(&mut refused).await,
        Err(error) => assert_ne!(error.kind(), io::ErrorKind::TimedOut),
    }
    eventually("the refusal to be counted", PROMPTLY, || async {
        proxy.stats().connections_refused == 1
    })
    .await
    .unwrap();
    assert_eq!(proxy.stats().connections_accepted, 1, "only the open one");

    open_client.write_all(b"still").await.unwrap();
    assert_eq!(read_exactly(&mut open_server, 5).await, b"still");

    proxy.refuse_new(false);
    let (mut client, mut server) = connected_pair(&proxy, &target).await;
    client.write_all(b"again").await.unwrap();
    assert_eq!(read_exactly(&mut server, 5).await, b"again");
}

#[tokio::test]
async fn reset_all_breaks_open_connections_on_both_sides() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(target.local_addr().unwrap()).unwrap();
    let (mut client, mut server) = connected_pair(&proxy, &target).await;
    client.write_all(b"hello").await.unwrap();
    assert_eq!(read_exactly(&mut server, 5).await, b"hello");

    proxy.reset_all();
    assert_closed(&mut client).await;
    assert_closed(&mut server).await;

    let (mut client, mut server) = connected_pair(&proxy, &target).await;
    client.write_all(b"fresh").await.unwrap();
    assert_eq!(read_exactly(&mut server, 5).await, b"fresh");
}

#[tokio::test]
async fn stop_closes_every_connection_and_the_listener() {
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(target.local_addr().unwrap()).unwrap();
    let addr = proxy.addr();
    let (mut client, mut server) = connected_pair(&proxy, &target).await;

    proxy.stop().await;
    assert_closed(&mut client).await;
    assert_closed(&mut server).await;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}
