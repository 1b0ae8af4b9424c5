//! The identity controller's view of the Secrets it writes: a cache of fedid-labelled Secrets
//! overlaid with this process's own recent writes (the watch may lag behind them).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::runtime::context::is_listed;

/// Secrets fedid wrote recently, overlaid on the (possibly lagging) watch cache.
#[derive(Default)]
pub struct RecentWrites(Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>);

impl RecentWrites {
    /// Remembers a Secret as the apiserver returned it from a write.
    pub fn remember(&self, secret: Secret) {
        let key = ObjectRef::from_obj(&secret);
        self.lock().insert(key, Arc::new(secret));
    }

    /// The fresher of the cached Secret and the one written last; forgets the written one
    /// once the cache has caught up.
    pub fn freshest(
        &self,
        key: &ObjectRef<Secret>,
        cached: Option<Arc<Secret>>,
    ) -> Option<Arc<Secret>> {
        let mut writes = self.lock();
        let Some(written) = writes.get(key).cloned() else {
            return cached;
        };
        let version = |secret: &Secret| {
            secret
                .resource_version()
                .and_then(|version| version.parse::<u64>().ok())
        };
        match cached {
            Some(cached) if version(&cached) >= version(&written) => {
                writes.remove(key);
                Some(cached)
            }
            _ => Some(written),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Secret>, Arc<Secret>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Secrets the identity pipeline reads: fedid's own, and nothing else.
pub struct OwnSecrets {
    /// Cache of fedid-labelled Secrets.
    pub cache: Store<Secret>,
    /// Writes the cache may not have seen yet.
    pub recent_writes: RecentWrites,
}

impl OwnSecrets {
    /// Over a cache, with no writes yet.
    pub fn new(cache: Store<Secret>) -> Self {
        Self {
            cache,
            recent_writes: RecentWrites::default(),
        }
    }

    /// Whether the cache has received its initial list (never waits).
    pub fn is_listed(&self) -> bool {
        is_listed(&self.cache)
    }

    /// The Secret as fedid last saw it. fedid reads no Secret outside this cache: one that
    /// exists without fedid's label is found when creating it fails.
    pub fn current(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::<Secret>::new(name).within(namespace);
        self.recent_writes.freshest(&key, self.cache.get(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_with_version(version: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("s".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn recent_writes_win_until_the_cache_catches_up() {
        let writes = RecentWrites::default();
        let key = ObjectRef::<Secret>::new("s").within("ns");
        writes.remember(secret_with_version("20"));
        let stale = Arc::new(secret_with_version("10"));
        let chosen = writes.freshest(&key, Some(stale)).expect("the write");
        assert_eq!(chosen.resource_version().as_deref(), Some("20"));
        let caught_up = Arc::new(secret_with_version("20"));
        let chosen = writes.freshest(&key, Some(caught_up)).expect("the cache");
        assert_eq!(chosen.resource_version().as_deref(), Some("20"));
        assert!(
            writes.lock().is_empty(),
            "forgotten once the cache caught up"
        );
        assert!(writes.freshest(&key, None).is_none());
    }
}

/// The next-attempt times of failed exchanges this replica reported, by identity UID: the
/// identity cache may not hold that status yet when the next trigger arrives.
#[derive(Default)]
pub struct ExchangeBackoffs {
    next: std::sync::Mutex<
        std::collections::HashMap<String, fedid_core::identity::status::NextAttempt>,
    >,
}

impl ExchangeBackoffs {
    /// The remembered next attempt of identity `uid`.
    pub fn get(&self, uid: &str) -> Option<fedid_core::identity::status::NextAttempt> {
        self.lock().get(uid).copied()
    }

    /// Remembers `next` for identity `uid` (or forgets it, after a success); drops entries
    /// whose time has passed, so the map holds only identities in backoff.
    pub fn set(
        &self,
        uid: &str,
        next: Option<fedid_core::identity::status::NextAttempt>,
        now: jiff::Timestamp,
    ) {
        let mut map = self.lock();
        map.retain(|_, remembered| remembered.at > now);
        match next {
            Some(next) => {
                map.insert(uid.to_owned(), next);
            }
            None => {
                map.remove(uid);
            }
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, fedid_core::identity::status::NextAttempt>,
    > {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
