//! `kloak run`: protect one command on this machine, no Kubernetes needed.
//!
//! Order matters: every input is checked before anything is loaded, the
//! data plane is ready before the command starts, and everything is undone
//! when the command exits or on Ctrl-C.

mod cgroup;
pub mod guard;
mod reload;
mod report;
mod spawn;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::config::{self, RunInput};
use crate::dataplane::hooking;
use crate::dataplane::loader::{LoaderError, COUNTER_BYTES_SCANNED, COUNTER_EVENTS_LOST};
use crate::dataplane::maps::{diff, host_id, DesiredState, Records, SecretState};
use crate::dataplane::probes;
use crate::dataplane::targets;
use crate::dataplane::wire::{own_netns, WireError};
use crate::dataplane::{DataPlane, EventKind, LoaderConfig, RewriteStrategy, WireSide};
use crate::placeholder::{self, Placeholder};
use crate::policy::parse_port;

use self::cgroup::RunCgroup;
use self::guard::{Guard, Watched};
use self::reload::Reloader;
use self::report::{Names, Reporter};

const PIN_ROOT: &str = "/sys/fs/bpf/kloak";
/// `tc` filter handles of `kloak run` instances: this | pid.
const RUN_TC_HANDLE_BASE: u32 = 0x6b00_0000;
/// Placeholder files go to tmpfs: /run when writable, else the temp dir.
const SECRETS_ROOTS: &[&str] = &["/run/kloak", "/dev/shm/kloak"];

