//! Node agent (DaemonSet): shadow Secrets, pod discovery, the eBPF data plane.
//!
//! Every agent watches labelled Secrets, their shadows and its node's pods,
//! and keeps its kernel maps in line; the elected leader also writes shadows.

pub mod agent;
pub mod feeds;
pub mod installation;
pub mod leader;
pub mod metrics;
pub mod ops;
pub mod pods;
pub mod shadows;
pub mod tracker;
pub mod wire;

mod node;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::events::{Recorder, Reporter};
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::ControllerArgs;
use crate::config;
use crate::dataplane::{probes, DataPlane, LoaderConfig};

use self::agent::{Agent, Feed};
use self::leader::LeaseConfig;
use self::metrics::Metrics;
use self::node::Node;
use self::ops::Health;
use self::pods::CgroupLayout;
use self::shadows::ShadowWriter;
use self::tracker::PodTracker;

#[cfg(test)]
mod leak_tests;
#[cfg(test)]
mod mock;

/// Seconds since the Unix epoch: the time base of retired placeholders.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The node agent's `tc` filter handle (`kloak run` instances use 0x6b000000 | pid).
const CONTROLLER_TC_HANDLE: u32 = 0x6b00_0000;

pub async fn run(args: ControllerArgs) -> anyhow::Result<u8> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop, stopped) = watch::channel(false);
    let listener = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "binding the health and metrics address {}",
                args.metrics_addr
            )
        })?;
    let ops_task = tokio::spawn(ops::serve(
        listener,
        health.clone(),
        metrics.clone(),
        until_stopped(stopped.clone()),
    ));

    let features = probes::probe(true);
    let gaps = features.fatal_gaps();
    if !gaps.is_empty() {
        bail!("this node's kernel cannot run kloak: {}", gaps.join("; "));
    }
    if let Some(blocker) = features.rewrite_blocker() {
        error!(reason = %blocker, "REWRITE UNAVAILABLE on this node: placeholders will go out unchanged; run `kloak doctor` for the remedy");
    }
    let layout = CgroupLayout::detect(&args.cgroup_root)
        .with_context(|| format!("reading cgroups under {}", args.cgroup_root.display()))?;
    if !layout.supports_binding() {
        error!("cgroup v1 only: containers cannot be told apart, so no pod on this node gets rewrites (fail closed); boot with cgroup v2");
    }
    crate::dataplane::hooking::persist_inspections(&args.inspection_cache);
    let (dataplane, mut events) = DataPlane::start(LoaderConfig::for_kernel(
        args.pin_dir.clone(),
        true,
        features.write_user,
        args.observe,
        args.strategy,
        CONTROLLER_TC_HANDLE,
    ))?;
    let adopted = dataplane.snapshot(agent::OWNED_MAPS).await?;
    info!(entries = adopted.len(), pin_dir = %args.pin_dir.display(), "data plane loaded; pinned state adopted");
    if layout.supports_binding() {
        let point = layout.dns_attach_point();
        dataplane
            .attach_dns(&point)
            .await
            .with_context(|| format!("attaching DNS capture to {}", point.display()))?;
    }
    // Processes an earlier agent stopped at exec and never resumed.
    crate::dataplane::held::sweep(&dataplane, Path::new("/proc"), Duration::ZERO).await;
    health.set_dataplane_loaded(true);

    let scopes = feeds::scopes(&args.watch_namespaces);
    let mut agent = Agent::new(
        dataplane,
        adopted,
        Feed::all(&scopes),
        args.require_hosts,
        args.grace_seconds as i64,
    );
    agent
        .store_mut()
        .set_resolvers(resolvers(&client, &args.dns_servers).await?);
    let (leader_tx, leader_rx) = watch::channel(false);
    let writer = ShadowWriter::new(
        client.clone(),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: "kloak".into(),
                instance: Some(args.pod_name.clone()),
            },
        ),
        leader_rx.clone(),
        args.require_hosts,
        args.grace_seconds as i64,
    );
    let election = tokio::spawn(leader::run(
        client.clone(),
        LeaseConfig::new(&args.namespace, &args.lease_name, &args.pod_name),
        leader_tx,
        until_stopped(stopped.clone()),
    ));
    let mut node = Node {
        agent,
        writer,
        tracker: PodTracker::new(layout, args.proc_root.clone()),
        metrics: metrics.clone(),
        health: health.clone(),
        leader: leader_rx,
        retry: BTreeSet::new(),
        synced_once: false,
        wired: Default::default(),
        installation: args
            .daemonset
            .as_ref()
            .map(|name| installation::Installation {
                api: Api::namespaced(client.clone(), &args.namespace),
                name: name.clone(),
            }),
        scopes: scopes.clone(),
        uninstalling: false,
        shadows_removed: false,
    };
    let result = node
        .run_loop(
            feeds::watch_all(
                &client,
                &args.watch_namespaces,
                &args.node_name,
                args.daemonset
                    .as_deref()
                    .map(|name| (args.namespace.as_str(), name)),
            ),
            &mut events,
            Duration::from_secs(args.resync_seconds.max(1)),
        )
        .await;
    let _ = stop.send(true);
    let _ = election.await;
    let _ = ops_task.await;
    if node.uninstalling {
        // Nobody will resume a process held at exec after this agent.
        crate::dataplane::held::sweep(node.agent.sink(), Path::new("/proc"), Duration::ZERO).await;
    }
    // Pins stay for a restart: the next agent adopts maps and links, so rewrites never stop.
    node.agent.into_sink().shutdown();
    if node.uninstalling {
        remove_pins(&args.pin_dir);
        remove_file(&args.inspection_cache);
    }
    result.map(|()| 0)
}

/// Uninstall: unpins every map and link, so the kernel frees them (and
/// detaches the probes) once this process has exited.
fn remove_pins(pin_dir: &Path) {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => info!(pin_dir = %pin_dir.display(), "pinned maps and links removed"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            error!(pin_dir = %pin_dir.display(), %err, "cannot remove pinned maps and links")
        }
    }
}

fn remove_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => info!(path = %path.display(), "removed"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => warn!(path = %path.display(), %err, "cannot remove"),
    }
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Trusted DNS servers: the cluster's DNS Service (auto-discovered) and the configured ones.
async fn resolvers(
    client: &kube::Client,
    configured: &[String],
) -> anyhow::Result<BTreeSet<SocketAddr>> {
    let mut found = BTreeSet::new();
    for text in configured {
        found.insert(
            config::parse_dns_server(text).with_context(|| format!("--dns-server {text}"))?,
        );
    }
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    for name in ["kube-dns", "coredns"] {
        match services.get_opt(name).await {
            Ok(Some(service)) => {
                let ips = service
                    .spec
                    .iter()
                    .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.iter()));
                for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                    found.insert(SocketAddr::new(ip, 53));
                }
                break;
            }
            Ok(None) => continue,
            Err(err) => warn!(service = name, %err, "cannot read the cluster DNS Service"),
        }
    }
    if found.is_empty() {
        error!("no trusted DNS server: host names cannot be verified, only IP-literal hosts will get rewrites; set --dns-server");
    } else {
        info!(servers = ?found, "trusted DNS servers");
    }
    Ok(found)
}
