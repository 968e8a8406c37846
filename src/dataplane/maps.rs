//! What the kernel maps should hold, and the updates that get them there (pure).
//!
//! Callers describe the desired state (enabled cgroups, secrets with their
//! policy, bindings, trusted resolvers); `DesiredState::records` turns it into
//! map records and `diff` into the smallest list of updates. Record values
//! that carry real secret bytes are zeroized when dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use super::skel::bytes_of;
use super::skel::types::{
    kloak_binding_key, kloak_file_key, kloak_file_state, kloak_name, kloak_name_key,
    kloak_resolver_key, kloak_secret, kloak_secret_flags, kloak_secret_key, kloak_verified,
    kloak_verified_key,
};
use super::targets::FileId;
use crate::placeholder::{lookup_key, Placeholder, SecretValue};
use crate::policy::{fnv1a64, HostPattern, Policy};

/// The maps userspace writes. The kernel writes the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapName {
    Cgroups,
    Secrets,
    Bindings,
    Names,
    Verified,
    Resolvers,
    Files,
    /// Processes stopped at exec (kernel-written; read and cleared by the sweep).
    Held,
}

impl MapName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cgroups => "cgroups",
            Self::Secrets => "secrets",
            Self::Bindings => "bindings",
            Self::Names => "names",
            Self::Verified => "verified",
            Self::Resolvers => "resolvers",
            Self::Files => "files",
            Self::Held => "held",
        }
    }
}

pub type RecordKey = (MapName, Vec<u8>);
pub type Records = BTreeMap<RecordKey, Zeroizing<Vec<u8>>>;

/// One map update; `value: None` deletes the key.
pub struct MapOp {
    pub map: MapName,
    pub key: Vec<u8>,
    pub value: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for MapOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may hold real secrets: never print them.
        f.debug_struct("MapOp")
            .field("map", &self.map)
            .field("key_len", &self.key.len())
            .field("delete", &self.value.is_none())
            .finish()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    #[error("secret {id}: placeholder is {placeholder} bytes but the value is {value} bytes")]
    LengthMismatch {
        id: u32,
        placeholder: usize,
        value: usize,
    },
    #[error("secret {id}: {count} host patterns, at most {max} are supported")]
    TooManyHosts { id: u32, count: usize, max: usize },
    #[error("secrets {a} and {b} have placeholders with the same first 16 bytes")]
    KeyCollision { a: u32, b: u32 },
    #[error("host patterns {a} and {b} hash to the same id; rename one")]
    HostIdCollision { a: String, b: String },
    #[error("host name {0} is longer than {max} bytes", max = NAME_MAX)]
    NameTooLong(String),
}

const NAME_MAX: usize = 255;
const MAX_HOSTS: usize = 16;

/// A secret as the data plane needs it.
pub struct SecretState {
    pub placeholder: Placeholder,
    pub value: SecretValue,
    pub policy: Policy,
}

#[derive(Default)]
pub struct DesiredState {
    pub cgroups: BTreeSet<u64>,
    pub secrets: BTreeMap<u32, SecretState>,
    pub bindings: BTreeSet<(u64, u32)>,
    pub resolvers: BTreeSet<SocketAddr>,
}

/// Host pattern ids are a hash of the pattern, so they stay the same across
/// restarts and DNS answers already in the pinned map keep their meaning.
pub fn host_id(pattern: &HostPattern) -> u32 {
    (fnv1a64(pattern.to_string().as_bytes()) as u32) | 1
}

/// Tells two values of one secret apart (never 0): a replaced value stays in
/// the kernel under this id while records bound to it are in flight
/// (`dataplane::retire`). A hash of what the same record holds in full.
pub fn value_id(placeholder: &[u8], value: &[u8]) -> u64 {
    let mut both = Zeroizing::new(Vec::with_capacity(placeholder.len() + value.len()));
    both.extend_from_slice(placeholder);
    both.extend_from_slice(value);
    fnv1a64(&both) | 1
}

/// The kernel hashes names back to front (one pass yields every suffix).
pub fn name_hash(name: &str) -> u64 {
    let reversed: Vec<u8> = name.bytes().rev().collect();
    fnv1a64(&reversed)
}

pub fn kernel_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Receives records one at a time: (map, key, value). A secret's value is
/// only valid during the call (it is wiped right after).
pub type RecordSink<'a> = dyn FnMut(MapName, &[u8], &[u8]) + 'a;

