//! Every link the loader attached or adopted, by name, and their pins.
//!
//! A persistent instance (the node agent) pins each link under `links/`, so a
//! restarted agent adopts them and never opens a window without probes. What
//! the new agent no longer wants must then go too: links of the other rewrite
//! mode at once (`--observe` must stop rewriting before anything else), and
//! every pin nobody claimed once the agent has hooked what runs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_rs::Link;
use tracing::{debug, info, warn};

use super::loader::LoaderError;
use super::targets::FileId;

pub struct LinkSet {
    links: Vec<(String, Link)>,
    names: BTreeSet<String>,
    /// Where links are pinned when the instance persists; None for `kloak run`.
    dir: Option<PathBuf>,
}

/// The rewrite mode a program belongs to, from its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rewrite,
    ReadOnly,
}

impl Mode {
    fn of_program(program: &str) -> Option<Self> {
        if program.ends_with("_rw") {
            Some(Self::Rewrite)
        } else if program.ends_with("_ro") {
            Some(Self::ReadOnly)
        } else {
            None
        }
    }
}

/// The name of a uprobe link on one file: `<program>-<dev>-<ino>-<offset>[-ret]`.
pub fn uprobe_name(program: &str, id: FileId, offset: u64, retprobe: bool) -> String {
    format!(
        "{program}-{}-{}-{offset:x}{}",
        id.dev,
        id.ino,
        if retprobe { "-ret" } else { "" }
    )
}

/// The file a uprobe link's name refers to (None for tracepoints, DNS and other links).
pub fn file_of(name: &str) -> Option<FileId> {
    let mut parts = name.split('-');
    let program = parts.next()?;
    if !program.starts_with("handle_") {
        return None;
    }
    let dev = parts.next()?.parse().ok()?;
    let ino = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(FileId { dev, ino })
}

fn mode_of(name: &str) -> Option<Mode> {
    Mode::of_program(name.split('-').next()?)
}

impl LinkSet {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            links: Vec::new(),
            names: BTreeSet::new(),
            dir,
        }
    }

    /*
     * Attaches unless a pinned link of that name exists: then it is adopted.
     * Persistent instances pin what they attach.
     */
    pub fn keep(
        &mut self,
        name: &str,
        attach: impl FnOnce() -> Result<Link, LoaderError>,
    ) -> Result<usize, LoaderError> {
        if !self.names.insert(name.to_owned()) {
            return Ok(0);
        }
        let pinned = self.dir.as_ref().map(|dir| dir.join(name));
        if let Some(path) = &pinned {
            if path.exists() {
                let link = Link::open(path).map_err(|source| LoaderError::Attach {
                    what: format!("adopting pinned link {}", path.display()),
                    source,
                })?;
                debug!(link = name, "adopted pinned link");
                self.links.push((name.to_owned(), link));
                return Ok(0);
            }
        }
        let mut link = match attach() {
            Ok(link) => link,
            Err(err) => {
                self.names.remove(name);
                return Err(err);
            }
        };
        if let Some(path) = &pinned {
            link.pin(path).map_err(|source| LoaderError::Attach {
                what: format!("pinning link {}", path.display()),
                source,
            })?;
        }
        self.links.push((name.to_owned(), link));
        Ok(1)
    }

    /// Detaches the probes of one file.
    pub fn drop_file(&mut self, id: FileId) -> usize {
        let before = self.links.len();
        self.links.retain_mut(|(name, link)| {
            let keep = file_of(name) != Some(id);
            if !keep && link.pin_path().is_some() {
                let _ = link.unpin();
            }
            keep
        });
        self.names.retain(|name| file_of(name) != Some(id));
        before - self.links.len()
    }

    /// Unpins (so the kernel detaches) the pinned links of programs of the
    /// other rewrite mode, left by an agent that ran with other settings.
    pub fn prune_other_mode(&mut self, wanted: Mode) -> Vec<String> {
        self.prune(|name| mode_of(name).is_some_and(|mode| mode != wanted))
    }

    /// Unpins every pinned link this instance has not attached or adopted.
    pub fn prune_unclaimed(&mut self) -> Vec<String> {
        let claimed = self.names.clone();
        self.prune(|name| !claimed.contains(name))
    }

    fn prune(&mut self, unwanted: impl Fn(&str) -> bool) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut pruned = Vec::new();
        for name in pinned_names(dir) {
            // What this instance attached or adopted is never pruned under it.
            if !unwanted(&name) || self.names.contains(&name) {
                continue;
            }
            match fs::remove_file(dir.join(&name)) {
                Ok(()) => pruned.push(name),
                Err(err) => warn!(link = %name, %err, "cannot unpin a link nobody wants"),
            }
        }
        if !pruned.is_empty() {
            info!(links = pruned.len(), "detached pinned links nobody wants");
        }
        pruned
    }

    /// Drops every link: unpinned ones detach, pinned ones stay in the kernel.
    pub fn release(&mut self) {
        self.links.clear();
    }
}

fn pinned_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uprobe_names_carry_their_file() {
        let id = FileId { dev: 66, ino: 1234 };
        let name = uprobe_name("handle_ssl_write_rw", id, 0x1f0, true);
        assert_eq!(name, "handle_ssl_write_rw-66-1234-1f0-ret");
        assert_eq!(file_of(&name), Some(id));
        assert_eq!(mode_of(&name), Some(Mode::Rewrite));
        assert_eq!(
            mode_of(&uprobe_name("handle_go_write_ro", id, 1, false)),
            Some(Mode::ReadOnly)
        );
        assert_eq!(
            mode_of(&uprobe_name("handle_cipher_init", id, 1, false)),
            None
        );
    }

    #[test]
    fn other_links_name_no_file() {
        assert_eq!(file_of("tp-sys_enter_write"), None);
        assert_eq!(file_of("dns-ingress-4026"), None);
        assert_eq!(file_of("handle_ssl_write_rw-x-1-2"), None);
    }

    #[test]
    fn pruning_removes_what_is_unwanted_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = FileId { dev: 1, ino: 2 };
        let names = [
            uprobe_name("handle_ssl_write_rw", id, 16, false),
            uprobe_name("handle_ssl_write_ret_rw", id, 16, true),
            uprobe_name("handle_ssl_handshake", id, 32, false),
            "tp-sys_enter_write".to_owned(),
        ];
        for name in &names {
            fs::write(dir.path().join(name), b"").expect("pin stand-in");
        }
        let mut links = LinkSet::new(Some(dir.path().to_path_buf()));
        let mut pruned = links.prune_other_mode(Mode::ReadOnly);
        pruned.sort();
        assert_eq!(pruned, [names[1].clone(), names[0].clone()]);
        links.names.insert(names[3].clone());
        assert_eq!(links.prune_unclaimed(), [names[2].clone()]);
        assert_eq!(pinned_names(dir.path()), [names[3].clone()]);
    }
}
