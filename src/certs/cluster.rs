//! The Kubernetes edge of certgen: settle the TLS Secret (create, reuse or
//! replace it, racing safely with other certgen runs), then make every
//! webhook of the MutatingWebhookConfiguration trust the Secret's CA bundle.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, TestOperation};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use rand::Rng;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::bundle::{
    assess, days, format_time, generate, renew, CertBundle, CertError, ReplaceReason, Verdict,
    WebhookIdentity, CA_FILE, CERT_FILE, KEY_FILE,
};
use super::files::write_bundle;
use crate::cli::CertgenArgs;
use crate::k8s::FIELD_MANAGER;

const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY: &str = "kloak-certgen";
/// Writes lost to a concurrent writer are retried this many times in all.
const ATTEMPTS: u32 = 5;
const BACKOFF_BASE_MS: u64 = 50;

/// What a certgen run did.
#[derive(Debug)]
pub struct Outcome {
    /// The bundle now in the Secret (and in `--output-dir`).
    pub bundle: CertBundle,
    pub secret: SecretAction,
    /// Webhook entries whose caBundle was changed (0 when all were current).
    pub webhooks_patched: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretAction {
    /// The stored bundle was valid (possibly written by a concurrent run).
    Reused,
    Created,
    Replaced(ReplaceReason),
}

impl fmt::Display for SecretAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reused => f.write_str("reused"),
            Self::Created => f.write_str("created"),
            Self::Replaced(reason) => write!(f, "replaced ({reason})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertgenError {
    #[error(
        "certgen needs `{verb}` on {object}: add the rule {rule} to certgen's {role} \
         (API server: {message})"
    )]
    Forbidden {
        verb: &'static str,
        object: String,
        rule: String,
        role: String,
        message: String,
    },
    #[error(
        "MutatingWebhookConfiguration {0} does not exist: the chart must install it before \
         certgen runs (or --webhook-config names the wrong one)"
    )]
    WebhookConfigurationMissing(String),
    #[error("{0} kept changing under concurrent writers; gave up after {ATTEMPTS} attempts")]
    Contended(String),
    #[error("cannot {verb} {object}")]
    Api {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Settles the Secret, patches the caBundles and, with `--output-dir`, writes
/// the bundle the Secret holds. `now` is the clock for every validity decision.
pub async fn certgen(
    client: Client,
    args: &CertgenArgs,
    now: SystemTime,
) -> anyhow::Result<Outcome> {
    let identity = WebhookIdentity::new(&args.service, &args.namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let (bundle, secret) = settle_secret(&secrets, args, &identity, now).await?;

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client);
    let webhooks_patched =
        patch_ca_bundles(&configs, &args.webhook_config, bundle.ca_pem.as_bytes()).await?;

    if let Some(dir) = &args.output_dir {
        write_bundle(dir, &bundle)
            .with_context(|| format!("cannot write the certificates to {}", dir.display()))?;
        info!(dir = %dir.display(), "certificates written");
    }
    Ok(Outcome {
        bundle,
        secret,
        webhooks_patched,
    })
}

async fn settle_secret(
    secrets: &Api<Secret>,
    args: &CertgenArgs,
    identity: &WebhookIdentity,
    now: SystemTime,
) -> anyhow::Result<(CertBundle, SecretAction)> {
    let (name, namespace) = (args.secret.as_str(), args.namespace.as_str());
    let access = |verb| Access {
        verb,
        target: Target::Secret { name, namespace },
    };
    let min_validity = days(args.min_validity_days);
    let post = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    for attempt in 0..ATTEMPTS {
        let current = secrets
            .get_opt(name)
            .await
            .map_err(|err| access("get").error(err))?;

        let Some(mut secret) = current else {
            let bundle = generate(identity, now).map_err(CertgenError::from)?;
            match secrets
                .create(&post, &new_secret(name, namespace, &bundle))
                .await
            {
                Ok(_) => {
                    info!(
                        secret = name,
                        namespace,
                        verdict = "create",
                        not_after = %not_after(&bundle),
                        "certificate Secret created"
                    );
                    return Ok((bundle, SecretAction::Created));
                }
                // Another certgen created it between our read and our write:
                // its bundle is as good as ours, so read it and judge it.
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    debug!(secret = name, namespace, "lost the create race; re-reading");
                    continue;
                }
                Err(err) => {
                    let create = Access {
                        verb: "create",
                        target: Target::Secrets { namespace },
                    };
                    return Err(create.error(err));
                }
            }
        };

        let existing = bundle_from_secret(&secret);
        let reason = match assess(existing.as_ref(), identity, now, min_validity) {
            Verdict::Replace(reason) => reason,
            Verdict::Reuse => match existing {
                Some(bundle) => {
                    info!(
                        secret = name,
                        namespace,
                        verdict = "reuse",
                        not_after = %not_after(&bundle),
                        "certificate is valid; reusing it"
                    );
                    return Ok((bundle, SecretAction::Reused));
                }
                // assess never reuses an absent bundle.
                None => ReplaceReason::Missing,
            },
        };
        info!(
            secret = name,
            namespace,
            verdict = "replace",
            reason = %reason,
            "replacing the certificate"
        );
        let bundle = renew(identity, existing.as_ref(), now).map_err(CertgenError::from)?;
        // The object keeps the resourceVersion we read: if anyone wrote in
        // between, the API server answers 409 instead of losing their write.
        store(&mut secret, &bundle);
        match secrets.replace(name, &post, &secret).await {
            Ok(_) => {
                info!(
                    secret = name,
                    namespace,
                    verdict = "replace",
                    not_after = %not_after(&bundle),
                    "certificate Secret updated"
                );
                return Ok((bundle, SecretAction::Replaced(reason)));
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                debug!(
                    secret = name,
                    namespace, attempt, "update conflict; re-reading"
                );
                backoff(attempt).await;
            }
            Err(err) => return Err(access("update").error(err)),
        }
    }
    Err(CertgenError::Contended(format!("secrets/{name} in namespace {namespace}")).into())
}

