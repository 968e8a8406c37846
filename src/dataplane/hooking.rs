//! Hooking the TLS code a process runs: shared by `kloak run` and the node agent.

use std::path::Path;

use tracing::{debug, warn};

use super::loader::DataPlane;
use super::maps::{file_record, FileState};
use super::targets::{self, file_id, FileId};

/// A file looked at: its identity and the probes now attached to it (0 when
/// it has no TLS to hook or cannot be hooked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooked {
    pub file: FileId,
    pub probes: usize,
}

/// Hooks one file when it has TLS to hook, and marks it inspected either way
/// (so the kernel stops holding its execs).
pub async fn hook_file(dataplane: &DataPlane, path: &Path) -> Option<Hooked> {
    let id = match file_id(path) {
        Ok(id) => id,
        Err(err) => {
            warn!(path = %path.display(), %err, "cannot stat");
            return None;
        }
    };
    // `Ok(0)` is hooked too: the probes were already attached (or adopted from pins).
    let attached = match targets::inspect(path) {
        Ok(Some(target)) => {
            let kind = target.kind();
            match dataplane.attach_target(path, id, target).await {
                Ok(probes) => Some(probes),
                Err(err) => {
                    warn!(path = %path.display(), kind, %err, "cannot hook");
                    None
                }
            }
        }
        Ok(None) => {
            debug!(path = %path.display(), "no TLS to hook");
            None
        }
        Err(err) if err.is_unsupported() => {
            warn!(%err, "not hooked");
            None
        }
        Err(err) => {
            warn!(%err, "cannot inspect");
            None
        }
    };
    let state = match attached {
        Some(_) => FileState::Hooked,
        None => FileState::Inspected,
    };
    if let Err(err) = dataplane.apply(vec![file_record(id, state)]).await {
        warn!(path = %path.display(), %err, "cannot record the file as inspected");
    }
    Some(Hooked {
        file: id,
        probes: attached.unwrap_or(0),
    })
}

/// Hooks the executable and TLS libraries of a running process.
pub async fn hook_process(dataplane: &DataPlane, proc_root: &Path, pid: u32) -> Vec<Hooked> {
    match targets::process_tls_files(proc_root, pid) {
        Ok(files) => {
            let mut hooked = Vec::new();
            for path in files {
                hooked.extend(hook_file(dataplane, &path).await);
            }
            hooked
        }
        Err(err) => {
            debug!(pid, %err, "process already gone");
            Vec::new()
        }
    }
}

/// A process the kernel stopped at exec: hook what it runs, then always resume it.
pub async fn hook_exec(dataplane: &DataPlane, proc_root: &Path, pid: u32) -> Vec<Hooked> {
    let attached = hook_process(dataplane, proc_root, pid).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
    attached
}
