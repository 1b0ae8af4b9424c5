//! Which namespaces fedid watches: every namespace (one cluster-wide watch per kind), or only
//! those given with `--watch-namespaces` (one watch per namespace and kind, merged into one
//! cache), so that fedid needs rights in those namespaces only.
//!
//! A reflector's cache takes one watch's events: an `InitDone` replaces the whole cache with
//! that watch's list. Several watches merged as they are would let one namespace's relist wipe
//! every other namespace's objects, so [`MergedLists`] turns them into the events of one
//! watch: one initial list over all of them, and afterwards each watch's relist as changes
//! (its objects applied, and those it no longer lists deleted).

use std::collections::{HashMap, HashSet};

use futures::{
    Stream, StreamExt,
    stream::{self, BoxStream},
};
use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{ConfigMap, Namespace, Pod, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    api::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use serde::de::DeserializeOwned;

use super::undecodable::{Guarded, Undecodable};

/// The namespaces fedid watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace.
    Cluster,
    /// Only these (sorted, without repeats, never empty).
    Namespaces(Vec<String>),
}

impl WatchScope {
    /// The scope `--watch-namespaces` gives: every namespace when none is named.
    pub fn from_names(names: &[String]) -> Self {
        let mut names: Vec<String> = names.to_vec();
        names.sort();
        names.dedup();
        if names.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(names)
        }
    }

    /// Whether objects in `namespace` are watched.
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            Self::Cluster => true,
            Self::Namespaces(names) => names.iter().any(|name| name == namespace),
        }
    }

    /// How the scope reads in logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Cluster => "every namespace".to_owned(),
            Self::Namespaces(names) => format!("namespaces {}", names.join(", ")),
        }
    }

    /// The watch of namespaced kind `K` (filtered by `config`) over this scope, with the
    /// default backoff, as the events of a single watch.
    pub fn watch<K>(
        &self,
        client: &Client,
        config: watcher::Config,
    ) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
    where
        K: Watched + Resource<Scope = NamespaceResourceScope>,
    {
        self.watch_with(
            || (Api::all(client.clone()), config.clone()),
            |namespace| (Api::namespaced(client.clone(), namespace), config.clone()),
        )
    }

    /// The watch of the Namespaces themselves (metadata only): all of them, or each watched one
    /// by a `metadata.name` field selector, which RBAC can authorize by resource name.
    pub fn watch_namespaces(
        &self,
        client: &Client,
    ) -> BoxStream<'static, Result<Event<PartialObjectMeta<Namespace>>, watcher::Error>> {
        let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        self.watch_with(
            || (api.clone(), watcher::Config::default()),
            |namespace| {
                let by_name = format!("metadata.name={namespace}");
                (api.clone(), watcher::Config::default().fields(&by_name))
            },
        )
    }

    /// One watch from `every` for the whole cluster, or one from `each` per watched namespace,
    /// merged.
    fn watch_with<K>(
        &self,
        every: impl FnOnce() -> (Api<K>, watcher::Config),
        each: impl Fn(&str) -> (Api<K>, watcher::Config),
    ) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
    where
        K: Watched,
    {
        match self {
            Self::Cluster => {
                let (api, config) = every();
                watcher(api, config).default_backoff().boxed()
            }
            Self::Namespaces(names) => merge_watches(
                names
                    .iter()
                    .map(|namespace| {
                        let (api, config) = each(namespace);
                        watcher(api, config).default_backoff()
                    })
                    .collect(),
            ),
        }
    }
}

/// What a kind needs to be watched over a scope.
pub trait Watched:
    Resource<DynamicType = ()> + Tombstone + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Tombstone
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static
{
}

/// A stand-in object that carries only the metadata of one that is gone: what a merged watch
/// passes in a `Delete` for an object a relist no longer holds.
pub trait Tombstone {
    /// An object of this kind with only `metadata`.
    fn tombstone(metadata: ObjectMeta) -> Self;
}

macro_rules! default_tombstone {
    ($($kind:ty),*) => {$(
        impl Tombstone for $kind {
            fn tombstone(metadata: ObjectMeta) -> Self {
                Self { metadata, ..Self::default() }
            }
        }
    )*};
}

default_tombstone!(Secret, ConfigMap, Pod, PartialObjectMeta<Namespace>);

impl<K> Tombstone for Guarded<K> {
    /// An undecodable stand-in: the guard turns its `Delete` into one of the cached object.
    fn tombstone(metadata: ObjectMeta) -> Self {
        Self(Err(Undecodable {
            metadata,
            problem: String::new(),
        }))
    }
}

