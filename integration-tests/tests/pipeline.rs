//! The `Pipeline` and `PipelineBatch` RPCs on a real node: many requests in flight on one
//! stream, answered by id; one stream's requests to a key run in the order sent; a bad
//! request is answered with its error and the stream goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sitegrid_client::{
    Client, Outcome, PutIfAbsentOutcome, RemoveOutcome, RemoveWithVersionOutcome, ReplaceOutcome,
    ReplaceWithVersionOutcome, Versioned, WriteOptions,
};
use sitegrid_integration_tests::requests::{get, put};
use sitegrid_integration_tests::rpc::open_pipeline;
use sitegrid_integration_tests::{NodeProcess, NodeSpec, Site, eventually, http};
use sitegrid_proto::v1::cache_client::CacheClient;
use sitegrid_proto::v1::pipeline_request::Operation;
use sitegrid_proto::v1::pipeline_response::Result as Answer;
use sitegrid_proto::v1::{
    PipelineBatchRequest, PipelineRequest, PipelineResponse, ReplaceWithVersionRequest,
};
use tonic::Code;

const KEYS: usize = 50;
const ROUNDS: usize = 20;

/// `count` tasks at once each write a key of `sessions` through `client` and read it
/// back with the version written.
async fn writes_read_back(client: &Client, count: usize) {
    let sessions = client.cache("sessions");
    let writes = (0..count).map(|i| {
        let sessions = sessions.clone();
        async move {
            let key = format!("s{i}");
            let put = sessions.put(key.clone(), "v", WriteOptions::new()).await?;
            let read = sessions.get(key).await?;
            assert_eq!(read.unwrap().metadata.version, put.version);
            Ok::<_, sitegrid_client::Error>(())
        }
    });
    futures::future::try_join_all(writes).await.unwrap();
}

/// The answers to pipelined Puts of round after round to keys `k0`, `k1`...: the version
/// each (key, round) got, and the errors, by request id.
struct PutsAnswered {
    /// The (key, round) of each Put not answered yet, by id.
    sent: HashMap<u64, (usize, usize)>,
    /// The version each Put got, by key and round.
    versions: Vec<Vec<u64>>,
    errors: HashMap<u64, Code>,
}

impl PutsAnswered {
    fn new(sent: HashMap<u64, (usize, usize)>, rounds: usize) -> PutsAnswered {
        PutsAnswered {
            sent,
            versions: vec![vec![0; rounds]; KEYS],
            errors: HashMap::new(),
        }
    }

