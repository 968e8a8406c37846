//! Hooking the TLS code a process runs: shared by `kloak run` and the node agent.
//!
//! Inspection reads whole executables (hundreds of megabytes for a Bun
//! single-file program) while a process may be held at exec: it runs on the
//! blocking pool, never on the async workers, and each file is inspected once
//! per identity (device, inode, size, modification and change times), across
//! restarts when the caller persists inspections (`inspection_cache`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::{debug, warn};

use super::held;
use super::inspection_cache::{self, FileStamp, InspectionCache};
use super::loader::DataPlane;
use super::targets::{self, FileId, Inspection, TlsTarget};

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
/// The TLS stacks in it that cannot be hooked are named in a warning, once per
/// file in this process's life, whether the inspection is new or remembered.
async fn inspect(path: &Path, stamp: FileStamp) -> Option<TlsTarget> {
    let cached = cache().lock().ok().and_then(|c| c.get(&stamp).cloned());
    let inspection = match cached {
        Some(inspection) => inspection,
        None => inspect_anew(path, stamp).await?,
    };
    if !inspection.unhooked.is_empty() && first_telling(stamp) {
        for runtime in &inspection.unhooked {
            let stack = runtime.kind.as_str();
            let version = runtime.version.as_deref().unwrap_or("unknown version");
            let reason = runtime.unhookable.as_deref().unwrap_or_default();
            warn!(
                path = %path.display(),
                stack,
                version,
                reason,
                "NOT HOOKED: {} uses {stack} ({version}), which kloak cannot hook; its \
                 placeholders go out unchanged: {reason}",
                path.display()
            );
        }
    }
    inspection.target
}

/// True the first time a file is to be named as not hooked.
fn first_telling(stamp: FileStamp) -> bool {
    static TOLD: OnceLock<Mutex<HashSet<FileStamp>>> = OnceLock::new();
    TOLD.get_or_init(Mutex::default)
        .lock()
        .map(|mut told| told.insert(stamp))
        .unwrap_or(true)
}

async fn inspect_anew(path: &Path, stamp: FileStamp) -> Option<Inspection> {
    let started = std::time::Instant::now();
    let owned: PathBuf = path.to_path_buf();
    let inspected = tokio::task::spawn_blocking(move || targets::inspect_fully(&owned)).await;
    let inspection = match inspected {
        Ok(Ok(inspection)) => inspection,
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
    debug!(
        path = %path.display(),
        ms = started.elapsed().as_millis() as u64,
        hooked = inspection.target.is_some(),
        unhooked = inspection.unhooked.len(),
        "inspected"
    );
    if let Ok(mut cache) = cache().lock() {
        cache.insert(stamp, inspection.clone());
    }
    Some(inspection)
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
