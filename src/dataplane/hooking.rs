//! Hooking the TLS code a process runs: shared by `kloak run` and the node agent.
//!
//! Inspection reads whole executables (hundreds of megabytes for a Bun
//! single-file program) while a process may be held at exec: it runs on the
//! blocking pool, never on the async workers, and each file is inspected once
//! per identity (device, inode, size, modification and change times), across
//! restarts when the caller persists inspections (`inspection_cache`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::{debug, warn};

use super::held;
use super::inspection_cache::{self, FileStamp, InspectionCache};
use super::loader::DataPlane;
use super::targets::{self, FileId, TlsTarget};

/// A file looked at: its identity and the probes now attached to it (0 when
/// it has no TLS to hook or cannot be hooked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooked {
    pub file: FileId,
    pub probes: usize,
}

fn cache() -> &'static Mutex<InspectionCache> {
    static CACHE: OnceLock<Mutex<InspectionCache>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Keeps inspections in `path` from now on, and takes what it holds: a restart
/// (or the next `kloak run`) does not inspect a known file again. Without it,
/// inspections are remembered for this process's life only.
pub fn persist_inspections(path: &Path) {
    match InspectionCache::open(path, inspection_cache::this_build()) {
        Ok(opened) => {
            if let Ok(mut cache) = cache().lock() {
                *cache = opened;
            }
        }
        Err(err) => warn!(
            %err,
            "inspections are not kept across restarts: files are inspected again after one"
        ),
    }
}

/// What a file has to hook, from the cache or from an inspection on the blocking pool.
async fn inspect(path: &Path, stamp: FileStamp) -> Option<TlsTarget> {
    if let Some(found) = cache().lock().ok().and_then(|c| c.get(&stamp).cloned()) {
        return found;
    }
    let started = std::time::Instant::now();
    let owned: PathBuf = path.to_path_buf();
    let inspected = tokio::task::spawn_blocking(move || targets::inspect(&owned)).await;
    let found = match inspected {
        Ok(Ok(Some(target))) => Some(target),
        Ok(Ok(None)) => {
            debug!(path = %path.display(), "no TLS to hook");
            None
        }
        Ok(Err(err)) if err.is_unsupported() => {
            warn!(%err, "not hooked");
            None
        }
        Ok(Err(err)) => {
            // Not cached: a read error may pass.
            warn!(%err, "cannot inspect");
            return None;
        }
        Err(err) => {
            warn!(path = %path.display(), %err, "inspection panicked");
            return None;
        }
    };
    debug!(path = %path.display(), ms = started.elapsed().as_millis() as u64, "inspected");
    if let Ok(mut cache) = cache().lock() {
        cache.insert(stamp, found.clone());
    }
    found
}

/// Hooks one file when it has TLS to hook, and marks it inspected either way
/// (so the kernel stops holding its execs): one round trip to the loader.
pub async fn hook_file(dataplane: &DataPlane, path: &Path) -> Option<Hooked> {
    let stamp = match FileStamp::of(path) {
        Ok(stamp) => stamp,
        Err(err) => {
            warn!(path = %path.display(), %err, "cannot stat");
            return None;
        }
    };
    let target = inspect(path, stamp).await;
    let kind = target.as_ref().map(TlsTarget::kind);
    // `Ok(0)` is hooked too: the probes were already attached (or adopted from pins).
    let probes = match dataplane.hook_file(path, stamp.id, target).await {
        Ok(probes) => probes,
        Err(err) => {
            warn!(path = %path.display(), kind, %err, "cannot hook");
            0
        }
    };
    Some(Hooked {
        file: stamp.id,
        probes,
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

/// A process the kernel stopped at exec: hook what it runs, then always
/// resume it and clear its record in the `held` map.
pub async fn hook_exec(dataplane: &DataPlane, proc_root: &Path, pid: u32) -> Vec<Hooked> {
    let attached = hook_process(dataplane, proc_root, pid).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
    if let Err(err) = dataplane.apply(vec![held::release(pid)]).await {
        warn!(pid, %err, "cannot clear the held record of a resumed process");
    }
    attached
}
