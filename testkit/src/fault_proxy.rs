//! A fault-injecting HTTP proxy in front of the real API server: faults on demand for the
//! tests that must survive them (500s, 409 Conflicts, timeouts whose write did or did not
//! land, dropped watches, slow writes), and request counters for the bench.
//!
//! Clients reach it over plain HTTP on loopback with no credentials ([`FaultProxy::kubeconfig`]);
//! it forwards every request to the API server with `kube::Client::send` as the control
//! plane's administrator. A request that carries its own `Authorization` header (a
//! ServiceAccount token) is forwarded with that header and no client certificate, so the
//! API server authenticates and authorizes the caller itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::oneshot;

use crate::control_plane::{self, ControlPlane};

/// The largest request body the proxy accepts (the API server's own limit is 3 MiB).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Faults to inject, each in requests per million; changeable while running.
#[derive(Debug, Default)]
pub struct Faults {
    /// Any request answered 500 InternalError before it reaches the API server.
    pub internal_error_ppm: AtomicU32,
    /// An update or patch answered 409 Conflict before it reaches the API server (as if
    /// another writer had won the race).
    pub conflict_ppm: AtomicU32,
    /// Writes answered 504 after `timeout_delay_ms`; half of them reached the API server
    /// first (the write landed, the answer was lost), half never did.
    pub timeout_ppm: AtomicU32,
    /// Watches cut after a random fraction of a second.
    pub drop_watch_ppm: AtomicU32,
    /// How long a timed-out request hangs before its 504.
    pub timeout_delay_ms: AtomicU64,
    /// Delay added to every write before it is forwarded.
    pub write_latency_ms: AtomicU64,
    /// Faults injected so far.
    pub injected: AtomicU64,
    rng: AtomicU64,
}

