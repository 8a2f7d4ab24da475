//! The HTTPS server: DANM's three admission paths, `/metrics`, `/healthz` and `/readyz`,
//! over rustls, HTTP/1.1 and HTTP/2.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use danm_runtime::accept::{accept, handshake};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt as _;

use crate::metrics::{Metrics, RefusedLabels};
use crate::review::{Admission, Path};
use danm_runtime::tls::{ReloadingCert, ReloadingClientCas};

/// Largest AdmissionReview accepted: a TenantConfig and its old copy, each up to etcd's
/// 1.5 MiB object limit, with room to spare. Larger bodies get 413 unread.
pub const BODY_LIMIT: usize = 4 << 20;
/// The bodies read and decoded at once: a request waits for room (and gets 503 after
/// [`BUDGET_WAIT`]), so that no flood of large bodies runs a replica out of memory.
/// Decoded JSON can take thirty times its text (a long array of small numbers, held twice
/// while a review is converted), and the Deployment's limit is 256 MiB: one body of the
/// largest size at a time. Bodies up to [`SMALL_BODY`] (every network's review: a few
/// KiB) have a lane of their own, [`SMALL_BUDGET`], so that large ones never hold them up.
pub const BODY_BUDGET: usize = 4 << 20;
/// See [`BODY_BUDGET`].
pub const SMALL_BODY: usize = 64 << 10;
/// See [`BODY_BUDGET`]: about 700 network reviews at once.
pub const SMALL_BUDGET: usize = 2 << 20;
/// How long a request waits for room in the budget.
const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How long one request may take, its body's upload included (the API server gives up
/// after 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections open at once, in all and from one address: the API server needs a few;
/// the rest are refused at once (closed unread).
pub const MAX_CONNECTIONS: usize = 4096;
/// See [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Concurrent HTTP/2 requests per connection: what Go's HTTP/2 client (the API server's)
/// assumes before it has read our SETTINGS. A lower limit makes it send streams we must
/// refuse, which it retries only after a second.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Requests after which a connection is closed gracefully (HTTP/2 GOAWAY: in-flight
/// requests finish, the client opens a new connection for the next). The API server keeps
/// one HTTP/2 connection to a webhook and a Service balances connections, not requests:
/// without this, one replica would serve every admission of an API server for as long as
/// the connection lives, and a replica started later would get nothing.
const REQUESTS_PER_CONNECTION: u32 = 64;
/// How long an HTTP/1.1 client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit with no request in flight before it is closed: the API
/// server reuses its connection within this, an abandoned one gives its slot back.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The same for a connection that may not use the admission paths (no certificate from
/// `--client-ca`): it only ever needs a probe or a scrape, so that a client without a
/// certificate cannot hold [`MAX_CONNECTIONS`] slots by keeping idle connections open.
const UNADMITTED_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may call the admission paths: anyone, or only a client whose certificate chains
/// to `--client-ca` (the API server, which presents one when its AdmissionConfiguration
/// names a `kubeConfigFile` for webhooks), with one of `--client-name` as common name if
/// any are given. `/healthz`, `/readyz` and `/metrics` answer anyone (kubelet's probes
/// have no certificate).
#[derive(Clone, Debug, Default)]
pub struct Callers {
    /// The CAs of the API server's client certificate; none: anyone may call.
    pub cas: Option<Arc<ReloadingClientCas>>,
    /// Accepted common names; empty: any certificate the CAs signed.
    pub names: Vec<String>,
}

impl Callers {
    /// Whether a connection that presented `chain` (verified by the handshake, leaf first)
    /// may use the admission paths.
    fn admits(&self, chain: Option<&[CertificateDer<'static>]>) -> bool {
        if self.cas.is_none() {
            return true;
        }
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return false;
        };
        self.names.is_empty() || common_name(leaf).is_some_and(|cn| self.names.contains(&cn))
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn is_admission_path(path: &str) -> bool {
    Path::ALL.iter().any(|p| p.as_str() == path)
}

/// Room for bodies in flight (see [`BODY_BUDGET`]), in KiB: the small lane and the large.
#[derive(Clone, Debug)]
struct Budget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// Refuses a body over [`BODY_LIMIT`] unread, and waits for room in the budget for the
/// declared length (the limit when none is declared) before the body is read.
async fn within_budget(
    State((budget, metrics)): State<(Budget, Arc<Metrics>)>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        metrics
            .refused
            .get_or_create(&RefusedLabels {
                reason: "too_large",
            })
            .inc();
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {BODY_LIMIT} bytes\n"),
        )
            .into_response();
    }
    let size = declared.unwrap_or(BODY_LIMIT);
    let lane = if size <= SMALL_BODY {
        &budget.small
    } else {
        &budget.large
    };
    let kib = size.div_ceil(1024).max(1) as u32;
    let permit =
        match tokio::time::timeout(BUDGET_WAIT, Arc::clone(lane).acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => permit,
            _ => {
                metrics
                    .refused
                    .get_or_create(&RefusedLabels { reason: "busy" })
                    .inc();
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many large requests at once; try again\n",
                )
                    .into_response();
            }
        };
    let response = next.run(request).await;
    drop(permit);
    response
}

