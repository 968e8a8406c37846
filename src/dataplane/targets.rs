//! Which files can be hooked, and where: OpenSSL/BoringSSL write functions by
//! symbol, Go's crypto/tls.(*Conn).Write and its RET instructions.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: Go binary without a symbol table (stripped): cannot find crypto/tls.(*Conn).Write"
    )]
    GoStripped { path: PathBuf },
    #[error("{path}: symbol {symbol} lies outside every loadable segment")]
    NoSegment { path: PathBuf, symbol: String },
}

/// Uprobes are attached once per file, identified by device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

pub fn file_id(path: &Path) -> std::io::Result<FileId> {
    let meta = fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub vaddr: u64,
    /// Uprobes attach at file offsets.
    pub file_offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct OpenSslTarget {
    pub ssl_write: Symbol,
    pub ssl_write_ex: Option<Symbol>,
    pub do_handshake: Option<Symbol>,
    pub connect: Option<Symbol>,
    pub set_fd: Option<Symbol>,
    pub set_wfd: Option<Symbol>,
    pub set_bio: Option<Symbol>,
}

#[derive(Debug, Clone)]
pub struct GoTarget {
    pub write: Symbol,
    /// File offsets of every RET in Write: Go moves stacks, so no uretprobes.
    pub ret_offsets: Vec<u64>,
    pub tcpconn_itab_vaddr: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum TlsTarget {
    OpenSsl(OpenSslTarget),
    Go(GoTarget),
}

impl TlsTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenSsl(_) => "openssl",
            Self::Go(_) => "go",
        }
    }
}

const GO_WRITE: &str = "crypto/tls.(*Conn).Write";
/// Go 1.20 renamed "go.itab.*" to "go:itab.*"; both are in use.
const GO_TCPCONN_ITABS: &[&str] = &[
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];

struct Elf<'a> {
    path: &'a Path,
    file: object::File<'a>,
    data: &'a [u8],
}

impl Elf<'_> {
    fn file_offset(&self, name: &str, vaddr: u64) -> Result<u64, TargetError> {
        self.file
            .segments()
            .find_map(|segment| {
                let (offset, size) = segment.file_range();
                let start = segment.address();
                (vaddr >= start && vaddr < start + size).then(|| vaddr - start + offset)
            })
            .ok_or_else(|| TargetError::NoSegment {
                path: self.path.to_path_buf(),
                symbol: name.to_owned(),
            })
    }

    /// A defined symbol by name, from the dynamic table first, then the full one.
    fn symbol(&self, name: &str, kind: SymbolKind) -> Result<Option<Symbol>, TargetError> {
        let found = self
            .file
            .dynamic_symbols()
            .chain(self.file.symbols())
            .find(|sym| {
                sym.is_definition()
                    && sym.kind() == kind
                    && sym.address() != 0
                    && sym.name() == Ok(name)
            });
        let Some(sym) = found else {
            return Ok(None);
        };
        Ok(Some(Symbol {
            vaddr: sym.address(),
            file_offset: self.file_offset(name, sym.address())?,
            size: sym.size(),
        }))
    }

    fn data_symbol_addr(&self, name: &str) -> Option<u64> {
        self.file
            .symbols()
            .find(|sym| sym.is_definition() && sym.name() == Ok(name))
            .map(|sym| sym.address())
    }

    fn is_go(&self) -> bool {
        self.file.section_by_name(".go.buildinfo").is_some()
            || self.file.section_by_name(".gopclntab").is_some()
    }

    fn ret_offsets(&self, write: &Symbol) -> Vec<u64> {
        let start = write.file_offset as usize;
        let Some(code) = self.data.get(start..start + write.size as usize) else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, code, write.vaddr, DecoderOptions::NONE);
        let mut rets = Vec::new();
        for instruction in &mut decoder {
            if instruction.mnemonic() == Mnemonic::Ret {
                rets.push(write.file_offset + (instruction.ip() - write.vaddr));
            }
        }
        rets
    }
}

/// Decides whether `path` can be hooked and where; Ok(None) when it has no TLS to hook.
pub fn inspect(path: &Path) -> Result<Option<TlsTarget>, TargetError> {
    let data = fs::read(path).map_err(|source| TargetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let Ok(file) = object::File::parse(&*data) else {
        return Ok(None);
    };
    let elf = Elf {
        path,
        file,
        data: &data,
    };
    if elf.is_go() {
        let Some(write) = elf.symbol(GO_WRITE, SymbolKind::Text)? else {
            if elf.file.symbols().next().is_none() {
                return Err(TargetError::GoStripped {
                    path: path.to_path_buf(),
                });
            }
            return Ok(None);
        };
        let ret_offsets = elf.ret_offsets(&write);
        return Ok(Some(TlsTarget::Go(GoTarget {
            ret_offsets,
            tcpconn_itab_vaddr: GO_TCPCONN_ITABS
                .iter()
                .find_map(|name| elf.data_symbol_addr(name)),
            write,
        })));
    }
    let text = |name| elf.symbol(name, SymbolKind::Text);
    let Some(ssl_write) = text("SSL_write")? else {
        return Ok(None);
    };
    Ok(Some(TlsTarget::OpenSsl(OpenSslTarget {
        ssl_write,
        ssl_write_ex: text("SSL_write_ex")?,
        do_handshake: text("SSL_do_handshake")?,
        connect: text("SSL_connect")?,
        set_fd: text("SSL_set_fd")?,
        set_wfd: text("SSL_set_wfd")?,
        set_bio: text("SSL_set_bio")?,
    })))
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
    use object::ObjectSection;

    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

    #[test]
    fn openssl_symbols_map_to_file_offsets() {
        let path = Path::new(LIBSSL);
        if !path.exists() {
            eprintln!("skipped: {LIBSSL} not present");
            return;
        }
        let Some(TlsTarget::OpenSsl(ssl)) = inspect(path).expect("inspect") else {
            panic!("libssl.so.3 is an OpenSSL target");
        };
        assert!(ssl.ssl_write_ex.is_some() && ssl.do_handshake.is_some() && ssl.set_fd.is_some());
        // The bytes at the file offset are the function's first bytes.
        let data = fs::read(path).expect("read");
        let file = object::File::parse(&*data).expect("elf");
        let section = file
            .sections()
            .find(|s| {
                let start = s.address();
                ssl.ssl_write.vaddr >= start && ssl.ssl_write.vaddr < start + s.size()
            })
            .expect("section holding SSL_write");
        let in_section = (ssl.ssl_write.vaddr - section.address()) as usize;
        let bytes = section.data().expect("data");
        let off = ssl.ssl_write.file_offset as usize;
        assert_eq!(&bytes[in_section..in_section + 8], &data[off..off + 8]);
    }

    #[test]
    fn non_tls_files_are_not_targets() {
        assert!(inspect(Path::new("/bin/true")).expect("inspect").is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("x.txt");
        fs::write(&text, "hello").expect("write");
        assert!(inspect(&text).expect("inspect").is_none());
        assert!(inspect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn finds_system_libssl() {
        if Path::new(LIBSSL).exists() {
            assert!(!system_tls_libraries(Path::new("/")).is_empty());
        }
    }
}
