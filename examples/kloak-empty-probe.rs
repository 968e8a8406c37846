//! Benchmark floor: attaches an empty entry probe and an empty return probe to
//! SSL_write of one library, runs a command, detaches. `scripts/bench.sh`
//! compares kloak's cost against this (the kernel's own uprobe trap).
//!
//! usage: kloak-empty-probe LIBRARY -- CMD [ARGS...]

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::UprobeOpts;

use kloak::dataplane::skel::bench::BenchSkelBuilder;
use kloak::dataplane::targets::{inspect, TlsTarget};

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kloak-empty-probe: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<u8> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (library, command) = match args.split_first() {
        Some((library, rest))
            if rest.first().map(String::as_str) == Some("--") && rest.len() > 1 =>
        {
            (PathBuf::from(library), &rest[1..])
        }
        _ => bail!("usage: kloak-empty-probe LIBRARY -- CMD [ARGS...]"),
    };
    let Some(TlsTarget::OpenSsl(ssl)) = inspect(&library)? else {
        bail!("{} exports no SSL_write", library.display());
    };
    let mut object = MaybeUninit::uninit();
    let skel = BenchSkelBuilder::default().open(&mut object)?.load()?;
    let offset = ssl.ssl_write.file_offset as usize;
    let _entry = skel
        .progs
        .empty_entry
        .attach_uprobe_with_opts(-1, &library, offset, UprobeOpts::default())
        .context("attaching the empty entry probe")?;
    let _return = skel
        .progs
        .empty_return
        .attach_uprobe_with_opts(
            -1,
            &library,
            offset,
            UprobeOpts {
                retprobe: true,
                ..Default::default()
            },
        )
        .context("attaching the empty return probe")?;
    let status = Command::new(&command[0])
        .args(&command[1..])
        .status()
        .with_context(|| format!("running {}", command[0]))?;
    Ok(status.code().unwrap_or(1) as u8)
}
