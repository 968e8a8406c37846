//! The ciphertext strategy's place on the wire.
//!
//! `tc` filters patch a workload's records where its packets leave: on the
//! host's interfaces for `kloak run`, on the host end of a pod's interface on
//! Kubernetes. Each filter is the program variant that parses the device's
//! framing, and only the network namespaces whose packets pass a filter may
//! have records bound to the wire (`ct_wired` in cipher_maps.h): elsewhere a
//! bound record would leave unpatched while its event claimed a rewrite.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, TcHook, TcHookBuilder, TC_EGRESS, TC_INGRESS};
use thiserror::Error;
use tracing::{info, warn};

/// Where on an interface the workload's packets leave, for the ciphertext strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireSide {
    /// The host's own interface (`kloak run`): packets leave on egress.
    HostEgress,
    /// The host end of a pod's veth: the pod's packets arrive on its ingress,
    /// so the pod never sees them patched.
    PodHostEnd,
}

/// Where a device's packets put the IP header, as the `tc` programs see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An Ethernet header first (Ethernet devices, veth, bridges, loopback).
    Ethernet,
    /// The IP header first (WireGuard, tun, IP-in-IP tunnels).
    Layer3,
}

// Link types (`ARPHRD_*`, include/uapi/linux/if_arp.h) whose framing is known.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_PPP: u16 = 512;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_TUNNEL: u16 = 768;
const ARPHRD_TUNNEL6: u16 = 769;
const ARPHRD_SIT: u16 = 776;
const ARPHRD_LOOPBACK: u16 = 772;
const ARPHRD_NONE: u16 = 65534;

impl Framing {
    /// The framing of a link type; `None` for types whose packets the
    /// programs cannot parse (GRE devices may carry their outer header at
    /// `tc` already, InfiniBand has its own).
    pub fn of_link_type(link_type: u16) -> Option<Self> {
        match link_type {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(Self::Ethernet),
            ARPHRD_NONE | ARPHRD_RAWIP | ARPHRD_PPP | ARPHRD_TUNNEL | ARPHRD_TUNNEL6
            | ARPHRD_SIT => Some(Self::Layer3),
            _ => None,
        }
    }

    /// The framing of interface `ifname`, from `<class_net>/<ifname>/type`.
    pub fn of_interface(class_net: &Path, ifname: &str) -> Result<Self, WireError> {
        let path = class_net.join(ifname).join("type");
        let link_type = fs::read_to_string(&path)
            .map_err(|source| WireError::LinkType {
                ifname: ifname.to_owned(),
                source,
            })?
            .trim()
            .parse::<u16>()
            .map_err(|err| WireError::LinkType {
                ifname: ifname.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, err),
            })?;
        Self::of_link_type(link_type).ok_or_else(|| WireError::UnsupportedFraming {
            ifname: ifname.to_owned(),
            link_type,
        })
    }
}

#[derive(Debug, Error)]
pub enum WireError {
    #[error("cannot read the link type of {ifname}: {source}")]
    LinkType { ifname: String, source: io::Error },
    #[error(
        "{ifname} has link type {link_type}, whose packets kloak's tc programs cannot parse: \
         records leaving through it are not patched"
    )]
    UnsupportedFraming { ifname: String, link_type: u16 },
    #[error("attaching the tc {what} program on {ifname} ({ifindex}) failed: {source}")]
    Attach {
        what: &'static str,
        ifname: String,
        ifindex: u32,
        source: libbpf_rs::Error,
    },
    #[error("updating map ct_wired failed: {source}")]
    Map { source: libbpf_rs::Error },
}

/// The two programs of one framing: one patches where packets leave, the
/// other sees the peer's acknowledgements.
pub struct WirePrograms<'a> {
    pub patch: BorrowedFd<'a>,
    pub ack: BorrowedFd<'a>,
}

/// One wired interface: its filters and the namespace it serves.
struct Wired {
    name: String,
    netns: u32,
    hooks: Vec<TcHook>,
}

/// The filters this instance attached, by interface index.
pub struct Wire {
    handle: u32,
    interfaces: BTreeMap<u32, Wired>,
}

/// Priority of kloak's `tc` filters; each instance has its own handle.
pub const TC_PRIORITY: u32 = 1;

impl Wire {
    /// `handle`: this instance's filter handle, so instances sharing an
    /// interface never replace each other's filters.
    pub fn new(handle: u32) -> Self {
        Self {
            handle,
            interfaces: BTreeMap::new(),
        }
    }

