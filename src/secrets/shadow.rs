//! The shadow Secret a source Secret gets (pure).
//!
//! A shadow has the source's keys with placeholders for values. Placeholders
//! are stable: one is kept while the real value keeps its length and HPACK
//! Huffman length; otherwise a new one is minted and the old one is
//! "retired" (listed in an annotation with an expiry) so pods that still
//! hold it keep working until the kubelet refreshes their mounts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::k8s::{self, HOSTS_ANNOTATION, MANAGED_LABEL, OWNER_LABEL, PORT_ANNOTATION};
use crate::placeholder::{self, Placeholder, PlaceholderError, SecretValue};
use crate::policy::{parse_hosts, parse_port, Policy, PolicyError};

/// Annotation on a shadow listing retired placeholders and their expiry.
pub const RETIRED_ANNOTATION: &str = "getkloak.io/retired";

/// Why a source Secret gets no shadow. Messages name keys, never values.
#[derive(Debug, Error, PartialEq)]
pub enum Problem {
    #[error("{key} is set as a label; kloak policy keys must be annotations (refusing rather than allowing every host)")]
    PolicyAsLabel { key: &'static str },
    #[error("annotation {HOSTS_ANNOTATION}: {0}")]
    InvalidHosts(PolicyError),
    #[error("annotation {PORT_ANNOTATION}: {0}")]
    InvalidPort(PolicyError),
    #[error("annotation {HOSTS_ANNOTATION} is required on this cluster (--require-hosts)")]
    HostsRequired,
    #[error("the Secret has no data")]
    NoData,
    #[error("key {key}: {error}")]
    Value {
        key: String,
        error: PlaceholderError,
    },
}

impl Problem {
    /// A short, fixed name for metrics and Kubernetes Event reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PolicyAsLabel { .. } => "policy_label",
            Self::InvalidHosts(_) => "invalid_hosts",
            Self::InvalidPort(_) => "invalid_port",
            Self::HostsRequired => "hosts_required",
            Self::NoData => "no_data",
            Self::Value { error, .. } => match error {
                PlaceholderError::TooShort { .. } => "value_too_short",
                PlaceholderError::TooLong { .. } => "value_too_long",
                _ => "no_placeholder",
            },
        }
    }
}

/// A placeholder that stopped standing for the current value; honoured until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    pub key: String,
    pub placeholder: String,
    /// Unix seconds.
    pub until: i64,
}

/// What the shadow of one source Secret holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub placeholders: BTreeMap<String, Placeholder>,
    pub retired: Vec<Retired>,
    pub policy: Policy,
}

/// Reads the policy annotations. `Ok(policy)` with no hosts means any host
/// (the caller warns); with `require_hosts` that is a problem instead.
pub fn policy_of(secret: &Secret, require_hosts: bool) -> Result<Policy, Vec<Problem>> {
    let mut problems = Vec::new();
    let labels = secret.metadata.labels.as_ref();
    for key in [HOSTS_ANNOTATION, PORT_ANNOTATION] {
        if labels.is_some_and(|labels| labels.contains_key(key)) {
            problems.push(Problem::PolicyAsLabel { key });
        }
    }
    let annotations = secret.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    let hosts = match annotation(HOSTS_ANNOTATION).map(|list| parse_hosts(list)) {
        Some(Ok(hosts)) => hosts,
        Some(Err(error)) => {
            problems.push(Problem::InvalidHosts(error));
            Vec::new()
        }
        None => Vec::new(),
    };
    if hosts.is_empty() && require_hosts && !problems.iter().any(is_hosts_problem) {
        problems.push(Problem::HostsRequired);
    }
    let port = match annotation(PORT_ANNOTATION).map(|text| parse_port(text)) {
        Some(Ok(port)) => Some(port),
        Some(Err(error)) => {
            problems.push(Problem::InvalidPort(error));
            None
        }
        None => None,
    };
    if problems.is_empty() {
        Ok(Policy { hosts, port })
    } else {
        Err(problems)
    }
}

