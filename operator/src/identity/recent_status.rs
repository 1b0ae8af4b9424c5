//! The statuses fedid wrote recently, overlaid on the (possibly lagging) identity cache: a pass
//! triggered by fedid's own Secret write can run before the watch delivers the status written
//! a moment earlier, and without this overlay it would write that status (and its Event) again.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use fedid_core::crd::{FederatedIdentity, FederatedIdentityStatus};
use kube::ResourceExt;

/// The last status written per identity UID, with the resourceVersion the write returned. An
/// entry lives until the next pass of its identity sees the cache caught up, which the watch
/// event of that very write triggers.
#[derive(Default)]
pub struct RecentStatuses(Mutex<HashMap<String, (u64, FederatedIdentityStatus)>>);

fn version(identity: &FederatedIdentity) -> Option<u64> {
    identity
        .resource_version()
        .and_then(|version| version.parse::<u64>().ok())
}

impl RecentStatuses {
    /// Remembers the status of `written`, the identity as the apiserver returned it from a
    /// status write.
    pub fn remember(&self, written: &FederatedIdentity) {
        if let (Some(uid), Some(version), Some(status)) =
            (written.uid(), version(written), written.status.clone())
        {
            self.lock().insert(uid, (version, status));
        }
    }

    /// The status to compare a new one against: the one written last while `cached` is older
    /// than that write, else the cached object's own (and the written one is forgotten, so the
    /// overlay holds only writes the cache has not caught up with).
    pub fn freshest(&self, cached: &FederatedIdentity) -> FederatedIdentityStatus {
        let cached_status = cached.status.clone().unwrap_or_default();
        let Some(uid) = cached.uid() else {
            return cached_status;
        };
        let mut written = self.lock();
        match (written.get(&uid), version(cached)) {
            (Some((written_version, status)), Some(cached_version))
                if cached_version < *written_version =>
            {
                status.clone()
            }
            (Some(_), _) => {
                written.remove(&uid);
                cached_status
            }
            (None, _) => cached_status,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, FederatedIdentityStatus)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedid_core::crd::FederatedIdentitySpec;

    fn identity(version: &str, ready_reason: Option<&str>) -> FederatedIdentity {
        let mut identity = FederatedIdentity::new(
            "deploy",
            serde_json::from_value::<FederatedIdentitySpec>(
                serde_json::json!({"audiences": ["sts.example.com"]}),
            )
            .expect("spec"),
        );
        identity.metadata.uid = Some("uid-1".into());
        identity.metadata.resource_version = Some(version.into());
        identity.status = ready_reason.map(|reason| {
            serde_json::from_value(serde_json::json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": reason,
                                "message": "m", "lastTransitionTime": "2027-01-15T08:00:00Z"}]
            }))
            .expect("status")
        });
        identity
    }

    #[test]
    fn a_written_status_wins_until_the_cache_catches_up() {
        let recent = RecentStatuses::default();
        let written = identity("20", Some("Issued"));
        recent.remember(&written);
        // The cache still holds the object from before the write.
        assert_eq!(
            recent.freshest(&identity("19", None)),
            written.status.clone().expect("status")
        );
        assert_eq!(
            recent.freshest(&identity("19", None)),
            written.status.clone().expect("status")
        );
        // Caught up (or moved past, by another writer): the cache decides, and the overlay is gone.
        let later = identity("21", Some("SomethingElse"));
        assert_eq!(
            recent.freshest(&later),
            later.status.clone().expect("status")
        );
        assert_eq!(
            recent.freshest(&identity("19", None)),
            FederatedIdentityStatus::default()
        );
    }

    #[test]
    fn without_a_write_or_a_comparable_version_the_cache_decides() {
        let recent = RecentStatuses::default();
        let cached = identity("7", Some("Issued"));
        assert_eq!(
            recent.freshest(&cached),
            cached.status.clone().expect("status")
        );
        recent.remember(&identity("20", Some("Issued")));
        let unversioned = identity("not-a-number", None);
        assert_eq!(
            recent.freshest(&unversioned),
            FederatedIdentityStatus::default()
        );
    }
}
