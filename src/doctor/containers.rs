//! The processes kloak protects (cgroups enabled by a running instance) and the Kubernetes
//! containers on this node: which TLS runtimes each runs, and whether each is hooked.
//!
//! Enabled cgroups and hooked files come from each instance's pinned maps (read by the
//! caller); processes and files are read through `--root`, so every verdict is tested
//! against fixture trees. Kubernetes containers no instance enables are listed too (a
//! superset of what the controller would hook: the doctor has no API access), with
//! whether each runtime could be hooked.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use super::pins::InstanceState;
use super::Check;
use crate::cgroup::{self, Hierarchy};
use crate::dataplane::maps::FileState;
use crate::dataplane::targets::{
    self, openssl_version, runtimes_in, FileId, FileRole, Runtime, RuntimeKind, SslFlavour,
};

/// A cgroup with live processes: enabled by a kloak instance, or a Kubernetes container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The cgroup v2 path, as in `/proc/<pid>/cgroup`.
    pub cgroup: String,
    /// The directory's inode, which the BPF programs filter on; 0 when unknown (cgroup v1).
    pub cgroup_id: u64,
    /// The kloak instance protecting it; `None` for a container no instance enables.
    pub enabled_by: Option<String>,
    pub pids: Vec<u32>,
    pub runtimes: Vec<RuntimeStatus>,
}

/// One TLS runtime in one file, as the processes of one container use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeStatus {
    /// `shared-libssl`, `static-openssl`, `go`, `bun`, `rustls`.
    pub kind: &'static str,
    /// For people: `OpenSSL 3.0.19, shared libssl, via Python`.
    pub runtime: String,
    pub version: Option<String>,
    /// Go only: built without a symbol table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripped: Option<bool>,
    /// The executables (base names) of the processes using it.
    pub programs: Vec<String>,
    /// The file as those processes see it.
    pub file: String,
    pub dev: u64,
    pub ino: u64,
    pub pids: Vec<u32>,
    /// Uprobes attached by the instance enabling the container.
    pub hooked: bool,
    /// Why it is not hooked; in a container no instance enables, why it could not be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// A process to report on.
struct Member {
    pid: u32,
    cgroup: String,
    cgroup_id: u64,
    /// Index into the instances.
    enabled_by: Option<usize>,
}

/// The cgroup v2 path in the text of `/proc/<pid>/cgroup` (the `0::` line).
fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Processes under `<root>/proc` in an enabled cgroup or a kubepods one, in pid order.
fn members(root: &Path, instances: &[InstanceState]) -> Vec<Member> {
    let v2_root = match cgroup::detect_hierarchy(&root.join("sys/fs/cgroup")) {
        Ok(Hierarchy::V2 { root }) => Some(root),
        _ => None,
    };
    let proc_root = root.join("proc");
    let Ok(entries) = fs::read_dir(&proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| {
            // Processes exit while we look: a vanished one has nothing left to report.
            let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
            let path = v2_path(&text);
            let cgroup_id = match (&v2_root, path) {
                (Some(v2_root), Some(path)) => {
                    fs::metadata(v2_root.join(path.trim_start_matches('/')))
                        .map(|meta| meta.ino())
                        .unwrap_or(0)
                }
                _ => 0,
            };
            let enabled_by = (cgroup_id != 0)
                .then(|| {
                    instances
                        .iter()
                        .position(|i| i.cgroups.contains(&cgroup_id))
                })
                .flatten();
            let kubepods = text.lines().find(|line| line.contains("kubepods"));
            if enabled_by.is_none() && kubepods.is_none() {
                return None;
            }
            let cgroup = path
                .or_else(|| kubepods.and_then(|line| line.splitn(3, ':').nth(2)))
                .unwrap_or_default()
                .to_owned();
            Some(Member {
                pid,
                cgroup,
                cgroup_id,
                enabled_by,
            })
        })
        .collect()
}

/// Runtimes of each file, inspected once however many processes map it.
#[derive(Default)]
struct Inspector {
    runtimes: BTreeMap<FileId, Result<Vec<Runtime>, String>>,
    versions: BTreeMap<FileId, Option<String>>,
}

