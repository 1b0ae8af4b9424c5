//! The identity controller's view of the Secrets it writes: a cache of fedid-labelled Secrets
//! overlaid with this process's own recent writes (the watch may lag behind them).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use fedid_core::identity::status::NextAttempt;
use jiff::Timestamp;

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
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
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

/// How many remembered backoffs trigger a sweep of the expired ones.
const PRUNE_EVERY: usize = 1024;

/// The next-attempt times of failed exchanges this replica reported, by identity UID: the
/// identity cache may not hold that status yet when the next trigger arrives.
#[derive(Default)]
pub struct ExchangeBackoffs {
    next: Mutex<HashMap<String, NextAttempt>>,
}

impl ExchangeBackoffs {
    /// The remembered next attempt of identity `uid`.
    pub fn get(&self, uid: &str) -> Option<NextAttempt> {
        self.lock().get(uid).copied()
    }

    /// Remembers `next` for identity `uid` (or forgets it, after a success). Entries whose
    /// time has passed are dropped every [`PRUNE_EVERY`] entries, so the map stays bounded by
    /// the identities in backoff at no per-call scan.
    pub fn set(&self, uid: &str, next: Option<NextAttempt>, now: Timestamp) {
        let mut map = self.lock();
        match next {
            Some(next) => {
                map.insert(uid.to_owned(), next);
                if map.len().is_multiple_of(PRUNE_EVERY) {
                    map.retain(|_, remembered| remembered.at > now);
                }
            }
            None => {
                map.remove(uid);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NextAttempt>> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid timestamp")
    }

    #[test]
    fn backoffs_are_forgotten_on_success_and_swept_when_expired() {
        let backoffs = ExchangeBackoffs::default();
        let next = |second| {
            Some(NextAttempt {
                generation: Some(1),
                at: at(second),
            })
        };
        backoffs.set("a", next(100), at(0));
        assert_eq!(backoffs.get("a"), next(100));
        backoffs.set("a", None, at(1));
        assert_eq!(backoffs.get("a"), None);
        // Expired entries go at the next sweep; pending ones stay.
        backoffs.set("old", next(10), at(0));
        for n in 1..PRUNE_EVERY {
            backoffs.set(&format!("id-{n}"), next(1_000), at(500));
        }
        assert_eq!(backoffs.get("old"), None);
        assert_eq!(backoffs.get("id-1"), next(1_000));
    }
}
