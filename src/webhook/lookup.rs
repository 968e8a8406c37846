//! Where the webhook learns the state of the Secrets a pod references.
//!
//! Only metadata is ever requested: the webhook has no reason to see a value,
//! and its RBAC does not need to allow it.

use std::future::Future;

use k8s_openapi::api::core::v1::Secret;

use super::mutate::SecretState;
use crate::k8s::{is_enabled, shadow_name, MANAGED_LABEL, OWNER_LABEL, TRUE};

/// Answers "what state is Secret `namespace/name` in?". A trait so the HTTPS
/// tests can serve from memory.
pub trait SecretDirectory: Send + Sync + 'static {
    fn secret_state(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<SecretState, LookupError>> + Send;
}

/// The API could not say what state a Secret is in; the pod is denied.
#[derive(Debug, thiserror::Error)]
#[error("reading the metadata of Secret {namespace}/{name} failed: {source}")]
pub struct LookupError {
    pub namespace: String,
    pub name: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The Kubernetes API, read with metadata-only GETs.
#[derive(Clone)]
pub struct ApiDirectory {
    client: kube::Client,
}

impl ApiDirectory {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl SecretDirectory for ApiDirectory {
    async fn secret_state(&self, namespace: &str, name: &str) -> Result<SecretState, LookupError> {
        let api = kube::Api::<Secret>::namespaced(self.client.clone(), namespace);
        let read = |name: String| {
            let api = api.clone();
            async move {
                match api.get_metadata_opt(&name).await {
                    // Only the labels are kept: a Secret's annotations can hold
                    // its whole content (kubectl's last-applied-configuration).
                    Ok(found) => Ok(found.map(|object| object.metadata.labels)),
                    Err(error) => Err(LookupError {
                        namespace: namespace.to_string(),
                        name,
                        source: Box::new(error),
                    }),
                }
            }
        };
        let labels = read(name.to_string()).await?;
        if let Some(state) = own_state(labels.as_ref()) {
            return Ok(state);
        }
        let shadow = read(shadow_name(name)).await?;
        Ok(SecretState::Enabled {
            shadow_ready: shadow_ready(name, shadow.as_ref()),
        })
    }
}

type Labels = Option<std::collections::BTreeMap<String, String>>;

/// What a Secret's own labels say (`labels` is `None` when the Secret does not
/// exist); `None` when it is enabled and the answer depends on its shadow.
fn own_state(labels: Option<&Labels>) -> Option<SecretState> {
    let Some(labels) = labels else {
        return Some(SecretState::Missing);
    };
    // Checked first: a shadow that inherited the enabled label must not be
    // shadowed again.
    if label_is(labels, MANAGED_LABEL, TRUE) {
        return Some(SecretState::Shadow);
    }
    if is_enabled(labels.as_ref()) {
        return None;
    }
    Some(SecretState::NotEnabled)
}

/// A Secret that merely has the shadow's name (created by someone else) is not
/// a shadow: it could hold real values.
fn shadow_ready(source: &str, shadow: Option<&Labels>) -> bool {
    shadow.is_some_and(|labels| {
        label_is(labels, MANAGED_LABEL, TRUE) && label_is(labels, OWNER_LABEL, source)
    })
}

fn label_is(labels: &Labels, key: &str, value: &str) -> bool {
    labels
        .as_ref()
        .and_then(|labels| labels.get(key))
        .is_some_and(|found| found == value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ENABLED_LABEL;
    use http::{Request, Response, StatusCode};
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Some(
            pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn own_labels_classify_a_secret() {
        assert_eq!(own_state(None), Some(SecretState::Missing));
        assert_eq!(own_state(Some(&None)), Some(SecretState::NotEnabled));
        assert_eq!(
            own_state(Some(&labels(&[(ENABLED_LABEL, "false")]))),
            Some(SecretState::NotEnabled)
        );
        assert_eq!(own_state(Some(&labels(&[(ENABLED_LABEL, "true")]))), None);
        assert_eq!(
            own_state(Some(&labels(&[
                (ENABLED_LABEL, "true"),
                (MANAGED_LABEL, "true")
            ]))),
            Some(SecretState::Shadow)
        );
    }

    #[test]
    fn only_a_managed_shadow_owned_by_the_source_is_ready() {
        let owned = labels(&[(MANAGED_LABEL, "true"), (OWNER_LABEL, "openai")]);
        assert!(shadow_ready("openai", Some(&owned)));
        assert!(!shadow_ready("anthropic", Some(&owned)));
        assert!(!shadow_ready(
            "openai",
            Some(&labels(&[(OWNER_LABEL, "openai")]))
        ));
        assert!(!shadow_ready("openai", Some(&None)));
        assert!(!shadow_ready("openai", None));
    }

    type Handle =
        tower_test::mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;

    fn metadata(name: &str, labels: serde_json::Value) -> Response<kube::client::Body> {
        let body = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": { "name": name, "namespace": "team-a", "labels": labels,
                          "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"token\":\"c2VjcmV0\"}}" } },
        });
        Response::new(kube::client::Body::from(
            serde_json::to_vec(&body).expect("json"),
        ))
    }

