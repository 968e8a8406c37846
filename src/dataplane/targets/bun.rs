//! Bun: BoringSSL linked into a stripped executable, without `SSL_*` symbols
//! or unwind tables.
//!
//! `SSL_write` and `SSL_do_handshake` are recognised by what their source
//! code does rather than by their bytes, which change with every compiler and
//! build flag. BoringSSL reports errors with `OPENSSL_PUT_ERROR`, which passes
//! the library, a reason code and the source file name (`ssl/ssl_lib.cc`) to
//! `ERR_put_error`. Following each candidate function's control flow gives the
//! set of reasons it can report:
//! - `SSL_write` is the one function of `ssl_lib.cc` that reports
//!   `SSL_R_UNINITIALIZED`, `SSL_R_SSL_HANDSHAKE_FAILURE` and `SSL_R_BAD_LENGTH`
//!   (and, in newer BoringSSL, `ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED` for QUIC),
//!   and nothing else;
//! - `SSL_do_handshake` is the function `SSL_write` calls whose only report
//!   is `SSL_R_CONNECTION_TYPE_NOT_SET`, and it must also be the one function
//!   found from that reason's own report sites.
//!
//! Each must match exactly once; anything else refuses the file with the
//! reason, so a probe is never placed on a guess. Bun's uSockets drives every
//! TLS connection through these two functions, with a BIO that sends on the
//! socket from inside them, which is what connection attribution needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use memchr::memmem;

use super::elf::{ElfImage, Segment};
use super::flow::{self, CodeRegion, Walk, ERR_LIB_SSL};
use super::{OpenSslTarget, SslFlavour, Symbol, TargetError};

/// In every Bun executable (the upgrade command's download URL), followed by
/// the version.
const RELEASE_MARKER: &[u8] = b"oven-sh/bun/releases/download/bun-v";
/// The tail of the `__FILE__` BoringSSL's `ssl/ssl_lib.cc` reports errors
/// with; the directory before it differs between Bun builds.
const SSL_LIB_FILE: &[u8] = b"ssl/ssl_lib.cc\0";

// Reason codes from BoringSSL's include/openssl/{err,ssl}.h. BoringSSL only
// ever appends reason codes, so these numbers hold across versions.
const ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED: u64 = 66;
const SSL_R_BAD_LENGTH: u64 = 111;
const SSL_R_CONNECTION_TYPE_NOT_SET: u64 = 134;
const SSL_R_SSL_HANDSHAKE_FAILURE: u64 = 215;
const SSL_R_UNINITIALIZED: u64 = 226;

const WRITE_REASONS: &[u64] = &[
    SSL_R_UNINITIALIZED,
    SSL_R_SSL_HANDSHAKE_FAILURE,
    SSL_R_BAD_LENGTH,
];
const WRITE_OPTIONAL_REASONS: &[u64] = &[ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED];

/// How far before an error report its function's entry is looked for.
const ENTRY_WINDOW: u64 = 16 * 1024;
/// Longer than any real version string; bounds what a corrupt file can make
/// us copy into logs.
const MAX_VERSION_LEN: usize = 32;

const SSL_WRITE: &str = "SSL_write";
const SSL_DO_HANDSHAKE: &str = "SSL_do_handshake";

/// The Bun version when `file` is a Bun executable (also one made with
/// `bun build --compile`, which is Bun itself with the program appended).
pub(super) fn version(file: &ElfImage<'_>) -> Option<String> {
    file.load_segments()
        .iter()
        .filter(|segment| !segment.executable)
        .find_map(|segment| {
            let at = memmem::find(segment.bytes, RELEASE_MARKER)?;
            let rest = &segment.bytes[at + RELEASE_MARKER.len()..];
            let len = rest
                .iter()
                .take(MAX_VERSION_LEN)
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
                .count();
            (len > 0).then(|| String::from_utf8_lossy(&rest[..len]).into_owned())
        })
}

