//! Host BPF tier (root), S6: a placeholder written by a protected process whose
//! cgroup is not bound to that secret is never rewritten, and the event says
//! "not bound". Two cgroups share one data plane, as pods share a node.
//! Run with `cargo test --test binding -- --ignored` as root, after
//! `scripts/build-test-clients.sh` (certificates).

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kloak::dataplane::maps::{diff, DesiredState, Records, SecretState};
use kloak::dataplane::targets::{file_id, inspect, system_tls_libraries};
use kloak::dataplane::{
    DataPlane, EventKind, LoaderConfig, ObserveReason, Reason, RewriteStrategy,
};
use kloak::placeholder::{generate, SecretValue};
use kloak::policy::Policy;

const SECRET: &str = "sk-live-bound-to-a-0123456789";

struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Self {
        let root = kloak::dataplane::probes::cgroup2_mount().expect("cgroup v2 mounted");
        let path = root.join(name);
        fs::create_dir_all(&path).expect("create cgroup");
        Self(path)
    }

    fn id(&self) -> u64 {
        fs::metadata(&self.0).expect("cgroup").ino()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
#[ignore = "needs root and a BPF-capable kernel"]
fn placeholder_of_another_cgroup_is_not_rewritten() {
    let features = kloak::dataplane::probes::probe(true);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let certs = root.join("target/e2e/certs");
    assert!(
        certs.join("server.pem").exists(),
        "run scripts/build-test-clients.sh first"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let record = work.path().join("server.rec");
    let mut server = Command::new("python3")
        .arg(root.join("tests/fixtures/tls_server.py"))
        .args(["--listen", "127.0.0.1:18443", "--record"])
        .arg(&record)
        .arg("--cert")
        .arg(certs.join("server.pem"))
        .arg("--key")
        .arg(certs.join("server.key"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start TLS server");
    let mut ready = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("server ready line");
    assert!(ready.starts_with("ready"), "{ready}");

    let bound = Cgroup::create(&format!("kloak-test-bound-{}", std::process::id()));
    let other = Cgroup::create(&format!("kloak-test-other-{}", std::process::id()));
    let value = SecretValue::new(SECRET.as_bytes().to_vec());
    let placeholder = generate(&value, &mut rand::rngs::OsRng).expect("placeholder");
    let mut state = DesiredState::default();
    state.cgroups.extend([bound.id(), other.id()]);
    state.secrets.insert(
        7,
        SecretState {
            placeholder: placeholder.clone(),
            value,
            policy: Policy::default(),
        },
    );
    state.bindings.insert((bound.id(), 7));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (dataplane, mut events) = DataPlane::start(LoaderConfig {
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/kloak/test-binding-{}",
            std::process::id()
        )),
        persist: false,
        rewrite: features.write_user,
        observe_reason: ObserveReason::Lockdown,
        hold_new_executables: false,
        strategy: RewriteStrategy::InPlace,
        observe: false,
        tc_handle: 0x6b7f_0000,
    })
    .expect("data plane");
    runtime
        .block_on(dataplane.apply(diff(&Records::new(), &state.records().expect("records"))))
        .expect("apply");
    for library in system_tls_libraries(Path::new("/")) {
        if let Ok(Some(target)) = inspect(&library) {
            let id = file_id(&library).expect("stat");
            runtime
                .block_on(dataplane.hook_file(&library, id, Some(target)))
                .expect("attach");
        }
    }

    // curl runs in the enabled but unbound cgroup and sends the bound cgroup's placeholder.
    let run_curl = || {
        let status = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec curl -sS -m 10 --cacert "$1" -H "Authorization: Bearer $2" https://127.0.0.1:18443/"#)
        .arg(&other.0)
        .arg(certs.join("ca.pem"))
        .arg(placeholder.as_str())
        .stdout(Stdio::null())
        .status()
        .expect("curl");
        assert!(status.success(), "curl failed");
    };
    run_curl();

    let reasons = blocked_reasons(&runtime, &mut events, Duration::from_secs(5));

    // Detached, the same write is no longer seen at all.
    for library in system_tls_libraries(Path::new("/")) {
        let id = file_id(&library).expect("stat");
        runtime.block_on(dataplane.detach_file(id)).expect("detach");
    }
    run_curl();
    let after_detach = blocked_reasons(&runtime, &mut events, Duration::from_secs(2));
    assert!(
        after_detach.is_empty(),
        "decisions after detach: {after_detach:?}"
    );
    dataplane.shutdown();
    let _ = server.kill();
    let _ = server.wait();
    let received = fs::read_to_string(&record).expect("server record");
    assert!(reasons.contains(&Reason::NotBound), "events: {reasons:?}");
    assert!(!received.is_empty(), "the server got the request");
    let decoded: Vec<String> = received
        .lines()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("json line");
            let b64 = json["data_b64"].as_str().expect("data_b64").to_owned();
            String::from_utf8_lossy(&base64_decode(&b64)).into_owned()
        })
        .collect();
    assert!(
        decoded.iter().any(|d| d.contains(placeholder.as_str())),
        "placeholder arrived unchanged"
    );
    assert!(
        decoded.iter().all(|d| !d.contains(SECRET)),
        "the real value never left"
    );
}

/// Reasons of the blocked decisions seen within `wait`.
fn blocked_reasons(
    runtime: &tokio::runtime::Runtime,
    events: &mut kloak::dataplane::EventReceiver,
    wait: Duration,
) -> Vec<Reason> {
    let deadline = Instant::now() + wait;
    let mut reasons = Vec::new();
    while Instant::now() < deadline {
        let next = runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        });
        match next {
            Ok(Some(event)) if event.kind == EventKind::Blocked => reasons.push(event.reason),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    reasons
}

fn base64_decode(text: &str) -> Vec<u8> {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let Some(v) = TABLE.iter().position(|&t| t == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
