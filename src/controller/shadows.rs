//! The leader's side: create, update and delete shadow Secrets, and tell
//! users on the source Secret (Kubernetes Events) when their input is refused.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::k8s;
use crate::placeholder::KEY_LEN;
use crate::secrets::shadow::{self, Problem};
use crate::secrets::SecretRef;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{verb} shadow {shadow}: {source}")]
    Api {
        verb: &'static str,
        shadow: SecretRef,
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    /// A short, fixed name for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Api { verb, .. } => verb,
        }
    }
}

/// What reconciling one source did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
    /// Bad input: no shadow (an existing one was removed); Events say why.
    /// Carries the problems' reason names.
    Refused(Vec<&'static str>),
    /// A Secret with the shadow's name exists and kloak does not manage it.
    NameTaken,
    /// Nothing to do: no source and no shadow.
    Absent,
    /// Not the leader: another agent writes shadows.
    Follower,
}

impl Outcome {
    /// The write it made, for metrics.
    pub fn write(&self) -> Option<&'static str> {
        match self {
            Self::Created => Some("create"),
            Self::Updated => Some("update"),
            Self::Deleted => Some("delete"),
            _ => None,
        }
    }
}

/// Writes shadows, but only while this agent holds the leader Lease.
pub struct ShadowWriter {
    client: Client,
    recorder: Recorder,
    leader: watch::Receiver<bool>,
    require_hosts: bool,
    grace_seconds: i64,
}

impl ShadowWriter {
    pub fn new(
        client: Client,
        recorder: Recorder,
        leader: watch::Receiver<bool>,
        require_hosts: bool,
        grace_seconds: i64,
    ) -> Self {
        Self {
            client,
            recorder,
            leader,
            require_hosts,
            grace_seconds,
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Brings the shadow of `secret` in line with its source. `source` is
    /// `None` (or not labelled) when the source is gone or opted out;
    /// `existing` is the shadow as last seen.
    pub async fn reconcile(
        &self,
        secret: &SecretRef,
        source: Option<&Secret>,
        existing: Option<&Secret>,
        now: i64,
    ) -> Result<Outcome, WriteError> {
        self.reconcile_avoiding(secret, source, existing, now, &|_| false)
            .await
    }

    /// [`Self::reconcile`], minting new placeholders whose lookup keys are not
    /// taken by other shadows.
    pub async fn reconcile_avoiding(
        &self,
        secret: &SecretRef,
        source: Option<&Secret>,
        existing: Option<&Secret>,
        now: i64,
        is_taken: &(dyn Fn(&[u8; KEY_LEN]) -> bool + Sync),
    ) -> Result<Outcome, WriteError> {
        if !self.is_leader() {
            return Ok(Outcome::Follower);
        }
        let shadow_ref = SecretRef::new(secret.namespace.clone(), k8s::shadow_name(&secret.name));
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.namespace);
        let managed = existing.filter(|s| shadow::is_shadow_of(s, &secret.name));
        let source = source.filter(|s| k8s::is_enabled(s.metadata.labels.as_ref()));
        let Some(source) = source else {
            return match managed {
                Some(_) => self.delete(&api, &shadow_ref).await,
                None => Ok(Outcome::Absent),
            };
        };
        if existing.is_some() && managed.is_none() {
            warn!(secret = %secret, shadow = %shadow_ref, "a Secret with the shadow's name exists and is not managed by kloak");
            self.warn(
                source,
                "ShadowNameTaken",
                format!(
                    "Secret {} exists and is not managed by kloak: rename or delete it",
                    shadow_ref.name
                ),
            )
            .await;
            return Ok(Outcome::NameTaken);
        }
        let mut rng = rand::rngs::OsRng;
        let plan = match shadow::plan_avoiding(
            source,
            managed,
            self.require_hosts,
            now,
            self.grace_seconds,
            is_taken,
            &mut rng,
        ) {
            Ok(plan) => plan,
            Err(problems) => {
                self.refuse(secret, source, &problems).await;
                if managed.is_some() {
                    self.delete(&api, &shadow_ref).await?;
                }
                return Ok(Outcome::Refused(
                    problems.iter().map(Problem::reason).collect(),
                ));
            }
        };
        let mut desired = shadow::shadow_secret(source, &plan);
        let outcome = match managed {
            None => {
                api.create(&post_params(), &desired)
                    .await
                    .map_err(api_error("create", &shadow_ref))?;
                Outcome::Created
            }
            Some(current) if shadow::differs(current, &desired) => {
                desired.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(&shadow_ref.name, &post_params(), &desired)
                    .await
                    .map_err(api_error("update", &shadow_ref))?;
                Outcome::Updated
            }
            Some(_) => Outcome::Unchanged,
        };
        if outcome != Outcome::Unchanged {
            info!(secret = %secret, shadow = %shadow_ref, outcome = ?outcome, keys = plan.placeholders.len(), retired = plan.retired.len(), "shadow written");
            if plan.policy.allows_any_host() {
                self.warn(
                    source,
                    "AnyHost",
                    format!(
                        "no {} annotation: these values may be sent to any host",
                        k8s::HOSTS_ANNOTATION
                    ),
                )
                .await;
            }
        } else {
            debug!(secret = %secret, "shadow up to date");
        }
        Ok(outcome)
    }

    /// Uninstall: deletes every shadow kloak manages in `scopes` (namespaces,
    /// "" for all), whatever its source says. Returns how many it deleted.
    pub async fn remove_all(&self, scopes: &[String]) -> Result<usize, kube::Error> {
        let managed = format!("{}={}", k8s::MANAGED_LABEL, k8s::TRUE);
        let mut deleted = 0;
        for scope in scopes {
            let api: Api<Secret> = if scope.is_empty() {
                Api::all(self.client.clone())
            } else {
                Api::namespaced(self.client.clone(), scope)
            };
            let shadows = api
                .list_metadata(&ListParams::default().labels(&managed))
                .await?;
            for shadow in shadows {
                let (Some(namespace), Some(name)) =
                    (shadow.metadata.namespace, shadow.metadata.name)
                else {
                    continue;
                };
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(err) => return Err(err),
                }
                info!(shadow = %SecretRef::new(namespace, name), "shadow deleted (uninstall)");
            }
        }
        Ok(deleted)
    }

