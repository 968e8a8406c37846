//! The control flow of one x86-64 function, followed from its entry, for
//! binaries without symbols or unwind tables.
//!
//! A walk decodes every instruction reachable from the entry through direct
//! jumps and conditional branches (calls are recorded, not followed), and
//! notes each place where the function reports an error through BoringSSL's
//! `ERR_put_error` with a source-file name from a given set. The error reasons
//! a function can report, and the functions it calls, are what identifies it:
//! they come from its source code, not from the compiler's choice of bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// Instructions decoded per walk at most. BoringSSL's `SSL_do_handshake` with
/// the handshake state machine inlined is a few thousand.
const MAX_INSTRUCTIONS: usize = 20_000;

/// `ERR_LIB_SSL`: the library number BoringSSL's ssl/ code reports under.
pub(super) const ERR_LIB_SSL: u64 = 16;

/// Bytes of executable code mapped at `vaddr`.
#[derive(Clone, Copy)]
pub(super) struct CodeRegion<'data> {
    pub vaddr: u64,
    pub bytes: &'data [u8],
}

impl CodeRegion<'_> {
    fn contains(&self, vaddr: u64) -> bool {
        vaddr >= self.vaddr && vaddr - self.vaddr < self.bytes.len() as u64
    }

    fn end(&self) -> u64 {
        self.vaddr + self.bytes.len() as u64
    }
}

/// `OPENSSL_PUT_ERROR(lib, reason)` as compiled: a call (or a jump to a
/// shared call) with the library, reason and file name in argument registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ErrorSite {
    /// Where the file name is loaded.
    pub at: u64,
    pub library: Option<u64>,
    pub reason: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Walk {
    pub entry: u64,
    /// Start address and length of every instruction reached.
    pub instructions: BTreeMap<u64, usize>,
    /// Targets of direct calls.
    pub calls: BTreeSet<u64>,
    pub errors: Vec<ErrorSite>,
}

impl Walk {
    pub fn reaches(&self, vaddr: u64) -> bool {
        self.instructions.contains_key(&vaddr)
    }

    /// Reasons reported under `library`; `None` when some site's library or
    /// reason could not be read (a caller must then not trust the set).
    pub fn reasons(&self, library: u64) -> Option<BTreeSet<u64>> {
        let mut reasons = BTreeSet::new();
        for site in &self.errors {
            match (site.library, site.reason) {
                (Some(lib), Some(reason)) if lib == library => {
                    reasons.insert(reason);
                }
                (Some(_), Some(_)) => {}
                _ => return None,
            }
        }
        Some(reasons)
    }

