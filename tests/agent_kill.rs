//! Root tier (host and VM): the node agent's data plane, as a process of its
//! own, killed with SIGKILL twenty times while a workload sends requests.
//!
//! The agent here is this test binary run as `agent_kill agent ...`: it does
//! what the node agent does at every start with a pinned data plane (load and
//! adopt the pins, resume what an earlier agent left stopped at exec, apply
//! its desired state as a diff against what it found, hook the TLS libraries,
//! detach links nobody wants, answer exec holds) for one cgroup and an
//! IP-literal host, so no Kubernetes API is needed. The workload runs a fresh
//! copy of curl for each request, so kills land while processes are held at
//! exec and while records are in flight. One secret is rotated (same length)
//! at the 7th start and another deleted at the 14th.
//!
//! Checked: every request succeeds (no corrupted record), the allowed host
//! only ever gets a real value, no process stays stopped more than 2 s, a
//! deleted secret's placeholder is not rewritten once the agent that dropped
//! it is up, and after every start the pinned links belong to the files that
//! agent hooked.
//!
//! `cargo test --test agent_kill -- --ignored` as root after
//! `scripts/build-test-clients.sh` (certificates). Without `--ignored` it
//! only says why it did not run. Output ends like libtest's: `test result:`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kloak::dataplane::links;
use kloak::dataplane::maps::{diff, DesiredState, MapName, SecretState};
use kloak::dataplane::targets::system_tls_libraries;
use kloak::dataplane::wire::own_netns;
use kloak::dataplane::{
    held, hooking, DataPlane, EventKind, LoaderConfig, RewriteStrategy, WireSide,
};
use kloak::placeholder::{self, Placeholder, SecretValue};
use kloak::policy::{HostPattern, Policy};

