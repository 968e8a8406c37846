//! What each file's inspection found, by file identity, kept on disk so a
//! restarted agent (or the next `kloak run`) does not read a 400 MB
//! single-file executable again while its process is held at exec.
//!
//! The file is an append-only log of JSON lines, each tagged with the
//! inspecting binary's own identity: another kloak build may locate functions
//! differently, so its entries are ignored (and dropped at the next
//! compaction). Offsets from this file become uprobe addresses, so it is only
//! trusted when kloak's own user (root) owns it and nobody else may write it.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::targets::{FileId, Inspection};

/// Entries kept in memory and on disk; the oldest half goes when full.
pub const CAPACITY: usize = 4096;

/// A file's identity and version: a file replaced or rewritten is inspected again
/// (the change time moves even when a writer restores the modification time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStamp {
    pub id: FileId,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&fs::metadata(path)?))
    }

    fn from_metadata(meta: &fs::Metadata) -> Self {
        Self {
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not trusted: {why} (it must be a regular file owned by kloak's user, writable by it alone)")]
    Untrusted { path: PathBuf, why: String },
}

#[derive(Serialize, Deserialize)]
struct Line {
    inspector: String,
    stamp: FileStamp,
    inspection: Inspection,
}

/// The inspections this process knows, and where new ones are recorded.
#[derive(Default)]
pub struct InspectionCache {
    entries: HashMap<FileStamp, (u64, Inspection)>,
    /// Insertion order, for evicting the oldest.
    next: u64,
    store: Option<Store>,
}

struct Store {
    path: PathBuf,
    inspector: String,
    /// Lines on disk, this build's or not: compaction is due past twice the capacity.
    lines: usize,
}

impl InspectionCache {
    /// Loads `path` (created when missing, in a directory only root can enter).
    /// `inspector` names the kloak build; other builds' lines are ignored.
    pub fn open(path: &Path, inspector: String) -> Result<Self, CacheError> {
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        check_trusted(path, &file.metadata().map_err(io)?)?;
        let mut cache = Self::default();
        let mut lines = 0;
        let mut foreign = 0;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io)?;
            lines += 1;
            match serde_json::from_str::<Line>(&line) {
                Ok(entry) if entry.inspector == inspector => {
                    cache.remember(entry.stamp, entry.inspection)
                }
                Ok(_) => foreign += 1,
                // A line cut short by a crash mid-append: the file is inspected again.
                Err(err) => debug!(%err, "unreadable inspection cache line skipped"),
            }
        }
        info!(
            path = %path.display(),
            entries = cache.entries.len(),
            other_builds = foreign,
            "inspection cache loaded"
        );
        cache.store = Some(Store {
            path: path.to_path_buf(),
            inspector,
            lines,
        });
        if lines > 2 * CAPACITY || (foreign > 0 && foreign >= lines / 2) {
            cache.compact();
        }
        Ok(cache)
    }

    pub fn get(&self, stamp: &FileStamp) -> Option<&Inspection> {
        self.entries.get(stamp).map(|(_, inspection)| inspection)
    }

    /// Records an inspection (in memory, and on disk when the cache has a file).
    pub fn insert(&mut self, stamp: FileStamp, inspection: Inspection) {
        if let Some(store) = &mut self.store {
            if let Err(err) = store.append(&stamp, &inspection) {
                warn!(%err, "inspection not recorded on disk; it is redone after a restart");
            }
        }
        self.remember(stamp, inspection);
        let due = self
            .store
            .as_ref()
            .is_some_and(|store| store.lines > 2 * CAPACITY);
        if due {
            self.compact();
        }
    }

    fn remember(&mut self, stamp: FileStamp, inspection: Inspection) {
        // A file's identity moved on (same inode, new version): the old entry is dead.
        self.entries.retain(|old, _| old.id != stamp.id);
        if self.entries.len() >= CAPACITY {
            let mut ages: Vec<u64> = self.entries.values().map(|(age, _)| *age).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.entries.retain(|_, (age, _)| *age > cutoff);
        }
        self.entries.insert(stamp, (self.next, inspection));
        self.next += 1;
    }

    /// Rewrites the file with this build's live entries only (atomically: a
    /// new file renamed over the old one).
    fn compact(&mut self) {
        let Some(store) = &mut self.store else { return };
        let mut live: Vec<_> = self.entries.iter().collect();
        live.sort_by_key(|(_, (age, _))| *age);
        let tmp = store.path.with_extension("tmp");
        let written = (|| -> std::io::Result<()> {
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            for (stamp, (_, inspection)) in &live {
                writeln!(out, "{}", store.line(stamp, inspection)?)?;
            }
            out.sync_all()?;
            fs::rename(&tmp, &store.path)
        })();
        match written {
            Ok(()) => store.lines = live.len(),
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                warn!(path = %store.path.display(), %err, "inspection cache not compacted");
            }
        }
    }
}

