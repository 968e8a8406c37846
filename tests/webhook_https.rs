//! The webhook over real HTTPS: the real server on loopback, a throwaway CA,
//! a real TLS client, AdmissionReview bodies shaped like the API server's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;
use kloak::webhook::{serve, CertSource, Limits, LookupError, SecretDirectory, SecretState};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const NS: &str = "team-a";
/// Generous bound for "eventually": assertions are about what happens, never
/// about how fast.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- certificates

struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// A fresh CA (new key, new serial) and a serving certificate for loopback.
fn mint(ca_name: &str) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");

    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("serving params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let leaf = params.signed_by(&key, &ca).expect("serving certificate");
    Pki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

// ---------------------------------------------------------------- directory

/// Secrets of namespace `team-a` in memory. With a gate, every lookup first
/// reports on `entered` and then waits for a permit: a request held in flight.
#[derive(Default)]
struct Directory {
    states: BTreeMap<String, SecretState>,
    gate: Option<(mpsc::UnboundedSender<()>, Arc<Semaphore>)>,
}

impl Directory {
    fn usual() -> Self {
        Self {
            states: BTreeMap::from([
                (
                    "openai".to_string(),
                    SecretState::Enabled { shadow_ready: true },
                ),
                ("openai-kloak".to_string(), SecretState::Shadow),
                (
                    "anthropic".to_string(),
                    SecretState::Enabled {
                        shadow_ready: false,
                    },
                ),
                ("db-password".to_string(), SecretState::NotEnabled),
            ]),
            gate: None,
        }
    }
}

impl SecretDirectory for Directory {
    async fn secret_state(&self, namespace: &str, name: &str) -> Result<SecretState, LookupError> {
        if let Some((entered, permits)) = &self.gate {
            let _ = entered.send(());
            let _permit = permits.acquire().await.expect("gate open");
        }
        assert_eq!(namespace, NS);
        Ok(self
            .states
            .get(name)
            .copied()
            .unwrap_or(SecretState::Missing))
    }
}

// ---------------------------------------------------------------- server

struct Server {
    addr: SocketAddr,
    cert_path: PathBuf,
    key_path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// The header timeout also closes idle keep-alive connections, so it stays
/// well above what a loaded machine needs between two requests; only the
/// slow-client test shortens it.
fn limits() -> Limits {
    Limits {
        max_body_bytes: 64 * 1024,
        header_timeout: Duration::from_secs(10),
        drain: Duration::from_secs(30),
    }
}

async fn start(pki: &Pki, directory: Directory, limits: Limits) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, &pki.cert_pem).expect("write cert");
    std::fs::write(&key_path, &pki.key_pem).expect("write key");
    let tls = CertSource::load(&cert_path, &key_path).expect("certificate loads");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        Arc::new(tls),
        Arc::new(directory),
        limits,
        async {
            let _ = stop.await;
        },
    ));
    Server {
        addr,
        cert_path,
        key_path,
        shutdown: Some(shutdown),
        task,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- client

async fn connect_tls(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA accepted");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

type Sender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
>;

async fn open(addr: SocketAddr, ca: &CertificateDer<'static>) -> Sender {
    let tls = connect_tls(addr, ca).await.expect("TLS connection");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

fn full(body: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn send(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

async fn post(server: &Server, ca: &CertificateDer<'static>, body: Vec<u8>) -> (StatusCode, Bytes) {
    let mut sender = open(server.addr, ca).await;
    send(&mut sender, Method::POST, "/mutate", full(body)).await
}

async fn admission(server: &Server, ca: &CertificateDer<'static>, body: Vec<u8>) -> Value {
    let (status, body) = post(server, ca, body).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON AdmissionReview")
}

// ---------------------------------------------------------------- payloads

const UID: &str = "b6a1f0c2-5d55-4f7e-9a5e-3c1f0e4d2a11";

/// A pod as a ReplicaSet controller submits it, with the service-account
/// projected volume the API server adds.
fn pod(env_from_secret: Option<&str>) -> Value {
    let mut container = json!({
        "name": "agent",
        "image": "ghcr.io/example/agent:1.4",
        "env": [{ "name": "LOG_LEVEL", "value": "info" }],
        "resources": { "limits": { "memory": "256Mi" } },
        "volumeMounts": [{ "name": "kube-api-access-8xq2z", "readOnly": true,
                           "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    });
    if let Some(secret) = env_from_secret {
        container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
    }
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "agent-6d5f7c9b8-",
            "namespace": NS,
            "creationTimestamp": null,
            "labels": { "app": "agent", "pod-template-hash": "6d5f7c9b8" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "agent-6d5f7c9b8",
                                  "uid": "0f3c2a8e-1b7d-4c55-8e21-9d0a6f1b2c3d", "controller": true,
                                  "blockOwnerDeletion": true }],
        },
        "spec": {
            "volumes": [{ "name": "kube-api-access-8xq2z", "projected": { "sources": [
                { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace",
                    "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ], "defaultMode": 420 } }],
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    })
}

fn review_of(kind: &str, resource: &str, object: Value) -> Vec<u8> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": { "group": "", "version": "v1", "kind": kind },
            "resource": { "group": "", "version": "v1", "resource": resource },
            "requestKind": { "group": "", "version": "v1", "kind": kind },
            "requestResource": { "group": "", "version": "v1", "resource": resource },
            "namespace": NS,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "7e1b6a52-0c4d-4b8e-9f3a-2d6c5e8f1a90",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" },
        },
    });
    serde_json::to_vec(&review).expect("JSON")
}

fn pod_review(pod: Value) -> Vec<u8> {
    review_of("Pod", "pods", pod)
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => 0,
            other => panic!("not base64: {other}"),
        })
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        assert_eq!(chunk.len(), 4, "padded base64");
        let padding = chunk.iter().filter(|&&c| c == b'=').count();
        let bits = chunk.iter().fold(0u32, |acc, &c| (acc << 6) | value(c));
        out.extend_from_slice(&bits.to_be_bytes()[1..4 - padding]);
    }
    out
}

/// Applies the response's patch to `object` as the API server would.
fn apply(response: &Value, mut object: Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64_decode(
        response["patch"]
            .as_str()
            .expect("patch is a base64 string"),
    );
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON patch");
    json_patch::patch(&mut object, &patch).expect("patch applies");
    object
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn an_enabled_secret_is_pointed_at_its_shadow() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let review = admission(&server, &pki.ca, pod_review(pod(Some("openai")))).await;

    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true);
    let patched = apply(response, pod(Some("openai")));

    let mut expected = pod(Some("openai"));
    expected["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"] = json!("openai-kloak");
    expected["metadata"]["labels"]["getkloak.io/enabled"] = json!("true");
    assert_eq!(patched, expected);
}

#[tokio::test]
async fn a_pod_without_secrets_is_allowed_unchanged() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    for secret in [None, Some("db-password")] {
        let review = admission(&server, &pki.ca, pod_review(pod(secret))).await;
        assert_eq!(review["response"]["uid"], UID);
        assert_eq!(review["response"]["allowed"], true);
        assert!(review["response"].get("patch").is_none(), "{review}");
    }
}

#[tokio::test]
async fn a_missing_shadow_denies_the_pod_naming_the_secret() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let review = admission(&server, &pki.ca, pod_review(pod(Some("anthropic")))).await;
    let response = &review["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().expect("a message");
    assert!(
        message.contains("team-a/anthropic") && message.contains("not ready"),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let (status, body) = post(
        &server,
        &pki.ca,
        b"{\"apiVersion\": \"admission.k8s.io/v1\", ".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("not JSON"),
        "{body:?}"
    );
}

#[tokio::test]
async fn another_kind_is_allowed_untouched() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let config_map = json!({ "apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": { "name": "settings", "namespace": NS }, "data": { "a": "b" } });
    let review = admission(
        &server,
        &pki.ca,
        review_of("ConfigMap", "configmaps", config_map),
    )
    .await;
    assert_eq!(review["response"]["uid"], UID);
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"].get("patch").is_none());
}

#[tokio::test]
async fn health_and_unknown_paths() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let mut sender = open(server.addr, &pki.ca).await;
    let (status, body) = send(&mut sender, Method::GET, "/healthz", full(Bytes::new())).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // Same connection: keep-alive works.
    let (status, _) = send(&mut sender, Method::GET, "/metrics", full(Bytes::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(&mut sender, Method::GET, "/mutate", full(Bytes::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_the_server_keeps_serving() {
    let pki = mint("kloak test CA");
    let server = start(&pki, Directory::usual(), limits()).await;
    let huge = vec![b' '; 4 * limits().max_body_bytes];

    // Declared too large: refused from the headers.
    let (status, _) = post(&server, &pki.ca, huge.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, so no length is declared: refused once the limit is crossed.
    let mut sender = open(server.addr, &pki.ca).await;
    let chunks = huge
        .chunks(8 * 1024)
        .map(|chunk| Ok::<_, std::io::Error>(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect::<Vec<_>>();
    let body = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let (status, _) = send(&mut sender, Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let review = admission(&server, &pki.ca, pod_review(pod(Some("openai")))).await;
    assert_eq!(review["response"]["allowed"], true);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_restart() {
    let first = mint("kloak CA one");
    let server = start(&first, Directory::usual(), limits()).await;
    let before = connect_tls(server.addr, &first.ca)
        .await
        .expect("first certificate");
    assert_eq!(
        before.get_ref().1.peer_certificates().expect("peer")[0],
        first.leaf
    );
    let mut kept = open(server.addr, &first.ca).await;

    let second = mint("kloak CA two");
    assert_ne!(first.ca, second.ca);
    std::fs::write(&server.cert_path, &second.cert_pem).expect("rotate cert");
    std::fs::write(&server.key_path, &second.key_pem).expect("rotate key");

    let after = connect_tls(server.addr, &second.ca)
        .await
        .expect("the new CA is trusted alone");
    assert_eq!(
        after.get_ref().1.peer_certificates().expect("peer")[0],
        second.leaf
    );
    assert!(
        connect_tls(server.addr, &first.ca).await.is_err(),
        "the old certificate is gone"
    );

    // A connection opened before the rotation keeps working.
    let (status, _) = send(&mut kept, Method::GET, "/healthz", full(Bytes::new())).await;
    assert_eq!(status, StatusCode::OK);
    let review = admission(&server, &second.ca, pod_review(pod(Some("openai")))).await;
    assert_eq!(review["response"]["allowed"], true);
}

/// Reads until the server closes the connection; `None` if it never does.
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<()> {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_client_that_never_sends_headers_is_disconnected() {
    let pki = mint("kloak test CA");
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        ..limits()
    };
    let server = start(&pki, Directory::usual(), limits).await;

    let mut silent = connect_tls(server.addr, &pki.ca).await.expect("TLS");
    silent
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("partial head");
    silent.flush().await.expect("flush");
    assert_eq!(
        closed_by_server(&mut silent).await,
        Some(()),
        "headers never finished"
    );

    // No ClientHello at all: the handshake deadline applies.
    let mut mute = TcpStream::connect(server.addr).await.expect("TCP");
    assert_eq!(
        closed_by_server(&mut mute).await,
        Some(()),
        "handshake never started"
    );

    let mut sender = open(server.addr, &pki.ca).await;
    let (status, _) = send(&mut sender, Method::GET, "/healthz", full(Bytes::new())).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_refuses_new_connections() {
    let pki = mint("kloak test CA");
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let directory = Directory {
        gate: Some((entered_tx, permits.clone())),
        ..Directory::usual()
    };
    let mut server = start(&pki, directory, limits()).await;

    let addr = server.addr;
    let ca = pki.ca.clone();
    let in_flight = tokio::spawn(async move {
        let mut sender = open(addr, &ca).await;
        send(
            &mut sender,
            Method::POST,
            "/mutate",
            full(pod_review(pod(Some("openai")))),
        )
        .await
    });
    entered
        .recv()
        .await
        .expect("the request reached the directory");

    server
        .shutdown
        .take()
        .expect("not yet")
        .send(())
        .expect("server listening");
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "new connections are refused once draining");
    assert!(
        !server.task.is_finished(),
        "the server waits for the request in flight"
    );

    permits.add_permits(1);
    let (status, body) = in_flight.await.expect("client task");
    assert_eq!(status, StatusCode::OK);
    let review: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(review["response"]["allowed"], true);
    assert!(review["response"]["patch"].is_string());
    tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("drained")
        .expect("server task");
}

// ---------------------------------------------------------------- logs

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Values a careless webhook could leak from the pod it reviews. The pod is
/// the user's, but its annotations and literal env values are not the
/// webhook's to repeat in logs.
const PLANTED: [&str; 2] = [
    "sk-live-PLANTED-annotation-4f2b9c1d",
    "ghp_PLANTED-literal-env-7a3e5d",
];

fn pod_with_planted_values(secret: &str) -> Value {
    let mut pod = pod(Some(secret));
    pod["metadata"]["annotations"] = json!({ "example.com/leaked-token": PLANTED[0] });
    pod["spec"]["containers"][0]["env"]
        .as_array_mut()
        .expect("env")
        .push(json!({ "name": "GITHUB_TOKEN", "value": PLANTED[1] }));
    pod
}

#[test]
fn trace_logs_name_decisions_but_never_values() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime runs the server's tasks on this thread, where
    // the subscriber is installed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let pki = mint("kloak test CA");
            let server = start(&pki, Directory::usual(), limits()).await;
            for (secret, allowed) in [("openai", true), ("anthropic", false)] {
                let review = admission(
                    &server,
                    &pki.ca,
                    pod_review(pod_with_planted_values(secret)),
                )
                .await;
                assert_eq!(review["response"]["allowed"], allowed);
                let response = serde_json::to_string(&review).expect("JSON");
                for planted in PLANTED {
                    assert!(
                        !response.contains(planted),
                        "the response repeats {planted}"
                    );
                }
            }
            let mut broken = pod_with_planted_values("openai");
            broken["spec"]["containers"][0]["env"][1]["value"] = json!({ "nested": PLANTED[1] });
            let review = admission(&server, &pki.ca, pod_review(broken)).await;
            assert_eq!(
                review["response"]["allowed"], false,
                "an unreadable pod is denied"
            );
            assert!(!serde_json::to_string(&review)
                .expect("JSON")
                .contains(PLANTED[1]));
        });
    });

    let logs = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("UTF-8 logs");
    let decisions: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("admission decision"))
        .collect();
    assert_eq!(decisions.len(), 3, "one line per decision:\n{logs}");
    assert!(
        decisions[0].contains("decision=\"patched\"") && decisions[0].contains("rewritten=1"),
        "{}",
        decisions[0]
    );
    assert!(
        decisions[0].contains("namespace=team-a") && decisions[0].contains("pod=agent-6d5f7c9b8-"),
        "{}",
        decisions[0]
    );
    assert!(decisions[0].contains(UID), "{}", decisions[0]);
    assert!(
        decisions[1].contains("decision=\"denied\"") && decisions[1].contains("team-a/anthropic"),
        "{}",
        decisions[1]
    );
    for planted in PLANTED {
        assert!(!logs.contains(planted), "logs leak {planted}:\n{logs}");
    }
}
