//! Leader election on a `coordination.k8s.io/v1` Lease in the operator's namespace.
//!
//! Every replica serves discovery and JWKS; only the leader reconciles and writes. A replica
//! acquires the Lease when it is free or expired, renews it every `renew_period`, and steps
//! down once it could not renew for `renew_deadline` (shorter than the lease duration, so it
//! stops writing before anyone else may start). On shutdown the leader releases the Lease so a
//! standby takes over at once instead of after the lease expires. Every write carries the
//! resourceVersion it was decided from, so two candidates can never both win.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::runtime::context::FIELD_MANAGER;

/// Timing of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// The leader steps down when it could not renew for this long (less than `duration`).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Timing derived from the lease duration: renew deadline ⅔ of it, retry every ⅕ (≥ 1 s).
    pub fn from_duration(duration: Duration) -> Self {
        Self {
            duration,
            renew_deadline: duration.mul_f64(2.0 / 3.0),
            retry_period: (duration / 5).max(Duration::from_secs(1)),
        }
    }
}

/// The parts of a Lease the decision needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseState {
    /// Current holder, if any.
    pub holder: Option<String>,
    /// Last renewal.
    pub renewed_at: Option<Timestamp>,
    /// The holder's lease duration.
    pub duration: Option<SignedDuration>,
}

impl LeaseState {
    /// Reads a Lease object.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|spec| spec.holder_identity.clone())
                .filter(|holder| !holder.is_empty()),
            renewed_at: spec
                .and_then(|spec| spec.renew_time.as_ref())
                .map(|time| time.0),
            duration: spec
                .and_then(|spec| spec.lease_duration_seconds)
                .map(|seconds| SignedDuration::from_secs(i64::from(seconds))),
        }
    }
}

/// What a candidate does with the Lease it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease exists: create it, holding it.
    Create,
    /// The Lease is ours: renew it.
    Renew,
    /// The Lease is free or expired: take it over.
    TakeOver,
    /// Someone else holds it: try again later.
    Wait,
}

/// Decides, purely, what candidate `me` does at `now`.
pub fn decide(lease: Option<&LeaseState>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    match (&lease.holder, lease.renewed_at, lease.duration) {
        (Some(holder), _, _) if holder == me => LeaseDecision::Renew,
        (None, _, _) => LeaseDecision::TakeOver,
        (Some(_), Some(renewed), Some(duration))
            if now >= fedid_core::time::plus(renewed, duration) =>
        {
            LeaseDecision::TakeOver
        }
        (Some(_), None, _) | (Some(_), _, None) => LeaseDecision::TakeOver,
        (Some(_), Some(_), Some(_)) => LeaseDecision::Wait,
    }
}

/// Why the election stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The leader could not renew within its deadline; it must stop writing.
    #[error("lost the leader Lease {name}: not renewed for {deadline:?}")]
    Lost {
        /// Lease name.
        name: String,
        /// The renew deadline that passed.
        deadline: Duration,
    },
}

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

impl Elector {
    /// A candidate called `identity` for Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: String,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            timing,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns until `shutdown`, publishing leadership on `leading`. Returns `Err` when
    /// leadership was lost (the caller must stop writing at once) and `Ok` after a shutdown;
    /// the caller then stops its writers and calls [`release`](Self::release).
    pub async fn run(
        &self,
        leading: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LeaderError> {
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            // An apiserver that accepts the connection but never answers must not hold the
            // loop past the deadline: a leader that cannot renew in time steps down.
            let budget = match last_renewal {
                Some(renewed) => self
                    .timing
                    .renew_deadline
                    .saturating_sub(renewed.elapsed())
                    .max(Duration::from_millis(100)),
                None => self.timing.renew_deadline,
            };
            match tokio::time::timeout(budget, self.try_hold()).await {
                Err(_) => {
                    warn!(lease = %self.name, ?budget, "leader election: the apiserver did not answer in time");
                }
                Ok(Ok(true)) => {
                    if last_renewal.is_none() {
                        info!(lease = %self.name, identity = %self.identity, "became the leader");
                    }
                    last_renewal = Some(std::time::Instant::now());
                    leading.send_replace(true);
                }
                Ok(Ok(false)) if last_renewal.is_some() => {
                    leading.send_replace(false);
                    return Err(self.lost());
                }
                // Another replica holds it and this one never did: keep campaigning.
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    warn!(lease = %self.name, %error, "leader election: Lease update failed")
                }
            }
            if last_renewal.is_some_and(|renewed| renewed.elapsed() > self.timing.renew_deadline) {
                leading.send_replace(false);
                return Err(self.lost());
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return Ok(()),
            }
        }
    }

    fn lost(&self) -> LeaderError {
        LeaderError::Lost {
            name: self.name.clone(),
            deadline: self.timing.renew_deadline,
        }
    }

    /// One round: read the Lease, decide, write. `Ok(true)` while this candidate holds it.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let state = current.as_ref().map(LeaseState::of);
        let decision = decide(state.as_ref(), &self.identity, now);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let seconds = i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX);
        let written = match (decision, current) {
            (LeaseDecision::Wait, _) => return Ok(false),
            (LeaseDecision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&params, &lease).await
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == LeaseDecision::TakeOver {
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions =
                        Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // `lease` keeps the resourceVersion it was read with: a concurrent writer wins.
                self.api.replace(&self.name, &params, &lease).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up, if held, so a standby takes over without waiting for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match self.api.replace(&self.name, &params, &lease).await {
            Ok(_) => info!(lease = %self.name, "released the leader Lease"),
            Err(error) => warn!(lease = %self.name, %error, "failed to release the leader Lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseState {
        LeaseState {
            holder: Some(holder.into()),
            renewed_at: Some(at(renewed)),
            duration: Some(SignedDuration::from_secs(15)),
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", at(100)), LeaseDecision::Create);
    }

    #[test]
    fn the_holder_renews_and_others_wait_until_expiry() {
        let lease = held_by("a", 100);
        assert_eq!(decide(Some(&lease), "a", at(200)), LeaseDecision::Renew);
        assert_eq!(decide(Some(&lease), "b", at(100)), LeaseDecision::Wait);
        assert_eq!(decide(Some(&lease), "b", at(114)), LeaseDecision::Wait);
        assert_eq!(decide(Some(&lease), "b", at(115)), LeaseDecision::TakeOver);
        assert_eq!(
            decide(Some(&lease), "b", at(1_000)),
            LeaseDecision::TakeOver
        );
    }

    #[test]
    fn a_released_or_incomplete_lease_is_free() {
        let released = LeaseState {
            holder: None,
            ..held_by("a", 100)
        };
        assert_eq!(
            decide(Some(&released), "b", at(101)),
            LeaseDecision::TakeOver
        );
        let no_renewal = LeaseState {
            renewed_at: None,
            ..held_by("a", 100)
        };
        assert_eq!(
            decide(Some(&no_renewal), "b", at(101)),
            LeaseDecision::TakeOver
        );
    }

    #[test]
    fn empty_holder_reads_as_none() {
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert_eq!(LeaseState::of(&lease).holder, None);
    }

    #[test]
    fn the_leader_stops_before_a_standby_may_start() {
        for seconds in [3, 6, 15, 60] {
            let timing = LeaseTiming::from_duration(Duration::from_secs(seconds));
            assert!(timing.renew_deadline < timing.duration);
            assert!(timing.retry_period < timing.renew_deadline);
            assert!(timing.retry_period >= Duration::from_secs(1));
        }
    }
}
