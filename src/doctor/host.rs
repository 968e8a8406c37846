//! Checks that only read files, relative to a root directory so tests can run them against
//! fixture trees: lockdown, tracing interfaces, cgroups, capabilities, DNS servers.

use std::fs;
use std::path::Path;

use super::Check;
use crate::cgroup::{self, Driver, Hierarchy};
use crate::dataplane::probes::parse_lockdown;

/// Lockdown mode from securityfs: any mode but `none` refuses `bpf_probe_write_user`.
pub fn lockdown(root: &Path) -> Check {
    const NAME: &str = "lockdown";
    let path = root.join("sys/kernel/security/lockdown");
    match fs::read_to_string(&path).ok().and_then(|t| parse_lockdown(&t)) {
        Some(mode) if mode == "none" => Check::ok(NAME, "lockdown=none: user-memory writes allowed"),
        Some(mode) => Check::warn(
            NAME,
            format!("lockdown={mode}: the kernel refuses user-memory writes (no in-place rewrite)"),
            "the ciphertext strategy rewrites AES-GCM sessions under lockdown; boot without \
             lockdown (lockdown=none, or Secure Boot off) for in-place rewrites of the rest",
        ),
        // Kernels without the lockdown LSM have no file: nothing forbids the writes then,
        // and the user-memory write probe has the last word.
        None => Check::warn(
            NAME,
            format!("{} not readable: mode unknown", path.display()),
            "mount securityfs (mount -t securityfs securityfs /sys/kernel/security) to see the mode",
        ),
    }
}

/// uprobes and tracepoints, from the tracefs control files the kernel creates for them.
pub fn tracing(root: &Path) -> Vec<Check> {
    let tracefs = root.join("sys/kernel/tracing");
    let uprobes = tracefs.join("uprobe_events");
    let events = tracefs.join("events");
    vec![
        if uprobes.exists() {
            Check::ok("uprobes", format!("{} present", uprobes.display()))
        } else {
            Check::fail(
                "uprobes",
                format!("{} missing", uprobes.display()),
                "use a kernel with CONFIG_UPROBE_EVENTS=y and mount tracefs at /sys/kernel/tracing",
            )
        },
        if events.is_dir() {
            Check::ok("tracepoints", format!("{} present", events.display()))
        } else {
            Check::fail(
                "tracepoints",
                format!("{} missing", events.display()),
                "mount tracefs (mount -t tracefs nodev /sys/kernel/tracing) on a kernel with \
                 CONFIG_TRACEPOINTS=y",
            )
        },
    ]
}

/// Cgroup version and the kubelet's driver: container cgroups are how kloak tells enabled
/// pods from the rest, so without v2 ids nothing is rewritten.
pub fn cgroups(root: &Path) -> Vec<Check> {
    let sys_fs_cgroup = root.join("sys/fs/cgroup");
    let hierarchy = match cgroup::detect_hierarchy(&sys_fs_cgroup) {
        Ok(h) => h,
        Err(err) => {
            return vec![Check::fail(
                "cgroup version",
                err.to_string(),
                "mount the unified hierarchy: mount -t cgroup2 none /sys/fs/cgroup",
            )]
        }
    };
    let version = match &hierarchy {
        Hierarchy::V1 { controller_root } => Check::fail(
            "cgroup version",
            format!(
                "v1 only ({}): containers cannot be told apart: no rewrites",
                controller_root.display()
            ),
            "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2)",
        ),
        Hierarchy::V2 { root: v2 } if v2 != &sys_fs_cgroup => Check::ok(
            "cgroup version",
            format!("hybrid: v2 ids from {}, controllers in v1", v2.display()),
        ),
        Hierarchy::V2 { root: v2 } => {
            Check::ok("cgroup version", format!("v2 at {}", v2.display()))
        }
    };
    let driver = match cgroup::detect_driver(&hierarchy) {
        Some(Driver::Systemd) => Check::ok("cgroup driver", "systemd (kubepods.slice)"),
        Some(Driver::Cgroupfs) => Check::ok("cgroup driver", "cgroupfs (kubepods)"),
        None => Check::warn(
            "cgroup driver",
            format!(
                "no kubepods cgroup under {}: kubelet not running here",
                hierarchy.root().display()
            ),
            "run kloak doctor on a Kubernetes node; a kubelet with a custom --cgroup-root is not \
             supported",
        ),
    };
    vec![version, driver]
}

