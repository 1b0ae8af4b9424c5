//! Objects the apiserver holds but fedid cannot decode: one written while the CRD had an older,
//! looser schema, say. Decoding a listed page as one batch would fail on such an object at every
//! retry and leave the whole cache, and so every other object, unserved. Watches decode each
//! object on its own instead ([`Guarded`]); [`UndecodableObjects`] keeps the undecodable ones
//! out of the cache and reports each once per resourceVersion.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    marker::PhantomData,
    sync::{Mutex, MutexGuard, PoisonError},
};

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Resource,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher::{self, Event},
    },
};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use tokio::sync::mpsc;
use tracing::warn;

/// An object as a watch delivers it: decoded, or the metadata of one that does not decode.
#[derive(Clone, Debug)]
pub struct Guarded<K>(pub Result<K, Undecodable>);

/// A stored object that does not decode as its kind.
#[derive(Clone, Debug)]
pub struct Undecodable {
    /// Its metadata (which always decodes, or the apiserver could not have stored it).
    pub metadata: ObjectMeta,
    /// Where and why decoding failed, e.g. `spec.lifetime: duration "forever" contains 'f'...`.
    pub problem: String,
}

impl<'de, K> Deserialize<'de> for Guarded<K>
where
    K: DeserializeOwned + Resource,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) => Ok(Self(Ok(object))),
            Err(error) => {
                let metadata = value
                    .get("metadata")
                    .and_then(|metadata| ObjectMeta::deserialize(metadata).ok())
                    .unwrap_or_default();
                Ok(Self(Err(Undecodable {
                    metadata,
                    problem: format!("{}: {}", error.path(), error.inner()),
                })))
            }
        }
    }
}

impl<K: Resource> Resource for Guarded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0
            .as_ref()
            .map_or_else(|undecodable| &undecodable.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|undecodable| &mut undecodable.metadata, K::meta_mut)
    }
}

/// A report of one undecodable object: the object, and why it does not decode.
pub type Report = (ObjectReference, String);

/// Where a watch reports its undecodable objects: the count of those it currently holds, and
/// a channel to the task that publishes a Warning Event for each.
#[derive(Clone)]
pub struct Reporting {
    /// `fedid_invalid_objects{kind}` of this watch's kind.
    pub count: Gauge,
    /// The Event publisher; a full channel drops a report, which the next version retries.
    pub events: mpsc::Sender<Report>,
}

/// What one watch knows of its undecodable objects.
#[derive(Default)]
struct Known {
    /// UIDs of the undecodable objects the cache currently leaves out.
    current: HashSet<String>,
    /// Those seen since the watch restarted its list (they replace `current` when it ends).
    relisted: HashSet<String>,
    /// The resourceVersion last reported, per UID.
    reported: HashMap<String, String>,
}

/// Keeps the undecodable objects of one watch out of its cache (store `cache`): an object that
/// stops decoding is removed from the cache, not left to be served as it was. Each is logged
/// and, with `reporting`, counted and reported with one Warning Event per resourceVersion.
pub struct UndecodableObjects<K: Resource<DynamicType = ()> + Clone + 'static> {
    cache: Store<K>,
    reporting: Option<Reporting>,
    known: Mutex<Known>,
    kind: PhantomData<K>,
}

