//! Which probes a TLS target gets: a pure plan, made before anything attaches.
//!
//! The loader attaches what the plan lists and nothing else, so what a
//! runtime gets under each mode and strategy is decided (and tested) here.

use std::path::{Path, PathBuf};

use super::targets::{GoTarget, OpenSslTarget, TlsTarget};

/// The BPF programs that attach as uprobes. Write and return probes come in
/// a rewriting (`_rw`) and an observing (`_ro`) build; the rest are one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UprobeProgram {
    SslWrite,
    SslWriteEx,
    SslWriteRet,
    SslHandshake,
    SslHandshakeRet,
    SslSetFd,
    SslSetBio,
    CipherInit,
    GoWrite,
    GoWriteRet,
    GoHandshake,
    GoHandshakeRet,
    GoEncrypt,
    GoTrafficSecret,
    GoAeadTls13,
}

impl UprobeProgram {
    /// The program's name in the BPF object, for the given rewrite mode.
    pub fn name(self, rewrite: bool) -> &'static str {
        let pick = |rw, ro| if rewrite { rw } else { ro };
        match self {
            Self::SslWrite => pick("handle_ssl_write_rw", "handle_ssl_write_ro"),
            Self::SslWriteEx => pick("handle_ssl_write_ex_rw", "handle_ssl_write_ex_ro"),
            Self::SslWriteRet => pick("handle_ssl_write_ret_rw", "handle_ssl_write_ret_ro"),
            Self::SslHandshake => "handle_ssl_handshake",
            Self::SslHandshakeRet => "handle_ssl_handshake_ret",
            Self::SslSetFd => "handle_ssl_set_fd",
            Self::SslSetBio => "handle_ssl_set_bio",
            Self::CipherInit => "handle_cipher_init",
            Self::GoWrite => pick("handle_go_write_rw", "handle_go_write_ro"),
            Self::GoWriteRet => pick("handle_go_write_ret_rw", "handle_go_write_ret_ro"),
            Self::GoHandshake => "handle_go_handshake",
            Self::GoHandshakeRet => "handle_go_handshake_ret",
            Self::GoEncrypt => "handle_go_encrypt",
            Self::GoTrafficSecret => "handle_go_traffic_secret",
            Self::GoAeadTls13 => "handle_go_aead_tls13",
        }
    }
}

/// One probe to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub program: UprobeProgram,
    /// The file the probe goes in: the target itself, or the libcrypto that
    /// sets a shared libssl's keys (its link is still named after the target,
    /// so detaching the target detaches it too).
    pub path: PathBuf,
    pub offset: u64,
    pub retprobe: bool,
    /// Go: the target's slot in the `targets` map.
    pub cookie: u64,
}

/// What the plan could not include, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanGap {
    /// The ciphertext strategy is on, but this OpenSSL has no `EVP_CipherInit_ex`.
    NoCipherInit,
    /// The ciphertext strategy is on, but this Go binary lacks a key function.
    NoGoKeyFunctions,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub probes: Vec<ProbeSpec>,
    pub gaps: Vec<PlanGap>,
}

/// How the data plane runs, as far as the plan is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modes {
    /// The rewriting programs are loaded (in-place writes allowed).
    pub rewrite: bool,
    /// The ciphertext strategy captures keys and patches packets.
    pub ciphertext: bool,
}

/// The probes of `target` (the file at `path`); `go_slot`: its `targets` slot.
pub fn probes(target: &TlsTarget, path: &Path, modes: Modes, go_slot: u32) -> Plan {
    let mut plan = Plan::default();
    match target {
        TlsTarget::OpenSsl(ssl) => openssl(&mut plan, ssl, path, modes),
        TlsTarget::Go(go) => golang(&mut plan, go, path, modes, u64::from(go_slot)),
    }
    plan
}

impl Plan {
    fn add(
        &mut self,
        program: UprobeProgram,
        path: &Path,
        offset: u64,
        retprobe: bool,
        cookie: u64,
    ) {
        self.probes.push(ProbeSpec {
            program,
            path: path.to_path_buf(),
            offset,
            retprobe,
            cookie,
        });
    }
}

