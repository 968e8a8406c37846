//! Finding the TLS write functions kloak hooks with uprobes.
//!
//! Uprobes are attached once per file (keyed by device and inode) at *file
//! offsets*, so everything here reports both the link-time virtual address of
//! a symbol (useful for logs and for comparing with runtime values) and the
//! offset of its first byte in the ELF file (what the kernel wants).
//!
//! Two kinds of targets are recognised:
//! - OpenSSL and BoringSSL, either as a shared `libssl.so*` or linked
//!   statically into an executable that exports the `SSL_*` symbols (`node`).
//! - Bun, which links BoringSSL statically and strips its symbols:
//!   `SSL_write` and `SSL_do_handshake` are found by their structure (see
//!   `bun.rs`), or the file is refused with the reason.
//! - Go executables, where `crypto/tls.(*Conn).Write` is hooked on entry and on
//!   every RET instruction (uretprobes corrupt Go stacks, which move).

mod bun;
mod elf;
mod flow;
mod go;
mod gopclntab;
mod procfs;
mod runtime;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use bun::BunMiss;
pub use gopclntab::PclntabError;
pub use procfs::{parse_maps, process_files, process_tls_files, MapsEntry, ProcessFiles};
pub use runtime::{openssl_version, runtimes_in, FileRole, Runtime, RuntimeKind, RUSTLS_REASON};

/// Go programs built from tests/e2e/goclient, for tests.
#[cfg(test)]
pub(crate) use go::tests::go_builds as go_test_binaries;

/// A function (or data object) located in an ELF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Symbol {
    /// Link-time virtual address (`st_value`).
    pub vaddr: u64,
    /// Offset of the first byte in the file, where a uprobe is attached.
    pub file_offset: u64,
    /// Size in bytes (`st_size`).
    pub size: u64,
}

/// Which TLS library a file carries, guessed from marker symbols. Only used
/// for logs and for choosing argument layouts that differ between flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SslFlavour {
    OpenSsl3,
    OpenSsl11,
    BoringSsl,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenSslTarget {
    pub ssl_write: Symbol,
    pub ssl_write_ex: Option<Symbol>,
    pub do_handshake: Option<Symbol>,
    pub connect: Option<Symbol>,
    /// `SSL_read` and `SSL_read_ex` may drive the handshake too (Node.js
    /// starts it with `SSL_read`); with a memory BIO their output leaves
    /// after they return, which is how such objects find their socket.
    pub read: Option<Symbol>,
    pub read_ex: Option<Symbol>,
    pub set_fd: Option<Symbol>,
    pub set_wfd: Option<Symbol>,
    pub set_bio: Option<Symbol>,
    pub flavour: SslFlavour,
    /// For a stripped Bun executable, whose functions were located by their
    /// structure rather than by symbols: the Bun version.
    pub bun_version: Option<String>,
    /// Where the session's write key is set (the ciphertext strategy), in
    /// this file or, for a shared libssl, in its libcrypto.
    pub key_hook: Option<KeyHook>,
}

/// `EVP_CipherInit_ex`, through which OpenSSL 1.1 and 3.x set every TLS
/// record key: the ciphertext strategy derives the GHASH key there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyHook {
    pub path: PathBuf,
    pub cipher_init: Symbol,
}

/// The crypto/tls functions that link a TLS 1.3 write key to its `*tls.Conn`
/// through arguments alone (bpf/gotls.bpf.h tells how).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoKeyCapture {
    /// `crypto/tls.(*Conn).handshakeContext` ...
    pub handshake: Symbol,
    /// ... and the file offsets of its RET instructions.
    pub handshake_rets: Vec<u64>,
    /// `crypto/tls.(*halfConn).encrypt`.
    pub encrypt: Symbol,
    /// `crypto/tls.(*halfConn).setTrafficSecret`.
    pub set_traffic_secret: Symbol,
    /// `crypto/tls.aeadAESGCMTLS13`.
    pub aead_tls13: Symbol,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoTarget {
    /// `crypto/tls.(*Conn).Write`.
    pub write: Symbol,
    /// File offsets of every RET instruction inside `write`, in address order.
    pub ret_offsets: Vec<u64>,
    /// Link-time addresses of `net.(*TCPConn).Close` and `net.(*TCPConn).Write`:
    /// the first and last method pointers of the itab of a `net.Conn` holding
    /// a `*net.TCPConn`. Finding them in the itab word of the `net.Conn` inside
    /// `tls.Conn` tells that the underlying connection is a plain TCP socket
    /// whose fd can be followed (S2), without the itab's own symbol, which
    /// stripped binaries lack.
    pub tcpconn_close_vaddr: u64,
    pub tcpconn_write_vaddr: u64,
    /// For example `go1.19.8`, from `.go.buildinfo` (or `runtime.buildVersion`).
    pub go_version: Option<String>,
    /// Where the ciphertext strategy learns TLS 1.3 write keys; `None` when a
    /// function is missing (inlined or renamed), so sessions stay unknown.
    pub key_capture: Option<GoKeyCapture>,
    /// `ET_DYN`: runtime addresses are link-time addresses plus a load bias.
    pub is_pie: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// One value per inspected file, short-lived: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum TlsTarget {
    OpenSsl(OpenSslTarget),
    Go(GoTarget),
}

