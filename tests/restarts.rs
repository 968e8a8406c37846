//! Host BPF tier (root): what a restarted node agent finds pinned is put
//! right: Go binaries keep their `targets` slot (the cookie of their pinned
//! links), probes nobody wants any more are detached, the other rewrite
//! mode's probes go at once, and processes an agent stopped at exec but never
//! resumed are resumed by the next one.
//! Run with `cargo test --test restarts -- --ignored` as root, after
//! `scripts/build-test-clients.sh` (the Go clients).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kloak::dataplane::maps::{diff, DesiredState, Records};
use kloak::dataplane::skel::types::kloak_target;
use kloak::dataplane::targets::{file_id, inspect, system_tls_libraries, FileId, TlsTarget};
use kloak::dataplane::{held, DataPlane, LoaderConfig, ObserveReason, RewriteStrategy};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

struct Pins(PathBuf);

impl Pins {
    fn new(test: &str) -> Self {
        kloak::dataplane::probes::probe(true);
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/kloak/test-{test}-{}",
            std::process::id()
        )))
    }

    fn config(&self, rewrite: bool, hold: bool) -> LoaderConfig {
        LoaderConfig {
            pin_dir: self.0.clone(),
            persist: true,
            rewrite,
            observe_reason: ObserveReason::Requested,
            hold_new_executables: hold,
            strategy: RewriteStrategy::InPlace,
            observe: false,
            tc_handle: 0x6b7f_0000,
        }
    }

    fn links(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.0.join("links"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn file_links(&self, id: FileId) -> Vec<String> {
        let tag = format!("-{}-{}-", id.dev, id.ino);
        self.links()
            .into_iter()
            .filter(|name| name.contains(&tag))
            .collect()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn e2e(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/e2e")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: run scripts/build-test-clients.sh first",
        path.display()
    );
    path
}

fn go_target(path: &Path) -> TlsTarget {
    let target = inspect(path).expect("inspect").expect("a TLS target");
    assert!(
        matches!(target, TlsTarget::Go(_)),
        "{} is Go",
        path.display()
    );
    target
}

fn go_write_vaddr(target: &TlsTarget) -> u64 {
    match target {
        TlsTarget::Go(go) => go.write.vaddr,
        TlsTarget::OpenSsl(_) => unreachable!("checked by go_target"),
    }
}

/// The pinned `targets` map: slot -> (file, Write's address), for slots in use.
fn target_slots(pins: &Pins) -> Vec<(u32, FileId, u64)> {
    let map = MapHandle::from_pinned_path(pins.0.join("maps/targets")).expect("targets pinned");
    (0..64u32)
        .filter_map(|slot| {
            let bytes = map.lookup(&slot.to_ne_bytes(), MapFlags::ANY).ok()??;
            let mut record = kloak_target::default();
            plain::copy_from_bytes(&mut record, &bytes).ok()?;
            (record.func_vaddr != 0).then_some((
                slot,
                FileId {
                    dev: record.file_dev,
                    ino: record.file_ino,
                },
                record.func_vaddr,
            ))
        })
        .collect()
}

/*
 * Slots used to be counted from 0 at every start while the map and the links
 * (with the old slot as cookie) stayed pinned: the next Go binary hooked took
 * slot 0 and overwrote the first binary's record.
 */
#[test]
#[ignore = "needs root and a BPF-capable kernel"]
fn go_binaries_keep_their_slot_across_restarts() {
    let pins = Pins::new("slots");
    let rt = runtime();
    let (first_path, second_path) = (e2e("goclient"), e2e("runtime-goclient"));
    let (first, second) = (go_target(&first_path), go_target(&second_path));
    let (first_id, second_id) = (
        file_id(&first_path).expect("stat"),
        file_id(&second_path).expect("stat"),
    );

    let (agent, _events) = DataPlane::start(pins.config(false, false)).expect("first agent");
    let probes = rt
        .block_on(agent.hook_file(&first_path, first_id, Some(first.clone())))
        .expect("hook the first Go binary");
    assert!(probes > 0);
    agent.shutdown();

    let (agent, _events) = DataPlane::start(pins.config(false, false)).expect("second agent");
    rt.block_on(agent.hook_file(&second_path, second_id, Some(second.clone())))
        .expect("hook the second Go binary");
    assert_eq!(
        target_slots(&pins),
        [
            (0, first_id, go_write_vaddr(&first)),
            (1, second_id, go_write_vaddr(&second)),
        ],
        "the first binary's pinned links still find its own record"
    );
    // Adopting the first binary's links again keeps its slot.
    rt.block_on(agent.hook_file(&first_path, first_id, Some(first)))
        .expect("adopt");
    assert_eq!(target_slots(&pins).len(), 2);
    // Detaching frees the slot; the next binary takes it.
    rt.block_on(agent.detach_file(first_id)).expect("detach");
    assert_eq!(
        target_slots(&pins),
        [(1, second_id, go_write_vaddr(&second))]
    );
    agent.shutdown();
}

/*
 * Links of a file no pod runs any more stayed pinned, attached, forever after
 * a restart. Once the agent has hooked what runs, it prunes the rest, and the
 * files they hooked are forgotten (their next exec is held and hooked again).
 */
#[test]
#[ignore = "needs root and a BPF-capable kernel"]
fn probes_nobody_claims_after_a_restart_are_detached() {
    let pins = Pins::new("prune");
    let rt = runtime();
    let library = system_tls_libraries(Path::new("/"))
        .into_iter()
        .next()
        .expect("a system libssl");
    let go_path = e2e("goclient");
    let (library_id, go_id) = (
        file_id(&library).expect("stat"),
        file_id(&go_path).expect("stat"),
    );
    let library_target = inspect(&library).expect("inspect").expect("libssl");

    let (agent, _events) = DataPlane::start(pins.config(false, false)).expect("first agent");
    rt.block_on(agent.hook_file(&library, library_id, Some(library_target.clone())))
        .expect("hook libssl");
    rt.block_on(agent.hook_file(&go_path, go_id, Some(go_target(&go_path))))
        .expect("hook Go");
    agent.shutdown();
    assert!(!pins.file_links(library_id).is_empty());
    assert!(!pins.file_links(go_id).is_empty());

    // The next agent finds only libssl in use.
    let (agent, _events) = DataPlane::start(pins.config(false, false)).expect("second agent");
    rt.block_on(agent.hook_file(&library, library_id, Some(library_target)))
        .expect("adopt libssl");
    let before = pins.file_links(library_id);
    let pruned = rt.block_on(agent.prune_links()).expect("prune");
    assert!(!pruned.is_empty());
    assert!(
        pruned
            .iter()
            .all(|name| name.contains(&format!("-{}-", go_id.ino))),
        "only the Go binary's probes go: {pruned:?}"
    );
    assert!(pins.file_links(go_id).is_empty(), "{:?}", pins.links());
    assert_eq!(pins.file_links(library_id), before, "what is in use stays");
    assert!(pins.links().iter().any(|n| n.starts_with("tp-")));
    let files = rt
        .block_on(agent.snapshot(&[kloak::dataplane::maps::MapName::Files]))
        .expect("snapshot");
    let go_key = kloak::dataplane::maps::file_key(go_id);
    assert!(
        !files.keys().any(|(_, key)| *key == go_key),
        "the pruned file is forgotten"
    );
    assert!(target_slots(&pins).is_empty(), "its Go slot is freed");
    agent.shutdown();
}

/*
 * An agent started with --observe (or on a kernel without user-memory
 * writes) must not leave the previous agent's rewriting probes attached, and
 * the other way round. Needs a kernel that allows user-memory writes (the VM
 * tier); on lockdown kernels the rewriting programs cannot load at all.
 */
#[test]
#[ignore = "needs root and a kernel that allows bpf_probe_write_user"]
fn switching_to_observe_detaches_rewriting_probes() {
    let features = kloak::dataplane::probes::probe(true);
    assert!(
        features.write_user,
        "this test needs bpf_probe_write_user (run it in the VM tier)"
    );
    let pins = Pins::new("observe");
    let rt = runtime();
    let library = system_tls_libraries(Path::new("/"))
        .into_iter()
        .next()
        .expect("a system libssl");
    let id = file_id(&library).expect("stat");
    let target = inspect(&library).expect("inspect").expect("libssl");
    let rewriting = |names: &[String]| names.iter().filter(|n| n.contains("_rw-")).count();
    let observing = |names: &[String]| names.iter().filter(|n| n.contains("_ro-")).count();

    let (agent, _events) = DataPlane::start(pins.config(true, false)).expect("rewriting agent");
    rt.block_on(agent.hook_file(&library, id, Some(target.clone())))
        .expect("hook");
    agent.shutdown();
    assert!(rewriting(&pins.file_links(id)) > 0);

    let (agent, _events) = DataPlane::start(pins.config(false, false)).expect("observing agent");
    assert_eq!(
        rewriting(&pins.links()),
        0,
        "rewriting probes are gone before the agent hooks anything: {:?}",
        pins.links()
    );
    rt.block_on(agent.hook_file(&library, id, Some(target)))
        .expect("hook");
    assert!(observing(&pins.file_links(id)) > 0);
    agent.shutdown();

    let (agent, _events) = DataPlane::start(pins.config(true, false)).expect("rewriting again");
    assert_eq!(observing(&pins.links()), 0, "{:?}", pins.links());
    agent.shutdown();
}

struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_for_state(pid: u32, wanted: impl Fn(Option<char>) -> bool) -> Option<char> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = process_state(pid);
        if wanted(state) || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/*
 * The agent died between the kernel's SIGSTOP at exec and its SIGCONT: the
 * process stayed stopped forever. The kernel now records every stop in the
 * pinned `held` map, and the next agent resumes what it finds there.
 */
#[test]
#[ignore = "needs root and a BPF-capable kernel"]
fn a_process_held_when_the_agent_died_is_resumed_by_the_next() {
    let pins = Pins::new("held");
    let rt = runtime();
    let root = kloak::dataplane::probes::cgroup2_mount().expect("cgroup v2 mounted");
    let cgroup = TestCgroup(root.join(format!("kloak-test-held-{}", std::process::id())));
    fs::create_dir_all(&cgroup.0).expect("cgroup");
    let cgroup_id = fs::metadata(&cgroup.0).expect("cgroup").ino();
    // A binary no test has marked inspected, so its exec is held.
    let work = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
    let sleeper = work.path().join("sleeper");
    fs::copy("/bin/sleep", &sleeper).expect("copy sleep");

    let (agent, events) = DataPlane::start(pins.config(false, true)).expect("first agent");
    let mut state = DesiredState::default();
    state.cgroups.insert(cgroup_id);
    let records = state.records().expect("records");
    rt.block_on(agent.apply(diff(&Records::new(), &records)))
        .expect("enable the cgroup");
    let procs = cgroup.0.join("cgroup.procs");
    let child = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec {} 600",
                procs.display(),
                sleeper.display()
            ))
            .spawn()
            .expect("spawn"),
    );
    let pid = child.0.id();
    assert_eq!(
        wait_for_state(pid, |s| s == Some('T')),
        Some('T'),
        "the kernel stops a new executable at exec"
    );
    // The agent dies without answering (its events are never read).
    drop(events);
    agent.shutdown();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(process_state(pid), Some('T'), "nobody resumed it");
    // With no agent alive, a new executable is not stopped: nobody would resume it.
    let unseen = work.path().join("sleeper-2");
    fs::copy("/bin/sleep", &unseen).expect("copy sleep");
    let mut unheld = Reaped(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec {} 0",
                procs.display(),
                unseen.display()
            ))
            .spawn()
            .expect("spawn"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = unheld.0.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "an exec while no agent is alive ran to its end (state {:?})",
        process_state(unheld.0.id())
    );

    // Resumed before the next agent loads (loading takes seconds).
    let orphans = held::take_over(&pins.0);
    assert_eq!(orphans, [pid]);
    let state = wait_for_state(pid, |s| s != Some('T'));
    assert_ne!(state, Some('T'), "the next agent resumed the held process");
    let (agent, _events) = DataPlane::start(pins.config(false, true)).expect("next agent");
    let left = rt
        .block_on(agent.snapshot(&[kloak::dataplane::maps::MapName::Held]))
        .expect("snapshot");
    assert!(left.is_empty(), "its record is cleared");
    drop(child);
    rt.block_on(agent.apply(diff(&records, &Records::new())))
        .expect("disable the cgroup");
    agent.shutdown();
}
