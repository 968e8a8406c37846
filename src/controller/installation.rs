//! Uninstall, told apart from a restart.
//!
//! An agent that stops keeps its pinned maps and probes, so the next agent
//! adopts them and rewrites never pause. When the chart is uninstalled there
//! is no next agent: the pins must go, and so must the shadow Secrets. The
//! agent learns which case it is in from its own DaemonSet: `kloak uninstall`
//! (the chart's pre-delete hook) annotates it with [`UNINSTALL_ANNOTATION`]
//! before Helm deletes anything, while RBAC still lets the agents act; a
//! DaemonSet being deleted (or gone) means the same. The leader removes every
//! shadow and answers with [`SHADOWS_REMOVED_ANNOTATION`], which the hook
//! waits for.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::Api;
use serde_json::json;

use crate::k8s;

/// Set on the agent's DaemonSet by `kloak uninstall`: the agents are going away for good.
pub const UNINSTALL_ANNOTATION: &str = "getkloak.io/uninstall";
/// Set by the leader once every shadow Secret is deleted (the value counts them).
pub const SHADOWS_REMOVED_ANNOTATION: &str = "getkloak.io/shadows-removed";

/// Whether this watch event of the agent's own DaemonSet means "uninstalled".
pub fn uninstall_seen(event: &Event<DaemonSet>) -> bool {
    match event {
        Event::Apply(ds) | Event::InitApply(ds) => uninstall_requested(ds),
        Event::Delete(_) => true,
        Event::Init | Event::InitDone => false,
    }
}

/// Annotated by the hook, or being deleted.
pub fn uninstall_requested(ds: &DaemonSet) -> bool {
    ds.metadata.deletion_timestamp.is_some()
        || ds
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(UNINSTALL_ANNOTATION))
            .is_some_and(|v| v == k8s::TRUE)
}

/// The agent's DaemonSet: where uninstall is announced and answered.
#[derive(Clone)]
pub struct Installation {
    pub api: Api<DaemonSet>,
    pub name: String,
}

impl Installation {
    /// Tells the waiting hook that `count` shadows were deleted and none is left.
    pub async fn shadows_removed(&self, count: usize) -> Result<(), kube::Error> {
        let patch =
            json!({"metadata": {"annotations": {SHADOWS_REMOVED_ANNOTATION: count.to_string()}}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    fn daemonset(annotations: &[(&str, &str)], deleting: bool) -> DaemonSet {
        let mut ds = DaemonSet::default();
        ds.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        if deleting {
            ds.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        ds
    }

    #[test]
    fn a_plain_daemonset_is_a_restart() {
        assert!(!uninstall_seen(&Event::Apply(daemonset(&[], false))));
        assert!(!uninstall_seen(&Event::InitDone));
        // Only "true" counts: a typo must not wipe the pins of a running install.
        let other = daemonset(&[(UNINSTALL_ANNOTATION, "yes")], false);
        assert!(!uninstall_seen(&Event::Apply(other)));
    }

    #[test]
    fn annotated_deleting_or_deleted_is_an_uninstall() {
        let annotated = daemonset(&[(UNINSTALL_ANNOTATION, "true")], false);
        assert!(uninstall_seen(&Event::InitApply(annotated)));
        assert!(uninstall_seen(&Event::Apply(daemonset(&[], true))));
        assert!(uninstall_seen(&Event::Delete(daemonset(&[], false))));
    }
}