async fn patch_ca_bundles(
    configs: &Api<MutatingWebhookConfiguration>,
    name: &str,
    ca_bundle: &[u8],
) -> anyhow::Result<usize> {
    let access = |verb| Access {
        verb,
        target: Target::WebhookConfiguration { name },
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    // A refused patch is either a lost race (the `test` on resourceVersion
    // failed) or a real rejection; only a fresh read can tell them apart.
    let mut refused: Option<(Option<String>, kube::Error)> = None;
    for attempt in 0..ATTEMPTS {
        let config = match configs.get(name).await {
            Ok(config) => config,
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                return Err(CertgenError::WebhookConfigurationMissing(name.to_string()).into())
            }
            Err(err) => return Err(access("get").error(err)),
        };
        if let Some((read_version, err)) = refused.take() {
            if read_version == config.metadata.resource_version {
                return Err(access("patch").error(err));
            }
        }
        let Some((patch, stale)) =
            ca_bundle_patch(&config, ca_bundle).context("cannot encode the caBundle patch")?
        else {
            if config.webhooks.as_ref().is_none_or(Vec::is_empty) {
                warn!(webhook_config = name, "the configuration has no webhooks");
            }
            debug!(webhook_config = name, "every caBundle is current");
            return Ok(0);
        };
        match configs
            .patch(name, &params, &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => {
                info!(webhook_config = name, webhooks = stale, "caBundle patched");
                return Ok(stale);
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                debug!(webhook_config = name, attempt, "patch conflict; re-reading");
                backoff(attempt).await;
            }
            Err(kube::Error::Api(status)) if status.is_invalid() => {
                debug!(webhook_config = name, attempt, "patch refused; re-reading");
                refused = Some((config.metadata.resource_version, kube::Error::Api(status)));
                backoff(attempt).await;
            }
            Err(err) => return Err(access("patch").error(err)),
        }
    }
    Err(CertgenError::Contended(format!("mutatingwebhookconfigurations/{name}")).into())
}