impl DesiredState {
    pub fn records(&self) -> Result<Records, MapError> {
        let mut records = Records::new();
        self.visit_records(&mut |map, key, value| {
            records.insert((map, key.to_vec()), Zeroizing::new(value.to_vec()));
        })?;
        Ok(records)
    }

    /// Every record, one at a time, without holding them all: at 10,000
    /// secrets of 8 KiB each that is the difference that matters.
    pub fn visit_records(&self, record: &mut RecordSink<'_>) -> Result<(), MapError> {
        let mut hosts: BTreeMap<u32, HostPattern> = BTreeMap::new();
        for cgroup in &self.cgroups {
            record(MapName::Cgroups, &cgroup.to_ne_bytes(), &1u32.to_ne_bytes());
        }
        let mut keys: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        for (&id, secret) in &self.secrets {
            let key = lookup_key(secret.placeholder.as_bytes());
            if let Some(&other) = keys.get(&key) {
                return Err(MapError::KeyCollision { a: other, b: id });
            }
            keys.insert(key, id);
            let kernel = secret_record(id, secret, &mut hosts)?;
            record(
                MapName::Secrets,
                bytes_of(&kloak_secret_key { bytes: key }),
                bytes_of(&*kernel),
            );
        }
        for &(cgroup_id, secret_id) in &self.bindings {
            let key = kloak_binding_key {
                cgroup_id,
                secret_id,
                ..Default::default()
            };
            record(MapName::Bindings, bytes_of(&key), &[1]);
        }
        for (&id, pattern) in &hosts {
            host_records(record, id, pattern)?;
        }
        for resolver in &self.resolvers {
            let mut key = kloak_resolver_key {
                port: resolver.port(),
                ..Default::default()
            };
            key.addr.bytes = kernel_addr(resolver.ip());
            record(MapName::Resolvers, bytes_of(&key), &[1]);
        }
        Ok(())
    }
}

/// The kernel's copy of one secret (boxed: 8 KiB), wiped when dropped.
struct KernelSecret(Box<kloak_secret>);

impl Drop for KernelSecret {
    fn drop(&mut self) {
        self.0.value.zeroize();
    }
}

impl std::ops::Deref for KernelSecret {
    type Target = kloak_secret;
    fn deref(&self) -> &kloak_secret {
        &self.0
    }
}

impl std::ops::DerefMut for KernelSecret {
    fn deref_mut(&mut self) -> &mut kloak_secret {
        &mut self.0
    }
}

fn secret_record(
    id: u32,
    secret: &SecretState,
    hosts: &mut BTreeMap<u32, HostPattern>,
) -> Result<KernelSecret, MapError> {
    let placeholder = secret.placeholder.as_bytes();
    let value = secret.value.as_bytes();
    if placeholder.len() != value.len() {
        return Err(MapError::LengthMismatch {
            id,
            placeholder: placeholder.len(),
            value: value.len(),
        });
    }
    if secret.policy.hosts.len() > MAX_HOSTS {
        return Err(MapError::TooManyHosts {
            id,
            count: secret.policy.hosts.len(),
            max: MAX_HOSTS,
        });
    }
    let mut kernel = KernelSecret(Box::default());
    kernel.id = id;
    kernel.len = value.len() as u32;
    kernel.value_id = value_id(placeholder, value);
    kernel.port = secret.policy.port.unwrap_or(0);
    if secret.policy.allows_any_host() {
        kernel.flags = kloak_secret_flags::KLOAK_SECRET_ANY_HOST.0 as u16;
    }
    kernel.host_count = secret.policy.hosts.len() as u32;
    for (slot, pattern) in kernel.host_ids.iter_mut().zip(&secret.policy.hosts) {
        let hid = host_id(pattern);
        if let Some(existing) = hosts.get(&hid) {
            if existing != pattern {
                return Err(MapError::HostIdCollision {
                    a: existing.to_string(),
                    b: pattern.to_string(),
                });
            }
        }
        hosts.insert(hid, pattern.clone());
        *slot = hid;
    }
    kernel.placeholder[..placeholder.len()].copy_from_slice(placeholder);
    kernel.value[..value.len()].copy_from_slice(value);
    Ok(kernel)
}

