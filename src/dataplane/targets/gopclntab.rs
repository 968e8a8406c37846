//! Go's function table (`runtime.pclntab`): the name and entry address of
//! every Go function. The runtime needs it for stack traces and garbage
//! collection, so it survives `-ldflags=-s -w` and `strip`, unlike `.symtab`.
//!
//! Layout since Go 1.18 (`runtime/symtab.go`, `pcHeader`); Go 1.20 changed the
//! magic (0xfffffff0 -> 0xfffffff1) for reasons that do not touch the parts
//! read here:
//!
//! ```text
//! pcHeader: magic u32, pad u8 u8, minLC u8, ptrSize u8,
//!           then ptrSize-wide words: nfunc, nfiles, textStart,
//!           funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
//! functab (at pclnOffset): nfunc + 1 pairs {entryOff u32, funcOff u32},
//!           sorted by entry; the last entryOff is the end of the text
//! _func (at pclnOffset + funcOff): entryOff u32, nameOff i32, ...
//! name: NUL-terminated, at funcnameOffset + nameOff
//! ```
//!
//! Entry offsets are relative to `textStart` (`runtime.text`). Up to Go 1.25
//! the linker writes its link-time value into the header (checked: Go 1.19
//! and 1.24, default and PIE, internal and external linking; in a PIE file
//! the word also carries an `R_X86_64_RELATIVE` relocation with the same
//! addend), so it is read from there. It is not the `.text` section start in
//! externally linked files, where C start-up code comes first.
//!
//! Go 1.26 writes 0 there ("use the moduledata text field instead",
//! `runtime/symtab.go`). Then it comes from the `runtime.text` symbol, or,
//! stripped, from the module data (`runtime.firstmoduledata`), found by its
//! first word (the table's own address) and checked by the words that must
//! follow (the linker's `symtab.go` writes them in this order):
//!
//! ```text
//! 0 pcHeader | 1-3 funcnametab | 4-6 cutab | 7-9 filetab | 10-12 pctab
//! 13-15 pclntable | 16-18 ftab (ptr, nfunc + 1, cap) | 19 findfunctab
//! 20 minpc | 21 maxpc | 22 text | 23 etext
//! ```

use std::collections::HashMap;

use super::elf::ElfImage;
use super::go::read_word;

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
// Internally linked executables (PIE or not) name the table's section; an
// externally linked one merges it into .data.rel.ro and only the symbol
// (gone once stripped) still says where it is.
const SECTIONS: &[&str] = &[".gopclntab", ".data.rel.ro.gopclntab"];
const START_SYMBOL: &str = "runtime.pclntab";
const END_SYMBOL: &str = "runtime.epclntab";
const TEXT_SYMBOL: &str = "runtime.text";
/// Word indexes in the module data (see above).
const MD_FUNCNAMETAB: usize = 1;
const MD_FTAB: usize = 16;
const MD_MINPC: usize = 20;
const MD_TEXT: usize = 22;
const HEADER_WORDS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclntabError {
    #[error(
        "no .gopclntab section and no runtime.pclntab symbol (externally linked and stripped)"
    )]
    Missing,
    #[error("function table magic {magic:#x} is not a Go 1.18+ table (older Go releases are not supported)")]
    UnsupportedVersion { magic: u32 },
    #[error("function table is malformed: {what}")]
    Malformed { what: &'static str },
}

/// Which layout revision a table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PclntabVersion {
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

/// A function found in the table, by link-time address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoFunc {
    pub vaddr: u64,
    /// Up to the next function's entry, so it includes the alignment padding
    /// (INT3 bytes on x86-64) that `.symtab`'s size leaves out.
    pub size: u64,
}

/// A parsed table borrowing the file's bytes.
pub struct Pclntab<'data> {
    data: &'data [u8],
    big_endian: bool,
    ptr_size: u8,
    version: PclntabVersion,
    nfunc: usize,
    text_start: u64,
    header_text_start: bool,
    funcnames: usize,
    functab: usize,
}

impl<'data> Pclntab<'data> {
    pub fn find(file: &ElfImage<'data>) -> Result<Self, PclntabError> {
        let data = SECTIONS
            .iter()
            .find_map(|name| file.section_data(name))
            .or_else(|| symbol_range(file))
            .ok_or(PclntabError::Missing)?;
        let mut table = Self::parse(data, file.is_big_endian())?;
        if table.text_start == 0 {
            table.text_start = file
                .lookup(&[TEXT_SYMBOL])
                .get(TEXT_SYMBOL)
                .map(|symbol| symbol.vaddr)
                .or_else(|| table.text_from_moduledata(file))
                .ok_or(PclntabError::Malformed {
                    what: "textStart is zero (Go 1.26+) and no module data names the text start",
                })?;
        }
        Ok(table)
    }