impl<K> UndecodableObjects<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// For the watch that fills `cache`, reporting to `reporting` when given.
    pub fn new(cache: Store<K>, reporting: Option<Reporting>) -> Self {
        Self {
            cache,
            reporting,
            known: Mutex::new(Known::default()),
            kind: PhantomData,
        }
    }

    /// The event to pass to the cache for the watch event `event`, if any.
    pub fn admit(&self, event: Event<Guarded<K>>) -> Option<Event<K>> {
        match event {
            Event::Init => {
                self.lock().relisted.clear();
                Some(Event::Init)
            }
            Event::InitDone => {
                let count = {
                    let mut known = self.lock();
                    known.current = std::mem::take(&mut known.relisted);
                    let current = known.current.clone();
                    known.reported.retain(|uid, _| current.contains(uid));
                    known.current.len()
                };
                self.set_count(count);
                Some(Event::InitDone)
            }
            Event::InitApply(Guarded(Ok(object))) => {
                self.forget(&object);
                Some(Event::InitApply(object))
            }
            Event::Apply(Guarded(Ok(object))) => {
                self.forget(&object);
                Some(Event::Apply(object))
            }
            Event::Delete(Guarded(Ok(object))) => {
                self.forget(&object);
                Some(Event::Delete(object))
            }
            // Left out of the list: the cache the list builds holds no version of it.
            Event::InitApply(Guarded(Err(undecodable))) => {
                self.remember(&undecodable, true);
                None
            }
            // A version the cache may hold a decoded one of: remove that.
            Event::Apply(Guarded(Err(undecodable))) => {
                self.remember(&undecodable, false);
                self.cached(&undecodable.metadata).map(Event::Delete)
            }
            Event::Delete(Guarded(Err(undecodable))) => {
                self.forget_uid(undecodable.metadata.uid.as_deref());
                self.cached(&undecodable.metadata).map(Event::Delete)
            }
        }
    }

    fn cached(&self, metadata: &ObjectMeta) -> Option<K> {
        let name = metadata.name.clone()?;
        let key = match metadata.namespace.as_deref() {
            Some(namespace) => ObjectRef::<K>::new(&name).within(namespace),
            None => ObjectRef::<K>::new(&name),
        };
        self.cache.get(&key).map(|object| (*object).clone())
    }

    fn forget(&self, object: &K) {
        self.forget_uid(object.meta().uid.as_deref());
    }

    fn forget_uid(&self, uid: Option<&str>) {
        let Some(uid) = uid else { return };
        let count = {
            let mut known = self.lock();
            let was_known = known.current.remove(uid) | known.relisted.remove(uid);
            known.reported.remove(uid);
            was_known.then_some(known.current.len())
        };
        if let Some(count) = count {
            self.set_count(count);
        }
    }

    fn remember(&self, undecodable: &Undecodable, listing: bool) {
        let metadata = &undecodable.metadata;
        let (Some(uid), version) = (metadata.uid.clone(), metadata.resource_version.clone()) else {
            return;
        };
        let (new_version, count) = {
            let mut known = self.lock();
            if listing {
                known.relisted.insert(uid.clone());
            } else {
                known.current.insert(uid.clone());
            }
            let version = version.unwrap_or_default();
            let new_version = known.reported.get(&uid) != Some(&version);
            if new_version {
                known.reported.insert(uid.clone(), version);
            }
            (new_version, (!listing).then_some(known.current.len()))
        };
        if let Some(count) = count {
            self.set_count(count);
        }
        if !new_version {
            return;
        }
        let kind = K::kind(&());
        warn!(
            kind = %kind,
            namespace = metadata.namespace.as_deref().unwrap_or(""),
            name = metadata.name.as_deref().unwrap_or(""),
            problem = %undecodable.problem,
            "ignoring an object that does not decode"
        );
        if let Some(reporting) = &self.reporting {
            let object = ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(kind.into_owned()),
                name: metadata.name.clone(),
                namespace: metadata.namespace.clone(),
                uid: Some(uid.clone()),
                resource_version: metadata.resource_version.clone(),
                ..ObjectReference::default()
            };
            if reporting
                .events
                .try_send((object, undecodable.problem.clone()))
                .is_err()
            {
                // Not reported: let the next sighting try again.
                self.lock().reported.remove(&uid);
            }
        }
    }

    fn set_count(&self, count: usize) {
        if let Some(reporting) = &self.reporting {
            reporting
                .count
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One watch event through `undecodable` (errors pass unchanged): what the cache receives.
pub fn admit<K>(
    undecodable: &UndecodableObjects<K>,
    event: Result<Event<Guarded<K>>, watcher::Error>,
) -> Option<Result<Event<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    match event {
        Ok(event) => undecodable.admit(event).map(Ok),
        Err(error) => Some(Err(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedid_core::crd::FederatedIdentity;
    use kube::runtime::reflector;
    use serde_json::json;

    fn decoded(uid: &str, version: &str, lifetime: &str) -> Guarded<FederatedIdentity> {
        serde_json::from_value(json!({
            "apiVersion": "fedid.dev/v1alpha1", "kind": "FederatedIdentity",
            "metadata": {"name": uid, "namespace": "team", "uid": uid, "resourceVersion": version},
            "spec": {"audiences": ["sts.example.com"], "lifetime": lifetime},
        }))
        .expect("a guarded identity always decodes")
    }

    struct Watch {
        undecodable: UndecodableObjects<FederatedIdentity>,
        writer: reflector::store::Writer<FederatedIdentity>,
        cache: Store<FederatedIdentity>,
        count: Gauge,
        reports: mpsc::Receiver<Report>,
    }

    impl Watch {
        fn new() -> Self {
            let (cache, writer) = reflector::store::<FederatedIdentity>();
            let (events, reports) = mpsc::channel(16);
            let count = Gauge::default();
            let reporting = Reporting {
                count: count.clone(),
                events,
            };
            Self {
                undecodable: UndecodableObjects::new(cache.clone(), Some(reporting)),
                writer,
                cache,
                count,
                reports,
            }
        }

        /// Passes `event` through, into the cache; says what the cache received.
        fn send(&mut self, event: Event<Guarded<FederatedIdentity>>) -> Option<&'static str> {
            let admitted = self.undecodable.admit(event)?;
            let what = match &admitted {
                Event::Init => "Init",
                Event::InitApply(_) => "InitApply",
                Event::InitDone => "InitDone",
                Event::Apply(_) => "Apply",
                Event::Delete(_) => "Delete",
            };
            self.writer.apply_watcher_event(&admitted);
            Some(what)
        }

        fn cached(&self) -> Vec<String> {
            let mut names: Vec<String> = self
                .cache
                .state()
                .iter()
                .filter_map(|identity| identity.metadata.name.clone())
                .collect();
            names.sort();
            names
        }

        fn reported(&mut self) -> Vec<(String, String)> {
            std::iter::from_fn(|| self.reports.try_recv().ok())
                .map(|(object, problem)| (object.name.unwrap_or_default(), problem))
                .collect()
        }
    }

    #[test]
    fn the_problem_names_the_field_and_the_metadata_survives() {
        let Guarded(result) = decoded("a", "1", "forever");
        let undecodable = result.expect_err("forever is no duration");
        assert!(
            undecodable.problem.starts_with("spec.lifetime: "),
            "{}",
            undecodable.problem
        );
        assert!(
            undecodable.problem.contains("forever"),
            "{}",
            undecodable.problem
        );
        assert_eq!(undecodable.metadata.uid.as_deref(), Some("a"));
        assert!(decoded("b", "1", "1h").0.is_ok());
    }

    #[test]
    fn a_listed_undecodable_object_is_left_out_counted_and_reported_once() {
        let mut watch = Watch::new();
        assert_eq!(watch.send(Event::Init), Some("Init"));
        assert_eq!(
            watch.send(Event::InitApply(decoded("good", "1", "1h"))),
            Some("InitApply")
        );
        assert_eq!(
            watch.send(Event::InitApply(decoded("bad", "2", "forever"))),
            None
        );
        assert_eq!(watch.send(Event::InitDone), Some("InitDone"));
        assert_eq!(watch.cached(), ["good"]);
        assert_eq!(watch.count.get(), 1);
        let reported = watch.reported();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].0, "bad");

        // A relist sees the same version: counted, not reported again.
        watch.send(Event::Init);
        watch.send(Event::InitApply(decoded("good", "1", "1h")));
        watch.send(Event::InitApply(decoded("bad", "2", "forever")));
        watch.send(Event::InitDone);
        assert_eq!(watch.count.get(), 1);
        assert!(watch.reported().is_empty());
        // A new version is reported again.
        watch.send(Event::Apply(decoded("bad", "3", "never")));
        assert_eq!(watch.reported().len(), 1);

        // Fixed: in the cache, no longer counted.
        assert_eq!(
            watch.send(Event::Apply(decoded("bad", "4", "1h"))),
            Some("Apply")
        );
        assert_eq!(watch.cached(), ["bad", "good"]);
        assert_eq!(watch.count.get(), 0);
    }

    #[test]
    fn an_object_that_stops_decoding_is_removed_from_the_cache() {
        let mut watch = Watch::new();
        watch.send(Event::Init);
        watch.send(Event::InitApply(decoded("a", "1", "1h")));
        watch.send(Event::InitDone);
        assert_eq!(
            watch.send(Event::Apply(decoded("a", "2", "forever"))),
            Some("Delete")
        );
        assert!(watch.cached().is_empty());
        assert_eq!(watch.count.get(), 1);
        // Deleted while undecodable: nothing left to remove, no longer counted.
        assert_eq!(
            watch.send(Event::Delete(decoded("a", "3", "forever"))),
            None
        );
        assert_eq!(watch.count.get(), 0);
        // A relist that no longer lists an undecodable object forgets it.
        watch.send(Event::Apply(decoded("b", "4", "forever")));
        assert_eq!(watch.count.get(), 1);
        watch.send(Event::Init);
        watch.send(Event::InitDone);
        assert_eq!(watch.count.get(), 0);
    }
}
