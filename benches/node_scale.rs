//! The node agent at the design's scale: 10,000 secrets and 500 enabled pods.
//! Measures, side by side in one run, the time of a full sync (desired state,
//! map records, diff) when one secret changes, at 1x, 10x and 100x the
//! secret count, and the process's resident memory after building the
//! largest store. Every change must produce exactly one secret update.
//!
//! Run: cargo bench --bench node_scale

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kloak::controller::agent::{Agent, Feed, MapSink};
use kloak::dataplane::loader::LoaderError;
use kloak::dataplane::maps::{MapName, MapOp, Records};
use kloak::secrets::shadow;
use kloak::secrets::store::PodBinding;
use serde_json::json;

const PODS: usize = 500;
const SECRETS_PER_POD: usize = 20;
const CHANGES: usize = 20;

/// Counts what each sync would write.
struct Counter(std::sync::Mutex<Vec<(MapName, bool)>>);

impl MapSink for Counter {
    fn apply(&self, ops: Vec<MapOp>) -> impl Future<Output = Result<(), LoaderError>> + Send {
        if let Ok(mut seen) = self.0.lock() {
            *seen = ops.iter().map(|op| (op.map, op.value.is_some())).collect();
        }
        async { Ok(()) }
    }
}

fn source(namespace: &str, name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
            "labels": {"getkloak.io/enabled": "true"},
            "annotations": {"getkloak.io/hosts": "api.example.com,*.example.org", "getkloak.io/port": "443"}},
        "data": {"API_KEY": ByteString(value.as_bytes().to_vec())}
    }))
    .expect("valid secret")
}

/// A realistic key: 32 pseudo-random letters and digits per secret, then a
/// version in digits 0-2 (all 5 Huffman bits), so a change keeps the value's
/// length and Huffman length, and with it the placeholder.
fn value(i: usize, version: usize) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = String::from("sk-proj-");
    for _ in 0..32 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push(char::from(ALNUM[(state % ALNUM.len() as u64) as usize]));
    }
    let mut n = version;
    for _ in 0..4 {
        text.push(char::from(b'0' + (n % 3) as u8));
        n /= 3;
    }
    text
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Scale {
    secrets: usize,
    median: Duration,
    max: Duration,
    /// Resident memory while this agent is alive, after its changes.
    rss_kib: u64,
}

async fn measure(secrets: usize) -> Scale {
    let sink = Counter(std::sync::Mutex::new(Vec::new()));
    let mut agent = Agent::new(
        sink,
        Records::new(),
        Feed::all(&[String::new()]),
        false,
        600,
    );
    for feed in Feed::all(&[String::new()]) {
        agent.begin_listing(feed.clone());
        agent.end_listing(feed);
    }
    let namespaces = PODS.min(secrets);
    for i in 0..secrets {
        let namespace = format!("ns-{}", i % namespaces);
        let name = format!("secret-{i}");
        let src = source(&namespace, &name, &value(i, 0));
        let plan = shadow::plan(&src, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
        agent.source_applied(src.clone(), 0);
        agent.shadow_applied(shadow::shadow_secret(&src, &plan));
    }
    for pod in 0..PODS {
        let namespace = format!("ns-{}", pod % namespaces);
        // Each pod references the secrets of its namespace, up to SECRETS_PER_POD.
        let names = (0..secrets)
            .filter(|i| i % namespaces == pod % namespaces)
            .take(SECRETS_PER_POD)
            .map(|i| format!("secret-{i}"))
            .collect();
        agent.pod_applied(
            format!("pod-{pod}"),
            PodBinding {
                namespace,
                secrets: names,
                cgroups: [10_000 + pod as u64].into(),
            },
        );
    }
    agent.sync(0).await.expect("initial sync");
    let mut times = Vec::with_capacity(CHANGES);
    for change in 1..=CHANGES {
        let i = (change * 7919) % secrets;
        let src = source(
            &format!("ns-{}", i % namespaces),
            &format!("secret-{i}"),
            &value(i, change),
        );
        let started = Instant::now();
        agent.source_applied(src, 0);
        let report = agent.sync(0).await.expect("sync");
        times.push(started.elapsed());
        assert_eq!(report.ops, 1, "one secret record per change");
    }
    times.sort();
    let rss_kib = rss_kib();
    drop(agent);
    Scale {
        secrets,
        median: times[times.len() / 2],
        max: times[times.len() - 1],
        rss_kib,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let baseline_rss = rss_kib();
    let mut results = Vec::new();
    for secrets in [100, 1_000, 10_000] {
        results.push(measure(secrets).await);
    }
    let base = results[0].median.as_secs_f64();
    for r in &results {
        println!(
            "node scale: {:>6} secrets, {PODS} pods: one secret change -> maps diffed in median {:.2} ms (max {:.2} ms), {:.1}x the 100-secret time",
            r.secrets,
            r.median.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            r.median.as_secs_f64() / base
        );
    }
    for r in &results {
        println!(
            "node scale: {:>6} secrets: resident memory with the agent alive {} MiB (process start {} MiB; target at 10,000: under 64 MiB)",
            r.secrets,
            r.rss_kib / 1024,
            baseline_rss / 1024
        );
    }
}
