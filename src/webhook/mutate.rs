//! The webhook's decision, free of I/O: which Secrets a pod references, and the
//! JSON patch that points the references to enabled Secrets at their shadows.
//!
//! The server looks up [`referenced_secrets`] and hands the answers to
//! [`mutate`]; keeping the lookup outside makes every rule here a table test.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, EphemeralContainer, Pod, PodSpec, Volume};
use serde_json::Value;

use crate::k8s::{is_enabled, shadow_name, ENABLED_LABEL, TRUE};

/// What the API says about one Secret a pod references (same namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretState {
    /// No such Secret: the kubelet reports it, or skips it when optional.
    Missing,
    /// Exists and is not opted in: not kloak's business.
    NotEnabled,
    /// A shadow kloak manages: it holds placeholders only, so it is never
    /// rewritten again (this is what makes [`mutate`] idempotent).
    Shadow,
    /// Opted in; `shadow_ready` once its managed shadow exists.
    Enabled { shadow_ready: bool },
}

/// Which part of the pod an admission request may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A new pod: every reference, and the pod's labels.
    Create,
    /// The `pods/ephemeralcontainers` subresource: only the ephemeral
    /// containers not named in `admitted`. The others were admitted earlier and
    /// the API server refuses any change to them, to volumes or to labels.
    EphemeralContainers { admitted: BTreeSet<String> },
}

/// The outcome for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit unchanged.
    Allow,
    /// Admit with this patch; `rewritten` counts the references it redirects.
    Patch { patch: Patch, rewritten: usize },
    /// Refuse, with a message for the user (names only, never values).
    Deny(String),
}

/// One place in the pod that names a Secret.
struct Reference {
    secret: String,
    path: PointerBuf,
}

/// An ephemeral container mounting a pod volume that is backed by a Secret.
struct Mount<'a> {
    container: &'a str,
    volume: &'a str,
    secret: String,
}

// Index tokens are plain numbers and field names contain no '/' or '~';
// `PointerBuf::from_tokens` escapes anything else (label keys).
macro_rules! pointer {
    ($($token:expr),+ $(,)?) => {
        PointerBuf::from_tokens([$($token.to_string()),+])
    };
}

/// Names of the Secrets whose state [`mutate`] needs for this pod and scope.
pub fn referenced_secrets(pod: &Pod, scope: &Scope) -> BTreeSet<String> {
    let Some(spec) = &pod.spec else {
        return BTreeSet::new();
    };
    let mut names: BTreeSet<String> = references(spec, scope)
        .into_iter()
        .map(|reference| reference.secret)
        .collect();
    names.extend(mounts(spec, scope).into_iter().map(|mount| mount.secret));
    names
}

