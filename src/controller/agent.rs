//! The node agent's state machine: watch events in, kernel map updates out.
//!
//! Every agent keeps the labelled sources (with their values), the shadows
//! and its node's pods; after each change it computes the desired kernel
//! state and applies only the difference. Nothing is applied before every
//! watch has listed once, so a restarted agent never removes a mapping the
//! previous one installed just because it has not been listed yet.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::Event as WatchEvent;
use kube::ResourceExt;
use tracing::{debug, trace, warn};
use zeroize::Zeroizing;

use crate::dataplane::loader::LoaderError;
use crate::dataplane::maps::{MapError, MapName, MapOp, RecordKey, Records};
use crate::dataplane::DataPlane;
use crate::k8s;
use crate::placeholder::{lookup_key, KEY_LEN};
use crate::secrets::shadow::{self, recorded};
use crate::secrets::store::{Desired, NodeStore, PodBinding, Shadow, Source, Unmapped};
use crate::secrets::SecretRef;

/// The maps the agent owns: adopted entries of these are diffed away when stale.
pub const OWNED_MAPS: &[MapName] = &[
    MapName::Cgroups,
    MapName::Secrets,
    MapName::Bindings,
    MapName::Names,
    MapName::Resolvers,
];

/// Where map updates go: the data plane, or a recorder in tests.
pub trait MapSink {
    fn apply(&self, ops: Vec<MapOp>) -> impl Future<Output = Result<(), LoaderError>> + Send;
}

impl MapSink for DataPlane {
    fn apply(&self, ops: Vec<MapOp>) -> impl Future<Output = Result<(), LoaderError>> + Send {
        DataPlane::apply(self, ops)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("computing map records: {0}")]
    Records(#[from] MapError),
    #[error("updating kernel maps: {0}")]
    Apply(#[from] LoaderError),
}

/// Which watch an event came from (each lists once before the first sync).
/// Secret watches are per scope: a namespace, or "" for all namespaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feed {
    Sources(String),
    Shadows(String),
    Pods,
}

impl Feed {
    /// Whether an object of `namespace` belongs to this feed's listing.
    fn covers(&self, namespace: &str) -> bool {
        match self {
            Self::Sources(scope) | Self::Shadows(scope) => scope.is_empty() || scope == namespace,
            Self::Pods => true,
        }
    }

    /// Every feed an agent watching these scopes waits for.
    pub fn all(scopes: &[String]) -> BTreeSet<Feed> {
        scopes
            .iter()
            .flat_map(|s| [Feed::Sources(s.clone()), Feed::Shadows(s.clone())])
            .chain([Feed::Pods])
            .collect()
    }
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map updates applied (0: nothing changed, or still waiting for the first listing).
    pub ops: usize,
    pub secrets_mapped: usize,
    pub secrets_any_host: usize,
    pub unmapped: Vec<Unmapped>,
}

pub struct Agent<S> {
    sink: S,
    store: NodeStore,
    /// Source Secrets as last seen (the leader plans shadows from them).
    sources: BTreeMap<SecretRef, Secret>,
    /// Shadows as last seen, keyed by their source.
    shadows: BTreeMap<SecretRef, Secret>,
    /// How many shadow placeholders use each lookup key.
    lookup_keys: BTreeMap<[u8; KEY_LEN], usize>,
    /// What the kernel maps hold, zero runs packed (a secret record is 8 KiB,
    /// mostly padding).
    applied: BTreeMap<RecordKey, Packed>,
    require_hosts: bool,
    grace_seconds: i64,
    expected: BTreeSet<Feed>,
    listed: BTreeSet<Feed>,
    relisting: BTreeMap<Feed, BTreeSet<String>>,
}

impl<S: MapSink> Agent<S> {
    /// `adopted`: what the pinned maps already hold (empty on a first start).
    pub fn new(
        sink: S,
        adopted: Records,
        feeds: BTreeSet<Feed>,
        require_hosts: bool,
        grace_seconds: i64,
    ) -> Self {
        Self {
            sink,
            store: NodeStore::default(),
            sources: BTreeMap::new(),
            shadows: BTreeMap::new(),
            lookup_keys: BTreeMap::new(),
            applied: adopted
                .iter()
                .map(|(key, value)| (key.clone(), pack(value)))
                .collect(),
            require_hosts,
            grace_seconds,
            expected: feeds,
            listed: BTreeSet::new(),
            relisting: BTreeMap::new(),
        }
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    pub fn store_mut(&mut self) -> &mut NodeStore {
        &mut self.store
    }

    /// True once every feed has listed and the maps were synced once.
    pub fn is_synced(&self) -> bool {
        self.expected.is_subset(&self.listed)
    }

    pub fn source(&self, secret: &SecretRef) -> Option<&Secret> {
        self.sources.get(secret)
    }

    pub fn shadow(&self, secret: &SecretRef) -> Option<&Secret> {
        self.shadows.get(secret)
    }

    /// Whether a shadow already uses a placeholder with this lookup key: the
    /// leader mints new placeholders outside that set.
    pub fn is_key_taken(&self, key: &[u8; KEY_LEN]) -> bool {
        self.lookup_keys.contains_key(key)
    }

    fn count_keys(&mut self, shadow_secret: &Secret, delta: isize) {
        for placeholder in recorded(shadow_secret).0.into_values() {
            let key = lookup_key(placeholder.as_bytes());
            let count = self.lookup_keys.entry(key).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.lookup_keys.remove(&key);
            }
        }
    }

