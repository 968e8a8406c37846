//! `--output-dir`: the bundle as files for the webhook container that starts
//! after the certgen init container.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::bundle::{CertBundle, CA_FILE, CERT_FILE, KEY_FILE};

/// Writes `ca.crt`, `tls.key` (mode 0600) and `tls.crt` into `dir`. Each file
/// is written under a temporary name and renamed over the old one, so a
/// reader (the webhook reloads on change) never sees a half-written file.
pub fn write_bundle(dir: &Path, bundle: &CertBundle) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    write_atomically(dir, CA_FILE, bundle.ca_pem.as_bytes(), 0o644)?;
    write_atomically(dir, KEY_FILE, bundle.key_pem.as_bytes(), 0o600)?;
    write_atomically(dir, CERT_FILE, bundle.cert_pem.as_bytes(), 0o644)?;
    // The renames are durable only once the directory itself is synced.
    File::open(dir)?.sync_all()
}

fn write_atomically(dir: &Path, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let target = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    // A leftover from an interrupted run could carry a wider mode; creating
    // the file afresh is what guarantees `mode`.
    if let Err(err) = fs::remove_file(&temporary) {
        if err.kind() != io::ErrorKind::NotFound {
            return Err(err);
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, &target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use zeroize::Zeroizing;

    fn bundle(tag: &str) -> CertBundle {
        CertBundle {
            ca_pem: format!("ca {tag}"),
            cert_pem: format!("cert {tag}"),
            key_pem: Zeroizing::new(format!("key {tag}")),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o777
    }

    #[test]
    fn writes_three_files_with_a_private_key_and_replaces_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("tls");
        write_bundle(&out, &bundle("one")).expect("first write");
        write_bundle(&out, &bundle("two")).expect("second write");

        let read = |name| fs::read_to_string(out.join(name)).expect("readable");
        assert_eq!(read(CA_FILE), "ca two");
        assert_eq!(read(CERT_FILE), "cert two");
        assert_eq!(read(KEY_FILE), "key two");
        assert_eq!(mode(&out.join(KEY_FILE)), 0o600);

        let mut names: Vec<_> = fs::read_dir(&out)
            .expect("listable")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, [CA_FILE, CERT_FILE, KEY_FILE], "no temporaries left");
    }

    #[test]
    fn a_stale_world_readable_temporary_does_not_widen_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = dir.path().join(format!(".{KEY_FILE}.tmp"));
        fs::write(&stale, "old").expect("stale temporary");
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).expect("chmod");

        write_bundle(dir.path(), &bundle("new")).expect("write");
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
    }
}