const RESTARTS: usize = 20;
const ROTATE_AT: usize = 7;
const DELETE_AT: usize = 14;
const PORT: u16 = 18443;
const TC_HANDLE: u32 = 0x6b7e_0000;
const MAX_STOPPED: Duration = Duration::from_secs(2);
const KEEP_ID: u32 = 1;
const DROP_ID: u32 = 2;
/// Maps the agent owns and diffs against at start (the node agent's list).
const OWNED: &[MapName] = &[
    MapName::Cgroups,
    MapName::Secrets,
    MapName::Bindings,
    MapName::Names,
    MapName::Resolvers,
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("agent") {
        return match agent(&args[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("agent: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.iter().any(|a| a == "--ignored") {
        println!("test the_agent_killed_twenty_times_under_traffic ... ignored, needs root and a BPF-capable kernel");
        println!("test result: ok. 0 passed; 0 failed; 1 ignored");
        return ExitCode::SUCCESS;
    }
    let outcome = scenario();
    match &outcome {
        Ok(()) => {
            println!("test the_agent_killed_twenty_times_under_traffic ... ok");
            println!("test result: ok. 1 passed; 0 failed; 0 ignored");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("test the_agent_killed_twenty_times_under_traffic ... FAILED: {err:#}");
            println!("test result: FAILED. 0 passed; 1 failed; 0 ignored");
            ExitCode::FAILURE
        }
    }
}

/// What one agent start is told: written by the test as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct AgentSpec {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    /// (secret id, placeholder, value file)
    secrets: Vec<(u32, String, PathBuf)>,
    host: String,
    ready: PathBuf,
    inspections: PathBuf,
}

/// What an agent reports once it is serving.
#[derive(serde::Serialize, serde::Deserialize)]
struct Ready {
    /// (dev, ino) of every file it hooked.
    hooked: Vec<(u64, u64)>,
}

fn agent(args: &[String]) -> anyhow::Result<()> {
    let spec: AgentSpec = serde_json::from_str(&fs::read_to_string(
        args.first().context("usage: agent SPEC")?,
    )?)?;
    // Trace level, as the scenarios run kloak: the real values must not appear even there (S1).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("kloak=trace,info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(spec))
}

async fn serve(spec: AgentSpec) -> anyhow::Result<()> {
    // As the node agent does: a restarted agent does not inspect known files again.
    hooking::persist_inspections(&spec.inspections);
    let features = kloak::dataplane::probes::probe(true);
    let (dataplane, mut events) = DataPlane::start(LoaderConfig::for_kernel(
        spec.pin_dir.clone(),
        true,
        features.write_user,
        false,
        RewriteStrategy::Auto,
        TC_HANDLE,
    ))?;
    held::sweep(&dataplane, Path::new("/proc"), Duration::ZERO).await;
    let adopted = dataplane.snapshot(OWNED).await?;
    let cgroup_id = fs::metadata(&spec.cgroup)?.ino();
    let host: HostPattern = spec.host.parse()?;
    let mut state = DesiredState::default();
    state.cgroups.insert(cgroup_id);
    for (id, placeholder, value_file) in &spec.secrets {
        state.secrets.insert(
            *id,
            SecretState {
                placeholder: placeholder::validate(placeholder)?,
                value: SecretValue::new(fs::read(value_file)?),
                policy: Policy {
                    hosts: vec![host.clone()],
                    port: Some(PORT),
                },
            },
        );
        state.bindings.insert((cgroup_id, *id));
    }
    dataplane.apply(diff(&adopted, &state.records()?)).await?;
    dataplane.attach_dns(&spec.cgroup).await?;
    let lo = nix::net::if_::if_nametoindex("lo")?;
    dataplane
        .attach_wire(lo, "lo", WireSide::HostEgress, own_netns()?)
        .await?;
    let mut files = system_tls_libraries(Path::new("/"));
    files.push(fs::canonicalize("/usr/bin/curl")?);
    let mut hooked = Vec::new();
    for path in files {
        if let Some(done) = hooking::hook_file(&dataplane, &path).await {
            hooked.push((done.file.dev, done.file.ino));
        }
    }
    dataplane.prune_links().await?;
    fs::write(&spec.ready, serde_json::to_vec(&Ready { hooked })?)?;
    while let Some(event) = events.recv().await {
        if event.kind == EventKind::ExecHeld {
            hooking::hook_exec(&dataplane, Path::new("/proc"), event.pid).await;
        }
    }
    bail!("the event stream ended")
}

/// Kills the process (and reaps it) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the scenario set up, removed when dropped.
struct Setup {
    work: tempfile::TempDir,
    pin_dir: PathBuf,
    cgroup: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_dir);
        let handle = format!("0x{TC_HANDLE:x}");
        for direction in ["ingress", "egress"] {
            let _ = Command::new("tc")
                .args(["filter", "del", "dev", "lo", direction])
                .args(["handle", &handle, "bpf"])
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(procs) = fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = fs::remove_dir(&self.cgroup);
        let _ = &self.work;
    }
}

/// The checkout's files: the working directory when it is one (the VM tier runs this binary
/// from a staged copy; a checkout under /tmp is not visible in the guest), else the crate's.
fn repo(relative: &str) -> PathBuf {
    let staged = Path::new(".").join(relative);
    if staged.exists() {
        return staged;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn scenario() -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "needs root");
    let certs = repo("target/e2e/certs");
    ensure!(
        certs.join("server.pem").exists(),
        "{} missing: run scripts/build-test-clients.sh",
        certs.display()
    );
    let root = kloak::dataplane::probes::cgroup2_mount().context("cgroup v2 mounted")?;
    let setup = Setup {
        work: tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir())?,
        pin_dir: PathBuf::from(format!(
            "/sys/fs/bpf/kloak/test-kill-{}",
            std::process::id()
        )),
        cgroup: root.join(format!("kloak-test-kill-{}", std::process::id())),
    };
    fs::create_dir_all(&setup.cgroup)?;
    let work = setup.work.path();

    let mut rng = rand::rngs::OsRng;
    let keep_old = SecretValue::new(b"sk-keep-0123456789abcdefOLD".to_vec());
    let keep_new = SecretValue::new(b"sk-keep-0123456789abcdefNEW".to_vec());
    let dropped = SecretValue::new(b"sk-drop-0123456789abcdefXYZ".to_vec());
    let keep_placeholder = placeholder::generate(&keep_old, &mut rng)?;
    let drop_placeholder = placeholder::generate(&dropped, &mut rng)?;
    let keep_file = work.join("keep");
    let drop_file = work.join("drop");
    fs::write(&keep_file, keep_old.as_bytes())?;
    fs::write(&drop_file, dropped.as_bytes())?;

    let record = work.join("server.rec");
    let server = start_server(&certs, &record)?;
    // Started once the first agent serves: every request it makes must get a real value.
    let mut workload: Option<Reaped> = None;
    let stopped = StopWatch::start(setup.cgroup.clone());

    let mut drop_gone_after = None;
    let mut agent: Option<Reaped> = None;
    for start in 1..=RESTARTS {
        if start == ROTATE_AT {
            fs::write(&keep_file, keep_new.as_bytes())?;
        }
        let mut secrets = vec![(KEEP_ID, keep_placeholder.to_string(), keep_file.clone())];
        if start < DELETE_AT {
            secrets.push((DROP_ID, drop_placeholder.to_string(), drop_file.clone()));
        }
        let spec = AgentSpec {
            pin_dir: setup.pin_dir.clone(),
            cgroup: setup.cgroup.clone(),
            secrets,
            host: "127.0.0.1".into(),
            ready: work.join(format!("ready-{start}")),
            inspections: work.join("state/inspections.jsonl"),
        };
        let spec_path = work.join(format!("spec-{start}.json"));
        fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
        let started = Instant::now();
        let child = Reaped(
            Command::new(std::env::current_exe()?)
                .arg("agent")
                .arg(&spec_path)
                .stdout(Stdio::null())
                .stderr(fs::File::create(work.join(format!("agent-{start}.log")))?)
                .spawn()?,
        );
        let ready = wait_ready(&spec.ready, &work.join(format!("agent-{start}.log")))?;
        if workload.is_none() {
            workload = Some(start_workload(
                work,
                &setup.cgroup,
                &certs,
                &keep_placeholder,
                &drop_placeholder,
            )?);
        }
        let running = workload.as_mut().context("the workload started")?;
        let requests_then = count_requests(&record)?;
        if start == DELETE_AT {
            drop_gone_after = Some(requests_then);
        }
        check_links(&setup.pin_dir, &ready)
            .with_context(|| format!("pinned links after start {start}"))?;
        println!(
            "start {start}: serving after {} ms, {requests_then} requests so far",
            started.elapsed().as_millis()
        );
        // Let traffic pass through this agent, then kill it at a moment of its own.
        wait_requests(&record, requests_then + 1 + start % 3, running)?;
        std::thread::sleep(Duration::from_millis(37 * (start as u64 % 5)));
        if start < RESTARTS {
            drop(child); // SIGKILL
        } else {
            agent = Some(child);
        }
    }
    let last = count_requests(&record)?;
    let mut workload = workload.context("the workload started")?;
    wait_requests(&record, last + 3, &mut workload)?;
    fs::write(work.join("stop"), b"")?;
    let exit = workload.0.wait()?;
    let longest = stopped.finish();
    drop(agent);
    drop(server);

    let log = fs::read_to_string(work.join("workload.log"))?;
    ensure!(exit.success(), "the workload failed: {}", tail(&log));
    ensure!(
        !log.contains("FAIL"),
        "a request failed (a corrupted record or a stuck process): {}",
        tail(&log)
    );
    ensure!(
        longest <= MAX_STOPPED,
        "a workload process stayed stopped {} ms",
        longest.as_millis()
    );
    let requests = read_requests(&record)?;
    let keep_values = [keep_old.as_bytes(), keep_new.as_bytes()];
    let drop_gone_after = drop_gone_after.context("the deleting start ran")?;
    let mut placeholder_after_delete = 0;
    for (seq, request) in requests.iter().enumerate() {
        let keep = request
            .get("authorization")
            .map(|v| v.trim_start_matches("Bearer "));
        ensure!(
            keep.is_some_and(|v| keep_values.contains(&v.as_bytes())),
            "request {seq} ({}) reached the allowed host without a real value: {:?}",
            request.get("path").map_or("?", String::as_str),
            keep
        );
        let dropped_header = request.get("x-drop").map(String::as_str);
        // One request may have been bound before the agent that deleted the secret was up.
        if seq > drop_gone_after + 1 {
            ensure!(
                dropped_header == Some(drop_placeholder.as_str()),
                "request {seq}: the deleted secret's placeholder was rewritten ({} of {})",
                if dropped_header == Some(drop_placeholder.as_str()) {
                    "placeholder"
                } else {
                    "not the placeholder"
                },
                requests.len()
            );
            placeholder_after_delete += 1;
        }
    }
    ensure!(
        placeholder_after_delete > 0,
        "no request after the deletion"
    );
    let secret_texts = [keep_old.as_bytes(), keep_new.as_bytes(), dropped.as_bytes()];
    for start in 1..=RESTARTS {
        let agent_log = fs::read(work.join(format!("agent-{start}.log")))?;
        for secret in secret_texts {
            ensure!(
                !agent_log.windows(secret.len()).any(|w| w == secret),
                "S1: a real value in agent {start}'s log"
            );
        }
    }
    println!(
        "{} requests through {RESTARTS} agent starts, all with a real value; longest stop {} ms",
        requests.len(),
        longest.as_millis()
    );
    Ok(())
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(600)..]
}