fn is_hosts_problem(problem: &Problem) -> bool {
    matches!(
        problem,
        Problem::InvalidHosts(_)
            | Problem::PolicyAsLabel {
                key: HOSTS_ANNOTATION
            }
    )
}

/// The real values of a source Secret, checked. Values are wrapped at once
/// so they are zeroized on drop and never printed.
pub fn values_of(secret: &Secret) -> Result<BTreeMap<String, SecretValue>, Vec<Problem>> {
    let data = secret.data.as_ref().filter(|data| !data.is_empty());
    let Some(data) = data else {
        return Err(vec![Problem::NoData]);
    };
    let mut problems = Vec::new();
    let mut values = BTreeMap::new();
    for (key, ByteString(bytes)) in data {
        let value = SecretValue::new(bytes.clone());
        match value.check_length() {
            Ok(()) => {
                values.insert(key.clone(), value);
            }
            Err(error) => problems.push(Problem::Value {
                key: key.clone(),
                error,
            }),
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

/// Placeholders and retired entries already recorded in a shadow.
pub fn recorded(shadow: &Secret) -> (BTreeMap<String, Placeholder>, Vec<Retired>) {
    let placeholders = shadow
        .data
        .iter()
        .flatten()
        .filter_map(|(key, ByteString(bytes))| {
            let text = std::str::from_utf8(bytes).ok()?;
            Some((key.clone(), placeholder::validate(text).ok()?))
        })
        .collect();
    (placeholders, retired_of(shadow))
}

/// The retired list of a shadow; an unreadable annotation counts as empty
/// (those placeholders then stop working, which fails closed).
pub fn retired_of(shadow: &Secret) -> Vec<Retired> {
    shadow
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETIRED_ANNOTATION))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// Computes the shadow's content for `source`, reusing what `existing` recorded.
pub fn plan(
    source: &Secret,
    existing: Option<&Secret>,
    require_hosts: bool,
    now: i64,
    grace_seconds: i64,
    rng: &mut impl RngCore,
) -> Result<Plan, Vec<Problem>> {
    plan_avoiding(
        source,
        existing,
        require_hosts,
        now,
        grace_seconds,
        &|_| false,
        rng,
    )
}

/// Draws before giving up on a placeholder whose lookup key is taken.
const KEY_DRAWS: usize = 32;

/// [`plan`], where a new placeholder never starts with the same 16 bytes (the
/// kernel's lookup key) as a taken one: values with few Huffman-compatible
/// placeholders would otherwise collide at scale.
pub fn plan_avoiding(
    source: &Secret,
    existing: Option<&Secret>,
    require_hosts: bool,
    now: i64,
    grace_seconds: i64,
    is_taken: &dyn Fn(&[u8; placeholder::KEY_LEN]) -> bool,
    rng: &mut impl RngCore,
) -> Result<Plan, Vec<Problem>> {
    let policy = policy_of(source, require_hosts);
    let values = values_of(source);
    let (policy, values) = match (policy, values) {
        (Ok(policy), Ok(values)) => (policy, values),
        (policy, values) => {
            let mut problems = policy.err().unwrap_or_default();
            problems.extend(values.err().unwrap_or_default());
            return Err(problems);
        }
    };
    let (previous, mut retired) = existing.map(recorded).unwrap_or_default();
    retired.retain(|entry| entry.until > now && values.contains_key(&entry.key));
    let mut placeholders = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in &values {
        let kept = previous
            .get(key)
            .filter(|old| placeholder::is_compatible(old, value));
        let chosen = match kept {
            Some(old) => old.clone(),
            None => match generate_free(value, is_taken, rng) {
                Ok(new) => {
                    if let Some(old) = previous.get(key) {
                        retired.push(Retired {
                            key: key.clone(),
                            placeholder: old.as_str().to_owned(),
                            until: now + grace_seconds,
                        });
                    }
                    new
                }
                Err(error) => {
                    problems.push(Problem::Value {
                        key: key.clone(),
                        error,
                    });
                    continue;
                }
            },
        };
        placeholders.insert(key.clone(), chosen);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Plan {
        placeholders,
        retired,
        policy,
    })
}

/// A new placeholder whose lookup key is not taken; after [`KEY_DRAWS`]
/// draws the last one is used (the node then reports the clash).
fn generate_free(
    value: &SecretValue,
    is_taken: &dyn Fn(&[u8; placeholder::KEY_LEN]) -> bool,
    rng: &mut impl RngCore,
) -> Result<Placeholder, PlaceholderError> {
    let mut drawn = placeholder::generate(value, rng)?;
    for _ in 1..KEY_DRAWS {
        if !is_taken(&placeholder::lookup_key(drawn.as_bytes())) {
            break;
        }
        drawn = placeholder::generate(value, rng)?;
    }
    Ok(drawn)
}

/// The shadow Secret object for a plan: same type, managed labels, owned by the source.
pub fn shadow_secret(source: &Secret, plan: &Plan) -> Secret {
    let name = source.metadata.name.clone().unwrap_or_default();
    let labels = BTreeMap::from([
        (MANAGED_LABEL.to_owned(), k8s::TRUE.to_owned()),
        (OWNER_LABEL.to_owned(), name.clone()),
    ]);
    let annotations = (!plan.retired.is_empty())
        .then(|| serde_json::to_string(&plan.retired).ok())
        .flatten()
        .map(|json| BTreeMap::from([(RETIRED_ANNOTATION.to_owned(), json)]));
    let owner = source.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
    Secret {
        metadata: ObjectMeta {
            name: Some(k8s::shadow_name(&name)),
            namespace: source.metadata.namespace.clone(),
            labels: Some(labels),
            annotations,
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        type_: source.type_.clone(),
        data: Some(
            plan.placeholders
                .iter()
                .map(|(key, p)| (key.clone(), ByteString(p.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether `existing` differs from `desired` in anything kloak owns.
pub fn differs(existing: &Secret, desired: &Secret) -> bool {
    let owned_labels_differ = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .any(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) != Some(v));
    let retired = |s: &Secret| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RETIRED_ANNOTATION))
            .cloned()
    };
    existing.data != desired.data
        || existing.type_ != desired.type_
        || owned_labels_differ
        || retired(existing) != retired(desired)
        || existing.metadata.owner_references != desired.metadata.owner_references
}

/// Whether a Secret is a shadow kloak manages for `source`.
pub fn is_shadow_of(shadow: &Secret, source: &str) -> bool {
    let labels = shadow.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    label(MANAGED_LABEL) == Some(k8s::TRUE) && label(OWNER_LABEL) == Some(source)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    pub(crate) const REAL: &str = "sk-live-0123456789abcdefghij";

    /// A labelled source Secret as the API server returns it.
    pub(crate) fn source(data: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("openai".into()),
                namespace: Some("agents".into()),
                uid: Some("5b1c7a9e-1111-4a0b-9c3d-000000000001".into()),
                labels: Some(BTreeMap::from([(
                    k8s::ENABLED_LABEL.to_owned(),
                    "true".to_owned(),
                )])),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn plan_for(
        source: &Secret,
        existing: Option<&Secret>,
        now: i64,
    ) -> Result<Plan, Vec<Problem>> {
        plan(source, existing, false, now, 600, &mut rng())
    }

    fn reasons(problems: &[Problem]) -> Vec<&'static str> {
        problems.iter().map(Problem::reason).collect()
    }

    #[test]
    fn new_secret_gets_length_matched_placeholders_and_ownership() {
        let src = source(
            &[("API_KEY", REAL)],
            &[(HOSTS_ANNOTATION, "api.openai.com")],
        );
        let plan = plan_for(&src, None, 1000).expect("valid secret");
        let placeholder = &plan.placeholders["API_KEY"];
        assert_eq!(placeholder.as_bytes().len(), REAL.len());
        assert!(placeholder.as_str().starts_with("kloak:"));
        assert_eq!(plan.policy.hosts.len(), 1);
        let shadow = shadow_secret(&src, &plan);
        assert_eq!(shadow.metadata.name.as_deref(), Some("openai-kloak"));
        assert_eq!(shadow.metadata.namespace.as_deref(), Some("agents"));
        assert_eq!(shadow.type_.as_deref(), Some("Opaque"));
        assert!(is_shadow_of(&shadow, "openai"));
        let owner = &shadow.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Secret", "openai")
        );
        assert_eq!(owner.uid, "5b1c7a9e-1111-4a0b-9c3d-000000000001");
        let data = shadow.data.as_ref().expect("data");
        assert_eq!(data["API_KEY"].0, placeholder.as_bytes());
        assert!(!serde_json::to_string(&shadow).expect("json").contains(REAL));
    }

    #[test]
    fn unchanged_value_keeps_its_placeholder_and_needs_no_update() {
        let src = source(&[("API_KEY", REAL)], &[]);
        let first = shadow_secret(&src, &plan_for(&src, None, 1000).expect("plan"));
        let mut other_rng = StdRng::seed_from_u64(99);
        let again = plan(&src, Some(&first), false, 2000, 600, &mut other_rng).expect("plan");
        assert_eq!(shadow_secret(&src, &again).data, first.data);
        assert!(again.retired.is_empty());
        assert!(!differs(&first, &shadow_secret(&src, &again)));
    }

    #[test]
    fn value_with_same_lengths_keeps_the_placeholder() {
        let src = source(&[("API_KEY", REAL)], &[]);
        let first = shadow_secret(&src, &plan_for(&src, None, 1000).expect("plan"));
        // Same length and same Huffman bits: only the last digit changes.
        let rotated = source(&[("API_KEY", "sk-live-0123456789abcdefghik")], &[]);
        let again = plan_for(&rotated, Some(&first), 2000).expect("plan");
        assert_eq!(shadow_secret(&rotated, &again).data, first.data);
    }

    #[test]
    fn changed_length_mints_a_new_placeholder_and_retires_the_old() {
        let src = source(&[("API_KEY", REAL)], &[]);
        let first = shadow_secret(&src, &plan_for(&src, None, 1000).expect("plan"));
        let old = first.data.as_ref().expect("data")["API_KEY"].clone();
        let changed = source(&[("API_KEY", "sk-live-0123456789abcdefghij-longer")], &[]);
        let again = plan_for(&changed, Some(&first), 2000).expect("plan");
        assert_ne!(again.placeholders["API_KEY"].as_bytes(), old.0.as_slice());
        assert_eq!(
            again.retired,
            vec![Retired {
                key: "API_KEY".into(),
                placeholder: String::from_utf8(old.0).expect("utf8"),
                until: 2600,
            }]
        );
        let shadow = shadow_secret(&changed, &again);
        assert_eq!(retired_of(&shadow), again.retired);
        assert!(differs(&first, &shadow));
        // Still listed while the grace period runs, gone after it.
        let later = plan_for(&changed, Some(&shadow), 2599).expect("plan");
        assert_eq!(later.retired.len(), 1);
        let expired = plan_for(&changed, Some(&shadow), 2600).expect("plan");
        assert!(expired.retired.is_empty());
    }

    #[test]
    fn a_new_placeholder_avoids_taken_lookup_keys() {
        let src = source(&[("API_KEY", REAL)], &[]);
        let usual = plan_for(&src, None, 0).expect("plan").placeholders["API_KEY"].clone();
        let taken = BTreeSet::from([placeholder::lookup_key(usual.as_bytes())]);
        let is_taken = |key: &[u8; placeholder::KEY_LEN]| taken.contains(key);
        let avoided =
            plan_avoiding(&src, None, false, 0, 600, &is_taken, &mut rng()).expect("plan");
        let chosen = &avoided.placeholders["API_KEY"];
        assert!(!taken.contains(&placeholder::lookup_key(chosen.as_bytes())));
        assert!(placeholder::is_compatible(
            chosen,
            &SecretValue::new(REAL.as_bytes().to_vec())
        ));
    }

    #[test]
    fn keys_added_and_removed() {
        let src = source(&[("A", REAL)], &[]);
        let first = shadow_secret(&src, &plan_for(&src, None, 1000).expect("plan"));
        let added = source(&[("A", REAL), ("B", "another-secret-value-42")], &[]);
        let plan_added = plan_for(&added, Some(&first), 1001).expect("plan");
        assert_eq!(plan_added.placeholders.len(), 2);
        assert_eq!(
            plan_added.placeholders["A"].as_bytes(),
            first.data.as_ref().expect("data")["A"].0.as_slice()
        );
        let removed = source(&[("B", "another-secret-value-42")], &[]);
        let with_both = shadow_secret(&added, &plan_added);
        let plan_removed = plan_for(&removed, Some(&with_both), 1002).expect("plan");
        assert_eq!(
            plan_removed.placeholders.keys().collect::<Vec<_>>(),
            vec!["B"]
        );
        // A removed key is revoked at once, not retired.
        assert!(plan_removed.retired.is_empty());
    }

    #[test]
    fn bad_inputs_are_problems_never_allow_all() {
        let cases: Vec<(Secret, bool, Vec<&str>)> = vec![
            (
                source(&[("K", "short")], &[]),
                false,
                vec!["value_too_short"],
            ),
            (
                source(&[("K", &"x".repeat(4097))], &[]),
                false,
                vec!["value_too_long"],
            ),
            (
                source(&[("K", REAL)], &[(HOSTS_ANNOTATION, "bad host!")]),
                false,
                vec!["invalid_hosts"],
            ),
            (
                source(&[("K", REAL)], &[(PORT_ANNOTATION, "99999")]),
                false,
                vec!["invalid_port"],
            ),
            (source(&[("K", REAL)], &[]), true, vec!["hosts_required"]),
            (source(&[], &[]), false, vec!["no_data"]),
            (
                source(&[("K", &"\u{7f}".repeat(20))], &[]),
                false,
                vec!["no_placeholder"],
            ),
        ];
        for (secret, require_hosts, want) in cases {
            let problems = plan(&secret, None, require_hosts, 0, 600, &mut rng())
                .expect_err("must be refused");
            assert_eq!(reasons(&problems), want, "{problems:?}");
        }
    }

    #[test]
    fn policy_keys_as_labels_are_refused_by_name() {
        let mut src = source(&[("K", REAL)], &[]);
        if let Some(labels) = src.metadata.labels.as_mut() {
            labels.insert(HOSTS_ANNOTATION.into(), "api.openai.com".into());
        }
        let problems = plan_for(&src, None, 0).expect_err("label is not policy");
        assert_eq!(reasons(&problems), vec!["policy_label"]);
        assert!(problems[0].to_string().contains(HOSTS_ANNOTATION));
        // With --require-hosts the label mistake is reported once, not twice.
        let problems = plan(&src, None, true, 0, 600, &mut rng()).expect_err("refused");
        assert_eq!(reasons(&problems), vec!["policy_label"]);
    }

    #[test]
    fn problem_messages_never_carry_values() {
        let short = "tok-1234567";
        let src = source(&[("K", short), ("L", REAL)], &[(PORT_ANNOTATION, "x")]);
        let problems = plan_for(&src, None, 0).expect_err("refused");
        for problem in &problems {
            let text = format!("{problem} {problem:?}");
            assert!(!text.contains(short) && !text.contains(REAL), "{text}");
        }
    }

    #[test]
    fn a_foreign_or_unmanaged_secret_is_not_a_shadow() {
        let src = source(&[("K", REAL)], &[]);
        let shadow = shadow_secret(&src, &plan_for(&src, None, 0).expect("plan"));
        assert!(!is_shadow_of(&shadow, "other"));
        let mut unmanaged = shadow.clone();
        unmanaged.metadata.labels = None;
        assert!(!is_shadow_of(&unmanaged, "openai"));
    }
}