/// Capabilities the controller uses: loading and attaching BPF programs, reading other
/// processes' memory maps, signalling, netlink.
const CAPABILITIES: &[(u32, &str)] = &[
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (21, "CAP_SYS_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (5, "CAP_KILL"),
    (12, "CAP_NET_ADMIN"),
];

/// Only kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones use the memory
/// cgroup), so lacking it is a warning, not a failure.
const CAP_SYS_RESOURCE: (u32, &str) = (24, "CAP_SYS_RESOURCE");

/// The effective capability mask from the text of /proc/<pid>/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The effective capabilities of this process (`<root>/proc/self/status`).
pub fn capabilities(root: &Path) -> Check {
    const NAME: &str = "capabilities";
    let path = root.join("proc/self/status");
    let Some(mask) = fs::read_to_string(&path)
        .ok()
        .and_then(|s| parse_cap_eff(&s))
    else {
        return Check::warn(
            NAME,
            format!("no CapEff in {}", path.display()),
            "mount /proc (the DaemonSet mounts the host's)",
        );
    };
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    let (resource_bit, resource) = CAP_SYS_RESOURCE;
    if missing.is_empty() && mask & (1 << resource_bit) == 0 {
        Check::warn(
            NAME,
            format!("CapEff={mask:016x}: missing {resource}"),
            format!(
                "only kernels before 5.11 need {resource} (to raise the memlock limit for BPF maps); grant it there"
            ),
        )
    } else if missing.is_empty() {
        Check::ok(NAME, format!("CapEff={mask:016x}: all needed"))
    } else {
        Check::fail(
            NAME,
            format!("CapEff={mask:016x}: missing {}", missing.join(", ")),
            format!(
                "grant {} (securityContext.capabilities.add); root alone is not enough when the \
                 runtime dropped them from the bounding set",
                missing.join(", ")
            ),
        )
    }
}

/// Nameservers of `<root>/etc/resolv.conf`: the servers whose DNS answers are trusted for
/// host verification when none is configured explicitly.
pub fn dns(root: &Path) -> Check {
    const NAME: &str = "trusted DNS servers";
    let path = root.join("etc/resolv.conf");
    let servers = fs::read_to_string(&path)
        .map(|text| crate::config::resolv_conf_nameservers(&text))
        .unwrap_or_default();
    if servers.is_empty() {
        Check::warn(
            NAME,
            format!("no nameserver in {}", path.display()),
            "set trusted DNS servers explicitly (--dns-server, chart value for the DNS servers)",
        )
    } else {
        let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
        Check::ok(NAME, list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use std::path::PathBuf;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("relative path has a parent")).expect("mkdir");
        fs::write(path, text).expect("write fixture");
    }

    fn mkdir(root: &Path, rel: &str) -> PathBuf {
        let path = root.join(rel);
        fs::create_dir_all(&path).expect("mkdir");
        path
    }

    fn verdicts(checks: &[Check]) -> Vec<Verdict> {
        checks.iter().map(|c| c.verdict).collect()
    }

    #[test]
    fn lockdown_modes() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(lockdown(root.path()).verdict, Verdict::Warn);
        write(
            root.path(),
            "sys/kernel/security/lockdown",
            "[none] integrity confidentiality\n",
        );
        assert_eq!(lockdown(root.path()).verdict, Verdict::Ok);
        write(
            root.path(),
            "sys/kernel/security/lockdown",
            "none [integrity] confidentiality\n",
        );
        let check = lockdown(root.path());
        // The ciphertext strategy still rewrites: a warning, not a failure.
        assert_eq!(check.verdict, Verdict::Warn);
        // scripts/demo.sh greps this out of the table.
        assert!(check.detail.contains("lockdown=integrity"));
        assert!(check.remedy.is_some());
    }

    #[test]
    fn tracing_interfaces() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            verdicts(&tracing(root.path())),
            [Verdict::Fail, Verdict::Fail]
        );
        write(root.path(), "sys/kernel/tracing/uprobe_events", "");
        mkdir(root.path(), "sys/kernel/tracing/events");
        assert_eq!(verdicts(&tracing(root.path())), [Verdict::Ok, Verdict::Ok]);
    }

    #[test]
    fn cgroup_v2_with_either_driver() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "sys/fs/cgroup/cgroup.controllers",
            "cpu memory\n",
        );
        let checks = cgroups(root.path());
        assert_eq!(verdicts(&checks), [Verdict::Ok, Verdict::Warn]);
        assert!(checks[1].remedy.is_some());
        mkdir(root.path(), "sys/fs/cgroup/kubepods.slice");
        let checks = cgroups(root.path());
        assert_eq!(verdicts(&checks), [Verdict::Ok, Verdict::Ok]);
        assert!(checks[1].detail.starts_with("systemd"));

        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "sys/fs/cgroup/cgroup.controllers", "");
        mkdir(root.path(), "sys/fs/cgroup/kubepods");
        assert!(cgroups(root.path())[1].detail.starts_with("cgroupfs"));
    }

    #[test]
    fn cgroup_hybrid_is_ok_and_v1_only_fails() {
        let root = tempfile::tempdir().expect("tempdir");
        mkdir(root.path(), "sys/fs/cgroup/memory/kubepods");
        let checks = cgroups(root.path());
        assert_eq!(verdicts(&checks), [Verdict::Fail, Verdict::Ok]);
        assert!(checks[0].detail.contains("no rewrites"));

        write(root.path(), "sys/fs/cgroup/unified/cgroup.controllers", "");
        mkdir(root.path(), "sys/fs/cgroup/unified/kubepods.slice");
        let checks = cgroups(root.path());
        assert_eq!(verdicts(&checks), [Verdict::Ok, Verdict::Ok]);
        assert!(checks[0].detail.starts_with("hybrid"));
    }

    #[test]
    fn no_cgroup_hierarchy_fails() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(verdicts(&cgroups(root.path())), [Verdict::Fail]);
    }

    #[test]
    fn capabilities_from_cap_eff() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(capabilities(root.path()).verdict, Verdict::Warn);
        write(
            root.path(),
            "proc/self/status",
            "Name:\tkloak\nCapEff:\t000001ffffffffff\n",
        );
        assert_eq!(capabilities(root.path()).verdict, Verdict::Ok);
        // Docker's default set: no CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE,
        // CAP_SYS_RESOURCE, CAP_NET_ADMIN; CAP_KILL present.
        write(
            root.path(),
            "proc/self/status",
            "CapEff:\t00000000a80425fb\n",
        );
        let check = capabilities(root.path());
        assert_eq!(check.verdict, Verdict::Fail);
        let remedy = check.remedy.expect("a failure has a remedy");
        // Everything but CAP_SYS_RESOURCE (bit 24): only old kernels need it.
        write(
            root.path(),
            "proc/self/status",
            "CapEff:	000001fffeffffff
",
        );
        let resource = capabilities(root.path());
        assert_eq!(resource.verdict, Verdict::Warn);
        assert!(resource.detail.contains("CAP_SYS_RESOURCE"));
        for name in [
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_NET_ADMIN",
        ] {
            assert!(remedy.contains(name), "{name} in {remedy}");
        }
        assert!(!remedy.contains("CAP_KILL"));
    }

    #[test]
    fn dns_servers_from_resolv_conf() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(dns(root.path()).verdict, Verdict::Warn);
        write(
            root.path(),
            "etc/resolv.conf",
            "search cluster.local\noptions ndots:5\n",
        );
        assert_eq!(dns(root.path()).verdict, Verdict::Warn);
        write(root.path(), "etc/resolv.conf", "nameserver 10.96.0.10\n");
        let check = dns(root.path());
        assert_eq!(check.verdict, Verdict::Ok);
        assert_eq!(check.detail, "10.96.0.10");
    }
}
