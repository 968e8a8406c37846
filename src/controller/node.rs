//! The agent's event loop: watch updates, kernel events, leadership and
//! timers, one at a time, so state changes never race each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use kube::runtime::watcher::Event as WatchEvent;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, error, info, trace, warn};

use super::wire::HostEnd;
use crate::dataplane::wire::own_netns;
use crate::dataplane::{held, DataPlane, Event, EventKind, EventReceiver, WireSide};
use crate::secrets::SecretRef;

use super::agent::{Agent, Feed};
use super::feeds::{Scope, Update};
use super::installation::{self, Installation};
use super::metrics::Metrics;
use super::ops::Health;
use super::shadows::{Outcome, ShadowWriter};
use super::tracker::{PodChange, PodTracker};
use super::unix_now;

/// How often failed shadow writes are retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How often kernel counters (ring-buffer losses) are read.
const COUNTER_INTERVAL: Duration = Duration::from_secs(10);
/// How often new pods' interfaces are looked for (the ciphertext strategy patches there).
const WIRE_INTERVAL: Duration = Duration::from_secs(1);
/// How often, and after how long, processes held at exec without an answer are resumed.
const HELD_SWEEP: Duration = Duration::from_secs(1);
const CLASS_NET: &str = "/sys/class/net";

pub struct Node {
    pub agent: Agent<DataPlane>,
    pub writer: ShadowWriter,
    pub tracker: PodTracker,
    pub metrics: std::sync::Arc<Metrics>,
    pub health: std::sync::Arc<Health>,
    pub leader: watch::Receiver<bool>,
    /// Sources whose shadow write failed, retried on a timer.
    pub retry: BTreeSet<SecretRef>,
    pub synced_once: bool,
    /// Pod interfaces with the ciphertext strategy's filters attached, and
    /// the network namespace each serves.
    pub wired: BTreeMap<HostEnd, u32>,
    /// The agent's DaemonSet, when known (`--daemonset`): uninstall is announced there.
    pub installation: Option<Installation>,
    /// The namespaces shadows live in ("" for all): what uninstall cleans.
    pub scopes: Vec<Scope>,
    /// Uninstall announced: no shadow is written any more, and the pins go at exit.
    pub uninstalling: bool,
    /// This agent, as leader, deleted every shadow after uninstall was announced.
    pub shadows_removed: bool,
}

