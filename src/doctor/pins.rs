//! Pinned kloak maps: how full each one is, and what the counters say about recent
//! decisions (rewritten, blocked and why).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::{Check, Verdict};
use crate::dataplane::events::Reason;
use crate::dataplane::maps::{file_key, FileState};
use crate::dataplane::skel::types::kloak_counter;
use crate::dataplane::targets::FileId;

const CTR_REWRITTEN: u32 = kloak_counter::KLOAK_CTR_REWRITTEN.0;
const CTR_CT_BOUND: u32 = kloak_counter::KLOAK_CTR_CT_BOUND.0;
const CTR_CT_SEGMENTS: u32 = kloak_counter::KLOAK_CTR_CT_SEGMENTS.0;
const CTR_CT_RETRANSMITS: u32 = kloak_counter::KLOAK_CTR_CT_RETRANSMITS.0;
const CTR_CT_FAILED: u32 = kloak_counter::KLOAK_CTR_CT_FAILED.0;
const CTR_CT_VALUE_GONE: u32 = kloak_counter::KLOAK_CTR_CT_VALUE_GONE.0;
const CTR_HOLD_NO_AGENT: u32 = kloak_counter::KLOAK_CTR_HOLD_NO_AGENT.0;
/// The counter of reason `r` is at this index plus `r`.
const CTR_BLOCKED_BASE: u32 = kloak_counter::KLOAK_CTR_BLOCKED_BASE.0;
const CTR_MAX: u32 = kloak_counter::KLOAK_CTR_MAX.0;

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
                     (bpf/*maps.h) or spread the connections over more nodes"
                } else {
                    "when full new entries are refused: rebuild with a larger max_entries \
                     (bpf/*maps.h) or manage fewer secrets on this node"
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
    let counter = |index: u32| counters.get(index as usize).copied().unwrap_or(0);
    let rewritten = format!(
        "rewritten {} in place, {} in the ciphertext ({} segments patched, {} of them retransmissions)",
        counter(CTR_REWRITTEN),
        counter(CTR_CT_BOUND),
        counter(CTR_CT_SEGMENTS),
        counter(CTR_CT_RETRANSMITS),
    );
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
    if counter(CTR_CT_FAILED) > 0 {
        Check::fail(
            name,
            format!(
                "{rewritten}; {} segments could not be patched whole",
                counter(CTR_CT_FAILED)
            ),
            "the kernel refused a packet load, store or checksum update: those records reached \
             the peer with a broken tag (the connection fails, the secret does not leak); \
             report it with `kloak doctor --json`",
        )
    } else if counter(CTR_CT_VALUE_GONE) > 0 {
        Check::fail(
            name,
            format!(
                "{rewritten}; {} segments of bound records found their secret's value gone",
                counter(CTR_CT_VALUE_GONE)
            ),
            "a value was released while records bound to it were in flight (the retired map was \
             full, or an agent without it ran): those records reached the peer with a broken tag; \
             report it with `kloak doctor --json`",
        )
    } else if counter(CTR_HOLD_NO_AGENT) > 0 {
        Check::warn(
            name,
            format!(
                "{rewritten}; {} executables started while no agent was alive",
                counter(CTR_HOLD_NO_AGENT)
            ),
            "they were not stopped at exec (nobody would have resumed them), so a file kloak had              not hooked yet ran unhooked and its placeholders went out unchanged until the agent              hooked it: keep the agent running (its restarts and crash loops show in its logs)",
        )
    } else if blocked.is_empty() {
        Check::ok(name, format!("{rewritten}, blocked 0"))
    } else {
        Check::warn(
            name,
            format!("{rewritten}, blocked: {}", blocked.join(", ")),
            "blocked writes went out with the placeholder: check the secret's allowed hosts and \
             ports and the trusted DNS servers (controller logs name each block)",
        )
    }
}

/// The instance directories `pin_dir` names: itself when it is one instance's
/// directory (`maps/` inside), else each subdirectory that is one, by name.
pub fn instance_dirs(pin_dir: &Path) -> Vec<(String, PathBuf)> {
    let name_of = |dir: &Path| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if pin_dir.join("maps").is_dir() {
        return vec![(name_of(pin_dir), pin_dir.to_path_buf())];
    }
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("maps").is_dir())
        .map(|p| (name_of(&p), p))
        .collect();
    dirs.sort();
    dirs
}

/// What one running kloak instance protects and has hooked, from its pinned maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceState {
    pub name: String,
    /// Enabled cgroup ids (the `cgroups` map).
    pub cgroups: BTreeSet<u64>,
    /// The `files` map: [`file_key`] bytes to what the instance found.
    pub files: BTreeMap<Vec<u8>, FileState>,
}

impl InstanceState {
    pub fn file(&self, id: FileId) -> Option<FileState> {
        self.files.get(&file_key(id)).copied()
    }
}

fn read_instance(name: &str, maps_dir: &Path) -> Result<InstanceState, libbpf_rs::Error> {
    let cgroups = MapHandle::from_pinned_path(maps_dir.join("cgroups"))?;
    let files = MapHandle::from_pinned_path(maps_dir.join("files"))?;
    let mut state = InstanceState {
        name: name.to_owned(),
        ..Default::default()
    };
    state.cgroups = cgroups
        .keys()
        .filter_map(|key| Some(u64::from_ne_bytes(key.as_slice().try_into().ok()?)))
        .collect();
    for key in files.keys() {
        // Entries evicted or deleted between listing and lookup are simply gone.
        let value = files.lookup(&key, MapFlags::ANY)?;
        if let Some(state_now) = value
            .and_then(|v| v.first().copied())
            .and_then(FileState::from_raw)
        {
            state.files.insert(key, state_now);
        }
    }
    Ok(state)
}

/// Every instance under `pin_dir` with what it protects; an instance whose maps
/// cannot be read becomes a warning instead.
pub fn instances(pin_dir: &Path) -> (Vec<InstanceState>, Vec<Check>) {
    let mut states = Vec::new();
    let mut problems = Vec::new();
    for (name, dir) in instance_dirs(pin_dir) {
        match read_instance(&name, &dir.join("maps")) {
            Ok(state) => states.push(state),
            Err(err) => problems.push(Check::warn(
                format!("containers of {name}"),
                format!("cannot read its cgroups and files maps: {err}"),
                "run kloak doctor as root (CAP_BPF)",
            )),
        }
    }
    (states, problems)
}

/// One line per hash map of every instance under `pin_dir`, plus its decisions.
pub fn pinned(pin_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    for (instance, dir) in instance_dirs(pin_dir) {
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
            format!(
                "no instance under {} (kloak not running here)",
                pin_dir.display()
            ),
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
        assert_eq!(
            check.detail,
            "rewritten 5 in place, 0 in the ciphertext (0 segments patched, 0 of them retransmissions), blocked 0"
        );
        // Reason 1 is KLOAK_REASON_HOST_NOT_ALLOWED.
        counters[CTR_BLOCKED_BASE as usize + 1] = 3;
        let check = decisions_check("controller", &counters);
        assert_eq!(check.verdict, Verdict::Warn);
        assert!(check.detail.ends_with("blocked: host_not_allowed=3"));
        counters[CTR_CT_VALUE_GONE as usize] = 1;
        assert_eq!(
            decisions_check("controller", &counters).verdict,
            Verdict::Fail
        );
        counters[CTR_CT_VALUE_GONE as usize] = 0;
        counters[CTR_BLOCKED_BASE as usize + 1] = 0;
        counters[CTR_HOLD_NO_AGENT as usize] = 2;
        let check = decisions_check("controller", &counters);
        assert_eq!(check.verdict, Verdict::Warn);
        assert!(check
            .detail
            .contains("2 executables started while no agent was alive"));
        counters[CTR_CT_FAILED as usize] = 1;
        assert_eq!(
            decisions_check("controller", &counters).verdict,
            Verdict::Fail
        );
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
        let (states, problems) = instances(root.path());
        assert!(states.is_empty() && problems.is_empty());
    }

    #[test]
    fn pin_dir_is_a_root_of_instances_or_one_instance() {
        let root = tempfile::tempdir().expect("tempdir");
        for dir in ["controller/maps", "run-42/maps", "stray/links"] {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        let names: Vec<String> = instance_dirs(root.path())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["controller", "run-42"]);
        let one = instance_dirs(&root.path().join("run-42"));
        assert_eq!(one, [("run-42".to_owned(), root.path().join("run-42"))]);
    }
}
