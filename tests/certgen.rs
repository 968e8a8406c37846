//! `kloak certgen` against kube's mock API server: every test lists the exact
//! calls certgen must make, in order, and what the API server answers. An
//! unexpected call, a missing one or a wrong body fails the test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::client::Body;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use kloak::certs::{
    assess, certgen, generate, CertBundle, CertgenError, Outcome, ReplaceReason, SecretAction,
    Verdict, WebhookIdentity, CA_FILE, CERT_FILE, KEY_FILE,
};
use kloak::cli::CertgenArgs;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const SECRETS: &str = "/api/v1/namespaces/kloak-system/secrets";
const SECRET: &str = "/api/v1/namespaces/kloak-system/secrets/kloak-webhook-tls";
const CONFIG: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/kloak";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn identity() -> WebhookIdentity {
    WebhookIdentity::new("kloak-webhook", "kloak-system")
}

fn args(output_dir: Option<PathBuf>) -> CertgenArgs {
    CertgenArgs {
        namespace: "kloak-system".into(),
        service: "kloak-webhook".into(),
        secret: "kloak-webhook-tls".into(),
        webhook_config: "kloak".into(),
        min_validity_days: 30,
        output_dir,
    }
}

/// What certgen sent in one call.
struct Seen {
    body: Value,
    content_type: String,
    query: String,
}

type Reply = Box<dyn FnOnce(Seen) -> (StatusCode, Value) + Send>;

/// One expected call and the API server's answer to it.
struct Call {
    method: Method,
    path: &'static str,
    reply: Reply,
}

fn call(
    method: Method,
    path: &'static str,
    reply: impl FnOnce(Seen) -> (StatusCode, Value) + Send + 'static,
) -> Call {
    Call {
        method,
        path,
        reply: Box::new(reply),
    }
}

/// Runs certgen against exactly `calls`, in order.
async fn scenario(args: CertgenArgs, calls: Vec<Call>) -> anyhow::Result<Outcome> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        for (step, expected) in calls.into_iter().enumerate() {
            let Some((request, respond)) = handle.next_request().await else {
                panic!(
                    "call {step}: expected {} {}, but certgen stopped",
                    expected.method, expected.path
                );
            };
            let (parts, body) = request.into_parts();
            assert_eq!(
                (&parts.method, parts.uri.path()),
                (&expected.method, expected.path),
                "call {step}"
            );
            let bytes = body.collect_bytes().await.expect("request body");
            let seen = Seen {
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON request body")
                },
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
            };
            let (status, reply) = (expected.reply)(seen);
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
                .expect("response");
            respond.send_response(response);
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected call: {} {}", request.method(), request.uri());
        }
    });
    let result = certgen(client, &args, now()).await;
    if let Err(err) = server.await {
        std::panic::resume_unwind(err.into_panic());
    }
    result
}

fn failure(code: u16, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).expect("status code"),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message,
        }),
    )
}

fn ok(body: Value) -> (StatusCode, Value) {
    (StatusCode::OK, body)
}

fn secret_json(bundle: &CertBundle, resource_version: &str) -> Value {
    let data = [
        (CA_FILE, bundle.ca_pem.as_bytes()),
        (CERT_FILE, bundle.cert_pem.as_bytes()),
        (KEY_FILE, bundle.key_pem.as_bytes()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), ByteString(value.to_vec())))
    .collect();
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some("kloak-webhook-tls".into()),
            namespace: Some("kloak-system".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    })
    .expect("secret JSON")
}

fn bundle_in(body: &Value) -> CertBundle {
    let secret: Secret = serde_json::from_value(body.clone()).expect("a Secret");
    let data: BTreeMap<String, ByteString> = secret.data.expect("data");
    let text = |key: &str| String::from_utf8(data[key].0.clone()).expect("UTF-8");
    CertBundle {
        ca_pem: text(CA_FILE),
        cert_pem: text(CERT_FILE),
        key_pem: Zeroizing::new(text(KEY_FILE)),
    }
}

