//! Test only: forced TCP loss without netem (this kernel has none).
//!
//! Attaches `bpf/dropfirst.bpf.c` to one side of one interface: the first copy
//! of every TCP segment to PORT that starts with a TLS application-data record
//! is dropped, every later copy (the retransmission) passes. The end-to-end
//! tests use it to prove that kloak patches retransmitted records too.
//!
//! usage: kloak-drop-first --dev lo --direction ingress|egress --port 8443 [--max-drops N]
//!        [--hold-until FILE]
//!
//! With `--hold-until`, every copy is dropped until FILE exists (then every
//! copy passes, and `released` is printed): a test holds records in flight
//! while it changes something, then lets the retransmissions through.
//!
//! Prints `ready` once attached, runs until SIGTERM or SIGINT, then detaches and
//! prints `dropped=N passed=M` (M: matching segments let through).
//!
//! Order matters on a shared hook: a filter that answers TC_ACT_OK ends the
//! chain, so the dropper must run before such a filter (kloak's own) to see
//! anything. It takes priority 1, and among filters of one priority the newest
//! runs first: start it after the program under test attached its filters
//! (`run_allowed_lossy` in tests/e2e/lib.sh does). It answers TC_ACT_UNSPEC
//! itself, so the filters behind it still run.

use std::ffi::CString;
use std::io::Write;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, PrintLevel, TcHook, TcHookBuilder, TC_EGRESS, TC_INGRESS};
use nix::sys::signal::{SigSet, Signal};

use kloak::dataplane::skel::dropfirst::types::kloak_df_counter;
use kloak::dataplane::skel::dropfirst::{DropfirstSkel, DropfirstSkelBuilder};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Direction {
    Ingress,
    Egress,
}

/// Drops the first copy of each TLS application-data segment to a port.
#[derive(Debug, Parser)]
#[command(name = "kloak-drop-first")]
struct DropFirstArgs {
    /// Interface to attach to (in the current network namespace).
    #[arg(long, value_name = "IFACE")]
    dev: String,
    /// Which side of the interface: on loopback, egress runs before ingress.
    #[arg(long, value_enum)]
    direction: Direction,
    /// TCP destination port of the segments to drop.
    #[arg(long)]
    port: u16,
    /// Stop dropping after N first copies (0: never stop).
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_drops: u64,
    /// Drop every copy, not only the first, until this file exists.
    #[arg(long, value_name = "FILE")]
    hold_until: Option<PathBuf>,
    /// tc filter priority. Lower runs first; 1, the lowest, puts the dropper
    /// ahead of filters with kernel-chosen priorities (49152 counting down).
    /// Among filters of one priority the newest runs first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=0xffff))]
    priority: u32,
    /// tc filter handle: a fixed one, unlike kloak's, so a kloak filter
    /// attached later with `replace` cannot take the dropper's place.
    #[arg(long, default_value_t = 0xd0f1, value_parser = clap::value_parser!(u32).range(1..))]
    handle: u32,
}

fn main() -> ExitCode {
    match run(DropFirstArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kloak-drop-first: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: DropFirstArgs) -> anyhow::Result<()> {
    // Blocked before anything else, so a signal sent while we attach is
    // waited for below instead of killing us with the filter still attached.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("blocking SIGINT and SIGTERM")?;

    libbpf_rs::set_print(Some((PrintLevel::Info, libbpf_print)));

    let ifindex = if_index(&args.dev)?;

    let mut object = MaybeUninit::uninit();
    let mut open = DropfirstSkelBuilder::default()
        .open(&mut object)
        .context("opening the dropper's BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow!("the dropper's BPF object has no read-only data"))?;
    rodata.cfg_port = args.port;
    rodata.cfg_max_drops = args.max_drops;
    rodata.cfg_hold = args.hold_until.is_some();
    let skel = open
        .load()
        .context("loading the dropper (needs root and a BPF-capable kernel)")?;

    let mut attachment = Attachment::attach(&skel, ifindex, &args)
        .with_context(|| format!("attaching to {} {:?}", args.dev, args.direction))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").and_then(|()| stdout.flush())?;

    wait_for_signal(&signals, args.hold_until.as_deref(), &skel)?;
    // Detached before counting, so no segment is handled after the count.
    let released = attachment.release();
    let dropped = counter(&skel, kloak_df_counter::KLOAK_DF_DROPPED)?;
    let passed = counter(&skel, kloak_df_counter::KLOAK_DF_PASSED)?;
    writeln!(stdout, "dropped={dropped} passed={passed}").and_then(|()| stdout.flush())?;
    released
}

/// Until SIGINT or SIGTERM; meanwhile opens the hold gate once `gate_file` exists.
fn wait_for_signal(
    signals: &SigSet,
    gate_file: Option<&Path>,
    skel: &DropfirstSkel<'_>,
) -> anyhow::Result<()> {
    let mut held = gate_file;
    loop {
        if let Some(file) = held.filter(|file| file.exists()) {
            skel.maps
                .df_gate
                .update(&0u32.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY)
                .context("opening the hold gate")?;
            println!("released (found {})", file.display());
            held = None;
        }
        let poll = libc::timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        // SAFETY: both pointers are valid for the call; no siginfo is asked for.
        let got = unsafe { libc::sigtimedwait(signals.as_ref(), std::ptr::null_mut(), &poll) };
        if got > 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(err).context("waiting for SIGINT or SIGTERM");
        }
    }
}

/// The index of interface NAME in this process's network namespace (asked of
/// the kernel, not read from /sys, which may belong to another namespace).
fn if_index(name: &str) -> anyhow::Result<i32> {
    let c_name = CString::new(name).context("interface name with a NUL byte")?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {name:?} in this network namespace"));
    }
    i32::try_from(index).context("interface index out of range")
}