fn openssl(plan: &mut Plan, ssl: &OpenSslTarget, path: &Path, modes: Modes) {
    use UprobeProgram::*;
    plan.add(SslWrite, path, ssl.ssl_write.file_offset, false, 0);
    plan.add(SslWriteRet, path, ssl.ssl_write.file_offset, true, 0);
    if let Some(ex) = &ssl.ssl_write_ex {
        plan.add(SslWriteEx, path, ex.file_offset, false, 0);
        plan.add(SslWriteRet, path, ex.file_offset, true, 0);
    }
    let handshake_drivers = [&ssl.do_handshake, &ssl.connect, &ssl.read, &ssl.read_ex];
    for symbol in handshake_drivers.into_iter().flatten() {
        plan.add(SslHandshake, path, symbol.file_offset, false, 0);
        plan.add(SslHandshakeRet, path, symbol.file_offset, true, 0);
    }
    for symbol in [&ssl.set_fd, &ssl.set_wfd].into_iter().flatten() {
        plan.add(SslSetFd, path, symbol.file_offset, false, 0);
    }
    if let Some(symbol) = &ssl.set_bio {
        plan.add(SslSetBio, path, symbol.file_offset, false, 0);
    }
    if modes.ciphertext {
        match &ssl.key_hook {
            Some(hook) => plan.add(
                CipherInit,
                &hook.path,
                hook.cipher_init.file_offset,
                false,
                0,
            ),
            None => plan.gaps.push(PlanGap::NoCipherInit),
        }
    }
}