/// `watches` merged into the events of one watch (a single watch passes unchanged).
pub fn merge_watches<K, S>(watches: Vec<S>) -> BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: Resource + Tombstone + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    if watches.len() == 1 {
        return watches
            .into_iter()
            .next()
            .map_or_else(|| stream::empty().boxed(), |watch| watch.boxed());
    }
    let mut lists = MergedLists::new(watches.len());
    stream::select_all(
        watches
            .into_iter()
            .enumerate()
            .map(|(source, watch)| watch.map(move |event| (source, event)).boxed()),
    )
    .flat_map(move |(source, event)| {
        stream::iter(match event {
            Ok(event) => lists.on_event(source, event).into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        })
    })
    .boxed()
}

/// An object's key in a cache: namespace and name.
type Key = (Option<String>, String);

/// What one of the merged watches holds.
#[derive(Default)]
struct Source {
    /// The objects it holds now, with their UIDs.
    current: HashMap<Key, Option<String>>,
    /// While it lists, the keys listed so far.
    listing: Option<HashSet<Key>>,
    /// Whether its first list has ended.
    listed: bool,
}

/// Turns the events of several watches, each over its own objects, into the events of one:
/// an `Init` when the first one starts, one `InitDone` once every one has listed, and each
/// later relist as `Apply`s and `Delete`s. Holds only the keys of the objects (and their UIDs),
/// never the objects.
pub struct MergedLists {
    sources: Vec<Source>,
    /// Whether the single `Init` has been passed on.
    started: bool,
    /// Whether the single `InitDone` has been passed on.
    listed: bool,
    /// Until then, every key passed to the cache's list buffer (one that is gone by the end is
    /// deleted right after the `InitDone`, since a buffer cannot drop a key).
    buffered: HashMap<Key, Option<String>>,
}

impl MergedLists {
    /// For `sources` watches.
    pub fn new(sources: usize) -> Self {
        Self {
            sources: (0..sources).map(|_| Source::default()).collect(),
            started: false,
            listed: false,
            buffered: HashMap::new(),
        }
    }

    /// The events the merged watch passes on for `event` of watch number `source`.
    pub fn on_event<K>(&mut self, source: usize, event: Event<K>) -> Vec<Event<K>>
    where
        K: Resource + Tombstone,
    {
        let Some(watch) = self.sources.get_mut(source) else {
            return Vec::new();
        };
        match event {
            Event::Init => {
                watch.listing = Some(HashSet::new());
                if self.started {
                    Vec::new()
                } else {
                    self.started = true;
                    vec![Event::Init]
                }
            }
            Event::InitApply(object) => {
                let key = key_of(&object);
                if let Some(listing) = watch.listing.as_mut() {
                    listing.insert(key.clone());
                }
                watch.current.insert(key.clone(), object.meta().uid.clone());
                self.applied(key, object)
            }
            Event::Apply(object) => {
                let key = key_of(&object);
                watch.current.insert(key.clone(), object.meta().uid.clone());
                self.applied(key, object)
            }
            Event::Delete(object) => {
                watch.current.remove(&key_of(&object));
                if self.listed {
                    vec![Event::Delete(object)]
                } else {
                    // Still in the cache's list buffer: dropped at the end of the list.
                    Vec::new()
                }
            }
            Event::InitDone => {
                let listed = watch.listing.take().unwrap_or_default();
                let gone: Vec<(Key, Option<String>)> = watch
                    .current
                    .iter()
                    .filter(|(key, _)| !listed.contains(*key))
                    .map(|(key, uid)| (key.clone(), uid.clone()))
                    .collect();
                for (key, _) in &gone {
                    watch.current.remove(key);
                }
                watch.listed = true;
                if self.listed {
                    return gone.into_iter().map(tombstone).collect();
                }
                if !self.sources.iter().all(|source| source.listed) {
                    return Vec::new();
                }
                self.listed = true;
                let held: HashSet<&Key> = self
                    .sources
                    .iter()
                    .flat_map(|source| source.current.keys())
                    .collect();
                let stale: Vec<(Key, Option<String>)> = std::mem::take(&mut self.buffered)
                    .into_iter()
                    .filter(|(key, _)| !held.contains(key))
                    .collect();
                std::iter::once(Event::InitDone)
                    .chain(stale.into_iter().map(tombstone))
                    .collect()
            }
        }
    }

    fn applied<K>(&mut self, key: Key, object: K) -> Vec<Event<K>>
    where
        K: Resource,
    {
        if self.listed {
            vec![Event::Apply(object)]
        } else {
            self.buffered.insert(key, object.meta().uid.clone());
            vec![Event::InitApply(object)]
        }
    }
}

