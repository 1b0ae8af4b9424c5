//! The exchange phase's I/O: sends the request `fedid_core::exchange` built to the token
//! service, within the per-host request budget, and hands the reply back for the core to judge.
//! HTTPS only, no redirects followed, bodies never logged and capped in size.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fedid_core::{
    exchange::{ExchangeError, ExchangeRequest, Reply, Transport},
    timing::TokenBucket,
};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::runtime::metrics::{HostLabels, KindLabels, Metrics};

/// Largest reply body read; a longer one is cut (and so judged malformed).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Most HTTP clients kept (one per distinct CA bundle).
const MAX_CLIENTS: usize = 256;

/// Which requests go first when a host's budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// An identity without credentials yet.
    FirstIssue,
    /// Credentials that are still valid being refreshed.
    Refresh,
}

/// A host's permission for one request: its slot among the requests in flight is released
/// when this is dropped.
pub struct Reservation {
    _slot: Option<OwnedSemaphorePermit>,
}

/// Sends exchange requests.
pub struct Exchanger {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    budget: Budget,
    metrics: Arc<Metrics>,
}

impl Exchanger {
    /// An exchanger allowing each endpoint host `qps` requests per second, `burst` at once
    /// before the rate applies, and at most `concurrency` in flight.
    pub fn new(qps: f64, burst: u32, concurrency: u32, metrics: Arc<Metrics>) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            budget: Budget::new(qps, burst, concurrency),
            metrics,
        }
    }

    /// Waits until `host`'s budget allows one request: a slot among its requests in flight
    /// and a token of its rate. Build the request after this returns, so that nothing signed
    /// for it (a 60-second client assertion) ages in the queue.
    pub async fn reserve(&self, host: &str, priority: Priority) -> Reservation {
        let (slot, waited) = self.budget.acquire(host, priority).await;
        if waited {
            self.metrics
                .exchange_budget_waits
                .get_or_create(&HostLabels {
                    host: host.to_owned(),
                })
                .inc();
        }
        Reservation { _slot: slot }
    }

    /// Sends `request` (trusting `ca_bundle` as well as the system roots) under `reservation`,
    /// held until the reply is read, and returns the reply or why none came.
    pub async fn send(
        &self,
        reservation: Reservation,
        request: &ExchangeRequest,
        timeout: Duration,
        ca_bundle: Option<&str>,
    ) -> Result<Reply, ExchangeError> {
        let client = self.client(ca_bundle)?;
        let mut builder = client.post(&request.url).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let (content_type, body) = request.body.encode();
        builder = builder
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(
                reqwest::header::ACCEPT,
                "application/json, application/xml;q=0.9",
            )
            .body(body);
        let started = Instant::now();
        let reply = receive(builder).await;
        self.metrics
            .exchange_duration
            .get_or_create(&KindLabels {
                kind: request.kind.as_str().to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
        debug!(host = %request.host, reply = ?reply, "exchange request answered");
        drop(reservation);
        Ok(reply)
    }

    /// The client for `ca_bundle`, built on first use.
    fn client(&self, ca_bundle: Option<&str>) -> Result<reqwest::Client, ExchangeError> {
        let key = ca_bundle
            .map(|pem| format!("{:x}", Sha256::digest(pem.as_bytes())))
            .unwrap_or_default();
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fedid/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_bundle {
            let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|_| ExchangeError::InvalidCaBundle)?;
            if certificates.is_empty() {
                return Err(ExchangeError::InvalidCaBundle);
            }
            builder = builder.tls_certs_merge(certificates);
        }
        let client = builder
            .build()
            .map_err(|_| ExchangeError::InvalidCaBundle)?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Sends and reads the reply, at most [`MAX_REPLY_BYTES`] of its body.
async fn receive(builder: reqwest::RequestBuilder) -> Reply {
    let mut response = match builder.send().await {
        Ok(response) => response,
        Err(error) => return Reply::NoResponse(transport(&error)),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REPLY_BYTES {
                    body.truncate(MAX_REPLY_BYTES);
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => return Reply::NoResponse(transport(&error)),
        }
    }
    Reply::Response {
        status,
        retry_after,
        body,
    }
}

fn transport(error: &reqwest::Error) -> Transport {
    if error.is_timeout() {
        Transport::Timeout
    } else if error.is_connect() {
        Transport::Connect
    } else {
        Transport::Other
    }
}

/// The per-host request budget: a token bucket and a limit of requests in flight per endpoint
/// host, shared by every identity. While first issues wait for a host, refreshes for that host
/// hold back.
struct Budget {
    qps: f64,
    burst: u32,
    concurrency: u32,
    origin: tokio::time::Instant,
    hosts: Mutex<HashMap<String, HostBudget>>,
}

struct HostBudget {
    bucket: TokenBucket,
    first_issues_waiting: usize,
    in_flight: Arc<Semaphore>,
}

/// How long a held-back refresh waits before looking again.
const HELD_BACK: Duration = Duration::from_millis(50);

impl Budget {
    fn new(qps: f64, burst: u32, concurrency: u32) -> Self {
        Self {
            qps,
            burst,
            concurrency,
            origin: tokio::time::Instant::now(),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// `host`'s state, created on first use.
    fn host<T>(&self, host: &str, with: impl FnOnce(&mut HostBudget) -> T) -> T {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = self.origin.elapsed().as_secs_f64();
        let state = hosts.entry(host.to_owned()).or_insert_with(|| HostBudget {
            bucket: TokenBucket::new(self.qps, self.burst, now),
            first_issues_waiting: 0,
            in_flight: Arc::new(Semaphore::new(
                usize::try_from(self.concurrency).unwrap_or(usize::MAX),
            )),
        });
        with(state)
    }

    /// Waits until `host` has a request slot free and its rate allows one request; returns
    /// the slot (released when dropped) and whether it had to wait.
    async fn acquire(
        &self,
        host: &str,
        priority: Priority,
    ) -> (Option<OwnedSemaphorePermit>, bool) {
        let slots = self.host(host, |state| state.in_flight.clone());
        let (slot, slot_waited) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (Some(slot), false),
            // The semaphore is never closed, so this waits for a slot.
            Err(_) => (slots.acquire_owned().await.ok(), true),
        };
        (slot, self.take_token(host, priority).await || slot_waited)
    }

    /// Waits until `host`'s rate allows one request; says whether it had to wait.
    async fn take_token(&self, host: &str, priority: Priority) -> bool {
        let mut waited = false;
        loop {
            let now = self.origin.elapsed().as_secs_f64();
            let wait = self.host(host, |state| {
                let held_back = priority == Priority::Refresh && state.first_issues_waiting > 0;
                let outcome = if held_back {
                    Err(HELD_BACK)
                } else {
                    state.bucket.try_take(now)
                };
                match (outcome, priority, waited) {
                    (Ok(()), Priority::FirstIssue, true) => {
                        state.first_issues_waiting = state.first_issues_waiting.saturating_sub(1);
                    }
                    (Err(_), Priority::FirstIssue, false) => state.first_issues_waiting += 1,
                    _ => {}
                }
                outcome.err()
            });
            match wait {
                None => return waited,
                Some(delay) => {
                    waited = true;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_limits_each_host_and_serves_first_issues_first() {
        let budget = Arc::new(Budget::new(10.0, 2, 100));
        let started = tokio::time::Instant::now();
        // The burst goes at once; other hosts have their own budget.
        assert!(!budget.acquire("a", Priority::Refresh).await.1);
        assert!(!budget.acquire("a", Priority::Refresh).await.1);
        assert!(!budget.acquire("b", Priority::Refresh).await.1);
        assert!(budget.acquire("a", Priority::FirstIssue).await.1);
        assert!(started.elapsed() >= Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_never_has_more_requests_in_flight_than_its_slots() {
        let budget = Arc::new(Budget::new(1000.0, 1000, 2));
        let (first, waited_first) = budget.acquire("a", Priority::FirstIssue).await;
        let (second, _) = budget.acquire("a", Priority::FirstIssue).await;
        assert!(!waited_first && first.is_some() && second.is_some());
        // Another host has its own slots.
        assert!(!budget.acquire("b", Priority::FirstIssue).await.1);
        // A third request to `a` waits until a slot is released.
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire("a", Priority::Refresh).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !third.is_finished(),
            "a third request went while two were in flight"
        );
        drop(first);
        let (slot, waited) = tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("the released slot is taken")
            .expect("task");
        assert!(waited && slot.is_some());
    }

    #[tokio::test]
    async fn an_invalid_ca_bundle_is_reported() {
        let exchanger = Exchanger::new(1.0, 1, 1, Arc::new(Metrics::default()));
        let garbage = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
        assert_eq!(
            exchanger.client(Some(garbage)).err(),
            Some(ExchangeError::InvalidCaBundle)
        );
        assert!(exchanger.client(None).is_ok());
    }
}
