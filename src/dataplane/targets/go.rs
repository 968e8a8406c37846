//! Go executables: `crypto/tls.(*Conn).Write` and its RET instructions, and
//! the functions that reveal TLS 1.3 write keys (ciphertext strategy).

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::elf::EM_X86_64;

use super::elf::ElfImage;
use std::collections::HashMap;

use super::gopclntab::{GoFunc, Pclntab};
use super::{GoKeyCapture, GoTarget, Symbol, TargetError};

const TLS_CONN_WRITE: &str = "crypto/tls.(*Conn).Write";
const TLS_HANDSHAKE: &str = "crypto/tls.(*Conn).handshakeContext";
const TLS_ENCRYPT: &str = "crypto/tls.(*halfConn).encrypt";
const TLS_SET_TRAFFIC_SECRET: &str = "crypto/tls.(*halfConn).setTrafficSecret";
const TLS_AEAD_AES_GCM_TLS13: &str = "crypto/tls.aeadAESGCMTLS13";
/// The first and the last method of a `*net.TCPConn` in a `net.Conn` itab.
/// An itab holds its interface's methods sorted by name (Close, LocalAddr,
/// Read, RemoteAddr, SetDeadline, SetReadDeadline, SetWriteDeadline, Write)
/// from offset 24 (after inter, _type, hash and padding), the same in Go 1.19
/// to 1.24. Read from `go.itab.*net.TCPConn,net.Conn` (Go 1.19) and
/// `go:itab.*net.TCPConn,net.Conn` (Go 1.24) in default and PIE builds:
/// fun[0] is `net.(*TCPConn).Close` and fun[7] `net.(*TCPConn).Write`, the
/// promoted-method wrappers of the embedded `net.conn`; methods the linker
/// found unused (LocalAddr and SetReadDeadline in the test client) point at
/// `runtime.unreachableMethod`, so only these two, which crypto/tls always
/// calls through `net.Conn`, identify the type. The test
/// `itab_methods_match_the_function_table` checks this on every build.
const TCPCONN_CLOSE: &str = "net.(*TCPConn).Close";
const TCPCONN_WRITE: &str = "net.(*TCPConn).Write";
const BUILD_VERSION: &str = "runtime.buildVersion";
const BUILDINFO_SECTION: &str = ".go.buildinfo";
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
// Longer than any real version string; bounds what a corrupt file can make us
// copy into logs.
const MAX_VERSION_LEN: u64 = 256;

pub(super) fn is_go(file: &ElfImage<'_>) -> bool {
    file.section_data(BUILDINFO_SECTION).is_some() || !file.lookup(&[BUILD_VERSION]).is_empty()
}

/// Functions are found in Go's own function table rather than `.symtab`, so
/// stripped binaries take the same path as the others. Anything missing
/// refuses the file: a weaker connection check is never an option (S2).
pub(super) fn inspect(file: &ElfImage<'_>) -> Result<Option<GoTarget>, TargetError> {
    let go_version = go_version(file);
    let table = Pclntab::find(file).map_err(|source| TargetError::GoPclntab {
        path: file.path.to_path_buf(),
        go_version: go_version.clone(),
        source,
    })?;
    let found = table.lookup(&[
        TLS_CONN_WRITE,
        TCPCONN_CLOSE,
        TCPCONN_WRITE,
        TLS_HANDSHAKE,
        TLS_ENCRYPT,
        TLS_SET_TRAFFIC_SECRET,
        TLS_AEAD_AES_GCM_TLS13,
    ]);
    let Some(func) = found.get(TLS_CONN_WRITE) else {
        tracing::debug!(path = %file.path.display(), "Go binary without crypto/tls");
        return Ok(None);
    };
    let machine = file.machine();
    if machine != EM_X86_64 {
        return Err(TargetError::GoUnsupportedArch {
            path: file.path.to_path_buf(),
            machine,
        });
    }
    let tcpconn = |name: &'static str| {
        found
            .get(name)
            .map(|func| func.vaddr)
            .ok_or_else(|| TargetError::GoNoTcpConn {
                path: file.path.to_path_buf(),
                go_version: go_version.clone(),
                function: name,
            })
    };
    let tcpconn_close_vaddr = tcpconn(TCPCONN_CLOSE)?;
    let tcpconn_write_vaddr = tcpconn(TCPCONN_WRITE)?;
    let write = file.locate(TLS_CONN_WRITE, func.vaddr, func.size)?;
    let ret_offsets = ret_offsets(file, TLS_CONN_WRITE, &write)?;
    let key_capture = key_capture(file, &found)?;
    let target = GoTarget {
        write,
        ret_offsets,
        tcpconn_close_vaddr,
        tcpconn_write_vaddr,
        go_version,
        key_capture,
        is_pie: file.is_pie(),
    };
    tracing::debug!(path = %file.path.display(), table = ?table.version(), ?target, "Go TLS client");
    Ok(Some(target))
}

