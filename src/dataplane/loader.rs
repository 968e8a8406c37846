//! The thread that owns the BPF skeleton.
//!
//! libbpf objects are not `Send`, so one named OS thread opens, loads,
//! attaches and polls them; the async side talks to it over channels:
//! commands in, typed events out.

use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder, TracepointCategory, UprobeOpts};
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, info, trace, warn};
use zeroize::Zeroizing;

pub use super::config::{LoaderConfig, ObserveReason, RewriteStrategy};
use super::dispatch::{self, Delivery, EventReceiver, EventSender};
use super::events::Event;
use super::held;
use super::links::{self, LinkSet, Mode};
use super::maps::{file_forget, file_record, FileState, MapName, MapOp, Records};
use super::plan::{self, Modes, PlanGap, ProbeSpec, UprobeProgram};
use super::retire::{self, Retirements};
use super::skel::bytes_of;
use super::skel::kloak::{KloakSkel, KloakSkelBuilder};
use super::skel::types::{
    kloak_counter, kloak_limits, kloak_rewrite_mode, kloak_strategy, kloak_target,
};
use super::slots::{SlotsFull, TargetSlots};
use super::targets::{FileId, GoTarget, TlsTarget};
use super::wake::{Wakeup, Woken};
use super::wire::{Framing, Wire, WireError, WirePrograms, WireSide};

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("loading the BPF programs failed: {0}")]
    Load(String),
    #[error("updating map {map} failed: {source}")]
    Map {
        map: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("attaching {what} failed: {source}")]
    Attach {
        what: String,
        source: libbpf_rs::Error,
    },
    #[error("opening {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the data plane thread has stopped")]
    Stopped,
    #[error(transparent)]
    Slots(#[from] SlotsFull),
    #[error(transparent)]
    Wire(#[from] WireError),
}

type Reply<T> = oneshot::Sender<Result<T, LoaderError>>;

/// One file to hook (`target`: what inspection found, None when nothing) and record as inspected.
struct HookRequest {
    path: PathBuf,
    id: FileId,
    target: Option<TlsTarget>,
}

enum Command {
    Apply(Vec<MapOp>, Reply<()>),
    AttachDns(PathBuf, Reply<()>),
    HookFile(Box<HookRequest>, Reply<usize>),
    AttachWire(Box<(u32, String, WireSide, u32)>, Reply<bool>),
    DetachWire(u32, Reply<()>),
    DetachFile(FileId, Reply<usize>),
    PruneLinks(Reply<Vec<String>>),
    Counters(Reply<Vec<u64>>),
    Snapshot(Vec<MapName>, Reply<Records>),
    Shutdown,
}

/// Handle to the loader thread.
pub struct DataPlane {
    commands: std_mpsc::Sender<Command>,
    wakeup: Wakeup,
    thread: Option<JoinHandle<()>>,
}

/// Index of the ring-buffer loss counter in [`DataPlane::counters`].
pub const COUNTER_EVENTS_LOST: usize = kloak_counter::KLOAK_CTR_EVENTS_LOST.0 as usize;
/// Index of the bytes-scanned counter in [`DataPlane::counters`].
pub const COUNTER_BYTES_SCANNED: usize = kloak_counter::KLOAK_CTR_BYTES_SCANNED.0 as usize;

/// Interfaces, in the agent's network namespace.
const CLASS_NET: &str = "/sys/class/net";

/// How often queued decisions are drained: the kernel submits them without a
/// wakeup; held processes and commands wake the thread at once.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const EVENT_QUEUE: usize = 4096;
/// Maps that describe state; scratch and per-call maps are not pinned.
const PINNED_MAPS: &[&str] = &[
    "cgroups",
    "secrets",
    "bindings",
    "names",
    "verified",
    "resolvers",
    "dns_queries",
    "conns",
    "targets",
    "files",
    "held",
    "agent_heartbeat",
    "counters",
    "events",
    // The ciphertext strategy's state: a restarted agent keeps patching
    // retransmissions of records bound before, and knows live sessions' keys.
    "ct_sessions",
    "ct_ciphers",
    "ct_flows",
    // Replaced values that retransmissions of bound records still need.
    "retired",
];

impl DataPlane {
    /// Loads the programs on a new thread; returns once they are loaded or failed.
    pub fn start(config: LoaderConfig) -> Result<(Self, EventReceiver), LoaderError> {
        let (commands, inbox) = std_mpsc::channel();
        let (events, outbox) = dispatch::channel(EVENT_QUEUE);
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let wakeup = Wakeup::new().map_err(|source| LoaderError::Io {
            path: "eventfd".into(),
            source,
        })?;
        let woken = wakeup.clone();
        let thread = std::thread::Builder::new()
            .name("kloak-bpf".into())
            .spawn(move || run(config, inbox, woken, events, ready_tx))
            .map_err(|source| LoaderError::Io {
                path: "thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((
                Self {
                    commands,
                    wakeup,
                    thread: Some(thread),
                },
                outbox,
            )),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => Err(LoaderError::Stopped),
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LoaderError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| LoaderError::Stopped)?;
        self.wakeup.wake();
        rx.await.map_err(|_| LoaderError::Stopped)?
    }

    pub async fn apply(&self, ops: Vec<MapOp>) -> Result<(), LoaderError> {
        self.call(|reply| Command::Apply(ops, reply)).await
    }

    /// Captures DNS answers for the processes of this cgroup (v2 directory).
    pub async fn attach_dns(&self, cgroup: &Path) -> Result<(), LoaderError> {
        let cgroup = cgroup.to_path_buf();
        self.call(|reply| Command::AttachDns(cgroup, reply)).await
    }

    /// Hooks a TLS library or Go binary (when `target` says what to hook) and
    /// records the file as inspected, in one round trip; returns how many
    /// probes were attached (0 also when they were adopted from pins).
    pub async fn hook_file(
        &self,
        path: &Path,
        id: FileId,
        target: Option<TlsTarget>,
    ) -> Result<usize, LoaderError> {
        let request = Box::new(HookRequest {
            path: path.to_path_buf(),
            id,
            target,
        });
        self.call(|reply| Command::HookFile(request, reply)).await
    }

    /// Detaches the pinned probes no part of this agent attached or adopted
    /// (left by an earlier agent for files nothing runs any more), and forgets
    /// their files; call once what runs has been hooked. Returns their names.
    pub async fn prune_links(&self) -> Result<Vec<String>, LoaderError> {
        self.call(Command::PruneLinks).await
    }

    /// Patches the ciphertext of protected connections on interface `ifindex`,
    /// through which the packets of network namespace `netns` (its inode)
    /// leave. Returns false when the ciphertext strategy is off (nothing
    /// attached). `name` tells a new interface from an old one that had the
    /// same index.
    pub async fn attach_wire(
        &self,
        ifindex: u32,
        name: &str,
        side: WireSide,
        netns: u32,
    ) -> Result<bool, LoaderError> {
        let name = name.to_owned();
        self.call(|reply| Command::AttachWire(Box::new((ifindex, name, side, netns)), reply))
            .await
    }

    /// Interface `ifindex` is gone or serves no namespace any more: records of
    /// the namespace it served are no longer bound (unless another serves it).
    pub async fn detach_wire(&self, ifindex: u32) -> Result<(), LoaderError> {
        self.call(|reply| Command::DetachWire(ifindex, reply)).await
    }

    /// What the given maps hold now: after adopting pinned maps, the base to
    /// diff the desired state against, so stale entries are removed and
    /// unchanged ones are never rewritten (no window without rewrites).
    pub async fn snapshot(&self, maps: &[MapName]) -> Result<Records, LoaderError> {
        let maps = maps.to_vec();
        self.call(|reply| Command::Snapshot(maps, reply)).await
    }

    /// Removes every probe on one file (and its pins) and forgets it was inspected;
    /// returns how many probes.
    pub async fn detach_file(&self, id: FileId) -> Result<usize, LoaderError> {
        self.call(|reply| Command::DetachFile(id, reply)).await
    }

    /// Sums of the per-CPU counters, indexed by `kloak_counter`.
    pub async fn counters(&self) -> Result<Vec<u64>, LoaderError> {
        self.call(Command::Counters).await
    }

    /// Detaches (unless pins persist) and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        self.wakeup.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    config: LoaderConfig,
    inbox: std_mpsc::Receiver<Command>,
    wakeup: Wakeup,
    events: EventSender,
    ready: std_mpsc::Sender<Result<(), LoaderError>>,
) {
    if config.persist {
        held::take_over(&config.pin_dir);
    }
    let mut object = MaybeUninit::uninit();
    let mut loaded = match load(&config, &mut object) {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let ring = {
        let mut builder = RingBufferBuilder::new();
        // Never blocks: this thread also serves the commands the async side may be awaiting.
        let added = builder.add(&loaded.skel.maps.events, move |bytes: &[u8]| {
            match Event::decode(bytes) {
                Ok(event) => {
                    trace!(?event, "data plane event");
                    if events.send(event) == Delivery::Dropped {
                        debug!("event queue full, decision dropped");
                    }
                }
                Err(err) => warn!(%err, "undecodable ring-buffer record"),
            }
            0
        });
        let built = match added {
            Ok(_) => builder.build(),
            Err(err) => Err(err),
        };
        match built {
            Ok(ring) => ring,
            Err(source) => {
                let _ = ready.send(Err(LoaderError::Attach {
                    what: "ring buffer".into(),
                    source,
                }));
                return;
            }
        }
    };
    // SAFETY: the ring buffer owns this epoll fd and outlives `waiter`, declared after it.
    let ring_fd = unsafe { BorrowedFd::borrow_raw(ring.epoll_fd()) };
    let waiter = match wakeup.waiter(ring_fd) {
        Ok(waiter) => waiter,
        Err(source) => {
            let _ = ready.send(Err(LoaderError::Io {
                path: "epoll".into(),
                source,
            }));
            return;
        }
    };
    loaded.heartbeat(held::boot_time_ns());
    let _ = ready.send(Ok(()));
    info!(rewrite = config.rewrite, pin_dir = %config.pin_dir.display(), "data plane loaded");
    loop {
        match waiter.wait(POLL_INTERVAL) {
            Ok(Woken::Command) => {}
            Ok(Woken::Ring | Woken::Timeout) => {
                if let Err(err) = ring.consume() {
                    warn!(%err, "ring buffer consume failed");
                }
                loaded.release_retired();
                loaded.heartbeat(held::boot_time_ns());
            }
            Err(err) => warn!(%err, "waiting for the ring buffer failed"),
        }
        loop {
            match inbox.try_recv() {
                Ok(Command::Shutdown) | Err(std_mpsc::TryRecvError::Disconnected) => {
                    let _ = ring.consume();
                    loaded.teardown(&config);
                    return;
                }
                Ok(command) => loaded.handle(command),
                Err(std_mpsc::TryRecvError::Empty) => break,
            }
        }
    }
}

struct Loaded<'obj> {
    skel: KloakSkel<'obj>,
    links: LinkSet,
    slots: TargetSlots,
    rewrite: bool,
    /// Keys are captured and packets patched (strategy allows it, self-test passed).
    ciphertext: bool,
    /// Filters attached by this instance, detached at teardown unless pins persist.
    wire: Wire,
    /// Replaced secret values kept for records in flight (`retire`).
    retirements: Retirements,
    /// When the retired values were last checked against the live patches.
    retire_checked: Instant,
}

