//! One AdmissionReview in, one answer out.
//!
//! Fail closed: whatever cannot be understood is refused, either as a 400
//! (no uid to answer to, so the API server's failure policy applies) or as a
//! denial. Only a request that is certainly not about a Pod is allowed without
//! a look.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::Patch;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionReview, Operation, META_API_VERSION_V1, META_KIND};
use serde::Serialize;
use serde_json::Value;

use super::lookup::SecretDirectory;
use super::mutate::{mutate, referenced_secrets, Scope, Verdict};

/// A body that is not an AdmissionReview one could answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    // Only the position, never serde's message: it can quote the body.
    #[error("the body is not JSON ({category} error at line {line}, column {column})")]
    NotJson {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("the body is not an {META_API_VERSION_V1} {META_KIND}")]
    NotAdmissionReview,
    #[error("the AdmissionReview has no request with a uid")]
    NoRequest,
}

/// The response part of the AdmissionReview sent back.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub uid: String,
    pub allowed: bool,
    /// Why a request is denied; shown to the user.
    pub message: Option<String>,
    pub patch: Option<Patch>,
}

impl Answer {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: true,
            message: None,
            patch: None,
        }
    }

    fn deny(uid: &str, message: String) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: false,
            message: Some(message),
            patch: None,
        }
    }

    /// The v1 AdmissionReview JSON, with the patch base64-encoded as the API
    /// server's `[]byte` field expects.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let patch = self.patch.as_ref().map(serde_json::to_vec).transpose()?;
        serde_json::to_vec(&WireReview {
            api_version: META_API_VERSION_V1,
            kind: META_KIND,
            response: WireResponse {
                uid: &self.uid,
                allowed: self.allowed,
                status: self
                    .message
                    .as_deref()
                    .map(|message| WireStatus { code: 403, message }),
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch: patch.as_deref().map(base64),
            },
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<WireStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct WireStatus<'a> {
    code: u16,
    message: &'a str,
}

/// Reviews one AdmissionReview body.
pub async fn review<D: SecretDirectory>(body: &[u8], directory: &D) -> Result<Answer, Malformed> {
    let value: Value = serde_json::from_slice(body).map_err(|error| Malformed::NotJson {
        category: category(&error),
        line: error.line(),
        column: error.column(),
    })?;
    let text =
        |value: &Value, key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    if text(&value, "apiVersion").as_deref() != Some(META_API_VERSION_V1)
        || text(&value, "kind").as_deref() != Some(META_KIND)
    {
        return Err(Malformed::NotAdmissionReview);
    }
    let request = value.get("request").ok_or(Malformed::NoRequest)?;
    let uid = text(request, "uid")
        .filter(|uid| !uid.is_empty())
        .ok_or(Malformed::NoRequest)?;
    let target = Target {
        uid: &uid,
        namespace: text(request, "namespace").unwrap_or_default(),
        pod: text(request, "name").unwrap_or_default(),
    };

    let kind = request.get("kind");
    let kind_field = |key| kind.and_then(|kind| text(kind, key));
    let answer = match (kind_field("group"), kind_field("kind")) {
        (Some(group), Some(kind)) if group.is_empty() && kind == "Pod" => {
            review_pod(body, target, directory).await
        }
        (Some(_), Some(_)) => target.allowed("skipped", None, 0),
        _ => target.denied(
            "kloak cannot tell what kind of object this AdmissionReview is about".to_string(),
        ),
    };
    Ok(answer)
}

/// Identifies the request in the decision log line.
struct Target<'a> {
    uid: &'a str,
    namespace: String,
    /// Name, or generateName when the API server has not named the pod yet.
    pod: String,
}

impl Target<'_> {
    fn allowed(&self, decision: &str, patch: Option<Patch>, rewritten: usize) -> Answer {
        tracing::info!(
            namespace = %self.namespace,
            pod = %self.pod,
            uid = %self.uid,
            decision,
            rewritten,
            "admission decision"
        );
        Answer {
            patch,
            ..Answer::allow(self.uid)
        }
    }

    fn denied(&self, message: String) -> Answer {
        tracing::warn!(
            namespace = %self.namespace,
            pod = %self.pod,
            uid = %self.uid,
            decision = "denied",
            rewritten = 0,
            reason = %message,
            "admission decision"
        );
        Answer::deny(self.uid, message)
    }
}