    /// Bytes from the entry to the end of the last instruction that follows
    /// it without a gap (split-off cold code elsewhere is not counted).
    pub fn contiguous_len(&self) -> u64 {
        let mut end = self.entry;
        for (&at, &len) in self.instructions.range(self.entry..) {
            if at > end {
                break;
            }
            end = end.max(at + len as u64);
        }
        end - self.entry
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum WalkError {
    #[error("no valid instruction at {0:#x}")]
    Invalid(u64),
    #[error("code runs past the executable segment at {0:#x}")]
    OutOfCode(u64),
    #[error("more than {MAX_INSTRUCTIONS} instructions")]
    TooLong,
}

/// Follows the function at `entry`. `files` are the addresses of the source
/// file names whose error reports are collected.
pub(super) fn walk(
    code: CodeRegion<'_>,
    entry: u64,
    files: &BTreeSet<u64>,
) -> Result<Walk, WalkError> {
    let mut walk = Walk {
        entry,
        instructions: BTreeMap::new(),
        calls: BTreeSet::new(),
        errors: Vec::new(),
    };
    let mut pending = vec![entry];
    let mut instr = Instruction::default();
    while let Some(start) = pending.pop() {
        if walk.reaches(start) {
            continue;
        }
        if !code.contains(start) {
            return Err(WalkError::OutOfCode(start));
        }
        let offset = (start - code.vaddr) as usize;
        let mut decoder = Decoder::with_ip(64, &code.bytes[offset..], start, DecoderOptions::NONE);
        // Argument registers set in this straight run of code: a jump target
        // starts with nothing known, so a reason set on another path is never
        // attributed to this one.
        let mut args = Arguments::default();
        loop {
            let at = decoder.ip();
            if walk.reaches(at) {
                break;
            }
            if !decoder.can_decode() {
                return Err(WalkError::OutOfCode(at));
            }
            decoder.decode_out(&mut instr);
            if instr.is_invalid() {
                return Err(WalkError::Invalid(at));
            }
            walk.instructions.insert(at, instr.len());
            if walk.instructions.len() > MAX_INSTRUCTIONS {
                return Err(WalkError::TooLong);
            }
            args.track(&instr, files);
            match instr.flow_control() {
                FlowControl::Next | FlowControl::XbeginXabortXend => {}
                FlowControl::ConditionalBranch => pending.push(instr.near_branch_target()),
                FlowControl::Call | FlowControl::IndirectCall => {
                    walk.errors.extend(args.take_error());
                    if instr.flow_control() == FlowControl::Call {
                        walk.calls.insert(instr.near_branch_target());
                    }
                    args = Arguments::default();
                }
                FlowControl::UnconditionalBranch => {
                    walk.errors.extend(args.take_error());
                    let target = instr.near_branch_target();
                    // A jump out of this code (to the PLT) is a tail call.
                    if code.contains(target) {
                        pending.push(target);
                    } else {
                        walk.calls.insert(target);
                    }
                    break;
                }
                FlowControl::IndirectBranch
                | FlowControl::Return
                | FlowControl::Interrupt
                | FlowControl::Exception => break,
            }
            if decoder.ip() >= code.end() {
                return Err(WalkError::OutOfCode(decoder.ip()));
            }
        }
    }
    Ok(walk)
}

/// Immediate values in argument registers, and which one holds a file name.
#[derive(Default)]
struct Arguments {
    immediates: HashMap<Register, u64>,
    file: Option<(Register, u64)>,
}

impl Arguments {
    fn track(&mut self, instr: &Instruction, files: &BTreeSet<u64>) {
        if instr.op_count() == 0
            || instr.op0_kind() != OpKind::Register
            || matches!(
                instr.mnemonic(),
                Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Push
            )
        {
            return;
        }
        let reg = instr.op0_register().full_register();
        let value = match instr.code() {
            Code::Mov_r32_imm32 => Some(u64::from(instr.immediate32())),
            Code::Mov_rm64_imm32 | Code::Mov_r64_imm64 => Some(instr.immediate64()),
            Code::Xor_r32_rm32 | Code::Xor_rm32_r32
                if instr.op1_kind() == OpKind::Register
                    && instr.op1_register() == instr.op0_register() =>
            {
                Some(0)
            }
            Code::Lea_r64_m if instr.is_ip_rel_memory_operand() => {
                Some(instr.ip_rel_memory_address())
            }
            _ => None,
        };
        match value {
            Some(value) if files.contains(&value) => {
                self.file = Some((reg, instr.ip()));
                self.immediates.remove(&reg);
            }
            Some(value) => {
                self.immediates.insert(reg, value);
                if self.file.is_some_and(|(file_reg, _)| file_reg == reg) {
                    self.file = None;
                }
            }
            // Any other write to a register makes its value unknown.
            None => {
                self.immediates.remove(&reg);
                if self.file.is_some_and(|(file_reg, _)| file_reg == reg) {
                    self.file = None;
                }
            }
        }
    }

    /// The error report made by the call or jump that ends this run, if the
    /// file name is in an argument register. BoringSSL's `ERR_put_error` is
    /// `(library, unused, reason, file, line)`; Bun's copies from 2024 and
    /// 2025 use `(library, reason, file, line)`. Where the file name sits
    /// tells which.
    fn take_error(&mut self) -> Option<ErrorSite> {
        let (file_reg, at) = self.file.take()?;
        let reason_reg = match file_reg {
            Register::RCX => Register::RDX,
            Register::RDX => Register::RSI,
            _ => return None,
        };
        Some(ErrorSite {
            at,
            library: self.immediates.get(&Register::RDI).copied(),
            reason: self.immediates.get(&reason_reg).copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000;
    const FILE: u64 = 0x29e59d;

    fn files() -> BTreeSet<u64> {
        BTreeSet::from([FILE])
    }

    /// Walks `bytes` (at BASE) followed by `call 0x3000` (the error report) and `ret`.
    fn walk_calling_report(mut bytes: Vec<u8>) -> Walk {
        let call_at = BASE + bytes.len() as u64;
        bytes.push(0xe8);
        bytes.extend_from_slice(&((0x3000i64 - (call_at as i64 + 5)) as i32).to_le_bytes());
        bytes.push(0xc3);
        let code = CodeRegion {
            vaddr: BASE,
            bytes: &bytes,
        };
        walk(code, BASE, &files()).unwrap()
    }

    /// A BoringSSL-style function: `if (rdi == 0) { OPENSSL_PUT_ERROR(SSL,
    /// 0xe2); return -1; } f(); return 0;`, with the error block placed after
    /// the return and the report made by a shared call.
    fn sample() -> Vec<u8> {
        let mut code = vec![
            0x55, // push rbp
            0x48, 0x85, 0xff, // test rdi, rdi
            0x74, 0x09, // je error (0x100f)
            0xe8, 0xf5, 0x0f, 0x00, 0x00, // call 0x2000
            0x31, 0xc0, // xor eax, eax
            0x5d, // pop rbp
            0xc3, // ret
        ];
        // error: mov ecx, FILE; mov edi, 16; xor esi, esi; mov edx, 0xe2; jmp report
        code.extend_from_slice(&[0xb9]);
        code.extend_from_slice(&(FILE as u32).to_le_bytes());
        code.extend_from_slice(&[0xbf, 0x10, 0, 0, 0, 0x31, 0xf6, 0xba, 0xe2, 0, 0, 0]);
        code.extend_from_slice(&[0xeb, 0x01]); // jmp report (skips the int3)
        code.push(0xcc);
        // report: call 0x3000; mov eax, -1; pop rbp; ret
        let report = BASE + code.len() as u64;
        let rel = (0x3000i64 - (report as i64 + 5)) as i32;
        code.push(0xe8);
        code.extend_from_slice(&rel.to_le_bytes());
        code.extend_from_slice(&[0xb8, 0xff, 0xff, 0xff, 0xff, 0x5d, 0xc3]);
        code.extend_from_slice(&[0xcc; 16]);
        code
    }

    #[test]
    fn follows_branches_and_reads_the_error_report() {
        let bytes = sample();
        let code = CodeRegion {
            vaddr: BASE,
            bytes: &bytes,
        };
        let walk = walk(code, BASE, &files()).unwrap();
        assert_eq!(walk.reasons(ERR_LIB_SSL), Some(BTreeSet::from([0xe2])));
        assert_eq!(walk.errors.len(), 1);
        assert_eq!(walk.errors[0].at, BASE + 0x0f);
        let report_call = BASE + 0x0f + 5 + 5 + 2 + 5 + 2 + 1;
        assert_eq!(walk.calls, BTreeSet::from([0x2000, 0x3000]));
        assert!(walk.reaches(report_call));
        // The int3 between the error block and the shared call is never
        // decoded: it is not reachable.
        assert!(!walk.reaches(report_call - 1));
        // Entry to the error block's jump, without the int3 gap.
        assert_eq!(walk.contiguous_len(), 0x22);
    }

    #[test]
    fn unknown_file_names_are_not_error_reports() {
        let bytes = sample();
        let code = CodeRegion {
            vaddr: BASE,
            bytes: &bytes,
        };
        let walk = walk(code, BASE, &BTreeSet::from([FILE + 1])).unwrap();
        assert!(walk.errors.is_empty());
        assert_eq!(walk.reasons(ERR_LIB_SSL), Some(BTreeSet::new()));
    }

    #[test]
    fn a_reason_set_on_another_path_is_unknown() {
        // mov edx, 0xe2; jmp next; int3; next: mov ecx, FILE; mov edi, 16; call 0x3000; ret
        let mut bytes = vec![0xba, 0xe2, 0, 0, 0, 0xeb, 0x01, 0xcc, 0xb9];
        bytes.extend_from_slice(&(FILE as u32).to_le_bytes());
        bytes.extend_from_slice(&[0xbf, 0x10, 0, 0, 0]);
        let walk = walk_calling_report(bytes);
        assert_eq!(walk.errors.len(), 1);
        assert_eq!(walk.errors[0].library, Some(ERR_LIB_SSL));
        assert_eq!(walk.errors[0].reason, None);
        assert_eq!(walk.reasons(ERR_LIB_SSL), None);
    }

    #[test]
    fn rip_relative_file_names_and_the_newer_argument_order() {
        // lea rdx, [rip + d] (FILE); mov edi, 16; mov esi, 0x86; call 0x3000; ret
        let d = (FILE as i64 - (BASE as i64 + 7)) as i32;
        let mut bytes = vec![0x48, 0x8d, 0x15];
        bytes.extend_from_slice(&d.to_le_bytes());
        bytes.extend_from_slice(&[0xbf, 0x10, 0, 0, 0, 0xbe, 0x86, 0, 0, 0]);
        let walk = walk_calling_report(bytes);
        assert_eq!(walk.reasons(ERR_LIB_SSL), Some(BTreeSet::from([0x86])));
    }

    #[test]
    fn garbage_and_runaway_code_fail() {
        let bytes = [0x06u8, 0x06, 0x06]; // `push es`: invalid in 64-bit mode
        let code = CodeRegion {
            vaddr: BASE,
            bytes: &bytes,
        };
        assert_eq!(walk(code, BASE, &files()), Err(WalkError::Invalid(BASE)));
        let bytes = [0x90u8; 4]; // nops running off the end
        let code = CodeRegion {
            vaddr: BASE,
            bytes: &bytes,
        };
        assert!(matches!(
            walk(code, BASE, &files()),
            Err(WalkError::OutOfCode(_))
        ));
        assert_eq!(
            walk(code, BASE + 100, &files()),
            Err(WalkError::OutOfCode(BASE + 100))
        );
    }
}
