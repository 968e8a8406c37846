//! Where pods' packets can be patched: the host end of each pod's veth pair.
//!
//! The ciphertext strategy patches a pod's TLS records on the host side of
//! its interface (ingress there is the pod's egress), where the pod cannot
//! see the result even with `CAP_NET_RAW`. Host ends are found in sysfs: a
//! virtual device whose link partner (`iflink`) is another interface. The
//! kernel binds a record only when its socket's network namespace is wired,
//! so each host end is matched with the namespace at its other end.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::dataplane::wire::netns_inode;

/// A candidate host end: its name and index in the node's network namespace,
/// and the index of its partner (in the pod's namespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostEnd {
    pub name: String,
    pub ifindex: u32,
    pub iflink: u32,
}

/// A device's index and its link partner's, from its sysfs directory.
fn link_indexes(dir: &Path) -> Option<(u32, u32)> {
    let number = |file: &str| -> Option<u32> {
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    };
    Some((number("ifindex")?, number("iflink")?))
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
            let (ifindex, iflink) = link_indexes(&dir)?;
            // Physical devices link to a bus; a veth's peer makes iflink differ from ifindex.
            let target = fs::read_link(&dir).ok()?;
            let is_virtual = target.to_string_lossy().contains("devices/virtual/net/");
            (is_virtual && iflink != ifindex).then(|| HostEnd {
                name: entry.file_name().to_string_lossy().into_owned(),
                ifindex,
                iflink,
            })
        })
        .collect();
    ends.sort();
    ends
}

/*
 * The network namespace at the other end of each host end, by the host end's
 * index. Every namespace other than `own` that a process under `proc` is in is
 * looked at through that process's own sysfs (a container's /sys shows its
 * pod's interfaces); a device there pairs with a host end when each names
 * the other as its link partner.
 */
pub fn peer_namespaces(ends: &[HostEnd], proc: &Path, own: u32) -> BTreeMap<u32, u32> {
    let mut paired = BTreeMap::new();
    let Ok(entries) = fs::read_dir(proc) else {
        return paired;
    };
    let mut seen = std::collections::BTreeSet::from([own]);
    for entry in entries.flatten() {
        if paired.len() == ends.len() {
            break;
        }
        let pid_dir = entry.path();
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // Processes come and go while this runs: one that left is simply skipped.
        let Ok(netns) = netns_inode(&pid_dir.join("ns/net")) else {
            continue;
        };
        if !seen.insert(netns) {
            continue;
        }
        let Ok(devices) = fs::read_dir(pid_dir.join("root/sys/class/net")) else {
            continue;
        };
        for device in devices.flatten() {
            let Some((ifindex, iflink)) = link_indexes(&device.path()) else {
                continue;
            };
            for end in ends {
                if end.ifindex == iflink && end.iflink == ifindex {
                    paired.insert(end.ifindex, netns);
                }
            }
        }
    }
    paired
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
                    ifindex: 5,
                    iflink: 4
                },
                HostEnd {
                    name: "veth1a2b".into(),
                    ifindex: 7,
                    iflink: 3
                },
            ]
        );
    }

    /// A fake `/proc/<pid>` in network namespace file `ns` (its inode is the
    /// namespace), whose /sys shows one device linked to host index `iflink`.
    fn process(proc: &Path, pid: u32, ns: &Path, device: &str, ifindex: u32, iflink: u32) {
        let pid_dir = proc.join(pid.to_string());
        fs::create_dir_all(pid_dir.join("ns")).unwrap();
        symlink(ns, pid_dir.join("ns/net")).unwrap();
        let dev = pid_dir.join("root/sys/class/net").join(device);
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("ifindex"), format!("{ifindex}\n")).unwrap();
        fs::write(dev.join("iflink"), format!("{iflink}\n")).unwrap();
    }

    #[test]
    fn host_ends_pair_with_the_namespace_that_links_back() {
        let root = tempfile::tempdir().unwrap();
        let proc = root.path().join("proc");
        let (pod_a, pod_b, host) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("h"),
        );
        for ns in [&pod_a, &pod_b, &host] {
            fs::write(ns, "").unwrap();
        }
        let inode = |path: &Path| netns_inode(path).unwrap();
        process(&proc, 10, &pod_a, "eth0", 2, 7);
        process(&proc, 11, &pod_a, "eth0", 2, 7);
        // Pod b's device links to 9, but its index is not host end 9's partner: no pair.
        process(&proc, 12, &pod_b, "eth0", 3, 9);
        process(&proc, 13, &host, "veth1a2b", 7, 2);
        let ends = [
            HostEnd {
                name: "veth1a2b".into(),
                ifindex: 7,
                iflink: 2,
            },
            HostEnd {
                name: "veth9".into(),
                ifindex: 9,
                iflink: 4,
            },
        ];
        let paired = peer_namespaces(&ends, &proc, inode(&host));
        assert_eq!(paired, BTreeMap::from([(7, inode(&pod_a))]));
    }

    #[test]
    fn missing_sysfs_is_no_interfaces() {
        assert!(pod_host_ends(Path::new("/nonexistent/class/net")).is_empty());
    }
}
