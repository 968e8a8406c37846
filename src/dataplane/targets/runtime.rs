//! Which TLS runtimes a file carries, whether kloak can hook each, and why not.
//!
//! [`super::inspect`] answers "where do the probes go"; this answers "what is
//! in there" for `kloak doctor`, including the runtimes kloak cannot hook
//! (rustls, unlocated Bun builds, unusual Go builds), so a user learns why a placeholder went out
//! unchanged. Hookability comes from the same inspection the hooking code runs.

use std::path::Path;

use memchr::memmem;

use super::elf::ElfImage;
use super::{inspect_image, SslFlavour, TargetError, TlsTarget};

/// How a process uses a file: the OpenSSL found in an executable is linked
/// in statically, the one in a mapped library is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Executable,
    Library,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum RuntimeKind {
    /// OpenSSL or BoringSSL as a shared `libssl` (curl, Python, Ruby, ...).
    SharedLibssl,
    /// OpenSSL or BoringSSL linked into the executable, its `SSL_*` symbols
    /// kept (Node.js).
    StaticOpenSsl,
    /// Go's `crypto/tls`.
    Go,
    /// Bun: BoringSSL linked in statically, symbols stripped.
    Bun,
    /// rustls, compiled into a Rust program.
    Rustls,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SharedLibssl => "shared-libssl",
            Self::StaticOpenSsl => "static-openssl",
            Self::Go => "go",
            Self::Bun => "bun",
            Self::Rustls => "rustls",
        }
    }
}

/// One TLS implementation found in a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Runtime {
    pub kind: RuntimeKind,
    /// OpenSSL-compatible libraries only.
    pub flavour: Option<SslFlavour>,
    /// `3.0.19`, `go1.19.8`, `1.4.5`; `None` when the file does not say.
    pub version: Option<String>,
    /// Go only: the binary has no symbol table.
    pub stripped: bool,
    /// Why kloak cannot hook it; `None` when [`super::inspect`] finds its
    /// write function.
    pub unhookable: Option<String>,
}

/// Why rustls cannot be hooked. Kept here so the doctor and the README say the same.
pub const RUSTLS_REASON: &str = "rustls's plaintext write path (Writer::write into \
    ConnectionCommon::buffer_plaintext) is generic Rust code, monomorphized and inlined into each \
    program, with no stable symbol or calling convention to probe; and rustls never touches the \
    socket (the program moves the encrypted records later, with write_tls), so a write could not \
    be tied to its connection";

/// Why a Bun executable whose release kloak cannot read is not hooked.
pub const BUN_REASON: &str = "a Bun executable without the release string kloak reads its version \
    from: its stripped BoringSSL is not searched, so nothing is hooked";

/// Bun's version banner, `Bun v1.4.5`.
const BUN_BANNER: &[u8] = b"Bun v";
/// The section Bun keeps its embedded code in (also in `bun build --compile`
/// programs): a mere mention of Bun in some string does not make a file Bun.
const BUN_SECTION: &str = ".bun";
/// Cargo's registry path of the crate, `rustls-0.23.12/src/...`, kept in panic
/// locations even when symbols are stripped.
const RUSTLS_CRATE: &[u8] = b"rustls-";
/// Legacy-mangled symbols of the crate, `_ZN6rustls...`, in unstripped binaries.
const RUSTLS_SYMBOL: &[u8] = b"6rustls";
/// OpenSSL's version text, `OpenSSL 3.0.19 27 Jan 2026`.
const OPENSSL_BANNER: &[u8] = b"OpenSSL ";

/// Every TLS runtime in the ELF file `data` (read from `path`, for errors).
/// Non-ELF files and ELF files without TLS yield none; I/O-free, so tests
/// can feed any bytes.
pub fn runtimes_in(path: &Path, data: &[u8], role: FileRole) -> Result<Vec<Runtime>, TargetError> {
    let Some(file) = ElfImage::parse(path, data)? else {
        return Ok(Vec::new());
    };
    Ok(inspect_with_runtimes(&file, data, role)?.1)
}

/// The hookable target in an already parsed ELF image, and every TLS runtime in it. Locating
/// Bun's functions is the costly part of an inspection (a minute under qemu TCG): done once.
pub(super) fn inspect_with_runtimes(
    file: &ElfImage<'_>,
    data: &[u8],
    role: FileRole,
) -> Result<(Option<TlsTarget>, Vec<Runtime>), TargetError> {
    let inspected = match inspect_image(file) {
        Err(err) if !err.is_unsupported() => return Err(err),
        inspected => inspected,
    };
    let runtimes = runtimes_of(file, data, role, &inspected);
    // An unsupported stack is among the runtimes, with its reason.
    Ok((inspected.unwrap_or_default(), runtimes))
}

