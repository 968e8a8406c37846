//! Webhook certificates: a CA and a serving certificate (rcgen), and
//! `kloak certgen`, which keeps them in a `kubernetes.io/tls` Secret and in
//! the caBundle of every webhook of the MutatingWebhookConfiguration.
//!
//! certgen runs as an init container of the webhook and as a Helm hook Job,
//! unprivileged, with narrow RBAC (S8): `get`/`update` on its one Secret,
//! `create` on Secrets in its namespace, `get`/`patch` on its one
//! MutatingWebhookConfiguration. Several runs may race; every write is
//! conditional on what was read, and the loser re-reads and reuses.
//!
//! The pure decisions (which names, what to mint, whether to keep) live in
//! `bundle`; `cluster` is the API edge; `files` the `--output-dir` writer.

mod bundle;
mod cluster;
mod files;

use std::time::SystemTime;

use anyhow::Context;
use tracing::info;

pub use bundle::{
    assess, generate, renew, CertBundle, CertError, ReplaceReason, Verdict, WebhookIdentity,
    CA_FILE, CA_VALIDITY, CERT_FILE, KEY_FILE, SERVING_VALIDITY,
};
pub use cluster::{certgen, CertgenError, Outcome, SecretAction};
pub use files::write_bundle;

/// `kloak certgen`: exit code 0 once the Secret, the caBundles and the
/// optional output directory all hold one valid bundle.
pub async fn run(args: crate::cli::CertgenArgs) -> anyhow::Result<u8> {
    let client = kube::Client::try_default().await.context(
        "cannot configure a Kubernetes client (in-cluster service account or kubeconfig)",
    )?;
    let outcome = certgen(client, &args, SystemTime::now()).await?;
    info!(
        secret = %args.secret,
        namespace = %args.namespace,
        webhook_config = %args.webhook_config,
        action = %outcome.secret,
        webhooks_patched = outcome.webhooks_patched,
        "certgen done"
    );
    Ok(0)
}