struct Prepared {
    state: DesiredState,
    names: BTreeMap<u32, String>,
    placeholders: Vec<(String, Placeholder)>,
    /// Env vars that held real values: the command must not inherit them.
    remove_env: Vec<String>,
    /// Every secret by id, for SIGHUP's reload.
    sources: Vec<(u32, config::SecretConfig)>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kloak run needs root to load eBPF programs: try sudo kloak run ...");
    }
    let prepared = prepare(&args)?;
    let features = probes::probe(true);
    let gaps = features.fatal_gaps();
    if !gaps.is_empty() {
        bail!("this kernel cannot run kloak: {}", gaps.join("; "));
    }
    let rewrite = features.write_user && !args.observe;
    if let Some(blocker) = features.rewrite_blocker() {
        match args.strategy {
            RewriteStrategy::InPlace => warn!(
                reason = %blocker,
                "in-place rewrite unavailable: {blocker}; placeholders will go out unchanged. \
                 --strategy ciphertext works on this kernel"
            ),
            _ => info!(
                reason = %blocker,
                "in-place rewrite unavailable ({blocker}): AES-GCM sessions are patched in the \
                 ciphertext, others go out with the placeholder"
            ),
        }
    }
    let identity = spawn::identity(args.user.as_deref(), std::env::var("SUDO_UID").ok())
        .map_err(anyhow::Error::msg)?;
    let root = features
        .cgroup2
        .clone()
        .context("no cgroup v2 hierarchy mounted")?;
    let instance = format!("run-{}", std::process::id());
    let cgroup = RunCgroup::create(&root, &format!("kloak-{instance}"))?;
    let mut state = prepared.state;
    state.cgroups.insert(cgroup.id());
    for &secret_id in state.secrets.keys() {
        state.bindings.insert((cgroup.id(), secret_id));
    }
    let pin_dir = Path::new(PIN_ROOT).join(&instance);
    let tc_handle = RUN_TC_HANDLE_BASE | (std::process::id() & 0x00ff_ffff);
    hooking::persist_inspections(&args.inspection_cache);
    let (dataplane, mut events) = DataPlane::start(LoaderConfig::for_kernel(
        pin_dir.clone(),
        false,
        features.write_user,
        args.observe,
        args.strategy,
        tc_handle,
    ))?;
    let records = state.records()?;
    dataplane.apply(diff(&Records::new(), &records)).await?;
    let mut reloader = Reloader::new(prepared.sources, records);
    dataplane.attach_dns(cgroup.path()).await?;
    attach_wire(&dataplane, args.strategy).await?;
    hook_targets(&dataplane, &args.command[0]).await;
    let secrets_dir =
        SecretsDir::create(&instance, &prepared.placeholders, identity.map(|i| i.uid))?;
    let mut reporter = Reporter {
        names: Names {
            secrets: prepared.names,
            hosts: state
                .secrets
                .values()
                .flat_map(|s| s.policy.hosts.iter())
                .map(|h| (host_id(h), h.to_string()))
                .collect(),
            rewrite_blocker: if rewrite {
                None
            } else {
                Some(
                    features
                        .rewrite_blocker()
                        .unwrap_or_else(|| "observe mode requested".into()),
                )
            },
        },
        json: args.json,
        file: match &args.events {
            Some(path) => Some(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening events file {}", path.display()))?,
            ),
            None => None,
        },
        rewritten: 0,
        blocked: 0,
    };
    let mut set_env: Vec<(String, OsString)> = prepared
        .placeholders
        .iter()
        .map(|(name, p)| (name.clone(), OsString::from(p.as_str())))
        .collect();
    set_env.push((
        "KLOAK_SECRETS_DIR".into(),
        secrets_dir.path.clone().into_os_string(),
    ));
    // Before the command starts: from here on Ctrl-C and SIGTERM are kloak's
    // to forward, and the command gets the default disposition for them.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let guard = Guard::start(&Watched {
        cgroup: cgroup.path(),
        pin_dir: &pin_dir,
        tc_handle,
        secrets_dir: &secrets_dir.path,
    })?;
    let procs = cgroup.open_procs()?;
    let mut child = spawn::spawn(spawn::Launch {
        argv: &args.command,
        set_env,
        remove_env: prepared.remove_env,
        identity,
        cgroup_procs: &procs,
    })
    .with_context(|| format!("starting {}", args.command[0]))?;
    drop(procs);
    info!(
        pid = child.id(),
        cgroup = cgroup.id(),
        rewrite,
        "command started"
    );
    let status: ExitStatus = loop {
        tokio::select! {
            Some(event) = events.recv() => {
                if event.kind == EventKind::ExecHeld {
                    hooking::hook_exec(&dataplane, Path::new("/proc"), event.pid).await;
                }
                reporter.report(&event);
            }
            status = child.wait() => break status?,
            _ = interrupt.recv() => forward(&child, nix::sys::signal::Signal::SIGINT),
            _ = terminate.recv() => forward(&child, nix::sys::signal::Signal::SIGTERM),
            _ = hangup.recv() => match reloader.reload(&mut state, &dataplane).await {
                Ok(changed) => info!(changed, "secrets reloaded"),
                Err(err) => warn!(err = format!("{err:#}"), "secrets reload failed; the old values stay"),
            },
        }
    };
    // Events still in the ring buffer belong to this run: let the poller catch up.
    tokio::time::sleep(Duration::from_millis(150)).await;
    while let Some(event) = events.try_recv() {
        if event.kind == EventKind::ExecHeld {
            hooking::hook_exec(&dataplane, Path::new("/proc"), event.pid).await;
        }
        reporter.report(&event);
    }
    let counters = dataplane.counters().await.unwrap_or_default();
    let count = |index: usize| counters.get(index).copied().unwrap_or(0);
    info!(
        rewritten = reporter.rewritten,
        blocked = reporter.blocked,
        scanned_bytes = count(COUNTER_BYTES_SCANNED),
        "command exited"
    );
    // Decisions the kernel could not queue are missing from the lines above; a
    // process it could not hold at exec ran unhooked (its placeholders went out unchanged).
    let lost = count(COUNTER_EVENTS_LOST);
    if lost > 0 {
        warn!(
            lost,
            "the kernel's event buffer overflowed: {lost} decisions or exec holds were not reported"
        );
    }
    dataplane.shutdown();
    drop(secrets_dir);
    drop(cgroup);
    drop(guard);
    Ok(exit_code(status))
}

fn forward(child: &tokio::process::Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128 + sig as u8,
        _ => 1,
    }
}

