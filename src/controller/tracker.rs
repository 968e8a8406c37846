//! Protected pods on this node: their containers' cgroups, and the TLS
//! files hooked for them (attached once per file, detached when the last
//! pod using a file is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use tracing::{debug, info, warn};

use crate::dataplane::hooking::{self, Hooked};
use crate::dataplane::targets::FileId;
use crate::dataplane::DataPlane;
use crate::secrets::store::PodBinding;

use super::pods::{cgroup_pids, plan_pod, CgroupLayout, ContainerCgroup};

struct TrackedPod {
    name: String,
    containers: Vec<ContainerCgroup>,
    /// Containers whose processes were already scanned and hooked.
    scanned: BTreeSet<u64>,
}

pub struct PodTracker {
    layout: CgroupLayout,
    proc_root: PathBuf,
    pods: BTreeMap<String, TrackedPod>,
    /// Which pods use each hooked file, and its probe count.
    files: BTreeMap<FileId, (BTreeSet<String>, usize)>,
}

/// What a pod event means for the store.
pub enum PodChange {
    Bind(String, PodBinding),
    Forget(String),
    None,
}

impl PodTracker {
    pub fn new(layout: CgroupLayout, proc_root: PathBuf) -> Self {
        Self {
            layout,
            proc_root,
            pods: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    /// Resolves a pod's containers; a pod that is no longer enabled (or
    /// finished) is forgotten.
    pub fn pod_seen(&mut self, pod: &Pod) -> PodChange {
        let Some(plan) = plan_pod(pod) else {
            return match pod.metadata.uid.clone() {
                Some(uid) if self.pods.contains_key(&uid) => PodChange::Forget(uid),
                _ => PodChange::None,
            };
        };
        if !self.layout.supports_binding() {
            warn!(pod = %plan.name, namespace = %plan.namespace, "cgroup v1 only: containers cannot be told apart, so this pod gets no rewrites");
            return PodChange::None;
        }
        let (containers, missing) = self.layout.resolve(&plan);
        for (container, err) in &missing {
            // Normal while a container starts: the next status update retries.
            debug!(pod = %plan.name, container, %err, "container cgroup not found yet");
        }
        let binding = PodBinding {
            namespace: plan.namespace.clone(),
            secrets: plan.secrets.clone(),
            cgroups: containers.iter().map(|c| c.id).collect(),
        };
        let tracked = self
            .pods
            .entry(plan.uid.clone())
            .or_insert_with(|| TrackedPod {
                name: format!("{}/{}", plan.namespace, plan.name),
                containers: Vec::new(),
                scanned: BTreeSet::new(),
            });
        tracked.containers = containers;
        PodChange::Bind(plan.uid, binding)
    }

    /// Hooks the processes already running in containers not scanned yet.
    /// Call after the pod's cgroups are in the kernel maps: from then on new
    /// executables are held at exec, so nothing slips between scan and hook.
    pub async fn hook_running(&mut self, uid: &str, dataplane: &DataPlane) {
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        let mut hooked = Vec::new();
        for container in &pod.containers {
            if !pod.scanned.insert(container.id) {
                continue;
            }
            match cgroup_pids(&container.path) {
                Ok(pids) => {
                    for pid in pids {
                        hooked.extend(hooking::hook_process(dataplane, &self.proc_root, pid).await);
                    }
                }
                Err(err) => {
                    warn!(pod = %pod.name, container = %container.container, %err, "cannot list the container's processes")
                }
            }
        }
        for h in hooked {
            self.record(uid, h);
        }
    }

    /// A new executable held at exec: hook it, resume it, and count its files.
    pub async fn exec_held(&mut self, pid: u32, cgroup_id: u64, dataplane: &DataPlane) {
        let hooked = hooking::hook_exec(dataplane, &self.proc_root, pid).await;
        let owner = self
            .pods
            .iter()
            .find(|(_, pod)| pod.containers.iter().any(|c| c.id == cgroup_id))
            .map(|(uid, _)| uid.clone());
        if let Some(uid) = owner {
            for h in hooked {
                self.record(&uid, h);
            }
        }
    }

    fn record(&mut self, uid: &str, hooked: Hooked) {
        if hooked.probes == 0 && !self.files.contains_key(&hooked.file) {
            return;
        }
        let entry = self.files.entry(hooked.file).or_default();
        entry.0.insert(uid.to_owned());
        entry.1 = entry.1.max(hooked.probes);
    }

    /// Forgets a pod; files no other pod uses are detached.
    pub async fn forget(&mut self, uid: &str, dataplane: &DataPlane) {
        if let Some(pod) = self.pods.remove(uid) {
            info!(pod = %pod.name, "pod forgotten");
        }
        let unused: Vec<FileId> = self
            .files
            .iter_mut()
            .filter_map(|(file, (users, _))| {
                users.remove(uid);
                users.is_empty().then_some(*file)
            })
            .collect();
        for file in unused {
            self.files.remove(&file);
            match dataplane.detach_file(file).await {
                Ok(probes) => debug!(?file, probes, "detached: no protected pod uses this file"),
                Err(err) => warn!(?file, %err, "cannot detach"),
            }
        }
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn container_count(&self) -> usize {
        self.pods.values().map(|p| p.containers.len()).sum()
    }

    pub fn probe_count(&self) -> usize {
        self.files.values().map(|(_, probes)| probes).sum()
    }
}