impl Faults {
    /// Sets every fault rate to `ppm` (requests per million).
    pub fn set_all(&self, ppm: u32) {
        for f in [
            &self.internal_error_ppm,
            &self.conflict_ppm,
            &self.timeout_ppm,
            &self.drop_watch_ppm,
        ] {
            f.store(ppm, Ordering::Relaxed);
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: enough to spread faults, and no dependency.
        let mut x = self.rng.load(Ordering::Relaxed);
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn roll(&self, rate: &AtomicU32) -> bool {
        let ppm = u64::from(rate.load(Ordering::Relaxed));
        let hit = ppm > 0 && self.random() % 1_000_000 < ppm;
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

/// What went through the proxy.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    writes: AtomicU64,
    largest_write: AtomicU64,
    conflicts: AtomicU64,
}

struct Upstream {
    /// As the administrator (client certificate).
    admin: kube::Client,
    /// With no credentials of its own: for requests that bring their `Authorization`.
    anonymous: kube::Client,
    faults: Arc<Faults>,
    counters: Counters,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    /// The clients to the API server could not be built.
    #[error(transparent)]
    ControlPlane(#[from] control_plane::Error),
}

impl FaultProxy {
    /// Starts a proxy to `plane` on an ephemeral loopback port.
    pub async fn start(plane: &ControlPlane) -> Result<FaultProxy, ProxyError> {
        FaultProxy::start_on(plane, "127.0.0.1:0").await
    }

    /// Starts a proxy to `plane` on `listen`.
    pub async fn start_on(plane: &ControlPlane, listen: &str) -> Result<FaultProxy, ProxyError> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ProxyError::Listen(listen.into(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ProxyError::Listen(listen.into(), e))?;
        let mut admin = control_plane::config_from_file(plane.kubeconfig()).await?;
        // Faults are for the proxy's own clients to see: it never retries on their behalf.
        admin.default_retry = false;
        let mut anonymous = admin.clone();
        anonymous.auth_info = Default::default();
        let upstream = Arc::new(Upstream {
            admin: kube::Client::try_from(admin)
                .map_err(|e| control_plane::Error::Kube("proxy client".into(), e))?,
            anonymous: kube::Client::try_from(anonymous)
                .map_err(|e| control_plane::Error::Kube("proxy client".into(), e))?,
            faults: Arc::default(),
            counters: Counters::default(),
        });
        let router = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&upstream));
        let stop = crate::serve_until_stopped(listener, router, "fault proxy");
        Ok(FaultProxy {
            addr,
            upstream,
            stop: Some(stop),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this proxy (plain HTTP, no credentials: the proxy is the admin).
    pub fn kubeconfig(&self) -> String {
        control_plane::plain_kubeconfig(&self.url())
    }

    /// A client configuration for this proxy, with kube's defaults (which retry 429, 503
    /// and 504 answers); set `default_retry = false` to see every fault.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("a valid URL"))
    }

    /// A client of this proxy, with kube's defaults.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a client for a plain-HTTP URL")
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.upstream.faults
    }

    /// Requests received, writes forwarded, largest write body (bytes).
    pub fn counters(&self) -> (u64, u64, u64) {
        let c = &self.upstream.counters;
        (
            c.requests.load(Ordering::Relaxed),
            c.writes.load(Ordering::Relaxed),
            c.largest_write.load(Ordering::Relaxed),
        )
    }

    /// Writes the API server answered 409 Conflict (a stale resourceVersion), plus the
    /// injected ones.
    pub fn conflicts(&self) -> u64 {
        self.upstream.counters.conflicts.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn is_watch(request: &Request) -> bool {
    request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

async fn forward(State(up): State<Arc<Upstream>>, request: Request) -> Response {
    let counters = &up.counters;
    let faults = &up.faults;
    counters.requests.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let watch = is_watch(&request);
    if faults.roll(&faults.internal_error_ppm) {
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "Internal error occurred: injected by the fault proxy",
        );
    }
    if matches!(method, Method::PUT | Method::PATCH) && faults.roll(&faults.conflict_ppm) {
        counters.conflicts.fetch_add(1, Ordering::Relaxed);
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again (injected by the fault proxy)",
        );
    }
    let timeout = write && faults.roll(&faults.timeout_ppm);
    let delay = Duration::from_millis(faults.timeout_delay_ms.load(Ordering::Relaxed));
    // Half of the timeouts happen before the write reaches the API server.
    if timeout && faults.random() % 2 == 0 {
        tokio::time::sleep(delay).await;
        return timed_out();
    }
    if write {
        let latency = faults.write_latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
    }

    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("the fault proxy refused the body: {e}"),
            );
        }
    };
    if write {
        counters.writes.fetch_add(1, Ordering::Relaxed);
        counters
            .largest_write
            .fetch_max(body.len() as u64, Ordering::Relaxed);
    }
    let authorized = parts.headers.contains_key(header::AUTHORIZATION);
    let mut upstream_request = http::Request::builder().method(parts.method.clone()).uri(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    for (name, value) in &parts.headers {
        if name == header::HOST || name == header::CONTENT_LENGTH || name == header::CONNECTION {
            continue;
        }
        upstream_request = upstream_request.header(name, value);
    }
    let upstream_request = match upstream_request.body(kube::client::Body::from(body.to_vec())) {
        Ok(r) => r,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let client = if authorized { &up.anonymous } else { &up.admin };
    let answer = match client.send(upstream_request).await {
        Ok(a) => a,
        Err(e) => {
            return status(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("the fault proxy could not reach the API server: {e}"),
            );
        }
    };
    if timeout {
        // The write landed; its answer is lost.
        tokio::time::sleep(delay).await;
        return timed_out();
    }
    let (mut parts, body) = answer.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    if watch {
        let stream = body.into_data_stream();
        let stream: futures::stream::BoxStream<'static, Result<Bytes, kube::Error>> =
            if faults.roll(&faults.drop_watch_ppm) {
                let after = Duration::from_millis(faults.random() % 1000);
                let cut = tokio::time::sleep(after);
                stream.take_until(cut).boxed()
            } else {
                stream.boxed()
            };
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return status(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("the fault proxy lost the API server's answer: {e}"),
            );
        }
    };
    if parts.status == StatusCode::CONFLICT && is_conflict(&bytes) {
        counters.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, Body::from(bytes))
}

fn is_conflict(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["reason"] == "Conflict")
}

fn timed_out() -> Response {
    status(
        StatusCode::GATEWAY_TIMEOUT,
        "Timeout",
        "Timeout: request did not complete within the allowed duration (injected by the fault proxy)",
    )
}
