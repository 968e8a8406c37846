//! Hooking the TLS code a process runs: shared by `kloak run` and the node agent.
//!
//! Inspection reads whole executables (hundreds of megabytes for a Bun
//! single-file program) while a process may be held at exec: it runs on the
//! blocking pool, never on the async workers, and each file is inspected once
//! per identity (device, inode, size, modification time).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::{debug, warn};

use super::held;
use super::loader::DataPlane;
use super::targets::{self, FileId, TlsTarget};

/// A file looked at: its identity and the probes now attached to it (0 when
/// it has no TLS to hook or cannot be hooked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooked {
    pub file: FileId,
    pub probes: usize,
}

/// A file's identity and version: a file replaced in place is inspected again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileStamp {
    id: FileId,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// Files inspected, with what was found; bounded, cleared when full.
const CACHE_CAPACITY: usize = 4096;

fn cache() -> &'static Mutex<HashMap<FileStamp, Option<TlsTarget>>> {
    static CACHE: OnceLock<Mutex<HashMap<FileStamp, Option<TlsTarget>>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// What a file has to hook, from the cache or from an inspection on the blocking pool.
async fn inspect(path: &Path, stamp: FileStamp) -> Option<TlsTarget> {
    if let Some(found) = cache().lock().ok().and_then(|c| c.get(&stamp).cloned()) {
        return found;
    }
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
    if let Ok(mut cache) = cache().lock() {
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
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
