//! Processes the kernel stopped at exec and nobody resumed.
//!
//! The kernel records every stop in the pinned `held` map before it sends
//! SIGSTOP; resuming a process clears its record. Records that stay are the
//! agent's to answer anyway: an agent that died between the stop and the
//! SIGCONT (the next one sweeps them all at start), or an event lost on the
//! way (swept once older than a grace period).

use std::path::Path;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::hooking;
use super::loader::DataPlane;
use super::maps::{MapName, MapOp, Records};
use super::skel::types::kloak_held;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldProcess {
    pub pid: u32,
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME of the stop.
    pub held_ns: u64,
}

/// The held processes in a snapshot of the `held` map.
pub fn decode(records: &Records) -> Vec<HeldProcess> {
    records
        .iter()
        .filter(|((map, _), _)| *map == MapName::Held)
        .filter_map(|((_, key), value)| {
            let pid = u32::from_ne_bytes(key.as_slice().try_into().ok()?);
            let mut raw = kloak_held::default();
            plain::copy_from_bytes(&mut raw, value).ok()?;
            Some(HeldProcess {
                pid,
                cgroup_id: raw.cgroup_id,
                held_ns: raw.held_ns,
            })
        })
        .collect()
}

/// The processes held for longer than `grace` at `now_ns`.
pub fn overdue(held: &[HeldProcess], now_ns: u64, grace: Duration) -> Vec<u32> {
    let grace = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
    held.iter()
        .filter(|process| now_ns.saturating_sub(process.held_ns) >= grace)
        .map(|process| process.pid)
        .collect()
}

/// Clears a resumed process's record.
pub fn release(pid: u32) -> MapOp {
    MapOp {
        map: MapName::Held,
        key: pid.to_ne_bytes().to_vec(),
        value: None,
    }
}

/// The clock the kernel stamps stops with (`bpf_ktime_get_boot_ns`).
pub fn boot_time_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Resumes every process recorded in a pinned `held` map and clears its record,
/// without the data plane: for an agent before it loads (loading takes seconds,
/// a held workload must not wait for it) and for `kloak run`'s guard. Returns
/// the pids that were resumed (records of processes that are gone just go).
pub fn resume_pinned(held: &MapHandle) -> Vec<u32> {
    let mut resumed = Vec::new();
    for key in held.keys() {
        let Some(pid) = key.as_slice().try_into().ok().map(u32::from_ne_bytes) else {
            continue;
        };
        if let Ok(raw) = i32::try_from(pid) {
            if kill(Pid::from_raw(raw), Signal::SIGCONT).is_ok() {
                resumed.push(pid);
            }
        }
        let _ = held.delete(&key);
    }
    resumed
}

/// Before an agent loads (seconds): the kernel stops holding execs until this
/// agent can answer them (the heartbeat of the agent before it may still look
/// fresh), and what earlier agents left stopped is resumed. Those processes,
/// and files first run meanwhile, run unhooked until their files are hooked
/// (their placeholders go out unchanged: fail closed).
pub fn take_over(pin_dir: &Path) -> Vec<u32> {
    let maps = pin_dir.join("maps");
    if !maps.join("held").exists() {
        return Vec::new();
    }
    match MapHandle::from_pinned_path(maps.join("agent_heartbeat")) {
        Ok(beat) => {
            if let Err(err) = beat.update(&0u32.to_ne_bytes(), &0u64.to_ne_bytes(), MapFlags::ANY) {
                warn!(%err, "cannot stop exec holds while loading");
            }
        }
        // Pins of a version without it: its holds are answered by the sweep after loading.
        Err(err) => debug!(%err, "no pinned agent heartbeat"),
    }
    match MapHandle::from_pinned_path(maps.join("held")) {
        Ok(held) => {
            let pids = resume_pinned(&held);
            say_resumed(
                &pids,
                "resumed processes an earlier agent left stopped at exec",
            );
            pids
        }
        Err(err) => {
            warn!(%err, "cannot open the pinned held map");
            Vec::new()
        }
    }
}

/// Hooks and resumes every process held for longer than `grace` (all of them
/// with a zero grace, at start); returns their pids.
pub async fn sweep(dataplane: &DataPlane, proc_root: &Path, grace: Duration) -> Vec<u32> {
    let records = match dataplane.snapshot(&[MapName::Held]).await {
        Ok(records) => records,
        Err(err) => {
            warn!(%err, "cannot read held processes");
            return Vec::new();
        }
    };
    let pids = overdue(&decode(&records), boot_time_ns(), grace);
    for &pid in &pids {
        hooking::hook_exec(dataplane, proc_root, pid).await;
    }
    say_resumed(&pids, "resumed processes held at exec without an answer");
    pids
}

fn say_resumed(pids: &[u32], what: &'static str) {
    if !pids.is_empty() {
        info!(processes = pids.len(), ?pids, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;

    fn record(pid: u32, cgroup_id: u64, held_ns: u64) -> ((MapName, Vec<u8>), Zeroizing<Vec<u8>>) {
        let raw = kloak_held { cgroup_id, held_ns };
        (
            (MapName::Held, pid.to_ne_bytes().to_vec()),
            Zeroizing::new(crate::dataplane::skel::bytes_of(&raw).to_vec()),
        )
    }

    #[test]
    fn overdue_processes_are_the_old_ones() {
        let records: Records = [record(10, 7, 1_000), record(11, 7, 5_000_000_000)]
            .into_iter()
            .collect();
        let held = decode(&records);
        assert_eq!(held.len(), 2);
        assert_eq!(
            overdue(&held, 5_500_000_000, Duration::from_secs(1)),
            [10],
            "the stop 0.5 s ago is still being answered by its event"
        );
        let mut all = overdue(&held, 5_500_000_000, Duration::ZERO);
        all.sort();
        assert_eq!(all, [10, 11], "at start every record is swept");
    }

    #[test]
    fn release_deletes_the_record() {
        let op = release(42);
        assert_eq!(op.map, MapName::Held);
        assert_eq!(op.key, 42u32.to_ne_bytes());
        assert!(op.value.is_none());
    }
}
