//! The cgroup `kloak run` puts its command in: created fresh, emptied and removed at the end.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tracing::{debug, warn};

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A cgroup v2 directory owned by this process.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    id: u64,
}

impl RunCgroup {
    pub fn create(root: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = root.join(name);
        fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        // The kernel's cgroup id is the inode number of the cgroup's directory.
        let id = fs::metadata(&path)
            .map_err(|source| CgroupError::Create {
                path: path.clone(),
                source,
            })?
            .ino();
        debug!(path = %path.display(), id, "cgroup created");
        Ok(Self { path, id })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opened by root before the command drops privileges: the kernel checks
    /// the opener's credentials when the child writes its pid.
    pub fn open_procs(&self) -> Result<fs::File, CgroupError> {
        let path = self.path.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| CgroupError::Open { path, source })
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Ends every process still in the cgroup (daemons the command left behind).
    fn kill_all(&self) {
        let kill_file = self.path.join("cgroup.kill");
        if kill_file.exists() {
            if let Err(err) = fs::write(&kill_file, "1") {
                warn!(%err, "cgroup.kill failed");
            }
        } else {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if self.pids().is_empty() && fs::remove_dir(&self.path).is_ok() {
                debug!(path = %self.path.display(), "cgroup removed");
                return;
            }
            self.kill_all();
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(path = %self.path.display(), "cgroup could not be removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_fails_with_the_path_in_the_message() {
        let err = RunCgroup::create(Path::new("/nonexistent-kloak-root"), "x").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-kloak-root/x"),
            "{err}"
        );
    }
}