/// Identity of a file for "attach once per file" bookkeeping.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: malformed ELF file: {source}", path.display())]
    Elf {
        path: PathBuf,
        source: object::read::Error,
    },

    #[error("{}: {symbol} at {vaddr:#x} (size {size}) is not backed by a PT_LOAD segment of the file", path.display())]
    NotInFile {
        path: PathBuf,
        symbol: String,
        vaddr: u64,
        size: u64,
    },

    /// A Go executable whose function table cannot be found or read.
    #[error("{}: Go binary ({}): {source}", path.display(), go_version.as_deref().unwrap_or("unknown version"))]
    GoPclntab {
        path: PathBuf,
        go_version: Option<String>,
        source: PclntabError,
    },

    /// A Go executable with crypto/tls but without the `*net.TCPConn`
    /// methods that identify a TCP connection: the fd behind a write could
    /// not be trusted, so the binary is not hooked.
    #[error("{}: Go binary ({}) has crypto/tls but no {function} in its function table, so the connection behind a write cannot be identified", path.display(), go_version.as_deref().unwrap_or("unknown version"))]
    GoNoTcpConn {
        path: PathBuf,
        go_version: Option<String>,
        function: &'static str,
    },

    #[error("{}: Go binary for ELF machine {machine} is not supported (RET offsets are only computed for x86-64)", path.display())]
    GoUnsupportedArch { path: PathBuf, machine: u16 },

    #[error("{}: cannot decode the instruction at {vaddr:#x} inside {function}", path.display())]
    GoDecode {
        path: PathBuf,
        function: &'static str,
        vaddr: u64,
    },

    #[error("{}: {function} at {vaddr:#x} contains no RET instruction", path.display())]
    GoNoRet {
        path: PathBuf,
        function: &'static str,
        vaddr: u64,
    },

    /// A Bun executable in which `SSL_write` or `SSL_do_handshake` cannot be
    /// located with certainty: it is not hooked rather than hooked on a guess.
    #[error("{}: Bun {version}: cannot locate BoringSSL's SSL_write and SSL_do_handshake without symbols: {miss}; not hooked", path.display())]
    BunUnlocated {
        path: PathBuf,
        version: String,
        miss: BunMiss,
    },

    #[error("cannot inspect process through {}: {source}", path.display())]
    Proc { path: PathBuf, source: io::Error },
}

impl TargetError {
    /// True when the file was read fine but kloak cannot hook it (as opposed
    /// to I/O failures or corrupt files), so callers can log it as a skip.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            TargetError::GoPclntab { .. }
                | TargetError::GoNoTcpConn { .. }
                | TargetError::GoUnsupportedArch { .. }
                | TargetError::GoNoRet { .. }
                | TargetError::BunUnlocated { .. }
        )
    }
}

/// A file's inspection: what kloak hooks in it, and every TLS stack in it
/// that kloak cannot hook (rustls, a Bun or Go build it cannot read), so that
/// nothing a protected process runs goes unprotected silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inspection {
    pub target: Option<TlsTarget>,
    pub unhooked: Vec<Runtime>,
}