/// The routes.
pub fn router(admission: Arc<Admission>) -> Router {
    async fn review(state: Arc<Admission>, path: Path, body: Bytes) -> Response {
        match state.review(path, &body).await {
            Ok(answer) => axum::Json(answer).into_response(),
            Err(e) => {
                tracing::warn!(path = path.as_str(), error = %e, "malformed AdmissionReview");
                (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
            }
        }
    }
    Router::new()
        .route(
            Path::NetValidation.as_str(),
            post(|State(s): State<Arc<Admission>>, body: Bytes| {
                review(s, Path::NetValidation, body)
            }),
        )
        .route(
            Path::ConfValidation.as_str(),
            post(|State(s): State<Arc<Admission>>, body: Bytes| {
                review(s, Path::ConfValidation, body)
            }),
        )
        .route(
            Path::NetDeletion.as_str(),
            post(|State(s): State<Arc<Admission>>, body: Bytes| review(s, Path::NetDeletion, body)),
        )
        .route(
            Path::PolicyValidation.as_str(),
            post(|State(s): State<Arc<Admission>>, body: Bytes| {
                review(s, Path::PolicyValidation, body)
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<Admission>>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<Admission>>| async move {
                if s.usage.is_synced() && s.tenants.is_ready() {
                    (StatusCode::OK, "ok\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the watches have not listed yet\n",
                    )
                }
            }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .route_layer(axum::middleware::from_fn_with_state(
            (
                Budget {
                    small: Arc::new(Semaphore::new(SMALL_BUDGET / 1024)),
                    large: Arc::new(Semaphore::new(BODY_BUDGET / 1024)),
                },
                Arc::clone(&admission.metrics),
            ),
            within_budget,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(admission)
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets in-flight requests finish
/// (up to 10 s). The admission paths answer `callers` only; connections beyond
/// [`MAX_CONNECTIONS`] (or [`MAX_CONNECTIONS_PER_ADDRESS`] from one address) are closed at
/// once, counted in `metrics`.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    callers: Callers,
    app: Router,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP/2 first: the API server multiplexes its calls on one connection.
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let verifier = callers
        .cas
        .clone()
        .map(|cas| cas as Arc<dyn rustls::server::danger::ClientCertVerifier>);
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config(&alpn, verifier)));
    let open_connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    // Connections watch `stopping`; each holds a clone of `open` until it has ended.
    let (stop, stopping) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (tcp, peer) = accept(&listener) => {
                let Some(slot) = Slot::take(&open_connections, &per_address, peer.ip()) else {
                    metrics.refused.get_or_create(&RefusedLabels { reason: "connections" }).inc();
                    tracing::debug!(%peer, "too many connections: closed");
                    drop(tcp);
                    continue;
                };
                let connection = Connection {
                    acceptor: acceptor.clone(),
                    builder: builder.clone(),
                    app: app.clone(),
                    callers: callers.clone(),
                    metrics: Arc::clone(&metrics),
                    stopping: stopping.clone(),
                    _open: open.clone(),
                    _slot: slot,
                };
                tokio::spawn(connection.serve(tcp, peer));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
}

/// A connection's place in [`MAX_CONNECTIONS`] and in its address's share; given back
/// when the connection ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    address: IpAddr,
    per_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Slot {
    fn take(
        all: &Arc<Semaphore>,
        per_address: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
        address: IpAddr,
    ) -> Option<Slot> {
        let permit = Arc::clone(all).try_acquire_owned().ok()?;
        let mut counts = per_address.lock().expect("lock");
        let count = counts.entry(address).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Slot {
            _permit: permit,
            address,
            per_address: Arc::clone(per_address),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_address.lock().expect("lock");
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// One client connection.
struct Connection {
    acceptor: TlsAcceptor,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    app: Router,
    callers: Callers,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
    _slot: Slot,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
        let failures = self
            .metrics
            .refused
            .get_or_create(&RefusedLabels {
                reason: "handshake",
            })
            .clone();
        let Some(tls) = handshake(&self.acceptor, tcp, peer, &failures).await else {
            return;
        };
        // Whether this connection may use the admission paths: decided once, from the
        // certificate the handshake verified.
        let admitted = self.callers.admits(tls.get_ref().1.peer_certificates());
        let idle_timeout = if admitted {
            IDLE_TIMEOUT
        } else {
            UNADMITTED_IDLE_TIMEOUT
        };
        let activity = Activity::new();
        let served = Arc::new(AtomicU32::new(0));
        let enough = Arc::new(Notify::new());
        let service = {
            let (served, enough, app) = (served.clone(), enough.clone(), self.app.clone());
            let (metrics, activity) = (Arc::clone(&self.metrics), activity.clone());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                if served.fetch_add(1, Ordering::Relaxed) + 1 == REQUESTS_PER_CONNECTION {
                    enough.notify_one();
                }
                let refused = !admitted && is_admission_path(request.uri().path());
                let (app, metrics) = (app.clone(), Arc::clone(&metrics));
                let busy = activity.begin();
                async move {
                    let _busy = busy;
                    if refused {
                        // Unread: whatever the body holds costs nothing.
                        metrics
                            .refused
                            .get_or_create(&RefusedLabels {
                                reason: "unauthenticated",
                            })
                            .inc();
                        return Ok::<_, std::convert::Infallible>(
                            (
                                StatusCode::FORBIDDEN,
                                "the admission paths answer the API server only (its client certificate)\n",
                            )
                                .into_response(),
                        );
                    }
                    app.oneshot(request).await
                }
            })
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(Lingering(Some(tls))), service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = enough.notified(), if !closing => {
                    tracing::debug!(%peer, requests = REQUESTS_PER_CONNECTION, "closing the connection so that the client reconnects");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep_until(activity.idle_deadline(idle_timeout)), if !closing => {
                    if activity.idle_for() >= Some(idle_timeout) {
                        tracing::debug!(%peer, idle = ?idle_timeout, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// When a connection last had a request in flight, for closing idle connections.
#[derive(Clone)]
struct Activity(Arc<std::sync::Mutex<ActivityState>>);

struct ActivityState {
    in_flight: usize,
    last: tokio::time::Instant,
}

/// A request in flight: the connection is not idle until it is dropped.
struct Busy(Activity);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(std::sync::Mutex::new(ActivityState {
            in_flight: 0,
            last: tokio::time::Instant::now(),
        })))
    }

    fn begin(&self) -> Busy {
        self.0.lock().expect("lock").in_flight += 1;
        Busy(self.clone())
    }

    /// How long the connection has been idle; `None` while a request is in flight.
    fn idle_for(&self) -> Option<Duration> {
        let state = self.0.lock().expect("lock");
        (state.in_flight == 0).then(|| state.last.elapsed())
    }

    /// When the connection will have been idle for `timeout`, if no request comes.
    fn idle_deadline(&self, timeout: Duration) -> tokio::time::Instant {
        let state = self.0.lock().expect("lock");
        if state.in_flight == 0 {
            state.last + timeout
        } else {
            tokio::time::Instant::now() + timeout
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = (self.0).0.lock().expect("lock");
        state.in_flight -= 1;
        state.last = tokio::time::Instant::now();
    }
}

/// A client connection that, when dropped, reads what the client still sends (for up to
/// [`LINGER`]) before the socket is closed. Closing a socket with unread data makes the
/// kernel answer with a reset, which can destroy the last responses before the client has
/// read them: after a GOAWAY, the client may still be sending frames for a moment.
struct Lingering(Option<TlsStream<TcpStream>>);

/// How long a closed connection's late input is read and discarded.
const LINGER: Duration = Duration::from_secs(2);

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, async {
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let stream = self.0.as_mut().expect("present until dropped");
        std::pin::Pin::new(stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let stream = self.0.as_mut().expect("present until dropped");
        std::pin::Pin::new(stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let stream = self.0.as_mut().expect("present until dropped");
        std::pin::Pin::new(stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let stream = self.0.as_mut().expect("present until dropped");
        std::pin::Pin::new(stream).poll_shutdown(cx)
    }
}