    fn forget_shadow(&mut self, source: &SecretRef) {
        if let Some(old) = self.shadows.remove(source) {
            self.count_keys(&old, -1);
        }
        self.store.remove_shadow(source);
    }

    /// Every source or shadow this node knows of (the leader's full reconcile).
    pub fn known_secrets(&self) -> BTreeSet<SecretRef> {
        self.sources
            .keys()
            .chain(self.shadows.keys())
            .cloned()
            .collect()
    }

    /// A watch restarted: objects not listed again by `end_listing` are gone.
    pub fn begin_listing(&mut self, feed: Feed) {
        self.relisting.insert(feed, BTreeSet::new());
    }

    /// Records `key` as listed by every relisting feed of this kind covering `namespace`.
    fn note_listed(&mut self, is_kind: fn(&Feed) -> bool, namespace: &str, key: String) {
        for (feed, seen) in &mut self.relisting {
            if is_kind(feed) && feed.covers(namespace) {
                seen.insert(key.clone());
            }
        }
    }

    /// Ends a listing; returns the keys that vanished (pod uids for `Pods`).
    pub fn end_listing(&mut self, feed: Feed) -> Vec<String> {
        let seen = self.relisting.remove(&feed).unwrap_or_default();
        let unseen = |key: &String| !seen.contains(key);
        let vanished: Vec<String> = match &feed {
            Feed::Sources(_) => scoped_keys(&self.sources, &feed).filter(unseen).collect(),
            Feed::Shadows(_) => scoped_keys(&self.shadows, &feed).filter(unseen).collect(),
            Feed::Pods => self
                .store
                .pods()
                .map(|(uid, _)| uid.clone())
                .filter(unseen)
                .collect(),
        };
        for key in &vanished {
            match &feed {
                Feed::Sources(_) => {
                    if let Some(secret) = parse_ref(key) {
                        self.source_deleted(&secret);
                    }
                }
                Feed::Shadows(_) => {
                    if let Some(secret) = parse_ref(key) {
                        self.forget_shadow(&secret);
                    }
                }
                Feed::Pods => {
                    self.store.remove_pod(key);
                }
            }
        }
        self.listed.insert(feed);
        vanished
    }

