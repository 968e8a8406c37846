//! Host BPF tier (root): a persistent data plane leaves its maps and links
//! pinned, and the next process adopts them instead of starting empty.
//! Run with `cargo test --test pins -- --ignored` as root.

use std::path::{Path, PathBuf};

use kloak::controller::agent::OWNED_MAPS;
use kloak::dataplane::maps::{diff, DesiredState, Records, SecretState};
use kloak::dataplane::{DataPlane, LoaderConfig, ObserveReason, RewriteStrategy};
use kloak::placeholder::{self, SecretValue};
use kloak::policy::{parse_hosts, Policy};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

fn config(pin_dir: &Path) -> LoaderConfig {
    LoaderConfig {
        pin_dir: pin_dir.to_path_buf(),
        persist: true,
        // Observe programs load on every kernel, lockdown or not.
        rewrite: false,
        observe_reason: ObserveReason::Requested,
        hold_new_executables: false,
        strategy: RewriteStrategy::InPlace,
        observe: false,
        tc_handle: 0x6b7f_0000,
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
    let value = SecretValue::new(b"sk-pins-0123456789abcdef".to_vec());
    let placeholder = placeholder::generate(&value, &mut rand::rngs::OsRng).expect("placeholder");
    state.secrets.insert(
        7,
        SecretState {
            placeholder,
            value,
            policy: Policy {
                hosts: parse_hosts("api.example.com, *.example.org").expect("hosts"),
                port: Some(443),
            },
        },
    );
    state.bindings.insert((cgroup_id, 7));
    state
        .resolvers
        .insert("10.96.0.10:53".parse().expect("addr"));
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

    // The next agent adopts: the cgroup written by the first is still there,
    // and a snapshot of the owned maps is exactly what was written, so the
    // new agent's first diff against the same desired state is empty (no
    // entry is deleted and re-added: no window without rewrites).
    let (second, _events) = DataPlane::start(config(&pin_dir)).expect("second start");
    let counters = runtime.block_on(second.counters()).expect("counters");
    assert!(!counters.is_empty());
    let snapshot = runtime
        .block_on(second.snapshot(OWNED_MAPS))
        .expect("snapshot");
    let owned: Records = records
        .iter()
        .filter(|((map, _), _)| OWNED_MAPS.contains(map))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    assert_eq!(
        snapshot.len(),
        owned.len(),
        "every owned record and nothing else"
    );
    assert!(
        diff(&snapshot, &owned).is_empty(),
        "adopted state equals the desired state"
    );
    second.shutdown();
    let map = MapHandle::from_pinned_path(&cgroups).expect("open pinned map");
    assert!(map
        .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .is_some());

    std::fs::remove_dir_all(&pin_dir).expect("remove pins");
}
