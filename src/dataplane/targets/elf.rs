//! ELF plumbing shared by the OpenSSL and Go inspectors, and the OpenSSL one.

use std::collections::HashMap;
use std::path::Path;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Sym};
use object::{Endianness, Object, ObjectSection};

use super::{KeyHook, OpenSslTarget, SslFlavour, Symbol, TargetError};

/// A symbol table entry before its file offset is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawSymbol {
    pub vaddr: u64,
    pub size: u64,
    pub st_type: u8,
}

impl RawSymbol {
    /// Only real functions can carry a uprobe: an `STT_GNU_IFUNC` symbol
    /// points at the resolver, not at the code that runs, and a zero size
    /// would leave nothing to decode or bound.
    pub fn is_function(&self) -> bool {
        self.st_type == elf::STT_FUNC && self.size > 0
    }
}

/// The file bytes of one loaded segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Segment<'data> {
    pub vaddr: u64,
    pub bytes: &'data [u8],
    pub executable: bool,
}

/// A parsed 64-bit ELF executable or shared object, with the path kept for
/// error messages.
pub(super) struct ElfImage<'data> {
    pub path: &'data Path,
    pub data: &'data [u8],
    elf: ElfFile64<'data, Endianness>,
}

impl<'data> ElfImage<'data> {
    /// `Ok(None)` when the bytes are not a 64-bit ELF executable or shared
    /// object (not ELF at all, 32-bit, relocatable object, core dump): those
    /// are never hook targets, and mapped files are often not ELF.
    pub fn parse(path: &'data Path, data: &'data [u8]) -> Result<Option<Self>, TargetError> {
        if data.get(..elf::ELFMAG.len()) != Some(&elf::ELFMAG[..]) {
            return Ok(None);
        }
        // e_ident[EI_CLASS]
        if data.get(4) != Some(&elf::ELFCLASS64) {
            tracing::debug!(path = %path.display(), "skipping 32-bit ELF file");
            return Ok(None);
        }
        let elf = ElfFile64::<Endianness>::parse(data).map_err(|source| TargetError::Elf {
            path: path.to_path_buf(),
            source,
        })?;
        let e_type = elf.elf_header().e_type(elf.endian());
        if e_type != elf::ET_EXEC && e_type != elf::ET_DYN {
            return Ok(None);
        }
        Ok(Some(ElfImage { path, data, elf }))
    }

    pub fn is_pie(&self) -> bool {
        self.elf.elf_header().e_type(self.elf.endian()) == elf::ET_DYN
    }

    pub fn machine(&self) -> u16 {
        self.elf.elf_header().e_machine(self.elf.endian())
    }

    pub fn is_big_endian(&self) -> bool {
        self.elf.endian() == Endianness::Big
    }

    pub fn has_symtab(&self) -> bool {
        !self.elf.elf_symbol_table().is_empty()
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.elf.section_by_name(name).is_some()
    }

    pub fn section_data(&self, name: &str) -> Option<&'data [u8]> {
        self.elf.section_by_name(name)?.data().ok()
    }

    /// File offset of `[vaddr, vaddr + size)`, provided the whole range is
    /// backed by file bytes of one `PT_LOAD` segment (bss tails are not: a
    /// uprobe there could never fire and reading it would read other data).
    pub fn vaddr_to_offset(&self, vaddr: u64, size: u64) -> Option<u64> {
        let endian = self.elf.endian();
        let end = vaddr.checked_add(size)?;
        self.elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .find_map(|ph| {
                let start = ph.p_vaddr(endian);
                let seg_end = start.checked_add(ph.p_filesz(endian))?;
                if vaddr >= start && end <= seg_end && vaddr < seg_end {
                    (vaddr - start).checked_add(ph.p_offset(endian))
                } else {
                    None
                }
            })
    }

    /// The file bytes of every `PT_LOAD` segment, with where they are mapped.
    pub fn load_segments(&self) -> Vec<Segment<'data>> {
        let endian = self.elf.endian();
        self.elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .filter_map(|ph| {
                let bytes = ph.data(endian, self.data).ok()?;
                Some(Segment {
                    vaddr: ph.p_vaddr(endian),
                    bytes,
                    executable: ph.p_flags(endian) & elf::PF_X != 0,
                })
            })
            .collect()
    }

    /// Where `bytes` (a slice of this file's data) is mapped, if a
    /// `PT_LOAD` segment maps its first byte.
    pub fn vaddr_of(&self, bytes: &[u8]) -> Option<u64> {
        let offset = (bytes.as_ptr() as usize).checked_sub(self.data.as_ptr() as usize)?;
        let offset = u64::try_from(offset).ok()?;
        let endian = self.elf.endian();
        self.elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .find_map(|ph| {
                let start = ph.p_offset(endian);
                let within = offset.checked_sub(start)?;
                (within < ph.p_filesz(endian)).then(|| ph.p_vaddr(endian) + within)
            })
    }

    /// The file bytes that get mapped at `[vaddr, vaddr + len)`.
    pub fn read_vaddr(&self, vaddr: u64, len: u64) -> Option<&'data [u8]> {
        let offset = usize::try_from(self.vaddr_to_offset(vaddr, len)?).ok()?;
        let len = usize::try_from(len).ok()?;
        self.data.get(offset..offset.checked_add(len)?)
    }

    /// Defined symbols among `names`, looked up in `.dynsym` first (what the
    /// dynamic linker binds, so the authoritative copy when both exist) and
    /// then in `.symtab` (static binaries, Go). The first definition wins.
    pub fn lookup<'n>(&self, names: &[&'n str]) -> HashMap<&'n str, RawSymbol> {
        let endian = self.elf.endian();
        let mut found = HashMap::new();
        for table in [
            self.elf.elf_dynamic_symbol_table(),
            self.elf.elf_symbol_table(),
        ] {
            for sym in table.iter() {
                if sym.st_shndx(endian) == elf::SHN_UNDEF {
                    continue;
                }
                // Unreadable names are skipped: one bad entry should not hide
                // the rest of the table.
                let Ok(name) = table.symbol_name(endian, sym) else {
                    continue;
                };
                let Some(&wanted) = names.iter().find(|n| n.as_bytes() == name) else {
                    continue;
                };
                found.entry(wanted).or_insert(RawSymbol {
                    vaddr: sym.st_value(endian),
                    size: sym.st_size(endian),
                    st_type: sym.st_type(),
                });
            }
            if found.len() == names.len() {
                break;
            }
        }
        found
    }

    /// Resolves the file offset of the function `name` at `[vaddr, vaddr + size)`.
    pub fn locate(&self, name: &str, vaddr: u64, size: u64) -> Result<Symbol, TargetError> {
        let file_offset =
            self.vaddr_to_offset(vaddr, size)
                .ok_or_else(|| TargetError::NotInFile {
                    path: self.path.to_path_buf(),
                    symbol: name.to_string(),
                    vaddr,
                    size,
                })?;
        Ok(Symbol {
            vaddr,
            file_offset,
            size,
        })
    }
}