impl Inspector {
    fn runtimes(
        &mut self,
        path: &Path,
        id: FileId,
        role: FileRole,
    ) -> &Result<Vec<Runtime>, String> {
        self.runtimes.entry(id).or_insert_with(|| {
            let data =
                fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            runtimes_in(path, &data, role).map_err(|err| err.to_string())
        })
    }

    /// The version text of a libcrypto (where a shared OpenSSL keeps it).
    fn openssl_version(&mut self, path: &Path, id: FileId) -> Option<String> {
        self.versions
            .entry(id)
            .or_insert_with(|| openssl_version(&fs::read(path).ok()?))
            .clone()
    }
}

fn flavour_name(flavour: Option<SslFlavour>) -> &'static str {
    match flavour {
        Some(SslFlavour::OpenSsl3 | SslFlavour::OpenSsl11) => "OpenSSL",
        Some(SslFlavour::BoringSsl) => "BoringSSL",
        Some(SslFlavour::Unknown) | None => "OpenSSL-compatible",
    }
}

/// What people call the program behind an executable's base name.
fn program_label(program: &str) -> &str {
    const KNOWN: &[(&str, &str)] = &[
        ("python", "Python"),
        ("ruby", "Ruby"),
        ("node", "Node.js"),
        ("curl", "curl"),
    ];
    KNOWN
        .iter()
        .find(|(prefix, _)| program.starts_with(prefix))
        .map_or(program, |(_, label)| label)
}

fn describe(runtime: &Runtime, program: &str) -> String {
    let version = runtime
        .version
        .as_deref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    let flavour = flavour_name(runtime.flavour);
    match runtime.kind {
        RuntimeKind::SharedLibssl => format!(
            "{flavour}{version}, shared libssl, via {}",
            program_label(program)
        ),
        RuntimeKind::StaticOpenSsl => {
            format!("{flavour}{version}, linked into {}", program_label(program))
        }
        RuntimeKind::Go if runtime.stripped => format!("Go{version} crypto/tls, stripped"),
        RuntimeKind::Go => format!("Go{version} crypto/tls"),
        RuntimeKind::Bun => format!("Bun{version} (BoringSSL linked in, located without symbols)"),
        RuntimeKind::Rustls => format!("rustls{version}"),
    }
}

/// What to do about a runtime kloak cannot hook.
fn unhookable_remedy(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Rustls => {
            "its placeholders go out unchanged: build the program against OpenSSL (for example \
             reqwest's native-tls feature on Linux) to have it protected"
        }
        RuntimeKind::Bun => {
            "its placeholders go out unchanged: use a Bun release kloak is tested with (README, \
             scripts/fetch-bun.sh) and report this one, or run the program with Node.js"
        }
        _ => {
            "its placeholders go out unchanged: kloak hooks x86-64 Go 1.18+ executables whose \
             crypto/tls runs over net.TCPConn"
        }
    }
}

/// Whether a runtime is hooked (pure): `instance` is the one enabling the container.
fn hook_status(
    runtime: &Runtime,
    instance: Option<&InstanceState>,
    id: FileId,
) -> (bool, Option<String>, Option<String>) {
    if let Some(reason) = &runtime.unhookable {
        let reason = match instance {
            Some(_) => reason.clone(),
            None => format!("could not be hooked: {reason}"),
        };
        return (
            false,
            Some(reason),
            Some(unhookable_remedy(runtime.kind).to_owned()),
        );
    }
    let Some(instance) = instance else {
        return (
            false,
            Some("container not enabled by a running kloak (hookable)".to_owned()),
            None,
        );
    };
    match instance.file(id) {
        Some(FileState::Hooked) => (true, None, None),
        Some(FileState::Inspected) => (
            false,
            Some(format!(
                "{} inspected this file but attaching failed",
                instance.name
            )),
            Some(format!("{}'s log names the attach error", instance.name)),
        ),
        None => (
            false,
            Some(format!(
                "{} has not inspected this file (mapped after kloak scanned the process, for \
                 example a libssl loaded with dlopen from outside the system library directories)",
                instance.name
            )),
            Some(
                "restart the process while kloak runs; report the library path if it persists"
                    .to_owned(),
            ),
        ),
    }
}