/// libbpf's messages, without the kernel's "Exclusivity flag on" note that
/// finding an existing clsact qdisc prints: expected here, and handled.
fn libbpf_print(_level: PrintLevel, msg: String) {
    if !msg.contains("Exclusivity flag on") {
        eprint!("{msg}");
    }
}

fn counter(skel: &DropfirstSkel<'_>, slot: kloak_df_counter) -> anyhow::Result<u64> {
    let value = skel
        .maps
        .df_counters
        .lookup(&slot.0.to_ne_bytes(), MapFlags::ANY)
        .context("reading the dropper's counters")?
        .ok_or_else(|| anyhow!("counter slot {} missing", slot.0))?;
    let bytes: [u8; 8] = value
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("counter of {} bytes, expected 8", value.len()))?;
    Ok(u64::from_ne_bytes(bytes))
}

/// The dropper's filter, and the clsact qdisc when we were the ones to create
/// it. A qdisc that was already there belongs to someone else (kloak's own
/// filters may hang off it), so only our filter is removed from it.
struct Attachment {
    filter: Option<TcHook>,
    qdisc: Option<TcHook>,
}

impl Attachment {
    fn attach(
        skel: &DropfirstSkel<'_>,
        ifindex: i32,
        args: &DropFirstArgs,
    ) -> anyhow::Result<Self> {
        let prog = skel.progs.handle_tc.as_fd();
        let mut builder = TcHookBuilder::new(prog);
        // No replace: a filter already at this priority and handle is an error, not ours to take.
        builder
            .ifindex(ifindex)
            .replace(false)
            .priority(args.priority)
            .handle(args.handle);
        let created = create_clsact(ifindex).context("creating the clsact qdisc")?;
        let mut attachment = Self {
            filter: None,
            // Destroying clsact removes both directions' filters at once.
            qdisc: created.then(|| builder.hook(TC_INGRESS | TC_EGRESS)),
        };
        let point = match args.direction {
            Direction::Ingress => TC_INGRESS,
            Direction::Egress => TC_EGRESS,
        };
        let filter = builder
            .hook(point)
            .attach()
            .context("attaching the filter")?;
        attachment.filter = Some(filter);
        Ok(attachment)
    }

    /// Removes what we added; safe to call twice.
    fn release(&mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        if let Some(mut filter) = self.filter.take() {
            match filter.detach() {
                Ok(()) => {}
                // Gone with its qdisc (someone destroyed clsact): nothing left to
                // remove. The kernel says so with EINVAL ("Parent Qdisc doesn't
                // exists"); our own hook names a filter the kernel gave us, so
                // EINVAL means nothing else here.
                Err(err) if gone(&err) => {}
                Err(err) => result = Err(anyhow::Error::new(err).context("detaching the filter")),
            }
        }
        if let Some(mut qdisc) = self.qdisc.take() {
            match qdisc.destroy() {
                Ok(()) => {}
                Err(err) if gone(&err) => {}
                Err(err) if result.is_ok() => {
                    result = Err(anyhow::Error::new(err).context("removing the clsact qdisc"))
                }
                Err(err) => eprintln!("kloak-drop-first: removing the clsact qdisc: {err}"),
            }
        }
        result
    }
}

/// Whether a detach or destroy failed only because the thing is already gone.
fn gone(err: &libbpf_rs::Error) -> bool {
    matches!(
        err.kind(),
        libbpf_rs::ErrorKind::NotFound | libbpf_rs::ErrorKind::InvalidInput
    )
}

impl Drop for Attachment {
    /// Error paths between attaching and the explicit release still leave the interface clean.
    fn drop(&mut self) {
        if let Err(err) = self.release() {
            eprintln!("kloak-drop-first: {err:#}");
        }
    }
}

/// Creates the clsact qdisc on IFINDEX: true when we created it, false when
/// one was already there. libbpf-rs's `TcHook::create` hides that difference
/// (it reports EEXIST as success), and it decides who may destroy the qdisc.
fn create_clsact(ifindex: i32) -> anyhow::Result<bool> {
    let mut hook = libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as libbpf_sys::size_t,
        ifindex,
        attach_point: libbpf_sys::BPF_TC_INGRESS | libbpf_sys::BPF_TC_EGRESS,
        ..Default::default()
    };
    // SAFETY: `hook` is a fully initialised bpf_tc_hook with its own size in
    // `sz`, valid for the whole call; libbpf only reads it.
    let err = unsafe { libbpf_sys::bpf_tc_hook_create(&mut hook) };
    match -err {
        0 => Ok(true),
        libc::EEXIST => Ok(false),
        errno => bail!(std::io::Error::from_raw_os_error(errno)),
    }
}