fn config_json(resource_version: &str, bundles: &[Option<&str>]) -> Value {
    serde_json::to_value(MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some("kloak".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        webhooks: Some(
            bundles
                .iter()
                .enumerate()
                .map(|(index, bundle)| MutatingWebhook {
                    name: format!("hook{index}.getkloak.io"),
                    client_config: WebhookClientConfig {
                        ca_bundle: bundle.map(|pem| ByteString(pem.as_bytes().to_vec())),
                        ..WebhookClientConfig::default()
                    },
                    ..MutatingWebhook::default()
                })
                .collect(),
        ),
    })
    .expect("configuration JSON")
}

/// The JSON patch certgen must send: the version test, then one `add` per
/// listed webhook index.
fn expected_patch(resource_version: &str, indices: &[usize], ca_pem: &str) -> Value {
    let encoded = serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).expect("base64");
    let mut operations =
        vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})];
    operations.extend(indices.iter().map(|index| {
        json!({"op": "add", "path": format!("/webhooks/{index}/clientConfig/caBundle"), "value": encoded})
    }));
    Value::Array(operations)
}

fn assert_json_patch(seen: &Seen, expected: Value) {
    assert_eq!(seen.content_type, "application/json-patch+json");
    assert!(seen.query.contains("fieldManager=kloak"), "{}", seen.query);
    assert_eq!(seen.body, expected);
}

fn ca_count(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes()).count()
}

fn valid() -> CertBundle {
    generate(&identity(), now() - 10 * DAY).expect("generates")
}

type Slot = Arc<Mutex<Option<CertBundle>>>;

fn slot() -> Slot {
    Arc::new(Mutex::new(None))
}

fn taken(slot: &Slot) -> CertBundle {
    slot.lock()
        .expect("lock")
        .clone()
        .expect("a bundle was written")
}

