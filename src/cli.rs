//! Command line: global flags plus one Args struct per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kloak",
    version,
    about = "Agentless secret injection with eBPF: workloads hold placeholders, the kernel sends the real value only to allowed hosts."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, kloak=trace.
    #[arg(long, env = "KLOAK_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Logs as JSON lines instead of text.
    #[arg(long, env = "KLOAK_LOG_JSON", global = true)]
    pub log_json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command with placeholders instead of secrets (local mode, needs root).
    Run(RunArgs),
    /// Check what this node's kernel allows; exits non-zero when it cannot rewrite.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Do not mount tracefs, bpffs or securityfs when they are missing.
    #[arg(long)]
    pub no_mount: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A secret for the command: NAME (from kloak's env var NAME), NAME=@FILE or NAME=env:VAR.
    /// The command gets the placeholder in env var NAME and in $KLOAK_SECRETS_DIR/NAME.
    #[arg(long = "secret", value_name = "NAME[=@FILE|=env:VAR]")]
    pub secrets: Vec<String>,
    /// Host the --secret values may be sent to: name, *.suffix or IP (repeatable; none = any host).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Port the --secret values may be sent to.
    #[arg(long, value_name = "N")]
    pub port: Option<String>,
    /// TOML file with [[secret]] entries and [dns] servers.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trusted DNS server (IP or IP:PORT, repeatable); default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-server", value_name = "ADDR")]
    pub dns_servers: Vec<String>,
    /// Refuse secrets without an allowed host list.
    #[arg(long)]
    pub require_hosts: bool,
    /// Decisions as JSON lines on stderr instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also append every decision as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Never rewrite: report what would happen (placeholders go out unchanged).
    #[arg(long)]
    pub observe: bool,
    /// Run the command as this user (name or uid); default: $SUDO_UID when run through sudo.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}
