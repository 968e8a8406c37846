//! Finding a Kubernetes container's cgroup on the node, so the node agent can put its id in
//! the BPF allow-set.
//!
//! Where the kubelet and the runtime put a container depends on the cgroup version, the
//! cgroup driver, the runtime and the pod's QoS class; parsing and path computation are pure,
//! and only [`resolve`], [`detect_hierarchy`] and [`detect_driver`] touch the filesystem.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;
use tracing::debug;

/// Length of the container ids containerd, CRI-O and Docker report (hex of a SHA-256).
const ID_LEN: usize = 64;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "container id {0:?} has no runtime prefix (expected containerd://, cri-o:// or docker://)"
    )]
    MissingRuntime(String),
    #[error("container id {container_id:?} has unknown runtime prefix {prefix:?} (expected containerd, cri-o or docker)")]
    UnknownRuntime {
        prefix: String,
        container_id: String,
    },
    #[error("container id {0:?} is not {ID_LEN} lowercase hex characters")]
    BadId(String),
    #[error("unknown QoS class {0:?} (expected Guaranteed, Burstable or BestEffort)")]
    UnknownQosClass(String),
    #[error("pod uid {0:?} is not a Kubernetes uid (letters, digits and '-')")]
    BadPodUid(String),
    #[error("no cgroup v1 or v2 hierarchy found under {0}")]
    NoHierarchy(PathBuf),
    #[error("no cgroup directory for container {container}: tried {tried} paths, first {}", show_paths(.first_tried))]
    NotFound {
        container: String,
        tried: usize,
        first_tried: Vec<PathBuf>,
    },
    #[error("reading {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
}

fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

impl Runtime {
    /// The scheme of the Pod status `containerID` (before `://`).
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        [Runtime::Containerd, Runtime::CriO, Runtime::Docker]
            .into_iter()
            .find(|r| r.scheme() == scheme)
    }

    fn systemd_scope(self, id: &str) -> String {
        match self {
            Runtime::Containerd => format!("cri-containerd-{id}.scope"),
            Runtime::CriO => format!("crio-{id}.scope"),
            Runtime::Docker => format!("docker-{id}.scope"),
        }
    }

    /// Leaf names under the cgroupfs driver, most likely first.
    fn cgroupfs_leaves(self, id: &str) -> Vec<String> {
        match self {
            // CRI-O prefixes the leaf with `crio-` on current versions but used the bare id on
            // some older ones.
            Runtime::CriO => vec![format!("crio-{id}"), id.to_owned()],
            Runtime::Containerd | Runtime::Docker => vec![id.to_owned()],
        }
    }
}

/// A container as the Pod status names it: `<runtime>://<64 lowercase hex>`.
///
/// Fields are private so every value went through [`ContainerId::parse`]: the id becomes a
/// path component, and the check is what keeps it inside the cgroup root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId {
    runtime: Runtime,
    id: String,
}

