//! What every RPC leaves behind: a request id on every log line it writes, its latency and
//! gRPC code in the metrics, and a count of refusals by authorization.
//!
//! A tower layer around the whole gRPC server, so no handler has to remember it. The
//! request id is the caller's `x-request-id` (the CNI plugins send one per CNI call, so a
//! call can be followed from the node's log to ipamd's), else one made here; it is sent
//! back in the response's `x-request-id`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tracing::Instrument;

use crate::metrics::{MethodLabels, RpcLabels, RpcMetrics};

use danm_proto::client::REQUEST_ID_HEADER as REQUEST_ID;

/// The prefix of the Ipam service's paths; other services (health, reflection) are
/// passed through without metrics.
const IPAM_PATH: &str = "/danm.ipam.v1.Ipam/";

/// The methods of `danm.ipam.v1.Ipam` (`proto/danm/ipam/v1/ipam.proto`).
const METHODS: [&str; 11] = [
    "Attach",
    "Detach",
    "Interfaces",
    "Allocate",
    "Release",
    "Check",
    "Gc",
    "Status",
    "GetNetwork",
    "ListAllocations",
    "ReclaimOrphan",
];

/// The layer: wraps the server's service in [`Observed`].
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: RpcMetrics,
}

impl ObserveLayer {
    /// Records into `metrics`.
    pub fn new(metrics: RpcMetrics) -> ObserveLayer {
        ObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is ready only once polled; the ready one is taken (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(method) = request.uri().path().strip_prefix(IPAM_PATH) else {
            return Box::pin(inner.call(request));
        };
        // Only the service's methods become labels: a path is the caller's to choose, and
        // a label per made-up name would grow the metrics without bound.
        let method = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("unknown")
            .to_owned();
        let id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 64)
            .map(str::to_owned)
            .unwrap_or_else(new_request_id);
        let span = tracing::info_span!("rpc", method = %method, request_id = %id);
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = inner.call(request).await?;
                let code = grpc_code(response.headers());
                if code == tonic::Code::PermissionDenied {
                    metrics
                        .denied
                        .get_or_create(&MethodLabels {
                            method: method.clone(),
                        })
                        .inc();
                }
                metrics
                    .duration
                    .get_or_create(&RpcLabels {
                        method,
                        code: format!("{code:?}"),
                    })
                    .observe(started.elapsed().as_secs_f64());
                if let Ok(value) = http::HeaderValue::from_str(&id) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The code of a response: a refusal carries it in its headers (a trailers-only
/// response); an answer carries OK in its trailers, after the body.
fn grpc_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// A request id unique in this process and unlikely to repeat across replicas: the
/// process's start time and a counter.
fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static EPOCH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(40)
    });
    format!("{epoch:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_service_is_known() {
        let proto = include_str!("../../proto/proto/danm/ipam/v1/ipam.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert_eq!(rpcs, METHODS);
    }
}