/// The key-capture functions, all or none: any one missing breaks the chain
/// from a key to its connection.
fn key_capture(
    file: &ElfImage<'_>,
    found: &HashMap<&str, GoFunc>,
) -> Result<Option<GoKeyCapture>, TargetError> {
    let locate = |name: &str| {
        found
            .get(name)
            .map(|func| file.locate(name, func.vaddr, func.size))
            .transpose()
    };
    let (Some(handshake), Some(encrypt), Some(set_traffic_secret), Some(aead_tls13)) = (
        locate(TLS_HANDSHAKE)?,
        locate(TLS_ENCRYPT)?,
        locate(TLS_SET_TRAFFIC_SECRET)?,
        locate(TLS_AEAD_AES_GCM_TLS13)?,
    ) else {
        return Ok(None);
    };
    let handshake_rets = ret_offsets(file, TLS_HANDSHAKE, &handshake)?;
    Ok(Some(GoKeyCapture {
        handshake,
        handshake_rets,
        encrypt,
        set_traffic_secret,
        aead_tls13,
    }))
}

/// File offsets of the RET instructions of `func`, named `name`.
fn ret_offsets(
    file: &ElfImage<'_>,
    name: &'static str,
    func: &Symbol,
) -> Result<Vec<u64>, TargetError> {
    let code = file
        .read_vaddr(func.vaddr, func.size)
        .ok_or_else(|| TargetError::NotInFile {
            path: file.path.to_path_buf(),
            symbol: name.to_string(),
            vaddr: func.vaddr,
            size: func.size,
        })?;
    let offsets = ret_vaddrs(code, func.vaddr)
        .map_err(|vaddr| TargetError::GoDecode {
            path: file.path.to_path_buf(),
            function: name,
            vaddr,
        })?
        .into_iter()
        .map(|vaddr| vaddr - func.vaddr + func.file_offset)
        .collect::<Vec<_>>();
    if offsets.is_empty() {
        return Err(TargetError::GoNoRet {
            path: file.path.to_path_buf(),
            function: name,
            vaddr: func.vaddr,
        });
    }
    Ok(offsets)
}

/// Addresses of the near RET instructions (`C3`, `C2 iw`) in `code`, which
/// is mapped at `vaddr`. Decoding instruction by instruction is the only way
/// to tell a RET from a `C3` byte inside an immediate or displacement. An
/// undecodable instruction (or one running past the end) fails with its
/// address: a missed RET would leave a write un-restored, so no guessing.
fn ret_vaddrs(code: &[u8], vaddr: u64) -> Result<Vec<u64>, u64> {
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while decoder.can_decode() {
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(instr.ip());
        }
        // Mnemonic::Ret is the near return only; far returns are Retf.
        if instr.mnemonic() == Mnemonic::Ret {
            rets.push(instr.ip());
        }
    }
    Ok(rets)
}

/// The toolchain version, for logs and for offsets that changed between Go
/// releases. Best effort: `None` when the layout is not understood.
fn go_version(file: &ElfImage<'_>) -> Option<String> {
    let version = file
        .section_data(BUILDINFO_SECTION)
        .and_then(|data| version_from_buildinfo(file, data))
        .or_else(|| version_from_symbol(file));
    if version.is_none() {
        tracing::debug!(path = %file.path.display(), "Go version not found");
    }
    version
}

/// Layout from Go's `debug/buildinfo`: a 32-byte header (magic, pointer size,
/// flags). Since Go 1.18 (flag bit 1) the version follows inline as a
/// uvarint-prefixed string; before, two pointers at offset 16 point at Go
/// string headers.
fn version_from_buildinfo(file: &ElfImage<'_>, data: &[u8]) -> Option<String> {
    if !data.starts_with(BUILDINFO_MAGIC) {
        return None;
    }
    let ptr_size = *data.get(14)?;
    let flags = *data.get(15)?;
    let big_endian = flags & 0x1 != 0;
    if flags & 0x2 != 0 {
        let (len, rest) = uvarint(data.get(32..)?)?;
        if len > MAX_VERSION_LEN {
            return None;
        }
        return utf8(rest.get(..usize::try_from(len).ok()?)?);
    }
    let header_ptr = read_word(data.get(16..)?, ptr_size, big_endian)?;
    read_go_string(file, header_ptr, ptr_size, big_endian)
}

