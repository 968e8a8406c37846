//! `kloak uninstall`: the chart's pre-delete hook.
//!
//! Helm deletes the agents' RBAC together with their DaemonSet, so an agent
//! that only learned of the uninstall at SIGTERM could no longer delete
//! anything. This command runs first, while everything still exists: it
//! annotates the DaemonSet, the agents (watching it) stop writing shadows and
//! the leader deletes them all and answers on the DaemonSet; each agent then
//! removes its pins when Helm stops it. See `controller::installation`.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tracing::{error, info, warn};

use crate::cli::UninstallArgs;
use crate::controller::installation::{SHADOWS_REMOVED_ANNOTATION, UNINSTALL_ANNOTATION};
use crate::k8s;

const POLL: Duration = Duration::from_millis(500);

pub async fn run(args: UninstallArgs) -> anyhow::Result<u8> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    let api: Api<DaemonSet> = Api::namespaced(client, &args.namespace);
    let patch = json!({"metadata": {"annotations": {UNINSTALL_ANNOTATION: k8s::TRUE}}});
    match api
        .patch(
            &args.daemonset,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            info!(daemonset = %args.daemonset, namespace = %args.namespace, "uninstall announced to the agents")
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            warn!(daemonset = %args.daemonset, "no agent DaemonSet: nothing to tell");
            return Ok(0);
        }
        // A failed pre-delete hook blocks `helm uninstall`: say what is wrong, and let it go on.
        Err(err) => {
            error!(%err, daemonset = %args.daemonset, namespace = %args.namespace,
                "cannot announce the uninstall (RBAC: patch on this DaemonSet); shadows and pins stay");
            return Ok(0);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    while Instant::now() < deadline {
        match api.get_opt(&args.daemonset).await {
            Ok(Some(ds)) => {
                let removed = ds
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SHADOWS_REMOVED_ANNOTATION));
                if let Some(count) = removed {
                    info!(shadows = %count, "the agents' leader deleted every shadow Secret");
                    return Ok(0);
                }
            }
            Ok(None) => return Ok(0),
            Err(err) => warn!(%err, "reading the agent DaemonSet"),
        }
        tokio::time::sleep(POLL).await;
    }
    warn!(
        timeout_seconds = args.timeout_seconds,
        "no leader reported the shadows deleted; uninstalling anyway (shadow Secrets may be left: \
         kubectl delete secret -A -l getkloak.io/managed=true)"
    );
    Ok(0)
}