    fn status(code: StatusCode, reason: &str) -> Response<kube::client::Body> {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "no", "reason": reason, "code": code.as_u16(),
        });
        let mut response = Response::new(kube::client::Body::from(
            serde_json::to_vec(&body).expect("json"),
        ));
        *response.status_mut() = code;
        response
    }

    /// Answers the next request after checking it is a metadata-only GET of `name`.
    async fn expect_get(handle: &mut Handle, name: &str, reply: Response<kube::client::Body>) {
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(
            request.uri().path(),
            format!("/api/v1/namespaces/team-a/secrets/{name}")
        );
        let accept = request
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|value| value.to_str().ok());
        assert!(
            accept.is_some_and(|accept| accept.contains("as=PartialObjectMetadata")),
            "metadata only, got {accept:?}"
        );
        send.send_response(reply);
    }

    fn directory() -> (ApiDirectory, Handle) {
        let (service, handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        (
            ApiDirectory::new(kube::Client::new(service, "default")),
            handle,
        )
    }

    #[tokio::test]
    async fn an_enabled_secret_with_its_managed_shadow_is_ready() {
        let (directory, mut handle) = directory();
        let api = tokio::spawn(async move {
            expect_get(
                &mut handle,
                "openai",
                metadata("openai", serde_json::json!({ ENABLED_LABEL: "true" })),
            )
            .await;
            expect_get(
                &mut handle,
                "openai-kloak",
                metadata(
                    "openai-kloak",
                    serde_json::json!({ MANAGED_LABEL: "true", OWNER_LABEL: "openai" }),
                ),
            )
            .await;
        });
        let state = directory
            .secret_state("team-a", "openai")
            .await
            .expect("state");
        assert_eq!(state, SecretState::Enabled { shadow_ready: true });
        api.await.expect("api scenario");
    }

    #[tokio::test]
    async fn a_missing_shadow_and_a_missing_secret_are_reported() {
        let (directory, mut handle) = directory();
        let api = tokio::spawn(async move {
            expect_get(
                &mut handle,
                "openai",
                metadata("openai", serde_json::json!({ ENABLED_LABEL: "true" })),
            )
            .await;
            expect_get(
                &mut handle,
                "openai-kloak",
                status(StatusCode::NOT_FOUND, "NotFound"),
            )
            .await;
            expect_get(
                &mut handle,
                "absent",
                status(StatusCode::NOT_FOUND, "NotFound"),
            )
            .await;
        });
        assert_eq!(
            directory
                .secret_state("team-a", "openai")
                .await
                .expect("state"),
            SecretState::Enabled {
                shadow_ready: false
            }
        );
        assert_eq!(
            directory
                .secret_state("team-a", "absent")
                .await
                .expect("state"),
            SecretState::Missing
        );
        api.await.expect("api scenario");
    }

    #[tokio::test]
    async fn api_errors_name_the_secret() {
        let (directory, mut handle) = directory();
        let api = tokio::spawn(async move {
            expect_get(
                &mut handle,
                "openai",
                status(StatusCode::FORBIDDEN, "Forbidden"),
            )
            .await;
        });
        let error = directory
            .secret_state("team-a", "openai")
            .await
            .expect_err("forbidden");
        assert_eq!(
            (error.namespace.as_str(), error.name.as_str()),
            ("team-a", "openai")
        );
        assert!(error.to_string().contains("team-a/openai"), "{error}");
        api.await.expect("api scenario");
    }
}