/// Every TLS runtime in `file`, given what inspecting it for a hookable target found; an error
/// there is one that says the stack cannot be hooked ([`TargetError::is_unsupported`]).
fn runtimes_of(
    file: &ElfImage<'_>,
    data: &[u8],
    role: FileRole,
    inspected: &Result<Option<TlsTarget>, TargetError>,
) -> Vec<Runtime> {
    let mut found = Vec::new();
    match inspected {
        Ok(Some(TlsTarget::Go(target))) => found.push(Runtime {
            kind: RuntimeKind::Go,
            flavour: None,
            version: target.go_version.clone(),
            stripped: !file.has_symtab(),
            unhookable: None,
        }),
        Ok(Some(TlsTarget::OpenSsl(target))) => {
            let kind = match (&target.bun_version, role) {
                (Some(_), _) => RuntimeKind::Bun,
                (None, FileRole::Executable) => RuntimeKind::StaticOpenSsl,
                (None, FileRole::Library) => RuntimeKind::SharedLibssl,
            };
            found.push(Runtime {
                kind,
                flavour: Some(target.flavour),
                stripped: target.bun_version.is_some(),
                version: target.bun_version.clone().or_else(|| openssl_version(data)),
                unhookable: None,
            });
        }
        Ok(None) => {}
        Err(err) => {
            let (kind, version) = match err {
                TargetError::BunUnlocated { version, .. } => {
                    (RuntimeKind::Bun, Some(version.clone()))
                }
                TargetError::GoPclntab { go_version, .. }
                | TargetError::GoNoTcpConn { go_version, .. } => {
                    (RuntimeKind::Go, go_version.clone())
                }
                _ => (RuntimeKind::Go, None),
            };
            found.push(Runtime {
                kind,
                flavour: (kind == RuntimeKind::Bun).then_some(SslFlavour::BoringSsl),
                version,
                stripped: kind == RuntimeKind::Bun || !file.has_symtab(),
                unhookable: Some(err.to_string()),
            });
        }
    }
    let has_bun = found.iter().any(|r| r.kind == RuntimeKind::Bun);
    let has_openssl = found.iter().any(|r| r.flavour.is_some());
    if !has_bun && !has_openssl && file.has_section(BUN_SECTION) {
        found.push(Runtime {
            kind: RuntimeKind::Bun,
            flavour: Some(SslFlavour::BoringSsl),
            version: bun_version(data),
            stripped: true,
            unhookable: Some(BUN_REASON.to_owned()),
        });
    }
    if let Some(version) = rustls_version(data) {
        found.push(Runtime {
            kind: RuntimeKind::Rustls,
            flavour: None,
            version,
            stripped: false,
            unhookable: Some(RUSTLS_REASON.to_owned()),
        });
    }
    found
}

fn contains(data: &[u8], needle: &[u8]) -> bool {
    memmem::find(data, needle).is_some()
}

/// The version in OpenSSL's banner (`OpenSSL 3.0.19 27 Jan 2026` -> `3.0.19`),
/// found in libcrypto or in a binary that links OpenSSL statically. Other
/// mentions of OpenSSL (`OpenSSL 1.1.1 or newer`) are skipped: the banner is
/// the one followed by a release date.
pub fn openssl_version(data: &[u8]) -> Option<String> {
    memmem::find_iter(data, OPENSSL_BANNER).find_map(|at| {
        let text = c_string(&data[at + OPENSSL_BANNER.len()..], 64)?;
        let mut words = text.split_ascii_whitespace();
        let version = words.next()?;
        let dated = words.next_back()?.parse::<u16>().is_ok_and(|y| y > 1990);
        (dated && is_release(version)).then(|| version.to_owned())
    })
}