/// Why `SSL_write` or `SSL_do_handshake` could not be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BunMiss {
    #[error("no BoringSSL ssl_lib.cc error reports in the file (built without file names?)")]
    NoErrorReports,
    #[error("no function reports exactly SSL_write's errors")]
    NotFound,
    #[error("{} functions report SSL_write's errors (at {}), cannot tell which runs", .0.len(), hex_list(.0))]
    Ambiguous(Vec<u64>),
    #[error(
        "SSL_write at {write:#x} calls no function that reports only SSL_do_handshake's error"
    )]
    HandshakeNotFound { write: u64 },
    #[error("SSL_write at {write:#x} calls {} functions that report SSL_do_handshake's error (at {})", .handshakes.len(), hex_list(.handshakes))]
    HandshakeAmbiguous { write: u64, handshakes: Vec<u64> },
    #[error("SSL_do_handshake called from SSL_write is at {called:#x}, but its error is reported from {found}")]
    HandshakeMismatch { called: u64, found: String },
    #[error("{what} at {vaddr:#x} is not backed by the file")]
    NotInFile { what: &'static str, vaddr: u64 },
}

fn hex_list(addrs: &[u64]) -> String {
    addrs
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Locates `SSL_write` and `SSL_do_handshake` in the Bun executable `file`.
pub(super) fn inspect(file: &ElfImage<'_>, version: &str) -> Result<OpenSslTarget, TargetError> {
    let refuse = |miss: BunMiss| TargetError::BunUnlocated {
        path: file.path.to_path_buf(),
        version: version.to_string(),
        miss,
    };
    let segments = file.load_segments();
    let files = error_file_names(&segments);
    if files.is_empty() {
        return Err(refuse(BunMiss::NoErrorReports));
    }
    let mut functions = Functions::new(files);
    for code in segments.iter().filter(|s| s.executable) {
        functions.add_region(CodeRegion {
            vaddr: code.vaddr,
            bytes: code.bytes,
        });
    }
    let (write, handshake) = functions.ssl_write_and_handshake().map_err(refuse)?;
    let symbol = |what: &'static str, walk: &Walk| {
        let size = walk.contiguous_len();
        file.vaddr_to_offset(walk.entry, size)
            .map(|file_offset| Symbol {
                vaddr: walk.entry,
                file_offset,
                size,
            })
            .ok_or(BunMiss::NotInFile {
                what,
                vaddr: walk.entry,
            })
    };
    let target = OpenSslTarget {
        ssl_write: symbol(SSL_WRITE, write).map_err(refuse)?,
        ssl_write_ex: None,
        do_handshake: Some(symbol(SSL_DO_HANDSHAKE, handshake).map_err(refuse)?),
        connect: None,
        // uSockets' BIO sends from inside SSL_write and the handshake, so
        // those two calls attribute every connection; no memory BIO here.
        read: None,
        read_ex: None,
        set_fd: None,
        set_wfd: None,
        set_bio: None,
        flavour: SslFlavour::BoringSsl,
        bun_version: Some(version.to_string()),
        // Bun's BoringSSL sets keys through EVP_AEAD, stripped: not located.
        key_hook: None,
    };
    tracing::debug!(path = %file.path.display(), ?target, "Bun with BoringSSL located");
    Ok(target)
}

/// Addresses of the strings ending in `ssl/ssl_lib.cc` in the read-only data.
fn error_file_names(segments: &[Segment<'_>]) -> BTreeSet<u64> {
    let mut names = BTreeSet::new();
    for segment in segments.iter().filter(|s| !s.executable) {
        for at in memmem::find_iter(segment.bytes, SSL_LIB_FILE) {
            let start = segment.bytes[..at]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(0, |nul| nul + 1);
            names.insert(segment.vaddr + start as u64);
        }
    }
    names
}

/// The functions that contain an instruction loading one of the file names,
/// walked from their entries.
struct Functions<'data> {
    /// Addresses of the error file names.
    files: BTreeSet<u64>,
    regions: Vec<CodeRegion<'data>>,
    /// Entry of the function containing each load site.
    site_entries: BTreeMap<u64, u64>,
    /// Every walk made, by entry (`None`: not a function).
    walks: HashMap<u64, Option<Walk>>,
}

impl<'data> Functions<'data> {
    fn new(files: BTreeSet<u64>) -> Self {
        Functions {
            files,
            regions: Vec::new(),
            site_entries: BTreeMap::new(),
            walks: HashMap::new(),
        }
    }

    fn add_region(&mut self, code: CodeRegion<'data>) {
        self.regions.push(code);
        let sites = load_sites(code, &self.files);
        if sites.is_empty() {
            return;
        }
        let entries = call_targets_near(code, &sites);
        for &site in &sites {
            // The nearest function entry whose flow reaches the site contains
            // it; entries are taken from direct calls, so a loop head or a
            // stray byte pattern is not one.
            let lower = site.saturating_sub(ENTRY_WINDOW);
            let found = entries
                .range(lower..=site)
                .rev()
                .copied()
                .find(|&entry| self.walk(entry).is_some_and(|w| w.reaches(site)));
            if let Some(entry) = found {
                self.site_entries.insert(site, entry);
            }
        }
    }