/// Decides what happens to `pod` given the states of the Secrets it references.
///
/// A Secret absent from `states` counts as unknown and denies the pod: the
/// caller looks up [`referenced_secrets`], so an absent entry is a bug, and a
/// bug must not let a real value through.
pub fn mutate(
    pod: &Pod,
    namespace: &str,
    scope: &Scope,
    states: &BTreeMap<String, SecretState>,
) -> Verdict {
    let Some(spec) = &pod.spec else {
        return Verdict::Allow;
    };
    let mut problems = BTreeSet::new();
    let mut operations = Vec::new();
    let mut uses_kloak = false;

    for reference in references(spec, scope) {
        match states.get(&reference.secret) {
            Some(SecretState::Missing | SecretState::NotEnabled) => {}
            Some(SecretState::Shadow) => uses_kloak = true,
            Some(SecretState::Enabled { shadow_ready: true }) => {
                uses_kloak = true;
                operations.push(PatchOperation::Replace(ReplaceOperation {
                    path: reference.path,
                    value: Value::String(shadow_name(&reference.secret)),
                }));
            }
            Some(SecretState::Enabled {
                shadow_ready: false,
            }) => {
                problems.insert(shadow_not_ready(namespace, &reference.secret));
            }
            None => {
                problems.insert(unknown_state(namespace, &reference.secret));
            }
        }
    }

    for mount in mounts(spec, scope) {
        match states.get(&mount.secret) {
            Some(SecretState::Enabled { .. }) => {
                problems.insert(format!(
                    "ephemeral container {} mounts volume {}, which holds Secret {namespace}/{} \
                     itself rather than its shadow, and a running pod's volumes cannot be changed",
                    mount.container, mount.volume, mount.secret
                ));
            }
            Some(_) => {}
            None => {
                problems.insert(unknown_state(namespace, &mount.secret));
            }
        }
    }

    if !problems.is_empty() {
        let problems: Vec<String> = problems.into_iter().collect();
        return Verdict::Deny(format!("kloak: {}", problems.join("; ")));
    }

    let rewritten = operations.len();
    // The node agent finds pods by this label; a pod enabled through its
    // namespace would otherwise be invisible to it.
    if uses_kloak && *scope == Scope::Create && !is_enabled(pod.metadata.labels.as_ref()) {
        operations.push(enable_label(pod));
    }
    if operations.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Patch {
            patch: Patch(operations),
            rewritten,
        }
    }
}

fn shadow_not_ready(namespace: &str, secret: &str) -> String {
    format!(
        "Secret {namespace}/{secret} is enabled but its shadow {namespace}/{} is not ready yet; \
         retry once the kloak controller has created it",
        shadow_name(secret)
    )
}

fn unknown_state(namespace: &str, secret: &str) -> String {
    format!("the state of Secret {namespace}/{secret} is unknown")
}

/// "add" replaces an existing member, so this also corrects a label that is
/// present with another value.
fn enable_label(pod: &Pod) -> PatchOperation {
    let operation = match pod.metadata.labels {
        Some(_) => AddOperation {
            path: pointer!("metadata", "labels", ENABLED_LABEL),
            value: Value::String(TRUE.to_string()),
        },
        None => AddOperation {
            path: pointer!("metadata", "labels"),
            value: serde_json::json!({ ENABLED_LABEL: TRUE }),
        },
    };
    PatchOperation::Add(operation)
}

fn references(spec: &PodSpec, scope: &Scope) -> Vec<Reference> {
    let mut out = Vec::new();
    if *scope == Scope::Create {
        for (index, volume) in spec.volumes.iter().flatten().enumerate() {
            volume_references(index, volume, &mut out);
        }
        for (index, container) in spec.containers.iter().enumerate() {
            container_references(
                "containers",
                index,
                container.env.as_deref(),
                container.env_from.as_deref(),
                &mut out,
            );
        }
        for (index, container) in spec.init_containers.iter().flatten().enumerate() {
            container_references(
                "initContainers",
                index,
                container.env.as_deref(),
                container.env_from.as_deref(),
                &mut out,
            );
        }
    }
    for (index, container) in new_ephemeral_containers(spec, scope) {
        container_references(
            "ephemeralContainers",
            index,
            container.env.as_deref(),
            container.env_from.as_deref(),
            &mut out,
        );
    }
    out
}

fn push(out: &mut Vec<Reference>, secret: Option<&str>, path: PointerBuf) {
    if let Some(secret) = secret.filter(|secret| !secret.is_empty()) {
        out.push(Reference {
            secret: secret.to_string(),
            path,
        });
    }
}

fn volume_references(index: usize, volume: &Volume, out: &mut Vec<Reference>) {
    if let Some(secret) = &volume.secret {
        push(
            out,
            secret.secret_name.as_deref(),
            pointer!("spec", "volumes", index, "secret", "secretName"),
        );
    }
    let sources = volume
        .projected
        .as_ref()
        .and_then(|projected| projected.sources.as_deref())
        .unwrap_or_default();
    for (source_index, source) in sources.iter().enumerate() {
        if let Some(secret) = &source.secret {
            push(
                out,
                Some(&secret.name),
                pointer!(
                    "spec",
                    "volumes",
                    index,
                    "projected",
                    "sources",
                    source_index,
                    "secret",
                    "name"
                ),
            );
        }
    }
}