    /// `runtime.text` from the module data that points at this table.
    fn text_from_moduledata(&self, file: &ElfImage<'data>) -> Option<u64> {
        let table_vaddr = file.vaddr_of(self.data)?;
        let ptr = usize::from(self.ptr_size);
        let needle = word_bytes(table_vaddr, self.ptr_size, self.big_endian);
        let ftab_len = u64::try_from(self.nfunc.checked_add(1)?).ok()?;
        let mut found = None;
        for segment in file.load_segments().iter().filter(|s| !s.executable) {
            for at in memchr::memmem::find_iter(segment.bytes, &needle) {
                if at % ptr != 0 {
                    continue;
                }
                let word = |i: usize| {
                    read_word(
                        segment.bytes.get(at + i * ptr..)?,
                        self.ptr_size,
                        self.big_endian,
                    )
                };
                let consistent = word(MD_FUNCNAMETAB)
                    == table_vaddr.checked_add(self.funcnames as u64)
                    && word(MD_FTAB) == table_vaddr.checked_add(self.functab as u64)
                    && word(MD_FTAB + 1) == Some(ftab_len);
                let text = word(MD_TEXT).filter(|&text| text != 0);
                if let (true, Some(text), Some(minpc)) = (consistent, text, word(MD_MINPC)) {
                    if text > minpc {
                        continue;
                    }
                    // Exactly one module data may name this table.
                    if found.is_some_and(|other| other != text) {
                        return None;
                    }
                    found = Some(text);
                }
            }
        }
        found
    }

    pub fn parse(data: &'data [u8], big_endian: bool) -> Result<Self, PclntabError> {
        let malformed = |what| PclntabError::Malformed { what };
        let magic_bytes: [u8; 4] = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(malformed("shorter than its header"))?;
        let magic = if big_endian {
            u32::from_be_bytes(magic_bytes)
        } else {
            u32::from_le_bytes(magic_bytes)
        };
        let version = match magic {
            MAGIC_GO118 => PclntabVersion::Go118,
            MAGIC_GO120 => PclntabVersion::Go120,
            _ => return Err(PclntabError::UnsupportedVersion { magic }),
        };
        let ptr_size = *data.get(7).ok_or(malformed("shorter than its header"))?;
        if ptr_size != 4 && ptr_size != 8 {
            return Err(malformed("pointer size is neither 4 nor 8"));
        }
        let mut table = Pclntab {
            data,
            big_endian,
            ptr_size,
            version,
            nfunc: 0,
            text_start: 0,
            header_text_start: false,
            funcnames: 0,
            functab: 0,
        };
        let word = |i: usize| {
            table
                .word(8 + i * usize::from(ptr_size))
                .ok_or(malformed("shorter than its header"))
        };
        let header: Vec<u64> = (0..HEADER_WORDS).map(word).collect::<Result<_, _>>()?;
        let offset = |v: u64| usize::try_from(v).map_err(|_| malformed("offset out of range"));
        table.nfunc = offset(header[0])?;
        table.text_start = header[2];
        table.header_text_start = table.text_start != 0;
        table.funcnames = offset(header[3])?;
        table.functab = offset(header[7])?;
        // The sentinel entry must be there, so every function has an end.
        let functab_len = table
            .nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or(malformed("function count out of range"))?;
        if table
            .functab
            .checked_add(functab_len)
            .is_none_or(|end| end > data.len())
            || table.funcnames >= data.len()
        {
            return Err(malformed("function table runs past the end"));
        }
        Ok(table)
    }

    pub fn version(&self) -> PclntabVersion {
        self.version
    }

    /// Whether the header held the text start (before Go 1.26) or it came
    /// from elsewhere (the symbol or the module data).
    #[cfg(test)]
    pub fn header_has_text_start(&self) -> bool {
        self.header_text_start
    }

    /// The functions among `names` that the table lists (first entry wins).
    /// Entries that cannot be read are skipped, as for `.symtab` lookups: a
    /// missing function then refuses the file further up.
    pub fn lookup<'n>(&self, names: &[&'n str]) -> HashMap<&'n str, GoFunc> {
        let mut found = HashMap::new();
        for i in 0..self.nfunc {
            let Some((name, func)) = self.entry(i) else {
                continue;
            };
            if let Some(&wanted) = names.iter().find(|n| n.as_bytes() == name) {
                found.entry(wanted).or_insert(func);
                if found.len() == names.len() {
                    break;
                }
            }
        }
        found
    }

    fn entry(&self, i: usize) -> Option<(&'data [u8], GoFunc)> {
        let pair = self.functab.checked_add(i.checked_mul(8)?)?;
        let entry_off = self.u32(pair)?;
        let func_off = usize::try_from(self.u32(pair + 4)?).ok()?;
        let next_off = self.u32(pair + 8)?;
        let func = self.functab.checked_add(func_off)?;
        // _func repeats the entry: a cheap check that funcOff points at one.
        if self.u32(func)? != entry_off || next_off < entry_off {
            return None;
        }
        let name_off = usize::try_from(self.u32(func + 4)?).ok()?;
        let name_start = self.funcnames.checked_add(name_off)?;
        let rest = self.data.get(name_start..)?;
        let name = &rest[..rest.iter().position(|&b| b == 0)?];
        let func = GoFunc {
            vaddr: self.text_start.checked_add(u64::from(entry_off))?,
            size: u64::from(next_off - entry_off),
        };
        Some((name, func))
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let value = read_word(self.data.get(at..)?, 4, self.big_endian)?;
        u32::try_from(value).ok()
    }

    fn word(&self, at: usize) -> Option<u64> {
        read_word(self.data.get(at..)?, self.ptr_size, self.big_endian)
    }
}

