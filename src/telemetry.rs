//! Logging: one tracing subscriber for the whole binary, libbpf's own log routed into it.

use anyhow::Context;
use libbpf_rs::PrintLevel;
use tracing_subscriber::EnvFilter;

use crate::cli::GlobalArgs;

pub fn init(args: &GlobalArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if args.log_json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    result.map_err(|err| anyhow::anyhow!("cannot install the logger: {err}"))?;
    // libbpf's debug output is thousands of lines per load (every relocation); asking libbpf not to
    // format it at all when nobody reads it saves seconds per start on a slow CPU.
    let wanted = if tracing::enabled!(target: "libbpf", tracing::Level::TRACE) {
        PrintLevel::Debug
    } else {
        PrintLevel::Info
    };
    libbpf_rs::set_print(Some((wanted, libbpf_log)));
    Ok(())
}

fn libbpf_log(level: PrintLevel, message: String) {
    let message = message.trim_end();
    match level {
        PrintLevel::Warn => tracing::debug!(target: "libbpf", "{message}"),
        PrintLevel::Info => tracing::debug!(target: "libbpf", "{message}"),
        PrintLevel::Debug => tracing::trace!(target: "libbpf", "{message}"),
    }
}
