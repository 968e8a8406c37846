//! TLS libraries and Go binaries in the containers running on this node, and whether each
//! can be hooked.
//!
//! Without API access the doctor cannot tell which pods are kloak-enabled, so every process
//! in a kubepods cgroup counts: a superset of what the controller would hook.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::Check;
use crate::dataplane::targets::{self, TargetError, TlsTarget};

/// Pids under `<root>/proc` whose cgroup path lies in the kubelet's hierarchy.
fn container_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
                .is_ok_and(|text| text.contains("kubepods"))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// One line per TLS file: None for files that carry no TLS implementation at all.
pub fn target_check(path: &Path, result: Result<Option<TlsTarget>, TargetError>) -> Option<Check> {
    let name = format!("TLS target {}", path.display());
    match result {
        Ok(None) => None,
        Ok(Some(TlsTarget::OpenSsl(target))) => Some(Check::ok(
            name,
            match &target.bun_version {
                Some(version) => {
                    format!("hookable: Bun {version} (BoringSSL, located without symbols)")
                }
                None => format!("hookable: OpenSSL ({:?})", target.flavour),
            },
        )),
        Ok(Some(TlsTarget::Go(target))) => Some(Check::ok(
            name,
            format!(
                "hookable: Go {}",
                target.go_version.as_deref().unwrap_or("(unknown version)")
            ),
        )),
        Err(err @ TargetError::BunUnlocated { .. }) => Some(Check::warn(
            name,
            format!("not hookable: {err}"),
            "use a Bun release kloak is tested with (README, scripts/fetch-bun.sh) and report \
             this one; its placeholders go out unchanged",
        )),
        Err(err) if err.is_unsupported() => Some(Check::warn(
            name,
            format!("not hookable: {err}"),
            "kloak hooks OpenSSL and x86-64 Go 1.18+ executables whose crypto/tls runs over \
             net.TCPConn; this file's placeholders go out unchanged",
        )),
        Err(err) => Some(Check::warn(
            name,
            format!("cannot inspect: {err}"),
            "run kloak doctor as root with the host's /proc; if it persists the file is \
             malformed or laid out in a way kloak does not know: report it",
        )),
    }
}

/// Inspects each TLS file of every container process once.
pub fn tls_targets(root: &Path) -> Vec<Check> {
    let proc_root = root.join("proc");
    let pids = container_pids(&proc_root);
    if pids.is_empty() {
        return vec![Check::ok("TLS targets", "no containers on this node")];
    }
    let mut seen = BTreeSet::new();
    let mut checks = Vec::new();
    for pid in &pids {
        // Processes exit while we look: a vanished one has nothing left to hook.
        let Ok(files) = targets::process_tls_files(&proc_root, *pid) else {
            continue;
        };
        for file in files {
            // Containers share image layers and the controller hooks each file once.
            if let Ok(id) = targets::file_id(&file) {
                if !seen.insert(id) {
                    continue;
                }
            }
            checks.extend(target_check(&file, targets::inspect(&file)));
        }
    }
    if checks.is_empty() {
        checks.push(Check::ok(
            "TLS targets",
            format!(
                "{} container processes, none uses OpenSSL or Go crypto/tls",
                pids.len()
            ),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn process(root: &Path, pid: u32, cgroup: &str, exe: &str, maps: &str) {
        let dir = root.join("proc").join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("cgroup"), cgroup).expect("write cgroup");
        fs::write(dir.join("maps"), maps).expect("write maps");
        symlink(exe, dir.join("exe")).expect("exe link");
        // The host root, so the mapped paths name real files.
        symlink("/", dir.join("root")).expect("root link");
    }

    #[test]
    fn no_containers() {
        let root = tempfile::tempdir().expect("tempdir");
        process(root.path(), 1, "0::/init.scope\n", "/bin/sh", "");
        let checks = tls_targets(root.path());
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].verdict, Verdict::Ok);
        assert_eq!(checks[0].detail, "no containers on this node");
    }

    #[test]
    fn container_without_tls() {
        let root = tempfile::tempdir().expect("tempdir");
        process(
            root.path(),
            7,
            "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-1.scope\n",
            "/bin/sh",
            "",
        );
        let checks = tls_targets(root.path());
        assert_eq!(checks.len(), 1);
        assert!(checks[0].detail.starts_with("1 container processes"));
    }

    #[test]
    fn shared_libssl_is_hookable_and_listed_once() {
        let Some(libssl) = targets::system_tls_libraries(Path::new("/"))
            .into_iter()
            .next()
        else {
            eprintln!("no libssl on this machine: skipped");
            return;
        };
        let root = tempfile::tempdir().expect("tempdir");
        let maps = format!(
            "7f0000000000-7f0000100000 r-xp 00000000 fd:01 42 {}\n",
            libssl.display()
        );
        for pid in [10, 11] {
            process(
                root.path(),
                pid,
                "0::/kubepods/pod1/abc\n",
                "/bin/sh",
                &maps,
            );
        }
        let checks: Vec<Check> = tls_targets(root.path())
            .into_iter()
            .filter(|c| c.detail.contains("OpenSSL"))
            .collect();
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].verdict, Verdict::Ok);
    }

    #[test]
    fn unhookable_go_binary_warns_with_the_reason() {
        let path = PathBuf::from("/app/server");
        let err = TargetError::GoNoTcpConn {
            path: path.clone(),
            go_version: Some("go1.22.1".into()),
            function: "net.(*TCPConn).Close",
        };
        let check = target_check(&path, Err(err)).expect("a line");
        assert_eq!(check.verdict, Verdict::Warn);
        assert!(check.detail.contains("no net.(*TCPConn).Close"));
        assert!(check.remedy.is_some());
        assert!(target_check(&path, Ok(None)).is_none());
    }
}