fn container_references(
    list: &str,
    index: usize,
    env: Option<&[EnvVar]>,
    env_from: Option<&[EnvFromSource]>,
    out: &mut Vec<Reference>,
) {
    for (env_index, var) in env.unwrap_or_default().iter().enumerate() {
        let selector = var
            .value_from
            .as_ref()
            .and_then(|source| source.secret_key_ref.as_ref());
        if let Some(selector) = selector {
            push(
                out,
                Some(&selector.name),
                pointer!(
                    "spec",
                    list,
                    index,
                    "env",
                    env_index,
                    "valueFrom",
                    "secretKeyRef",
                    "name"
                ),
            );
        }
    }
    for (source_index, source) in env_from.unwrap_or_default().iter().enumerate() {
        if let Some(secret) = &source.secret_ref {
            push(
                out,
                Some(&secret.name),
                pointer!(
                    "spec",
                    list,
                    index,
                    "envFrom",
                    source_index,
                    "secretRef",
                    "name"
                ),
            );
        }
    }
}

fn new_ephemeral_containers<'a>(
    spec: &'a PodSpec,
    scope: &'a Scope,
) -> impl Iterator<Item = (usize, &'a EphemeralContainer)> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .enumerate()
        .filter(move |(_, container)| match scope {
            Scope::Create => true,
            Scope::EphemeralContainers { admitted } => !admitted.contains(&container.name),
        })
}

