//! Ring-buffer records to typed events (pure).
//!
//! Events never carry a secret value or placeholder bytes: the kernel side
//! only sends ids, offsets, addresses and reasons.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;
use thiserror::Error;

use super::skel::types::{
    kloak_encoding, kloak_event, kloak_event_kind, kloak_hook, kloak_reason, kloak_strategy,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    Kind(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Rewritten,
    Blocked,
    DnsAccepted,
    DnsRejected,
    ConnectionLearned,
    /// A new executable in a protected cgroup, stopped until inspected.
    ExecHeld,
}

/// Why a placeholder went out unchanged or a DNS answer was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    None,
    HostNotAllowed,
    UnverifiedConnection,
    PortMismatch,
    ServerNameMismatch,
    NotBound,
    SplitPlaceholder,
    WriteRefused,
    RewriteUnavailable,
    TooManyPlaceholders,
    RestoreFailed,
    DnsUntrustedSource,
    DnsNoQuery,
    DnsForgedByWorkload,
    DnsTtlZero,
    DnsExpired,
    CipherUnsupported,
    CipherStateUnknown,
    RecordMismatch,
    PatchTableFull,
    RecordNotSeen,
    EncodingUnsupported,
    WireUnavailable,
    Unknown,
}

impl Reason {
    /// The snake_case name used in JSON events and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::HostNotAllowed => "host_not_allowed",
            Self::UnverifiedConnection => "unverified_connection",
            Self::PortMismatch => "port_mismatch",
            Self::ServerNameMismatch => "server_name_mismatch",
            Self::NotBound => "not_bound",
            Self::SplitPlaceholder => "split_placeholder",
            Self::WriteRefused => "write_refused",
            Self::RewriteUnavailable => "rewrite_unavailable",
            Self::TooManyPlaceholders => "too_many_placeholders",
            Self::RestoreFailed => "restore_failed",
            Self::DnsUntrustedSource => "dns_untrusted_source",
            Self::DnsNoQuery => "dns_no_query",
            Self::DnsForgedByWorkload => "dns_forged_by_workload",
            Self::DnsTtlZero => "dns_ttl_zero",
            Self::DnsExpired => "dns_expired",
            Self::CipherUnsupported => "cipher_unsupported",
            Self::CipherStateUnknown => "cipher_state_unknown",
            Self::RecordMismatch => "record_mismatch",
            Self::PatchTableFull => "patch_table_full",
            Self::RecordNotSeen => "record_not_seen",
            Self::EncodingUnsupported => "encoding_unsupported",
            Self::WireUnavailable => "wire_unavailable",
            Self::Unknown => "unknown",
        }
    }

    pub fn from_raw(raw: u32) -> Self {
        match kloak_reason(raw) {
            kloak_reason::KLOAK_REASON_NONE => Self::None,
            kloak_reason::KLOAK_REASON_HOST_NOT_ALLOWED => Self::HostNotAllowed,
            kloak_reason::KLOAK_REASON_UNVERIFIED_CONNECTION => Self::UnverifiedConnection,
            kloak_reason::KLOAK_REASON_PORT_MISMATCH => Self::PortMismatch,
            kloak_reason::KLOAK_REASON_SNI_MISMATCH => Self::ServerNameMismatch,
            kloak_reason::KLOAK_REASON_NOT_BOUND => Self::NotBound,
            kloak_reason::KLOAK_REASON_SPLIT_PLACEHOLDER => Self::SplitPlaceholder,
            kloak_reason::KLOAK_REASON_WRITE_REFUSED => Self::WriteRefused,
            kloak_reason::KLOAK_REASON_REWRITE_UNAVAILABLE => Self::RewriteUnavailable,
            kloak_reason::KLOAK_REASON_TOO_MANY_PLACEHOLDERS => Self::TooManyPlaceholders,
            kloak_reason::KLOAK_REASON_RESTORE_FAILED => Self::RestoreFailed,
            kloak_reason::KLOAK_REASON_DNS_UNTRUSTED_SOURCE => Self::DnsUntrustedSource,
            kloak_reason::KLOAK_REASON_DNS_NO_QUERY => Self::DnsNoQuery,
            kloak_reason::KLOAK_REASON_DNS_FORGED_BY_WORKLOAD => Self::DnsForgedByWorkload,
            kloak_reason::KLOAK_REASON_DNS_TTL_ZERO => Self::DnsTtlZero,
            kloak_reason::KLOAK_REASON_DNS_EXPIRED => Self::DnsExpired,
            kloak_reason::KLOAK_REASON_CIPHER_UNSUPPORTED => Self::CipherUnsupported,
            kloak_reason::KLOAK_REASON_CIPHER_STATE_UNKNOWN => Self::CipherStateUnknown,
            kloak_reason::KLOAK_REASON_RECORD_MISMATCH => Self::RecordMismatch,
            kloak_reason::KLOAK_REASON_PATCH_TABLE_FULL => Self::PatchTableFull,
            kloak_reason::KLOAK_REASON_RECORD_NOT_SEEN => Self::RecordNotSeen,
            kloak_reason::KLOAK_REASON_ENCODING_UNSUPPORTED => Self::EncodingUnsupported,
            kloak_reason::KLOAK_REASON_WIRE_UNAVAILABLE => Self::WireUnavailable,
            _ => Self::Unknown,
        }
    }

    /// The plain-words explanation shown to people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::None => "ok",
            Self::HostNotAllowed => {
                "host not allowed (no trusted DNS answer maps this peer to an allowed host)"
            }
            Self::UnverifiedConnection => {
                "unverified connection (socket of this TLS session unknown)"
            }
            Self::PortMismatch => "port mismatch",
            Self::ServerNameMismatch => "TLS server name does not match the allowed host",
            Self::NotBound => "secret not bound to this cgroup",
            Self::SplitPlaceholder => "placeholder split across writes",
            Self::WriteRefused => "kernel refused the write to user memory",
            Self::RewriteUnavailable => "rewrite unavailable on this kernel",
            Self::TooManyPlaceholders => "too many placeholders in one write",
            Self::RestoreFailed => "placeholder could not be written back",
            Self::DnsUntrustedSource => "DNS answer from an untrusted source",
            Self::DnsNoQuery => "DNS answer without a matching query",
            Self::DnsForgedByWorkload => "DNS answer sent by a protected workload (dropped)",
            Self::DnsTtlZero => "DNS answer with TTL 0 (not cached)",
            Self::DnsExpired => "DNS answer for this peer expired",
            Self::CipherUnsupported => {
                "the connection's cipher is not AES-GCM (ChaCha20-Poly1305 and others cannot be patched in the ciphertext)"
            }
            Self::CipherStateUnknown => {
                "the session's key was not captured (runtime without key capture, or a session older than kloak's hooks)"
            }
            Self::RecordMismatch => "the TLS records written did not carry the placeholder whole",
            Self::PatchTableFull => "too many unacknowledged patches on this connection",
            Self::RecordNotSeen => {
                "no socket write inside the TLS call carried the record (memory BIO or an unusual write path)"
            }
            Self::EncodingUnsupported => {
                "HPACK Huffman-coded header: only the in-place strategy rewrites it"
            }
            Self::WireUnavailable => {
                "no tc filter could be attached to patch packets (see kloak doctor: ciphertext strategy)"
            }
            Self::Unknown => "unknown reason",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    SslWrite,
    SslWriteEx,
    GoWrite,
    Dns,
    Syscall,
    Unknown,
}

