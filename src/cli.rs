//! Command line: global flags plus one Args struct per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::dataplane::RewriteStrategy;

/// Where inspections are kept: root's alone (offsets in it become probe addresses).
const INSPECTION_CACHE: &str = "/var/lib/kloak/inspections.jsonl";

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
    /// Node agent (DaemonSet): shadow Secrets, pod discovery, the eBPF data plane.
    Controller(ControllerArgs),
    /// Mutating admission webhook: points kloak-enabled pods at shadow Secrets.
    Webhook(WebhookArgs),
    /// Create or reuse the webhook's CA and serving certificate; patch the caBundle.
    Certgen(CertgenArgs),
    /// Started by `kloak run`: cleans up after it if it is killed.
    #[command(hide = true)]
    RunGuard(RunGuardArgs),
    /// Before an uninstall (the chart's pre-delete hook): tell the agents to remove every
    /// shadow Secret and, when they exit, their pinned state; wait for the shadows to go.
    Uninstall(UninstallArgs),
}

#[derive(Debug, Args)]
pub struct RunGuardArgs {
    /// The command's cgroup.
    #[arg(long)]
    pub cgroup: std::path::PathBuf,
    /// kloak run's pinned maps.
    #[arg(long)]
    pub pin_dir: std::path::PathBuf,
    /// kloak run's tc filter handle.
    #[arg(long)]
    pub tc_handle: u32,
    /// The placeholder files.
    #[arg(long)]
    pub secrets_dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Namespace of the agent's DaemonSet.
    #[arg(long, env = "KLOAK_NAMESPACE", default_value = "kloak-system")]
    pub namespace: String,
    /// Name of the agent's DaemonSet.
    #[arg(long, default_value = "kloak-controller")]
    pub daemonset: String,
    /// Seconds to wait for the agents' leader to report the shadows deleted; after that the
    /// uninstall goes on (with a warning), so a broken agent never blocks it.
    #[arg(long, default_value_t = 60)]
    pub timeout_seconds: u64,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// This node's name (the downward API's spec.nodeName); only its pods are tracked.
    #[arg(long, env = "KLOAK_NODE_NAME")]
    pub node_name: String,
    /// This agent's pod name: its identity in leader election.
    #[arg(long, env = "KLOAK_POD_NAME")]
    pub pod_name: String,
    /// Namespace of the leader-election Lease (the agent's own namespace).
    #[arg(long, env = "KLOAK_NAMESPACE", default_value = "kloak-system")]
    pub namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kloak-controller")]
    pub lease_name: String,
    /// Name of this agent's DaemonSet: an uninstall is announced on it (`kloak uninstall`), and
    /// only then do the agents delete shadows and pins. Without it, pins always stay.
    #[arg(long, env = "KLOAK_DAEMONSET")]
    pub daemonset: Option<String>,
    /// Watch Secrets in these namespaces only (comma-separated or repeated); default: all.
    #[arg(long = "watch-namespace", value_delimiter = ',', value_name = "NS")]
    pub watch_namespaces: Vec<String>,
    /// A Secret without `getkloak.io/hosts` gets no shadow (instead of "any host" with a warning).
    #[arg(long, env = "KLOAK_REQUIRE_HOSTS")]
    pub require_hosts: bool,
    /// Trusted DNS server besides the auto-discovered kube-dns Service (IP or IP:PORT, repeatable).
    #[arg(long = "dns-server", value_delimiter = ',', value_name = "ADDR")]
    pub dns_servers: Vec<String>,
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_addr: std::net::SocketAddr,
    /// Where the host's /proc is visible (hostPID); used to find container processes.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where the host's cgroup file system is mounted.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Where maps and links are pinned so a restart adopts them.
    #[arg(long, default_value = "/sys/fs/bpf/kloak/controller")]
    pub pin_dir: PathBuf,
    /// What inspecting each executable and library found, kept across restarts (a file
    /// known by identity is not read again while its process is held at exec).
    #[arg(long, default_value = INSPECTION_CACHE)]
    pub inspection_cache: PathBuf,
    /// Seconds a replaced placeholder keeps working (until the kubelet refreshes mounted shadows).
    #[arg(long, default_value_t = 600)]
    pub grace_seconds: u64,
    /// Seconds between full resyncs (a safety net: changes arrive by watch).
    #[arg(long, default_value_t = 300)]
    pub resync_seconds: u64,
    /// Never rewrite: report what would happen.
    #[arg(long)]
    pub observe: bool,
    /// How placeholders reach the wire: `ciphertext` patches AES-GCM records on the wire
    /// (the real value never enters the pod; works on lockdown kernels), `in-place` rewrites
    /// the plaintext buffer, `auto` prefers ciphertext and falls back to in place.
    #[arg(long, env = "KLOAK_STRATEGY", value_enum, default_value_t = RewriteStrategy::Auto)]
    pub strategy: RewriteStrategy,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Serving certificate chain (PEM); re-read when the file changes.
    #[arg(long, default_value = "/etc/kloak/tls/tls.crt")]
    pub tls_cert: PathBuf,
    /// Serving key (PEM); re-read when the file changes.
    #[arg(long, default_value = "/etc/kloak/tls/tls.key")]
    pub tls_key: PathBuf,
    /// Largest AdmissionReview body accepted, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send its request headers (and finish the TLS handshake).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value_t = 25)]
    pub drain_seconds: u64,
}