/// The JSON patch that sets `ca_bundle` on every webhook entry that lacks it,
/// with the number of such entries; `None` when all are current. The patch
/// first tests the resourceVersion it was computed from, so an entry added
/// concurrently (a `helm upgrade`) makes it fail instead of being skipped.
fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    ca_bundle: &[u8],
) -> Result<Option<(json_patch::Patch, usize)>, serde_json::Error> {
    let stale: Vec<usize> = config
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, webhook)| {
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .is_none_or(|current| current.0 != ca_bundle)
        })
        .map(|(index, _)| index)
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    let encoded = serde_json::to_value(ByteString(ca_bundle.to_vec()))?;
    let mut operations = Vec::with_capacity(stale.len() + 1);
    if let Some(version) = &config.metadata.resource_version {
        operations.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
            value: serde_json::Value::String(version.clone()),
        }));
    }
    for &index in &stale {
        operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens([
                "webhooks".to_string(),
                index.to_string(),
                "clientConfig".to_string(),
                "caBundle".to_string(),
            ]),
            value: encoded.clone(),
        }));
    }
    Ok(Some((json_patch::Patch(operations), stale.len())))
}

/// The bundle a Secret holds; `None` when one of its three keys is absent.
fn bundle_from_secret(secret: &Secret) -> Option<CertBundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .map(|value| String::from_utf8_lossy(&value.0).into_owned())
    };
    Some(CertBundle {
        ca_pem: text(CA_FILE)?,
        cert_pem: text(CERT_FILE)?,
        key_pem: Zeroizing::new(text(KEY_FILE)?),
    })
}

fn new_secret(name: &str, namespace: &str, bundle: &CertBundle) -> Secret {
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        ..Secret::default()
    };
    store(&mut secret, bundle);
    secret
}

/// Puts the bundle into `secret`, leaving its metadata, type and any other
/// keys as they are (they may belong to whoever created the Secret).
fn store(secret: &mut Secret, bundle: &CertBundle) {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        (CA_FILE, bundle.ca_pem.as_bytes()),
        (CERT_FILE, bundle.cert_pem.as_bytes()),
        (KEY_FILE, bundle.key_pem.as_bytes()),
    ] {
        data.insert(key.to_string(), ByteString(value.to_vec()));
    }
    secret.string_data = None;
}

fn not_after(bundle: &CertBundle) -> String {
    bundle
        .not_after()
        .map_or_else(|| "unknown".to_string(), format_time)
}

/// Exponential with full jitter, so concurrent runs (one init container per
/// webhook replica) do not retry in lockstep.
async fn backoff(attempt: u32) {
    let base = BACKOFF_BASE_MS << attempt.min(6);
    let jitter = rand::thread_rng().gen_range(0..=base);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// One API call certgen makes, to name it (and the RBAC rule that allows it)
/// when it fails.
#[derive(Clone, Copy)]
struct Access<'a> {
    verb: &'static str,
    target: Target<'a>,
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Secret {
        name: &'a str,
        namespace: &'a str,
    },
    /// `create` names no object: RBAC cannot match it by resourceNames
    /// because the name is not known when the request is authorized.
    Secrets {
        namespace: &'a str,
    },
    WebhookConfiguration {
        name: &'a str,
    },
}