impl ContainerId {
    pub fn parse(container_id: &str) -> Result<Self, CgroupError> {
        let (scheme, id) = container_id
            .split_once("://")
            .ok_or_else(|| CgroupError::MissingRuntime(container_id.to_owned()))?;
        let runtime = Runtime::from_scheme(scheme).ok_or_else(|| CgroupError::UnknownRuntime {
            prefix: scheme.to_owned(),
            container_id: container_id.to_owned(),
        })?;
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if id.len() != ID_LEN || !id.bytes().all(is_lower_hex) {
            return Err(CgroupError::BadId(id.to_owned()));
        }
        Ok(Self {
            runtime,
            id: id.to_owned(),
        })
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl FromStr for ContainerId {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.runtime.scheme(), self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The order layouts are tried in after the expected one: Burstable pods are the most
    /// common.
    const ALL: [QosClass; 3] = [
        QosClass::Burstable,
        QosClass::BestEffort,
        QosClass::Guaranteed,
    ];

    /// Parses the pod's `status.qosClass`.
    pub fn parse(qos_class: &str) -> Result<Self, CgroupError> {
        match qos_class {
            "Guaranteed" => Ok(QosClass::Guaranteed),
            "Burstable" => Ok(QosClass::Burstable),
            "BestEffort" => Ok(QosClass::BestEffort),
            other => Err(CgroupError::UnknownQosClass(other.to_owned())),
        }
    }

    /// The QoS level's cgroup name; Guaranteed pods have none, they sit directly under
    /// `kubepods`.
    fn level(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

impl FromStr for QosClass {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The kubelet's (and the runtime's) cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl Driver {
    /// The order drivers are tried in when unknown: systemd is the kubeadm default.
    const ALL: [Driver; 2] = [Driver::Systemd, Driver::Cgroupfs];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One controller's hierarchy, e.g. `/sys/fs/cgroup/memory` or `/sys/fs/cgroup/systemd`.
    V1 { controller_root: PathBuf },
    /// The unified hierarchy, e.g. `/sys/fs/cgroup` or, on hybrid hosts,
    /// `/sys/fs/cgroup/unified`.
    V2 { root: PathBuf },
}

impl Hierarchy {
    pub fn root(&self) -> &Path {
        match self {
            Hierarchy::V1 { controller_root } => controller_root,
            Hierarchy::V2 { root } => root,
        }
    }
}

/// A container's cgroup directory and its cgroup id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedCgroup {
    pub path: PathBuf,
    /// The directory's inode number: on cgroup v2 this is what `bpf_get_current_cgroup_id`
    /// returns for tasks in the cgroup.
    pub id: u64,
}

/// Kubernetes pod uids are UUIDs (API pods) or hex hashes (static pods); anything else is
/// refused because the uid becomes a path component.
fn valid_pod_uid(pod_uid: &str) -> bool {
    !pod_uid.is_empty()
        && pod_uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Paths (under the hierarchy's root) where the container's cgroup directory can be, most
/// likely first: the layout of the given QoS class, then the other classes' layouts, since
/// the reported class may be wrong or stale.
///
/// Returns nothing for a pod uid that is not a Kubernetes uid, so no path can leave the root.
pub fn candidate_paths(
    h: &Hierarchy,
    driver: Driver,
    qos: QosClass,
    pod_uid: &str,
    c: &ContainerId,
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if !valid_pod_uid(pod_uid) {
        return paths;
    }
    let root = h.root();
    let others = QosClass::ALL.into_iter().filter(|q| *q != qos);
    for q in std::iter::once(qos).chain(others) {
        for rel in relative_paths(driver, q, pod_uid, c) {
            let path = root.join(rel);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

fn relative_paths(driver: Driver, qos: QosClass, pod_uid: &str, c: &ContainerId) -> Vec<PathBuf> {
    match driver {
        Driver::Systemd => {
            // systemd unit names use '-' as the nesting separator, so the kubelet escapes the
            // uid's dashes.
            let uid = pod_uid.replace('-', "_");
            let mut path = PathBuf::from("kubepods.slice");
            match qos.level() {
                Some(level) => {
                    path.push(format!("kubepods-{level}.slice"));
                    path.push(format!("kubepods-{level}-pod{uid}.slice"));
                }
                None => path.push(format!("kubepods-pod{uid}.slice")),
            }
            path.push(c.runtime.systemd_scope(&c.id));
            vec![path]
        }
        Driver::Cgroupfs => {
            let mut pod = PathBuf::from("kubepods");
            if let Some(level) = qos.level() {
                pod.push(level);
            }
            pod.push(format!("pod{pod_uid}"));
            c.runtime
                .cgroupfs_leaves(&c.id)
                .into_iter()
                .map(|leaf| pod.join(leaf))
                .collect()
        }
    }
}

/// Finds the container's cgroup directory: the first candidate that exists, for the given
/// driver or (when unknown) both. An unknown QoS class tries every layout.
pub fn resolve(
    h: &Hierarchy,
    driver: Option<Driver>,
    qos: Option<QosClass>,
    pod_uid: &str,
    c: &ContainerId,
) -> Result<ResolvedCgroup, CgroupError> {
    if !valid_pod_uid(pod_uid) {
        return Err(CgroupError::BadPodUid(pod_uid.to_owned()));
    }
    let drivers = match driver {
        Some(d) => vec![d],
        None => Driver::ALL.to_vec(),
    };
    let qos = qos.unwrap_or(QosClass::ALL[0]);
    let mut tried: Vec<PathBuf> = Vec::new();
    for d in drivers {
        for path in candidate_paths(h, d, qos, pod_uid, c) {
            if tried.contains(&path) {
                continue;
            }
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    debug!(path = %path.display(), container = %c, "container cgroup found");
                    return Ok(ResolvedCgroup {
                        id: meta.ino(),
                        path,
                    });
                }
                Ok(_) => {}
                Err(err) if is_absent(&err) => {}
                // Anything else (e.g. permission denied) would turn into a misleading
                // "not found", so it is reported as is.
                Err(source) => return Err(CgroupError::Stat { path, source }),
            }
            tried.push(path);
        }
    }
    Err(CgroupError::NotFound {
        container: c.to_string(),
        tried: tried.len(),
        first_tried: tried.into_iter().take(2).collect(),
    })
}

/// A path component that is a file rather than a directory means absent too.
fn is_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENOTDIR)
}

/// Which hierarchy container cgroups are found in, given the cgroup mount point (normally
/// `/sys/fs/cgroup`).
pub fn detect_hierarchy(sys_fs_cgroup: &Path) -> Result<Hierarchy, CgroupError> {
    if sys_fs_cgroup.join("cgroup.controllers").exists() {
        return Ok(Hierarchy::V2 {
            root: sys_fs_cgroup.to_owned(),
        });
    }
    // Hybrid hosts: BPF cgroup ids are v2 ids, so the unified hierarchy is the one to read
    // even though the controllers live in v1.
    let unified = sys_fs_cgroup.join("unified");
    if unified.join("cgroup.controllers").exists() {
        return Ok(Hierarchy::V2 { root: unified });
    }
    // The memory controller first: the kubelet sets memory limits on every pod cgroup under
    // either driver, while the named systemd hierarchy is only certain under systemd.
    for controller in ["memory", "systemd"] {
        let controller_root = sys_fs_cgroup.join(controller);
        if controller_root.is_dir() {
            return Ok(Hierarchy::V1 { controller_root });
        }
    }
    Err(CgroupError::NoHierarchy(sys_fs_cgroup.to_owned()))
}

/// The cgroup driver the kubelet uses, from the top-level cgroup it created; `None` before the
/// kubelet has created it (or with a non-default `--cgroup-root`).
pub fn detect_driver(h: &Hierarchy) -> Option<Driver> {
    let root = h.root();
    if root.join("kubepods.slice").is_dir() {
        Some(Driver::Systemd)
    } else if root.join("kubepods").is_dir() {
        Some(Driver::Cgroupfs)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1234-5678";

    fn cid(runtime: Runtime) -> ContainerId {
        ContainerId::parse(&format!("{}://{ID}", runtime.scheme())).unwrap()
    }

    fn v2(root: &str) -> Hierarchy {
        Hierarchy::V2 {
            root: PathBuf::from(root),
        }
    }

    #[test]
    fn parses_every_runtime_prefix() {
        for (input, runtime) in [
            (format!("containerd://{ID}"), Runtime::Containerd),
            (format!("cri-o://{ID}"), Runtime::CriO),
            (format!("docker://{ID}"), Runtime::Docker),
        ] {
            let c: ContainerId = input.parse().unwrap();
            assert_eq!(c.runtime(), runtime, "{input}");
            assert_eq!(c.id(), ID);
            assert_eq!(c.to_string(), input);
        }
    }

    #[test]
    fn rejects_bad_container_ids_naming_the_problem() {
        let upper = ID.to_uppercase();
        let short = &ID[..63];
        let long = format!("{ID}0");
        let non_hex = format!("{}g", &ID[..63]);
        let traversal = format!("../../{}", &ID[..58]);
        for (input, want) in [
            (ID.to_owned(), "no runtime prefix"),
            (String::new(), "no runtime prefix"),
            (format!("rkt://{ID}"), "unknown runtime prefix \"rkt\""),
            (format!("CONTAINERD://{ID}"), "unknown runtime prefix"),
            (format!("://{ID}"), "unknown runtime prefix \"\""),
            (format!("containerd://{upper}"), "not 64 lowercase hex"),
            (format!("containerd://{short}"), "not 64 lowercase hex"),
            (format!("cri-o://{long}"), "not 64 lowercase hex"),
            (format!("docker://{non_hex}"), "not 64 lowercase hex"),
            ("docker://".to_owned(), "not 64 lowercase hex"),
            (format!("containerd://{traversal}"), "not 64 lowercase hex"),
        ] {
            let err = ContainerId::parse(&input).unwrap_err();
            assert!(err.to_string().contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn parses_qos_classes() {
        for (input, want) in [
            ("Guaranteed", QosClass::Guaranteed),
            ("Burstable", QosClass::Burstable),
            ("BestEffort", QosClass::BestEffort),
        ] {
            assert_eq!(input.parse::<QosClass>().unwrap(), want);
        }
        for bad in ["", "burstable", "Besteffort", "Guaranteed "] {
            let err = QosClass::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("unknown QoS class"),
                "{bad}: {err}"
            );
        }
    }

    /// The expected layout (first candidate) for every runtime, driver and QoS class.
    #[test]
    fn first_candidate_for_every_layout() {
        use Driver::*;
        use QosClass::*;
        use Runtime::*;
        let sd = "kubepods.slice";
        let b = "kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice";
        let be = "kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice";
        let g = "kubepods-pod1234_5678.slice";
        let table = [
            (
                Containerd,
                Systemd,
                Burstable,
                format!("{sd}/{b}/cri-containerd-{ID}.scope"),
            ),
            (
                Containerd,
                Systemd,
                BestEffort,
                format!("{sd}/{be}/cri-containerd-{ID}.scope"),
            ),
            (
                Containerd,
                Systemd,
                Guaranteed,
                format!("{sd}/{g}/cri-containerd-{ID}.scope"),
            ),
            (
                CriO,
                Systemd,
                Burstable,
                format!("{sd}/{b}/crio-{ID}.scope"),
            ),
            (
                CriO,
                Systemd,
                BestEffort,
                format!("{sd}/{be}/crio-{ID}.scope"),
            ),
            (
                CriO,
                Systemd,
                Guaranteed,
                format!("{sd}/{g}/crio-{ID}.scope"),
            ),
            (
                Docker,
                Systemd,
                Burstable,
                format!("{sd}/{b}/docker-{ID}.scope"),
            ),
            (
                Docker,
                Systemd,
                BestEffort,
                format!("{sd}/{be}/docker-{ID}.scope"),
            ),
            (
                Docker,
                Systemd,
                Guaranteed,
                format!("{sd}/{g}/docker-{ID}.scope"),
            ),
            (
                Containerd,
                Cgroupfs,
                Burstable,
                format!("kubepods/burstable/pod1234-5678/{ID}"),
            ),
            (
                Containerd,
                Cgroupfs,
                BestEffort,
                format!("kubepods/besteffort/pod1234-5678/{ID}"),
            ),
            (
                Containerd,
                Cgroupfs,
                Guaranteed,
                format!("kubepods/pod1234-5678/{ID}"),
            ),
            (
                CriO,
                Cgroupfs,
                Burstable,
                format!("kubepods/burstable/pod1234-5678/crio-{ID}"),
            ),
            (
                CriO,
                Cgroupfs,
                BestEffort,
                format!("kubepods/besteffort/pod1234-5678/crio-{ID}"),
            ),
            (
                CriO,
                Cgroupfs,
                Guaranteed,
                format!("kubepods/pod1234-5678/crio-{ID}"),
            ),
            (
                Docker,
                Cgroupfs,
                Burstable,
                format!("kubepods/burstable/pod1234-5678/{ID}"),
            ),
            (
                Docker,
                Cgroupfs,
                BestEffort,
                format!("kubepods/besteffort/pod1234-5678/{ID}"),
            ),
            (
                Docker,
                Cgroupfs,
                Guaranteed,
                format!("kubepods/pod1234-5678/{ID}"),
            ),
        ];
        for (runtime, driver, qos, want) in table {
            let got = candidate_paths(&v2("/cg"), driver, qos, UID, &cid(runtime));
            assert_eq!(
                got[0],
                Path::new("/cg").join(&want),
                "{runtime:?} {driver:?} {qos:?}"
            );
        }
    }

    #[test]
    fn expected_layout_first_then_the_other_qos_classes() {
        let got = candidate_paths(
            &v2("/cg"),
            Driver::Systemd,
            QosClass::Guaranteed,
            UID,
            &cid(Runtime::Containerd),
        );
        let scope = format!("cri-containerd-{ID}.scope");
        let want: Vec<PathBuf> = [
            "kubepods.slice/kubepods-pod1234_5678.slice",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice",
        ]
        .iter()
        .map(|dir| Path::new("/cg").join(dir).join(&scope))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn crio_cgroupfs_includes_both_leaves_per_layout() {
        let got = candidate_paths(
            &v2("/cg"),
            Driver::Cgroupfs,
            QosClass::BestEffort,
            UID,
            &cid(Runtime::CriO),
        );
        let want: Vec<PathBuf> = [
            format!("kubepods/besteffort/pod1234-5678/crio-{ID}"),
            format!("kubepods/besteffort/pod1234-5678/{ID}"),
            format!("kubepods/burstable/pod1234-5678/crio-{ID}"),
            format!("kubepods/burstable/pod1234-5678/{ID}"),
            format!("kubepods/pod1234-5678/crio-{ID}"),
            format!("kubepods/pod1234-5678/{ID}"),
        ]
        .iter()
        .map(|rel| Path::new("/cg").join(rel))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn candidates_are_distinct_for_every_combination() {
        for runtime in [Runtime::Containerd, Runtime::CriO, Runtime::Docker] {
            for driver in Driver::ALL {
                for qos in QosClass::ALL {
                    let got = candidate_paths(&v2("/cg"), driver, qos, UID, &cid(runtime));
                    let per_layout = match (driver, runtime) {
                        (Driver::Cgroupfs, Runtime::CriO) => 2,
                        _ => 1,
                    };
                    assert_eq!(got.len(), 3 * per_layout, "{runtime:?} {driver:?} {qos:?}");
                    for (i, p) in got.iter().enumerate() {
                        assert!(!got[..i].contains(p), "duplicate {}", p.display());
                    }
                }
            }
        }
    }

    #[test]
    fn v1_uses_the_controller_root_with_the_same_layout() {
        let h = Hierarchy::V1 {
            controller_root: PathBuf::from("/sys/fs/cgroup/memory"),
        };
        let got = candidate_paths(
            &h,
            Driver::Cgroupfs,
            QosClass::Burstable,
            UID,
            &cid(Runtime::Docker),
        );
        assert_eq!(
            got[0],
            PathBuf::from(format!(
                "/sys/fs/cgroup/memory/kubepods/burstable/pod1234-5678/{ID}"
            ))
        );
    }

    #[test]
    fn bad_pod_uids_give_no_candidates_and_a_resolve_error() {
        for uid in ["", "..", "../x", "a/b", "1234_5678", "pod uid"] {
            let c = cid(Runtime::Containerd);
            let h = v2("/nonexistent-kloak-root");
            assert!(
                candidate_paths(&h, Driver::Systemd, QosClass::Burstable, uid, &c).is_empty(),
                "{uid:?}"
            );
            let err = resolve(&h, None, None, uid, &c).unwrap_err();
            assert!(matches!(err, CgroupError::BadPodUid(_)), "{uid:?}: {err}");
        }
    }

    /// A fake /sys/fs/cgroup with the given directories and files.
    fn tree(dirs: &[&str], files: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for dir in dirs {
            fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        for file in files {
            let path = tmp.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "").unwrap();
        }
        tmp
    }

    fn assert_found(got: &ResolvedCgroup, want: &Path) {
        assert_eq!(got.path, want);
        assert_eq!(got.id, fs::metadata(want).unwrap().ino());
    }

    /// Every layout, each in a v2, a v1 and a hybrid fake tree: detect, then resolve as the
    /// node agent does, with the QoS class right, wrong and missing.
    #[test]
    fn resolves_every_layout_in_fixture_trees() {
        let layouts = [
            (
                Runtime::Containerd,
                QosClass::Burstable,
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope"),
            ),
            (
                Runtime::CriO,
                QosClass::BestEffort,
                format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice/crio-{ID}.scope"),
            ),
            (
                Runtime::Docker,
                QosClass::Guaranteed,
                format!("kubepods.slice/kubepods-pod1234_5678.slice/docker-{ID}.scope"),
            ),
            (
                Runtime::Containerd,
                QosClass::Burstable,
                format!("kubepods/burstable/pod1234-5678/{ID}"),
            ),
            (
                Runtime::Docker,
                QosClass::BestEffort,
                format!("kubepods/besteffort/pod1234-5678/{ID}"),
            ),
            (
                Runtime::Containerd,
                QosClass::Guaranteed,
                format!("kubepods/pod1234-5678/{ID}"),
            ),
            (
                Runtime::CriO,
                QosClass::Burstable,
                format!("kubepods/burstable/pod1234-5678/crio-{ID}"),
            ),
            (
                Runtime::CriO,
                QosClass::Guaranteed,
                format!("kubepods/pod1234-5678/{ID}"),
            ),
        ];
        // (the hierarchy's directory in the tree, marker files, other directories)
        let setups: [(&str, &[&str], &[&str]); 4] = [
            ("", &["cgroup.controllers"], &[]),
            (
                "unified",
                &["unified/cgroup.controllers"],
                &["memory", "systemd"],
            ),
            ("memory", &[], &["systemd", "cpu"]),
            ("systemd", &[], &["cpu"]),
        ];
        for (runtime, qos, rel) in &layouts {
            let c = cid(*runtime);
            let wrong_qos = match qos {
                QosClass::Guaranteed => QosClass::BestEffort,
                _ => QosClass::Guaranteed,
            };
            for (base, files, others) in setups {
                let leaf = Path::new(base).join(rel);
                let mut dirs = vec![leaf.to_str().unwrap()];
                dirs.extend_from_slice(others);
                let tmp = tree(&dirs, files);
                let want = tmp.path().join(&leaf);
                let ctx = format!("{runtime:?} {qos:?} {rel} in {base:?}");

                let h = detect_hierarchy(tmp.path()).unwrap();
                assert_eq!(h.root(), tmp.path().join(base), "{ctx}");
                assert_eq!(
                    matches!(h, Hierarchy::V2 { .. }),
                    base.is_empty() || base == "unified",
                    "{ctx}"
                );
                let driver = detect_driver(&h);
                let expected_driver = if rel.starts_with("kubepods.slice") {
                    Driver::Systemd
                } else {
                    Driver::Cgroupfs
                };
                assert_eq!(driver, Some(expected_driver), "{ctx}");

                for q in [Some(*qos), Some(wrong_qos), None] {
                    for d in [driver, None] {
                        let got = resolve(&h, d, q, UID, &c)
                            .unwrap_or_else(|e| panic!("{ctx} {d:?} {q:?}: {e}"));
                        assert_found(&got, &want);
                    }
                }
            }
        }
    }

    #[test]
    fn missing_container_lists_the_tried_count_and_first_two_paths() {
        let tmp = tree(
            &["kubepods.slice/kubepods-burstable.slice"],
            &["cgroup.controllers"],
        );
        let h = detect_hierarchy(tmp.path()).unwrap();
        let c = cid(Runtime::CriO);
        // Both drivers: 3 systemd layouts and 3 cgroupfs layouts with two leaves each.
        let err = resolve(&h, None, Some(QosClass::Burstable), UID, &c).unwrap_err();
        let msg = err.to_string();
        let first = candidate_paths(&h, Driver::Systemd, QosClass::Burstable, UID, &c);
        assert!(msg.contains("tried 9 paths"), "{msg}");
        assert!(msg.contains(&format!("cri-o://{ID}")), "{msg}");
        assert!(
            msg.contains(&format!("{}, {}", first[0].display(), first[1].display())),
            "{msg}"
        );
        match err {
            CgroupError::NotFound {
                tried, first_tried, ..
            } => {
                assert_eq!(tried, 9);
                assert_eq!(first_tried, first[..2]);
            }
            other => panic!("{other}"),
        }

        let err = resolve(&h, Some(Driver::Cgroupfs), None, UID, &c).unwrap_err();
        assert!(err.to_string().contains("tried 6 paths"), "{err}");
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_not_a_match() {
        let scope = format!("kubepods.slice/kubepods-pod1234_5678.slice/cri-containerd-{ID}.scope");
        let tmp = tree(&[], &["cgroup.controllers", &scope, "kubepods"]);
        let h = detect_hierarchy(tmp.path()).unwrap();
        // `kubepods` is a file, so cgroupfs candidates fail with ENOTDIR rather than ENOENT.
        let err = resolve(&h, None, None, UID, &cid(Runtime::Containerd)).unwrap_err();
        assert!(err.to_string().contains("tried 6 paths"), "{err}");
    }

    #[test]
    fn prefers_the_v2_root_then_unified_then_memory_then_systemd() {
        let tmp = tree(
            &["memory", "systemd"],
            &["cgroup.controllers", "unified/cgroup.controllers"],
        );
        assert_eq!(
            detect_hierarchy(tmp.path()).unwrap(),
            v2(tmp.path().to_str().unwrap())
        );

        let tmp = tree(&["memory", "systemd"], &["unified/cgroup.controllers"]);
        let unified = tmp.path().join("unified");
        assert_eq!(
            detect_hierarchy(tmp.path()).unwrap(),
            Hierarchy::V2 { root: unified }
        );

        // An empty `unified` mount point is not a v2 hierarchy.
        let tmp = tree(&["memory", "systemd", "unified"], &[]);
        let memory = tmp.path().join("memory");
        assert_eq!(
            detect_hierarchy(tmp.path()).unwrap(),
            Hierarchy::V1 {
                controller_root: memory
            }
        );
    }

    #[test]
    fn no_hierarchy_is_an_error_naming_the_root() {
        let tmp = tree(&["cpu"], &[]);
        let err = detect_hierarchy(tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains(&tmp.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn driver_is_unknown_before_the_kubelet_creates_its_cgroup() {
        let tmp = tree(&["system.slice"], &["cgroup.controllers"]);
        let h = detect_hierarchy(tmp.path()).unwrap();
        assert_eq!(detect_driver(&h), None);
    }
}