fn start_server(certs: &Path, record: &Path) -> anyhow::Result<Reaped> {
    let log = record.with_extension("log");
    let child = Command::new("python3")
        .arg(repo("tests/fixtures/tls_server.py"))
        .args(["--listen", &format!("127.0.0.1:{PORT}")])
        .arg("--cert")
        .arg(certs.join("server.pem"))
        .arg("--key")
        .arg(certs.join("server.key"))
        .arg("--record")
        .arg(record)
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()?;
    let server = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)?.contains("ready") {
        ensure!(Instant::now() < deadline, "the TLS server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// The workload: requests in a loop until `stop` exists, each from a fresh copy of curl
/// (a file the agent has never seen, so its exec is held).
fn start_workload(
    work: &Path,
    cgroup: &Path,
    certs: &Path,
    keep: &Placeholder,
    dropped: &Placeholder,
) -> anyhow::Result<Reaped> {
    let script = r#"
        echo $$ > "$CGROUP/cgroup.procs" || exit 1
        i=0
        while [ ! -e "$WORK/stop" ]; do
          i=$((i + 1))
          cp /usr/bin/curl "$WORK/curl-$i"
          if ! "$WORK/curl-$i" -sS -m 30 --cacert "$CA" -o /dev/null \
               -H "Authorization: Bearer $KEEP" -H "X-Drop: $DROP" "https://127.0.0.1:$PORT/r$i"; then
            echo "FAIL request $i"
          fi
          rm -f "$WORK/curl-$i"
        done
        echo "requests=$i"
    "#;
    let child = Command::new("sh")
        .args(["-c", script])
        .env("CGROUP", cgroup)
        .env("WORK", work)
        .env("CA", certs.join("ca.pem"))
        .env("KEEP", keep.as_str())
        .env("DROP", dropped.as_str())
        .env("PORT", PORT.to_string())
        .stdout(fs::File::create(work.join("workload.log"))?)
        .stderr(fs::File::create(work.join("workload.err"))?)
        .spawn()?;
    Ok(Reaped(child))
}

/// Samples the states of the cgroup's processes: the longest time one stayed stopped.
struct StopWatch {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl StopWatch {
    fn start(cgroup: PathBuf) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let mut since: BTreeMap<u32, Instant> = BTreeMap::new();
            let mut longest = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
                let now = Instant::now();
                let stopped: BTreeSet<u32> = procs
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .filter(|pid| process_state(*pid) == Some('T'))
                    .collect();
                since.retain(|pid, _| stopped.contains(pid));
                for pid in stopped {
                    let first = *since.entry(pid).or_insert(now);
                    longest = longest.max(now - first);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            longest
        });
        Self { done, thread }
    }

    fn finish(self) -> Duration {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(Duration::MAX)
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn wait_ready(ready: &Path, log: &Path) -> anyhow::Result<Ready> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(text) = fs::read_to_string(ready) {
            if let Ok(ready) = serde_json::from_str(&text) {
                return Ok(ready);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not come up: {}",
                tail(&fs::read_to_string(log).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every pinned link that names a file names one this agent hooked.
fn check_links(pin_dir: &Path, ready: &Ready) -> anyhow::Result<()> {
    let hooked: BTreeSet<(u64, u64)> = ready.hooked.iter().copied().collect();
    let mut file_links = 0;
    for entry in fs::read_dir(pin_dir.join("links"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(file) = links::file_of(&name) else {
            continue;
        };
        ensure!(
            hooked.contains(&(file.dev, file.ino)),
            "{name} is pinned but no file this agent hooked has it"
        );
        file_links += 1;
    }
    ensure!(file_links > 0, "no file's probes are pinned");
    Ok(())
}

fn wait_requests(record: &Path, at_least: usize, workload: &mut Reaped) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count_requests(record)? < at_least {
        if let Some(status) = workload.0.try_wait()? {
            bail!("the workload ended early: {status}");
        }
        ensure!(
            Instant::now() < deadline,
            "no traffic for 120 s (a request stuck?)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn count_requests(record: &Path) -> anyhow::Result<usize> {
    Ok(fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .count())
}

/// Each recorded request: its path and its header fields (names lowercased).
fn read_requests(record: &Path) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let decoded = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import base64, json, sys
for line in open(sys.argv[1]):
    text = base64.b64decode(json.loads(line)["text_b64"]).decode("latin-1")
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    fields = {"path": head[0].split(" ")[1] if " " in head[0] else head[0]}
    for field in head[1:]:
        name, _, value = field.partition(":")
        fields[name.strip().lower()] = value.strip()
    print(json.dumps(fields))
"#,
        )
        .arg(record)
        .output()?;
    ensure!(
        decoded.status.success(),
        "decoding the server's record failed"
    );
    String::from_utf8(decoded.stdout)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}