/// The path a process sees for a host path `<proc>/<pid>/root/<path>`.
fn seen_by_process(proc_root: &Path, pid: u32, path: &Path) -> String {
    let root = proc_root.join(pid.to_string()).join("root");
    match path.strip_prefix(&root) {
        Ok(inner) => format!("/{}", inner.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The base name of the executable of `pid`, as the kernel names it.
fn program_name(proc_root: &Path, pid: u32) -> String {
    fs::read_link(proc_root.join(pid.to_string()).join("exe"))
        .ok()
        .and_then(|target| {
            let name = target.file_name()?.to_string_lossy().into_owned();
            Some(name.trim_end_matches(" (deleted)").to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// Every reported container with its runtimes, and a warning per file that could not be
/// inspected.
pub fn containers(root: &Path, instances: &[InstanceState]) -> (Vec<Container>, Vec<Check>) {
    let proc_root = root.join("proc");
    let mut inspector = Inspector::default();
    let mut problems = Vec::new();
    let mut groups: BTreeMap<(Option<usize>, String, u64), Container> = BTreeMap::new();
    for member in members(root, instances) {
        let Ok(files) = targets::process_files(&proc_root, member.pid) else {
            continue;
        };
        let instance = member.enabled_by.map(|i| &instances[i]);
        let container = groups
            .entry((member.enabled_by, member.cgroup.clone(), member.cgroup_id))
            .or_insert_with(|| Container {
                cgroup: member.cgroup.clone(),
                cgroup_id: member.cgroup_id,
                enabled_by: instance.map(|i| i.name.clone()),
                pids: Vec::new(),
                runtimes: Vec::new(),
            });
        container.pids.push(member.pid);
        let program = program_name(&proc_root, member.pid);
        let crypto_version = files.libcrypto.iter().find_map(|path| {
            let id = targets::file_id(path).ok()?;
            inspector.openssl_version(path, id)
        });
        let roles = files
            .exe
            .iter()
            .map(|path| (path, FileRole::Executable))
            .chain(files.libssl.iter().map(|path| (path, FileRole::Library)));
        for (path, role) in roles {
            let Ok(id) = targets::file_id(path) else {
                continue;
            };
            let found = match inspector.runtimes(path, id, role) {
                Ok(found) => found.clone(),
                Err(err) => {
                    problems.push(Check::warn(
                        format!("TLS runtimes of {program}[{}]", member.pid),
                        format!("cannot inspect: {err}"),
                        "run kloak doctor as root with the host's /proc; if it persists the file \
                         is malformed or laid out in a way kloak does not know: report it",
                    ));
                    continue;
                }
            };
            for mut runtime in found {
                if runtime.kind == RuntimeKind::SharedLibssl && runtime.version.is_none() {
                    runtime.version.clone_from(&crypto_version);
                }
                add_runtime(
                    container,
                    &runtime,
                    id,
                    &program,
                    member.pid,
                    || seen_by_process(&proc_root, member.pid, path),
                    instance,
                );
            }
        }
    }
    (groups.into_values().collect(), problems)
}

fn add_runtime(
    container: &mut Container,
    runtime: &Runtime,
    id: FileId,
    program: &str,
    pid: u32,
    file: impl FnOnce() -> String,
    instance: Option<&InstanceState>,
) {
    let kind = runtime.kind.as_str();
    if let Some(known) = container
        .runtimes
        .iter_mut()
        .find(|r| r.kind == kind && (r.dev, r.ino) == (id.dev, id.ino))
    {
        if !known.pids.contains(&pid) {
            known.pids.push(pid);
        }
        if !known.programs.iter().any(|p| p == program) {
            known.programs.push(program.to_owned());
        }
        return;
    }
    let (hooked, reason, remedy) = hook_status(runtime, instance, id);
    container.runtimes.push(RuntimeStatus {
        kind,
        runtime: describe(runtime, program),
        version: runtime.version.clone(),
        stripped: (runtime.kind == RuntimeKind::Go).then_some(runtime.stripped),
        programs: vec![program.to_owned()],
        file: file(),
        dev: id.dev,
        ino: id.ino,
        pids: vec![pid],
        hooked,
        reason,
        remedy,
    });
}

/// One verdict line per container (pure): a protected runtime that is not hooked sends its
/// placeholders unchanged, which is worth a warning, not a failure of the node.
pub fn container_check(container: &Container) -> Check {
    let name = format!("container {}", container.cgroup);
    let processes = match container.pids.len() {
        1 => "1 process".to_owned(),
        n => format!("{n} processes"),
    };
    let owner = container
        .enabled_by
        .as_deref()
        .map_or_else(|| "not enabled".to_owned(), |i| format!("enabled by {i}"));
    let summary = |r: &RuntimeStatus| format!("{} in {}", r.runtime, r.programs.join(","));
    let problems: Vec<&RuntimeStatus> = container
        .runtimes
        .iter()
        .filter(|r| !r.hooked && (container.enabled_by.is_some() || r.remedy.is_some()))
        .collect();
    if container.runtimes.is_empty() {
        return Check::ok(name, format!("{owner}, {processes}, no TLS runtime"));
    }
    if problems.is_empty() {
        let state = if container.enabled_by.is_some() {
            "hooked"
        } else {
            "hookable"
        };
        let all: Vec<String> = container.runtimes.iter().map(summary).collect();
        return Check::ok(
            name,
            format!("{owner}, {processes}, {state}: {}", all.join("; ")),
        );
    }
    let listed: Vec<String> = problems
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                summary(r),
                r.reason.as_deref().unwrap_or("not hooked")
            )
        })
        .collect();
    let mut remedies: Vec<&str> = problems
        .iter()
        .filter_map(|r| r.remedy.as_deref())
        .collect();
    remedies.dedup();
    Check::warn(
        name,
        format!(
            "{owner}, {processes}, {} of {} runtimes not hooked: {}",
            problems.len(),
            container.runtimes.len(),
            listed.join("; ")
        ),
        remedies.join("; "),
    )
}

/// The containers' lines for the checks table.
pub fn container_checks(containers: &[Container]) -> Vec<Check> {
    if containers.is_empty() {
        return vec![Check::ok(
            "containers",
            "no enabled cgroups and no Kubernetes containers with live processes",
        )];
    }
    containers.iter().map(container_check).collect()
}

#[cfg(test)]
mod tests {
    use super::super::Verdict;
    use super::*;
    use crate::dataplane::maps::file_key;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    fn files_of(container: &Container) -> Vec<PathBuf> {
        container
            .runtimes
            .iter()
            .map(|r| PathBuf::from(&r.file))
            .collect()
    }

    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    const LIBCRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";

    /// A cgroup v2 tree under `root` with one directory per path; returns its id.
    fn cgroup_dir(root: &Path, path: &str) -> u64 {
        let cg = root.join("sys/fs/cgroup");
        fs::create_dir_all(cg.join(path.trim_start_matches('/'))).expect("mkdir");
        fs::write(cg.join("cgroup.controllers"), "cpu memory\n").expect("controllers");
        fs::metadata(cg.join(path.trim_start_matches('/')))
            .expect("stat")
            .ino()
    }

    /// A process whose root is the host's, so its mapped paths name real files.
    fn process(root: &Path, pid: u32, cgroup: &str, exe: &str, libs: &[&str]) {
        let dir = root.join("proc").join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).expect("write cgroup");
        let maps: String = libs
            .iter()
            .enumerate()
            .map(|(i, lib)| {
                format!(
                    "7f{i:02x}00000000-7f{i:02x}00100000 r-xp 00000000 fd:01 {} {lib}\n",
                    i + 1
                )
            })
            .collect();
        fs::write(dir.join("maps"), maps).expect("write maps");
        symlink(exe, dir.join("exe")).expect("exe link");
        symlink("/", dir.join("root")).expect("root link");
    }

    fn instance(name: &str, cgroups: &[u64], files: &[(&str, FileState)]) -> InstanceState {
        InstanceState {
            name: name.into(),
            cgroups: cgroups.iter().copied().collect(),
            files: files
                .iter()
                .map(|(path, state)| {
                    (
                        file_key(targets::file_id(Path::new(path)).expect("stat")),
                        *state,
                    )
                })
                .collect(),
        }
    }

    fn present(paths: &[&str]) -> bool {
        let missing: Vec<&&str> = paths.iter().filter(|p| !Path::new(p).exists()).collect();
        if !missing.is_empty() {
            eprintln!("skipping: {missing:?} not on this machine");
        }
        missing.is_empty()
    }

    #[test]
    fn nothing_to_report() {
        let root = tempfile::tempdir().expect("tempdir");
        cgroup_dir(root.path(), "/init.scope");
        process(root.path(), 1, "/init.scope", "/bin/sh", &[]);
        let (found, problems) = containers(root.path(), &[]);
        assert!(found.is_empty() && problems.is_empty());
        let checks = container_checks(&found);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].verdict, Verdict::Ok);
    }

    #[test]
    fn enabled_python_via_shared_libssl_is_hooked_with_its_version() {
        let python = "/usr/bin/python3.11";
        if !present(&[python, LIBSSL, LIBCRYPTO]) {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let id = cgroup_dir(root.path(), "/kloak-run-7");
        cgroup_dir(root.path(), "/user.slice");
        process(
            root.path(),
            40,
            "/kloak-run-7",
            python,
            &[LIBSSL, LIBCRYPTO],
        );
        process(
            root.path(),
            41,
            "/kloak-run-7",
            python,
            &[LIBSSL, LIBCRYPTO],
        );
        // Same libssl, outside any enabled cgroup and not Kubernetes: not listed.
        process(root.path(), 50, "/user.slice", python, &[LIBSSL]);
        let run = instance(
            "run-7",
            &[id],
            &[(LIBSSL, FileState::Hooked), (python, FileState::Inspected)],
        );
        let (found, problems) = containers(root.path(), &[run]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found.len(), 1, "{found:#?}");
        let c = &found[0];
        assert_eq!((c.cgroup.as_str(), c.cgroup_id), ("/kloak-run-7", id));
        assert_eq!(c.enabled_by.as_deref(), Some("run-7"));
        assert_eq!(c.pids, [40, 41]);
        assert_eq!(c.runtimes.len(), 1, "python3.11 itself has no TLS: {c:#?}");
        let r = &c.runtimes[0];
        assert_eq!(r.kind, "shared-libssl");
        assert!(r.hooked);
        assert_eq!(r.reason, None);
        assert_eq!(r.pids, [40, 41]);
        assert_eq!(r.programs, ["python3.11"]);
        assert_eq!(files_of(c), [PathBuf::from(LIBSSL)]);
        assert!(
            r.runtime.starts_with("OpenSSL 3.") && r.runtime.ends_with("shared libssl, via Python"),
            "{}",
            r.runtime
        );
        assert_eq!(container_check(c).verdict, Verdict::Ok);
    }

    #[test]
    fn enabled_but_not_inspected_or_failed_says_why() {
        if !present(&["/usr/bin/curl", LIBSSL]) {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let id = cgroup_dir(root.path(), "/kloak-run-8");
        process(root.path(), 60, "/kloak-run-8", "/usr/bin/curl", &[LIBSSL]);
        for (files, words) in [
            (vec![], "has not inspected this file"),
            (vec![(LIBSSL, FileState::Inspected)], "attaching failed"),
        ] {
            let run = instance("run-8", &[id], &files);
            let (found, _) = containers(root.path(), &[run]);
            let r = &found[0].runtimes[0];
            assert!(!r.hooked);
            assert!(
                r.reason.as_deref().is_some_and(|t| t.contains(words)),
                "{r:?}"
            );
            let check = container_check(&found[0]);
            assert_eq!(check.verdict, Verdict::Warn);
            assert!(
                check.detail.contains("1 of 1 runtimes not hooked"),
                "{}",
                check.detail
            );
            assert!(check.remedy.is_some());
        }
    }

    #[test]
    fn node_and_rustls_in_one_container() {
        let node = "/usr/bin/node";
        // A Rust program with rustls compiled in: this very test binary.
        let rust = std::env::current_exe().expect("test binary");
        let rust = rust.to_str().expect("utf-8 path");
        if !present(&[node]) {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let id = cgroup_dir(root.path(), "/kubepods.slice/pod1/cri-containerd-1.scope");
        process(
            root.path(),
            70,
            "/kubepods.slice/pod1/cri-containerd-1.scope",
            node,
            &[],
        );
        process(
            root.path(),
            71,
            "/kubepods.slice/pod1/cri-containerd-1.scope",
            rust,
            &[],
        );
        let agent = instance(
            "controller",
            &[id],
            &[(node, FileState::Hooked), (rust, FileState::Inspected)],
        );
        let (found, problems) = containers(root.path(), &[agent]);
        assert!(problems.is_empty(), "{problems:?}");
        let c = &found[0];
        let kinds: Vec<(&str, bool)> = c.runtimes.iter().map(|r| (r.kind, r.hooked)).collect();
        assert_eq!(
            kinds,
            [("static-openssl", true), ("rustls", false)],
            "{c:#?}"
        );
        let rustls = &c.runtimes[1];
        assert_eq!(
            rustls.reason.as_deref(),
            Some(targets::RUSTLS_REASON),
            "the reason is given verbatim"
        );
        assert!(c.runtimes[0].runtime.contains("linked into Node.js"));
        let check = container_check(c);
        assert_eq!(check.verdict, Verdict::Warn);
        assert!(
            check
                .detail
                .starts_with("enabled by controller, 2 processes, 1 of 2"),
            "{}",
            check.detail
        );
        assert!(check
            .remedy
            .as_deref()
            .is_some_and(|r| r.contains("OpenSSL")));
    }

    #[test]
    fn kubernetes_containers_not_enabled_say_hookable_or_why_not() {
        let Some(go) = targets::go_test_binaries() else {
            eprintln!("skipping: no Go toolchain");
            return;
        };
        let root = tempfile::tempdir().expect("tempdir");
        cgroup_dir(root.path(), "/kubepods/pod1/abc");
        let build = |stripped: bool| {
            go.iter()
                .find(|b| b.stripped == stripped && !b.pie)
                .and_then(|b| b.path.to_str())
                .expect("a default-mode Go build, utf-8 path")
        };
        let (plain, stripped) = (build(false), build(true));
        process(root.path(), 80, "/kubepods/pod1/abc", plain, &[]);
        process(root.path(), 81, "/kubepods/pod1/abc", stripped, &[]);
        let (found, _) = containers(root.path(), &[]);
        assert_eq!(found.len(), 1);
        let c = &found[0];
        assert_eq!(c.enabled_by, None);
        let go_lines: Vec<(Option<bool>, bool)> = c
            .runtimes
            .iter()
            .map(|r| (r.stripped, r.remedy.is_some()))
            .collect();
        // Stripped or not, a Go build is hookable: its function table gives the hooks.
        assert_eq!(
            go_lines,
            [(Some(false), false), (Some(true), false)],
            "{c:#?}"
        );
        assert!(c.runtimes[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("hookable")));
        assert!(c.runtimes[1]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("hookable")));
        let check = container_check(c);
        assert_eq!(check.verdict, Verdict::Ok);
        assert!(
            check
                .detail
                .starts_with("not enabled, 2 processes, hookable: "),
            "{}",
            check.detail
        );
    }

    #[test]
    fn json_names_kind_file_and_status() {
        let container = Container {
            cgroup: "/kloak-run-9".into(),
            cgroup_id: 9,
            enabled_by: Some("run-9".into()),
            pids: vec![1],
            runtimes: vec![RuntimeStatus {
                kind: "go",
                runtime: "Go go1.19.8 crypto/tls".into(),
                version: Some("go1.19.8".into()),
                stripped: Some(false),
                programs: vec!["goclient".into()],
                file: "/app/goclient".into(),
                dev: 1,
                ino: 2,
                pids: vec![1],
                hooked: true,
                reason: None,
                remedy: None,
            }],
        };
        let json = serde_json::to_value(&container).expect("serializable");
        assert_eq!(json["runtimes"][0]["kind"], "go");
        assert_eq!(json["runtimes"][0]["hooked"], true);
        assert_eq!(json["runtimes"][0]["stripped"], false);
        assert!(json["runtimes"][0].get("reason").is_none());
        assert_eq!(json["enabled_by"], "run-9");
    }
}