    fn walk(&mut self, entry: u64) -> Option<&Walk> {
        let (regions, files) = (&self.regions, &self.files);
        self.walks
            .entry(entry)
            .or_insert_with(|| {
                let code = regions
                    .iter()
                    .find(|r| entry >= r.vaddr && entry - r.vaddr < r.bytes.len() as u64)?;
                flow::walk(*code, entry, files)
                    .inspect_err(|err| tracing::trace!(entry, %err, "not a function"))
                    .ok()
            })
            .as_ref()
    }

    fn function(&self, entry: u64) -> Option<&Walk> {
        self.walks.get(&entry)?.as_ref()
    }

    /// Entries of the functions found from load sites, deduplicated.
    fn entries(&self) -> BTreeSet<u64> {
        self.site_entries.values().copied().collect()
    }

    fn ssl_write_and_handshake(&mut self) -> Result<(&Walk, &Walk), BunMiss> {
        if self.site_entries.is_empty() {
            return Err(BunMiss::NoErrorReports);
        }
        let writes: Vec<u64> = self
            .entries()
            .into_iter()
            .filter(|&entry| {
                self.function(entry)
                    .and_then(|w| w.reasons(ERR_LIB_SSL))
                    .is_some_and(|reasons| is_write_reasons(&reasons))
            })
            .collect();
        let write = match writes.as_slice() {
            [] => return Err(BunMiss::NotFound),
            [write] => *write,
            _ => return Err(BunMiss::Ambiguous(writes)),
        };
        let calls = self
            .function(write)
            .map(|w| w.calls.clone())
            .unwrap_or_default();
        let handshakes: Vec<u64> = calls
            .into_iter()
            .filter(|&callee| {
                self.walk(callee)
                    .and_then(|w| w.reasons(ERR_LIB_SSL))
                    .is_some_and(|r| r == BTreeSet::from([SSL_R_CONNECTION_TYPE_NOT_SET]))
            })
            .collect();
        let handshake = match handshakes.as_slice() {
            [] => return Err(BunMiss::HandshakeNotFound { write }),
            [handshake] => *handshake,
            _ => return Err(BunMiss::HandshakeAmbiguous { write, handshakes }),
        };
        // Independent check: the functions found from the reports of
        // SSL_R_CONNECTION_TYPE_NOT_SET are exactly that one.
        let reporting: BTreeSet<u64> = self
            .entries()
            .into_iter()
            .filter(|&entry| {
                self.function(entry)
                    .and_then(|w| w.reasons(ERR_LIB_SSL))
                    .is_some_and(|r| r.contains(&SSL_R_CONNECTION_TYPE_NOT_SET))
            })
            .collect();
        if reporting != BTreeSet::from([handshake]) {
            return Err(BunMiss::HandshakeMismatch {
                called: handshake,
                found: hex_list(&reporting.into_iter().collect::<Vec<_>>()),
            });
        }
        match (self.function(write), self.function(handshake)) {
            (Some(write), Some(handshake)) => Ok((write, handshake)),
            _ => Err(BunMiss::NotFound),
        }
    }
}

fn is_write_reasons(reasons: &BTreeSet<u64>) -> bool {
    WRITE_REASONS.iter().all(|r| reasons.contains(r))
        && reasons
            .iter()
            .all(|r| WRITE_REASONS.contains(r) || WRITE_OPTIONAL_REASONS.contains(r))
}

/// Addresses of instructions that may load a file name into the third or
/// fourth argument register: `mov ecx/edx, imm32` (executables linked below
/// 4 GiB) and `lea rcx/rdx, [rip + disp32]` (position-independent ones).
/// Candidates only: a walk from a function entry decides what is code.
fn load_sites(code: CodeRegion<'_>, files: &BTreeSet<u64>) -> BTreeSet<u64> {
    let bytes = code.bytes;
    let mut sites = BTreeSet::new();
    for &name in files {
        let Ok(imm) = u32::try_from(name) else {
            continue;
        };
        for at in memmem::find_iter(bytes, &imm.to_le_bytes()) {
            if at > 0 && matches!(bytes[at - 1], 0xb9 | 0xba) {
                sites.insert(code.vaddr + at as u64 - 1);
            }
        }
    }
    for opcode in [[0x48, 0x8d, 0x0d], [0x48, 0x8d, 0x15]] {
        for at in memmem::find_iter(bytes, &opcode) {
            let site = code.vaddr + at as u64;
            if file_loaded_at(code, site).is_some_and(|name| files.contains(&name)) {
                sites.insert(site);
            }
        }
    }
    sites
}