impl Node {
    pub async fn run_loop(
        &mut self,
        mut updates: BoxStream<'static, Update>,
        events: &mut EventReceiver,
        resync: Duration,
    ) -> anyhow::Result<()> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut resync_timer = tokio::time::interval(resync);
        let mut retry_timer = tokio::time::interval(RETRY_INTERVAL);
        let mut counter_timer = tokio::time::interval(COUNTER_INTERVAL);
        let mut wire_timer = tokio::time::interval(WIRE_INTERVAL);
        let mut held_timer = tokio::time::interval(HELD_SWEEP);
        loop {
            tokio::select! {
                Some(update) = updates.next() => {
                    let received = Instant::now();
                    self.update(update).await;
                    self.sync(Some(received)).await;
                }
                Some(event) = events.recv() => self.kernel_event(event).await,
                Ok(()) = self.leader.changed() => {
                    let leading = *self.leader.borrow_and_update();
                    self.metrics.set_leader(leading);
                    info!(leading, "leadership changed");
                    if leading && self.uninstalling {
                        self.remove_shadows().await;
                    } else if leading {
                        self.reconcile_all().await;
                    }
                }
                _ = resync_timer.tick() => {
                    if self.leading() {
                        self.reconcile_all().await;
                    }
                    self.sync(None).await;
                }
                _ = retry_timer.tick(), if !self.retry.is_empty() => {
                    let pending = std::mem::take(&mut self.retry);
                    for secret in pending {
                        self.reconcile(&secret).await;
                    }
                }
                _ = counter_timer.tick() => self.read_counters().await,
                _ = wire_timer.tick() => self.wire_pods().await,
                _ = held_timer.tick() => {
                    held::sweep(self.agent.sink(), Path::new("/proc"), HELD_SWEEP).await;
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        if self.uninstalling {
            info!("stopping for uninstall: pinned maps and probes go");
        } else {
            info!("stopping; pinned maps and probes stay for the next agent");
        }
        Ok(())
    }

    /// Uninstall was announced: stop writing shadows; the leader deletes them all.
    async fn begin_uninstall(&mut self) {
        if !self.uninstalling {
            self.uninstalling = true;
            self.retry.clear();
            info!("uninstall announced on the DaemonSet: shadows are removed, pins go at exit");
        }
        if self.leading() {
            self.remove_shadows().await;
        }
    }

    async fn remove_shadows(&mut self) {
        if self.shadows_removed {
            return;
        }
        match self.writer.remove_all(&self.scopes).await {
            Ok(count) => {
                info!(count, "every shadow deleted (uninstall)");
                self.shadows_removed = true;
                if let Some(installation) = &self.installation {
                    if let Err(err) = installation.shadows_removed(count).await {
                        warn!(%err, daemonset = %installation.name, "cannot tell the uninstall hook that shadows are gone");
                    }
                }
            }
            // The hook waits and gives up after its timeout; a later event retries.
            Err(err) => warn!(%err, "cannot delete the shadows for uninstall"),
        }
    }

    fn leading(&self) -> bool {
        self.writer.is_leader()
    }

    async fn update(&mut self, update: Update) {
        let now = unix_now();
        match update {
            Update::Source(scope, event) => {
                let touched = self.agent.secret_event(Feed::Sources(scope), event, now);
                self.touched(touched).await;
            }
            Update::Shadow(scope, event) => {
                // A shadow deleted or edited by someone else is rewritten from its source.
                let touched = self.agent.secret_event(Feed::Shadows(scope), event, now);
                self.touched(touched).await;
            }
            Update::Pod(event) => match *event {
                WatchEvent::Init => self.agent.begin_listing(Feed::Pods),
                WatchEvent::InitDone => {
                    for uid in self.agent.end_listing(Feed::Pods) {
                        self.tracker.forget(&uid, self.agent.sink()).await;
                    }
                }
                WatchEvent::Apply(pod) | WatchEvent::InitApply(pod) => {
                    match self.tracker.pod_seen(&pod) {
                        PodChange::Bind(uid, binding) => {
                            self.agent.pod_applied(uid.clone(), binding);
                            // Cgroups first, then hook what already runs there.
                            self.sync(None).await;
                            self.tracker.hook_running(&uid, self.agent.sink()).await;
                        }
                        PodChange::Forget(uid) => self.forget_pod(&uid).await,
                        PodChange::None => {}
                    }
                }
                WatchEvent::Delete(pod) => {
                    if let Some(uid) = pod.metadata.uid {
                        self.forget_pod(&uid).await;
                    }
                }
            },
            Update::Installation(event) => {
                if installation::uninstall_seen(&event) {
                    self.begin_uninstall().await;
                }
            }
            Update::Error(feed, err) => {
                self.metrics.sync_error("watch");
                warn!(feed, %err, "watch failed; retrying with backoff");
            }
        }
    }

    async fn touched(&mut self, secrets: Vec<SecretRef>) {
        for secret in &secrets {
            self.reconcile(secret).await;
        }
    }

    async fn forget_pod(&mut self, uid: &str) {
        self.agent.pod_deleted(uid);
        self.sync(None).await;
        self.tracker.forget(uid, self.agent.sink()).await;
    }

    /// The leader brings one shadow in line; followers only read.
    async fn reconcile(&mut self, secret: &SecretRef) {
        // Before every watch has listed, a missing source may only be unlisted yet;
        // after uninstall was announced, no shadow is written again.
        if !self.agent.is_synced() || self.uninstalling {
            return;
        }
        let result = self
            .writer
            .reconcile_avoiding(
                secret,
                self.agent.source(secret),
                self.agent.shadow(secret),
                unix_now(),
                &|key| self.agent.is_key_taken(key),
            )
            .await;
        match result {
            Ok(outcome) => {
                if let Some(op) = outcome.write() {
                    self.metrics.shadow_write(op);
                }
                if let Outcome::Refused(reasons) = outcome {
                    for reason in reasons {
                        self.metrics.secret_problem(reason);
                    }
                }
            }
            Err(err) => {
                self.metrics.sync_error(err.metric_label());
                warn!(secret = %secret, %err, "shadow write failed; retrying");
                self.retry.insert(secret.clone());
            }
        }
    }

    async fn reconcile_all(&mut self) {
        for secret in self.agent.known_secrets() {
            self.reconcile(&secret).await;
        }
    }

    async fn sync(&mut self, received: Option<Instant>) {
        match self.agent.sync(unix_now()).await {
            Ok(report) => {
                if self.agent.is_synced() && !self.synced_once {
                    self.synced_once = true;
                    self.health.set_first_sync_done(true);
                    info!(
                        secrets = report.secrets_mapped,
                        pods = self.tracker.pod_count(),
                        "first sync done"
                    );
                    // What runs is hooked now: pinned probes nobody claimed are an earlier agent's leftovers.
                    match self.agent.sink().prune_links().await {
                        Ok(pruned) if !pruned.is_empty() => {
                            info!(
                                links = pruned.len(),
                                "detached probes left by an earlier agent"
                            )
                        }
                        Ok(_) => {}
                        Err(err) => warn!(%err, "cannot detach probes left by an earlier agent"),
                    }
                    if self.leading() {
                        self.reconcile_all().await;
                    }
                }
                for unmapped in &report.unmapped {
                    debug!(secret = %unmapped.secret, key = %unmapped.key, reason = unmapped.reason, "placeholder not mapped");
                }
                self.metrics
                    .set_secrets(report.secrets_mapped, report.secrets_any_host);
                self.metrics.set_pods(self.tracker.pod_count());
                self.metrics.set_containers(self.tracker.container_count());
                self.metrics.set_probes(self.tracker.probe_count());
                if let Some(received) = received.filter(|_| report.ops > 0) {
                    let latency = received.elapsed();
                    self.metrics.observe_sync(latency);
                    debug!(
                        ops = report.ops,
                        latency_us = latency.as_micros() as u64,
                        "kernel maps updated"
                    );
                }
            }
            Err(err) => {
                self.metrics.sync_error("maps");
                error!(%err, "cannot update kernel maps; retrying at the next change or resync");
            }
        }
    }

    async fn kernel_event(&mut self, event: Event) {
        match event.kind {
            EventKind::ExecHeld => {
                self.tracker
                    .exec_held(event.pid, event.cgroup_id, self.agent.sink())
                    .await;
                self.metrics.set_probes(self.tracker.probe_count());
            }
            EventKind::Rewritten => {
                self.metrics.rewritten();
                trace!(pid = event.pid, comm = %event.comm, cgroup = event.cgroup_id, secret_id = event.secret_id, peer = ?event.peer_display(), "rewritten");
            }
            EventKind::Blocked => {
                self.metrics.blocked(event.reason.name());
                debug!(pid = event.pid, comm = %event.comm, cgroup = event.cgroup_id, secret_id = event.secret_id, peer = ?event.peer_display(), reason = event.reason.name(), "placeholder sent unchanged");
            }
            _ => {
                trace!(kind = ?event.kind, reason = event.reason.name(), pid = event.pid, "data plane event")
            }
        }
    }

    /*
     * Attaches the ciphertext strategy's filters to the host end of every new
     * pod interface, for the pod's network namespace. Until a pod's interface
     * is wired its records leave unpatched: whole, with the placeholder (fail
     * closed), and its events say wire_unavailable.
     */
    async fn wire_pods(&mut self) {
        let ends = super::wire::pod_host_ends(Path::new(CLASS_NET));
        let gone: Vec<HostEnd> = (self.wired.keys())
            .filter(|end| !ends.contains(end))
            .cloned()
            .collect();
        for end in gone {
            self.wired.remove(&end);
            if let Err(err) = self.agent.sink().detach_wire(end.ifindex).await {
                warn!(interface = %end.name, %err, "cannot forget a pod interface that went away");
            }
        }
        let new: Vec<HostEnd> = ends
            .into_iter()
            .filter(|end| !self.wired.contains_key(end))
            .collect();
        if new.is_empty() {
            return;
        }
        let own = match own_netns() {
            Ok(own) => own,
            Err(err) => return warn!(%err, "cannot read the agent's network namespace"),
        };
        let namespaces = super::wire::peer_namespaces(&new, Path::new("/proc"), own);
        for end in new {
            let Some(&netns) = namespaces.get(&end.ifindex) else {
                // A pod still starting has no process yet; later ticks try again.
                debug!(interface = %end.name, "no network namespace links to this interface yet");
                continue;
            };
            match self
                .agent
                .sink()
                .attach_wire(end.ifindex, &end.name, WireSide::PodHostEnd, netns)
                .await
            {
                Ok(true) => {
                    info!(interface = %end.name, netns, "pod interface wired for the ciphertext strategy");
                    self.wired.insert(end, netns);
                }
                Ok(false) => return,
                Err(err) => warn!(interface = %end.name, %err, "cannot wire pod interface"),
            }
        }
    }

    async fn read_counters(&mut self) {
        match self.agent.sink().counters().await {
            Ok(counters) => {
                let lost = counters
                    .get(crate::dataplane::loader::COUNTER_EVENTS_LOST)
                    .copied()
                    .unwrap_or(0);
                self.metrics.set_ringbuf_lost(lost);
            }
            Err(err) => warn!(%err, "cannot read kernel counters"),
        }
    }
}