/// [`inspect`], plus the TLS stacks left unhooked; the file is read once.
pub fn inspect_fully(path: &Path) -> Result<Inspection, TargetError> {
    let data = std::fs::read(path).map_err(|source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(file) = elf::ElfImage::parse(path, &data)? else {
        return Ok(Inspection::default());
    };
    // The role only tells shared from static OpenSSL apart, and those are hooked.
    let (target, runtimes) = runtime::inspect_with_runtimes(&file, &data, FileRole::Executable)?;
    let unhooked = runtimes
        .into_iter()
        .filter(|runtime| runtime.unhookable.is_some())
        .collect();
    Ok(Inspection { target, unhooked })
}

/// Decides whether the ELF file at `path` can be hooked and where.
///
/// Returns `Ok(None)` for anything that is not a 64-bit ELF executable or
/// shared object carrying a supported TLS implementation (including non-ELF
/// files). Go binaries are read through their function table, stripped or not;
/// a Bun executable whose TLS functions cannot be located with certainty
/// yields [`TargetError::BunUnlocated`].
pub fn inspect(path: &Path) -> Result<Option<TlsTarget>, TargetError> {
    let data = std::fs::read(path).map_err(|source| TargetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    inspect_bytes(path, &data)
}

fn inspect_bytes(path: &Path, data: &[u8]) -> Result<Option<TlsTarget>, TargetError> {
    let Some(file) = elf::ElfImage::parse(path, data)? else {
        tracing::trace!(path = %path.display(), "not a 64-bit ELF executable or shared object");
        return Ok(None);
    };
    inspect_image(&file)
}

fn inspect_image(file: &elf::ElfImage<'_>) -> Result<Option<TlsTarget>, TargetError> {
    if go::is_go(file) {
        if let Some(target) = go::inspect(file)? {
            return Ok(Some(TlsTarget::Go(target)));
        }
        // A Go program without crypto/tls may still call OpenSSL through cgo.
    }
    if let Some(mut target) = elf::inspect_openssl(file)? {
        if target.key_hook.is_none() {
            target.key_hook = sibling_key_hook(file.path);
        }
        return Ok(Some(TlsTarget::OpenSsl(target)));
    }
    match bun::version(file) {
        Some(version) => bun::inspect(file, &version).map(|t| Some(TlsTarget::OpenSsl(t))),
        None => Ok(None),
    }
}

/// A shared libssl's keys are set in the libcrypto next to it, named with the
/// same version suffix (`libssl.so.3` and `libcrypto.so.3`). None when there
/// is no such file or it lacks the function: the ciphertext strategy then
/// reports the session as unknown (fail closed).
fn sibling_key_hook(libssl: &Path) -> Option<KeyHook> {
    let name = libssl.file_name()?.to_str()?;
    let suffix = name.strip_prefix("libssl")?;
    let path = libssl.with_file_name(format!("libcrypto{suffix}"));
    let data = std::fs::read(&path).ok()?;
    let image = elf::ElfImage::parse(&path, &data).ok()??;
    match elf::cipher_init(&image) {
        Ok(Some(cipher_init)) => Some(KeyHook {
            path: path.clone(),
            cipher_init,
        }),
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(%err, "no session keys from this libcrypto");
            None
        }
    }
}

/// Device and inode of `path` (following symlinks, so `/proc/<pid>/exe` and
/// `/proc/<pid>/root/...` name the file they point to).
pub fn file_id(path: &Path) -> io::Result<FileId> {
    let meta = std::fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl TlsTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenSsl(_) => "openssl",
            Self::Go(_) => "go",
        }
    }
}

/// Shared OpenSSL libraries in the usual library directories of `root`.
pub fn system_tls_libraries(root: &Path) -> Vec<PathBuf> {
    const DIRS: &[&str] = &[
        "lib",
        "lib64",
        "usr/lib",
        "usr/lib64",
        "usr/local/lib",
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib/aarch64-linux-gnu",
        "usr/lib/aarch64-linux-gnu",
    ];
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with("libssl.so") {
                continue;
            }
            let path = entry.path();
            if let Ok(id) = file_id(&path) {
                if seen.insert(id) {
                    found.push(path);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn non_elf_file_is_not_a_target() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"#!/bin/sh\necho not an ELF file\n").unwrap();
        assert_eq!(inspect(f.path()).unwrap(), None);
    }

    #[test]
    fn empty_and_truncated_files_are_not_targets_or_are_errors() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(inspect(f.path()).unwrap(), None);

        // A valid ELF64 identification followed by garbage must be reported
        // as malformed, never panic.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01\x00garbage").unwrap();
        let err = inspect(f.path()).unwrap_err();
        assert!(matches!(err, TargetError::Elf { .. }), "{err}");
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_file() {
        let err = inspect(Path::new("/nonexistent/kloak/libssl.so.3")).unwrap_err();
        assert!(matches!(err, TargetError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/kloak/libssl.so.3"));
    }

    #[test]
    fn elf_without_tls_is_not_a_target() {
        let path = Path::new("/bin/true");
        if !path.exists() {
            eprintln!("skipping: {} not present", path.display());
            return;
        }
        assert_eq!(inspect(path).unwrap(), None);
    }

    #[test]
    fn file_id_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lib");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let a = file_id(&file).unwrap();
        assert_eq!(a, file_id(&link).unwrap());
        assert_ne!(a.ino, 0);
    }

    #[test]
    fn unsupported_errors_are_distinguished() {
        let no_tcp = TargetError::GoNoTcpConn {
            path: PathBuf::from("/app/server"),
            go_version: Some("go1.19.8".into()),
            function: "net.(*TCPConn).Close",
        };
        assert!(no_tcp.is_unsupported());
        assert_eq!(
            no_tcp.to_string(),
            "/app/server: Go binary (go1.19.8) has crypto/tls but no net.(*TCPConn).Close in its function table, so the connection behind a write cannot be identified"
        );
        let old = TargetError::GoPclntab {
            path: PathBuf::from("/app/old"),
            go_version: None,
            source: PclntabError::UnsupportedVersion { magic: 0xffff_fffa },
        };
        assert!(old.is_unsupported());
        assert_eq!(
            old.to_string(),
            "/app/old: Go binary (unknown version): function table magic 0xfffffffa is not a Go 1.18+ table (older Go releases are not supported)"
        );
        let io = TargetError::Io {
            path: PathBuf::from("/x"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(!io.is_unsupported());
    }
}
