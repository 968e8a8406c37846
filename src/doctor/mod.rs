//! `kloak doctor`: what this node can do, line by line, with a remedy for each failure.
//!
//! Kernel features are probed on the running kernel; everything read from files goes through
//! `--root` so the verdicts can be tested against fixture trees.

mod containers;
mod host;
mod pins;

use std::path::Path;

use libbpf_rs::MapType;
use serde::Serialize;

use self::containers::Container;
use crate::cli::DoctorArgs;
use crate::dataplane::probes::{self, KernelFeatures};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            remedy: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            remedy: Some(remedy.into()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub can_rewrite: bool,
    /// Kept whole: scripts grep `"write_user": true` out of the JSON.
    pub features: KernelFeatures,
    pub checks: Vec<Check>,
    /// Enabled cgroups and Kubernetes containers with live processes: their TLS
    /// runtimes and whether each is hooked.
    pub containers: Vec<Container>,
}

/// A strategy that is missing only fails when the other one is missing too.
fn strategy_check(name: &str, available: bool, other: bool, detail: String, remedy: &str) -> Check {
    match (available, other) {
        (true, _) => Check::ok(name, detail),
        (false, true) => Check::warn(name, detail, remedy),
        (false, false) => Check::fail(name, detail, remedy),
    }
}

fn check(name: &str, ok: bool, detail: String, remedy: &str) -> Check {
    if ok {
        Check::ok(name, detail)
    } else {
        Check::fail(name, detail, remedy)
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// The oldest kernel with everything kloak uses (bpf_loop).
const MIN_KERNEL: (u32, u32) = (5, 17);

/// `(major, minor)` of a release string such as `6.18.0-1-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The kernel release line (pure): a warning only, since the probes have the last word
/// (distributions backport BPF features).
pub fn kernel_check(release: &str) -> Check {
    const NAME: &str = "kernel version";
    match kernel_version(release) {
        Some(version) if version >= MIN_KERNEL => Check::ok(NAME, release),
        Some(_) => Check::warn(
            NAME,
            format!("{release} (older than {}.{})", MIN_KERNEL.0, MIN_KERNEL.1),
            format!(
                "upgrade to Linux {}.{} or newer",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => Check::warn(
            NAME,
            format!("unknown release {release:?}"),
            "mount /proc so /proc/sys/kernel/osrelease is readable",
        ),
    }
}

/// The verdicts for a set of probed features (pure).
pub fn checks(features: &KernelFeatures, ringbuf: bool) -> Vec<Check> {
    let lockdown = features.lockdown.as_deref().unwrap_or("unknown");
    vec![
        kernel_check(&features.kernel),
        check(
            "kernel BTF",
            features.btf,
            yes_no(features.btf),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution since 2021)",
        ),
        check(
            "bpf_loop helper",
            features.bpf_loop,
            yes_no(features.bpf_loop),
            "kloak needs Linux 5.17 or newer",
        ),
        check(
            "uprobe attach cookies",
            features.attach_cookie,
            yes_no(features.attach_cookie),
            "kloak needs Linux 5.15 or newer",
        ),
        check(
            "ring buffers",
            ringbuf,
            yes_no(ringbuf),
            "kloak needs BPF_MAP_TYPE_RINGBUF (Linux 5.8 or newer) and CAP_BPF to probe it",
        ),
        check(
            "tracefs",
            features.tracefs,
            format!("{} mounted: {}", probes::TRACEFS, yes_no(features.tracefs)),
            "mount -t tracefs nodev /sys/kernel/tracing",
        ),
        check(
            "bpffs",
            features.bpffs,
            format!("{} mounted: {}", probes::BPFFS, yes_no(features.bpffs)),
            "mount -t bpf bpf /sys/fs/bpf",
        ),
        strategy_check(
            "in-place strategy (user-memory writes)",
            features.write_user,
            features.ciphertext,
            // scripts/demo.sh greps `lockdown=<mode>` out of this line.
            format!(
                "bpf_probe_write_user {} (lockdown={lockdown})",
                if features.write_user {
                    "allowed"
                } else {
                    "refused"
                }
            ),
            "kernel lockdown (Secure Boot) forbids it: the ciphertext strategy rewrites AES-GCM \
             sessions here (--strategy auto or ciphertext); boot without lockdown for the rest",
        ),
        strategy_check(
            "ciphertext strategy (AES-GCM patched on the wire)",
            features.ciphertext,
            features.write_user,
            format!(
                "TC packet patching and the GCM self-test program: {}",
                yes_no(features.ciphertext)
            ),
            "kloak needs BPF TC programs (CONFIG_NET_CLS_BPF / clsact) and BPF_PROG_TYPE_SYSCALL \
             (Linux 5.14 or newer); the in-place strategy still works where user-memory writes do",
        ),
        // Informational: kloak attaches uprobes and tracepoints only.
        Check::ok(
            "kprobes",
            format!("{} (kloak does not need them)", yes_no(features.kprobes)),
        ),
    ]
}

/// Every file-based check, relative to `root` (pure apart from reading files and maps),
/// and the containers they looked at.
fn node_checks(root: &Path, pin_dir: &Path) -> (Vec<Check>, Vec<Container>) {
    let mut checks = vec![host::lockdown(root)];
    checks.extend(host::tracing(root));
    checks.extend(host::cgroups(root));
    checks.push(host::capabilities(root));
    checks.push(host::dns(root));
    let (instances, unreadable) = pins::instances(pin_dir);
    checks.extend(unreadable);
    let (found, uninspectable) = containers::containers(root, &instances);
    checks.extend(containers::container_checks(&found));
    checks.extend(uninspectable);
    checks.extend(pins::pinned(pin_dir));
    (checks, found)
}

/// A failure anywhere means placeholders would go out unchanged: every fail verdict is
/// reserved for something that stops rewriting.
fn can_rewrite(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

/// The readable table: one line per check, its remedy indented below.
fn table(report: &Report) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "kloak doctor: kernel {}", report.kernel);
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .min(40);
    let _ = writeln!(
        out,
        "  {:<7} {:<width$} DETAIL / remedy",
        "VERDICT", "CHECK"
    );
    for c in &report.checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "  {mark:<7} {:<width$} {}", c.name, c.detail);
        if let Some(remedy) = &c.remedy {
            let _ = writeln!(out, "  {:<7} {:<width$} remedy: {remedy}", "", "");
        }
    }
    for c in &report.containers {
        let owner = c
            .enabled_by
            .as_deref()
            .map_or_else(|| "not enabled".to_owned(), |i| format!("enabled by {i}"));
        let pids: Vec<String> = c.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "container {} (cgroup id {}, {owner}) pids {}",
            c.cgroup,
            c.cgroup_id,
            pids.join(" ")
        );
        for r in &c.runtimes {
            let status = match (r.hooked, &r.reason) {
                (true, _) => "hooked".to_owned(),
                (false, Some(reason)) => format!("not hooked: {reason}"),
                (false, None) => "not hooked".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {} [{}] {} (dev {}:{} ino {}) {status}",
                r.runtime,
                r.programs.join(","),
                r.file,
                libc::major(r.dev),
                libc::minor(r.dev),
                r.ino
            );
        }
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if report.can_rewrite {
            "this node can rewrite placeholders"
        } else {
            "this node cannot rewrite placeholders (they go out unchanged)"
        }
    );
    out
}

