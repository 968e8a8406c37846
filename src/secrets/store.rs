//! The node's store (pure): real values, shadow placeholders and pod
//! bindings in, the data plane's desired state out.
//!
//! Every node agent keeps one. Sources (labelled Secrets, with their real
//! values) and shadows (with the placeholders the leader recorded) arrive
//! independently; a placeholder is mapped only to a value it is compatible
//! with, so a half-applied rotation never writes a wrong-length value. When
//! a value changes, the old value is kept in memory for the grace period so
//! the retired placeholder still works; it is never written anywhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::dataplane::maps::{host_id, DesiredState, SecretState};
use crate::placeholder::{self, Placeholder, SecretValue};
use crate::policy::{fnv1a64, HostPattern, Policy};

use super::shadow::Retired;
use super::SecretRef;

/// A labelled source Secret, as this node knows it.
pub struct Source {
    pub policy: Policy,
    pub values: BTreeMap<String, SecretValue>,
}

/// What the leader recorded in a shadow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shadow {
    pub placeholders: BTreeMap<String, Placeholder>,
    pub retired: Vec<Retired>,
}

/// A kloak-enabled pod on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodBinding {
    pub namespace: String,
    /// Source Secret names the pod references (through their shadows).
    pub secrets: BTreeSet<String>,
    /// Cgroup ids of the pod's containers.
    pub cgroups: BTreeSet<u64>,
}

struct OldValue {
    value: SecretValue,
    until: i64,
}

/// A placeholder that cannot be mapped right now, and why (for logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    pub secret: SecretRef,
    pub key: String,
    pub reason: &'static str,
}

#[derive(Default)]
pub struct NodeStore {
    sources: BTreeMap<SecretRef, Source>,
    shadows: BTreeMap<SecretRef, Shadow>,
    /// (secret, key, placeholder) -> the value that placeholder stood for.
    old_values: BTreeMap<(SecretRef, String, String), OldValue>,
    pods: BTreeMap<String, PodBinding>,
    resolvers: BTreeSet<SocketAddr>,
}

impl NodeStore {
    /// Records a source's current values. A value that changed is kept for
    /// `grace_seconds` under the placeholder that stood for it.
    pub fn upsert_source(
        &mut self,
        secret: SecretRef,
        source: Source,
        now: i64,
        grace_seconds: i64,
    ) {
        if let (Some(old), Some(shadow)) = (self.sources.get(&secret), self.shadows.get(&secret)) {
            for (key, old_value) in &old.values {
                let changed =
                    source.values.get(key).map(SecretValue::as_bytes) != Some(old_value.as_bytes());
                let Some(placeholder) = shadow.placeholders.get(key) else {
                    continue;
                };
                if changed && source.values.contains_key(key) {
                    self.old_values.insert(
                        (secret.clone(), key.clone(), placeholder.as_str().to_owned()),
                        OldValue {
                            value: SecretValue::new(old_value.as_bytes().to_vec()),
                            until: now + grace_seconds,
                        },
                    );
                }
            }
        }
        // A removed key is revoked at once, with whatever was kept for it.
        self.old_values
            .retain(|(s, key, _), _| s != &secret || source.values.contains_key(key));
        self.sources.insert(secret, source);
    }

    /// The source lost its label or was deleted: every mapping goes at once.
    pub fn remove_source(&mut self, secret: &SecretRef) {
        self.sources.remove(secret);
        self.old_values.retain(|(s, _, _), _| s != secret);
    }

    pub fn upsert_shadow(&mut self, secret: SecretRef, shadow: Shadow) {
        self.shadows.insert(secret, shadow);
    }

    pub fn remove_shadow(&mut self, secret: &SecretRef) {
        self.shadows.remove(secret);
    }

