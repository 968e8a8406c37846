//! The watches every agent runs, merged into one stream of updates.

use std::pin::Pin;

use futures::stream::{select_all, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};

use crate::k8s;

/// One change seen by a watch; `scope` is the watch's namespace ("" for all).
pub enum Update {
    Source(Scope, watcher::Event<Secret>),
    Shadow(Scope, watcher::Event<Secret>),
    /// Boxed: a Pod is far larger than the other variants.
    Pod(Box<watcher::Event<Pod>>),
    /// The agent's own DaemonSet (uninstall is announced there).
    Installation(Box<watcher::Event<DaemonSet>>),
    /// A watch failed; it retries by itself with backoff.
    Error(&'static str, watcher::Error),
}

pub type Scope = String;

/// The namespaces secrets are watched in: one scope per namespace, or "" for all.
pub fn scopes(namespaces: &[String]) -> Vec<Scope> {
    if namespaces.is_empty() {
        vec![String::new()]
    } else {
        namespaces.to_vec()
    }
}

/// Labelled sources and managed shadows in `namespaces` (all when empty),
/// the kloak-enabled pods scheduled on `node`, and the agent's own DaemonSet
/// (`installation`: namespace and name) when known.
pub fn watch_all(
    client: &Client,
    namespaces: &[String],
    node: &str,
    installation: Option<(&str, &str)>,
) -> BoxStream<'static, Update> {
    let secret_apis = scopes(namespaces).into_iter().map(|scope| {
        let api: Api<Secret> = if scope.is_empty() {
            Api::all(client.clone())
        } else {
            Api::namespaced(client.clone(), &scope)
        };
        (scope, api)
    });
    let enabled = format!("{}={}", k8s::ENABLED_LABEL, k8s::TRUE);
    let managed = format!("{}={}", k8s::MANAGED_LABEL, k8s::TRUE);
    let mut streams: Vec<Pin<Box<dyn futures::Stream<Item = Update> + Send>>> = Vec::new();
    for (scope, api) in secret_apis {
        let sources = watcher(api.clone(), watcher::Config::default().labels(&enabled));
        let source_scope = scope.clone();
        streams.push(Box::pin(sources.map(move |r| match r {
            Ok(event) => Update::Source(source_scope.clone(), event),
            Err(err) => Update::Error("sources", err),
        })));
        let shadows = watcher(api, watcher::Config::default().labels(&managed));
        streams.push(Box::pin(shadows.map(move |r| match r {
            Ok(event) => Update::Shadow(scope.clone(), event),
            Err(err) => Update::Error("shadows", err),
        })));
    }
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default()
            .fields(&format!("spec.nodeName={node}"))
            .labels(&enabled),
    );
    streams.push(Box::pin(pods.map(|r| match r {
        Ok(event) => Update::Pod(Box::new(event)),
        Err(err) => Update::Error("pods", err),
    })));
    if let Some((namespace, name)) = installation {
        // By name: RBAC grants this one DaemonSet (resourceNames), which a
        // list or watch only matches with this field selector.
        let own = watcher(
            Api::<DaemonSet>::namespaced(client.clone(), namespace),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        );
        streams.push(Box::pin(own.map(|r| match r {
            Ok(event) => Update::Installation(Box::new(event)),
            Err(err) => Update::Error("daemonset", err),
        })));
    }
    select_all(streams).boxed()
}