/// `runtime.buildVersion` is a Go string header in the data segment.
fn version_from_symbol(file: &ElfImage<'_>) -> Option<String> {
    let raw = *file.lookup(&[BUILD_VERSION]).get(BUILD_VERSION)?;
    // Pointer size follows the ELF class, and only ELF64 gets here.
    read_go_string(file, raw.vaddr, 8, file.is_big_endian())
}

fn read_go_string(
    file: &ElfImage<'_>,
    header_vaddr: u64,
    ptr_size: u8,
    big_endian: bool,
) -> Option<String> {
    let header = file.read_vaddr(header_vaddr, 2 * u64::from(ptr_size))?;
    let ptr = read_word(header, ptr_size, big_endian)?;
    let len = read_word(header.get(usize::from(ptr_size)..)?, ptr_size, big_endian)?;
    if len == 0 || len > MAX_VERSION_LEN {
        return None;
    }
    utf8(file.read_vaddr(ptr, len)?)
}

pub(super) fn read_word(bytes: &[u8], ptr_size: u8, big_endian: bool) -> Option<u64> {
    match ptr_size {
        4 => {
            let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
            Some(u64::from(if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }))
        }
        8 => {
            let b: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
            Some(if big_endian {
                u64::from_be_bytes(b)
            } else {
                u64::from_le_bytes(b)
            })
        }
        _ => None,
    }
}

fn uvarint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