    pub fn upsert_pod(&mut self, uid: String, pod: PodBinding) {
        self.pods.insert(uid, pod);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<PodBinding> {
        self.pods.remove(uid)
    }

    pub fn set_resolvers(&mut self, resolvers: BTreeSet<SocketAddr>) {
        self.resolvers = resolvers;
    }

    pub fn pods(&self) -> impl Iterator<Item = (&String, &PodBinding)> {
        self.pods.iter()
    }

    /// Drops kept old values whose grace period is over.
    pub fn expire(&mut self, now: i64) {
        self.old_values.retain(|_, old| old.until > now);
    }

    /// The earliest moment a mapping expires, so the caller can resync then.
    pub fn next_expiry(&self) -> Option<i64> {
        let kept = self.old_values.values().map(|old| old.until);
        let retired = self
            .shadows
            .values()
            .flat_map(|s| s.retired.iter().map(|r| r.until));
        kept.chain(retired).min()
    }

    fn mappings(&self, now: i64) -> (Vec<Mapping<'_>>, Vec<Unmapped>) {
        let mut mapped = Vec::new();
        let mut unmapped = Vec::new();
        for (secret, shadow) in &self.shadows {
            let Some(source) = self.sources.get(secret) else {
                continue;
            };
            let current = shadow
                .placeholders
                .iter()
                .map(|(k, p)| (k, p.clone(), None));
            let retired = shadow
                .retired
                .iter()
                .filter(|r| r.until > now)
                .filter_map(|r| {
                    let placeholder = placeholder::validate(&r.placeholder).ok()?;
                    Some((&r.key, placeholder, Some(r.until)))
                });
            for (key, placeholder, retired_until) in current.chain(retired) {
                let kept = self
                    .old_values
                    .get(&(secret.clone(), key.clone(), placeholder.as_str().to_owned()))
                    .filter(|old| old.until > now && retired_until.is_none_or(|until| until > now));
                let value = match (source.values.get(key), kept) {
                    (Some(value), _) if placeholder::is_compatible(&placeholder, value) => value,
                    (_, Some(old)) if placeholder::is_compatible(&placeholder, &old.value) => {
                        &old.value
                    }
                    _ => {
                        unmapped.push(Unmapped {
                            secret: secret.clone(),
                            key: key.clone(),
                            reason: if retired_until.is_some() {
                                "retired placeholder without its old value on this node"
                            } else {
                                "placeholder does not match the value (rotation in progress)"
                            },
                        });
                        continue;
                    }
                };
                mapped.push(Mapping {
                    secret,
                    key,
                    placeholder,
                    value,
                    policy: &source.policy,
                });
            }
        }
        (mapped, unmapped)
    }

    /// What the kernel maps should hold now.
    ///
    /// A mapping that would clash with one already taken (same secret id,
    /// same 16-byte lookup key, or a host pattern whose id another pattern
    /// has) is left out and reported: one clash must never stop the whole
    /// node's maps from updating.
    pub fn desired(&self, now: i64) -> Desired {
        let (mapped, mut unmapped) = self.mappings(now);
        let mapped_secrets: BTreeSet<&SecretRef> = mapped.iter().map(|m| m.secret).collect();
        let secrets_any_host = mapped_secrets
            .iter()
            .filter(|s| {
                self.sources
                    .get(**s)
                    .is_some_and(|src| src.policy.allows_any_host())
            })
            .count();
        let secrets_mapped = mapped_secrets.len();
        let mut state = DesiredState {
            resolvers: self.resolvers.clone(),
            ..DesiredState::default()
        };
        let mut ids_of: BTreeMap<&SecretRef, Vec<u32>> = BTreeMap::new();
        let mut lookup_keys = BTreeSet::new();
        let mut host_ids: BTreeMap<u32, &HostPattern> = BTreeMap::new();
        for mapping in mapped {
            let id = secret_id(mapping.secret, mapping.key, &mapping.placeholder);
            let key = placeholder::lookup_key(mapping.placeholder.as_bytes());
            let host_clash = mapping.policy.hosts.iter().any(|host| {
                host_ids
                    .get(&host_id(host))
                    .is_some_and(|taken| *taken != host)
            });
            let clash = if state.secrets.contains_key(&id) {
                Some("its secret id hashes like another mapping's")
            } else if lookup_keys.contains(&key) {
                Some("its placeholder's first 16 bytes equal another secret's: delete its shadow so the leader mints a new one")
            } else if host_clash {
                Some("one of its host patterns hashes like another secret's pattern")
            } else {
                None
            };
            if let Some(reason) = clash {
                unmapped.push(Unmapped {
                    secret: mapping.secret.clone(),
                    key: mapping.key.clone(),
                    reason,
                });
                continue;
            }
            lookup_keys.insert(key);
            for host in &mapping.policy.hosts {
                host_ids.insert(host_id(host), host);
            }
            ids_of.entry(mapping.secret).or_default().push(id);
            state.secrets.insert(
                id,
                SecretState {
                    placeholder: mapping.placeholder,
                    value: SecretValue::new(mapping.value.as_bytes().to_vec()),
                    policy: mapping.policy.clone(),
                },
            );
        }
        for pod in self.pods.values() {
            state.cgroups.extend(pod.cgroups.iter().copied());
            for name in &pod.secrets {
                let secret = SecretRef::new(pod.namespace.clone(), name.clone());
                for id in ids_of.get(&secret).into_iter().flatten() {
                    for cgroup in &pod.cgroups {
                        state.bindings.insert((*cgroup, *id));
                    }
                }
            }
        }
        Desired {
            state,
            unmapped,
            secrets_mapped,
            secrets_any_host,
        }
    }
}

/// What the kernel maps should hold, and what could not be mapped.
pub struct Desired {
    pub state: DesiredState,
    pub unmapped: Vec<Unmapped>,
    /// Sources with at least one mapped placeholder.
    pub secrets_mapped: usize,
    /// Of those, the ones without allowed hosts.
    pub secrets_any_host: usize,
}

struct Mapping<'a> {
    secret: &'a SecretRef,
    key: &'a String,
    placeholder: Placeholder,
    value: &'a SecretValue,
    policy: &'a Policy,
}