    fn take(&mut self, answer: PipelineResponse) {
        match answer.result.unwrap() {
            Answer::Put(put) => {
                let (key, round) = self.sent.remove(&answer.id).expect("one answer per id");
                self.versions[key][round] = put.version;
            }
            Answer::Error(error) => {
                self.errors.insert(answer.id, Code::from(error.code));
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// Every Put was answered, and each key's were applied in the order sent.
    fn assert_all_answered_in_order(&self) {
        assert!(self.sent.is_empty(), "unanswered: {:?}", self.sent);
        for (key, versions) in self.versions.iter().enumerate() {
            assert!(
                versions.windows(2).all(|pair| pair[0] < pair[1]),
                "key k{key}: puts applied out of order: {versions:?}"
            );
        }
    }
}

#[tokio::test]
async fn requests_in_flight_together_are_answered_by_id_in_per_key_order() {
    let node = NodeProcess::start(NodeSpec::new("pipeline")).await.unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let (requests, mut answers) = open_pipeline(&mut client).await.unwrap();

    // ROUNDS puts to each of KEYS keys, interleaved, and a request to an unknown cache
    // and one naming no operation in the middle; all sent before any answer is read.
    let mut sent: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut id = 0;
    for round in 0..ROUNDS {
        for key in 0..KEYS {
            id += 1;
            let request = put("sessions", &format!("k{key}"), &format!("{round}"));
            requests
                .send(PipelineRequest {
                    id,
                    operation: Some(Operation::Put(request)),
                })
                .await
                .unwrap();
            sent.insert(id, (key, round));
        }
        if round == ROUNDS / 2 {
            let unknown = put("noSuchCache", "k", "v");
            let operations = [Some(Operation::Put(unknown)), None];
            for (offset, operation) in operations.into_iter().enumerate() {
                requests
                    .send(PipelineRequest {
                        id: 1_000_000 + offset as u64,
                        operation,
                    })
                    .await
                    .unwrap();
            }
        }
    }

    let mut puts = PutsAnswered::new(sent, ROUNDS);
    for _ in 0..puts.sent.len() + 2 {
        let answer = answers
            .message()
            .await
            .unwrap()
            .expect("an answer per request");
        puts.take(answer);
    }
    puts.assert_all_answered_in_order();
    assert_eq!(puts.errors[&1_000_000], Code::NotFound, "unknown cache");
    assert_eq!(
        puts.errors[&1_000_001],
        Code::InvalidArgument,
        "no operation"
    );

    // The stream is still usable after the errors, and reads see the last round.
    requests
        .send(PipelineRequest {
            id: 2_000_000,
            operation: Some(Operation::Get(get("sessions", "k7"))),
        })
        .await
        .unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.id, 2_000_000);
    let Some(Answer::Get(found)) = answer.result else {
        panic!("{answer:?}")
    };
    assert_eq!(found.value, Bytes::from(format!("{}", ROUNDS - 1)));
    assert_eq!(
        found.metadata.unwrap().version,
        puts.versions[7][ROUNDS - 1]
    );
}

#[tokio::test]
async fn a_chain_of_versioned_writes_on_one_stream_succeeds_in_order() {
    let node = NodeProcess::start(NodeSpec::new("pipeline-chain"))
        .await
        .unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let first = client
        .put(put("actionTokens", "t", "0"))
        .await
        .unwrap()
        .into_inner()
        .version;
    let (requests, mut answers) = open_pipeline(&mut client).await.unwrap();
    // Two requests expecting the same version, sent back to back: run in the order
    // sent, the first wins and the second is told the first one's entry.
    for id in 1..=2 {
        requests
            .send(PipelineRequest {
                id,
                operation: Some(Operation::ReplaceWithVersion(ReplaceWithVersionRequest {
                    cache: "actionTokens".into(),
                    key: Bytes::from_static(b"t"),
                    value: Bytes::from(format!("{id}")),
                    expected_version: first,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }
    let mut outcomes = HashMap::new();
    for _ in 0..2 {
        let answer = answers.message().await.unwrap().unwrap();
        let Some(Answer::ReplaceWithVersion(replaced)) = answer.result else {
            panic!("{answer:?}")
        };
        outcomes.insert(answer.id, replaced);
    }
    assert!(outcomes[&1].replaced, "the first sent runs first");
    assert!(!outcomes[&2].replaced);
    let current = outcomes[&2].current.as_ref().unwrap();
    assert_eq!(current.value, Bytes::from_static(b"1"));
    assert_eq!(
        current.metadata.as_ref().unwrap().version,
        outcomes[&1].version
    );
}

#[tokio::test]
async fn the_client_library_pipelines_single_key_requests_unless_told_not_to() {
    let node = NodeProcess::start(NodeSpec::new("pipeline-client"))
        .await
        .unwrap();
    let pipelined = |node: &NodeProcess| {
        let addr = node.http_addr();
        async move {
            http::metric(addr, "sitegrid_pipeline_requests_total")
                .await
                .unwrap()
        }
    };
    let client = Client::connect([node.endpoint()]).await.unwrap();
    writes_read_back(&client, 200).await;
    assert_eq!(pipelined(&node).await, 400.0);

    let unary = Client::builder([node.endpoint()])
        .pipeline(false)
        .connect()
        .await
        .unwrap();
    unary
        .cache("sessions")
        .put("u", "v", WriteOptions::new())
        .await
        .unwrap();
    assert!(unary.cache("sessions").get("u").await.unwrap().is_some());
    assert_eq!(pipelined(&node).await, 400.0, "unary requests stay unary");
}

#[tokio::test]
async fn pipelined_writes_in_flight_when_a_node_dies_are_retried_on_the_others() {
    const WRITERS: usize = 32;
    const EACH: usize = 150;
    let mut site = Site::start(3, "").await.unwrap();
    let client = site.client_knowing_every_node().await.unwrap();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let sessions = client.cache("sessions");
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..EACH {
                    let key = format!("w{writer}-{i}");
                    let put = sessions
                        .put(key.clone(), "v", WriteOptions::new())
                        .await
                        .unwrap_or_else(|error| panic!("{key}: {error}"));
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    written.push((key, put.version));
                }
                written
            })
        })
        .collect();
    // A node dies while every writer has requests in flight, some on its pipelines.
    a_node_dies_midway(&mut site, writers, &acknowledged, WRITERS * EACH).await;
}

/// Kills the site's second node once a third of `total` writes to `sessions` are
/// `acknowledged`, then checks that the `writers` got all `total` acknowledged (their
/// keys and versions) and that both survivors hold each at its version.
async fn a_node_dies_midway(
    site: &mut Site,
    writers: Vec<tokio::task::JoinHandle<Vec<(String, u64)>>>,
    acknowledged: &AtomicUsize,
    total: usize,
) {
    eventually("a third of the writes", Duration::from_secs(60), || async {
        acknowledged.load(Ordering::Relaxed) >= total / 3
    })
    .await
    .unwrap();
    site.nodes[1].kill().unwrap();
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), total);
    for survivor in [&site.nodes[0], &site.nodes[2]] {
        let mut reader = CacheClient::new(survivor.channel().await.unwrap());
        for (key, version) in &written {
            let seen = reader.get(get("sessions", key)).await.unwrap().into_inner();
            assert_eq!(
                seen.metadata.map(|m| m.version),
                Some(*version),
                "{key} on {}",
                survivor.endpoint()
            );
        }
    }
}

/// A pipelined request with no answer by the request timeout fails with a timeout, kept
/// by its stream without a timer of its own; the stream goes on serving the others.
#[tokio::test]
async fn a_pipelined_request_unanswered_in_time_times_out_and_the_stream_goes_on() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let node = NodeProcess::start(NodeSpec {
        // Holds every write to a `slow-commit` key for 20 s.
        faults: vec!["slow-commit".to_string()],
        ..NodeSpec::new("pipeline-timeout")
    })
    .await
    .unwrap();
    let client = Client::builder([node.endpoint()])
        .request_timeout(TIMEOUT)
        .backoff(sitegrid_proto::Backoff {
            max_attempts: 1,
            ..Default::default()
        })
        .connect()
        .await
        .unwrap();
    let sessions = client.cache("sessions");