    /// Applies one event of a Secret watch (`Feed::Sources` or `Feed::Shadows`);
    /// returns the sources whose shadow may need writing.
    pub fn secret_event(
        &mut self,
        feed: Feed,
        event: WatchEvent<Secret>,
        now: i64,
    ) -> Vec<SecretRef> {
        let sources = matches!(feed, Feed::Sources(_));
        match event {
            WatchEvent::Init => {
                self.begin_listing(feed);
                Vec::new()
            }
            WatchEvent::InitDone => self
                .end_listing(feed)
                .iter()
                .filter_map(|key| parse_ref(key))
                .collect(),
            WatchEvent::Apply(secret) | WatchEvent::InitApply(secret) if sources => {
                vec![self.source_applied(secret, now)]
            }
            WatchEvent::Apply(secret) | WatchEvent::InitApply(secret) => {
                self.shadow_applied(secret).into_iter().collect()
            }
            WatchEvent::Delete(secret) if sources => {
                let key = SecretRef::new(secret.namespace().unwrap_or_default(), secret.name_any());
                self.source_deleted(&key);
                vec![key]
            }
            WatchEvent::Delete(secret) => self.shadow_deleted(&secret).into_iter().collect(),
        }
    }

    /// A labelled source was added or changed. Bad input maps nothing.
    pub fn source_applied(&mut self, secret: Secret, now: i64) -> SecretRef {
        let key = SecretRef::new(secret.namespace().unwrap_or_default(), secret.name_any());
        self.note_listed(
            |f| matches!(f, Feed::Sources(_)),
            &key.namespace,
            key.to_string(),
        );
        if !k8s::is_enabled(secret.metadata.labels.as_ref()) {
            self.source_deleted(&key);
            return key;
        }
        let policy = shadow::policy_of(&secret, self.require_hosts);
        let values = shadow::values_of(&secret);
        match (policy, values) {
            (Ok(policy), Ok(values)) => {
                trace!(secret = %key, keys = values.len(), any_host = policy.allows_any_host(), "source stored");
                self.store.upsert_source(
                    key.clone(),
                    Source { policy, values },
                    now,
                    self.grace_seconds,
                );
            }
            _ => {
                debug!(secret = %key, "source refused: no mapping (the leader reports why)");
                self.store.remove_source(&key);
            }
        }
        self.sources.insert(key.clone(), secret);
        key
    }

    pub fn source_deleted(&mut self, secret: &SecretRef) {
        self.sources.remove(secret);
        self.store.remove_source(secret);
    }

    /// A managed shadow was added or changed; returns its source.
    pub fn shadow_applied(&mut self, shadow_secret: Secret) -> Option<SecretRef> {
        let namespace = shadow_secret.namespace().unwrap_or_default();
        let owner = shadow_secret.labels().get(k8s::OWNER_LABEL).cloned()?;
        let source = SecretRef::new(namespace, owner);
        if shadow_secret.name_any() != k8s::shadow_name(&source.name)
            || !shadow::is_shadow_of(&shadow_secret, &source.name)
        {
            warn!(shadow = %shadow_secret.name_any(), owner = %source.name, "managed label on a Secret that is not the owner's shadow: ignored");
            return None;
        }
        self.note_listed(
            |f| matches!(f, Feed::Shadows(_)),
            &source.namespace,
            source.to_string(),
        );
        let (placeholders, retired) = recorded(&shadow_secret);
        self.store.upsert_shadow(
            source.clone(),
            Shadow {
                placeholders,
                retired,
            },
        );
        self.count_keys(&shadow_secret, 1);
        if let Some(old) = self.shadows.insert(source.clone(), shadow_secret) {
            self.count_keys(&old, -1);
        }
        Some(source)
    }

    pub fn shadow_deleted(&mut self, shadow_secret: &Secret) -> Option<SecretRef> {
        let owner = shadow_secret.labels().get(k8s::OWNER_LABEL)?;
        let source = SecretRef::new(shadow_secret.namespace().unwrap_or_default(), owner.clone());
        self.forget_shadow(&source);
        Some(source)
    }

    pub fn pod_applied(&mut self, uid: String, binding: PodBinding) {
        self.note_listed(|f| *f == Feed::Pods, "", uid.clone());
        self.store.upsert_pod(uid, binding);
    }

    pub fn pod_deleted(&mut self, uid: &str) -> Option<PodBinding> {
        self.store.remove_pod(uid)
    }

