//! Which pods on this node are protected, their containers and the Secrets
//! they use (pure), and where their containers' cgroups are (file system).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, Pod, PodSpec};

use crate::cgroup::{self, ContainerId, Driver, Hierarchy, QosClass};
use crate::k8s;

/// A kloak-enabled pod, as far as the node agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub qos: Option<QosClass>,
    /// Containers that are running or have run (they have an id).
    pub containers: Vec<ContainerRef>,
    /// Source Secret names whose shadows the pod references.
    pub secrets: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub name: String,
    pub id: ContainerId,
}

/// The plan for a pod, or `None` when it is not kloak-enabled or is finished.
/// Containers whose id does not parse are skipped (logged by the caller).
pub fn plan_pod(pod: &Pod) -> Option<PodPlan> {
    if !k8s::is_enabled(pod.metadata.labels.as_ref()) {
        return None;
    }
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let statuses = status.into_iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten())
    });
    let containers = statuses
        .filter_map(|s| {
            let id = ContainerId::parse(s.container_id.as_deref()?).ok()?;
            Some(ContainerRef {
                name: s.name.clone(),
                id,
            })
        })
        .collect();
    Some(PodPlan {
        uid: pod.metadata.uid.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone().unwrap_or_default(),
        qos: status
            .and_then(|s| s.qos_class.as_deref())
            .and_then(|q| QosClass::parse(q).ok()),
        containers,
        secrets: pod.spec.as_ref().map(shadow_sources).unwrap_or_default(),
    })
}

/// Source names of every shadow the spec references, in any container kind.
fn shadow_sources(spec: &PodSpec) -> BTreeSet<String> {
    let mut names: Vec<&str> = Vec::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
        {
            names.push(name);
        }
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in projected.into_iter().flatten() {
            if let Some(secret) = &source.secret {
                names.push(&secret.name);
            }
        }
    }
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (c.env.as_deref(), c.env_from.as_deref()));
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c: &Container| (c.env.as_deref(), c.env_from.as_deref()))
        .chain(ephemeral);
    for (env, env_from) in containers {
        names.extend(env.into_iter().flatten().filter_map(env_secret));
        names.extend(env_from.into_iter().flatten().filter_map(env_from_secret));
    }
    names
        .into_iter()
        .filter_map(|name| name.strip_suffix(k8s::SHADOW_SUFFIX))
        .filter(|source| !source.is_empty())
        .map(str::to_owned)
        .collect()
}

fn env_secret(var: &EnvVar) -> Option<&str> {
    Some(
        var.value_from
            .as_ref()?
            .secret_key_ref
            .as_ref()?
            .name
            .as_str(),
    )
}

fn env_from_secret(source: &EnvFromSource) -> Option<&str> {
    Some(source.secret_ref.as_ref()?.name.as_str())
}

/// Where this node's container cgroups are, learnt once at start.
#[derive(Debug, Clone)]
pub struct CgroupLayout {
    pub hierarchy: Hierarchy,
    pub driver: Option<Driver>,
}

/// A container's cgroup, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub container: String,
    pub path: PathBuf,
    pub id: u64,
}

impl CgroupLayout {
    pub fn detect(cgroup_root: &Path) -> Result<Self, cgroup::CgroupError> {
        let hierarchy = cgroup::detect_hierarchy(cgroup_root)?;
        let driver = cgroup::detect_driver(&hierarchy);
        Ok(Self { hierarchy, driver })
    }

    /// Per-container cgroup ids only exist in the unified (v2) hierarchy: the
    /// kernel's cgroup id of a task is its v2 cgroup.
    pub fn supports_binding(&self) -> bool {
        matches!(self.hierarchy, Hierarchy::V2 { .. })
    }

    /// Where DNS capture attaches: the kubelet's top cgroup, so every pod
    /// (present and future) is covered by one attachment.
    pub fn dns_attach_point(&self) -> PathBuf {
        let root = self.hierarchy.root();
        ["kubepods.slice", "kubepods"]
            .iter()
            .map(|top| root.join(top))
            .find(|path| path.is_dir())
            .unwrap_or_else(|| root.to_path_buf())
    }

    /// Resolves every container of a pod; the errors name the containers not found.
    pub fn resolve(
        &self,
        pod: &PodPlan,
    ) -> (Vec<ContainerCgroup>, Vec<(String, cgroup::CgroupError)>) {
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for container in &pod.containers {
            match cgroup::resolve(
                &self.hierarchy,
                self.driver,
                pod.qos,
                &pod.uid,
                &container.id,
            ) {
                Ok(resolved) => found.push(ContainerCgroup {
                    container: container.name.clone(),
                    path: resolved.path,
                    id: resolved.id,
                }),
                Err(err) => failed.push((container.name.clone(), err)),
            }
        }
        (found, failed)
    }
}