impl Hook {
    fn from_raw(raw: u32) -> Self {
        match kloak_hook(raw) {
            kloak_hook::KLOAK_HOOK_SSL_WRITE => Self::SslWrite,
            kloak_hook::KLOAK_HOOK_SSL_WRITE_EX => Self::SslWriteEx,
            kloak_hook::KLOAK_HOOK_GO_WRITE => Self::GoWrite,
            kloak_hook::KLOAK_HOOK_DNS => Self::Dns,
            kloak_hook::KLOAK_HOOK_SYSCALL => Self::Syscall,
            _ => Self::Unknown,
        }
    }
}

/// How the placeholder appeared in the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Plain,
    /// An HTTP/2 header value, HPACK Huffman-coded (at any bit offset).
    HpackHuffman,
    Unknown,
}

impl Encoding {
    fn from_raw(raw: u32) -> Self {
        match kloak_encoding(raw) {
            kloak_encoding::KLOAK_ENC_PLAIN => Self::Plain,
            kloak_encoding::KLOAK_ENC_HPACK_HUFFMAN => Self::HpackHuffman,
            _ => Self::Unknown,
        }
    }
}

/// How a rewrite reached the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The plaintext buffer was rewritten and written back after the call.
    InPlace,
    /// The AES-GCM ciphertext and tag were patched on the wire.
    Ciphertext,
}

impl Strategy {
    fn from_raw(raw: u32) -> Option<Self> {
        match kloak_strategy(raw) {
            kloak_strategy::KLOAK_STRATEGY_IN_PLACE => Some(Self::InPlace),
            kloak_strategy::KLOAK_STRATEGY_CIPHERTEXT => Some(Self::Ciphertext),
            _ => None,
        }
    }
}

/// One decision of the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub reason: Reason,
    pub hook: Hook,
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub secret_id: u32,
    pub offset: u32,
    pub encoding: Encoding,
    /// Set on rewrites and on ciphertext-strategy decisions.
    pub strategy: Option<Strategy>,
    pub fd: i32,
    pub peer: Option<IpAddr>,
    pub port: u16,
    pub ttl: u32,
    pub host_id: u32,
}

