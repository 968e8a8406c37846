//! Values replaced or deleted while records bound to them are in flight.
//!
//! The ciphertext strategy computes a record's tag difference once, when it
//! binds the record, from the value of that moment; every transmission of
//! the record (retransmissions included) must XOR that same value in, or the
//! peer rejects the record. So a value that a rotation replaces, or a
//! deletion removes, moves to the `retired` map under its own id
//! (`kloak_secret.value_id`), where the kernel still finds it for the patches
//! that name it, and leaves once no live patch does: the peer acknowledged
//! them or the connection closed.

use std::collections::BTreeSet;
use std::mem::offset_of;
use std::time::{Duration, Instant};

use super::skel::bytes_of;
use super::skel::types::{
    kloak_ct_flow, kloak_patch_state, kloak_retired_key, kloak_secret, kloak_secret_key,
};

/// A binding that read the old value just before it was replaced publishes
/// its patch within microseconds; nothing is released younger than this.
pub const GRACE: Duration = Duration::from_secs(1);

/// The id of the value a `secrets` record holds.
pub fn value_id(record: &[u8]) -> Option<u64> {
    let at = offset_of!(kloak_secret, value_id);
    let bytes = record.get(at..at + 8)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// The `retired` key of the value `old` (a `secrets` record under
/// `secret_key`) when a map update replaces it with `new` (`None`: deleted);
/// `None` when the value stays.
pub fn retiring(secret_key: &[u8], old: &[u8], new: Option<&[u8]>) -> Option<Vec<u8>> {
    let old_id = value_id(old)?;
    if new.and_then(value_id) == Some(old_id) {
        return None;
    }
    let mut key = kloak_retired_key::default();
    let n = key.key.bytes.len().min(secret_key.len());
    key.key.bytes[..n].copy_from_slice(&secret_key[..n]);
    key.value_id = old_id;
    Some(bytes_of(&key).to_vec())
}

fn decode_flow(flow: &[u8]) -> Option<kloak_ct_flow> {
    let mut record = kloak_ct_flow::default();
    plain::copy_from_bytes(&mut record, flow).ok()?;
    Some(record)
}

const LIVE: u32 = kloak_patch_state::KLOAK_PATCH_LIVE.0;

/// Whether a `ct_flows` record still has a patch to apply (data not yet acknowledged).
pub fn has_live_patch(flow: &[u8]) -> bool {
    decode_flow(flow).is_some_and(|record| record.patches.iter().any(|p| p.state == LIVE))
}

/// Every (secret key, value id) a live value patch of this `ct_flows` record names.
fn named_values(flow: &[u8], named: &mut BTreeSet<Vec<u8>>) {
    let Some(record) = decode_flow(flow) else {
        return;
    };
    for patch in &record.patches {
        if patch.state == LIVE && patch.use_delta == 0 {
            let key = kloak_retired_key {
                key: kloak_secret_key {
                    bytes: patch.key.bytes,
                },
                value_id: patch.value_id,
            };
            named.insert(bytes_of(&key).to_vec());
        }
    }
}

/// The retired values this agent keeps, and since when.
#[derive(Default)]
pub struct Retirements {
    pending: Vec<(Vec<u8>, Instant)>,
}

impl Retirements {
    /// `key` moved to the `retired` map (or was found there at start).
    pub fn add(&mut self, key: Vec<u8>, now: Instant) {
        self.pending.retain(|(k, _)| *k != key);
        self.pending.push((key, now));
    }

    /// Some value is old enough to be released if nothing names it.
    pub fn due(&self, now: Instant) -> bool {
        self.pending
            .iter()
            .any(|(_, since)| now.duration_since(*since) >= GRACE)
    }

    /// The retired keys to delete now, given every `ct_flows` record; they
    /// are forgotten here.
    pub fn release<'a>(
        &mut self,
        flows: impl IntoIterator<Item = &'a [u8]>,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let mut named = BTreeSet::new();
        for flow in flows {
            named_values(flow, &mut named);
        }
        let mut released = Vec::new();
        self.pending.retain(|(key, since)| {
            let free = now.duration_since(*since) >= GRACE && !named.contains(key);
            if free {
                released.push(key.clone());
            }
            !free
        });
        released
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::skel::types::kloak_ct_patch;

    fn secret(value_id: u64) -> Vec<u8> {
        let mut record = Box::<kloak_secret>::default();
        record.value_id = value_id;
        bytes_of(&*record).to_vec()
    }

    fn flow(patches: &[(u32, u32, [u8; 16], u64)]) -> Vec<u8> {
        let mut record = kloak_ct_flow::default();
        for (slot, &(state, use_delta, key, value_id)) in record.patches.iter_mut().zip(patches) {
            *slot = kloak_ct_patch {
                state,
                use_delta,
                key: kloak_secret_key { bytes: key },
                value_id,
                ..Default::default()
            };
        }
        bytes_of(&record).to_vec()
    }

    const FREE: u32 = kloak_patch_state::KLOAK_PATCH_FREE.0;

    #[test]
    fn a_replaced_or_deleted_value_is_retired_an_unchanged_one_is_not() {
        let key = [7u8; 16];
        assert!(retiring(&key, &secret(5), Some(&secret(5))).is_none());
        let rotated = retiring(&key, &secret(5), Some(&secret(6))).expect("rotation retires");
        let deleted = retiring(&key, &secret(5), None).expect("deletion retires");
        assert_eq!(rotated, deleted);
        let mut expected = kloak_retired_key::default();
        expected.key.bytes = key;
        expected.value_id = 5;
        assert_eq!(rotated, bytes_of(&expected));
    }

    #[test]
    fn a_retired_value_stays_while_a_live_patch_names_it_and_for_the_grace() {
        let key = [7u8; 16];
        let retired = retiring(&key, &secret(5), Some(&secret(6))).unwrap();
        let start = Instant::now();
        let mut retirements = Retirements::default();
        retirements.add(retired.clone(), start);
        let in_flight = flow(&[(LIVE, 0, key, 5)]);
        // Tag patches (use_delta) and freed slots name no value.
        let acked = flow(&[(FREE, 0, key, 5), (LIVE, 1, [0; 16], 0), (LIVE, 0, key, 6)]);
        assert!(!retirements.due(start));
        assert!(retirements.release([acked.as_slice()], start).is_empty());
        let later = start + GRACE;
        assert!(retirements.due(later));
        assert!(retirements
            .release([in_flight.as_slice(), acked.as_slice()], later)
            .is_empty());
        assert_eq!(retirements.release([acked.as_slice()], later), [retired]);
        assert!(retirements.is_empty());
        assert!(has_live_patch(&in_flight) && has_live_patch(&acked));
        assert!(!has_live_patch(&flow(&[(FREE, 0, key, 5)])));
    }
}