fn key_of<K: Resource>(object: &K) -> Key {
    let metadata = object.meta();
    (
        metadata.namespace.clone(),
        metadata.name.clone().unwrap_or_default(),
    )
}

fn tombstone<K: Tombstone>(((namespace, name), uid): (Key, Option<String>)) -> Event<K> {
    Event::Delete(K::tombstone(ObjectMeta {
        name: Some(name),
        namespace,
        uid,
        ..ObjectMeta::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::{self, ObjectRef, Store};

    fn secret(namespace: &str, name: &str) -> Secret {
        Secret::tombstone(ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{namespace}-{name}")),
            ..ObjectMeta::default()
        })
    }

    /// Two watches (team-a, team-b) feeding one cache through the merge.
    struct Merged {
        lists: MergedLists,
        writer: reflector::store::Writer<Secret>,
        cache: Store<Secret>,
        passed: Vec<String>,
    }

    impl Merged {
        fn new() -> Self {
            let (cache, writer) = reflector::store::<Secret>();
            Self {
                lists: MergedLists::new(2),
                writer,
                cache,
                passed: Vec::new(),
            }
        }

        fn send(&mut self, source: usize, event: Event<Secret>) {
            for event in self.lists.on_event(source, event) {
                self.passed.push(match &event {
                    Event::Init => "Init".to_owned(),
                    Event::InitDone => "InitDone".to_owned(),
                    Event::InitApply(secret) => format!("InitApply {}", name(secret)),
                    Event::Apply(secret) => format!("Apply {}", name(secret)),
                    Event::Delete(secret) => format!("Delete {}", name(secret)),
                });
                self.writer.apply_watcher_event(&event);
            }
        }

        fn list(&mut self, source: usize, namespace: &str, names: &[&str]) {
            self.send(source, Event::Init);
            for name in names {
                self.send(source, Event::InitApply(secret(namespace, name)));
            }
            self.send(source, Event::InitDone);
        }

        fn cached(&self) -> Vec<String> {
            let mut names: Vec<String> = self
                .cache
                .state()
                .iter()
                .map(|secret| name(secret))
                .collect();
            names.sort();
            names
        }

        fn ready(&self) -> bool {
            crate::runtime::context::is_listed(&self.cache)
        }
    }

    fn name(secret: &Secret) -> String {
        format!(
            "{}/{}",
            secret.metadata.namespace.as_deref().unwrap_or(""),
            secret.metadata.name.as_deref().unwrap_or("")
        )
    }

    #[test]
    fn the_cache_is_ready_only_once_every_namespace_is_listed() {
        let mut merged = Merged::new();
        merged.list(0, "team-a", &["one"]);
        assert!(!merged.ready(), "team-b has not listed yet");
        assert!(merged.cached().is_empty(), "the list is still buffered");
        merged.list(1, "team-b", &["two"]);
        assert!(merged.ready());
        assert_eq!(merged.cached(), ["team-a/one", "team-b/two"]);
        assert_eq!(
            merged.passed,
            [
                "Init",
                "InitApply team-a/one",
                "InitApply team-b/two",
                "InitDone"
            ],
            "one list, as a single watch gives"
        );
    }

    #[test]
    fn one_namespaces_relist_keeps_the_others_objects_and_drops_its_own_gone_ones() {
        let mut merged = Merged::new();
        merged.list(0, "team-a", &["one", "gone"]);
        merged.list(1, "team-b", &["two"]);
        merged.passed.clear();
        // team-a's watch reconnects after "gone" was deleted and "new" created meanwhile.
        merged.list(0, "team-a", &["one", "new"]);
        assert_eq!(merged.cached(), ["team-a/new", "team-a/one", "team-b/two"]);
        assert_eq!(
            merged.passed,
            ["Apply team-a/one", "Apply team-a/new", "Delete team-a/gone"]
        );
    }

    #[test]
    fn changes_while_the_others_still_list_are_not_lost() {
        let mut merged = Merged::new();
        merged.list(0, "team-a", &["one", "deleted"]);
        // Live events of team-a while team-b is still listing: they must land in the list the
        // cache is buffering, not in the cache the list is about to replace.
        merged.send(0, Event::Apply(secret("team-a", "created")));
        merged.send(0, Event::Delete(secret("team-a", "deleted")));
        merged.send(1, Event::Init);
        merged.send(1, Event::InitApply(secret("team-b", "two")));
        // team-b's list breaks off and starts over without "stale".
        merged.send(1, Event::InitApply(secret("team-b", "stale")));
        merged.list(1, "team-b", &["two"]);
        assert_eq!(
            merged.cached(),
            ["team-a/created", "team-a/one", "team-b/two"]
        );
        // Recreated after a delete during the list: kept.
        merged.send(0, Event::Apply(secret("team-a", "deleted")));
        assert_eq!(
            merged.cached(),
            [
                "team-a/created",
                "team-a/deleted",
                "team-a/one",
                "team-b/two"
            ]
        );
    }

    #[test]
    fn a_delete_passes_the_object_and_a_relist_passes_a_tombstone_with_its_uid() {
        let mut lists = MergedLists::new(2);
        let _ = lists.on_event(0, Event::<Secret>::Init);
        let _ = lists.on_event(0, Event::InitApply(secret("team-a", "one")));
        let _ = lists.on_event(0, Event::<Secret>::InitDone);
        let _ = lists.on_event(1, Event::<Secret>::Init);
        let _ = lists.on_event(1, Event::<Secret>::InitDone);
        let _ = lists.on_event(0, Event::<Secret>::Init);
        let events = lists.on_event(0, Event::<Secret>::InitDone);
        let [Event::Delete(tombstone)] = events.as_slice() else {
            panic!("one delete: {events:?}");
        };
        assert_eq!(tombstone.metadata.uid.as_deref(), Some("uid-team-a-one"));
        assert_eq!(
            ObjectRef::from_obj(tombstone),
            ObjectRef::new("one").within("team-a")
        );
    }

    #[test]
    fn a_single_watch_and_unknown_sources_are_harmless() {
        let mut lists = MergedLists::new(1);
        assert!(
            lists
                .on_event(3, Event::InitApply(secret("team-a", "one")))
                .is_empty()
        );
        let events = lists.on_event(0, Event::<Secret>::Init);
        assert!(matches!(events.as_slice(), [Event::Init]));
    }

    #[test]
    fn the_scope_names_its_namespaces_once_and_in_order() {
        assert_eq!(WatchScope::from_names(&[]), WatchScope::Cluster);
        let scope = WatchScope::from_names(&["team-b".into(), "team-a".into(), "team-b".into()]);
        assert_eq!(
            scope,
            WatchScope::Namespaces(vec!["team-a".into(), "team-b".into()])
        );
        assert!(scope.includes("team-a") && !scope.includes("team-c"));
        assert!(WatchScope::Cluster.includes("anything"));
        assert_eq!(scope.describe(), "namespaces team-a, team-b");
    }

    #[test]
    fn an_identity_gone_in_a_relist_leaves_the_cache_through_the_guard() {
        use crate::runtime::undecodable::{UndecodableObjects, admit};
        use fedid_core::crd::FederatedIdentity;
        let identity = |namespace: &str, name: &str| -> Guarded<FederatedIdentity> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
                "metadata": {"name": name, "namespace": namespace, "uid": name},
                "spec": {"audiences": ["sts.example.com"]},
            }))
            .expect("an identity")
        };
        let (cache, mut writer) = reflector::store::<FederatedIdentity>();
        let guard = UndecodableObjects::new(cache.clone(), None);
        let mut lists = MergedLists::new(2);
        let mut send = |source: usize, event: Event<Guarded<FederatedIdentity>>| {
            for event in lists.on_event(source, event) {
                if let Some(Ok(event)) = admit(&guard, Ok(event)) {
                    writer.apply_watcher_event(&event);
                }
            }
        };
        send(0, Event::Init);
        send(0, Event::InitApply(identity("team-a", "kept")));
        send(0, Event::InitApply(identity("team-a", "deleted")));
        send(0, Event::InitDone);
        send(1, Event::Init);
        send(1, Event::InitApply(identity("team-b", "other")));
        send(1, Event::InitDone);
        assert_eq!(cache.state().len(), 3);
        send(0, Event::Init);
        send(0, Event::InitApply(identity("team-a", "kept")));
        send(0, Event::InitDone);
        let mut names: Vec<String> = cache
            .state()
            .iter()
            .map(|identity| identity.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        assert_eq!(names, ["kept", "other"]);
    }

    #[test]
    fn a_guarded_tombstone_is_undecodable_with_the_metadata() {
        use fedid_core::crd::FederatedIdentity;
        let tombstone = Guarded::<FederatedIdentity>::tombstone(ObjectMeta {
            name: Some("one".into()),
            uid: Some("uid".into()),
            ..ObjectMeta::default()
        });
        let Err(undecodable) = tombstone.0 else {
            panic!("a tombstone holds no decoded object");
        };
        assert_eq!(undecodable.metadata.uid.as_deref(), Some("uid"));
    }
}