fn utf8(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::gopclntab::PclntabVersion;
    use super::super::{inspect as inspect_path, TlsTarget};
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    #[test]
    fn ret_decoding_ignores_c3_bytes_inside_instructions() {
        // mov eax, 0xc3c3c3c3 ; ret 8 ; mov rcx, [rip+0xc3] ; ret
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, // mov eax, imm32
            0xc2, 0x08, 0x00, // ret 8
            0x48, 0x8b, 0x0d, 0xc3, 0x00, 0x00, 0x00, // mov rcx, [rip+0xc3]
            0xc3, // ret
        ];
        assert_eq!(ret_vaddrs(&code, 0x1000), Ok(vec![0x1005, 0x100f]));
    }

    #[test]
    fn ret_decoding_fails_on_truncated_instruction() {
        // mov eax, imm32 cut short: must not be silently skipped.
        assert_eq!(ret_vaddrs(&[0xc3, 0xb8, 0xc3], 0x10), Err(0x11));
    }

    #[test]
    fn uvarint_and_words() {
        assert_eq!(uvarint(&[0x08, b'x']), Some((8, &b"x"[..])));
        assert_eq!(uvarint(&[0xac, 0x02]), Some((300, &b""[..])));
        assert_eq!(uvarint(&[0x80]), None);
        assert_eq!(read_word(&[1, 0, 0, 0], 4, false), Some(1));
        assert_eq!(read_word(&[0, 0, 0, 0, 0, 0, 0, 2], 8, true), Some(2));
        assert_eq!(read_word(&[0, 0], 8, false), None);
    }

    /// One build of tests/e2e/goclient.
    pub(crate) struct GoBuild {
        pub go_version: String,
        pub pie: bool,
        pub stripped: bool,
        pub path: PathBuf,
    }

    impl GoBuild {
        fn target(&self) -> GoTarget {
            match inspect_path(&self.path) {
                Ok(Some(TlsTarget::Go(t))) => t,
                other => panic!(
                    "{}: expected a Go target, got {other:?}",
                    self.path.display()
                ),
            }
        }
    }

    const TOOLCHAINS_HELP: &str = "KLOAK_GO_TOOLCHAINS must name the GOROOTs to build the Go \
        test client with, colon-separated: export KLOAK_GO_TOOLCHAINS=$(scripts/go-toolchain.sh \
        bookworm trixie current) (installs golang-go, fetches trixie's Go and the current release into $KLOAK_CACHE/go); \
        scripts/build-test-clients.sh writes the same list to target/e2e/go/toolchains. \
        KLOAK_GO_TOOLCHAINS=none skips these tests explicitly";

    /// tests/e2e/goclient built by every toolchain in KLOAK_GO_TOOLCHAINS as
    /// a default executable and as PIE, with and without symbols, once per
    /// test run under the cargo target directory. `None` only when the
    /// variable says `none`; unset or a broken toolchain fails the test.
    pub(crate) fn go_builds() -> Option<&'static [GoBuild]> {
        static BUILDS: OnceLock<Option<Vec<GoBuild>>> = OnceLock::new();
        BUILDS
            .get_or_init(|| {
                let roots = std::env::var("KLOAK_GO_TOOLCHAINS").expect(TOOLCHAINS_HELP);
                if roots == "none" {
                    return None;
                }
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/goclient");
                // target/debug/deps/<test binary> -> target/debug/go-fixtures
                let exe = std::env::current_exe().unwrap();
                let out = exe.parent().unwrap().parent().unwrap().join("go-fixtures");
                let go = |goroot: &str| {
                    let mut cmd = Command::new(Path::new(goroot).join("bin/go"));
                    cmd.current_dir(&src)
                        .env("GOROOT", goroot)
                        .env("CGO_ENABLED", "0")
                        .env("GOCACHE", out.join("gocache"))
                        .env("GOPATH", out.join("gopath"))
                        .env("GOFLAGS", "-mod=mod")
                        .env("GOPROXY", "off")
                        .env("GOTOOLCHAIN", "local");
                    cmd
                };
                let mut builds = Vec::new();
                for goroot in roots.split(':') {
                    let version = go(goroot)
                        .args(["env", "GOVERSION"])
                        .output()
                        .unwrap_or_else(|e| panic!("{goroot}/bin/go: {e}; {TOOLCHAINS_HELP}"));
                    assert!(version.status.success(), "{goroot}: go env failed");
                    let go_version = String::from_utf8(version.stdout).unwrap().trim().to_owned();
                    for (pie, stripped) in
                        [(false, false), (false, true), (true, false), (true, true)]
                    {
                        let mode = if pie { "pie" } else { "exe" };
                        let symbols = if stripped { "stripped" } else { "plain" };
                        let path = out
                            .join(format!("{go_version}-{mode}-{symbols}"))
                            .join("goclient");
                        let mut cmd = go(goroot);
                        cmd.args(["build", "-trimpath", &format!("-buildmode={mode}")]);
                        if stripped {
                            cmd.arg("-ldflags=-s -w");
                        }
                        let status = cmd.arg("-o").arg(&path).arg(".").status().unwrap();
                        assert!(status.success(), "go build {}", path.display());
                        builds.push(GoBuild {
                            go_version: go_version.clone(),
                            pie,
                            stripped,
                            path,
                        });
                    }
                }
                Some(builds)
            })
            .as_deref()
    }

    fn builds_or_skip() -> &'static [GoBuild] {
        go_builds().unwrap_or_else(|| {
            eprintln!("skipping: KLOAK_GO_TOOLCHAINS=none");
            &[]
        })
    }

    #[test]
    fn every_build_kind_is_a_hookable_go_target() {
        for build in builds_or_skip() {
            let target = build.target();
            let path = &build.path;
            eprintln!("{}: {target:#x?}", path.display());
            assert_eq!(target.is_pie, build.pie, "{}", path.display());
            assert_eq!(target.go_version.as_deref(), Some(&*build.go_version));
            assert!(!target.ret_offsets.is_empty());
            let data = std::fs::read(path).unwrap();
            let w = target.write;
            for &off in &target.ret_offsets {
                assert!(off >= w.file_offset && off < w.file_offset + w.size);
                let byte = data[usize::try_from(off).unwrap()];
                assert!(byte == 0xc3 || byte == 0xc2, "byte {byte:#x} at {off:#x}");
            }
            // The entry bytes must be what object's segment API maps at vaddr.
            use object::{Object, ObjectSegment};
            let obj = object::File::parse(&*data).unwrap();
            let mapped = obj
                .segments()
                .find_map(|s| s.data_range(w.vaddr, 16).ok().flatten())
                .unwrap();
            let off = usize::try_from(w.file_offset).unwrap();
            assert_eq!(&data[off..off + 16], mapped);
            assert_ne!(target.tcpconn_close_vaddr, target.tcpconn_write_vaddr);
            let keys = target
                .key_capture
                .unwrap_or_else(|| panic!("{}: no Go key capture", path.display()));
            let h = keys.handshake;
            assert!(!keys.handshake_rets.is_empty());
            for &off in &keys.handshake_rets {
                assert!(off >= h.file_offset && off < h.file_offset + h.size);
                let byte = data[usize::try_from(off).unwrap()];
                assert!(byte == 0xc3 || byte == 0xc2, "byte {byte:#x} at {off:#x}");
            }
            let entries = [h, keys.encrypt, keys.set_traffic_secret, keys.aead_tls13];
            for (i, a) in entries.iter().enumerate() {
                assert!(entries[i + 1..].iter().all(|b| b.vaddr != a.vaddr));
            }
        }
    }

    /// The stripped build of each toolchain and mode yields exactly the
    /// target of the unstripped one (`-s -w` only drops non-loaded sections).
    #[test]
    fn stripped_builds_hook_like_unstripped_ones() {
        let builds = builds_or_skip();
        for plain in builds.iter().filter(|b| !b.stripped) {
            let stripped = builds
                .iter()
                .find(|b| b.stripped && b.pie == plain.pie && b.go_version == plain.go_version)
                .unwrap();
            let data = std::fs::read(&stripped.path).unwrap();
            let image = ElfImage::parse(&stripped.path, &data).unwrap().unwrap();
            assert!(image.lookup(&[TLS_CONN_WRITE]).is_empty(), "not stripped");
            assert_eq!(
                stripped.target(),
                plain.target(),
                "{}",
                stripped.path.display()
            );
        }
    }

    /// On unstripped builds the function table and `.symtab` agree on every
    /// function used: same entry, and a size that only adds the alignment
    /// padding, which holds no RET.
    #[test]
    fn function_table_agrees_with_symtab() {
        for build in builds_or_skip().iter().filter(|b| !b.stripped) {
            let data = std::fs::read(&build.path).unwrap();
            let image = ElfImage::parse(&build.path, &data).unwrap().unwrap();
            let names = [TLS_CONN_WRITE, TCPCONN_CLOSE, TCPCONN_WRITE];
            let table = Pclntab::find(&image).unwrap().lookup(&names);
            let symtab = image.lookup(&names);
            for name in names {
                let (pcln, sym) = (table[name], symtab[name]);
                assert_eq!(pcln.vaddr, sym.vaddr, "{name} in {}", build.path.display());
                assert!(sym.size <= pcln.size && pcln.size < sym.size + 32, "{name}");
            }
            let by_symtab = image
                .locate(
                    TLS_CONN_WRITE,
                    symtab[TLS_CONN_WRITE].vaddr,
                    symtab[TLS_CONN_WRITE].size,
                )
                .unwrap();
            assert_eq!(
                ret_offsets(&image, TLS_CONN_WRITE, &by_symtab).unwrap(),
                build.target().ret_offsets
            );
        }
    }

    /// What the BPF side compares at run time: the `net.Conn` itab of a
    /// `*net.TCPConn` (read here through its symbol) holds the two methods
    /// the function table gave, at fun[0] and fun[7].
    #[test]
    fn itab_methods_match_the_function_table() {
        for build in builds_or_skip().iter().filter(|b| !b.stripped) {
            let data = std::fs::read(&build.path).unwrap();
            let image = ElfImage::parse(&build.path, &data).unwrap().unwrap();
            let itabs = [
                "go:itab.*net.TCPConn,net.Conn",
                "go.itab.*net.TCPConn,net.Conn",
            ];
            let found = image.lookup(&itabs);
            let itab = itabs.iter().find_map(|n| found.get(n)).unwrap();
            let bytes = image.read_vaddr(itab.vaddr, 24 + 8 * 8).unwrap();
            let fun = |i: usize| read_word(&bytes[24 + 8 * i..], 8, false).unwrap();
            let target = build.target();
            assert_eq!(
                fun(0),
                target.tcpconn_close_vaddr,
                "{}",
                build.path.display()
            );
            assert_eq!(
                fun(7),
                target.tcpconn_write_vaddr,
                "{}",
                build.path.display()
            );
        }
    }

    /// Go 1.19 (bookworm) and 1.20+ (trixie) tables differ in magic, and Go
    /// 1.26 (the current release) no longer writes the text start into the
    /// header: all three must be exercised, or the toolchain list is incomplete.
    #[test]
    fn toolchains_cover_both_table_versions() {
        let Some(builds) = go_builds() else {
            eprintln!("skipping: KLOAK_GO_TOOLCHAINS=none");
            return;
        };
        let tables: Vec<(PclntabVersion, bool)> = builds
            .iter()
            .map(|b| {
                let data = std::fs::read(&b.path).unwrap();
                let image = ElfImage::parse(&b.path, &data).unwrap().unwrap();
                let table = Pclntab::find(&image).unwrap();
                (table.version(), table.header_has_text_start())
            })
            .collect();
        for want in [PclntabVersion::Go118, PclntabVersion::Go120] {
            assert!(
                tables.iter().any(|(version, _)| *version == want),
                "no {want:?} build; {TOOLCHAINS_HELP}"
            );
        }
        assert!(
            tables.iter().any(|(_, in_header)| !in_header),
            "no Go 1.26+ build (text start outside the header); {TOOLCHAINS_HELP}"
        );
    }
}
