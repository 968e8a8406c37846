//! Which files of a process may contain TLS code, as paths the host can open.

use std::io;
use std::path::{Path, PathBuf};

use super::TargetError;

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    /// For example `r-xp`.
    pub perms: String,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[anon:x]`) with the kernel's
    /// ` (deleted)` suffix removed; `None` for anonymous mappings.
    pub pathname: Option<String>,
    /// The mapped file was unlinked (or replaced, as by a package upgrade):
    /// its name no longer leads to it.
    pub deleted: bool,
}

impl MapsEntry {
    /// Backed by a file on a filesystem (not `[heap]`, `[vdso]`, anonymous).
    pub fn is_file_backed(&self) -> bool {
        self.inode != 0 && self.pathname.as_deref().is_some_and(|p| p.starts_with('/'))
    }
}

const DELETED_SUFFIX: &str = " (deleted)";

/// Parses the text of `/proc/<pid>/maps`. Lines that do not parse are
/// skipped: the format is fixed by the kernel, so a bad line means a
/// truncated read, and the other lines are still right.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let entry = parse_maps_line(line);
            if entry.is_none() {
                tracing::trace!(line, "unparsable maps line");
            }
            entry
        })
        .collect()
}

fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    // Five space-separated fields, then padding, then a pathname that may
    // itself contain spaces, so it is the rest of the line, not a field.
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let name = rest.trim_start_matches(' ');
    let (name, deleted) = match name.strip_suffix(DELETED_SUFFIX) {
        Some(n) => (n, true),
        None => (name, false),
    };
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        pathname: (!name.is_empty()).then(|| name.to_string()),
        deleted,
    })
}

/// The files of a process that matter for TLS, as paths the host can open
/// even when the process lives in another mount namespace:
/// `<proc_root>/<pid>/root/<path>`, or a `/proc` magic link when the file
/// was deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFiles {
    /// Its executable (Go, or OpenSSL linked statically); `None` for kernel threads.
    pub exe: Option<PathBuf>,
    /// Executable mappings of files named `libssl*`.
    pub libssl: Vec<PathBuf>,
    /// Executable mappings of files named `libcrypto*`: a shared OpenSSL keeps
    /// its version text there, not in libssl.
    pub libcrypto: Vec<PathBuf>,
}

impl ProcessFiles {
    /// Files the process may run TLS code from: the executable, then each libssl.
    pub fn tls_files(self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.exe.into_iter().collect();
        for path in self.libssl {
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files
    }
}

/// Files process `pid` may run TLS code from (see [`ProcessFiles::tls_files`]).
/// Callers `inspect` each one and deduplicate by [`super::file_id`].
pub fn process_tls_files(proc_root: &Path, pid: u32) -> Result<Vec<PathBuf>, TargetError> {
    Ok(process_files(proc_root, pid)?.tls_files())
}

/// The executable and TLS libraries of process `pid`. A process without an
/// executable (kernel thread) yields only its maps; a process that exited
/// yields [`TargetError::Proc`].
pub fn process_files(proc_root: &Path, pid: u32) -> Result<ProcessFiles, TargetError> {
    let pid_dir = proc_root.join(pid.to_string());
    let proc_err = |path: PathBuf| move |source: io::Error| TargetError::Proc { path, source };
    let mut files = ProcessFiles::default();

    let exe_link = pid_dir.join("exe");
    match std::fs::read_link(&exe_link) {
        Ok(target) => {
            let target = target.to_string_lossy();
            let path = match target.strip_suffix(DELETED_SUFFIX) {
                Some(_) => None,
                None => in_root(&pid_dir, &target),
            };
            files.exe = Some(path.unwrap_or(exe_link));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(proc_err(exe_link)(e)),
    }

    let maps_path = pid_dir.join("maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(proc_err(maps_path))?;
    let mut seen: Vec<&str> = Vec::new();
    let entries = parse_maps(&maps);
    for entry in &entries {
        let Some(name) = entry.pathname.as_deref() else {
            continue;
        };
        // Only executable mappings can run SSL_write; this also skips data
        // files (a memfd cache, say) that merely carry "libssl" in the name.
        let executable = entry.perms.contains('x');
        if !executable || !entry.is_file_backed() || seen.contains(&name) {
            continue;
        }
        let list = if has_basename_part(name, "libssl") {
            &mut files.libssl
        } else if has_basename_part(name, "libcrypto") {
            &mut files.libcrypto
        } else {
            continue;
        };
        seen.push(name);
        let path = if entry.deleted {
            None
        } else {
            in_root(&pid_dir, name)
        };
        // map_files links open the mapped file itself, deleted or not.
        let path = path.unwrap_or_else(|| {
            pid_dir
                .join("map_files")
                .join(format!("{:x}-{:x}", entry.start, entry.end))
        });
        if !list.contains(&path) {
            list.push(path);
        }
    }
    Ok(files)
}

fn has_basename_part(path: &str, part: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|base| base.contains(part))
}

/// `<pid_dir>/root/<path>` when `path` is absolute and exists there. The
/// kernel prints fully resolved paths relative to the process's root, so no
/// symlink in the container can redirect this to a host file.
fn in_root(pid_dir: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.strip_prefix('/')?;
    let full = pid_dir.join("root").join(relative);
    full.exists().then_some(full)
}

#[cfg(test)]
mod tests {
    use super::super::file_id;
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fd:01 1835080                    /usr/bin/curl
55d0c0a28000-55d0c0a8f000 r-xp 00028000 fd:01 1835080                    /usr/bin/curl
55d0c1e3e000-55d0c1e5f000 rw-p 00000000 00:00 0                          [heap]
7f1c2a400000-7f1c2a41f000 r--p 00000000 fd:01 1837711                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a41f000-7f1c2a47c000 r-xp 0001f000 fd:01 1837711                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a600000-7f1c2a800000 r-xp 00000000 fd:01 99                         /opt/my app/lib/libssl.so.1.1 (deleted)
7f1c2a900000-7f1c2a901000 rw-p 00000000 00:00 0 
7f1c2aa00000-7f1c2aa01000 rw-s 00000000 00:01 2048                       /memfd:libssl-cache (deleted)
7f1c2ab00000-7f1c2ab01000 rw-p 00000000 00:00 0                          [anon:scudo:primary]
7ffd4b5a0000-7ffd4b5a2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
not a maps line
";

    #[test]
    fn parse_maps_fixture() {
        let e = parse_maps(MAPS);
        assert_eq!(e.len(), 11, "{e:#?}");
        assert_eq!(
            e[0],
            MapsEntry {
                start: 0x55d0c0a00000,
                end: 0x55d0c0a28000,
                perms: "r--p".into(),
                offset: 0,
                dev_major: 0xfd,
                dev_minor: 1,
                inode: 1835080,
                pathname: Some("/usr/bin/curl".into()),
                deleted: false,
            }
        );
        assert!(e[0].is_file_backed());
        assert_eq!(e[1].offset, 0x28000);

        assert_eq!(e[2].pathname.as_deref(), Some("[heap]"));
        assert!(!e[2].is_file_backed());

        let spaced = &e[5];
        assert_eq!(
            spaced.pathname.as_deref(),
            Some("/opt/my app/lib/libssl.so.1.1")
        );
        assert!(spaced.deleted);
        assert!(spaced.is_file_backed());

        // Anonymous mapping: the kernel leaves a trailing space, no name.
        assert_eq!(e[6].pathname, None);
        assert!(!e[6].is_file_backed());

        assert_eq!(e[7].pathname.as_deref(), Some("/memfd:libssl-cache"));
        assert!(e[7].deleted);
        assert_eq!(e[8].pathname.as_deref(), Some("[anon:scudo:primary]"));
        assert_eq!(e[10].end, 0xffffffffff601000);
    }

    #[test]
    fn parse_maps_empty() {
        assert!(parse_maps("").is_empty());
        assert!(parse_maps("\n\n").is_empty());
    }

    /// A fake procfs: `<tmp>/proc/42/{exe,maps,root}` with `root` pointing at
    /// a fake container filesystem.
    fn fake_proc(exe_target: Option<&str>, maps: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(rootfs.join("usr/bin/curl"), b"exe").unwrap();
        std::fs::write(rootfs.join("usr/lib/x86_64-linux-gnu/libssl.so.3"), b"lib").unwrap();
        let pid_dir = tmp.path().join("proc/42");
        std::fs::create_dir_all(&pid_dir).unwrap();
        std::os::unix::fs::symlink(&rootfs, pid_dir.join("root")).unwrap();
        if let Some(target) = exe_target {
            std::os::unix::fs::symlink(target, pid_dir.join("exe")).unwrap();
        }
        std::fs::write(pid_dir.join("maps"), maps).unwrap();
        tmp
    }

    #[test]
    fn candidates_from_fake_proc() {
        let tmp = fake_proc(Some("/usr/bin/curl"), MAPS);
        let proc_root = tmp.path().join("proc");
        let files = process_tls_files(&proc_root, 42).unwrap();
        let pid_dir = proc_root.join("42");
        assert_eq!(
            files,
            vec![
                pid_dir.join("root/usr/bin/curl"),
                pid_dir.join("root/usr/lib/x86_64-linux-gnu/libssl.so.3"),
                pid_dir.join("map_files/7f1c2a600000-7f1c2a800000"),
            ]
        );
    }

    #[test]
    fn deleted_or_missing_exe_falls_back_to_exe_link() {
        for target in ["/usr/bin/curl (deleted)", "/usr/bin/gone"] {
            let tmp = fake_proc(Some(target), "");
            let proc_root = tmp.path().join("proc");
            let files = process_tls_files(&proc_root, 42).unwrap();
            assert_eq!(files, vec![proc_root.join("42/exe")], "{target}");
        }
    }

    #[test]
    fn process_without_exe_yields_maps_only() {
        let tmp = fake_proc(None, MAPS);
        let proc_root = tmp.path().join("proc");
        let files = process_tls_files(&proc_root, 42).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("libssl.so.3"));
    }

    #[test]
    fn exited_process_is_an_error_naming_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let err = process_tls_files(tmp.path(), 7).unwrap_err();
        assert!(matches!(err, TargetError::Proc { .. }));
        assert!(err.to_string().contains("7/maps"), "{err}");
    }

    #[test]
    fn real_proc_self() {
        let proc_root = Path::new("/proc");
        if !proc_root.join("self/maps").exists() {
            eprintln!("skipping: /proc not mounted");
            return;
        }
        let files = process_tls_files(proc_root, std::process::id()).unwrap();
        let me = file_id(&std::env::current_exe().unwrap()).unwrap();
        assert_eq!(file_id(&files[0]).unwrap(), me, "{files:?}");
    }

    #[test]
    fn libraries_match_basename_only() {
        assert!(has_basename_part("/usr/lib/libssl.so.3", "libssl"));
        assert!(has_basename_part("/lib/libssl.so.1.1", "libssl"));
        assert!(!has_basename_part(
            "/opt/libssl-build/libcrypto.so.3",
            "libssl"
        ));
        assert!(has_basename_part(
            "/opt/libssl-build/libcrypto.so.3",
            "libcrypto"
        ));
    }

    #[test]
    fn libcrypto_is_listed_apart_from_tls_files() {
        let maps = format!(
            "{MAPS}7f1c2b000000-7f1c2b100000 r-xp 00000000 fd:01 1837712                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3\n"
        );
        let tmp = fake_proc(Some("/usr/bin/curl"), &maps);
        std::fs::write(
            tmp.path()
                .join("rootfs/usr/lib/x86_64-linux-gnu/libcrypto.so.3"),
            b"lib",
        )
        .unwrap();
        let proc_root = tmp.path().join("proc");
        let files = process_files(&proc_root, 42).unwrap();
        assert_eq!(
            files.libcrypto,
            vec![proc_root.join("42/root/usr/lib/x86_64-linux-gnu/libcrypto.so.3")]
        );
        assert_eq!(files.libssl.len(), 2);
        assert!(!files
            .tls_files()
            .iter()
            .any(|p| p.ends_with("libcrypto.so.3")));
    }
}
