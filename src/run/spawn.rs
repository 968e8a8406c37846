//! Starting the command: inside the cgroup before its first instruction, with
//! placeholders in its environment and, when asked, without root.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use tokio::process::{Child, Command};

/// Who the command runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

pub struct Launch<'a> {
    pub argv: &'a [String],
    pub set_env: Vec<(String, OsString)>,
    pub remove_env: Vec<String>,
    pub identity: Option<Identity>,
    pub cgroup_procs: &'a File,
}

/// Resolves --user (name or uid), falling back to the user behind sudo.
pub fn identity(user: Option<&str>, sudo_uid: Option<String>) -> Result<Option<Identity>, String> {
    let lookup = |uid: u32| match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(found)) => Ok(Identity {
            uid,
            gid: found.gid.as_raw(),
        }),
        _ => Err(format!("no user with uid {uid}")),
    };
    match user {
        Some(name) => match name.parse::<u32>() {
            Ok(uid) => lookup(uid).map(Some),
            Err(_) => match nix::unistd::User::from_name(name) {
                Ok(Some(found)) => Ok(Some(Identity {
                    uid: found.uid.as_raw(),
                    gid: found.gid.as_raw(),
                })),
                _ => Err(format!("no user named {name}")),
            },
        },
        None => match sudo_uid.and_then(|uid| uid.parse::<u32>().ok()) {
            Some(uid) if uid != 0 => lookup(uid).map(Some),
            _ => Ok(None),
        },
    }
}

pub fn spawn(launch: Launch<'_>) -> io::Result<Child> {
    let (program, args) = launch
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
    let mut command = Command::new(program);
    command.args(args);
    for name in &launch.remove_env {
        command.env_remove(name);
    }
    for (name, value) in &launch.set_env {
        command.env(name, value);
    }
    if let Some(identity) = launch.identity {
        command.uid(identity.uid).gid(identity.gid);
    }
    let procs_fd = launch.cgroup_procs.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed;
    // the closure makes one write(2) on an fd opened before the fork, and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let pid = b"0";
            if libc::write(procs_fd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.kill_on_drop(true);
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_uid_picks_that_user_and_root_stays_root() {
        assert_eq!(identity(None, Some("0".into())), Ok(None));
        assert_eq!(identity(None, None), Ok(None));
        assert_eq!(
            identity(Some("0"), None)
                .expect("root exists")
                .map(|id| id.uid),
            Some(0)
        );
        assert!(identity(Some("no-such-user-kloak"), None)
            .unwrap_err()
            .contains("no-such-user-kloak"));
    }
}
