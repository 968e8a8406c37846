//! Mutating admission webhook: points kloak-enabled pods at shadow Secrets.
//!
//! [`mutate`] decides (pure), [`lookup`] asks the API for Secret metadata,
//! [`review`] turns an AdmissionReview into an answer, [`tls`] keeps the
//! serving certificate fresh and [`server`] is the HTTPS shell around them.

pub mod lookup;
pub mod mutate;
pub mod review;
pub mod server;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

pub use lookup::{ApiDirectory, LookupError, SecretDirectory};
pub use mutate::SecretState;
pub use server::{serve, Limits};
pub use tls::CertSource;

pub async fn run(args: crate::cli::WebhookArgs) -> anyhow::Result<u8> {
    let tls = CertSource::load(&args.tls_cert, &args.tls_key)
        .context("cannot load the serving certificate")?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (the webhook expects to run in a cluster, or a kubeconfig)")?;
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM/SIGINT")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "webhook serving");
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        header_timeout: Duration::from_secs(args.header_timeout_seconds),
        drain: Duration::from_secs(args.drain_seconds),
    };
    serve(
        listener,
        Arc::new(tls),
        Arc::new(ApiDirectory::new(client)),
        limits,
        shutdown,
    )
    .await;
    tracing::info!("webhook stopped");
    Ok(0)
}

/// Registered before serving, so a signal arriving early is not lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
