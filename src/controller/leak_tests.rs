//! S1 across the controller: at trace level, no log line, Kubernetes Event
//! or error carries a real value, through creation, refusal, rotation and
//! API failure.

use std::sync::{Arc, Mutex};

use kube::runtime::events::{Recorder, Reporter};
use serde_json::json;

use super::agent::{Agent, Feed, MapSink};
use super::mock::{conflict, scripted, Call};
use super::shadows::ShadowWriter;
use crate::dataplane::loader::LoaderError;
use crate::dataplane::maps::{MapOp, Records};
use crate::k8s;
use crate::secrets::shadow::tests::source;
use crate::secrets::store::PodBinding;
use crate::secrets::SecretRef;

const REAL: &str = "sk-leakcheck-REALVALUE-0123456789";
const ROTATED: &str = "sk-leakcheck-ROTATEDVALUE-0123456789-longer";
const SHORT: &str = "short-REAL1";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Discard;

impl MapSink for Discard {
    async fn apply(&self, _ops: Vec<MapOp>) -> Result<(), LoaderError> {
        Ok(())
    }
}

#[test]
fn no_real_value_in_logs_events_or_errors_at_trace_level() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bodies = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let hosts = [(k8s::HOSTS_ANNOTATION, "api.openai.com")];
            let good = source(&[("API_KEY", REAL)], &hosts);
            let rotated = source(&[("API_KEY", ROTATED)], &hosts);
            let bad = source(&[("API_KEY", SHORT)], &hosts);
            let secrets = "/api/v1/namespaces/agents/secrets";
            let events = "/apis/events.k8s.io/v1/namespaces/agents/events";
            let (client, server) = scripted(vec![
                Call::new("POST", secrets, 201, json!({})),
                Call::new("PUT", format!("{secrets}/openai-kloak"), 409, conflict()),
                Call::new("POST", events, 201, json!({})),
            ]);
            let recorder = Recorder::new(
                client.clone(),
                Reporter {
                    controller: "kloak".into(),
                    instance: Some("agent".into()),
                },
            );
            let (_, leader) = tokio::sync::watch::channel(true);
            let writer = ShadowWriter::new(client, recorder, leader, false, 600);
            let key = SecretRef::new("agents", "openai");

            // The leader creates the shadow; the agent maps it.
            assert!(writer.reconcile(&key, Some(&good), None, 0).await.is_ok());
            let plan =
                crate::secrets::shadow::plan(&good, None, false, 0, 600, &mut rand::rngs::OsRng)
                    .expect("plan");
            let mut shadow = crate::secrets::shadow::shadow_secret(&good, &plan);
            shadow.metadata.resource_version = Some("1".into());
            let mut agent = Agent::new(
                Discard,
                Records::new(),
                Feed::all(&[String::new()]),
                false,
                600,
            );
            for feed in Feed::all(&[String::new()]) {
                agent.begin_listing(feed.clone());
                agent.end_listing(feed);
            }
            agent.source_applied(good.clone(), 0);
            agent.shadow_applied(shadow.clone());
            agent.pod_applied(
                "uid".into(),
                PodBinding {
                    namespace: "agents".into(),
                    secrets: ["openai".to_owned()].into(),
                    cgroups: [7].into(),
                },
            );
            agent.sync(0).await.expect("sync");

            // A rotation whose update conflicts: the error is logged by the caller.
            agent.source_applied(rotated.clone(), 10);
            agent.sync(10).await.expect("sync");
            let err = writer
                .reconcile(&key, Some(&rotated), Some(&shadow), 10)
                .await
                .expect_err("conflict");
            tracing::warn!(%err, debug = ?err, "shadow write failed");

            // Bad input: refused with an Event.
            assert!(writer.reconcile(&key, Some(&bad), None, 20).await.is_ok());
            agent.source_applied(bad, 20);
            agent.sync(20).await.expect("sync");
            drop(writer);
            server.await.expect("every call made")
        })
    });
    let text =
        String::from_utf8(logs.0.lock().map(|b| b.clone()).unwrap_or_default()).expect("utf8");
    assert!(text.contains("TRACE"), "trace logging was on:\n{text}");
    assert!(
        text.contains("shadow written"),
        "decisions are logged:\n{text}"
    );
    let api = serde_json::to_string(&bodies).expect("json");
    for value in [REAL, ROTATED, SHORT] {
        assert!(
            !text.contains(value),
            "a real value reached the logs:\n{text}"
        );
        assert!(
            !api.contains(value),
            "a real value reached the API (shadows or Events)"
        );
        let encoded = serde_json::to_string(&k8s_openapi::ByteString(value.as_bytes().to_vec()))
            .expect("json");
        assert!(
            !api.contains(encoded.trim_matches('"')),
            "a real value reached the API in base64"
        );
    }
}