/// Process ids in one cgroup (its `cgroup.procs`; container processes live in the leaf).
pub fn cgroup_pids(cgroup: &Path) -> std::io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(cgroup.join("cgroup.procs"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "6a3c2f1e-8b7d-4c1a-9e2f-0123456789ab";

    fn pod(labels: serde_json::Value, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "agent-0", "namespace": "agents", "uid": UID, "labels": labels},
            "spec": {
                "nodeName": "node-a",
                "volumes": [
                    {"name": "v", "secret": {"secretName": "openai-kloak"}},
                    {"name": "p", "projected": {"sources": [
                        {"secret": {"name": "github-kloak"}}, {"configMap": {"name": "cfg"}}]}},
                    {"name": "plain", "secret": {"secretName": "tls-certs"}}
                ],
                "initContainers": [{"name": "init", "image": "i",
                    "envFrom": [{"secretRef": {"name": "init-kloak"}}]}],
                "containers": [{"name": "main", "image": "m", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "anthropic-kloak", "key": "k"}}},
                    {"name": "B", "value": "literal"}]}],
                "ephemeralContainers": [{"name": "debug", "image": "d",
                    "env": [{"name": "C", "valueFrom": {"secretKeyRef": {"name": "debug-kloak", "key": "k"}}}]}]
            },
            "status": {
                "phase": phase, "qosClass": "Burstable",
                "containerStatuses": [{"name": "main", "image": "m", "imageID": "", "ready": true, "restartCount": 0,
                    "containerID": format!("containerd://{CID}")}],
                "initContainerStatuses": [{"name": "init", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "containerID": format!("cri-o://{CID}")}],
                "ephemeralContainerStatuses": [{"name": "debug", "image": "d", "imageID": "", "ready": false, "restartCount": 0}]
            }
        }))
        .expect("valid pod")
    }

    fn enabled() -> serde_json::Value {
        json!({"getkloak.io/enabled": "true"})
    }

    #[test]
    fn enabled_pod_lists_every_shadow_reference_and_started_container() {
        let plan = plan_pod(&pod(enabled(), "Running")).expect("enabled pod");
        assert_eq!(plan.uid, UID);
        assert_eq!(plan.namespace, "agents");
        assert_eq!(plan.qos, Some(QosClass::Burstable));
        let secrets: Vec<&str> = plan.secrets.iter().map(String::as_str).collect();
        assert_eq!(secrets, ["anthropic", "debug", "github", "init", "openai"]);
        let containers: Vec<&str> = plan.containers.iter().map(|c| c.name.as_str()).collect();
        // The ephemeral container has not started: no id yet, nothing to bind.
        assert_eq!(containers, ["main", "init"]);
    }

    #[test]
    fn pods_that_are_not_enabled_or_finished_are_ignored() {
        assert!(plan_pod(&pod(json!({}), "Running")).is_none());
        assert!(plan_pod(&pod(json!({"getkloak.io/enabled": "false"}), "Running")).is_none());
        assert!(plan_pod(&pod(enabled(), "Succeeded")).is_none());
        assert!(plan_pod(&pod(enabled(), "Failed")).is_none());
        assert!(plan_pod(&pod(enabled(), "Pending")).is_some());
    }

    #[test]
    fn containers_resolve_in_a_v2_systemd_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory").expect("write");
        let pod_dir = root
            .path()
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                UID.replace('-', "_")
            ));
        let leaf = pod_dir.join(format!("cri-containerd-{CID}.scope"));
        std::fs::create_dir_all(&leaf).expect("mkdir");
        std::fs::write(leaf.join("cgroup.procs"), "41\n42\n").expect("write");
        let layout = CgroupLayout::detect(root.path()).expect("layout");
        assert!(layout.supports_binding());
        assert_eq!(layout.driver, Some(Driver::Systemd));
        assert_eq!(
            layout.dns_attach_point(),
            root.path().join("kubepods.slice")
        );
        let plan = plan_pod(&pod(enabled(), "Running")).expect("plan");
        let (found, failed) = layout.resolve(&plan);
        assert_eq!(found.len(), 1, "main resolves");
        assert_eq!(found[0].path, leaf);
        assert_eq!(
            found[0].id,
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&leaf).expect("stat"))
        );
        // The CRI-O init container has no directory in this tree: reported, not guessed.
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "init");
        assert_eq!(cgroup_pids(&leaf).expect("procs"), vec![41, 42]);
    }

    #[test]
    fn v1_only_nodes_cannot_bind_per_container() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("memory/kubepods")).expect("mkdir");
        let layout = CgroupLayout::detect(root.path()).expect("layout");
        assert!(!layout.supports_binding());
    }
}