/// Every check that can fail on bad input, before anything touches the kernel.
fn prepare(args: &RunArgs) -> anyhow::Result<Prepared> {
    let port = args.port.as_deref().map(parse_port).transpose()?;
    let file_text = match &args.config {
        Some(path) => {
            Some(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let mut config = config::build(RunInput {
        secrets: &args.secrets,
        allow_hosts: &args.allow_hosts,
        port,
        file: args.config.as_deref().zip(file_text.as_deref()),
        dns_servers: &args.dns_servers,
        require_hosts: args.require_hosts,
    })?;
    if config.secrets.is_empty() {
        bail!("no secrets given: use --secret NAME[=@FILE|=env:VAR] or --config FILE");
    }
    if config.dns_servers.is_empty() {
        let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        config.dns_servers = config::resolv_conf_nameservers(&text)
            .into_iter()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
            .collect();
    }
    let mut state = DesiredState::default();
    let mut names = BTreeMap::new();
    let mut placeholders = Vec::new();
    let mut remove_env = Vec::new();
    let mut sources = Vec::new();
    let mut rng = rand::rngs::OsRng;
    for (index, secret) in config.secrets.iter().enumerate() {
        let value = config::load_value(secret, |var| std::env::var(var).ok())?;
        let placeholder = placeholder::generate(&value, &mut rng)
            .with_context(|| format!("secret {}", secret.name))?;
        if secret.policy.allows_any_host() {
            warn!(secret = %secret.name, "no allowed hosts: the secret may be sent to any host");
        }
        if let config::SecretSource::Env(var) = &secret.source {
            remove_env.push(var.clone());
        }
        let id = index as u32 + 1;
        sources.push((id, secret.clone()));
        names.insert(id, secret.name.clone());
        placeholders.push((secret.name.clone(), placeholder.clone()));
        state.secrets.insert(
            id,
            SecretState {
                placeholder,
                value,
                policy: secret.policy.clone(),
            },
        );
    }
    state.resolvers.extend(config.dns_servers.iter().copied());
    Ok(Prepared {
        state,
        names,
        placeholders,
        remove_env,
        sources,
    })
}

/*
 * The ciphertext strategy patches packets where they leave this host: on
 * loopback and on every interface holding an address. Bridge ports and
 * other address-less interfaces carry packets that already left through
 * one of those, and patching twice would undo the patch.
 */
async fn attach_wire(dataplane: &DataPlane, strategy: RewriteStrategy) -> anyhow::Result<()> {
    let netns = own_netns().context("reading this process's network namespace")?;
    let mut interfaces = BTreeMap::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("listing network interfaces")? {
        let family = ifaddr
            .address
            .as_ref()
            .and_then(nix::sys::socket::SockaddrLike::family);
        if matches!(
            family,
            Some(nix::sys::socket::AddressFamily::Inet | nix::sys::socket::AddressFamily::Inet6)
        ) {
            let index = nix::net::if_::if_nametoindex(ifaddr.interface_name.as_str())
                .with_context(|| format!("interface {}", ifaddr.interface_name))?;
            interfaces.insert(index, ifaddr.interface_name);
        }
    }
    for (index, name) in interfaces {
        match dataplane
            .attach_wire(index, &name, WireSide::HostEgress, netns)
            .await
        {
            Ok(true) => info!(interface = %name, "ciphertext patching on"),
            Ok(false) => return Ok(()),
            // One odd interface must not stop the rest; the warning names what it leaves unpatched.
            Err(LoaderError::Wire(err @ WireError::UnsupportedFraming { .. })) => {
                warn!(interface = %name, %err, "no ciphertext patching here")
            }
            Err(err) if strategy == RewriteStrategy::Ciphertext => {
                return Err(err).with_context(|| format!("interface {name}"))
            }
            Err(err) => warn!(interface = %name, %err, "no ciphertext patching here"),
        }
    }
    Ok(())
}

/// Hooks the command itself (Go or static OpenSSL) and the system's libssl.
async fn hook_targets(dataplane: &DataPlane, program: &str) {
    let mut files: Vec<PathBuf> = targets::system_tls_libraries(Path::new("/"));
    if let Some(exe) = which(program) {
        files.push(exe);
    }
    for path in files {
        hooking::hook_file(dataplane, &path).await;
    }
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return fs::canonicalize(program).ok();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| fs::canonicalize(found).ok())
}

/// Placeholder files for the command, readable by it alone; removed at the end.
struct SecretsDir {
    path: PathBuf,
}

impl SecretsDir {
    fn create(
        instance: &str,
        placeholders: &[(String, Placeholder)],
        owner: Option<u32>,
    ) -> anyhow::Result<Self> {
        let mut roots: Vec<PathBuf> = SECRETS_ROOTS.iter().map(PathBuf::from).collect();
        roots.push(std::env::temp_dir().join("kloak"));
        let path = roots
            .iter()
            .map(|root| root.join(instance))
            .find(|path| fs::create_dir_all(path).is_ok())
            .with_context(|| {
                format!("no writable directory for placeholder files among {roots:?}")
            })?;
        let dir = Self { path };
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
        for (name, placeholder) in placeholders {
            let file = dir.path.join(name);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, placeholder.as_bytes()))
                .with_context(|| format!("writing {}", file.display()))?;
            if let Some(uid) = owner {
                nix::unistd::chown(&file, Some(uid.into()), None)?;
            }
        }
        if let Some(uid) = owner {
            nix::unistd::chown(&dir.path, Some(uid.into()), None)?;
        }
        Ok(dir)
    }
}

impl Drop for SecretsDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            warn!(path = %self.path.display(), %err, "cannot remove the placeholder files");
        }
    }
}
