//! The client-side request budget for the Kubernetes API (`--kube-api-qps`, `--kube-api-burst`):
//! a tower layer under the kube client that holds each request until the shared token bucket
//! has a token. A watch takes one token when it starts, not per event.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use fedid_core::timing::TokenBucket;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// What the requests that waited cost: how many waited and for how long in all.
#[derive(Clone, Debug, Default)]
pub struct ThrottleMetrics {
    /// Requests that waited for the budget.
    pub waits: Counter,
    /// Seconds requests spent waiting for the budget.
    pub waited_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

/// Limits the requests sent to the apiserver to `qps` per second with bursts of `burst`.
#[derive(Clone, Debug)]
pub struct ApiRateLimitLayer {
    qps: f64,
    burst: u32,
    metrics: ThrottleMetrics,
}

impl ApiRateLimitLayer {
    /// A budget of `qps` requests per second and `burst` at once, reporting to `metrics`.
    pub fn new(qps: f64, burst: u32, metrics: ThrottleMetrics) -> Self {
        Self {
            qps,
            burst,
            metrics,
        }
    }
}

impl<S> Layer<S> for ApiRateLimitLayer {
    type Service = ApiRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let origin = Instant::now();
        ApiRateLimit {
            inner,
            bucket: TokenBucket::new(self.qps, self.burst, 0.0),
            origin,
            waiting: None,
            has_token: false,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ApiRateLimitLayer`] builds. The kube client drives it from one buffer worker,
/// so the bucket needs no lock: `poll_ready` waits for a token, `call` spends it.
pub struct ApiRateLimit<S> {
    inner: S,
    bucket: TokenBucket,
    origin: Instant,
    /// The pending wait for the next token, and when it began.
    waiting: Option<(Pin<Box<Sleep>>, Instant)>,
    has_token: bool,
    metrics: ThrottleMetrics,
}

impl<S> ApiRateLimit<S> {
    fn seconds(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

impl<S, Request> Service<Request> for ApiRateLimit<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while !self.has_token {
            if let Some((sleep, _)) = self.waiting.as_mut() {
                ready!(sleep.as_mut().poll(cx));
            }
            match self.bucket.try_take(self.seconds()) {
                Ok(()) => {
                    self.has_token = true;
                    if let Some((_, began)) = self.waiting.take() {
                        self.metrics.waits.inc();
                        self.metrics
                            .waited_seconds
                            .inc_by(began.elapsed().as_secs_f64());
                    }
                }
                Err(wait) => {
                    let began = self
                        .waiting
                        .take()
                        .map_or_else(Instant::now, |(_, began)| began);
                    let wait = wait.max(Duration::from_millis(1));
                    self.waiting = Some((Box::pin(tokio::time::sleep(wait)), began));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.has_token = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower_test::mock;

    /// Sends `count` requests one after another through a budget of `qps`/`burst` with the
    /// clock paused, and returns when each reached the apiserver, in seconds from the start.
    async fn arrivals(qps: f64, burst: u32, count: usize) -> (Vec<f64>, ThrottleMetrics) {
        let metrics = ThrottleMetrics::default();
        let (service, mut handle) = mock::pair::<u32, u32>();
        let mut limited = ApiRateLimitLayer::new(qps, burst, metrics.clone()).layer(service);
        let start = Instant::now();
        let server = tokio::spawn(async move {
            let mut times = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                times.push(start.elapsed().as_secs_f64());
                respond.send_response(request);
            }
            times
        });
        for request in 0..count {
            let request = u32::try_from(request).expect("small");
            let answer = limited
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answered");
            assert_eq!(answer, request);
        }
        drop(limited);
        (server.await.expect("server"), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_goes_at_once_then_requests_follow_the_rate() {
        let (times, metrics) = arrivals(4.0, 3, 11).await;
        assert!(times[..3].iter().all(|&t| t < 0.01), "{times:?}");
        // The 4th waits a quarter second, each later one another quarter.
        for (index, time) in times.iter().enumerate().skip(3) {
            #[allow(clippy::cast_precision_loss)]
            let expected = (index as f64 - 2.0) * 0.25;
            assert!(
                (time - expected).abs() < 0.01,
                "request {index} at {time}: {times:?}"
            );
        }
        assert_eq!(metrics.waits.get(), 8);
        assert!(
            (metrics.waited_seconds.get() - 2.0).abs() < 0.05,
            "{}",
            metrics.waited_seconds.get()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_of_one_second_holds_more_than_burst_plus_rate() {
        let (times, _) = arrivals(10.0, 5, 60).await;
        for (index, start) in times.iter().enumerate() {
            let within = times[index..]
                .iter()
                .take_while(|&&t| t < start + 1.0)
                .count();
            assert!(within <= 15, "{within} requests in the second from {start}");
        }
        assert!(*times.last().expect("times") >= 5.4, "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_regains_its_burst() {
        let metrics = ThrottleMetrics::default();
        let (service, mut handle) = mock::pair::<u32, u32>();
        let mut limited = ApiRateLimitLayer::new(2.0, 2, metrics.clone()).layer(service);
        handle.allow(100);
        let server = tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                respond.send_response(request);
            }
        });
        for request in 0..2 {
            limited
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answered");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = Instant::now();
        for request in 2..4 {
            limited
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("answered");
        }
        assert!(before.elapsed() < Duration::from_millis(10));
        assert_eq!(metrics.waits.get(), 0);
        drop(limited);
        server.await.expect("server");
    }
}