fn load<'obj>(
    config: &LoaderConfig,
    object: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<Loaded<'obj>, LoaderError> {
    let mut open = KloakSkelBuilder::default()
        .open(object)
        .map_err(|err| LoaderError::Load(format!("{err:#}")))?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.cfg_strategy = match (config.observe, config.strategy) {
            (true, _) | (false, RewriteStrategy::InPlace) => {
                kloak_strategy::KLOAK_STRATEGY_IN_PLACE.0
            }
            (false, RewriteStrategy::Auto) => kloak_strategy::KLOAK_STRATEGY_AUTO.0,
            (false, RewriteStrategy::Ciphertext) => kloak_strategy::KLOAK_STRATEGY_CIPHERTEXT.0,
        };
        rodata.cfg_rewrite_mode = if config.rewrite {
            kloak_rewrite_mode::KLOAK_MODE_REWRITE.0
        } else if config.observe_reason == ObserveReason::Lockdown {
            kloak_rewrite_mode::KLOAK_MODE_OBSERVE_LOCKDOWN.0
        } else {
            kloak_rewrite_mode::KLOAK_MODE_OBSERVE_REQUESTED.0
        };
    }
    for mut program in open.open_object_mut().progs_mut() {
        let name = program.name().to_string_lossy().into_owned();
        if name.ends_with("_rw") {
            program.set_autoload(config.rewrite);
        } else if name.ends_with("_ro") {
            program.set_autoload(!config.rewrite);
        }
    }
    let maps_dir = config.pin_dir.join("maps");
    for mut map in open.open_object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let pinned = maps_dir.join(&name);
        if PINNED_MAPS.contains(&name.as_str()) && pinned.exists() {
            match map.reuse_pinned_map(&pinned) {
                Ok(()) => info!(map = %name, "adopted pinned map"),
                // Another layout (an older kloak): the pin goes, a fresh map replaces it.
                Err(err) => {
                    warn!(map = %name, %err, "pinned map does not match this kloak; replacing it");
                    fs::remove_file(&pinned).map_err(|source| LoaderError::Io {
                        path: pinned.clone(),
                        source,
                    })?;
                }
            }
        }
    }
    // The verifier's time dominates a start (about 40 s under qemu TCG): said, so a slow start is explained.
    let verify_started = Instant::now();
    let mut skel = open
        .load()
        .map_err(|err| LoaderError::Load(format!("{err:#}")))?;
    info!(
        ms = verify_started.elapsed().as_millis() as u64,
        "programs loaded and verified"
    );
    fs::create_dir_all(&maps_dir).map_err(|source| LoaderError::Io {
        path: maps_dir.clone(),
        source,
    })?;
    for mut map in skel.object_mut().maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        // Adopted maps are already pinned there (libbpf does not mark them so).
        if PINNED_MAPS.contains(&name.as_str())
            && !map.is_pinned()
            && !maps_dir.join(&name).exists()
        {
            map.pin(maps_dir.join(&name))
                .map_err(|source| LoaderError::Attach {
                    what: format!("pin of map {name}"),
                    source,
                })?;
        }
    }
    let dir = config.persist.then(|| config.pin_dir.join("links"));
    if let Some(dir) = &dir {
        fs::create_dir_all(dir).map_err(|source| LoaderError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let mut links = LinkSet::new(dir);
    // `--observe` stops rewriting before anything else runs, and back.
    let mode = if config.rewrite {
        Mode::Rewrite
    } else {
        Mode::ReadOnly
    };
    let pruned = links.prune_other_mode(mode);
    if !pruned.is_empty() {
        info!(
            links = pruned.len(),
            ?mode,
            "detached the other rewrite mode's pinned probes"
        );
    }
    let progs = &skel.progs;
    let syscalls = [
        "sys_enter_write",
        "sys_enter_sendto",
        "sys_enter_sendmsg",
        "sys_enter_writev",
    ];
    for tracepoint in syscalls {
        links.keep(&format!("tp-{tracepoint}"), || {
            progs
                .handle_sys_send
                .attach_tracepoint(TracepointCategory::Syscalls, tracepoint)
                .map_err(|source| LoaderError::Attach {
                    what: format!("tracepoint syscalls/{tracepoint}"),
                    source,
                })
        })?;
    }
    let ciphertext = config.ciphertext() && gcm_selftest(&skel, config.strategy)?;
    if ciphertext {
        links.keep("tp-inet_sock_set_state", || {
            skel.progs
                .handle_ct_close
                .attach_tracepoint(
                    TracepointCategory::Custom("sock".into()),
                    "inet_sock_set_state",
                )
                .map_err(|source| LoaderError::Attach {
                    what: "tracepoint sock/inet_sock_set_state".into(),
                    source,
                })
        })?;
    }
    let progs = &skel.progs;
    if config.hold_new_executables {
        links.keep("tp-sched_process_exec", || {
            progs
                .handle_exec
                .attach_tracepoint(TracepointCategory::Sched, "sched_process_exec")
                .map_err(|source| LoaderError::Attach {
                    what: "tracepoint sched/sched_process_exec".into(),
                    source,
                })
        })?;
    }
    let slots = target_slots(&skel)?;
    // Values an earlier agent retired are released like this agent's own.
    let mut retirements = Retirements::default();
    let now = Instant::now();
    for key in skel.maps.retired.keys() {
        retirements.add(key, now);
    }
    Ok(Loaded {
        skel,
        links,
        slots,
        rewrite: config.rewrite,
        ciphertext,
        wire: Wire::new(config.tc_handle),
        retirements,
        retire_checked: now,
    })
}

/*
 * Runs the kernel's AES and GF(2^128) code against userspace's before any
 * key is captured: a wrong tag difference would break connections, so the
 * strategy is off unless the kernel computes exactly what it should.
 */
fn gcm_selftest(skel: &KloakSkel<'_>, strategy: RewriteStrategy) -> Result<bool, LoaderError> {
    let program = &skel.progs.handle_gcm_selftest;
    let started = Instant::now();
    let outcome = super::gcm::check_kernel(|case| {
        let input = libbpf_rs::ProgramInput {
            context_in: Some(super::skel::bytes_of_mut(case)),
            ..Default::default()
        };
        program.test_run(input).map(|_| ())
    });
    match (outcome, strategy) {
        (Ok(()), _) => {
            info!(
                ms = started.elapsed().as_millis() as u64,
                "ciphertext strategy: kernel AES-GCM arithmetic verified"
            );
            Ok(true)
        }
        (Err(err), RewriteStrategy::Ciphertext) => Err(LoaderError::Load(format!(
            "the ciphertext strategy cannot run: {err}"
        ))),
        (Err(err), _) => {
            warn!(%err, "ciphertext strategy disabled: the kernel's AES-GCM self-test failed");
            Ok(false)
        }
    }
}

/// The Go target slots the (possibly adopted) `targets` map holds.
fn target_slots(skel: &KloakSkel<'_>) -> Result<TargetSlots, LoaderError> {
    let capacity = kloak_limits::KLOAK_MAX_TARGETS.0;
    let mut records = Vec::new();
    for slot in 0..capacity {
        let value = skel
            .maps
            .targets
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "targets",
                source,
            })?;
        let mut record = kloak_target::default();
        if let Some(bytes) = value {
            if plain::copy_from_bytes(&mut record, &bytes).is_ok() && record.func_vaddr != 0 {
                let file = FileId {
                    dev: record.file_dev,
                    ino: record.file_ino,
                };
                records.push((slot, file));
            }
        }
    }
    Ok(TargetSlots::from_records(records, capacity))
}

