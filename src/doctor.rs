//! `kloak doctor`: what this node can do, line by line, with a remedy for each failure.

use serde::Serialize;

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
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub can_rewrite: bool,
    pub features: KernelFeatures,
    pub checks: Vec<Check>,
}

fn check(name: &'static str, ok: bool, detail: String, remedy: &'static str) -> Check {
    Check {
        name,
        verdict: if ok { Verdict::Ok } else { Verdict::Fail },
        detail,
        remedy: (!ok).then_some(remedy),
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// The verdicts for a set of probed features (pure).
pub fn checks(features: &KernelFeatures) -> Vec<Check> {
    let lockdown = features
        .lockdown
        .clone()
        .unwrap_or_else(|| "unknown".into());
    let mut checks = vec![
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
        check(
            "cgroup v2",
            features.cgroup2.is_some(),
            features
                .cgroup2
                .as_ref()
                .map_or_else(|| "not mounted".into(), |p| p.display().to_string()),
            "mount the unified hierarchy: mount -t cgroup2 none /sys/fs/cgroup",
        ),
        check(
            "user-memory writes (in-place rewrite)",
            features.write_user,
            format!(
                "bpf_probe_write_user {} (lockdown={lockdown})",
                if features.write_user { "allowed" } else { "refused" }
            ),
            "kernel lockdown (Secure Boot) forbids it: boot without lockdown (lockdown=none), or wait for \
             kloak's ciphertext mode; until then placeholders go out unchanged (observe mode)",
        ),
    ];
    checks.push(Check {
        name: "kprobes",
        verdict: if features.kprobes {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        detail: format!("{} (kloak does not need them)", yes_no(features.kprobes)),
        remedy: None,
    });
    checks
}

pub fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let features = probes::probe(!args.no_mount);
    let checks = checks(&features);
    let can_rewrite = checks.iter().all(|c| c.verdict != Verdict::Fail);
    let report = Report {
        kernel: features.kernel.clone(),
        can_rewrite,
        features,
        checks,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kloak doctor: kernel {}", report.kernel);
        for c in &report.checks {
            let mark = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("  [{mark}] {:<40} {}", c.name, c.detail);
            if let Some(remedy) = c.remedy {
                println!("         remedy: {remedy}");
            }
        }
        println!(
            "verdict: {}",
            if can_rewrite {
                "this node can rewrite placeholders"
            } else {
                "this node cannot rewrite placeholders (they go out unchanged)"
            }
        );
    }
    Ok(if can_rewrite { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> KernelFeatures {
        KernelFeatures::healthy_example()
    }

    #[test]
    fn healthy_node_has_no_failures() {
        let checks = checks(&features());
        assert!(checks.iter().all(|c| c.verdict != Verdict::Fail));
        assert!(checks.iter().all(|c| c.remedy.is_none()));
    }

    #[test]
    fn lockdown_fails_with_a_remedy() {
        let mut f = features();
        f.write_user = false;
        f.lockdown = Some("integrity".into());
        let checks = checks(&f);
        let write = checks
            .iter()
            .find(|c| c.name.starts_with("user-memory"))
            .expect("check present");
        assert_eq!(write.verdict, Verdict::Fail);
        assert!(write.detail.contains("lockdown=integrity"));
        assert!(write.remedy.is_some_and(|r| r.contains("lockdown")));
    }

    #[test]
    fn every_missing_feature_is_a_failure() {
        let mut f = features();
        f.btf = false;
        f.bpf_loop = false;
        f.tracefs = false;
        f.cgroup2 = None;
        let failed = checks(&f)
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        assert_eq!(failed, 4);
    }
}