    /// Attaches both programs to `ifindex`, then lets records of network
    /// namespace `netns` be bound (never before: they would leave unpatched).
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        side: WireSide,
        netns: u32,
        programs: WirePrograms<'_>,
        wired: &impl MapCore,
    ) -> Result<(), WireError> {
        if self
            .interfaces
            .get(&ifindex)
            .is_some_and(|w| w.name == ifname && w.netns == netns)
        {
            return Ok(());
        }
        self.forget(ifindex, wired)?;
        let (patch_at, ack_at) = match side {
            WireSide::HostEgress => (TC_EGRESS, TC_INGRESS),
            WireSide::PodHostEnd => (TC_INGRESS, TC_EGRESS),
        };
        let mut hooks = Vec::with_capacity(2);
        for (program, point, what) in [
            (programs.patch, patch_at, "patch"),
            (programs.ack, ack_at, "ack"),
        ] {
            let attach_error = |source| WireError::Attach {
                what,
                ifname: ifname.to_owned(),
                ifindex,
                source,
            };
            let mut hook = TcHookBuilder::new(program)
                .ifindex(ifindex as i32)
                .replace(true)
                .handle(self.handle)
                .priority(TC_PRIORITY)
                .hook(point);
            hook.create().map_err(attach_error)?;
            hook.attach().map_err(attach_error)?;
            hooks.push(hook);
        }
        wired
            .update(&netns.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| WireError::Map { source })?;
        self.interfaces.insert(
            ifindex,
            Wired {
                name: ifname.to_owned(),
                netns,
                hooks,
            },
        );
        info!(
            interface = ifname,
            ifindex,
            ?side,
            netns,
            "ciphertext patching attached"
        );
        Ok(())
    }

    /// The interface is gone (or no longer serves its namespace): its
    /// namespace's records stop being bound unless another interface serves it.
    pub fn forget(&mut self, ifindex: u32, wired: &impl MapCore) -> Result<(), WireError> {
        let Some(gone) = self.interfaces.remove(&ifindex) else {
            return Ok(());
        };
        // A deleted device took its filters with it; one still present keeps none of ours.
        for mut hook in gone.hooks {
            let _ = hook.detach();
        }
        if self.interfaces.values().any(|w| w.netns == gone.netns) {
            return Ok(());
        }
        match wired.delete(&gone.netns.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(WireError::Map { source }),
        }
    }

    /// Detaches every filter (at teardown when nothing persists).
    pub fn detach_all(&mut self) {
        for (ifindex, wired) in std::mem::take(&mut self.interfaces) {
            for mut hook in wired.hooks {
                if let Err(err) = hook.detach() {
                    warn!(interface = %wired.name, ifindex, %err, "cannot detach tc filter");
                }
            }
        }
    }
}

/// The inode of a network namespace file (`/proc/<pid>/ns/net`): what the
/// kernel programs compare a socket's namespace with.
pub fn netns_inode(ns_file: &Path) -> io::Result<u32> {
    let ino = fs::metadata(ns_file)?.ino();
    u32::try_from(ino).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: namespace inode {ino} out of range", ns_file.display()),
        )
    })
}

/// This process's own network namespace (where `kloak run`'s workload runs).
pub fn own_netns() -> io::Result<u32> {
    netns_inode(Path::new("/proc/self/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_the_link_type() {
        assert_eq!(Framing::of_link_type(1), Some(Framing::Ethernet));
        assert_eq!(Framing::of_link_type(772), Some(Framing::Ethernet));
        // WireGuard and tun report ARPHRD_NONE; ipip ARPHRD_TUNNEL.
        assert_eq!(Framing::of_link_type(65534), Some(Framing::Layer3));
        assert_eq!(Framing::of_link_type(768), Some(Framing::Layer3));
        // GRE (778) and InfiniBand (32) are refused, never guessed.
        assert_eq!(Framing::of_link_type(778), None);
        assert_eq!(Framing::of_link_type(32), None);
    }

    #[test]
    fn framing_is_read_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        for (name, link_type) in [("eth0", "1\n"), ("wg0", "65534\n"), ("ib0", "32\n")] {
            fs::create_dir_all(root.path().join(name)).unwrap();
            fs::write(root.path().join(name).join("type"), link_type).unwrap();
        }
        assert_eq!(
            Framing::of_interface(root.path(), "eth0").unwrap(),
            Framing::Ethernet
        );
        assert_eq!(
            Framing::of_interface(root.path(), "wg0").unwrap(),
            Framing::Layer3
        );
        assert!(matches!(
            Framing::of_interface(root.path(), "ib0"),
            Err(WireError::UnsupportedFraming { link_type: 32, .. })
        ));
        assert!(matches!(
            Framing::of_interface(root.path(), "gone0"),
            Err(WireError::LinkType { .. })
        ));
    }

    #[test]
    fn own_netns_is_the_namespace_inode() {
        let own = own_netns().unwrap();
        let direct = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(u64::from(own), direct);
    }
}
