//! The HTTPS server: DANM's three admission paths, `/metrics`, `/healthz` and `/readyz`,
//! over rustls, HTTP/1.1 and HTTP/2.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::ServiceExt as _;

use crate::review::{Admission, Path};
use danm_runtime::tls::ReloadingCert;

/// Largest AdmissionReview accepted: a TenantConfig and its old copy, each up to etcd's
/// 1.5 MiB object limit, with room to spare.
const BODY_LIMIT: usize = 16 << 20;
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
        .with_state(admission)
}

/// Serves `app` over TLS on `listener` until `shutdown`, then lets in-flight requests finish
/// (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP/2 first: the API server multiplexes its calls on one connection.
    let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config(&alpn, None)));
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
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Replies are small writes; without this, Nagle's algorithm and the API
                // server's delayed ACKs add ~40 ms to an admission.
                let _ = tcp.set_nodelay(true);
                let connection = Connection {
                    acceptor: acceptor.clone(),
                    builder: builder.clone(),
                    app: app.clone(),
                    stopping: stopping.clone(),
                    _open: open.clone(),
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

/// One client connection.
struct Connection {
    acceptor: TlsAcceptor,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    app: Router,
    stopping: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream, peer: SocketAddr) {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let served = Arc::new(AtomicU32::new(0));
        let enough = Arc::new(Notify::new());
        let service = {
            let (served, enough, app) = (served.clone(), enough.clone(), self.app.clone());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                if served.fetch_add(1, Ordering::Relaxed) + 1 == REQUESTS_PER_CONNECTION {
                    enough.notify_one();
                }
                app.clone().oneshot(request)
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
            }
        }
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
