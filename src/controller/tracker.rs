//! Protected pods on this node: their containers' cgroups, and the TLS
//! files hooked for them (attached once per file, detached when the last
//! pod using a file is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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
    /// Containers whose system TLS libraries are hooked (see [`system_tls_libraries`]).
    libraries: BTreeSet<u64>,
}

/// Where distributions keep shared libraries, relative to a root file system.
const SYSTEM_LIB_DIRS: [&str; 6] = [
    "usr/lib/x86_64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib64",
    "lib64",
    "usr/lib",
    "lib",
];

/// The shared libssl files a container's image keeps where the dynamic loader
/// looks (`root` is `/proc/<pid>/root`). A process maps libssl only after exec
/// (the loader, or a later `dlopen`, as Python's `import ssl` does), so an
/// executable held at exec shows none in its maps: hooking the container's
/// system copies up front is what protects `curl` run by `kubectl exec`, or a
/// Python agent that imports `ssl` long after it started. Symlinks to the same
/// file are deduplicated by the data plane (one hook per file).
pub fn system_tls_libraries(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in SYSTEM_LIB_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("libssl.so"))
            .map(|entry| entry.path())
            .collect();
        here.sort();
        found.extend(here);
    }
    found
}

pub struct PodTracker {
    layout: CgroupLayout,
    proc_root: PathBuf,
    pods: BTreeMap<String, TrackedPod>,
    /// Which pods use each hooked file, and its probe count.
    files: BTreeMap<FileId, (BTreeSet<String>, usize)>,
}

/// Hooks the system TLS libraries in the root file system of process `pid`.
async fn hook_libraries(dataplane: &DataPlane, proc_root: &Path, pid: u32) -> Vec<Hooked> {
    let root = proc_root.join(pid.to_string()).join("root");
    let mut hooked = Vec::new();
    for path in system_tls_libraries(&root) {
        debug!(path = %path.display(), "hooking a container's system TLS library");
        hooked.extend(hooking::hook_file(dataplane, &path).await);
    }
    hooked
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
                libraries: BTreeSet::new(),
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
                    if let Some(&pid) = pids.first() {
                        if pod.libraries.insert(container.id) {
                            hooked.extend(hook_libraries(dataplane, &self.proc_root, pid).await);
                        }
                    }
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
    /// The container's system TLS libraries are hooked first (once per
    /// container), while the process is still held, so the libssl its loader
    /// is about to map is hooked before the first write.
    pub async fn exec_held(&mut self, pid: u32, cgroup_id: u64, dataplane: &DataPlane) {
        let owner = self
            .pods
            .iter_mut()
            .find(|(_, pod)| pod.containers.iter().any(|c| c.id == cgroup_id))
            .map(|(uid, pod)| (uid.clone(), pod.libraries.insert(cgroup_id)));
        let mut hooked = Vec::new();
        if let Some((_, true)) = &owner {
            hooked.extend(hook_libraries(dataplane, &self.proc_root, pid).await);
        }
        hooked.extend(hooking::hook_exec(dataplane, &self.proc_root, pid).await);
        if let Some((uid, _)) = owner {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_libssl_copies_are_found_where_the_loader_looks() {
        let root = tempfile::tempdir().expect("temporary directory");
        let debian = root.path().join("usr/lib/x86_64-linux-gnu");
        let fedora = root.path().join("usr/lib64");
        std::fs::create_dir_all(&debian).expect("mkdir");
        std::fs::create_dir_all(&fedora).expect("mkdir");
        for file in [
            debian.join("libssl.so.3"),
            debian.join("libcrypto.so.3"),
            fedora.join("libssl.so.1.1"),
            root.path().join("libssl.so.3"),
        ] {
            std::fs::write(file, b"").expect("write");
        }
        assert_eq!(
            system_tls_libraries(root.path()),
            vec![debian.join("libssl.so.3"), fedora.join("libssl.so.1.1")]
        );
    }

    #[test]
    fn no_root_no_libraries() {
        assert!(system_tls_libraries(Path::new("/nonexistent/kloak")).is_empty());
    }
}
