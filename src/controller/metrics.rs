//! The node agent's Prometheus metrics, all prefixed `kloak_`.
//!
//! Label values are `&'static str` on purpose: only names compiled into the
//! binary (reason, operation and error-kind names from fixed sets, such as
//! `value_too_short`, `host_not_allowed`, `create`) can become label values.
//! A secret value, a placeholder, a host name or a Secret's name is always a
//! runtime `String` and so cannot reach a label by accident (contract S1, and
//! it keeps the label sets small and bounded).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Every metric the agent exports; share it behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    secrets_managed: Gauge,
    secrets_any_host: Gauge,
    pods_tracked: Gauge,
    containers_tracked: Gauge,
    probes_attached: Gauge,
    leader: Gauge,
    secret_problems: Family<ReasonLabel, Counter>,
    rewrites: Counter,
    blocks: Family<ReasonLabel, Counter>,
    ringbuf_lost: Counter,
    /// The kernel's counter as last seen, so ours advances by the difference.
    ringbuf_lost_seen: AtomicU64,
    shadow_writes: Family<OpLabel, Counter>,
    sync_errors: Family<KindLabel, Counter>,
    sync_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("kloak"),
            secrets_managed: Gauge::default(),
            secrets_any_host: Gauge::default(),
            pods_tracked: Gauge::default(),
            containers_tracked: Gauge::default(),
            probes_attached: Gauge::default(),
            leader: Gauge::default(),
            secret_problems: Family::default(),
            rewrites: Counter::default(),
            blocks: Family::default(),
            ringbuf_lost: Counter::default(),
            ringbuf_lost_seen: AtomicU64::new(0),
            shadow_writes: Family::default(),
            sync_errors: Family::default(),
            // 0.5 ms to about 1 s: the target is under 200 ms end to end.
            sync_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 12)),
        };
        // A fixed set: exported at zero from the start so rates and alerts
        // work before the first write.
        for op in ["create", "update", "delete"] {
            metrics.shadow_writes.get_or_create_owned(&OpLabel { op });
        }
        let registry = &mut metrics.registry;
        registry.register(
            "secrets_managed",
            "Secrets with a live mapping on this node",
            metrics.secrets_managed.clone(),
        );
        registry.register(
            "secrets_any_host",
            "Managed secrets without a hosts annotation (any verified host)",
            metrics.secrets_any_host.clone(),
        );
        registry.register(
            "pods_tracked",
            "Kloak-enabled pods on this node",
            metrics.pods_tracked.clone(),
        );
        registry.register(
            "containers_tracked",
            "Containers of kloak-enabled pods whose cgroups are bound",
            metrics.containers_tracked.clone(),
        );
        registry.register(
            "probes_attached",
            "Uprobes attached to TLS libraries",
            metrics.probes_attached.clone(),
        );
        registry.register(
            "leader",
            "1 while this agent holds the lease and writes shadow Secrets",
            metrics.leader.clone(),
        );
        registry.register(
            "secret_problems",
            "Secrets refused for bad input, by reason",
            metrics.secret_problems.clone(),
        );
        registry.register(
            "rewrites",
            "Placeholders replaced by their real value",
            metrics.rewrites.clone(),
        );
        registry.register(
            "blocks",
            "Placeholders sent unchanged, by data-plane reason",
            metrics.blocks.clone(),
        );
        registry.register(
            "ringbuf_lost",
            "Events the kernel could not put on the ring buffer",
            metrics.ringbuf_lost.clone(),
        );
        registry.register(
            "shadow_writes",
            "Shadow Secret writes by the leader, by operation",
            metrics.shadow_writes.clone(),
        );
        registry.register(
            "sync_errors",
            "Failed synchronisation steps, by kind",
            metrics.sync_errors.clone(),
        );
        registry.register_with_unit(
            "sync_latency",
            "From a watch event to the kernel maps updated",
            Unit::Seconds,
            metrics.sync_latency.clone(),
        );
        metrics
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn set_secrets(&self, managed: usize, any_host: usize) {
        self.secrets_managed.set(gauge_value(managed));
        self.secrets_any_host.set(gauge_value(any_host));
    }

    pub fn set_pods(&self, pods: usize) {
        self.pods_tracked.set(gauge_value(pods));
    }

    pub fn set_containers(&self, containers: usize) {
        self.containers_tracked.set(gauge_value(containers));
    }

    pub fn set_probes(&self, probes: usize) {
        self.probes_attached.set(gauge_value(probes));
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// A Secret refused for bad input, e.g. `value_too_short`.
    pub fn secret_problem(&self, reason: &'static str) {
        self.secret_problems
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn rewritten(&self) {
        self.rewrites.inc();
    }

    /// A placeholder sent unchanged, by the data plane's reason name, e.g.
    /// `host_not_allowed`.
    pub fn blocked(&self, reason: &'static str) {
        self.blocks.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Mirrors the kernel's lost-event counter. A value below the last one
    /// means the kernel counter restarted (maps recreated), so all of it is new.
    pub fn set_ringbuf_lost(&self, total: u64) {
        let previous = self.ringbuf_lost_seen.swap(total, Ordering::Relaxed);
        let delta = if total >= previous {
            total - previous
        } else {
            total
        };
        if delta > 0 {
            self.ringbuf_lost.inc_by(delta);
        }
    }

    /// A shadow Secret write: `create`, `update` or `delete`.
    pub fn shadow_write(&self, op: &'static str) {
        self.shadow_writes.get_or_create(&OpLabel { op }).inc();
    }

    /// A failed synchronisation step, by a short fixed kind name.
    pub fn sync_error(&self, kind: &'static str) {
        self.sync_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn observe_sync(&self, latency: Duration) {
        self.sync_latency.observe(latency.as_secs_f64());
    }
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        metrics.encode().expect("encodes")
    }

    #[test]
    fn every_metric_is_exported_with_its_type() {
        let metrics = Metrics::new();
        // A labelled family shows up once it has a child.
        metrics.secret_problem("no_data");
        metrics.blocked("port_mismatch");
        metrics.sync_error("apply_maps");
        let text = encoded(&metrics);
        for (name, kind) in [
            ("kloak_secrets_managed", "gauge"),
            ("kloak_secrets_any_host", "gauge"),
            ("kloak_pods_tracked", "gauge"),
            ("kloak_containers_tracked", "gauge"),
            ("kloak_probes_attached", "gauge"),
            ("kloak_leader", "gauge"),
            ("kloak_secret_problems", "counter"),
            ("kloak_rewrites", "counter"),
            ("kloak_blocks", "counter"),
            ("kloak_ringbuf_lost", "counter"),
            ("kloak_shadow_writes", "counter"),
            ("kloak_sync_errors", "counter"),
            ("kloak_sync_latency_seconds", "histogram"),
        ] {
            let line = format!("# TYPE {name} {kind}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn shadow_write_operations_start_at_zero() {
        let text = encoded(&Metrics::new());
        for op in ["create", "update", "delete"] {
            let line = format!("kloak_shadow_writes_total{{op=\"{op}\"}} 0\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn values_and_labels() {
        let metrics = Metrics::new();
        metrics.set_secrets(3, 1);
        metrics.set_pods(2);
        metrics.set_containers(5);
        metrics.set_probes(4);
        metrics.set_leader(true);
        metrics.secret_problem("value_too_short");
        metrics.secret_problem("value_too_short");
        metrics.secret_problem("invalid_hosts");
        metrics.rewritten();
        metrics.blocked("host_not_allowed");
        metrics.shadow_write("create");
        metrics.sync_error("list_pods");
        let text = encoded(&metrics);
        for line in [
            "kloak_secrets_managed 3\n",
            "kloak_secrets_any_host 1\n",
            "kloak_pods_tracked 2\n",
            "kloak_containers_tracked 5\n",
            "kloak_probes_attached 4\n",
            "kloak_leader 1\n",
            "kloak_secret_problems_total{reason=\"value_too_short\"} 2\n",
            "kloak_secret_problems_total{reason=\"invalid_hosts\"} 1\n",
            "kloak_rewrites_total 1\n",
            "kloak_blocks_total{reason=\"host_not_allowed\"} 1\n",
            "kloak_shadow_writes_total{op=\"create\"} 1\n",
            "kloak_sync_errors_total{kind=\"list_pods\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        metrics.set_leader(false);
        assert!(encoded(&metrics).contains("kloak_leader 0\n"));
    }

    #[test]
    fn sync_latency_buckets_span_a_millisecond_to_a_second() {
        let metrics = Metrics::new();
        metrics.observe_sync(Duration::from_millis(3));
        metrics.observe_sync(Duration::from_secs(5));
        let text = encoded(&metrics);
        for line in [
            "kloak_sync_latency_seconds_bucket{le=\"0.0005\"} 0\n",
            "kloak_sync_latency_seconds_bucket{le=\"0.002\"} 0\n",
            "kloak_sync_latency_seconds_bucket{le=\"0.004\"} 1\n",
            "kloak_sync_latency_seconds_bucket{le=\"1.024\"} 1\n",
            "kloak_sync_latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "kloak_sync_latency_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_lost_counter_follows_the_kernel_counter() {
        let metrics = Metrics::new();
        let lost = || metrics.ringbuf_lost.get();
        metrics.set_ringbuf_lost(0);
        assert_eq!(lost(), 0);
        metrics.set_ringbuf_lost(7);
        assert_eq!(lost(), 7);
        metrics.set_ringbuf_lost(7);
        assert_eq!(lost(), 7);
        metrics.set_ringbuf_lost(10);
        assert_eq!(lost(), 10);
        // The kernel counter restarted: its whole value is new losses.
        metrics.set_ringbuf_lost(2);
        assert_eq!(lost(), 12);
        metrics.set_ringbuf_lost(5);
        assert_eq!(lost(), 15);
        assert!(encoded(&metrics).contains("kloak_ringbuf_lost_total 15\n"));
    }
}