    let started = std::time::Instant::now();
    let slow = sessions.put("slow-commit-1", "v", WriteOptions::new());
    // Sent while the slow write waits, on the same stream, and answered.
    let quick = async {
        sessions
            .put("quick", "v", WriteOptions::new())
            .await
            .unwrap();
        sessions.get("quick").await.unwrap()
    };
    let (slow, quick) = tokio::join!(slow, quick);
    let waited = started.elapsed();
    assert!(quick.is_some());
    match slow {
        Err(sitegrid_client::Error::Timeout { after, .. }) => assert_eq!(after, TIMEOUT),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        waited >= TIMEOUT && waited < Duration::from_secs(10),
        "timed out after {waited:?}"
    );
    // Still one stream, still serving.
    sessions
        .put("after", "v", WriteOptions::new())
        .await
        .unwrap();
    assert!(sessions.get("after").await.unwrap().is_some());
    assert_eq!(
        http::metric(node.http_addr(), "sitegrid_pipeline_streams")
            .await
            .unwrap(),
        1.0
    );
}

/// Writes a stream's task started run to their end when its client goes away, as a unary
/// call's write does in a task of its own: a write must not stop halfway. Two writes the
/// fault holds back for 20 s, started one after the other: the first one's answer finds
/// the client gone while the second still runs.
#[tokio::test]
async fn pipelined_writes_run_to_their_end_when_their_client_goes_away() {
    let node = NodeProcess::start(NodeSpec {
        faults: vec!["slow-commit".to_string()],
        ..NodeSpec::new("pipeline-gone")
    })
    .await
    .unwrap();
    let keys = ["slow-commit-first", "slow-commit-second"];
    let admitted = |count: f64| {
        let node = &node;
        move || async move {
            http::metric(node.http_addr(), "sitegrid_pipeline_requests_total")
                .await
                .is_ok_and(|taken| taken >= count)
        }
    };
    {
        let mut client = CacheClient::new(node.channel().await.unwrap());
        let (requests, answers) = open_pipeline(&mut client).await.unwrap();
        for (id, key) in keys.iter().enumerate() {
            let request = PipelineRequest {
                id: id as u64,
                operation: Some(Operation::Put(put("sessions", key, "v"))),
            };
            requests.send(request).await.unwrap();
            eventually(
                "the node to take the write",
                Duration::from_secs(10),
                admitted(id as f64 + 1.0),
            )
            .await
            .unwrap();
        }
        drop((requests, answers, client));
    }
    let reader = CacheClient::new(node.channel().await.unwrap());
    for key in keys {
        eventually("the write to land", Duration::from_secs(60), || {
            let mut reader = reader.clone();
            async move {
                reader
                    .get(get("sessions", key))
                    .await
                    .is_ok_and(|found| found.into_inner().found)
            }
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_pipeline_batch_message_carries_many_requests_each_answered_by_id() {
    const PER_KEY: usize = 4;
    let node = NodeProcess::start(NodeSpec::new("pipeline-batch"))
        .await
        .unwrap();
    let mut client = CacheClient::new(node.channel().await.unwrap());
    let (requests, receiver) = tokio::sync::mpsc::channel(16);
    let mut answers = client
        .pipeline_batch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    // Puts to KEYS keys, PER_KEY each and interleaved, and one naming no operation, in
    // one message; then a message of more requests than a message may carry.
    let mut batch = Vec::new();
    let mut sent = HashMap::new();
    for round in 0..PER_KEY {
        for key in 0..KEYS {
            let id = batch.len() as u64 + 1;
            let request = put("work", &format!("k{key}"), &format!("{round}"));
            batch.push(PipelineRequest {
                id,
                operation: Some(Operation::Put(request)),
            });
            sent.insert(id, (key, round));
        }
    }
    batch.push(PipelineRequest {
        id: 1_000_000,
        operation: None,
    });
    let first = batch.len();
    requests
        .send(PipelineBatchRequest { requests: batch })
        .await
        .unwrap();
    let mut puts = PutsAnswered::new(sent, PER_KEY);
    let mut messages = 0;
    let mut answered = 0;
    while answered < first {
        let message = answers.message().await.unwrap().expect("answers");
        messages += 1;
        answered += message.responses.len();
        message
            .responses
            .into_iter()
            .for_each(|answer| puts.take(answer));
    }
    puts.assert_all_answered_in_order();
    assert_eq!(
        puts.errors[&1_000_000],
        Code::InvalidArgument,
        "no operation"
    );
    assert!(
        messages * 4 < first,
        "answers ready together leave together: {first} answers in {messages} messages"
    );

    // Beyond the most a message carries, each request is refused; the stream goes on.
    const MOST: usize = 1024;
    let oversized = (0..MOST as u64 + 3)
        .map(|id| PipelineRequest {
            id,
            operation: Some(Operation::Get(get("work", "k7"))),
        })
        .collect();
    requests
        .send(PipelineBatchRequest {
            requests: oversized,
        })
        .await
        .unwrap();
    let mut found = 0;
    let mut refused = Vec::new();
    while found + refused.len() < MOST + 3 {
        for answer in answers.message().await.unwrap().expect("answers").responses {
            match answer.result.unwrap() {
                Answer::Get(get) => {
                    assert_eq!(get.value, Bytes::from(format!("{}", PER_KEY - 1)));
                    found += 1;
                }
                Answer::Error(error) => {
                    assert_eq!(Code::from(error.code), Code::InvalidArgument, "{error:?}");
                    refused.push(answer.id);
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    refused.sort_unstable();
    assert_eq!(refused, [MOST as u64, MOST as u64 + 1, MOST as u64 + 2]);
    assert_eq!(found, MOST);
}

#[tokio::test]
async fn the_client_library_pipelines_on_a_node_without_pipeline_batch() {
    // The node answers PipelineBatch with UNIMPLEMENTED, as one of the previous version
    // does: the client must pipeline on Pipeline, not fail its requests.
    let node = NodeProcess::start(NodeSpec::new("pipeline-old").with_fault("no-pipeline-batch"))
        .await
        .unwrap();
    let client = Client::connect([node.endpoint()]).await.unwrap();
    writes_read_back(&client, 100).await;
    let pipelined = http::metric(node.http_addr(), "sitegrid_pipeline_requests_total")
        .await
        .unwrap();
    assert_eq!(pipelined, 200.0, "pipelined, not unary");
}

#[tokio::test]
async fn pipelined_requests_and_answers_larger_together_than_a_message_may_be_all_succeed() {
    // 24 values of 1 MiB: in flight together they are more than the node takes in one
    // message (about 17 MiB by default), each alone far less. Without retries, so a
    // broken stream fails the test.
    const VALUES: usize = 24;
    let node = NodeProcess::start(NodeSpec::new("pipeline-large"))
        .await
        .unwrap();
    let client = Client::builder([node.endpoint()])
        .backoff(sitegrid_client::Backoff {
            max_attempts: 1,
            ..Default::default()
        })
        .connect()
        .await
        .unwrap();
    let work = client.cache("work");
    let value = |i: usize| Bytes::from(vec![b'a' + i as u8; 1 << 20]);
    let puts = (0..VALUES).map(|i| work.put(format!("large{i}"), value(i), WriteOptions::new()));
    let versions = futures::future::try_join_all(puts).await.unwrap();
    let gets = (0..VALUES).map(|i| work.get(format!("large{i}")));
    let found = futures::future::try_join_all(gets).await.unwrap();
    for (i, (found, put)) in found.into_iter().zip(versions).enumerate() {
        let found = found.expect("written");
        assert_eq!(found.value, value(i));
        assert_eq!(found.metadata.version, put.version);
    }
}

/// One batch of every kind of single-key request, chained on a few keys: each answered
/// as its own call would be, in the order added for one key, one bad request failing
/// alone.
async fn a_batch_of_each_request_kind(client: &Client, prefix: &str) -> usize {
    let key = |name: &str| format!("{prefix}-{name}");
    let any = WriteOptions::new;
    let mut batch = client.cache("work").batch();
    batch
        .put(key("a"), "1", any())
        .get(key("a"))
        .put_if_absent(key("a"), "x", any())
        .put_if_absent(key("b"), "2", any())
        .replace(key("c"), "3", any())
        .replace(key("b"), "4", any())
        .replace_with_version(key("a"), "5", 1, any())
        .remove(key("none"), any())
        .remove_with_version(key("b"), 1, any())
        .put("", "empty key", any())
        .remove(key("a"), any())
        .get(key("a"));
    let sent = batch.len();
    let mut answers = batch.send().await.into_iter();
    let mut next = || answers.next().expect("an answer per request");
    let value = |entry: &Option<Versioned>| entry.as_ref().map(|e| e.value.clone());
    let Ok(Outcome::Put(put_a)) = next() else {
        panic!("put a")
    };
    let Ok(Outcome::Get(got_a)) = next() else {
        panic!("get a")
    };
    assert_eq!(
        got_a.as_ref().map(|e| e.metadata.version),
        Some(put_a.version)
    );
    assert_eq!(
        value(&got_a),
        Some(Bytes::from("1")),
        "the put before it, read"
    );
    let Ok(Outcome::PutIfAbsent(PutIfAbsentOutcome::Present(there))) = next() else {
        panic!("a is present")
    };
    assert_eq!(there.metadata.version, put_a.version);
    assert!(matches!(
        next(),
        Ok(Outcome::PutIfAbsent(PutIfAbsentOutcome::Stored { .. }))
    ));
    assert!(matches!(
        next(),
        Ok(Outcome::Replace(ReplaceOutcome::Absent))
    ));
    assert!(matches!(
        next(),
        Ok(Outcome::Replace(ReplaceOutcome::Replaced { .. }))
    ));
    let Ok(Outcome::ReplaceWithVersion(ReplaceWithVersionOutcome::NotReplaced { current })) =
        next()
    else {
        panic!("a has another version")
    };
    assert_eq!(value(&current), Some(Bytes::from("1")));
    assert!(matches!(next(), Ok(Outcome::Remove(RemoveOutcome::Absent))));
    let Ok(Outcome::RemoveWithVersion(RemoveWithVersionOutcome::NotRemoved { current })) = next()
    else {
        panic!("b has another version")
    };
    assert_eq!(value(&current), Some(Bytes::from("4")), "replaced earlier");
    let bad = next().expect_err("an empty key");
    assert_eq!(
        bad.code(),
        sitegrid_client::ErrorCode::InvalidArgument,
        "{bad}"
    );
    let Ok(Outcome::Remove(RemoveOutcome::Removed { previous, .. })) = next() else {
        panic!("remove a")
    };
    assert_eq!(value(&previous), Some(Bytes::from("1")));
    assert!(
        matches!(next(), Ok(Outcome::Get(None))),
        "removed just before"
    );
    sent
}

/// More requests than a stream's window holds: those to one key still run in the order
/// added.
async fn a_batch_larger_than_a_window(client: &Client) {
    const KEYS: usize = 300;
    let mut batch = client.cache("work").batch();
    for i in 0..KEYS {
        batch.put(format!("window-{i}"), format!("{i}"), WriteOptions::new());
    }
    for i in 0..KEYS {
        batch.get(format!("window-{i}"));
    }
    let answers = batch.send().await;
    for i in 0..KEYS {
        let (Ok(Outcome::Put(put)), Ok(Outcome::Get(got))) = (&answers[i], &answers[KEYS + i])
        else {
            panic!("window-{i}: {:?} {:?}", answers[i], answers[KEYS + i]);
        };
        let got = got.as_ref().map(|got| got.metadata.version);
        assert_eq!(got, Some(put.version), "window-{i} read after its write");
    }
}

#[tokio::test]
async fn a_batch_answers_each_request_as_its_own_call_would_pipelined_or_unary() {
    let node = NodeProcess::start(NodeSpec::new("pipeline-batch"))
        .await
        .unwrap();
    let pipelined = || http::metric(node.http_addr(), "sitegrid_pipeline_requests_total");
    let client = Client::connect([node.endpoint()]).await.unwrap();
    let sent = a_batch_of_each_request_kind(&client, "pipelined").await;
    assert_eq!(pipelined().await.unwrap(), sent as f64, "on the pipeline");
    a_batch_larger_than_a_window(&client).await;
    let before = pipelined().await.unwrap();

    let unary = Client::builder([node.endpoint()])
        .pipeline(false)
        .connect()
        .await
        .unwrap();
    a_batch_of_each_request_kind(&unary, "unary").await;
    a_batch_larger_than_a_window(&unary).await;
    assert_eq!(pipelined().await.unwrap(), before, "unary calls");

    // A node without PipelineBatch answers a batch one request to a message.
    let old =
        NodeProcess::start(NodeSpec::new("pipeline-batch-old").with_fault("no-pipeline-batch"))
            .await
            .unwrap();
    let client = Client::connect([old.endpoint()]).await.unwrap();
    a_batch_of_each_request_kind(&client, "batchless").await;
    let pipelined = http::metric(old.http_addr(), "sitegrid_pipeline_requests_total");
    assert_eq!(pipelined.await.unwrap(), sent as f64, "on Pipeline");

    let empty = client.cache("work").batch();
    assert!(empty.is_empty() && empty.send().await.is_empty());
}

#[tokio::test]
async fn batched_writes_in_flight_when_a_node_dies_are_retried_on_the_others() {
    const WRITERS: usize = 8;
    const BATCHES: usize = 40;
    const EACH: usize = 16;
    let mut site = Site::start(3, "").await.unwrap();
    let client = site.client_knowing_every_node().await.unwrap();
    // Requests to one key keep their order though the batch spreads over the nodes.
    a_batch_of_each_request_kind(&client, "site").await;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let sessions = client.cache("sessions");
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                let mut written = Vec::new();
                for round in 0..BATCHES {
                    let keys: Vec<_> = (0..EACH)
                        .map(|i| format!("w{writer}-{round}-{i}"))
                        .collect();
                    let mut batch = sessions.batch();
                    for key in &keys {
                        batch.put(key.clone(), "v", WriteOptions::new());
                    }
                    for (key, answer) in keys.into_iter().zip(batch.send().await) {
                        match answer {
                            Ok(Outcome::Put(put)) => written.push((key, put.version)),
                            other => panic!("{key}: {other:?}"),
                        }
                    }
                    acknowledged.fetch_add(EACH, Ordering::Relaxed);
                }
                written
            })
        })
        .collect();
    // A node dies while every writer has a batch in flight, part of it on its pipelines.
    a_node_dies_midway(&mut site, writers, &acknowledged, WRITERS * BATCHES * EACH).await;
}
