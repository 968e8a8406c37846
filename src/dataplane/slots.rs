//! Slots of the `targets` map: one per hooked Go binary, found by the uprobe's
//! attach cookie.
//!
//! The map and the links (with their cookies) are pinned and outlive the
//! agent, so slots are not counted from 0 at each start: they are read back
//! from the map, where each record names its file, and a file keeps its slot
//! across restarts. Detaching a file frees its slot.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::targets::FileId;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("all {0} Go target slots are in use")]
pub struct SlotsFull(pub u32);

#[derive(Debug, Default)]
pub struct TargetSlots {
    by_file: BTreeMap<FileId, u32>,
    used: BTreeSet<u32>,
    capacity: u32,
}

impl TargetSlots {
    /// The slots the map holds now: `(slot, file)` for every record in use.
    pub fn from_records(records: impl IntoIterator<Item = (u32, FileId)>, capacity: u32) -> Self {
        let mut slots = Self {
            capacity,
            ..Self::default()
        };
        for (slot, file) in records {
            if slot < capacity && slots.used.insert(slot) {
                slots.by_file.insert(file, slot);
            }
        }
        slots
    }

    /// The file's slot: the one it has, or the lowest free one.
    pub fn assign(&mut self, file: FileId) -> Result<u32, SlotsFull> {
        if let Some(&slot) = self.by_file.get(&file) {
            return Ok(slot);
        }
        let slot = (0..self.capacity)
            .find(|slot| !self.used.contains(slot))
            .ok_or(SlotsFull(self.capacity))?;
        self.used.insert(slot);
        self.by_file.insert(file, slot);
        Ok(slot)
    }

    /// Frees the file's slot; returns it so the record can be cleared.
    pub fn release(&mut self, file: FileId) -> Option<u32> {
        let slot = self.by_file.remove(&file)?;
        self.used.remove(&slot);
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64) -> FileId {
        FileId { dev: 8, ino }
    }

    /*
     * The restart fault: slots counted from 0 gave a new file the slot that a
     * pinned link of another file still used (its cookie), so that binary's
     * writes were decoded with the wrong function address.
     */
    #[test]
    fn a_restarted_agent_keeps_every_file_in_its_slot() {
        let mut before = TargetSlots::from_records([], 16);
        assert_eq!(before.assign(file(1)), Ok(0));
        assert_eq!(before.assign(file(2)), Ok(1));
        let mut after = TargetSlots::from_records([(0, file(1)), (1, file(2))], 16);
        assert_eq!(after.assign(file(3)), Ok(2), "a new file takes a free slot");
        assert_eq!(after.assign(file(2)), Ok(1), "a known file keeps its slot");
    }

    #[test]
    fn detached_files_free_their_slot() {
        let mut slots = TargetSlots::from_records([(0, file(1)), (1, file(2))], 2);
        assert_eq!(slots.assign(file(3)), Err(SlotsFull(2)));
        assert_eq!(slots.release(file(1)), Some(0));
        assert_eq!(slots.release(file(1)), None);
        assert_eq!(slots.assign(file(3)), Ok(0));
    }

    #[test]
    fn records_outside_the_map_are_ignored() {
        let mut slots = TargetSlots::from_records([(7, file(1))], 4);
        assert_eq!(slots.assign(file(1)), Ok(0));
    }
}
