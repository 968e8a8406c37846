//! What this kernel allows, found by trying (BPF programs) and by reading
//! the few files that say it. Used at start-up and by `kloak doctor`.

use std::fs;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::skel::probes::ProbesSkelBuilder;

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";
const SECURITYFS: &str = "/sys/kernel/security";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const TRACEFS_MAGIC: i64 = 0x74726163;
const CGROUP2_MAGIC: i64 = 0x63677270;

#[derive(Debug, Clone, Serialize)]
pub struct KernelFeatures {
    pub kernel: String,
    pub btf: bool,
    pub tracefs: bool,
    pub bpffs: bool,
    /// The active mode in /sys/kernel/security/lockdown, when readable.
    pub lockdown: Option<String>,
    pub write_user: bool,
    pub bpf_loop: bool,
    pub attach_cookie: bool,
    /// TC programs may patch packets and userspace may run the GCM self-test:
    /// the ciphertext strategy can run.
    pub ciphertext: bool,
    pub kprobes: bool,
    pub cgroup2: Option<PathBuf>,
}

impl KernelFeatures {
    /// A kernel with everything kloak needs, for tests of the verdict logic.
    #[cfg(test)]
    pub fn healthy_example() -> Self {
        Self {
            kernel: "6.1.0".into(),
            btf: true,
            tracefs: true,
            bpffs: true,
            lockdown: Some("none".into()),
            write_user: true,
            bpf_loop: true,
            attach_cookie: true,
            ciphertext: true,
            kprobes: false,
            cgroup2: Some("/sys/fs/cgroup".into()),
        }
    }

    /// Placeholders can be rewritten by some strategy on this kernel.
    pub fn can_rewrite(&self) -> bool {
        self.write_user || self.ciphertext
    }

    /// Why in-place rewriting cannot happen here, in words for people; None when it can.
    pub fn rewrite_blocker(&self) -> Option<String> {
        if self.write_user {
            return None;
        }
        Some(match self.lockdown.as_deref() {
            Some(mode) if mode != "none" => format!("kernel lockdown={mode}"),
            _ => "kernel refuses bpf_probe_write_user".to_owned(),
        })
    }

    /// Missing pieces without which the data plane cannot load at all.
    pub fn fatal_gaps(&self) -> Vec<&'static str> {
        let mut gaps = Vec::new();
        if !self.btf {
            gaps.push("no kernel BTF (/sys/kernel/btf/vmlinux): CO-RE programs cannot load");
        }
        if !self.bpf_loop {
            gaps.push("no bpf_loop helper (kernel older than 5.17)");
        }
        if !self.attach_cookie {
            gaps.push("no uprobe attach cookies (kernel older than 5.15)");
        }
        if !self.tracefs {
            gaps.push("tracefs not mounted at /sys/kernel/tracing and could not be mounted");
        }
        if self.cgroup2.is_none() {
            gaps.push("no cgroup v2 hierarchy mounted");
        }
        gaps
    }
}

/// Probes the kernel; mounts tracefs, bpffs and securityfs when `mount` is true.
pub fn probe(mount: bool) -> KernelFeatures {
    if mount {
        ensure_mounted("tracefs", TRACEFS, TRACEFS_MAGIC);
        ensure_mounted("bpf", BPFFS, BPF_FS_MAGIC);
        if !Path::new(SECURITYFS).join("lockdown").exists() {
            let _ = mount_fs("securityfs", SECURITYFS);
        }
    }
    let features = KernelFeatures {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        tracefs: fs_magic(Path::new(TRACEFS)) == Some(TRACEFS_MAGIC),
        bpffs: fs_magic(Path::new(BPFFS)) == Some(BPF_FS_MAGIC),
        lockdown: fs::read_to_string(Path::new(SECURITYFS).join("lockdown"))
            .ok()
            .and_then(|text| parse_lockdown(&text)),
        write_user: program_loads("probe_write_user"),
        bpf_loop: program_loads("probe_loop"),
        attach_cookie: program_loads("probe_cookie"),
        ciphertext: program_loads("probe_tc_patch") && program_loads("probe_syscall"),
        kprobes: Path::new(TRACEFS).join("kprobe_events").exists(),
        cgroup2: cgroup2_mount(),
    };
    debug!(?features, "kernel features probed");
    features
}

/// The bracketed mode of "none [integrity] confidentiality".
pub fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = text[start..].find(']')? + start;
    Some(text[start + 1..end].to_owned())
}

fn fs_magic(path: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|stat| stat.filesystem_type().0)
}

fn mount_fs(fstype: &str, target: &str) -> nix::Result<()> {
    nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
}

fn ensure_mounted(fstype: &str, target: &str, magic: i64) {
    if fs_magic(Path::new(target)) == Some(magic) {
        return;
    }
    match mount_fs(fstype, target) {
        Ok(()) => info!(fstype, target, "mounted"),
        Err(err) => warn!(fstype, target, %err, "could not mount"),
    }
}

/// Where the cgroup v2 hierarchy is: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts.
pub fn cgroup2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|path| fs_magic(path) == Some(CGROUP2_MAGIC))
}

/// Loads the probe object with only `name` enabled: success means the kernel allows it.
fn program_loads(name: &str) -> bool {
    let mut object = MaybeUninit::uninit();
    let Ok(mut open) = ProbesSkelBuilder::default().open(&mut object) else {
        return false;
    };
    for mut program in open.open_object_mut().progs_mut() {
        let enabled = program.name() == name;
        program.set_autoload(enabled);
    }
    let loaded = open.load();
    debug!(probe = name, ok = loaded.is_ok(), "feature probe");
    loaded.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            parse_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(parse_lockdown("[none] integrity").as_deref(), Some("none"));
        assert_eq!(parse_lockdown("garbage"), None);
    }

    #[test]
    fn blocker_names_lockdown_mode() {
        let mut features = KernelFeatures {
            lockdown: Some("integrity".into()),
            write_user: false,
            ..KernelFeatures::healthy_example()
        };
        assert_eq!(
            features.rewrite_blocker().as_deref(),
            Some("kernel lockdown=integrity")
        );
        assert!(features.fatal_gaps().is_empty());
        features.write_user = true;
        assert_eq!(features.rewrite_blocker(), None);
        features.btf = false;
        assert_eq!(features.fatal_gaps().len(), 1);
    }
}
