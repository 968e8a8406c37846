//! Host BPF tier (root): a persistent data plane leaves its maps and links
//! pinned, and the next process adopts them instead of starting empty.
//! Run with `cargo test --test pins -- --ignored` as root.

use std::path::{Path, PathBuf};

use kloak::dataplane::maps::{diff, DesiredState, Records};
use kloak::dataplane::{DataPlane, LoaderConfig, ObserveReason};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

fn config(pin_dir: &Path) -> LoaderConfig {
    LoaderConfig {
        pin_dir: pin_dir.to_path_buf(),
        persist: true,
        // Observe programs load on every kernel, lockdown or not.
        rewrite: false,
        observe_reason: ObserveReason::Requested,
        hold_new_executables: false,
    }
}

#[test]
#[ignore = "needs root and a BPF-capable kernel"]
fn restart_adopts_pinned_maps_and_links() {
    kloak::dataplane::probes::probe(true);
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/kloak/test-pins-{}",
        std::process::id()
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cgroup_id: u64 = 0x4b4c_4f41_4b00_0001;
    let mut state = DesiredState::default();
    state.cgroups.insert(cgroup_id);
    let records = state.records().expect("records");

    let (first, _events) = DataPlane::start(config(&pin_dir)).expect("first start");
    runtime
        .block_on(first.apply(diff(&Records::new(), &records)))
        .expect("apply");
    first.shutdown();

    let cgroups = pin_dir.join("maps/cgroups");
    assert!(cgroups.exists(), "maps stay pinned after the process ends");
    assert!(
        pin_dir.join("links/tp-sys_enter_write").exists(),
        "links stay pinned"
    );
    let map = MapHandle::from_pinned_path(&cgroups).expect("open pinned map");
    assert!(
        map.lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
            .expect("lookup")
            .is_some(),
        "state survives without any process"
    );

    // The next agent adopts: the cgroup written by the first is still there.
    let (second, _events) = DataPlane::start(config(&pin_dir)).expect("second start");
    let counters = runtime.block_on(second.counters()).expect("counters");
    assert!(!counters.is_empty());
    second.shutdown();
    let map = MapHandle::from_pinned_path(&cgroups).expect("open pinned map");
    assert!(map
        .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .is_some());

    std::fs::remove_dir_all(&pin_dir).expect("remove pins");
}