const SSL_WRITE: &str = "SSL_write";
const SSL_WRITE_EX: &str = "SSL_write_ex";
const SSL_DO_HANDSHAKE: &str = "SSL_do_handshake";
const SSL_CONNECT: &str = "SSL_connect";
const SSL_READ: &str = "SSL_read";
const SSL_READ_EX: &str = "SSL_read_ex";
const SSL_SET_FD: &str = "SSL_set_fd";
const SSL_SET_WFD: &str = "SSL_set_wfd";
const SSL_SET_BIO: &str = "SSL_set_bio";
const EVP_CIPHER_INIT_EX: &str = "EVP_CipherInit_ex";

/// `EVP_CipherInit_ex` when this file defines it (libcrypto, or a binary
/// with OpenSSL linked in).
pub(super) fn cipher_init(file: &ElfImage<'_>) -> Result<Option<Symbol>, TargetError> {
    match file.lookup(&[EVP_CIPHER_INIT_EX]).get(EVP_CIPHER_INIT_EX) {
        Some(raw) if raw.is_function() => file
            .locate(EVP_CIPHER_INIT_EX, raw.vaddr, raw.size)
            .map(Some),
        _ => Ok(None),
    }
}

// Flavour markers. libssl alone does not export libcrypto's version
// functions, so each flavour also has a marker that lives in libssl.
const BORINGSSL_MARKERS: &[&str] = &["BORINGSSL_self_test", "SSL_CTX_set_custom_verify"];
const OPENSSL3_MARKERS: &[&str] = &["OPENSSL_version_major", "SSL_CTX_new_ex"];
const OPENSSL11_MARKERS: &[&str] = &["OpenSSL_version", "OPENSSL_init_ssl"];