#[derive(Debug, Args)]
pub struct CertgenArgs {
    /// Namespace of the webhook Service and of the certificate Secret.
    #[arg(long, env = "KLOAK_NAMESPACE", default_value = "kloak-system")]
    pub namespace: String,
    /// The webhook Service; the certificate covers its cluster DNS names.
    #[arg(long, default_value = "kloak-webhook")]
    pub service: String,
    /// Secret (type kubernetes.io/tls) holding the CA and the serving certificate.
    #[arg(long, default_value = "kloak-webhook-tls")]
    pub secret: String,
    /// MutatingWebhookConfiguration whose webhooks get the caBundle.
    #[arg(long, default_value = "kloak")]
    pub webhook_config: String,
    /// Certificates valid for fewer days than this are replaced.
    #[arg(long, default_value_t = 30)]
    pub min_validity_days: u32,
    /// Also write tls.crt, tls.key and ca.crt here (init-container mode).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Do not mount tracefs, bpffs or securityfs when they are missing.
    #[arg(long)]
    pub no_mount: bool,
    /// Read /proc, /sys and /etc under DIR instead of / (fixture roots, a host mounted
    /// elsewhere); the BPF feature probes still test the running kernel.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Where kloak instances pin their maps: one directory per instance, maps in `maps/`
    /// (the controller's `controller`, each `kloak run`'s `run-<pid>`). DIR may also be one
    /// instance's directory, to look at that instance alone.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/kloak")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A secret for the command: NAME (from kloak's env var NAME), NAME=@FILE or NAME=env:VAR.
    /// The command gets the placeholder in env var NAME and in $KLOAK_SECRETS_DIR/NAME.
    #[arg(long = "secret", value_name = "NAME[=@FILE|=env:VAR]")]
    pub secrets: Vec<String>,
    /// What inspecting each executable and library found, shared with later runs and the
    /// node agent (a file known by identity is not read again).
    #[arg(long, default_value = INSPECTION_CACHE)]
    pub inspection_cache: PathBuf,
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
    /// How placeholders reach the wire: `ciphertext` patches AES-GCM records on the wire
    /// (the real value never enters the command's memory; works on lockdown kernels),
    /// `in-place` rewrites the plaintext buffer, `auto` prefers ciphertext and falls back
    /// to in place.
    #[arg(long, env = "KLOAK_STRATEGY", value_enum, default_value_t = RewriteStrategy::Auto)]
    pub strategy: RewriteStrategy,
    /// Run the command as this user (name or uid); default: $SUDO_UID when run through sudo.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}