fn word_bytes(value: u64, ptr_size: u8, big_endian: bool) -> Vec<u8> {
    let bytes = if big_endian {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    };
    let n = usize::from(ptr_size);
    if big_endian {
        bytes[8 - n..].to_vec()
    } else {
        bytes[..n].to_vec()
    }
}

/// `[runtime.pclntab, runtime.epclntab)` from the symbol table.
fn symbol_range<'data>(file: &ElfImage<'data>) -> Option<&'data [u8]> {
    let found = file.lookup(&[START_SYMBOL, END_SYMBOL]);
    let start = found.get(START_SYMBOL)?.vaddr;
    let end = found.get(END_SYMBOL)?.vaddr;
    file.read_vaddr(start, end.checked_sub(start)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with the given functions (name, entry offset), in order, and
    /// `end` as the sentinel entry offset.
    fn table(magic: u32, text_start: u64, funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let funcnames = 8 + 8 * HEADER_WORDS;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (name, _) in funcs {
            name_offs.push(u32::try_from(names.len()).unwrap());
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        let functab = funcnames + names.len();
        let funcs_start = 8 * (funcs.len() + 1);
        let mut out = Vec::new();
        out.extend_from_slice(&magic.to_le_bytes());
        out.extend_from_slice(&[0, 0, 1, 8]);
        for w in [
            funcs.len() as u64,
            0,
            text_start,
            funcnames as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&u32::try_from(funcs_start + 8 * i).unwrap().to_le_bytes());
        }
        out.extend_from_slice(&end.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for (i, (_, entry)) in funcs.iter().enumerate() {
            out.extend_from_slice(&entry.to_le_bytes());
            out.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        out
    }

    #[test]
    fn finds_names_entries_and_sizes() {
        let data = table(
            MAGIC_GO120,
            0x401000,
            &[("main.main", 0), ("crypto/tls.(*Conn).Write", 0x40)],
            0x100,
        );
        let t = Pclntab::parse(&data, false).unwrap();
        assert_eq!(t.version(), PclntabVersion::Go120);
        let found = t.lookup(&["crypto/tls.(*Conn).Write", "main.main", "absent"]);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found["crypto/tls.(*Conn).Write"],
            GoFunc {
                vaddr: 0x401040,
                size: 0xc0
            }
        );
        assert_eq!(
            found["main.main"],
            GoFunc {
                vaddr: 0x401000,
                size: 0x40
            }
        );
        let go118 = table(MAGIC_GO118, 0x401000, &[("main.main", 0)], 0x10);
        assert_eq!(
            Pclntab::parse(&go118, false).unwrap().version(),
            PclntabVersion::Go118
        );
    }

    #[test]
    fn refuses_old_unknown_and_broken_tables() {
        // Go 1.16/1.17 (0xfffffffa) and 1.2-1.15 (0xfffffffb) lay functab out differently.
        for magic in [0xffff_fffa, 0xffff_fffb, 0] {
            let data = table(magic, 0x401000, &[("main.main", 0)], 0x10);
            assert_eq!(
                Pclntab::parse(&data, false).err(),
                Some(PclntabError::UnsupportedVersion { magic })
            );
        }
        let data = table(MAGIC_GO120, 0x401000, &[("main.main", 0)], 0x10);
        // Header (72 bytes), "main.main\0", then the functab with its sentinel ends at 98.
        for len in [0, 3, 40, 97] {
            assert!(
                matches!(
                    Pclntab::parse(&data[..len], false),
                    Err(PclntabError::Malformed { .. })
                ),
                "truncated to {len}"
            );
        }
        // A _func record cut short: the table opens, the function is not found.
        let cut = Pclntab::parse(&data[..data.len() - 1], false).unwrap();
        assert!(cut.lookup(&["main.main"]).is_empty());
        assert_eq!(
            Pclntab::parse(&data, false)
                .unwrap()
                .lookup(&["main.main"])
                .len(),
            1
        );
        // Go 1.26 leaves textStart 0: the header still parses, `find` takes
        // the text start from the symbol or the module data.
        let zero_text = table(MAGIC_GO120, 0, &[("main.main", 0)], 0x10);
        assert_eq!(Pclntab::parse(&zero_text, false).unwrap().text_start, 0);
    }

    #[test]
    fn skips_entries_whose_func_record_disagrees() {
        let mut data = table(MAGIC_GO120, 0x401000, &[("a", 0), ("b", 0x20)], 0x40);
        // Corrupt a's _func.entryOff (the first _func record, after the functab).
        let first_func = data.len() - 16;
        data[first_func] = 0x99;
        let t = Pclntab::parse(&data, false).unwrap();
        let found = t.lookup(&["a", "b"]);
        assert!(!found.contains_key("a"));
        assert_eq!(found["b"].vaddr, 0x401020);
    }
}