impl Store {
    fn line(&self, stamp: &FileStamp, inspection: &Inspection) -> std::io::Result<String> {
        Ok(serde_json::to_string(&Line {
            inspector: self.inspector.clone(),
            stamp: *stamp,
            inspection: inspection.clone(),
        })?)
    }

    fn append(&mut self, stamp: &FileStamp, inspection: &Inspection) -> std::io::Result<()> {
        let mut line = self.line(stamp, inspection)?;
        line.push('\n');
        // One write per line: concurrent appenders (the agent, `kloak run`s) never interleave.
        let mut file = OpenOptions::new().append(true).open(&self.path)?;
        file.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }
}

fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<(), CacheError> {
    let untrusted = |why: String| CacheError::Untrusted {
        path: path.to_path_buf(),
        why,
    };
    if !meta.is_file() {
        return Err(untrusted("not a regular file".into()));
    }
    let owner = nix::unistd::geteuid().as_raw();
    if meta.uid() != owner {
        return Err(untrusted(format!("owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!("mode {:o}", meta.mode() & 0o777)));
    }
    if let Some(dir) = path.parent().and_then(|d| fs::metadata(d).ok()) {
        if dir.uid() != owner || dir.mode() & 0o022 != 0 {
            return Err(untrusted("its directory is writable by others".into()));
        }
    }
    Ok(())
}

/// This kloak build's identity: its executable's size and times. Any rebuild
/// or upgrade changes it, and with it which cached inspections count.
pub fn this_build() -> String {
    match fs::metadata("/proc/self/exe") {
        Ok(meta) => {
            let stamp = FileStamp::from_metadata(&meta);
            format!(
                "{}:{}:{}:{}",
                env!("CARGO_PKG_VERSION"),
                stamp.size,
                stamp.mtime_ns,
                stamp.ctime_ns
            )
        }
        // Unknown build: nothing on disk can be matched to it.
        Err(_) => format!(
            "{}:unknown:{}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::dataplane::targets::{
        OpenSslTarget, Runtime, RuntimeKind, SslFlavour, Symbol, TlsTarget, RUSTLS_REASON,
    };

    fn read_lines(path: &Path) -> Vec<String> {
        BufReader::new(fs::File::open(path).expect("open"))
            .lines()
            .map(|l| l.expect("line"))
            .collect()
    }

    fn stamp(ino: u64, size: u64) -> FileStamp {
        FileStamp {
            id: FileId { dev: 1, ino },
            size,
            mtime_ns: 5,
            ctime_ns: 6,
        }
    }

    fn hooked() -> Inspection {
        Inspection {
            target: Some(target()),
            unhooked: Vec::new(),
        }
    }

    fn rustls_only() -> Inspection {
        Inspection {
            target: None,
            unhooked: vec![Runtime {
                kind: RuntimeKind::Rustls,
                flavour: None,
                version: Some("0.23.46".into()),
                stripped: true,
                unhookable: Some(RUSTLS_REASON.into()),
            }],
        }
    }

    fn target() -> TlsTarget {
        let symbol = Symbol {
            vaddr: 0x1000,
            file_offset: 0x800,
            size: 64,
        };
        TlsTarget::OpenSsl(OpenSslTarget {
            ssl_write: symbol,
            ssl_write_ex: None,
            do_handshake: Some(symbol),
            connect: None,
            read: None,
            read_ex: None,
            set_fd: None,
            set_wfd: None,
            set_bio: None,
            flavour: SslFlavour::OpenSsl3,
            bun_version: Some("1.2.3".into()),
            key_hook: None,
        })
    }

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        dir
    }

    #[test]
    fn a_restart_finds_what_the_last_run_inspected() {
        let dir = private_dir();
        let path = dir.path().join("cache/inspections.jsonl");
        let mut first = InspectionCache::open(&path, "build-a".into()).expect("open");
        first.insert(stamp(10, 100), hooked());
        first.insert(stamp(11, 100), rustls_only());
        first.insert(stamp(12, 100), Inspection::default());
        drop(first);

        let again = InspectionCache::open(&path, "build-a".into()).expect("reopen");
        assert_eq!(again.get(&stamp(10, 100)), Some(&hooked()));
        assert_eq!(
            again.get(&stamp(11, 100)),
            Some(&rustls_only()),
            "what cannot be hooked is remembered, so it is still named after a restart"
        );
        assert_eq!(
            again.get(&stamp(12, 100)),
            Some(&Inspection::default()),
            "no TLS is an answer too"
        );
        assert_eq!(
            again.get(&stamp(10, 101)),
            None,
            "a changed file is inspected again"
        );
        let mode = fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn another_build_inspects_again_and_compacts_the_old_lines_away() {
        let dir = private_dir();
        let path = dir.path().join("inspections.jsonl");
        let mut old = InspectionCache::open(&path, "build-a".into()).expect("open");
        old.insert(stamp(10, 100), hooked());
        drop(old);
        let new = InspectionCache::open(&path, "build-b".into()).expect("reopen");
        assert_eq!(new.get(&stamp(10, 100)), None);
        assert!(
            read_lines(&path).is_empty(),
            "the other build's lines are gone"
        );
    }

    #[test]
    fn a_cut_line_is_skipped_and_the_rest_kept() {
        let dir = private_dir();
        let path = dir.path().join("inspections.jsonl");
        let mut cache = InspectionCache::open(&path, "b".into()).expect("open");
        cache.insert(stamp(10, 100), hooked());
        drop(cache);
        let mut file = OpenOptions::new().append(true).open(&path).expect("append");
        file.write_all(b"{\"inspector\":\"b\",\"sta")
            .expect("write");
        drop(file);
        let cache = InspectionCache::open(&path, "b".into()).expect("reopen");
        assert_eq!(cache.get(&stamp(10, 100)), Some(&hooked()));
    }

    #[test]
    fn a_file_others_may_write_is_not_trusted() {
        let dir = private_dir();
        let path = dir.path().join("inspections.jsonl");
        drop(InspectionCache::open(&path, "b".into()).expect("open"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(matches!(
            InspectionCache::open(&path, "b".into()),
            Err(CacheError::Untrusted { .. })
        ));
    }

    #[test]
    fn a_full_cache_drops_its_oldest_half() {
        let mut cache = InspectionCache::default();
        for ino in 0..CAPACITY as u64 {
            cache.insert(stamp(ino, 1), Inspection::default());
        }
        cache.insert(stamp(CAPACITY as u64, 1), Inspection::default());
        assert!(cache.get(&stamp(0, 1)).is_none(), "the oldest went");
        assert!(cache.get(&stamp(CAPACITY as u64, 1)).is_some());
        assert!(cache.entries.len() <= CAPACITY / 2 + 1);
    }

    #[test]
    fn a_new_version_of_a_file_replaces_its_entry() {
        let mut cache = InspectionCache::default();
        cache.insert(stamp(7, 1), hooked());
        cache.insert(stamp(7, 2), Inspection::default());
        assert_eq!(cache.get(&stamp(7, 1)), None);
        assert_eq!(cache.entries.len(), 1);
    }
}
