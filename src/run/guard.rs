//! What `kloak run` leaves if it is killed (`kill -9`, the OOM killer): the
//! guard, a second `kloak` process started next to it, finishes its work.
//!
//! The guard reads a pipe from `kloak run`. A clean exit writes `done` first;
//! end of file without it means the supervisor died. Its probes went with its
//! file descriptors, but processes it had stopped at exec stay stopped, its
//! `tc` filters and pinned maps stay, and so do its cgroup and placeholder
//! files. The guard resumes the held processes at once, keeps the filters
//! until no record bound to a value is in flight (a half-patched record
//! would break the connection), then removes the filters and pins, and the
//! cgroup and files once the command has exited. From then on the command's
//! placeholders go out unchanged (fail closed).

use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use libbpf_rs::{MapCore, MapFlags, MapHandle, TcHookBuilder, TC_EGRESS, TC_INGRESS};
use tracing::{info, warn};

use crate::cli::RunGuardArgs;
use crate::dataplane::held;
use crate::dataplane::retire::has_live_patch;

/// The line a clean exit writes before closing the pipe.
const DONE: &[u8] = b"done\n";
/// How long held processes are looked for after the supervisor died: its
/// exec probe goes with its last file descriptor, a moment after its death.
const RESUME_WINDOW: Duration = Duration::from_secs(1);
/// How long records in flight may keep the filters: after that a peer that
/// never acknowledges loses its connection rather than keep filters forever.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// `kloak run`'s end of the pipe.
pub struct Guard {
    child: Child,
    pipe: Option<ChildStdin>,
}

/// What the guard must know of one `kloak run`.
pub struct Watched<'a> {
    pub cgroup: &'a Path,
    pub pin_dir: &'a Path,
    pub tc_handle: u32,
    pub secrets_dir: &'a Path,
}

impl Guard {
    /// Starts the guard: this same executable, in its own process group (a
    /// Ctrl-C meant for the command must not reach it).
    pub fn start(watched: &Watched<'_>) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("/proc/self/exe")
            .arg("run-guard")
            .arg("--cgroup")
            .arg(watched.cgroup)
            .arg("--pin-dir")
            .arg(watched.pin_dir)
            .arg("--tc-handle")
            .arg(watched.tc_handle.to_string())
            .arg("--secrets-dir")
            .arg(watched.secrets_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the guard that cleans up if kloak run is killed")?;
        let pipe = child.stdin.take();
        Ok(Self { child, pipe })
    }
}

/// Dropped on every way out that runs destructors (a return, an error, a
/// panic), after or while `kloak run` cleans up itself: nothing is left for
/// the guard. Only a kill skips this.
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = std::io::Write::write_all(&mut pipe, DONE);
        }
        let _ = self.child.wait();
    }
}

/// The guard process: waits for the pipe to end, then recovers if it must.
pub fn run(args: RunGuardArgs) -> anyhow::Result<u8> {
    let mut said = Vec::new();
    // EOF comes when kloak run exits, however it exits.
    let _ = std::io::stdin().read_to_end(&mut said);
    if said == DONE {
        return Ok(0);
    }
    warn!(
        cgroup = %args.cgroup.display(),
        "kloak run died without cleaning up: resuming its command's held processes; \
         from now on its placeholders go out unchanged"
    );
    let maps = args.pin_dir.join("maps");
    let resumed = resume_held(&maps.join("held"));
    info!(resumed, "held processes resumed");
    drain_patches(&maps.join("ct_flows"));
    detach_filters(args.tc_handle);
    remove_pins(&args.pin_dir);
    wait_until_empty(&args.cgroup);
    if let Err(err) = fs::remove_dir_all(&args.secrets_dir) {
        warn!(path = %args.secrets_dir.display(), %err, "cannot remove the placeholder files");
    }
    info!("kloak run's leftovers removed");
    Ok(0)
}

/// Resumes every process the kernel recorded as held, for `RESUME_WINDOW`.
fn resume_held(held_pin: &Path) -> usize {
    let held = match MapHandle::from_pinned_path(held_pin) {
        Ok(map) => map,
        Err(err) => {
            warn!(path = %held_pin.display(), %err, "cannot open the held map");
            return 0;
        }
    };
    let until = Instant::now() + RESUME_WINDOW;
    let mut resumed = 0;
    while Instant::now() < until {
        resumed += held::resume_pinned(&held).len();
        std::thread::sleep(POLL);
    }
    resumed
}

/// Until no connection has a live patch (or `DRAIN_LIMIT`).
fn drain_patches(flows_pin: &Path) {
    let Ok(flows) = MapHandle::from_pinned_path(flows_pin) else {
        return;
    };
    let until = Instant::now() + DRAIN_LIMIT;
    while Instant::now() < until {
        let live = flows.keys().any(|key| {
            flows
                .lookup(&key, MapFlags::ANY)
                .ok()
                .flatten()
                .is_some_and(|flow| has_live_patch(&flow))
        });
        if !live {
            return;
        }
        std::thread::sleep(POLL);
    }
    warn!("records still unacknowledged after a minute: their filters go anyway");
}

/// Removes the instance's filters (handle `tc_handle`) from every interface.
fn detach_filters(tc_handle: u32) {
    let Ok(interfaces) = fs::read_dir("/sys/class/net") else {
        return;
    };
    // Detaching names a filter by handle and priority; the fd is never used.
    let stdin = std::io::stdin();
    for entry in interfaces.flatten() {
        let Some(ifindex) = fs::read_to_string(entry.path().join("ifindex"))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            continue;
        };
        for point in [TC_INGRESS, TC_EGRESS] {
            let mut hook = TcHookBuilder::new(stdin.as_fd())
                .ifindex(ifindex)
                .handle(tc_handle)
                .priority(crate::dataplane::wire::TC_PRIORITY)
                .hook(point);
            // Most interfaces never had one: not found is the usual answer.
            let _ = hook.detach();
        }
    }
}

fn remove_pins(pin_dir: &Path) {
    if let Err(err) = fs::remove_dir_all(pin_dir) {
        warn!(path = %pin_dir.display(), %err, "cannot remove the pinned maps");
    }
}

/// Until the command and everything it started have exited; then removes the cgroup.
fn wait_until_empty(cgroup: &Path) {
    let procs: PathBuf = cgroup.join("cgroup.procs");
    loop {
        match fs::read_to_string(&procs) {
            Ok(text) if text.trim().is_empty() => break,
            Ok(_) => std::thread::sleep(Duration::from_secs(1)),
            Err(_) => return,
        }
    }
    if let Err(err) = fs::remove_dir(cgroup) {
        warn!(path = %cgroup.display(), %err, "cannot remove the cgroup");
    }
}
