//! Request rate, latency and status per route for an axum service, as Prometheus series:
//! `orderflow_http_requests_total{service,method,route,status}` and
//! `orderflow_http_request_seconds{service,method,route}`. The route is the matched template
//! (`/orders/{id}`), never the raw path, so an order id never becomes a label; requests that
//! match no route count as `route="unmatched"`.

use std::time::Instant;

use axum::{Router, extract::MatchedPath, http::Request, middleware::Next, response::Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct HttpMetrics {
    service: String,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry, service: &str) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("orderflow_http_requests_total", "HTTP requests answered, by route and status"),
            &["service", "method", "route", "status"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("orderflow_http_request_seconds", "HTTP request latency, by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["service", "method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(HttpMetrics { service: service.to_string(), requests, seconds })
    }

    /// Wraps every route of `router` (add it after the routes are declared).
    pub fn layer<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn(move |request: Request<axum::body::Body>, next: Next| {
            let metrics = self.clone();
            async move { metrics.observe(request, next).await }
        }))
    }

    async fn observe(&self, request: Request<axum::body::Body>, next: Next) -> Response {
        let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
        let method = request.method().as_str().to_string();
        let started = Instant::now();
        let response = next.run(request).await;
        let status = response.status().as_u16().to_string();
        self.seconds.with_label_values(&[&self.service, &method, &route]).observe(started.elapsed().as_secs_f64());
        self.requests.with_label_values(&[&self.service, &method, &route, &status]).inc();
        response
    }
}