    /// Applies the difference between the desired and the applied state.
    pub async fn sync(&mut self, now: i64) -> Result<SyncReport, SyncError> {
        if !self.is_synced() {
            return Ok(SyncReport::default());
        }
        self.store.expire(now);
        let Desired {
            state,
            unmapped,
            secrets_mapped,
            secrets_any_host,
        } = self.store.desired(now);
        // Records are compared one at a time with what the kernel holds and
        // only changed ones are copied: 10,000 secret records of 8 KiB never
        // sit in memory twice.
        let mut seen: BTreeSet<RecordKey> = BTreeSet::new();
        let mut ops = Vec::new();
        let mut changed: Vec<(RecordKey, Option<Packed>)> = Vec::new();
        state.visit_records(&mut |map, key, value| {
            let record_key = (map, key.to_vec());
            let packed = pack(value);
            if self.applied.get(&record_key) != Some(&packed) {
                changed.push((record_key.clone(), Some(packed)));
                ops.push(MapOp {
                    map,
                    key: key.to_vec(),
                    value: Some(Zeroizing::new(value.to_vec())),
                });
            }
            seen.insert(record_key);
        })?;
        for (map, key) in self.applied.keys() {
            if !seen.contains(&(*map, key.clone())) {
                changed.push(((*map, key.clone()), None));
                ops.push(MapOp {
                    map: *map,
                    key: key.clone(),
                    value: None,
                });
            }
        }
        let count = ops.len();
        if count > 0 {
            let result = self.sink.apply(ops).await;
            for (key, value) in changed {
                match (&result, value) {
                    (Ok(()), Some(value)) => {
                        self.applied.insert(key, value);
                    }
                    (Ok(()), None) => {
                        self.applied.remove(&key);
                    }
                    // Part may have landed: an empty pack matches no record,
                    // so the next sync rewrites or deletes each of these.
                    (Err(_), _) => {
                        self.applied.insert(key, Packed::default());
                    }
                }
            }
            result?;
        }
        Ok(SyncReport {
            ops: count,
            secrets_mapped,
            secrets_any_host,
            unmapped,
        })
    }
}

/// A record with its zero runs packed; wiped on drop (it holds real values).
type Packed = Zeroizing<Vec<u8>>;

/// Packs a record as (literal length, zero-run length, literal bytes) chunks,
/// lengths as u16: an unambiguous encoding, so equal packs mean equal records.
fn pack(value: &[u8]) -> Packed {
    let mut packed = Zeroizing::new(Vec::with_capacity(64));
    let mut rest = value;
    while !rest.is_empty() {
        let literal = rest
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rest.len())
            .min(u16::MAX as usize);
        let after = &rest[literal..];
        let zeros = after
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(after.len())
            .min(u16::MAX as usize);
        packed.extend_from_slice(&(literal as u16).to_le_bytes());
        packed.extend_from_slice(&(zeros as u16).to_le_bytes());
        packed.extend_from_slice(&rest[..literal]);
        rest = &rest[literal + zeros..];
    }
    packed
}

fn scoped_keys<'a>(
    secrets: &'a BTreeMap<SecretRef, Secret>,
    feed: &'a Feed,
) -> impl Iterator<Item = String> + 'a {
    secrets
        .keys()
        .filter(|secret| feed.covers(&secret.namespace))
        .map(ToString::to_string)
}

