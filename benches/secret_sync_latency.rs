//! Secret change to kernel-map update, through the controller's own code
//! path: kube's watcher against a mock API server, the agent's event
//! handling, the desired-state diff, and a map sink that timestamps what
//! it receives. Prints percentiles; every change must produce exactly the
//! expected update (checked), but no time limit is asserted.
//!
//! Run: cargo bench --bench secret_sync_latency

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc as stream_channel;
use futures::StreamExt;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kloak::controller::agent::{Agent, Feed, MapSink};
use kloak::controller::feeds::{self, Update};
use kloak::dataplane::loader::LoaderError;
use kloak::dataplane::maps::{MapName, MapOp, Records};
use kloak::secrets::shadow;
use serde_json::json;
use tokio::sync::mpsc;

type MockBody = BoxBody<Bytes, Infallible>;
type WatchFeed = stream_channel::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

const CHANGES: usize = 300;

/// Timestamps every batch of map updates.
struct Sink(mpsc::UnboundedSender<(Instant, Vec<(MapName, bool)>)>);

impl MapSink for Sink {
    fn apply(&self, ops: Vec<MapOp>) -> impl Future<Output = Result<(), LoaderError>> + Send {
        let batch = ops.iter().map(|op| (op.map, op.value.is_some())).collect();
        let _ = self.0.send((Instant::now(), batch));
        async { Ok(()) }
    }
}

fn source(value: &str, version: u64) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "openai", "namespace": "agents", "uid": "7d1f0000-0000-4000-8000-000000000001",
            "resourceVersion": version.to_string(),
            "labels": {"getkloak.io/enabled": "true"},
            "annotations": {"getkloak.io/hosts": "api.openai.com"}},
        "data": {"API_KEY": ByteString(value.as_bytes().to_vec())}
    }))
    .expect("valid secret")
}

fn list(items: Vec<serde_json::Value>) -> MockBody {
    full(
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

fn full(value: serde_json::Value) -> MockBody {
    Full::new(Bytes::from(value.to_string())).boxed()
}

/// Serves list and watch calls; watch bodies stay open and are fed through channels.
fn mock_api(
    initial_source: Secret,
    initial_shadow: Secret,
) -> (kube::Client, tokio::sync::oneshot::Receiver<WatchFeed>) {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    let (source_watch_tx, source_watch_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut source_watch_tx = Some(source_watch_tx);
        let mut idle_watches = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or("").to_owned();
            let watching = query.contains("watch=true");
            let body = match (path.as_str(), watching) {
                ("/api/v1/secrets", false) if query.contains("enabled") => {
                    list(vec![serde_json::to_value(&initial_source).expect("json")])
                }
                ("/api/v1/secrets", false) => {
                    list(vec![serde_json::to_value(&initial_shadow).expect("json")])
                }
                ("/api/v1/pods", false) => list(vec![]),
                (_, true) => {
                    let (tx, rx) = stream_channel::unbounded();
                    let body = BodyExt::boxed(StreamBody::new(rx));
                    match (
                        path.as_str(),
                        query.contains("enabled"),
                        source_watch_tx.take(),
                    ) {
                        ("/api/v1/secrets", true, Some(feed)) => {
                            let _ = feed.send(tx);
                        }
                        (_, _, unused) => {
                            source_watch_tx = source_watch_tx.or(unused);
                            idle_watches.push(tx);
                        }
                    }
                    body
                }
                _ => panic!("unexpected call {path}?{query}"),
            };
            respond.send_response(
                Response::builder()
                    .status(200)
                    .body(body)
                    .expect("response"),
            );
        }
    });
    (kube::Client::new(service, "default"), source_watch_rx)
}

/// `i` in 16 base-3 digits: '0', '1' and '2' all cost 5 HPACK Huffman bits,
/// so every value has the same Huffman length and keeps its placeholder.
fn base3(mut i: usize) -> String {
    let mut digits = [b'0'; 16];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (i % 3) as u8;
        i /= 3;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Rotations keep the value's length and Huffman length, so the shadow's
    // placeholder stays and the agent maps the new value at once.
    let values: Vec<String> = (0..=CHANGES)
        .map(|i| format!("sk-live-{}", base3(i)))
        .collect();
    let first = source(&values[0], 1);
    let plan = shadow::plan(&first, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
    let mut shadow_secret = shadow::shadow_secret(&first, &plan);
    shadow_secret.metadata.resource_version = Some("1".into());
    let (client, source_watch) = mock_api(first, shadow_secret);
    let (sink_tx, mut sink_rx) = mpsc::unbounded_channel();
    let scopes = feeds::scopes(&[]);
    let mut agent = Agent::new(
        Sink(sink_tx),
        Records::new(),
        Feed::all(&scopes),
        false,
        600,
    );
    let mut updates = feeds::watch_all(&client, &[], "node-a", None);
    let driver = tokio::spawn(async move {
        while let Some(update) = updates.next().await {
            match update {
                Update::Source(scope, event) => {
                    agent.secret_event(Feed::Sources(scope), event, 0);
                }
                Update::Shadow(scope, event) => {
                    agent.secret_event(Feed::Shadows(scope), event, 0);
                }
                Update::Pod(event) => match *event {
                    kube::runtime::watcher::Event::Init => agent.begin_listing(Feed::Pods),
                    kube::runtime::watcher::Event::InitDone => {
                        agent.end_listing(Feed::Pods);
                    }
                    _ => {}
                },
                // No DaemonSet is watched here (watch_all got no installation).
                Update::Installation(_) => {}
                Update::Error(feed, err) => panic!("watch {feed} failed: {err}"),
            }
            agent.sync(0).await.expect("sync");
        }
    });
    let feed = source_watch.await.expect("the source watch started");
    let (_, initial) = sink_rx.recv().await.expect("initial sync");
    assert!(
        initial.contains(&(MapName::Secrets, true)),
        "initial sync maps the secret"
    );

    let mut latencies = Vec::with_capacity(CHANGES);
    for (i, value) in values.iter().enumerate().skip(1) {
        let event = json!({"type": "MODIFIED", "object": source(value, 1 + i as u64)});
        let line = Bytes::from(format!("{event}\n"));
        let sent = Instant::now();
        feed.unbounded_send(Ok(Frame::data(line)))
            .expect("watch open");
        let (applied, batch) = sink_rx.recv().await.expect("map update");
        assert_eq!(
            batch,
            vec![(MapName::Secrets, true)],
            "one secret record rewritten per change"
        );
        latencies.push(applied - sent);
    }
    driver.abort();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let by_key: BTreeMap<&str, Duration> = [
        ("p50", percentile(&latencies, 0.5)),
        ("p95", percentile(&latencies, 0.95)),
        ("p99", percentile(&latencies, 0.99)),
        ("max", *latencies.last().expect("samples")),
    ]
    .into();
    println!(
        "secret change -> map update, {CHANGES} changes through watcher + agent + diff: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target: under 200 ms; the original polls every 5 s)",
        ms(by_key["p50"]), ms(by_key["p95"]), ms(by_key["p99"]), ms(by_key["max"])
    );
}