impl Loaded<'_> {
    fn handle(&mut self, command: Command) {
        match command {
            Command::Apply(ops, reply) => {
                let _ = reply.send(self.apply(ops));
            }
            Command::AttachDns(cgroup, reply) => {
                let _ = reply.send(self.attach_dns(&cgroup));
            }
            Command::HookFile(request, reply) => {
                let _ = reply.send(self.hook_file(*request));
            }
            Command::AttachWire(request, reply) => {
                let (ifindex, name, side, netns) = *request;
                let _ = reply.send(self.attach_wire(ifindex, &name, side, netns));
            }
            Command::DetachWire(ifindex, reply) => {
                let result = self.wire.forget(ifindex, &self.skel.maps.ct_wired);
                let _ = reply.send(result.map_err(LoaderError::from));
            }
            Command::DetachFile(id, reply) => {
                let _ = reply.send(self.detach_file(id));
            }
            Command::PruneLinks(reply) => {
                let _ = reply.send(self.prune_links());
            }
            Command::Counters(reply) => {
                let _ = reply.send(self.counters());
            }
            Command::Snapshot(maps, reply) => {
                let _ = reply.send(self.snapshot(&maps));
            }
            Command::Shutdown => {}
        }
    }

    fn map(&self, name: MapName) -> &libbpf_rs::Map<'_> {
        let maps = &self.skel.maps;
        match name {
            MapName::Cgroups => &maps.cgroups,
            MapName::Secrets => &maps.secrets,
            MapName::Bindings => &maps.bindings,
            MapName::Names => &maps.names,
            MapName::Verified => &maps.verified,
            MapName::Resolvers => &maps.resolvers,
            MapName::Files => &maps.files,
            MapName::Held => &maps.held,
        }
    }

    fn hook_file(&mut self, request: HookRequest) -> Result<usize, LoaderError> {
        let HookRequest { path, id, target } = request;
        let attached = match &target {
            Some(target) => self.attach_target(&path, id, target).map(Some),
            None => Ok(None),
        };
        // Recorded even when attaching failed: its execs are not held again and again.
        let state = match attached {
            Ok(Some(_)) => FileState::Hooked,
            _ => FileState::Inspected,
        };
        self.apply(vec![file_record(id, state)])?;
        attached.map(|probes| probes.unwrap_or(0))
    }

    fn detach_file(&mut self, id: FileId) -> Result<usize, LoaderError> {
        let detached = self.links.drop_file(id);
        if let Some(slot) = self.slots.release(id) {
            let empty = kloak_target::default();
            self.skel
                .maps
                .targets
                .update(&slot.to_ne_bytes(), bytes_of(&empty), MapFlags::ANY)
                .map_err(|source| LoaderError::Map {
                    map: "targets",
                    source,
                })?;
        }
        // Still marked inspected, its next exec would run unhooked.
        self.apply(vec![file_forget(id)])?;
        Ok(detached)
    }

    fn prune_links(&mut self) -> Result<Vec<String>, LoaderError> {
        let pruned = self.links.prune_unclaimed();
        let mut files: Vec<FileId> = pruned.iter().filter_map(|n| links::file_of(n)).collect();
        files.sort();
        files.dedup();
        for id in files {
            self.detach_file(id)?;
        }
        Ok(pruned)
    }

    fn apply(&mut self, ops: Vec<MapOp>) -> Result<(), LoaderError> {
        for op in ops {
            if op.map == MapName::Secrets {
                self.retire_replaced(&op)?;
            }
            let map = self.map(op.map);
            let result = match &op.value {
                Some(value) => map.update(&op.key, value, MapFlags::ANY),
                // Deleting what is already gone is the state we want.
                None => match map.delete(&op.key) {
                    Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
                    other => other,
                },
            };
            result.map_err(|source| LoaderError::Map {
                map: op.map.as_str(),
                source,
            })?;
            trace!(
                map = op.map.as_str(),
                delete = op.value.is_none(),
                "map updated"
            );
        }
        Ok(())
    }

    /// Before `op` replaces or deletes a secret's value: keeps the value for
    /// the records bound to it (never a moment with neither in the kernel).
    fn retire_replaced(&mut self, op: &MapOp) -> Result<(), LoaderError> {
        let map_error = |map| move |source| LoaderError::Map { map, source };
        let Some(old) = (self.skel.maps.secrets)
            .lookup(&op.key, MapFlags::ANY)
            .map_err(map_error("secrets"))?
            .map(Zeroizing::new)
        else {
            return Ok(());
        };
        let Some(key) = retire::retiring(&op.key, &old, op.value.as_deref().map(|v| &v[..])) else {
            return Ok(());
        };
        (self.skel.maps.retired)
            .update(&key, &old, MapFlags::ANY)
            .map_err(map_error("retired"))?;
        debug!("secret value retired until no record in flight needs it");
        self.retirements.add(key, Instant::now());
        Ok(())
    }

    /// Releases retired values no live patch names any more (once a second at most).
    fn release_retired(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.retire_checked) < retire::GRACE || !self.retirements.due(now) {
            return;
        }
        self.retire_checked = now;
        let flows_map = &self.skel.maps.ct_flows;
        let flows: Vec<Vec<u8>> = flows_map
            .keys()
            .filter_map(|key| flows_map.lookup(&key, MapFlags::ANY).ok().flatten())
            .collect();
        for key in self
            .retirements
            .release(flows.iter().map(Vec::as_slice), now)
        {
            match self.skel.maps.retired.delete(&key) {
                Ok(()) => debug!("retired secret value released"),
                Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(err) => warn!(%err, "cannot release a retired secret value"),
            }
        }
    }

    fn attach_dns(&mut self, cgroup: &Path) -> Result<(), LoaderError> {
        let io_error = |source| LoaderError::Io {
            path: cgroup.to_path_buf(),
            source,
        };
        let dir = fs::File::open(cgroup).map_err(io_error)?;
        let ino = dir.metadata().map_err(io_error)?.ino();
        let progs = &self.skel.progs;
        for (direction, program) in [
            ("ingress", &progs.handle_dns_ingress),
            ("egress", &progs.handle_dns_egress),
        ] {
            self.links.keep(&format!("dns-{direction}-{ino}"), || {
                program
                    .attach_cgroup(dir.as_raw_fd())
                    .map_err(|source| LoaderError::Attach {
                        what: format!("DNS capture on cgroup {}", cgroup.display()),
                        source,
                    })
            })?;
        }
        info!(cgroup = %cgroup.display(), "DNS capture attached");
        Ok(())
    }

    /// Attaches one probe of the plan (adopting its pinned link if there is one).
    fn uprobe(
        &mut self,
        target: &Path,
        id: FileId,
        probe: &ProbeSpec,
    ) -> Result<usize, LoaderError> {
        let name = probe.program.name(self.rewrite);
        let link_name = links::uprobe_name(name, id, probe.offset, probe.retprobe);
        let progs = &self.skel.progs;
        let prog = match (probe.program, self.rewrite) {
            (UprobeProgram::SslWrite, true) => &progs.handle_ssl_write_rw,
            (UprobeProgram::SslWrite, false) => &progs.handle_ssl_write_ro,
            (UprobeProgram::SslWriteEx, true) => &progs.handle_ssl_write_ex_rw,
            (UprobeProgram::SslWriteEx, false) => &progs.handle_ssl_write_ex_ro,
            (UprobeProgram::SslWriteRet, true) => &progs.handle_ssl_write_ret_rw,
            (UprobeProgram::SslWriteRet, false) => &progs.handle_ssl_write_ret_ro,
            (UprobeProgram::SslHandshake, _) => &progs.handle_ssl_handshake,
            (UprobeProgram::SslHandshakeRet, _) => &progs.handle_ssl_handshake_ret,
            (UprobeProgram::SslSetFd, _) => &progs.handle_ssl_set_fd,
            (UprobeProgram::SslSetBio, _) => &progs.handle_ssl_set_bio,
            (UprobeProgram::CipherInit, _) => &progs.handle_cipher_init,
            (UprobeProgram::GoWrite, true) => &progs.handle_go_write_rw,
            (UprobeProgram::GoWrite, false) => &progs.handle_go_write_ro,
            (UprobeProgram::GoWriteRet, true) => &progs.handle_go_write_ret_rw,
            (UprobeProgram::GoWriteRet, false) => &progs.handle_go_write_ret_ro,
            (UprobeProgram::GoHandshake, _) => &progs.handle_go_handshake,
            (UprobeProgram::GoHandshakeRet, _) => &progs.handle_go_handshake_ret,
            (UprobeProgram::GoEncrypt, _) => &progs.handle_go_encrypt,
            (UprobeProgram::GoTrafficSecret, _) => &progs.handle_go_traffic_secret,
            (UprobeProgram::GoAeadTls13, _) => &progs.handle_go_aead_tls13,
        };
        let opts = UprobeOpts {
            retprobe: probe.retprobe,
            cookie: probe.cookie,
            ..Default::default()
        };
        let (path, offset) = (&probe.path, probe.offset);
        self.links.keep(&link_name, || {
            prog.attach_uprobe_with_opts(-1, path, offset as usize, opts)
                .map_err(|source| LoaderError::Attach {
                    what: format!(
                        "{name} at {}+{offset:#x} (for {})",
                        path.display(),
                        target.display()
                    ),
                    source,
                })
        })
    }

    /// Records a Go target in its `targets` slot (the cookie of its probes).
    fn go_slot(&mut self, id: FileId, go: &GoTarget) -> Result<u32, LoaderError> {
        let index = self.slots.assign(id)?;
        let record = kloak_target {
            func_vaddr: go.write.vaddr,
            go_tcpconn_close: go.tcpconn_close_vaddr,
            go_tcpconn_write: go.tcpconn_write_vaddr,
            go_fd_offset: GO_NETFD_SYSFD_OFFSET,
            file_dev: id.dev,
            file_ino: id.ino,
            ..Default::default()
        };
        self.skel
            .maps
            .targets
            .update(&index.to_ne_bytes(), bytes_of(&record), MapFlags::ANY)
            .map_err(|source| LoaderError::Map {
                map: "targets",
                source,
            })?;
        Ok(index)
    }

    fn attach_target(
        &mut self,
        path: &Path,
        id: FileId,
        target: &TlsTarget,
    ) -> Result<usize, LoaderError> {
        let go_slot = match target {
            TlsTarget::Go(go) => self.go_slot(id, go)?,
            TlsTarget::OpenSsl(_) => 0,
        };
        let modes = Modes {
            rewrite: self.rewrite,
            ciphertext: self.ciphertext,
        };
        let plan = plan::probes(target, path, modes, go_slot);
        for gap in &plan.gaps {
            match (gap, target) {
                (PlanGap::NoCipherInit, _) => warn!(
                    path = %path.display(),
                    "no EVP_CipherInit_ex for this library: its sessions cannot use the ciphertext strategy"
                ),
                (PlanGap::NoGoKeyFunctions, TlsTarget::Go(go)) => warn!(
                    path = %path.display(),
                    go_version = go.go_version.as_deref().unwrap_or("unknown"),
                    "Go TLS key functions not found: its sessions cannot use the ciphertext strategy"
                ),
                (PlanGap::NoGoKeyFunctions, _) => {}
            }
        }
        let mut attached = 0;
        for probe in &plan.probes {
            attached += self.uprobe(path, id, probe)?;
        }
        info!(path = %path.display(), probes = attached, "TLS target hooked");
        Ok(attached)
    }

    fn attach_wire(
        &mut self,
        ifindex: u32,
        ifname: &str,
        side: WireSide,
        netns: u32,
    ) -> Result<bool, LoaderError> {
        if !self.ciphertext {
            return Ok(false);
        }
        let progs = &self.skel.progs;
        let (patch, ack) = match Framing::of_interface(Path::new(CLASS_NET), ifname)? {
            Framing::Ethernet => (&progs.handle_ct_patch, &progs.handle_ct_ack),
            Framing::Layer3 => (&progs.handle_ct_patch_l3, &progs.handle_ct_ack_l3),
        };
        let programs = WirePrograms {
            patch: patch.as_fd(),
            ack: ack.as_fd(),
        };
        self.wire.attach(
            ifindex,
            ifname,
            side,
            netns,
            programs,
            &self.skel.maps.ct_wired,
        )?;
        Ok(true)
    }

    fn snapshot(&self, names: &[MapName]) -> Result<Records, LoaderError> {
        let mut records = Records::new();
        for &name in names {
            let map = self.map(name);
            for key in map.keys() {
                let value = map
                    .lookup(&key, MapFlags::ANY)
                    .map_err(|source| LoaderError::Map {
                        map: name.as_str(),
                        source,
                    })?;
                // A key deleted between listing and lookup is simply not there.
                if let Some(value) = value {
                    records.insert((name, key), Zeroizing::new(value));
                }
            }
        }
        Ok(records)
    }

    fn counters(&self) -> Result<Vec<u64>, LoaderError> {
        let map = &self.skel.maps.counters;
        (0..kloak_counter::KLOAK_CTR_MAX.0)
            .map(|index| {
                let per_cpu = map
                    .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
                    .map_err(|source| LoaderError::Map {
                        map: "counters",
                        source,
                    })?
                    .unwrap_or_default();
                Ok(per_cpu
                    .iter()
                    .filter_map(|bytes| bytes.get(..8))
                    .filter_map(|bytes| bytes.try_into().ok())
                    .map(u64::from_ne_bytes)
                    .sum())
            })
            .collect()
    }

    /// Execs are held only while this is recent (`agent_alive` in the kernel);
    /// 0 says the agent stopped on purpose.
    fn heartbeat(&self, boot_ns: u64) {
        if let Err(err) = self.skel.maps.agent_heartbeat.update(
            &0u32.to_ne_bytes(),
            &boot_ns.to_ne_bytes(),
            MapFlags::ANY,
        ) {
            warn!(%err, "cannot update the agent heartbeat");
        }
    }

    fn teardown(&mut self, config: &LoaderConfig) {
        self.heartbeat(0);
        // Pinned links stay attached when this process exits; the rest detach here.
        self.links.release();
        if !config.persist {
            self.wire.detach_all();
        }
        if config.persist {
            info!(pin_dir = %config.pin_dir.display(), "data plane left pinned for the next agent");
            return;
        }
        for mut map in self.skel.object_mut().maps_mut() {
            if map.is_pinned() {
                let path = PathBuf::from(map.get_pin_path().unwrap_or_default());
                if let Err(err) = map.unpin(&path) {
                    warn!(path = %path.display(), %err, "unpin failed");
                }
            }
        }
        let _ = fs::remove_dir(config.pin_dir.join("maps"));
        let _ = fs::remove_dir(&config.pin_dir);
        info!("data plane detached");
    }
}

/// `poll.FD.Sysfd` inside `net.netFD`: after `fdmu fdMutex` (16 bytes), stable since Go 1.9.
const GO_NETFD_SYSFD_OFFSET: u32 = 16;