impl Event {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let want = std::mem::size_of::<kloak_event>();
        let mut raw = kloak_event::default();
        plain::copy_from_bytes(&mut raw, bytes).map_err(|_| DecodeError::Size {
            got: bytes.len(),
            want,
        })?;
        let kind = match kloak_event_kind(raw.kind) {
            kloak_event_kind::KLOAK_EVENT_TLS_REWRITTEN => EventKind::Rewritten,
            kloak_event_kind::KLOAK_EVENT_TLS_BLOCKED => EventKind::Blocked,
            kloak_event_kind::KLOAK_EVENT_DNS_ACCEPTED => EventKind::DnsAccepted,
            kloak_event_kind::KLOAK_EVENT_DNS_REJECTED => EventKind::DnsRejected,
            kloak_event_kind::KLOAK_EVENT_CONN_LEARNED => EventKind::ConnectionLearned,
            kloak_event_kind::KLOAK_EVENT_EXEC_HELD => EventKind::ExecHeld,
            _ => return Err(DecodeError::Kind(raw.kind)),
        };
        let comm: Vec<u8> = raw
            .comm
            .iter()
            .map(|&c| c as u8)
            .take_while(|&c| c != 0)
            .collect();
        Ok(Self {
            kind,
            reason: Reason::from_raw(raw.reason),
            hook: Hook::from_raw(raw.hook),
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            comm: String::from_utf8_lossy(&comm).into_owned(),
            cgroup_id: raw.cgroup_id,
            secret_id: raw.secret_id,
            offset: raw.offset,
            encoding: Encoding::from_raw(raw.encoding),
            strategy: Strategy::from_raw(raw.strategy),
            fd: raw.fd,
            peer: (raw.family != 0 || raw.addr.bytes != [0; 16]).then(|| ip_of(&raw.addr.bytes)),
            port: raw.port,
            ttl: raw.ttl,
            host_id: raw.host_id,
        })
    }

    /// "ip:port" of the connection or answer, when known.
    pub fn peer_display(&self) -> Option<String> {
        self.peer.map(|ip| match (ip, self.port) {
            (ip, 0) => ip.to_string(),
            (IpAddr::V6(v6), port) => format!("[{v6}]:{port}"),
            (ip, port) => format!("{ip}:{port}"),
        })
    }
}

/// Kernel addresses are IPv6 with IPv4 mapped; show IPv4 as IPv4.
pub fn ip_of(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rewritten => "rewritten",
            Self::Blocked => "blocked",
            Self::DnsAccepted => "dns accepted",
            Self::DnsRejected => "dns rejected",
            Self::ConnectionLearned => "connection",
            Self::ExecHeld => "exec held",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_match_their_json() {
        for raw in 0..kloak_reason::KLOAK_REASON_MAX.0 {
            let reason = Reason::from_raw(raw);
            let json = serde_json::to_string(&reason).expect("json");
            assert_eq!(json.trim_matches('"'), reason.name());
        }
    }
    use crate::dataplane::skel::bytes_of;

    fn raw_event(kind: u32, reason: u32) -> kloak_event {
        let mut raw = kloak_event {
            kind,
            reason,
            hook: kloak_hook::KLOAK_HOOK_SSL_WRITE.0,
            pid: 42,
            tid: 43,
            secret_id: 7,
            offset: 22,
            fd: 5,
            port: 8443,
            family: 2,
            ..Default::default()
        };
        raw.addr.bytes[10] = 0xff;
        raw.addr.bytes[11] = 0xff;
        raw.addr.bytes[12..].copy_from_slice(&[127, 0, 0, 1]);
        for (dst, src) in raw.comm.iter_mut().zip(b"curl") {
            *dst = *src as i8;
        }
        raw
    }

    #[test]
    fn decodes_a_blocked_event() {
        let raw = raw_event(
            kloak_event_kind::KLOAK_EVENT_TLS_BLOCKED.0,
            kloak_reason::KLOAK_REASON_HOST_NOT_ALLOWED.0,
        );
        let event = Event::decode(bytes_of(&raw)).expect("decodes");
        assert_eq!(event.kind, EventKind::Blocked);
        assert_eq!(event.reason, Reason::HostNotAllowed);
        assert_eq!(event.hook, Hook::SslWrite);
        assert_eq!(event.comm, "curl");
        assert_eq!(event.peer_display().as_deref(), Some("127.0.0.1:8443"));
        assert_eq!(
            (event.pid, event.tid, event.secret_id, event.offset),
            (42, 43, 7, 22)
        );
    }

    #[test]
    fn rejects_short_records_and_unknown_kinds() {
        let raw = raw_event(99, 0);
        assert_eq!(Event::decode(bytes_of(&raw)), Err(DecodeError::Kind(99)));
        assert!(matches!(
            Event::decode(&bytes_of(&raw)[..10]),
            Err(DecodeError::Size { got: 10, .. })
        ));
    }

    #[test]
    fn every_kernel_reason_has_a_name() {
        for raw in 0..kloak_reason::KLOAK_REASON_MAX.0 {
            assert_ne!(Reason::from_raw(raw), Reason::Unknown, "reason {raw}");
        }
        assert_eq!(
            Reason::from_raw(kloak_reason::KLOAK_REASON_MAX.0),
            Reason::Unknown
        );
    }

    #[test]
    fn ipv6_peers_stay_ipv6() {
        let mut bytes = [0u8; 16];
        bytes[15] = 1;
        assert_eq!(ip_of(&bytes).to_string(), "::1");
    }
}