#[tokio::test]
async fn first_run_creates_the_secret_and_patches_every_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let posted = slot();
    let (posted_w, posted_r) = (posted.clone(), posted.clone());
    let outcome = scenario(
        args(Some(dir.path().to_path_buf())),
        vec![
            call(Method::GET, SECRET, |_| {
                failure(404, "NotFound", "not found")
            }),
            call(Method::POST, SECRETS, move |seen| {
                assert!(seen.query.contains("fieldManager=kloak"), "{}", seen.query);
                assert_eq!(seen.body["type"], "kubernetes.io/tls");
                assert_eq!(seen.body["metadata"]["name"], "kloak-webhook-tls");
                assert_eq!(seen.body["metadata"]["namespace"], "kloak-system");
                let bundle = bundle_in(&seen.body);
                assert_eq!(
                    assess(Some(&bundle), &identity(), now(), 30 * DAY),
                    Verdict::Reuse
                );
                assert_eq!(ca_count(&bundle.ca_pem), 1);
                let mut created = seen.body.clone();
                created["metadata"]["resourceVersion"] = json!("1");
                *posted_w.lock().expect("lock") = Some(bundle);
                (StatusCode::CREATED, created)
            }),
            call(Method::GET, CONFIG, |_| ok(config_json("7", &[None, None]))),
            call(Method::PATCH, CONFIG, move |seen| {
                let ca = taken(&posted_r).ca_pem;
                assert_json_patch(&seen, expected_patch("7", &[0, 1], &ca));
                ok(config_json("8", &[Some(&ca), Some(&ca)]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");

    let bundle = taken(&posted);
    assert_eq!(outcome.secret, SecretAction::Created);
    assert_eq!(outcome.webhooks_patched, 2);
    assert_eq!(outcome.bundle, bundle);
    let read = |name| std::fs::read_to_string(dir.path().join(name)).expect("written");
    assert_eq!(read(CA_FILE), bundle.ca_pem);
    assert_eq!(read(CERT_FILE), bundle.cert_pem);
    assert_eq!(read(KEY_FILE), *bundle.key_pem);
    let key_mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
}

#[tokio::test]
async fn rerun_with_everything_valid_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = valid();
    let (secret, ca) = (secret_json(&stored, "5"), stored.ca_pem.clone());
    let outcome = scenario(
        args(Some(dir.path().to_path_buf())),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, move |_| {
                ok(config_json("7", &[Some(&ca), Some(&ca)]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");

    assert_eq!(outcome.secret, SecretAction::Reused);
    assert_eq!(outcome.webhooks_patched, 0);
    assert_eq!(outcome.bundle, stored);
    // The init container hands the webhook the Secret's bundle, not a new one.
    let key = std::fs::read_to_string(dir.path().join(KEY_FILE)).expect("written");
    assert_eq!(key, *stored.key_pem);
}

#[tokio::test]
async fn an_expiring_certificate_is_replaced_and_both_cas_are_trusted() {
    let old = generate(&identity(), now() - 340 * DAY).expect("generates");
    let (secret, old_ca, old_ca_r) = (
        secret_json(&old, "5"),
        old.ca_pem.clone(),
        old.ca_pem.clone(),
    );
    let put = slot();
    let (put_w, put_p) = (put.clone(), put.clone());
    let outcome = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::PUT, SECRET, move |seen| {
                assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
                assert_eq!(seen.body["type"], "kubernetes.io/tls");
                let bundle = bundle_in(&seen.body);
                assert_eq!(
                    assess(Some(&bundle), &identity(), now(), 30 * DAY),
                    Verdict::Reuse
                );
                assert_eq!(ca_count(&bundle.ca_pem), 2, "new CA plus the old one");
                assert!(bundle.ca_pem.ends_with(&old_ca), "the old CA comes second");
                let mut updated = seen.body.clone();
                updated["metadata"]["resourceVersion"] = json!("6");
                *put_w.lock().expect("lock") = Some(bundle);
                ok(updated)
            }),
            call(Method::GET, CONFIG, move |_| {
                ok(config_json("7", &[Some(&old_ca_r), Some(&old_ca_r)]))
            }),
            call(Method::PATCH, CONFIG, move |seen| {
                assert_json_patch(&seen, expected_patch("7", &[0, 1], &taken(&put_p).ca_pem));
                ok(config_json("8", &[]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");

    assert!(
        matches!(
            outcome.secret,
            SecretAction::Replaced(ReplaceReason::Expiring {
                which: "serving certificate",
                ..
            })
        ),
        "{:?}",
        outcome.secret
    );
    assert_eq!(outcome.webhooks_patched, 2);
    assert_eq!(outcome.bundle, taken(&put));
}

#[tokio::test]
async fn an_update_conflict_rereads_and_reuses_the_winners_bundle() {
    let old = generate(&identity(), now() - 340 * DAY).expect("generates");
    let winner = valid();
    let (stale, fresh, ca) = (
        secret_json(&old, "5"),
        secret_json(&winner, "6"),
        winner.ca_pem.clone(),
    );
    let outcome = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(stale)),
            call(Method::PUT, SECRET, |seen| {
                assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
                failure(409, "Conflict", "the object has been modified")
            }),
            call(Method::GET, SECRET, move |_| ok(fresh)),
            call(Method::GET, CONFIG, move |_| {
                ok(config_json("7", &[Some(&ca)]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");

    assert_eq!(outcome.secret, SecretAction::Reused);
    assert_eq!(outcome.bundle, winner);
    assert_eq!(outcome.webhooks_patched, 0);
}

#[tokio::test]
async fn a_lost_create_race_rereads_and_reuses() {
    let winner = valid();
    let (secret, ca) = (secret_json(&winner, "1"), winner.ca_pem.clone());
    let outcome = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, |_| {
                failure(404, "NotFound", "not found")
            }),
            call(Method::POST, SECRETS, |_| {
                failure(
                    409,
                    "AlreadyExists",
                    "secrets \"kloak-webhook-tls\" already exists",
                )
            }),
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, move |_| {
                ok(config_json("7", &[Some(&ca), Some(&ca)]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");

    assert_eq!(outcome.secret, SecretAction::Reused);
    assert_eq!(outcome.bundle, winner);
}

#[tokio::test]
async fn forbidden_get_names_the_missing_rule() {
    let err = scenario(
        args(None),
        vec![call(Method::GET, SECRET, |_| {
            failure(
                403,
                "Forbidden",
                "secrets \"kloak-webhook-tls\" is forbidden",
            )
        })],
    )
    .await
    .expect_err("403 fails the run");

    let message = err.to_string();
    assert!(
        matches!(
            err.downcast_ref(),
            Some(CertgenError::Forbidden { verb: "get", .. })
        ),
        "{message}"
    );
    for part in [
        "certgen needs `get` on secrets/kloak-webhook-tls in namespace kloak-system",
        "resourceNames: [\"kloak-webhook-tls\"], verbs: [\"get\"]",
        "Role in namespace kloak-system",
        "is forbidden",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn forbidden_update_names_the_missing_rule() {
    let secret = secret_json(&generate(&identity(), now() - 340 * DAY).expect("ok"), "5");
    let err = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::PUT, SECRET, |_| {
                failure(403, "Forbidden", "forbidden")
            }),
        ],
    )
    .await
    .expect_err("403 fails the run");
    let message = err.to_string();
    assert!(
        message.contains(
            "certgen needs `update` on secrets/kloak-webhook-tls in namespace kloak-system"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn forbidden_patch_names_the_cluster_role() {
    let stored = valid();
    let secret = secret_json(&stored, "5");
    let err = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, |_| ok(config_json("7", &[None]))),
            call(Method::PATCH, CONFIG, |_| {
                failure(403, "Forbidden", "forbidden")
            }),
        ],
    )
    .await
    .expect_err("403 fails the run");
    let message = err.to_string();
    for part in [
        "certgen needs `patch` on mutatingwebhookconfigurations.admissionregistration.k8s.io/kloak",
        "ClusterRole",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_a_clear_error() {
    let secret = secret_json(&valid(), "5");
    let err = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, |_| {
                failure(404, "NotFound", "not found")
            }),
        ],
    )
    .await
    .expect_err("404 fails the run");
    assert!(
        matches!(err.downcast_ref(), Some(CertgenError::WebhookConfigurationMissing(name)) if name == "kloak"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("MutatingWebhookConfiguration kloak does not exist"));
}

#[tokio::test]
async fn a_concurrent_change_to_the_configuration_loses_no_webhook() {
    let stored = valid();
    let (secret, ca) = (secret_json(&stored, "5"), stored.ca_pem.clone());
    let (ca_a, ca_b) = (ca.clone(), ca.clone());
    let outcome = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, |_| ok(config_json("7", &[None, None]))),
            call(Method::PATCH, CONFIG, move |seen| {
                assert_json_patch(&seen, expected_patch("7", &[0, 1], &ca_a));
                // A helm upgrade added a third webhook since the read.
                failure(
                    422,
                    "Invalid",
                    "testing value /metadata/resourceVersion failed",
                )
            }),
            call(Method::GET, CONFIG, |_| {
                ok(config_json("8", &[None, None, None]))
            }),
            call(Method::PATCH, CONFIG, move |seen| {
                assert_json_patch(&seen, expected_patch("8", &[0, 1, 2], &ca_b));
                ok(config_json("9", &[]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");
    assert_eq!(outcome.webhooks_patched, 3);
}

#[tokio::test]
async fn a_patch_refused_without_a_concurrent_change_is_an_error() {
    let secret = secret_json(&valid(), "5");
    let err = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, |_| ok(config_json("7", &[None]))),
            call(Method::PATCH, CONFIG, |_| {
                failure(422, "Invalid", "caBundle: invalid")
            }),
            call(Method::GET, CONFIG, |_| ok(config_json("7", &[None]))),
        ],
    )
    .await
    .expect_err("a real rejection fails the run");
    let message = format!("{err:#}");
    assert!(
        message.contains(
            "cannot patch mutatingwebhookconfigurations.admissionregistration.k8s.io/kloak"
        ),
        "{message}"
    );
    assert!(message.contains("caBundle: invalid"), "{message}");
}

#[tokio::test]
async fn only_stale_webhooks_are_patched() {
    let stored = valid();
    let old = valid();
    let (secret, ca, ca_p, old_ca) = (
        secret_json(&stored, "5"),
        stored.ca_pem.clone(),
        stored.ca_pem.clone(),
        old.ca_pem.clone(),
    );
    let outcome = scenario(
        args(None),
        vec![
            call(Method::GET, SECRET, move |_| ok(secret)),
            call(Method::GET, CONFIG, move |_| {
                ok(config_json("7", &[Some(&ca), Some(&old_ca)]))
            }),
            call(Method::PATCH, CONFIG, move |seen| {
                assert_json_patch(&seen, expected_patch("7", &[1], &ca_p));
                ok(config_json("8", &[]))
            }),
        ],
    )
    .await
    .expect("certgen succeeds");
    assert_eq!(outcome.secret, SecretAction::Reused);
    assert_eq!(outcome.webhooks_patched, 1);
}