/// The address a `mov r32, imm32` or `lea r64, [rip + disp32]` at `site` loads.
fn file_loaded_at(code: CodeRegion<'_>, site: u64) -> Option<u64> {
    let at = usize::try_from(site.checked_sub(code.vaddr)?).ok()?;
    let bytes = code.bytes.get(at..)?;
    match bytes {
        [0xb9 | 0xba, imm @ ..] => Some(u64::from(u32::from_le_bytes(
            imm.get(..4)?.try_into().ok()?,
        ))),
        [0x48, 0x8d, 0x0d | 0x15, disp @ ..] => {
            let disp = i32::from_le_bytes(disp.get(..4)?.try_into().ok()?);
            (site + 7).checked_add_signed(i64::from(disp))
        }
        _ => None,
    }
}

/// Targets of direct calls (`E8 rel32`) anywhere in `code` that lie within
/// [`ENTRY_WINDOW`] before one of `sites`.
fn call_targets_near(code: CodeRegion<'_>, sites: &BTreeSet<u64>) -> BTreeSet<u64> {
    let bytes = code.bytes;
    let mut targets = BTreeSet::new();
    for at in memchr::memchr_iter(0xe8, bytes) {
        let Some(rel) = bytes.get(at + 1..at + 5) else {
            break;
        };
        let rel = i32::from_le_bytes([rel[0], rel[1], rel[2], rel[3]]);
        let Some(target) = (code.vaddr + at as u64 + 5).checked_add_signed(i64::from(rel)) else {
            continue;
        };
        if sites
            .range(target..)
            .next()
            .is_some_and(|&site| site - target <= ENTRY_WINDOW)
        {
            targets.insert(target);
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::super::{inspect, inspect_bytes, TargetError, TlsTarget};
    use super::*;
    use std::path::{Path, PathBuf};

    /// Where `scripts/fetch-bun.sh` put the Bun executables, one
    /// `<version>/<variant>/bun` each.
    fn bun_dir() -> PathBuf {
        match std::env::var_os("KLOAK_BUN_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => panic!(
                "KLOAK_BUN_DIR is not set: run scripts/fetch-bun.sh and set KLOAK_BUN_DIR to the \
                 directory it prints (scripts/test.sh does both)"
            ),
        }
    }

    fn bun(version: &str, variant: &str) -> PathBuf {
        let path = bun_dir().join(version).join(variant).join("bun");
        assert!(
            path.exists(),
            "{} missing: run scripts/fetch-bun.sh",
            path.display()
        );
        path
    }

    /// Ground truth, established independently of the locator: under gdb,
    /// `bun -e "await fetch('https://127.0.0.1:9443/...')"` against
    /// tests/fixtures/tls_server.py stops at both addresses, the handshake
    /// first, with the same `SSL*` in rdi, and at the write with the plain
    /// HTTP request (`GET /... HTTP/1.1`) at rsi and its length in rdx.
    /// From 1.4.0 the x64 and baseline packages are the same file.
    const KNOWN: &[(&str, &str, u64, u64)] = &[
        ("1.1.0", "x64", 0x3723630, 0x3722dd0),
        ("1.1.0", "x64-baseline", 0x370c010, 0x370b7b0),
        ("1.1.45", "x64", 0x5c05cc0, 0x5c048c0),
        ("1.1.45", "x64-baseline", 0x5b41b10, 0x5b40720),
        ("1.2.10", "x64", 0x5d91080, 0x5d8fcd0),
        ("1.2.10", "x64-baseline", 0x5cd89b0, 0x5cd7610),
        ("1.2.23", "x64", 0x61e07d0, 0x61df3d0),
        ("1.2.23", "x64-baseline", 0x61155b0, 0x61141c0),
        ("1.3.0", "x64", 0x6245990, 0x6244590),
        ("1.3.0", "x64-baseline", 0x617d910, 0x617c520),
        ("1.3.14", "x64", 0x3e62b50, 0x3e61880),
        ("1.3.14", "x64-baseline", 0x3ae3780, 0x3ae24b0),
        ("1.4.0", "x64", 0x242a820, 0x2429fb0),
        ("1.4.0", "x64-baseline", 0x242a820, 0x2429fb0),
        ("1.4.5", "x64", 0x2607c30, 0x256c0c0),
        ("1.4.5", "x64-baseline", 0x2607c30, 0x256c0c0),
    ];

    fn located(path: &Path) -> OpenSslTarget {
        match inspect(path) {
            Ok(Some(TlsTarget::OpenSsl(t))) => t,
            other => panic!("{}: expected a located Bun, got {other:?}", path.display()),
        }
    }

    #[test]
    #[ignore = "needs the Bun executables of scripts/fetch-bun.sh (KLOAK_BUN_DIR); run by scripts/test.sh"]
    fn every_fetched_bun_is_located_exactly() {
        for &(version, variant, write, handshake) in KNOWN {
            let path = bun(version, variant);
            let t = located(&path);
            let what = format!("{} {variant}", path.display());
            assert_eq!(t.bun_version.as_deref(), Some(version), "{what}");
            assert_eq!(t.flavour, SslFlavour::BoringSsl, "{what}");
            assert_eq!(t.ssl_write.vaddr, write, "{what}: SSL_write");
            let hs = t.do_handshake.expect("SSL_do_handshake");
            assert_eq!(hs.vaddr, handshake, "{what}: SSL_do_handshake");
            // The probe goes at a file offset: it must hold the bytes mapped
            // at the entry (non-PIE builds load at 0x200000 with the text
            // segment at another offset, so this is not the identity).
            let data = std::fs::read(&path).unwrap();
            let image = ElfImage::parse(&path, &data).unwrap().unwrap();
            for sym in [t.ssl_write, hs] {
                let off = usize::try_from(sym.file_offset).unwrap();
                assert_eq!(
                    image.read_vaddr(sym.vaddr, 16),
                    Some(&data[off..off + 16]),
                    "{what}"
                );
                assert!(sym.size >= 16, "{what}: {sym:?}");
            }
        }
    }

    fn refusal(data: &[u8], path: &Path) -> BunMiss {
        match inspect_bytes(path, data) {
            Err(TargetError::BunUnlocated {
                version,
                miss,
                path: p,
            }) => {
                assert_eq!(version, "1.4.5");
                assert_eq!(p, path);
                miss
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    #[ignore = "needs the Bun executables of scripts/fetch-bun.sh (KLOAK_BUN_DIR); run by scripts/test.sh"]
    fn bun_without_boringssl_error_reports_is_refused() {
        let path = bun("1.4.5", "x64");
        let mut data = std::fs::read(&path).unwrap();
        let hits: Vec<usize> = memmem::find_iter(&data, SSL_LIB_FILE).collect();
        assert!(!hits.is_empty());
        for at in hits {
            data[at + 4..at + 11].copy_from_slice(b"renamed");
        }
        let miss = refusal(&data, &path);
        assert_eq!(miss, BunMiss::NoErrorReports);
        let err = inspect_bytes(&path, &data).unwrap_err();
        assert!(err.is_unsupported());
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("Bun 1.4.5"), "{text}");
    }

    #[test]
    #[ignore = "needs the Bun executables of scripts/fetch-bun.sh (KLOAK_BUN_DIR); run by scripts/test.sh"]
    fn a_changed_ssl_write_is_refused_not_guessed() {
        let path = bun("1.4.5", "x64");
        let write = 0x2607c30u64; // KNOWN's SSL_write of 1.4.5
        let mut data = std::fs::read(&path).unwrap();
        let image_offset = {
            let image = ElfImage::parse(&path, &data).unwrap().unwrap();
            usize::try_from(image.vaddr_to_offset(write, 0x200).unwrap()).unwrap()
        };
        // SSL_write's `mov edx, SSL_R_BAD_LENGTH`: with another reason the
        // function no longer matches, and nothing else may be taken instead.
        let body = &mut data[image_offset..image_offset + 0x200];
        let at = memmem::find(body, &[0xba, 0x6f, 0, 0, 0]).expect("BAD_LENGTH report");
        body[at + 1] = 0x70;
        assert_eq!(refusal(&data, &path), BunMiss::NotFound);
    }

    #[test]
    fn non_bun_executables_are_untouched() {
        // No SSL symbols, no Bun marker: not a target, and no refusal.
        let path = Path::new("/bin/true");
        if path.exists() {
            assert!(inspect(path).unwrap().is_none());
        }
    }
}
