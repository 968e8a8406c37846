//! Pinned kloak maps: how full each one is, and what the counters say about recent
//! decisions (rewritten, blocked and why).

use std::fs;
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::{Check, Verdict};
use crate::dataplane::events::Reason;

/// `KLOAK_CTR_REWRITTEN` in bpf/include/kloak.h.
const CTR_REWRITTEN: u32 = 6;
/// `KLOAK_CTR_BLOCKED_BASE`: the counter of reason `r` is at this index plus `r`.
const CTR_BLOCKED_BASE: u32 = 16;
/// `KLOAK_CTR_MAX`.
const CTR_MAX: u32 = 32;

/// Fill level in percent above which a map is worth a warning.
const WARN_PERCENT: u64 = 80;

/// Verdict for a map holding `count` of `max` entries. A full hash map refuses inserts, so
/// new secrets or bindings are silently not tracked: a failure. A full LRU map evicts its
/// oldest entries instead, which is its normal steady state under load: a warning at most.
pub fn fill_verdict(count: u64, max: u64, lru: bool) -> Verdict {
    if (max == 0 || count >= max) && !lru {
        Verdict::Fail
    } else if count.saturating_mul(100) > max.saturating_mul(WARN_PERCENT) || count >= max {
        Verdict::Warn
    } else {
        Verdict::Ok
    }
}

/// Only hash maps fill up: arrays always hold max_entries and ring buffers count bytes.
fn has_fill_level(ty: MapType) -> bool {
    matches!(
        ty,
        MapType::Hash | MapType::LruHash | MapType::PercpuHash | MapType::LruPercpuHash
    )
}

fn map_check(instance: &str, name: &str, path: &Path) -> Option<Check> {
    let check_name = format!("map {instance}/{name}");
    let map = match MapHandle::from_pinned_path(path) {
        Ok(map) => map,
        Err(err) => {
            return Some(Check::warn(
                check_name,
                format!("cannot open {}: {err}", path.display()),
                "run kloak doctor as root (CAP_BPF)",
            ))
        }
    };
    let ty = map.map_type();
    if !has_fill_level(ty) {
        return None;
    }
    let count = map.keys().count() as u64;
    let max = u64::from(map.max_entries());
    let lru = matches!(ty, MapType::LruHash | MapType::LruPercpuHash);
    let detail = format!("{count}/{max} entries");
    Some(match fill_verdict(count, max, lru) {
        Verdict::Ok => Check::ok(check_name, detail),
        verdict => Check {
            name: check_name,
            verdict,
            detail,
            remedy: Some(
                if lru {
                    "when full the oldest entries are evicted: rebuild with a larger max_entries \
                     (bpf/maps.bpf.h) or spread the connections over more nodes"
                } else {
                    "when full new entries are refused: rebuild with a larger max_entries \
                     (bpf/maps.bpf.h) or manage fewer secrets on this node"
                }
                .to_owned(),
            ),
        },
    })
}

/// Sums of the per-CPU `counters` map, indexed by `kloak_counter`.
fn read_counters(path: &Path) -> Result<Vec<u64>, libbpf_rs::Error> {
    let map = MapHandle::from_pinned_path(path)?;
    (0..CTR_MAX)
        .map(|index| {
            let per_cpu = map
                .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .filter_map(|bytes| bytes.get(..8)?.try_into().ok())
                .map(u64::from_ne_bytes)
                .sum())
        })
        .collect()
}

/// The decisions line for one instance's counters (pure).
pub fn decisions_check(instance: &str, counters: &[u64]) -> Check {
    let name = format!("decisions {instance}");
    let rewritten = counters.get(CTR_REWRITTEN as usize).copied().unwrap_or(0);
    let blocked: Vec<String> = (CTR_BLOCKED_BASE..CTR_MAX)
        .filter_map(|index| {
            let count = *counters.get(index as usize)?;
            (count > 0).then(|| {
                format!(
                    "{}={count}",
                    Reason::from_raw(index - CTR_BLOCKED_BASE).name()
                )
            })
        })
        .collect();
    if blocked.is_empty() {
        Check::ok(name, format!("rewritten {rewritten}, blocked 0"))
    } else {
        Check::warn(
            name,
            format!("rewritten {rewritten}, blocked: {}", blocked.join(", ")),
            "blocked writes went out with the placeholder: check the secret's allowed hosts and \
             ports and the trusted DNS servers (controller logs name each block)",
        )
    }
}

/// One line per hash map of every instance under `pin_root`, plus its decisions.
pub fn pinned(pin_root: &Path) -> Vec<Check> {
    let Ok(entries) = fs::read_dir(pin_root) else {
        return vec![Check::ok(
            "pinned maps",
            format!("none under {} (kloak not running here)", pin_root.display()),
        )];
    };
    let mut instances: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("maps").is_dir())
        .collect();
    instances.sort();
    let mut checks = Vec::new();
    for dir in instances {
        let instance = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let maps_dir = dir.join("maps");
        let mut names: Vec<String> = fs::read_dir(&maps_dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in &names {
            checks.extend(map_check(&instance, name, &maps_dir.join(name)));
        }
        if names.iter().any(|n| n == "counters") {
            checks.push(match read_counters(&maps_dir.join("counters")) {
                Ok(counters) => decisions_check(&instance, &counters),
                Err(err) => Check::warn(
                    format!("decisions {instance}"),
                    format!("cannot read counters: {err}"),
                    "run kloak doctor as root (CAP_BPF)",
                ),
            });
        }
    }
    if checks.is_empty() {
        checks.push(Check::ok(
            "pinned maps",
            format!("no instance under {}", pin_root.display()),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_levels() {
        assert_eq!(fill_verdict(0, 1024, false), Verdict::Ok);
        assert_eq!(fill_verdict(819, 1024, false), Verdict::Ok);
        assert_eq!(fill_verdict(820, 1024, false), Verdict::Warn);
        assert_eq!(fill_verdict(1023, 1024, false), Verdict::Warn);
        assert_eq!(fill_verdict(1024, 1024, false), Verdict::Fail);
        assert_eq!(fill_verdict(0, 0, false), Verdict::Fail);
        assert_eq!(fill_verdict(819, 1024, true), Verdict::Ok);
        assert_eq!(fill_verdict(900, 1024, true), Verdict::Warn);
        assert_eq!(fill_verdict(1024, 1024, true), Verdict::Warn);
    }

    #[test]
    fn decisions_name_block_reasons() {
        let mut counters = vec![0; CTR_MAX as usize];
        counters[CTR_REWRITTEN as usize] = 5;
        let check = decisions_check("controller", &counters);
        assert_eq!(check.verdict, Verdict::Ok);
        assert_eq!(check.detail, "rewritten 5, blocked 0");
        // Reason 1 is KLOAK_REASON_HOST_NOT_ALLOWED.
        counters[CTR_BLOCKED_BASE as usize + 1] = 3;
        let check = decisions_check("controller", &counters);
        assert_eq!(check.verdict, Verdict::Warn);
        assert_eq!(check.detail, "rewritten 5, blocked: host_not_allowed=3");
        assert!(check.remedy.is_some());
    }

    #[test]
    fn no_pin_root_is_fine() {
        let root = tempfile::tempdir().expect("tempdir");
        let checks = pinned(&root.path().join("missing"));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].verdict, Verdict::Ok);
        let checks = pinned(root.path());
        assert_eq!(checks[0].verdict, Verdict::Ok);
    }
}