pub(super) fn inspect_openssl(file: &ElfImage<'_>) -> Result<Option<OpenSslTarget>, TargetError> {
    let mut names = vec![
        SSL_WRITE,
        SSL_WRITE_EX,
        SSL_DO_HANDSHAKE,
        SSL_CONNECT,
        SSL_READ,
        SSL_READ_EX,
        SSL_SET_FD,
        SSL_SET_WFD,
        SSL_SET_BIO,
    ];
    names.extend_from_slice(BORINGSSL_MARKERS);
    names.extend_from_slice(OPENSSL3_MARKERS);
    names.extend_from_slice(OPENSSL11_MARKERS);
    let found = file.lookup(&names);

    let function = |name: &str| -> Result<Option<Symbol>, TargetError> {
        match found.get(name) {
            Some(raw) if raw.is_function() => file.locate(name, raw.vaddr, raw.size).map(Some),
            _ => Ok(None),
        }
    };
    let Some(ssl_write) = function(SSL_WRITE)? else {
        return Ok(None);
    };
    let any = |markers: &[&str]| markers.iter().any(|m| found.contains_key(m));
    // BoringSSL keeps OpenSSL 1.1 compatibility names, so test it first; 1.1
    // names also survive in 3.x.
    let flavour = if any(BORINGSSL_MARKERS) {
        SslFlavour::BoringSsl
    } else if any(OPENSSL3_MARKERS) {
        SslFlavour::OpenSsl3
    } else if any(OPENSSL11_MARKERS) {
        SslFlavour::OpenSsl11
    } else {
        SslFlavour::Unknown
    };
    let target = OpenSslTarget {
        ssl_write,
        ssl_write_ex: function(SSL_WRITE_EX)?,
        do_handshake: function(SSL_DO_HANDSHAKE)?,
        connect: function(SSL_CONNECT)?,
        read: function(SSL_READ)?,
        read_ex: function(SSL_READ_EX)?,
        set_fd: function(SSL_SET_FD)?,
        set_wfd: function(SSL_SET_WFD)?,
        set_bio: function(SSL_SET_BIO)?,
        flavour,
        bun_version: None,
        key_hook: cipher_init(file)?.map(|cipher_init| KeyHook {
            path: file.path.to_path_buf(),
            cipher_init,
        }),
    };
    tracing::debug!(path = %file.path.display(), ?target, "OpenSSL-compatible TLS library");
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::super::{inspect, TlsTarget};
    use super::*;
    use object::ObjectSegment;

    /// Checks a symbol's file offset independently of `vaddr_to_offset`:
    /// the bytes at `file_offset` must be the bytes object's segment API
    /// says are mapped at `vaddr`.
    fn assert_offset_consistent(path: &Path, data: &[u8], name: &str, sym: &Symbol) {
        let obj = object::File::parse(data).unwrap();
        let len = sym.size.min(64);
        let mapped = obj
            .segments()
            .find_map(|seg| seg.data_range(sym.vaddr, len).ok().flatten())
            .unwrap_or_else(|| panic!("{}: {name} not mapped", path.display()));
        let off = usize::try_from(sym.file_offset).unwrap();
        assert_eq!(
            &data[off..off + mapped.len()],
            mapped,
            "{}: {name} bytes differ",
            path.display()
        );
        assert!(sym.size > 0);
    }

    fn openssl(path: &Path) -> Option<(OpenSslTarget, Vec<u8>)> {
        if !path.exists() {
            eprintln!("skipping: {} not present", path.display());
            return None;
        }
        match inspect(path).unwrap() {
            Some(TlsTarget::OpenSsl(t)) => Some((t, std::fs::read(path).unwrap())),
            other => panic!("{}: expected OpenSSL target, got {other:?}", path.display()),
        }
    }

    #[test]
    fn shared_libssl3() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Some((t, data)) = openssl(path) else {
            return;
        };
        eprintln!("{}: {t:#x?}", path.display());
        assert_eq!(t.flavour, SslFlavour::OpenSsl3);
        // Keys are set in the libcrypto next to it (the ciphertext strategy).
        let hook = t
            .key_hook
            .as_ref()
            .expect("EVP_CipherInit_ex in libcrypto.so.3");
        assert!(hook.path.ends_with("libcrypto.so.3"));
        let crypto = std::fs::read(&hook.path).unwrap();
        assert_offset_consistent(&hook.path, &crypto, "EVP_CipherInit_ex", &hook.cipher_init);
        let ex = t.ssl_write_ex.expect("SSL_write_ex in OpenSSL 3");
        assert_offset_consistent(path, &data, "SSL_write", &t.ssl_write);
        assert_offset_consistent(path, &data, "SSL_write_ex", &ex);
        for (name, sym) in [
            ("SSL_do_handshake", t.do_handshake),
            ("SSL_connect", t.connect),
            ("SSL_read", t.read),
            ("SSL_read_ex", t.read_ex),
            ("SSL_set_fd", t.set_fd),
            ("SSL_set_wfd", t.set_wfd),
            ("SSL_set_bio", t.set_bio),
        ] {
            let sym = sym.unwrap_or_else(|| panic!("{name} missing"));
            assert_offset_consistent(path, &data, name, &sym);
        }
    }

    #[test]
    fn node_with_static_openssl() {
        let path = Path::new("/usr/bin/node");
        let Some((t, data)) = openssl(path) else {
            return;
        };
        eprintln!("{}: {t:#x?}", path.display());
        assert_offset_consistent(path, &data, "SSL_write", &t.ssl_write);
        let hook = t
            .key_hook
            .as_ref()
            .expect("node links EVP_CipherInit_ex in");
        assert_eq!(hook.path, path);
        assert_offset_consistent(path, &data, "EVP_CipherInit_ex", &hook.cipher_init);
        if let Some(ex) = t.ssl_write_ex {
            assert_offset_consistent(path, &data, "SSL_write_ex", &ex);
        }
        assert_ne!(t.flavour, SslFlavour::Unknown);
    }

    #[test]
    fn vaddr_to_offset_rejects_ranges_outside_file_bytes() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Ok(data) = std::fs::read(path) else {
            eprintln!("skipping: {} not present", path.display());
            return;
        };
        let image = ElfImage::parse(path, &data).unwrap().unwrap();
        assert_eq!(image.vaddr_to_offset(u64::MAX - 4, 16), None);
        assert_eq!(image.vaddr_to_offset(0x7fff_0000_0000, 1), None);
        assert!(image.vaddr_to_offset(0, 4).is_some());
    }
}
