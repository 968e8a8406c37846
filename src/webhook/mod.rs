//! Mutating admission webhook: points kloak-enabled pods at shadow Secrets.

pub async fn run(_args: crate::cli::WebhookArgs) -> anyhow::Result<u8> {
    anyhow::bail!("in progress")
}