async fn review_pod<D: SecretDirectory>(
    body: &[u8],
    mut target: Target<'_>,
    directory: &D,
) -> Answer {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            return target.denied(format!(
            "kloak cannot read the pod in this AdmissionReview ({} error at line {}, column {})",
            category(&error),
            error.line(),
            error.column()
        ))
        }
    };
    let Some(request) = review.request else {
        return target.denied("kloak found no request in this AdmissionReview".to_string());
    };
    let subresource = request
        .sub_resource
        .as_deref()
        .filter(|name| !name.is_empty());
    let scope = match (&request.operation, subresource) {
        (Operation::Create, None) => Scope::Create,
        (Operation::Update, Some("ephemeralcontainers")) => Scope::EphemeralContainers {
            admitted: admitted_ephemeral_containers(request.old_object.as_ref()),
        },
        // Every other change to a pod leaves its Secret references as they
        // were admitted: the API server refuses to change them.
        _ => return target.allowed("skipped", None, 0),
    };
    let Some(pod) = request.object else {
        return target.denied("kloak found no pod in this AdmissionReview".to_string());
    };
    if let Some(name) = [&pod.metadata.name, &pod.metadata.generate_name]
        .into_iter()
        .flatten()
        .find(|name| !name.is_empty())
    {
        target.pod = name.clone();
    }
    let Some(namespace) = request.namespace.or_else(|| pod.metadata.namespace.clone()) else {
        return target.denied("kloak found no namespace for this pod".to_string());
    };
    target.namespace = namespace;

    let names = referenced_secrets(&pod, &scope);
    let results = futures::future::join_all(
        names
            .iter()
            .map(|name| directory.secret_state(&target.namespace, name)),
    )
    .await;
    let mut states = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, result) in names.into_iter().zip(results) {
        match result {
            Ok(state) => {
                states.insert(name, state);
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    if !failures.is_empty() {
        return target.denied(format!("kloak: {}", failures.join("; ")));
    }
    tracing::trace!(uid = %target.uid, ?states, "secret states");

    match mutate(&pod, &target.namespace, &scope, &states) {
        Verdict::Allow => target.allowed("allowed", None, 0),
        Verdict::Patch { patch, rewritten } => target.allowed("patched", Some(patch), rewritten),
        Verdict::Deny(message) => target.denied(message),
    }
}

/// Ephemeral containers that exist already; without the old object every one
/// counts as new, which can only rewrite more.
fn admitted_ephemeral_containers(old: Option<&Pod>) -> BTreeSet<String> {
    old.and_then(|pod| pod.spec.as_ref())
        .and_then(|spec| spec.ephemeral_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|container| container.name.clone())
        .collect()
}

fn category(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "read",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "unexpected end",
    }
}

/// Standard base64 with padding (RFC 4648, section 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk.iter().enumerate().fold(0u32, |acc, (index, byte)| {
            acc | (u32::from(*byte) << (16 - 8 * index))
        });
        for position in 0..4 {
            if position <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((triple >> (18 - 6 * position)) & 0x3f) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::lookup::LookupError;
    use crate::webhook::mutate::SecretState;
    use serde_json::json;

    /// Secrets by name in namespace `team-a`; `None` makes the lookup fail.
    struct Memory(BTreeMap<&'static str, Option<SecretState>>);

    impl SecretDirectory for Memory {
        async fn secret_state(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<SecretState, LookupError> {
            assert_eq!(namespace, "team-a");
            match self.0.get(name) {
                Some(Some(state)) => Ok(*state),
                Some(None) => Err(LookupError {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source: "connection refused".into(),
                }),
                None => Ok(SecretState::Missing),
            }
        }
    }

    fn directory() -> Memory {
        Memory(BTreeMap::from([
            ("openai", Some(SecretState::Enabled { shadow_ready: true })),
            ("openai-kloak", Some(SecretState::Shadow)),
            (
                "pending",
                Some(SecretState::Enabled {
                    shadow_ready: false,
                }),
            ),
            ("broken", None),
        ]))
    }

    fn pod(secret: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "agent-", "namespace": "team-a" },
            "spec": { "containers": [{ "name": "main", "image": "app",
                "envFrom": [{ "secretRef": { "name": secret } }] }] },
        })
    }

    fn body(kind: &str, operation: &str, subresource: Option<&str>, object: Value) -> Vec<u8> {
        let mut request = json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": { "group": "", "version": "v1", "kind": kind },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "team-a",
            "operation": operation,
            "userInfo": { "username": "admin", "groups": ["system:authenticated"] },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
        });
        if let Some(subresource) = subresource {
            request["subResource"] = json!(subresource);
        }
        serde_json::to_vec(&json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request }))
            .expect("json")
    }

    async fn answer(body: &[u8]) -> Answer {
        review(body, &directory()).await.expect("an answer")
    }

    #[tokio::test]
    async fn an_enabled_reference_is_patched_and_the_wire_form_is_base64() {
        let answer = answer(&body("Pod", "CREATE", None, pod("openai"))).await;
        assert!(answer.allowed);
        assert_eq!(answer.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        let patch = answer.patch.clone().expect("a patch");
        let mut patched = pod("openai");
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(
            patched["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
            "openai-kloak"
        );

        let wire: Value = serde_json::from_slice(&answer.to_json().expect("json")).expect("json");
        assert_eq!(wire["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(wire["kind"], "AdmissionReview");
        assert_eq!(wire["response"]["patchType"], "JSONPatch");
        assert_eq!(
            wire["response"]["patch"],
            json!(base64(&serde_json::to_vec(&patch).expect("json")))
        );
    }

    #[tokio::test]
    async fn failures_deny_with_the_secret_named() {
        let pending = answer(&body("Pod", "CREATE", None, pod("pending"))).await;
        assert!(!pending.allowed);
        assert!(pending
            .message
            .as_deref()
            .is_some_and(|m| m.contains("team-a/pending")));

        let broken = answer(&body("Pod", "CREATE", None, pod("broken"))).await;
        assert!(!broken.allowed);
        let message = broken.message.expect("message");
        assert!(
            message.contains("team-a/broken") && message.contains("connection refused"),
            "{message}"
        );

        let wire: Value =
            serde_json::from_slice(&Answer::deny("u", message.clone()).to_json().expect("json"))
                .expect("json");
        assert_eq!(
            wire["response"],
            json!({ "uid": "u", "allowed": false, "status": { "code": 403, "message": message } })
        );
    }

    #[tokio::test]
    async fn other_kinds_are_skipped_but_an_unreadable_pod_is_denied() {
        let config_map =
            json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "x" } });
        let skipped = answer(&body("ConfigMap", "CREATE", None, config_map)).await;
        assert_eq!(
            skipped,
            Answer::allow("705ab4f5-6393-11e8-b7cc-42010a800002")
        );

        let mut broken = pod("openai");
        broken["spec"]["containers"] = json!("not a list");
        let denied = answer(&body("Pod", "CREATE", None, broken)).await;
        assert!(!denied.allowed);

        let mut no_kind: Value =
            serde_json::from_slice(&body("Pod", "CREATE", None, pod("openai"))).expect("json");
        no_kind["request"]["kind"] = json!("Pod");
        let denied = answer(&serde_json::to_vec(&no_kind).expect("json")).await;
        assert!(!denied.allowed, "an unknown kind may be a pod");
    }

    #[tokio::test]
    async fn updates_other_than_ephemeral_containers_are_skipped() {
        let skipped = answer(&body("Pod", "UPDATE", None, pod("pending"))).await;
        assert!(skipped.allowed && skipped.patch.is_none());
        let skipped = answer(&body("Pod", "UPDATE", Some("status"), pod("pending"))).await;
        assert!(skipped.allowed && skipped.patch.is_none());
    }

    #[tokio::test]
    async fn the_ephemeral_subresource_uses_the_old_object() {
        let mut new = pod("pending");
        new["spec"]["ephemeralContainers"] = json!([
            { "name": "debug-1", "envFrom": [{ "secretRef": { "name": "pending" } }] },
            { "name": "debug-2", "envFrom": [{ "secretRef": { "name": "openai" } }] },
        ]);
        let mut old = new.clone();
        old["spec"]["ephemeralContainers"] = json!([new["spec"]["ephemeralContainers"][0].clone()]);
        let mut review: Value = serde_json::from_slice(&body(
            "Pod",
            "UPDATE",
            Some("ephemeralcontainers"),
            new.clone(),
        ))
        .expect("json");
        review["request"]["oldObject"] = old;
        let answer = answer(&serde_json::to_vec(&review).expect("json")).await;
        assert!(answer.allowed, "{answer:?}");
        json_patch::patch(&mut new, &answer.patch.expect("patch")).expect("applies");
        assert_eq!(
            new["spec"]["ephemeralContainers"][1]["envFrom"][0]["secretRef"]["name"],
            "openai-kloak"
        );
        assert_eq!(
            new["spec"]["ephemeralContainers"][0]["envFrom"][0]["secretRef"]["name"],
            "pending"
        );
    }

    #[tokio::test]
    async fn bodies_without_a_request_to_answer_are_malformed() {
        let malformed = |body: &'static [u8]| async move {
            review(body, &directory()).await.expect_err("malformed")
        };
        assert!(matches!(
            malformed(b"{ nope").await,
            Malformed::NotJson { line: 1, .. }
        ));
        assert!(matches!(
            malformed(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#).await,
            Malformed::NotAdmissionReview
        ));
        assert!(matches!(
            malformed(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
            )
            .await,
            Malformed::NoRequest
        ));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in vectors {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }
}
