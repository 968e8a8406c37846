//! Go executables: `crypto/tls.(*Conn).Write` and its RET instructions.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::elf::EM_X86_64;

use super::elf::ElfImage;
use super::{GoTarget, TargetError};

const TLS_CONN_WRITE: &str = "crypto/tls.(*Conn).Write";
// Go 1.20 renamed the linker's "go." symbol prefix to "go:"; accept both.
const TCPCONN_ITABS: &[&str] = &[
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];
const BUILD_VERSION: &str = "runtime.buildVersion";
const BUILDINFO_SECTION: &str = ".go.buildinfo";
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
// Longer than any real version string; bounds what a corrupt file can make us
// copy into logs.
const MAX_VERSION_LEN: u64 = 256;

pub(super) fn is_go(file: &ElfImage<'_>) -> bool {
    file.section_data(BUILDINFO_SECTION).is_some() || !file.lookup(&[BUILD_VERSION]).is_empty()
}

pub(super) fn inspect(file: &ElfImage<'_>) -> Result<Option<GoTarget>, TargetError> {
    let go_version = go_version(file);
    if !file.has_symtab() {
        return Err(TargetError::GoStripped {
            path: file.path.to_path_buf(),
            go_version,
        });
    }
    let mut names = vec![TLS_CONN_WRITE];
    names.extend_from_slice(TCPCONN_ITABS);
    let found = file.lookup(&names);
    let Some(raw) = found.get(TLS_CONN_WRITE).filter(|raw| raw.is_function()) else {
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
    let write = file.locate(TLS_CONN_WRITE, *raw)?;
    let code = file
        .read_vaddr(write.vaddr, write.size)
        .ok_or_else(|| TargetError::NotInFile {
            path: file.path.to_path_buf(),
            symbol: TLS_CONN_WRITE.to_string(),
            vaddr: write.vaddr,
            size: write.size,
        })?;
    let ret_offsets = ret_vaddrs(code, write.vaddr)
        .map_err(|vaddr| TargetError::GoDecode {
            path: file.path.to_path_buf(),
            vaddr,
        })?
        .into_iter()
        .map(|vaddr| vaddr - write.vaddr + write.file_offset)
        .collect::<Vec<_>>();
    if ret_offsets.is_empty() {
        return Err(TargetError::GoNoRet {
            path: file.path.to_path_buf(),
            vaddr: write.vaddr,
        });
    }
    let tcpconn_itab_vaddr = TCPCONN_ITABS
        .iter()
        .find_map(|name| found.get(name))
        .map(|raw| raw.vaddr);
    let target = GoTarget {
        write,
        ret_offsets,
        tcpconn_itab_vaddr,
        go_version,
        is_pie: file.is_pie(),
    };
    tracing::debug!(path = %file.path.display(), ?target, "Go TLS client");
    Ok(Some(target))
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

fn read_word(bytes: &[u8], ptr_size: u8, big_endian: bool) -> Option<u64> {
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

    pub(crate) struct GoFixtures {
        pub plain: PathBuf,
        pub pie: PathBuf,
        pub stripped: PathBuf,
    }

    /// Builds tests/e2e/goclient once per test run, under the cargo
    /// target directory (next to the test executable), in three variants.
    /// `None` when no Go toolchain is installed.
    pub(crate) fn go_fixtures() -> Option<&'static GoFixtures> {
        static FIXTURES: OnceLock<Option<GoFixtures>> = OnceLock::new();
        FIXTURES
            .get_or_init(|| {
                if Command::new("go").arg("version").output().is_err() {
                    return None;
                }
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/goclient");
                // target/debug/deps/<test binary> -> target/debug/go-fixtures
                let exe = std::env::current_exe().unwrap();
                let out = exe.parent().unwrap().parent().unwrap().join("go-fixtures");
                std::fs::create_dir_all(&out).unwrap();
                let build = |name: &str, args: &[&str]| {
                    let bin = out.join(name);
                    let status = Command::new("go")
                        .arg("build")
                        .args(args)
                        .arg("-o")
                        .arg(&bin)
                        .arg(".")
                        .current_dir(&src)
                        .env("CGO_ENABLED", "0")
                        .env("GOCACHE", out.join("gocache"))
                        .env("GOPATH", out.join("gopath"))
                        .env("GOFLAGS", "")
                        .env("GO111MODULE", "on")
                        .env("GOPROXY", "off")
                        .env("GOTOOLCHAIN", "local")
                        .status()
                        .unwrap();
                    assert!(status.success(), "go build {name} failed");
                    bin
                };
                Some(GoFixtures {
                    plain: build("goclient", &[]),
                    pie: build("goclient-pie", &["-buildmode=pie"]),
                    stripped: build("goclient-stripped", &["-ldflags=-s -w"]),
                })
            })
            .as_ref()
    }

    fn check_go_target(path: &Path, want_pie: bool) {
        let target = match inspect_path(path).unwrap() {
            Some(TlsTarget::Go(t)) => t,
            other => panic!("{}: expected Go target, got {other:?}", path.display()),
        };
        eprintln!("{}: {target:#x?}", path.display());
        assert_eq!(target.is_pie, want_pie);
        assert!(target.go_version.as_deref().unwrap().starts_with("go"));
        assert!(target.tcpconn_itab_vaddr.is_some());
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
    }

    #[test]
    fn go_client_default() {
        let Some(f) = go_fixtures() else {
            eprintln!("skipping: no Go toolchain (apt-get install golang-go)");
            return;
        };
        check_go_target(&f.plain, false);
    }

    #[test]
    fn go_client_pie() {
        let Some(f) = go_fixtures() else {
            eprintln!("skipping: no Go toolchain (apt-get install golang-go)");
            return;
        };
        check_go_target(&f.pie, true);
    }

    #[test]
    fn go_client_stripped() {
        let Some(f) = go_fixtures() else {
            eprintln!("skipping: no Go toolchain (apt-get install golang-go)");
            return;
        };
        let err = inspect_path(&f.stripped).unwrap_err();
        eprintln!("{err}");
        match &err {
            TargetError::GoStripped { go_version, .. } => {
                assert!(go_version.as_deref().unwrap().starts_with("go"))
            }
            other => panic!("expected GoStripped, got {other:?}"),
        }
        assert!(err.is_unsupported());
        assert!(err.to_string().contains("goclient-stripped"));
    }
}