fn golang(plan: &mut Plan, go: &GoTarget, path: &Path, modes: Modes, cookie: u64) {
    use UprobeProgram::*;
    plan.add(GoWrite, path, go.write.file_offset, false, cookie);
    // RETs restore in-place rewrites and end ciphertext writes.
    if modes.rewrite || modes.ciphertext {
        for &offset in &go.ret_offsets {
            plan.add(GoWriteRet, path, offset, false, cookie);
        }
    }
    if !modes.ciphertext {
        return;
    }
    let Some(keys) = &go.key_capture else {
        plan.gaps.push(PlanGap::NoGoKeyFunctions);
        return;
    };
    for (program, symbol) in [
        (GoHandshake, &keys.handshake),
        (GoEncrypt, &keys.encrypt),
        (GoTrafficSecret, &keys.set_traffic_secret),
        (GoAeadTls13, &keys.aead_tls13),
    ] {
        plan.add(program, path, symbol.file_offset, false, 0);
    }
    for &offset in &keys.handshake_rets {
        plan.add(GoHandshakeRet, path, offset, false, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::targets::{GoKeyCapture, KeyHook, SslFlavour, Symbol};
    use UprobeProgram::*;

    fn at(offset: u64) -> Symbol {
        Symbol {
            vaddr: offset,
            file_offset: offset,
            size: 16,
        }
    }

    fn libssl(key_hook: bool) -> TlsTarget {
        TlsTarget::OpenSsl(OpenSslTarget {
            ssl_write: at(0x100),
            ssl_write_ex: Some(at(0x200)),
            do_handshake: Some(at(0x300)),
            connect: None,
            read: Some(at(0x400)),
            read_ex: None,
            set_fd: Some(at(0x500)),
            set_wfd: None,
            set_bio: Some(at(0x600)),
            flavour: SslFlavour::OpenSsl3,
            bun_version: None,
            key_hook: key_hook.then(|| KeyHook {
                path: "/lib/libcrypto.so.3".into(),
                cipher_init: at(0x700),
            }),
        })
    }

    fn go(keys: bool) -> TlsTarget {
        TlsTarget::Go(GoTarget {
            write: at(0x1000),
            ret_offsets: vec![0x1040, 0x1080],
            tcpconn_close_vaddr: 0x2000,
            tcpconn_write_vaddr: 0x2100,
            go_version: Some("go1.26.8".into()),
            is_pie: false,
            key_capture: keys.then(|| GoKeyCapture {
                handshake: at(0x3000),
                handshake_rets: vec![0x3040],
                encrypt: at(0x3100),
                set_traffic_secret: at(0x3200),
                aead_tls13: at(0x3300),
            }),
        })
    }

    fn summary(plan: &Plan) -> Vec<(UprobeProgram, u64, bool, u64)> {
        plan.probes
            .iter()
            .map(|p| (p.program, p.offset, p.retprobe, p.cookie))
            .collect()
    }

    const OBSERVE: Modes = Modes {
        rewrite: false,
        ciphertext: false,
    };
    const CIPHERTEXT: Modes = Modes {
        rewrite: false,
        ciphertext: true,
    };
    const BOTH: Modes = Modes {
        rewrite: true,
        ciphertext: true,
    };

    #[test]
    fn openssl_gets_writes_handshake_drivers_and_socket_setters() {
        let plan = probes(&libssl(true), Path::new("/lib/libssl.so.3"), OBSERVE, 0);
        assert_eq!(
            summary(&plan),
            [
                (SslWrite, 0x100, false, 0),
                (SslWriteRet, 0x100, true, 0),
                (SslWriteEx, 0x200, false, 0),
                (SslWriteRet, 0x200, true, 0),
                (SslHandshake, 0x300, false, 0),
                (SslHandshakeRet, 0x300, true, 0),
                (SslHandshake, 0x400, false, 0),
                (SslHandshakeRet, 0x400, true, 0),
                (SslSetFd, 0x500, false, 0),
                (SslSetBio, 0x600, false, 0),
            ]
        );
        assert!(plan.gaps.is_empty());
    }

    #[test]
    fn the_ciphertext_strategy_adds_key_capture_in_libcrypto_or_says_why_not() {
        let plan = probes(&libssl(true), Path::new("/lib/libssl.so.3"), CIPHERTEXT, 0);
        let key = plan.probes.last().unwrap();
        assert_eq!((key.program, key.offset), (CipherInit, 0x700));
        assert_eq!(key.path, Path::new("/lib/libcrypto.so.3"));
        let without = probes(&libssl(false), Path::new("/lib/libssl.so.3"), CIPHERTEXT, 0);
        assert_eq!(without.gaps, [PlanGap::NoCipherInit]);
        assert!(without.probes.iter().all(|p| p.program != CipherInit));
    }

    #[test]
    fn go_writes_carry_the_slot_and_rets_only_when_something_rewrites() {
        let path = Path::new("/usr/bin/agent");
        let observe = probes(&go(true), path, OBSERVE, 7);
        assert_eq!(summary(&observe), [(GoWrite, 0x1000, false, 7)]);
        let both = probes(&go(true), path, BOTH, 7);
        assert_eq!(
            summary(&both),
            [
                (GoWrite, 0x1000, false, 7),
                (GoWriteRet, 0x1040, false, 7),
                (GoWriteRet, 0x1080, false, 7),
                (GoHandshake, 0x3000, false, 0),
                (GoEncrypt, 0x3100, false, 0),
                (GoTrafficSecret, 0x3200, false, 0),
                (GoAeadTls13, 0x3300, false, 0),
                (GoHandshakeRet, 0x3040, false, 0),
            ]
        );
        let keyless = probes(&go(false), path, CIPHERTEXT, 7);
        assert_eq!(keyless.gaps, [PlanGap::NoGoKeyFunctions]);
        assert_eq!(keyless.probes.len(), 3);
    }

    #[test]
    fn program_names_follow_the_rewrite_mode() {
        assert_eq!(SslWrite.name(true), "handle_ssl_write_rw");
        assert_eq!(SslWrite.name(false), "handle_ssl_write_ro");
        assert_eq!(GoWriteRet.name(false), "handle_go_write_ret_ro");
        assert_eq!(CipherInit.name(true), CipherInit.name(false));
    }
}
