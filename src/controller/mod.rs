//! Node agent (DaemonSet): shadow Secrets, pod discovery, the eBPF data plane.

pub async fn run(_args: crate::cli::ControllerArgs) -> anyhow::Result<u8> {
    anyhow::bail!("in progress")
}