fn host_records(
    record: &mut RecordSink<'_>,
    id: u32,
    pattern: &HostPattern,
) -> Result<(), MapError> {
    match pattern {
        HostPattern::Ip(ip) => {
            // An IP literal is its own proof: verified for ever.
            let mut key = kloak_verified_key {
                host_id: id,
                ..Default::default()
            };
            key.addr.bytes = kernel_addr(*ip);
            let value = kloak_verified {
                expires_ns: u64::MAX,
            };
            record(MapName::Verified, bytes_of(&key), bytes_of(&value));
        }
        HostPattern::Exact(name) | HostPattern::Suffix(name) => {
            if name.len() > NAME_MAX {
                return Err(MapError::NameTooLong(name.clone()));
            }
            let key = kloak_name_key {
                hash: name_hash(name),
                is_suffix: u32::from(pattern.is_suffix()),
                ..Default::default()
            };
            let mut value = kloak_name {
                host_id: id,
                len: name.len() as u32,
                ..Default::default()
            };
            for (dst, src) in value.name.iter_mut().zip(name.bytes()) {
                *dst = src as i8;
            }
            record(MapName::Names, bytes_of(&key), bytes_of(&value));
        }
    }
    Ok(())
}

/// What userspace found in a file, as recorded in the `files` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Looked at, nothing attached (no TLS, not hookable, or attaching failed).
    Inspected,
    /// Uprobes attached.
    Hooked,
}

impl FileState {
    fn raw(self) -> u8 {
        let state = match self {
            Self::Inspected => kloak_file_state::KLOAK_FILE_INSPECTED,
            Self::Hooked => kloak_file_state::KLOAK_FILE_HOOKED,
        };
        state.0 as u8
    }

    /// The state a `files` value records; `None` for values this build does not know.
    pub fn from_raw(raw: u8) -> Option<Self> {
        [Self::Inspected, Self::Hooked]
            .into_iter()
            .find(|state| state.raw() == raw)
    }
}

/// The `files` key of a file. The kernel keys files by its own dev_t
/// encoding (major << 20 | minor), not the one `stat` returns.
pub fn file_key(id: FileId) -> Vec<u8> {
    let major = libc::major(id.dev) as u64;
    let minor = libc::minor(id.dev) as u64;
    let key = kloak_file_key {
        dev: (major << 20) | minor,
        ino: id.ino,
    };
    bytes_of(&key).to_vec()
}

/// Records a file as inspected, so its next exec is not held, and whether it is hooked.
pub fn file_record(id: FileId, state: FileState) -> MapOp {
    MapOp {
        map: MapName::Files,
        key: file_key(id),
        value: Some(Zeroizing::new(vec![state.raw()])),
    }
}

/// Forgets a file whose probes were detached: its next exec is held and hooked again.
pub fn file_forget(id: FileId) -> MapOp {
    MapOp {
        map: MapName::Files,
        key: file_key(id),
        value: None,
    }
}