/// `3.0.19` or `1.1.1w`: digits and dots, optionally a letter suffix.
fn is_release(version: &str) -> bool {
    let numeric = version.trim_end_matches(|c: char| c.is_ascii_lowercase());
    numeric.split('.').count() == 3
        && numeric
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// Printable ASCII up to the next NUL, at most `max` bytes; `None` otherwise.
fn c_string(data: &[u8], max: usize) -> Option<&str> {
    let end = data.iter().take(max).position(|&b| b == 0)?;
    let text = std::str::from_utf8(&data[..end]).ok()?;
    text.bytes()
        .all(|b| b == b' ' || b.is_ascii_graphic())
        .then_some(text)
}

/// Bun's version, from its banner.
fn bun_version(data: &[u8]) -> Option<String> {
    memmem::find_iter(data, BUN_BANNER).find_map(|at| {
        let version = leading(&data[at + BUN_BANNER.len()..], |b| {
            b.is_ascii_digit() || b == b'.'
        });
        (version.contains('.') && !version.ends_with('.')).then(|| version.to_owned())
    })
}

/// `Some(version)` when rustls is compiled in (`Some(None)`: in, version unknown).
fn rustls_version(data: &[u8]) -> Option<Option<String>> {
    let versioned = memmem::find_iter(data, RUSTLS_CRATE).find_map(|at| {
        let version = leading(&data[at + RUSTLS_CRATE.len()..], |b| {
            b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
        });
        // `rustls-0.23.12/`: other crates of the family (`rustls-pki-types-1.0`)
        // are not rustls itself.
        (version.starts_with(|c: char| c.is_ascii_digit()) && version.contains('.'))
            .then(|| version.to_owned())
    });
    match versioned {
        Some(version) => Some(Some(version)),
        None => contains(data, RUSTLS_SYMBOL).then_some(None),
    }
}

/// The longest prefix of `data` whose bytes satisfy `keep`, as text.
fn leading(data: &[u8], keep: impl Fn(u8) -> bool) -> &str {
    let end = data.iter().take(32).take_while(|&&b| keep(b)).count();
    // Only ASCII bytes were kept.
    std::str::from_utf8(&data[..end]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::go::tests::go_builds;
    use super::*;

    fn runtimes(path: &Path, role: FileRole) -> Option<Vec<Runtime>> {
        let Ok(data) = std::fs::read(path) else {
            eprintln!("skipping: {} not present", path.display());
            return None;
        };
        Some(runtimes_in(path, &data, role).expect("inspectable"))
    }

    #[test]
    fn openssl_banner_versions() {
        assert_eq!(
            openssl_version(b"x\0OpenSSL 3.0.19 27 Jan 2026\0y"),
            Some("3.0.19".into())
        );
        assert_eq!(
            openssl_version(b"OpenSSL 1.1.1 or newer\0OpenSSL 1.1.1w  11 Sep 2023\0"),
            Some("1.1.1w".into())
        );
        assert_eq!(openssl_version(b"OpenSSL 3.0.19 unterminated"), None);
        assert_eq!(openssl_version(b"OpenSSL 3 27 Jan 2026\0"), None);
        assert_eq!(openssl_version(b""), None);
    }

    #[test]
    fn bun_and_rustls_markers() {
        assert_eq!(
            bun_version(b"Bun vNext\0Bun v1.4.5 (Linux x64)"),
            Some("1.4.5".into())
        );
        assert_eq!(bun_version(b"Bun v1."), None);
        assert_eq!(
            rustls_version(b"rustls-pki-types-1.16.0/src\0rustls-0.23.46/src/conn.rs"),
            Some(Some("0.23.46".into()))
        );
        assert_eq!(rustls_version(b"_ZN6rustls4conn10Connection"), Some(None));
        assert_eq!(rustls_version(b"rustls-webpki-0.103.1/src"), None);
    }

    #[test]
    fn non_elf_bytes_have_no_runtime() {
        let found = runtimes_in(Path::new("x"), b"#!/bin/sh\n", FileRole::Executable);
        assert_eq!(found.expect("not an error"), Vec::new());
    }

    #[test]
    fn shared_libssl_is_hookable() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Some(found) = runtimes(path, FileRole::Library) else {
            return;
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, RuntimeKind::SharedLibssl);
        assert_eq!(found[0].flavour, Some(SslFlavour::OpenSsl3));
        assert_eq!(found[0].unhookable, None);
        // libssl has no banner: its version is libcrypto's.
        let crypto = std::fs::read("/usr/lib/x86_64-linux-gnu/libcrypto.so.3").expect("libcrypto");
        assert!(openssl_version(&crypto).is_some_and(|v| v.starts_with("3.")));
    }

    #[test]
    fn node_carries_static_openssl_with_its_version() {
        let Some(found) = runtimes(Path::new("/usr/bin/node"), FileRole::Executable) else {
            return;
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, RuntimeKind::StaticOpenSsl);
        assert!(found[0]
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("3.")));
        assert_eq!(found[0].unhookable, None);
    }

    #[test]
    fn go_binaries_with_and_without_symbols() {
        let Some(builds) = go_builds() else {
            eprintln!("skipping: KLOAK_GO_TOOLCHAINS=none");
            return;
        };
        for build in builds {
            let found = runtimes(&build.path, FileRole::Executable).expect("built");
            assert_eq!(found.len(), 1, "{}: {found:?}", build.path.display());
            assert_eq!(found[0].kind, RuntimeKind::Go);
            assert_eq!(
                found[0].stripped,
                build.stripped,
                "{}",
                build.path.display()
            );
            assert_eq!(found[0].version.as_deref(), Some(build.go_version.as_str()));
            // Stripped or not, the function table gives kloak what it hooks.
            assert_eq!(found[0].unhookable, None, "{}", build.path.display());
        }
    }

    #[test]
    fn rust_program_with_rustls_is_reported_unhookable() {
        // kloak itself serves its webhook with rustls.
        let exe = std::env::current_exe().expect("test binary");
        let Some(found) = runtimes(&exe, FileRole::Executable) else {
            return;
        };
        let rustls: Vec<_> = found
            .iter()
            .filter(|r| r.kind == RuntimeKind::Rustls)
            .collect();
        assert_eq!(rustls.len(), 1, "{found:?}");
        assert!(rustls[0]
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("0.")));
        assert_eq!(rustls[0].unhookable.as_deref(), Some(RUSTLS_REASON));
    }

    #[test]
    fn elf_without_tls_has_no_runtime() {
        if let Some(found) = runtimes(Path::new("/bin/true"), FileRole::Executable) {
            assert_eq!(found, Vec::new());
        }
    }
}