fn parse_ref(text: &str) -> Option<SecretRef> {
    let (namespace, name) = text.split_once('/')?;
    Some(SecretRef::new(namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::shadow::tests::{source, REAL};
    use std::sync::{Arc, Mutex};

    /// One batch of map updates: which map, and upsert (true) or delete.
    type Batch = Vec<(MapName, bool)>;

    /// Records every batch of map updates.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Batch>>>);

    impl MapSink for Recorder {
        fn apply(&self, ops: Vec<MapOp>) -> impl Future<Output = Result<(), LoaderError>> + Send {
            let batch = ops.iter().map(|op| (op.map, op.value.is_some())).collect();
            if let Ok(mut batches) = self.0.lock() {
                batches.push(batch);
            }
            async { Ok(()) }
        }
    }

    impl Recorder {
        fn batches(&self) -> Vec<Batch> {
            self.0.lock().map(|b| b.clone()).unwrap_or_default()
        }
    }

    fn labelled_source() -> Secret {
        source(
            &[("API_KEY", REAL)],
            &[(k8s::HOSTS_ANNOTATION, "api.openai.com")],
        )
    }

    fn shadow_of(src: &Secret) -> Secret {
        let plan = shadow::plan(src, None, false, 0, 600, &mut rand::rngs::OsRng).expect("plan");
        shadow::shadow_secret(src, &plan)
    }

    fn listed_agent() -> (Agent<Recorder>, Recorder) {
        let sink = Recorder::default();
        let mut agent = Agent::new(sink.clone(), Records::new(), feeds(), false, 600);
        for feed in feeds() {
            agent.begin_listing(feed.clone());
            agent.end_listing(feed);
        }
        (agent, sink)
    }

    fn feeds() -> BTreeSet<Feed> {
        Feed::all(&[String::new()])
    }

    fn all() -> Feed {
        Feed::Sources(String::new())
    }

    fn shadows() -> Feed {
        Feed::Shadows(String::new())
    }

    fn binding(cgroup: u64) -> PodBinding {
        PodBinding {
            namespace: "agents".into(),
            secrets: ["openai".to_owned()].into(),
            cgroups: [cgroup].into(),
        }
    }

    #[tokio::test]
    async fn nothing_is_applied_until_every_feed_has_listed() {
        let sink = Recorder::default();
        let mut agent = Agent::new(sink.clone(), Records::new(), feeds(), false, 600);
        let src = labelled_source();
        agent.begin_listing(all());
        agent.source_applied(src.clone(), 0);
        agent.end_listing(all());
        agent.begin_listing(shadows());
        agent.shadow_applied(shadow_of(&src));
        agent.end_listing(shadows());
        assert_eq!(agent.sync(0).await.expect("sync").ops, 0);
        assert!(sink.batches().is_empty());
        agent.begin_listing(Feed::Pods);
        agent.end_listing(Feed::Pods);
        assert!(agent.is_synced());
        let report = agent.sync(0).await.expect("sync");
        assert!(report.ops > 0);
        assert_eq!(report.secrets_mapped, 1);
    }

    #[tokio::test]
    async fn a_secret_change_reaches_the_maps_and_an_unchanged_resync_writes_nothing() {
        let (mut agent, sink) = listed_agent();
        let src = labelled_source();
        agent.source_applied(src.clone(), 0);
        agent.shadow_applied(shadow_of(&src));
        agent.pod_applied("uid-1".into(), binding(42));
        let first = agent.sync(0).await.expect("sync");
        let maps: BTreeSet<MapName> = sink.batches()[0].iter().map(|(m, _)| *m).collect();
        assert!(
            maps.contains(&MapName::Secrets)
                && maps.contains(&MapName::Bindings)
                && maps.contains(&MapName::Cgroups)
        );
        assert!(first.ops >= 3);
        assert_eq!(
            agent.sync(1).await.expect("sync").ops,
            0,
            "resync without change"
        );
        agent.pod_deleted("uid-1");
        let removed = agent.sync(2).await.expect("sync");
        assert!(removed.ops >= 2, "binding and cgroup removed");
        assert!(sink.batches()[1].iter().all(|(_, upsert)| !upsert));
    }

    #[tokio::test]
    async fn removing_the_label_removes_the_mapping() {
        let (mut agent, sink) = listed_agent();
        let src = labelled_source();
        agent.source_applied(src.clone(), 0);
        agent.shadow_applied(shadow_of(&src));
        agent.sync(0).await.expect("sync");
        let mut unlabelled = src.clone();
        unlabelled.metadata.labels = None;
        agent.source_applied(unlabelled, 1);
        let report = agent.sync(1).await.expect("sync");
        assert_eq!(report.secrets_mapped, 0);
        assert!(sink.batches()[1].contains(&(MapName::Secrets, false)));
    }

    #[tokio::test]
    async fn a_relist_drops_what_vanished_while_the_watch_was_down() {
        let (mut agent, _) = listed_agent();
        let src = labelled_source();
        agent.source_applied(src.clone(), 0);
        agent.shadow_applied(shadow_of(&src));
        agent.pod_applied("uid-1".into(), binding(42));
        agent.sync(0).await.expect("sync");
        agent.begin_listing(Feed::Pods);
        assert_eq!(agent.end_listing(Feed::Pods), vec!["uid-1".to_owned()]);
        agent.begin_listing(all());
        agent.end_listing(all());
        assert_eq!(agent.sync(1).await.expect("sync").secrets_mapped, 0);
    }

    #[tokio::test]
    async fn adopted_entries_that_are_still_wanted_are_not_rewritten() {
        // A restart: the new agent starts from what the pinned maps hold.
        let (mut before, _) = listed_agent();
        let src = labelled_source();
        let shadow_secret = shadow_of(&src);
        before.source_applied(src.clone(), 0);
        before.shadow_applied(shadow_secret.clone());
        before.pod_applied("uid-1".into(), binding(42));
        before.sync(0).await.expect("sync");
        let pinned = before.store.desired(0).state.records().expect("records");

        let sink = Recorder::default();
        let mut after = Agent::new(sink.clone(), pinned, feeds(), false, 600);
        for feed in feeds() {
            after.begin_listing(feed);
        }
        after.source_applied(src, 5);
        after.shadow_applied(shadow_secret);
        after.pod_applied("uid-1".into(), binding(42));
        for feed in feeds() {
            after.end_listing(feed);
        }
        assert_eq!(after.sync(5).await.expect("sync").ops, 0);
        assert!(sink.batches().is_empty(), "no delete-then-add window");
    }

    #[tokio::test]
    async fn a_namespace_scoped_relist_only_drops_objects_of_its_namespace() {
        let scopes = ["agents".to_owned(), "other".to_owned()];
        let sink = Recorder::default();
        let mut agent = Agent::new(sink, Records::new(), Feed::all(&scopes), false, 600);
        let src = labelled_source();
        let agents = Feed::Sources("agents".into());
        let other = Feed::Sources("other".into());
        agent.begin_listing(agents.clone());
        agent.begin_listing(other.clone());
        agent.source_applied(src, 0);
        assert!(agent.end_listing(agents.clone()).is_empty());
        assert!(
            agent.end_listing(other).is_empty(),
            "agents/openai is not other's to drop"
        );
        assert!(!agent.is_synced(), "shadows and pods have not listed");
        agent.begin_listing(agents.clone());
        assert_eq!(agent.end_listing(agents), vec!["agents/openai".to_owned()]);
    }

    #[test]
    fn packing_is_unambiguous() {
        let records: [&[u8]; 7] = [b"", b"\0", b"\0\0", b"a", b"a\0", b"\0a", b"a\0\0b\0"];
        for a in records {
            for b in records {
                assert_eq!(pack(a) == pack(b), a == b, "{a:?} vs {b:?}");
            }
        }
        let secret_like = [vec![7u8; 20], vec![0; 4096], vec![9; 30], vec![0; 4066]].concat();
        assert!(pack(&secret_like).len() < 80, "padding packs away");
        let long_literal = vec![1u8; 70_000];
        assert_ne!(pack(&long_literal), pack(&long_literal[..69_999]));
    }

    #[tokio::test]
    async fn lookup_keys_of_shadows_are_counted_and_forgotten() {
        let (mut agent, _) = listed_agent();
        let src = labelled_source();
        let shadow_secret = shadow_of(&src);
        let (placeholders, _) = recorded(&shadow_secret);
        let key = lookup_key(placeholders["API_KEY"].as_bytes());
        assert!(!agent.is_key_taken(&key));
        agent.shadow_applied(shadow_secret.clone());
        agent.shadow_applied(shadow_secret.clone());
        assert!(agent.is_key_taken(&key), "re-applying counts once");
        agent.shadow_deleted(&shadow_secret);
        assert!(!agent.is_key_taken(&key));
    }

    #[tokio::test]
    async fn a_shadow_whose_name_does_not_match_its_owner_is_ignored() {
        let (mut agent, _) = listed_agent();
        let src = labelled_source();
        let mut forged = shadow_of(&src);
        forged.metadata.name = Some("something-else".into());
        assert_eq!(agent.shadow_applied(forged), None);
    }
}