/// Stable across restarts and nodes, so pinned map entries keep their meaning.
fn secret_id(secret: &SecretRef, key: &str, placeholder: &Placeholder) -> u32 {
    let text = format!(
        "{}/{}/{}/{}",
        secret.namespace,
        secret.name,
        key,
        placeholder.as_str()
    );
    (fnv1a64(text.as_bytes()) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_hosts;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const OLD: &str = "sk-old-value-0123456789";
    const NEW: &str = "sk-new-value-0123456789-and-longer";

    fn secret() -> SecretRef {
        SecretRef::new("agents", "openai")
    }

    fn source(value: &str) -> Source {
        Source {
            policy: Policy {
                hosts: parse_hosts("api.openai.com").expect("hosts"),
                port: None,
            },
            values: BTreeMap::from([(
                "API_KEY".to_owned(),
                SecretValue::new(value.as_bytes().to_vec()),
            )]),
        }
    }

    fn placeholder_for(value: &str, seed: u64) -> Placeholder {
        let value = SecretValue::new(value.as_bytes().to_vec());
        placeholder::generate(&value, &mut StdRng::seed_from_u64(seed)).expect("placeholder")
    }

    fn shadow(placeholder: &Placeholder, retired: Vec<Retired>) -> Shadow {
        Shadow {
            placeholders: BTreeMap::from([("API_KEY".to_owned(), placeholder.clone())]),
            retired,
        }
    }

    fn pod(secrets: &[&str], cgroups: &[u64]) -> PodBinding {
        PodBinding {
            namespace: "agents".into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            cgroups: cgroups.iter().copied().collect(),
        }
    }

    /// placeholder text -> value text, for every mapped secret.
    fn mapped(store: &NodeStore, now: i64) -> BTreeMap<String, String> {
        store
            .desired(now)
            .state
            .secrets
            .values()
            .map(|s| {
                (
                    s.placeholder.as_str().to_owned(),
                    String::from_utf8(s.value.as_bytes().to_vec()).expect("utf8"),
                )
            })
            .collect()
    }

    #[test]
    fn a_secret_needs_both_its_source_and_its_shadow() {
        let p = placeholder_for(OLD, 1);
        let mut store = NodeStore::default();
        store.upsert_source(secret(), source(OLD), 0, 600);
        assert!(mapped(&store, 0).is_empty(), "no shadow yet");
        store.upsert_shadow(secret(), shadow(&p, vec![]));
        assert_eq!(
            mapped(&store, 0),
            BTreeMap::from([(p.as_str().to_owned(), OLD.to_owned())])
        );
        store.remove_source(&secret());
        assert!(mapped(&store, 0).is_empty(), "label removed: mapping gone");
    }

    #[test]
    fn bindings_only_for_pods_that_reference_the_secret() {
        let p = placeholder_for(OLD, 1);
        let mut store = NodeStore::default();
        store.upsert_source(secret(), source(OLD), 0, 600);
        store.upsert_shadow(secret(), shadow(&p, vec![]));
        store.upsert_pod("uid-a".into(), pod(&["openai"], &[11, 12]));
        store.upsert_pod("uid-b".into(), pod(&["other"], &[21]));
        let mut elsewhere = pod(&["openai"], &[31]);
        elsewhere.namespace = "other-ns".into();
        store.upsert_pod("uid-c".into(), elsewhere);
        let state = store.desired(0).state;
        let id = *state.secrets.keys().next().expect("one secret");
        assert_eq!(state.bindings, BTreeSet::from([(11, id), (12, id)]));
        assert_eq!(state.cgroups, BTreeSet::from([11, 12, 21, 31]));
        store.remove_pod("uid-a");
        assert!(store.desired(0).state.bindings.is_empty());
    }

    #[test]
    fn rotation_keeps_the_old_placeholder_working_for_the_grace_period_only() {
        let old_p = placeholder_for(OLD, 1);
        let new_p = placeholder_for(NEW, 2);
        let mut store = NodeStore::default();
        store.upsert_source(secret(), source(OLD), 0, 600);
        store.upsert_shadow(secret(), shadow(&old_p, vec![]));
        // The new value arrives before the leader's new shadow: the old
        // placeholder keeps its old value, never the wrong-length new one.
        store.upsert_source(secret(), source(NEW), 100, 600);
        assert_eq!(
            mapped(&store, 100),
            BTreeMap::from([(old_p.as_str().to_owned(), OLD.to_owned())])
        );
        let retired = Retired {
            key: "API_KEY".into(),
            placeholder: old_p.as_str().to_owned(),
            until: 650,
        };
        store.upsert_shadow(secret(), shadow(&new_p, vec![retired]));
        assert_eq!(
            mapped(&store, 200),
            BTreeMap::from([
                (old_p.as_str().to_owned(), OLD.to_owned()),
                (new_p.as_str().to_owned(), NEW.to_owned()),
            ])
        );
        assert_eq!(store.next_expiry(), Some(650));
        // Retired until 650 (the leader's clock), kept until 700 (ours): the earlier wins.
        assert_eq!(
            mapped(&store, 650),
            BTreeMap::from([(new_p.as_str().to_owned(), NEW.to_owned())])
        );
        store.expire(700);
        assert_eq!(store.next_expiry(), Some(650));
    }

    #[test]
    fn an_incompatible_placeholder_is_never_mapped() {
        let wrong = placeholder_for(NEW, 3);
        let mut store = NodeStore::default();
        store.upsert_source(secret(), source(OLD), 0, 600);
        store.upsert_shadow(secret(), shadow(&wrong, vec![]));
        let Desired {
            state, unmapped, ..
        } = store.desired(0);
        assert!(state.secrets.is_empty());
        assert_eq!(unmapped.len(), 1);
        assert_eq!(unmapped[0].key, "API_KEY");
    }

    #[test]
    fn a_retired_placeholder_without_its_old_value_is_not_mapped() {
        // After a restart the agent never saw the old value: fail closed.
        let old_p = placeholder_for(OLD, 1);
        let new_p = placeholder_for(NEW, 2);
        let mut store = NodeStore::default();
        store.upsert_source(secret(), source(NEW), 0, 600);
        let retired = Retired {
            key: "API_KEY".into(),
            placeholder: old_p.as_str().to_owned(),
            until: 600,
        };
        store.upsert_shadow(secret(), shadow(&new_p, vec![retired]));
        assert_eq!(
            mapped(&store, 0),
            BTreeMap::from([(new_p.as_str().to_owned(), NEW.to_owned())])
        );
        assert_eq!(store.desired(0).unmapped.len(), 1);
    }

    #[test]
    fn a_lookup_key_clash_leaves_out_one_secret_not_the_whole_node() {
        // Two placeholders sharing their first 16 bytes (possible for
        // low-entropy values): the first in order is kept, the other reported.
        let first = crate::placeholder::validate("kloak:ABCDEFGHJK0123abcd").expect("valid");
        let second = crate::placeholder::validate("kloak:ABCDEFGHJK0123wxyz").expect("valid");
        let mut store = NodeStore::default();
        for (name, p) in [("a", &first), ("b", &second)] {
            let secret = SecretRef::new("agents", name);
            let mut src = source("sk-old-value-01234567");
            src.values.insert(
                "API_KEY".into(),
                SecretValue::new(value_like(p).into_bytes()),
            );
            store.upsert_source(secret.clone(), src, 0, 600);
            store.upsert_shadow(secret, shadow(p, vec![]));
        }
        let Desired {
            state, unmapped, ..
        } = store.desired(0);
        assert_eq!(state.secrets.len(), 1);
        assert!(state.records().is_ok(), "the rest of the node still syncs");
        assert_eq!(unmapped.len(), 1);
        assert_eq!(unmapped[0].secret.name, "b");
    }

    /// A value with the placeholder's length and Huffman length: the placeholder itself.
    fn value_like(p: &Placeholder) -> String {
        p.as_str().to_owned()
    }

    #[test]
    fn secret_ids_are_stable() {
        let p = placeholder_for(OLD, 1);
        let build = || {
            let mut store = NodeStore::default();
            store.upsert_source(secret(), source(OLD), 0, 600);
            store.upsert_shadow(secret(), shadow(&p, vec![]));
            store
                .desired(0)
                .state
                .secrets
                .keys()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(build(), build());
        assert_ne!(build(), vec![0]);
    }

    #[test]
    fn counts_report_secrets_without_hosts() {
        let p = placeholder_for(OLD, 1);
        let mut store = NodeStore::default();
        let mut open = source(OLD);
        open.policy.hosts.clear();
        store.upsert_source(secret(), open, 0, 600);
        store.upsert_shadow(secret(), shadow(&p, vec![]));
        let desired = store.desired(0);
        assert_eq!((desired.secrets_mapped, desired.secrets_any_host), (1, 1));
    }
}