/// Secret-backed volumes that new ephemeral containers mount. Only relevant to
/// the subresource: at creation the volumes themselves are rewritten.
fn mounts<'a>(spec: &'a PodSpec, scope: &'a Scope) -> Vec<Mount<'a>> {
    if *scope == Scope::Create {
        return Vec::new();
    }
    let volumes: BTreeMap<&str, (usize, &Volume)> = spec
        .volumes
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, volume)| (volume.name.as_str(), (index, volume)))
        .collect();
    let mut out = Vec::new();
    for (_, container) in new_ephemeral_containers(spec, scope) {
        for mount in container.volume_mounts.iter().flatten() {
            let Some((index, volume)) = volumes.get(mount.name.as_str()) else {
                continue;
            };
            let mut backing = Vec::new();
            volume_references(*index, volume, &mut backing);
            out.extend(backing.into_iter().map(|reference| Mount {
                container: &container.name,
                volume: &volume.name,
                secret: reference.secret,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NS: &str = "team-a";

    fn states(entries: &[(&str, SecretState)]) -> BTreeMap<String, SecretState> {
        entries
            .iter()
            .map(|(name, state)| (name.to_string(), *state))
            .collect()
    }

    fn ready() -> SecretState {
        SecretState::Enabled { shadow_ready: true }
    }

    fn not_ready() -> SecretState {
        SecretState::Enabled {
            shadow_ready: false,
        }
    }

    /// The usual world: `openai` is enabled with a ready shadow.
    fn world() -> BTreeMap<String, SecretState> {
        states(&[
            ("openai", ready()),
            ("openai-kloak", SecretState::Shadow),
            ("plain", SecretState::NotEnabled),
        ])
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("test pod parses")
    }

    /// Runs mutate and applies its patch the way the API server would.
    fn admit(
        pod_json: &Value,
        scope: &Scope,
        states: &BTreeMap<String, SecretState>,
    ) -> (Verdict, Value) {
        let verdict = mutate(&pod(pod_json.clone()), NS, scope, states);
        let mut patched = pod_json.clone();
        if let Verdict::Patch { patch, .. } = &verdict {
            json_patch::patch(&mut patched, patch).expect("patch applies");
        }
        (verdict, patched)
    }

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        SecretVolume,
        ProjectedVolume,
        EnvKeyRef,
        EnvFrom,
    }

    const KINDS: [Kind; 4] = [
        Kind::SecretVolume,
        Kind::ProjectedVolume,
        Kind::EnvKeyRef,
        Kind::EnvFrom,
    ];
    const LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

    /// A pod whose `list` holds a bystander at index 0 and, at index 1, a
    /// container referencing `secret` through `kind`; returns the pod and the
    /// pointer of the reference.
    fn pod_with(kind: Kind, list: &str, secret: &str, optional: Option<bool>) -> (Value, String) {
        let mut secret_json = json!({ "name": secret });
        if let Some(optional) = optional {
            secret_json["optional"] = json!(optional);
        }
        let mut referrer = json!({
            "name": "app",
            "image": "example/app:1",
            "env": [{ "name": "MODE", "value": "prod" }],
        });
        let mut volumes = json!([{ "name": "scratch", "emptyDir": {} }]);
        let path = match kind {
            Kind::SecretVolume => {
                let mut source = json!({ "secretName": secret });
                if let Some(optional) = optional {
                    source["optional"] = json!(optional);
                }
                volumes
                    .as_array_mut()
                    .expect("array")
                    .push(json!({ "name": "creds", "secret": source }));
                referrer["volumeMounts"] = json!([{ "name": "creds", "mountPath": "/creds" }]);
                "/spec/volumes/1/secret/secretName".to_string()
            }
            Kind::ProjectedVolume => {
                volumes.as_array_mut().expect("array").push(json!({
                    "name": "creds",
                    "projected": { "sources": [
                        { "configMap": { "name": "settings" } },
                        { "secret": secret_json },
                    ]},
                }));
                referrer["volumeMounts"] = json!([{ "name": "creds", "mountPath": "/creds" }]);
                "/spec/volumes/1/projected/sources/1/secret/name".to_string()
            }
            Kind::EnvKeyRef => {
                let mut selector = secret_json.clone();
                selector["key"] = json!("token");
                referrer["env"]
                    .as_array_mut()
                    .expect("array")
                    .push(json!({ "name": "TOKEN", "valueFrom": { "secretKeyRef": selector } }));
                format!("/spec/{list}/1/env/1/valueFrom/secretKeyRef/name")
            }
            Kind::EnvFrom => {
                referrer["envFrom"] = json!([
                    { "configMapRef": { "name": "settings" } },
                    { "secretRef": secret_json },
                ]);
                format!("/spec/{list}/1/envFrom/1/secretRef/name")
            }
        };
        let mut spec = json!({
            "containers": [{ "name": "main", "image": "example/main:1" }],
            "volumes": volumes,
        });
        let bystander = json!({ "name": "bystander", "image": "example/other:1" });
        if list == "containers" {
            spec["containers"] = json!([bystander, referrer]);
        } else {
            spec[list] = json!([bystander, referrer]);
        }
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "agent", "namespace": NS },
            "spec": spec,
        });
        (pod, path)
    }

    #[test]
    fn every_reference_kind_in_every_container_list_points_at_the_shadow() {
        for kind in KINDS {
            for list in LISTS {
                let (original, path) = pod_with(kind, list, "openai", None);
                let (verdict, patched) = admit(&original, &Scope::Create, &world());
                let Verdict::Patch { rewritten, .. } = verdict else {
                    panic!("{kind:?} in {list}: expected a patch, got {verdict:?}");
                };
                assert_eq!(rewritten, 1, "{kind:?} in {list}");

                let mut expected = original.clone();
                *expected.pointer_mut(&path).expect("reference exists") = json!("openai-kloak");
                expected["metadata"]["labels"] = json!({ ENABLED_LABEL: TRUE });
                assert_eq!(
                    patched, expected,
                    "{kind:?} in {list}: only the reference and the label change"
                );
            }
        }
    }

    #[test]
    fn mutating_the_output_again_changes_nothing() {
        for kind in KINDS {
            for list in LISTS {
                let (original, _) = pod_with(kind, list, "openai", None);
                let (_, once) = admit(&original, &Scope::Create, &world());
                let (again, twice) = admit(&once, &Scope::Create, &world());
                assert_eq!(again, Verdict::Allow, "{kind:?} in {list}");
                assert_eq!(twice, once);
            }
        }
    }

    #[test]
    fn a_pod_without_secrets_is_left_alone() {
        let original = json!({
            "metadata": { "name": "plain-pod" },
            "spec": { "containers": [{
                "name": "main",
                "env": [{ "name": "A", "value": "b" },
                        { "name": "C", "valueFrom": { "configMapKeyRef": { "name": "cm", "key": "k" } } }],
            }]},
        });
        assert!(referenced_secrets(&pod(original.clone()), &Scope::Create).is_empty());
        let (verdict, patched) = admit(&original, &Scope::Create, &BTreeMap::new());
        assert_eq!(verdict, Verdict::Allow);
        assert_eq!(patched, original);
    }

    #[test]
    fn secrets_that_are_not_enabled_are_left_alone() {
        for kind in KINDS {
            let (original, _) = pod_with(kind, "containers", "plain", None);
            let (verdict, patched) = admit(&original, &Scope::Create, &world());
            assert_eq!(verdict, Verdict::Allow, "{kind:?}");
            assert_eq!(patched, original);
        }
    }

    #[test]
    fn an_enabled_secret_without_a_ready_shadow_denies_the_pod_by_name() {
        let states = states(&[("openai", not_ready())]);
        for kind in KINDS {
            let (original, _) = pod_with(kind, "containers", "openai", None);
            let Verdict::Deny(message) = mutate(&pod(original), NS, &Scope::Create, &states) else {
                panic!("{kind:?}: expected a denial");
            };
            assert!(message.contains("team-a/openai "), "{message}");
            assert!(message.contains("team-a/openai-kloak"), "{message}");
            assert!(message.contains("not ready"), "{message}");
        }
    }

    #[test]
    fn one_missing_shadow_denies_even_when_other_references_are_fine() {
        let (mut original, _) = pod_with(Kind::EnvFrom, "containers", "openai", None);
        original["spec"]["containers"][0]["envFrom"] =
            json!([{ "secretRef": { "name": "anthropic" } }]);
        let states = states(&[("openai", ready()), ("anthropic", not_ready())]);
        let Verdict::Deny(message) = mutate(&pod(original), NS, &Scope::Create, &states) else {
            panic!("expected a denial");
        };
        assert!(message.contains("team-a/anthropic"), "{message}");
        assert!(!message.contains("team-a/openai "), "{message}");
    }

    #[test]
    fn missing_secrets_are_left_to_the_kubelet_optional_or_not() {
        let states = states(&[("absent", SecretState::Missing)]);
        for kind in KINDS {
            for optional in [Some(true), Some(false), None] {
                let (original, _) = pod_with(kind, "containers", "absent", optional);
                let (verdict, patched) = admit(&original, &Scope::Create, &states);
                assert_eq!(verdict, Verdict::Allow, "{kind:?} optional={optional:?}");
                assert_eq!(patched, original);
            }
        }
    }

    #[test]
    fn optional_references_to_enabled_secrets_are_rewritten_or_denied() {
        for kind in KINDS {
            let (original, path) = pod_with(kind, "containers", "openai", Some(true));
            let (verdict, patched) = admit(&original, &Scope::Create, &world());
            assert!(
                matches!(verdict, Verdict::Patch { rewritten: 1, .. }),
                "{kind:?}: {verdict:?}"
            );
            assert_eq!(patched.pointer(&path), Some(&json!("openai-kloak")));

            let states = states(&[("openai", not_ready())]);
            let verdict = mutate(&pod(original), NS, &Scope::Create, &states);
            assert!(matches!(verdict, Verdict::Deny(_)), "{kind:?}: {verdict:?}");
        }
    }

    #[test]
    fn an_unknown_state_denies() {
        let (original, _) = pod_with(Kind::EnvKeyRef, "containers", "openai", None);
        let Verdict::Deny(message) = mutate(&pod(original), NS, &Scope::Create, &BTreeMap::new())
        else {
            panic!("expected a denial");
        };
        assert!(message.contains("team-a/openai"), "{message}");
    }

    #[test]
    fn the_label_key_is_escaped_when_labels_exist() {
        let (mut original, _) = pod_with(Kind::EnvFrom, "containers", "openai", None);
        original["metadata"]["labels"] = json!({ "app": "agent", ENABLED_LABEL: "yes" });
        let Verdict::Patch { patch, .. } =
            mutate(&pod(original.clone()), NS, &Scope::Create, &world())
        else {
            panic!("expected a patch");
        };
        let operations = serde_json::to_value(&patch).expect("patch serializes");
        let label = operations
            .as_array()
            .expect("array")
            .iter()
            .find(|operation| {
                operation["path"]
                    .as_str()
                    .is_some_and(|path| path.starts_with("/metadata"))
            })
            .expect("a label operation");
        assert_eq!(
            label,
            &json!({ "op": "add", "path": "/metadata/labels/getkloak.io~1enabled", "value": "true" })
        );

        let (_, patched) = admit(&original, &Scope::Create, &world());
        assert_eq!(
            patched["metadata"]["labels"],
            json!({ "app": "agent", ENABLED_LABEL: TRUE })
        );
    }

    #[test]
    fn replace_operations_use_exact_paths() {
        let (original, _) = pod_with(Kind::EnvKeyRef, "initContainers", "openai", None);
        let Verdict::Patch { patch, .. } = mutate(&pod(original), NS, &Scope::Create, &world())
        else {
            panic!("expected a patch");
        };
        assert_eq!(
            serde_json::to_value(&patch.0[0]).expect("serializes"),
            json!({ "op": "replace", "path": "/spec/initContainers/1/env/1/valueFrom/secretKeyRef/name", "value": "openai-kloak" })
        );
    }

    #[test]
    fn a_labelled_pod_gets_no_label_operation() {
        let (mut original, path) = pod_with(Kind::SecretVolume, "containers", "openai", None);
        original["metadata"]["labels"] = json!({ ENABLED_LABEL: TRUE });
        let (verdict, patched) = admit(&original, &Scope::Create, &world());
        let Verdict::Patch {
            patch,
            rewritten: 1,
        } = verdict
        else {
            panic!("expected one rewrite");
        };
        assert_eq!(patch.0.len(), 1);
        assert_eq!(patched.pointer(&path), Some(&json!("openai-kloak")));
    }

    #[test]
    fn a_pod_already_on_a_shadow_is_only_labelled() {
        let (original, _) = pod_with(Kind::EnvFrom, "containers", "openai-kloak", None);
        let (verdict, patched) = admit(&original, &Scope::Create, &world());
        assert!(
            matches!(verdict, Verdict::Patch { rewritten: 0, .. }),
            "{verdict:?}"
        );
        let mut expected = original.clone();
        expected["metadata"]["labels"] = json!({ ENABLED_LABEL: TRUE });
        assert_eq!(patched, expected);
    }

    fn running_pod() -> Value {
        json!({
            "metadata": { "name": "agent", "namespace": NS, "labels": { ENABLED_LABEL: TRUE } },
            "spec": {
                "volumes": [{ "name": "old-creds", "secret": { "secretName": "legacy" } }],
                "containers": [{
                    "name": "main",
                    "envFrom": [{ "secretRef": { "name": "legacy" } }],
                    "volumeMounts": [{ "name": "old-creds", "mountPath": "/creds" }],
                }],
                "ephemeralContainers": [
                    { "name": "debug-1", "envFrom": [{ "secretRef": { "name": "legacy" } }] },
                    { "name": "debug-2", "env": [
                        { "name": "X", "value": "y" },
                        { "name": "TOKEN", "valueFrom": { "secretKeyRef": { "name": "openai", "key": "token" } } },
                    ]},
                ],
            },
        })
    }

    #[test]
    fn ephemeral_subresource_rewrites_only_new_ephemeral_containers() {
        // `legacy` became enabled after the pod started: the admitted
        // containers still name it, and must neither be patched nor deny.
        let states = states(&[("openai", ready()), ("legacy", not_ready())]);
        let scope = Scope::EphemeralContainers {
            admitted: BTreeSet::from(["debug-1".to_string()]),
        };
        let original = running_pod();
        assert_eq!(
            referenced_secrets(&pod(original.clone()), &scope),
            BTreeSet::from(["openai".to_string()])
        );
        let (verdict, patched) = admit(&original, &scope, &states);
        let Verdict::Patch {
            patch,
            rewritten: 1,
        } = verdict
        else {
            panic!("expected one rewrite, got {verdict:?}");
        };
        assert_eq!(patch.0.len(), 1, "no label operation on the subresource");
        let mut expected = original.clone();
        expected["spec"]["ephemeralContainers"][1]["env"][1]["valueFrom"]["secretKeyRef"]["name"] =
            json!("openai-kloak");
        assert_eq!(patched, expected);
    }

    #[test]
    fn ephemeral_containers_may_not_mount_an_enabled_secret_volume() {
        let mut original = running_pod();
        original["spec"]["ephemeralContainers"][1]["volumeMounts"] =
            json!([{ "name": "old-creds", "mountPath": "/creds" }]);
        let scope = Scope::EphemeralContainers {
            admitted: BTreeSet::from(["debug-1".to_string()]),
        };
        assert_eq!(
            referenced_secrets(&pod(original.clone()), &scope),
            BTreeSet::from(["legacy".to_string(), "openai".to_string()])
        );
        let states = states(&[("openai", ready()), ("legacy", ready())]);
        let Verdict::Deny(message) = mutate(&pod(original.clone()), NS, &scope, &states) else {
            panic!("expected a denial");
        };
        assert!(
            message.contains("debug-2") && message.contains("team-a/legacy"),
            "{message}"
        );

        let states = self::states(&[("openai", ready()), ("legacy", SecretState::NotEnabled)]);
        assert!(matches!(
            mutate(&pod(original), NS, &scope, &states),
            Verdict::Patch { rewritten: 1, .. }
        ));
    }

    #[test]
    fn referenced_secrets_covers_every_kind_and_skips_empty_names() {
        let original = json!({
            "spec": {
                "volumes": [
                    { "name": "a", "secret": { "secretName": "vol" } },
                    { "name": "b", "secret": {} },
                    { "name": "c", "projected": { "sources": [{ "secret": { "name": "proj" } }] } },
                ],
                "containers": [{ "name": "m", "env": [
                    { "name": "T", "valueFrom": { "secretKeyRef": { "name": "env", "key": "k" } } },
                    { "name": "U", "valueFrom": { "secretKeyRef": { "name": "", "key": "k" } } },
                ]}],
                "initContainers": [{ "name": "i", "envFrom": [{ "secretRef": { "name": "init" } }] }],
                "ephemeralContainers": [{ "name": "e", "envFrom": [{ "secretRef": { "name": "eph" } }] }],
            },
        });
        let names: Vec<String> = referenced_secrets(&pod(original), &Scope::Create)
            .into_iter()
            .collect();
        assert_eq!(names, ["env", "eph", "init", "proj", "vol"]);
    }
}