    async fn delete(
        &self,
        api: &Api<Secret>,
        shadow_ref: &SecretRef,
    ) -> Result<Outcome, WriteError> {
        match api.delete(&shadow_ref.name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(shadow = %shadow_ref, "shadow deleted");
                Ok(Outcome::Deleted)
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Outcome::Absent),
            Err(source) => Err(WriteError::Api {
                verb: "delete",
                shadow: shadow_ref.clone(),
                source,
            }),
        }
    }

    /// One Event lists every problem: the recorder folds Events with the same
    /// reason into one series, so separate ones would hide all but the first.
    async fn refuse(&self, secret: &SecretRef, source: &Secret, problems: &[Problem]) {
        for problem in problems {
            warn!(secret = %secret, reason = problem.reason(), problem = %problem, "secret refused: no shadow");
        }
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        self.warn(
            source,
            "InvalidKloakSecret",
            format!("no shadow: {}", list.join("; ")),
        )
        .await;
    }

    /// Events are best effort: a missing `create events` permission is logged, never fatal.
    async fn warn(&self, source: &Secret, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &source.object_ref(&())).await {
            warn!(%err, reason, "cannot publish a Kubernetes Event");
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(k8s::FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

fn api_error<'a>(
    verb: &'static str,
    shadow: &'a SecretRef,
) -> impl FnOnce(kube::Error) -> WriteError + 'a {
    move |source| WriteError::Api {
        verb,
        shadow: shadow.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{conflict, not_found, scripted, Call};
    use crate::secrets::shadow::tests::{source, REAL};
    use kube::runtime::events::Reporter;
    use serde_json::{json, Value};

    const SECRETS: &str = "/api/v1/namespaces/agents/secrets";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/agents/events";

    fn writer(client: kube::Client, require_hosts: bool) -> ShadowWriter {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "kloak".into(),
                instance: Some("kloak-node-a".into()),
            },
        );
        // The sender may drop: the receiver keeps the last value (leader).
        let (_, leader) = watch::channel(true);
        ShadowWriter::new(client, recorder, leader, require_hosts, 600)
    }

    #[tokio::test]
    async fn only_the_leader_writes() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let (client, server) = scripted(vec![Call::new("POST", SECRETS, 201, json!({}))]);
        let recorder = Recorder::new(client.clone(), "kloak".into());
        let (elected, leader) = watch::channel(false);
        let w = ShadowWriter::new(client, recorder, leader, false, 600);
        let outcome = w
            .reconcile(&secret_ref(), Some(&src), None, 0)
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::Follower, "a follower makes no call");
        elected.send(true).expect("receiver alive");
        let outcome = w
            .reconcile(&secret_ref(), Some(&src), None, 0)
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::Created);
        elected.send(false).expect("receiver alive");
        let unlabelled = Secret {
            metadata: Default::default(),
            ..src.clone()
        };
        let outcome = w
            .reconcile(&secret_ref(), Some(&unlabelled), None, 1)
            .await
            .expect("ok");
        assert_eq!(
            outcome,
            Outcome::Follower,
            "stepping down stops writes at once"
        );
        drop(w);
        server.await.expect("exactly the leader's call");
    }

    fn secret_ref() -> SecretRef {
        SecretRef::new("agents", "openai")
    }

    fn hosts() -> [(&'static str, &'static str); 1] {
        [(k8s::HOSTS_ANNOTATION, "api.openai.com")]
    }

    /// What the API server returns for a created or replaced shadow.
    fn stored(shadow: &Secret, version: &str) -> Secret {
        let mut stored = shadow.clone();
        stored.metadata.resource_version = Some(version.into());
        stored
    }

    fn no_real_value(body: &Value) {
        let text = body.to_string();
        assert!(!text.contains(REAL), "a real value reached the API: {text}");
        let encoded = k8s_openapi::ByteString(REAL.as_bytes().to_vec());
        let encoded = serde_json::to_string(&encoded).expect("json");
        assert!(
            !text.contains(encoded.trim_matches('"')),
            "a real value (base64) reached the API"
        );
    }

    #[tokio::test]
    async fn a_new_source_gets_its_shadow_created() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let (client, server) = scripted(vec![Call::new("POST", SECRETS, 201, json!({})).checking(
            |body| {
                no_real_value(body);
                assert_eq!(body["metadata"]["name"], "openai-kloak");
                assert_eq!(body["metadata"]["labels"]["getkloak.io/managed"], "true");
                assert_eq!(body["metadata"]["labels"]["getkloak.io/owner"], "openai");
                assert_eq!(body["metadata"]["ownerReferences"][0]["name"], "openai");
                assert_eq!(body["type"], "Opaque");
            },
        )]);
        let w = writer(client, false);
        let outcome = w
            .reconcile(&secret_ref(), Some(&src), None, 0)
            .await
            .expect("reconcile");
        assert_eq!(outcome, Outcome::Created);
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn an_unchanged_source_makes_no_call_and_a_changed_one_updates_with_its_version() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let plan = shadow::plan(&src, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
        let existing = stored(&shadow::shadow_secret(&src, &plan), "41");
        let (client, server) = scripted(vec![Call::new(
            "PUT",
            format!("{SECRETS}/openai-kloak"),
            200,
            json!({}),
        )
        .checking(|body| {
            no_real_value(body);
            assert_eq!(body["metadata"]["resourceVersion"], "41");
            assert_eq!(body["data"].as_object().map(|d| d.len()), Some(2));
        })]);
        let w = writer(client, false);
        let same = w
            .reconcile(&secret_ref(), Some(&src), Some(&existing), 1)
            .await
            .expect("reconcile");
        assert_eq!(same, Outcome::Unchanged);
        let added = source(
            &[("API_KEY", REAL), ("ORG", "org-0123456789abcdef")],
            &hosts(),
        );
        let updated = w
            .reconcile(&secret_ref(), Some(&added), Some(&existing), 2)
            .await
            .expect("reconcile");
        assert_eq!(updated, Outcome::Updated);
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn bad_input_gets_a_warning_event_and_no_shadow() {
        let src = source(
            &[("API_KEY", "too-short")],
            &[(k8s::HOSTS_ANNOTATION, "bad host!")],
        );
        let (client, server) = scripted(vec![Call::new("POST", EVENTS, 201, json!({})).checking(
            |body| {
                assert_eq!(body["type"], "Warning");
                assert_eq!(body["reason"], "InvalidKloakSecret");
                assert_eq!(body["regarding"]["name"], "openai");
                let note = body["note"].as_str().unwrap_or("");
                assert!(note.contains(k8s::HOSTS_ANNOTATION), "{note}");
                assert!(
                    note.contains("API_KEY") && note.contains("at least 12 bytes"),
                    "{note}"
                );
                assert!(
                    !note.contains("too-short"),
                    "the value leaked into an Event"
                );
            },
        )]);
        let w = writer(client, false);
        let outcome = w
            .reconcile(&secret_ref(), Some(&src), None, 0)
            .await
            .expect("reconcile");
        assert_eq!(
            outcome,
            Outcome::Refused(vec!["invalid_hosts", "value_too_short"])
        );
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn a_source_that_turns_bad_loses_its_shadow() {
        let good = source(&[("API_KEY", REAL)], &hosts());
        let plan = shadow::plan(&good, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
        let existing = stored(&shadow::shadow_secret(&good, &plan), "7");
        let bad = source(&[("API_KEY", REAL)], &[(k8s::PORT_ANNOTATION, "http")]);
        let (client, server) = scripted(vec![
            Call::new("POST", EVENTS, 201, json!({})),
            Call::new("DELETE", format!("{SECRETS}/openai-kloak"), 200, json!({})),
        ]);
        let w = writer(client, false);
        let outcome = w
            .reconcile(&secret_ref(), Some(&bad), Some(&existing), 1)
            .await
            .expect("reconcile");
        assert_eq!(outcome, Outcome::Refused(vec!["invalid_port"]));
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn missing_hosts_warns_or_with_require_hosts_refuses() {
        let src = source(&[("API_KEY", REAL)], &[]);
        let (client, server) = scripted(vec![
            Call::new("POST", SECRETS, 201, json!({})),
            Call::new("POST", EVENTS, 201, json!({}))
                .checking(|body| assert_eq!(body["reason"], "AnyHost")),
        ]);
        let w = writer(client, false);
        assert_eq!(
            w.reconcile(&secret_ref(), Some(&src), None, 0)
                .await
                .expect("reconcile"),
            Outcome::Created
        );
        drop(w);
        server.await.expect("every call made");

        let (client, server) = scripted(vec![Call::new("POST", EVENTS, 201, json!({}))
            .checking(|body| assert!(body["note"].as_str().unwrap_or("").contains("required")))]);
        let w = writer(client, true);
        assert_eq!(
            w.reconcile(&secret_ref(), Some(&src), None, 0)
                .await
                .expect("reconcile"),
            Outcome::Refused(vec!["hosts_required"])
        );
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn removing_the_label_or_the_source_deletes_only_a_managed_shadow() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let plan = shadow::plan(&src, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
        let existing = stored(&shadow::shadow_secret(&src, &plan), "3");
        let mut unlabelled = src.clone();
        unlabelled.metadata.labels = None;
        let mut foreign = existing.clone();
        foreign.metadata.labels = None;
        let (client, server) = scripted(vec![
            Call::new("DELETE", format!("{SECRETS}/openai-kloak"), 200, json!({})),
            Call::new(
                "DELETE",
                format!("{SECRETS}/openai-kloak"),
                404,
                not_found(),
            ),
        ]);
        let w = writer(client, false);
        let r = secret_ref();
        assert_eq!(
            w.reconcile(&r, Some(&unlabelled), Some(&existing), 0)
                .await
                .expect("ok"),
            Outcome::Deleted
        );
        // Already gone (a race with garbage collection) is fine.
        assert_eq!(
            w.reconcile(&r, None, Some(&existing), 0).await.expect("ok"),
            Outcome::Absent
        );
        // A Secret that merely has the shadow's name is never deleted.
        assert_eq!(
            w.reconcile(&r, None, Some(&foreign), 0).await.expect("ok"),
            Outcome::Absent
        );
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn a_foreign_secret_with_the_shadow_name_is_reported_not_overwritten() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let mut foreign = source(&[("API_KEY", "someone-elses-data")], &[]);
        foreign.metadata.name = Some("openai-kloak".into());
        foreign.metadata.labels = None;
        let (client, server) = scripted(vec![Call::new("POST", EVENTS, 201, json!({}))
            .checking(|body| assert_eq!(body["reason"], "ShadowNameTaken"))]);
        let w = writer(client, false);
        let outcome = w
            .reconcile(&secret_ref(), Some(&src), Some(&foreign), 0)
            .await
            .expect("ok");
        assert_eq!(outcome, Outcome::NameTaken);
        drop(w);
        server.await.expect("every call made");
    }

    #[tokio::test]
    async fn a_conflict_is_an_error_for_the_caller_to_retry() {
        let src = source(&[("API_KEY", REAL)], &hosts());
        let (client, server) = scripted(vec![Call::new("POST", SECRETS, 409, conflict())]);
        let w = writer(client, false);
        let err = w
            .reconcile(&secret_ref(), Some(&src), None, 0)
            .await
            .expect_err("conflict");
        assert_eq!(err.metric_label(), "create");
        assert!(!format!("{err:?} {err}").contains(REAL));
        drop(w);
        server.await.expect("every call made");
    }
}