/// Writes the whole output at once; a reader that stopped early (`| grep -q`) is not an
/// error, while `println!` would panic on the broken pipe.
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;

    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

pub fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let features = probes::probe(!args.no_mount);
    // An error means the probe itself was refused (no CAP_BPF): the capabilities line says why.
    let ringbuf = MapType::RingBuf.is_supported().unwrap_or(false);
    let mut checks = checks(&features, ringbuf);
    let (node, containers) = node_checks(&args.root, &args.pin_dir);
    checks.extend(node);
    let report = Report {
        kernel: features.kernel.clone(),
        can_rewrite: can_rewrite(&checks),
        features,
        checks,
        containers,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    emit(&text)?;
    Ok(if report.can_rewrite { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn features() -> KernelFeatures {
        KernelFeatures::healthy_example()
    }

    #[test]
    fn healthy_node_has_no_failures() {
        let checks = checks(&features(), true);
        assert!(checks.iter().all(|c| c.verdict == Verdict::Ok));
        assert!(checks.iter().all(|c| c.remedy.is_none()));
    }

    fn strategy<'a>(checks: &'a [Check], prefix: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name.starts_with(prefix))
            .expect("check present")
    }

    #[test]
    fn lockdown_leaves_the_ciphertext_strategy() {
        let mut f = features();
        f.write_user = false;
        f.lockdown = Some("integrity".into());
        let checks = checks(&f, true);
        let write = strategy(&checks, "in-place");
        assert_eq!(write.verdict, Verdict::Warn);
        assert!(write.detail.contains("lockdown=integrity"));
        assert!(write
            .remedy
            .as_deref()
            .is_some_and(|r| r.contains("ciphertext strategy")));
        assert_eq!(strategy(&checks, "ciphertext").verdict, Verdict::Ok);
        assert!(can_rewrite(&checks));
    }

    #[test]
    fn lockdown_without_ciphertext_fails_with_a_remedy() {
        let mut f = features();
        f.write_user = false;
        f.ciphertext = false;
        f.lockdown = Some("integrity".into());
        let neither = checks(&f, true);
        assert_eq!(strategy(&neither, "in-place").verdict, Verdict::Fail);
        assert_eq!(strategy(&neither, "ciphertext").verdict, Verdict::Fail);
        assert!(!can_rewrite(&neither));
        f.write_user = true;
        let in_place_only = checks(&f, true);
        assert_eq!(
            strategy(&in_place_only, "ciphertext").verdict,
            Verdict::Warn
        );
        assert!(can_rewrite(&in_place_only));
    }

    #[test]
    fn every_missing_feature_is_a_failure() {
        let mut f = features();
        f.btf = false;
        f.bpf_loop = false;
        f.tracefs = false;
        let failed: Vec<Check> = checks(&f, false)
            .into_iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect();
        assert_eq!(failed.len(), 4);
        assert!(failed.iter().all(|c| c.remedy.is_some()));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_check("6.18.0-1-amd64").verdict, Verdict::Ok);
        assert_eq!(kernel_check("5.17.0").verdict, Verdict::Ok);
        assert_eq!(kernel_check("5.15.0-91-generic").verdict, Verdict::Warn);
        assert_eq!(kernel_check("").verdict, Verdict::Warn);
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("relative path has a parent")).expect("mkdir");
        fs::write(path, text).expect("write fixture");
    }

    /// A Kubernetes node as kloak wants it, built under `root`.
    fn healthy_root(root: &Path) {
        write(
            root,
            "sys/kernel/security/lockdown",
            "[none] integrity confidentiality\n",
        );
        write(root, "sys/kernel/tracing/uprobe_events", "");
        fs::create_dir_all(root.join("sys/kernel/tracing/events")).expect("mkdir");
        write(
            root,
            "sys/fs/cgroup/cgroup.controllers",
            "cpu memory pids\n",
        );
        fs::create_dir_all(root.join("sys/fs/cgroup/kubepods.slice")).expect("mkdir");
        write(root, "proc/self/status", "CapEff:\t000001ffffffffff\n");
        write(root, "etc/resolv.conf", "nameserver 10.96.0.10\n");
    }

    #[test]
    fn healthy_fixture_root_can_rewrite() {
        let root = tempfile::tempdir().expect("tempdir");
        healthy_root(root.path());
        let (checks, _) = node_checks(root.path(), &root.path().join("no-pins"));
        assert!(
            checks.iter().all(|c| c.verdict == Verdict::Ok),
            "{checks:#?}"
        );
        assert!(can_rewrite(&checks));
    }

    #[test]
    fn lockdown_integrity_fixture_warns() {
        let root = tempfile::tempdir().expect("tempdir");
        healthy_root(root.path());
        write(
            root.path(),
            "sys/kernel/security/lockdown",
            "none [integrity] confidentiality\n",
        );
        let (checks, _) = node_checks(root.path(), &root.path().join("no-pins"));
        let warned: Vec<&str> = checks
            .iter()
            .filter(|c| c.verdict != Verdict::Ok)
            .map(|c| c.name.as_str())
            .collect();
        // Whether anything rewrites is the kernel probes' call (checks()), not the file's.
        assert_eq!(warned, ["lockdown"]);
        assert!(can_rewrite(&checks));
    }

    #[test]
    fn warnings_alone_still_rewrite() {
        let root = tempfile::tempdir().expect("tempdir");
        healthy_root(root.path());
        write(root.path(), "etc/resolv.conf", "");
        let (checks, _) = node_checks(root.path(), &root.path().join("no-pins"));
        assert!(checks.iter().any(|c| c.verdict == Verdict::Warn));
        assert!(can_rewrite(&checks));
    }

    #[test]
    fn json_keeps_write_user() {
        let report = Report {
            kernel: "6.1.0".into(),
            can_rewrite: true,
            features: features(),
            checks: checks(&features(), true),
            containers: Vec::new(),
        };
        let json = serde_json::to_string_pretty(&report).expect("serializable");
        assert!(json.contains("\"write_user\": true"));
        assert!(json.contains("\"verdict\": \"ok\""));
    }

    #[test]
    fn table_shows_remedies_and_the_verdict() {
        let mut f = features();
        f.write_user = false;
        f.ciphertext = false;
        f.lockdown = Some("integrity".into());
        let checks = checks(&f, true);
        let report = Report {
            kernel: f.kernel.clone(),
            can_rewrite: can_rewrite(&checks),
            features: f,
            checks,
            containers: Vec::new(),
        };
        let text = table(&report);
        // scripts/demo.sh greps the lockdown mode out of the table.
        assert!(text.contains("lockdown=integrity"));
        assert!(text.contains("remedy: kernel lockdown (Secure Boot) forbids it"));
        assert!(text.ends_with("this node cannot rewrite placeholders (they go out unchanged)\n"));
    }
}
