//! Where pods' packets can be patched: the host end of each pod's veth pair.
//!
//! The ciphertext strategy patches a pod's TLS records on the host side of
//! its interface (ingress there is the pod's egress), where the pod cannot
//! see the result even with `CAP_NET_RAW`. Host ends are found in sysfs: a
//! virtual device whose link partner (`iflink`) is another interface.

use std::fs;
use std::path::Path;

/// A candidate host end: its name and index in the node's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostEnd {
    pub name: String,
    pub ifindex: u32,
}

/// Host ends of veth pairs under `class_net` (`/sys/class/net`), sorted by index.
pub fn pod_host_ends(class_net: &Path) -> Vec<HostEnd> {
    let Ok(entries) = fs::read_dir(class_net) else {
        return Vec::new();
    };
    let mut ends: Vec<HostEnd> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let number = |file: &str| -> Option<u32> {
                fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
            };
            let (ifindex, iflink) = (number("ifindex")?, number("iflink")?);
            // Physical devices link to a bus; a veth's peer makes iflink differ from ifindex.
            let target = fs::read_link(&dir).ok()?;
            let is_virtual = target.to_string_lossy().contains("devices/virtual/net/");
            (is_virtual && iflink != ifindex).then(|| HostEnd {
                name: entry.file_name().to_string_lossy().into_owned(),
                ifindex,
            })
        })
        .collect();
    ends.sort();
    ends
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn device(root: &Path, name: &str, kind: &str, ifindex: u32, iflink: u32) {
        let dir = root.join("devices").join(kind).join("net").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("ifindex"), format!("{ifindex}\n")).unwrap();
        fs::write(dir.join("iflink"), format!("{iflink}\n")).unwrap();
        symlink(
            format!("../../devices/{kind}/net/{name}"),
            root.join("class/net").join(name),
        )
        .unwrap();
    }

    #[test]
    fn finds_veth_host_ends_only() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("class/net")).unwrap();
        device(root.path(), "lo", "virtual", 1, 1);
        device(root.path(), "eth0", "pci0000:00/0000:00:03.0/virtio2", 2, 2);
        device(root.path(), "cni0", "virtual", 3, 3);
        device(root.path(), "veth1a2b", "virtual", 7, 3);
        device(root.path(), "lxc9f00", "virtual", 5, 4);
        let ends = pod_host_ends(&root.path().join("class/net"));
        assert_eq!(
            ends,
            [
                HostEnd {
                    name: "lxc9f00".into(),
                    ifindex: 5
                },
                HostEnd {
                    name: "veth1a2b".into(),
                    ifindex: 7
                },
            ]
        );
    }

    #[test]
    fn missing_sysfs_is_no_interfaces() {
        assert!(pod_host_ends(Path::new("/nonexistent/class/net")).is_empty());
    }
}