impl Access<'_> {
    fn error(self, err: kube::Error) -> anyhow::Error {
        let Self { verb, target } = self;
        let object = match target {
            Target::Secret { name, namespace } => {
                format!("secrets/{name} in namespace {namespace}")
            }
            Target::Secrets { namespace } => format!("secrets in namespace {namespace}"),
            Target::WebhookConfiguration { name } => {
                format!("mutatingwebhookconfigurations.admissionregistration.k8s.io/{name}")
            }
        };
        match err {
            kube::Error::Api(status) if status.is_forbidden() => CertgenError::Forbidden {
                verb,
                object,
                rule: self.rule(),
                role: match target {
                    Target::Secret { namespace, .. } | Target::Secrets { namespace } => {
                        format!("Role in namespace {namespace}")
                    }
                    Target::WebhookConfiguration { .. } => "ClusterRole".to_string(),
                },
                message: status.message,
            }
            .into(),
            source => CertgenError::Api {
                verb,
                object,
                source,
            }
            .into(),
        }
    }

    fn rule(self) -> String {
        let (group, resource, name) = match self.target {
            Target::Secret { name, .. } => ("", "secrets", Some(name)),
            Target::Secrets { .. } => ("", "secrets", None),
            Target::WebhookConfiguration { name } => (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                Some(name),
            ),
        };
        let verb = self.verb;
        match name {
            Some(name) => format!(
                "{{apiGroups: [\"{group}\"], resources: [\"{resource}\"], \
                 resourceNames: [\"{name}\"], verbs: [\"{verb}\"]}}"
            ),
            None => format!(
                "{{apiGroups: [\"{group}\"], resources: [\"{resource}\"], verbs: [\"{verb}\"]}} \
                 (without resourceNames: RBAC cannot restrict {verb} by name)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    fn config(bundles: &[Option<&[u8]>]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some("kloak".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            webhooks: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(index, bundle)| MutatingWebhook {
                        name: format!("hook{index}.getkloak.io"),
                        client_config: WebhookClientConfig {
                            ca_bundle: bundle.map(|bytes| ByteString(bytes.to_vec())),
                            ..WebhookClientConfig::default()
                        },
                        ..MutatingWebhook::default()
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn patch_sets_only_stale_entries_and_tests_the_version() {
        let ca: &[u8] = b"new";
        let (patch, stale) = ca_bundle_patch(&config(&[Some(ca), None, Some(b"old")]), ca)
            .expect("encodes")
            .expect("two entries are stale");
        assert_eq!(stale, 2);
        assert_eq!(
            serde_json::to_value(&patch).expect("serializes"),
            serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "bmV3"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": "bmV3"},
            ])
        );
    }

    #[test]
    fn no_patch_when_every_entry_is_current_or_there_are_none() {
        let ca: &[u8] = b"new";
        assert!(ca_bundle_patch(&config(&[Some(ca), Some(ca)]), ca)
            .expect("encodes")
            .is_none());
        assert!(ca_bundle_patch(&config(&[]), ca)
            .expect("encodes")
            .is_none());
    }

    #[test]
    fn secret_round_trip_keeps_foreign_keys_and_metadata() {
        let bundle = CertBundle {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: Zeroizing::new("key".into()),
        };
        let mut secret = new_secret("tls", "ns", &bundle);
        assert_eq!(secret.type_.as_deref(), Some(TLS_SECRET_TYPE));
        assert_eq!(bundle_from_secret(&secret), Some(bundle.clone()));

        secret.metadata.resource_version = Some("7".into());
        if let Some(data) = secret.data.as_mut() {
            data.insert("extra".into(), ByteString(b"x".to_vec()));
        }
        let renewed = CertBundle {
            ca_pem: "ca2".into(),
            ..bundle
        };
        store(&mut secret, &renewed);
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(bundle_from_secret(&secret), Some(renewed));
        assert!(secret.data.is_some_and(|data| data.contains_key("extra")));
    }

    #[test]
    fn a_secret_missing_a_key_holds_no_bundle() {
        let mut secret = new_secret(
            "tls",
            "ns",
            &CertBundle {
                ca_pem: "ca".into(),
                cert_pem: "cert".into(),
                key_pem: Zeroizing::new("key".into()),
            },
        );
        if let Some(data) = secret.data.as_mut() {
            data.remove(KEY_FILE);
        }
        assert_eq!(bundle_from_secret(&secret), None);
    }

    #[test]
    fn forbidden_names_verb_object_and_rule() {
        let status =
            kube::core::Status::failure("secrets is forbidden", "Forbidden").with_code(403);
        let create = Access {
            verb: "create",
            target: Target::Secrets {
                namespace: "kloak-system",
            },
        }
        .error(kube::Error::Api(status.clone().boxed()))
        .to_string();
        assert!(
            create.contains("`create` on secrets in namespace kloak-system"),
            "{create}"
        );
        assert!(create.contains("without resourceNames"), "{create}");
        assert!(
            create.contains("Role in namespace kloak-system"),
            "{create}"
        );

        let patch = Access {
            verb: "patch",
            target: Target::WebhookConfiguration { name: "kloak" },
        }
        .error(kube::Error::Api(status.boxed()))
        .to_string();
        assert!(
            patch.contains("`patch` on mutatingwebhookconfigurations"),
            "{patch}"
        );
        assert!(patch.contains("resourceNames: [\"kloak\"]"), "{patch}");
        assert!(patch.contains("ClusterRole"), "{patch}");
    }
}