/// Updates that turn `old` into `new`: changed and added keys, then deletions.
pub fn diff(old: &Records, new: &Records) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for ((map, key), value) in new {
        if old.get(&(*map, key.clone())) != Some(value) {
            ops.push(MapOp {
                map: *map,
                key: key.clone(),
                value: Some(value.clone()),
            });
        }
    }
    for (map, key) in old.keys() {
        if !new.contains_key(&(*map, key.clone())) {
            ops.push(MapOp {
                map: *map,
                key: key.clone(),
                value: None,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_hosts;

    fn secret(placeholder: &str, value: &str, hosts: &str, port: Option<u16>) -> SecretState {
        SecretState {
            placeholder: crate::placeholder::validate(placeholder).expect("valid placeholder"),
            value: SecretValue::new(value.as_bytes().to_vec()),
            policy: Policy {
                hosts: parse_hosts(hosts).expect("valid hosts"),
                port,
            },
        }
    }

    fn state() -> DesiredState {
        let mut state = DesiredState::default();
        state.cgroups.insert(77);
        state.secrets.insert(
            1,
            secret(
                "kloak:ABCDEFGHJK0123",
                "sk-live-12345678abcd",
                "api.example.com,*.example.org,10.0.0.1",
                Some(443),
            ),
        );
        state.bindings.insert((77, 1));
        state
            .resolvers
            .insert("127.0.0.53:53".parse().expect("addr"));
        state
    }

    fn count(records: &Records, map: MapName) -> usize {
        records.keys().filter(|(m, _)| *m == map).count()
    }

    #[test]
    fn one_record_per_fact() {
        let records = state().records().expect("records");
        assert_eq!(count(&records, MapName::Cgroups), 1);
        assert_eq!(count(&records, MapName::Secrets), 1);
        assert_eq!(count(&records, MapName::Bindings), 1);
        assert_eq!(count(&records, MapName::Names), 2, "exact name and suffix");
        assert_eq!(count(&records, MapName::Verified), 1, "IP literal");
        assert_eq!(count(&records, MapName::Resolvers), 1);
    }

    #[test]
    fn secret_record_carries_policy_and_both_strings() {
        let mut hosts = BTreeMap::new();
        let s = secret(
            "kloak:ABCDEFGHJK0123",
            "sk-live-12345678abcd",
            "api.example.com",
            Some(8443),
        );
        let kernel = secret_record(3, &s, &mut hosts).expect("record");
        assert_eq!(
            (kernel.id, kernel.len, kernel.port, kernel.host_count),
            (3, 20, 8443, 1)
        );
        assert_eq!(&kernel.placeholder[..16], &b"kloak:ABCDEFGHJK0123"[..16]);
        assert_eq!(&kernel.value[..20], b"sk-live-12345678abcd");
        assert_eq!(kernel.flags, 0);
        let any = secret("kloak:ABCDEFGHJK0123", "sk-live-12345678abcd", "", None);
        assert_eq!(
            secret_record(4, &any, &mut hosts).expect("record").flags,
            kloak_secret_flags::KLOAK_SECRET_ANY_HOST.0 as u16
        );
    }

    #[test]
    fn refuses_length_mismatch_and_key_collisions() {
        let mut hosts = BTreeMap::new();
        let bad = secret("kloak:ABCDEFGHJK0123", "short-but-12b", "", None);
        assert!(matches!(
            secret_record(1, &bad, &mut hosts),
            Err(MapError::LengthMismatch { .. })
        ));
        let mut s = state();
        s.secrets.insert(
            2,
            secret("kloak:ABCDEFGHJK0123", "sk-live-87654321abcd", "", None),
        );
        assert_eq!(
            s.records().err(),
            Some(MapError::KeyCollision { a: 1, b: 2 })
        );
    }

    #[test]
    fn file_records_say_whether_the_file_is_hooked() {
        // st_dev 8:1 (glibc encoding) is 8 << 20 | 1 in the kernel's.
        let id = FileId {
            dev: libc::makedev(8, 1),
            ino: 42,
        };
        let op = file_record(id, FileState::Hooked);
        assert_eq!(op.map, MapName::Files);
        let mut want = ((8u64 << 20) | 1).to_ne_bytes().to_vec();
        want.extend_from_slice(&42u64.to_ne_bytes());
        assert_eq!(op.key, want);
        let value = op.value.expect("a value");
        assert_eq!(FileState::from_raw(value[0]), Some(FileState::Hooked));
        let value = file_record(id, FileState::Inspected)
            .value
            .expect("a value");
        assert_eq!(FileState::from_raw(value[0]), Some(FileState::Inspected));
        assert_ne!(
            value[0], 0,
            "the kernel tells entries apart by presence only"
        );
        assert_eq!(FileState::from_raw(0), None);
        let forget = file_forget(id);
        assert_eq!(forget.key, want);
        assert!(forget.value.is_none());
    }

    #[test]
    fn name_hash_walks_back_to_front() {
        assert_eq!(name_hash("ab"), fnv1a64(b"ba"));
        assert_ne!(name_hash("example.com"), name_hash("com.example"));
    }

    #[test]
    fn diff_updates_changes_and_deletes_leftovers() {
        let old = state().records().expect("records");
        assert!(diff(&old, &old).is_empty());
        let mut next = state();
        next.cgroups.clear();
        next.cgroups.insert(78);
        next.bindings.clear();
        next.bindings.insert((78, 1));
        let new = next.records().expect("records");
        let ops = diff(&old, &new);
        let adds = ops.iter().filter(|op| op.value.is_some()).count();
        let dels = ops.iter().filter(|op| op.value.is_none()).count();
        assert_eq!((adds, dels), (2, 2));
        let debug = format!("{ops:?}");
        assert!(!debug.contains("sk-live"), "{debug}");
    }
}
