//! The Kubernetes API stand-in. See the crate overview for what it serves.

mod selector;
mod state;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use selector::Selector;
pub use state::{ApiError, Event, ObjectKey, State, merge_patch};

/// etcd's request size limit, which bounds an object's size.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// The API server's request body limit.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Delay added to every write (create, replace, patch, delete), like an etcd commit.
    pub write_latency: Duration,
    /// Events kept for watches to resume from; older resourceVersions get 410 Gone.
    pub history: usize,
    /// Largest accepted request body.
    pub max_object_bytes: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            write_latency: Duration::ZERO,
            history: 100_000,
            max_object_bytes: MAX_OBJECT_BYTES,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

struct App {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    options: Options,
    /// Names made from `generateName`.
    generated: AtomicU64,
    requests: AtomicU64,
    writes: AtomicU64,
    conflicts: AtomicU64,
    largest_object: AtomicU64,
}

/// A running stand-in.
pub struct ApiServer {
    addr: SocketAddr,
    app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ApiServer {
    /// Starts on an ephemeral loopback port.
    pub async fn start(options: Options) -> anyhow::Result<ApiServer> {
        ApiServer::start_on("127.0.0.1:0", options).await
    }

    /// Starts on `listen`.
    pub async fn start_on(listen: &str, options: Options) -> anyhow::Result<ApiServer> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            state: Mutex::new(State::new(options.history)),
            events: broadcast::channel(65_536).0,
            options,
            generated: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            largest_object: AtomicU64::new(0),
        });
        let router = Router::new().fallback(handle).with_state(Arc::clone(&app));
        let stop = crate::serve_until_stopped(listener, router, "API stand-in");
        Ok(ApiServer {
            addr,
            app,
            stop: Some(stop),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` for this server, configured as kube's defaults (which include
    /// retrying 429, 503 and 504 answers up to 15 times with exponential backoff).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("client for a plain-HTTP server")
    }

    /// The client configuration `client` uses, to adjust (e.g. `default_retry = false`).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("valid url"))
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Writes answered 409 Conflict (a stale resourceVersion, or injected).
    pub fn conflicts(&self) -> u64 {
        self.app.conflicts.load(Ordering::Relaxed)
    }

    /// Forgets the watch history: watches from an older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        self.app.state.lock().expect("state lock").compact();
    }

    /// Requests served, writes applied, largest object written (bytes).
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.app.requests.load(Ordering::Relaxed),
            self.app.writes.load(Ordering::Relaxed),
            self.app.largest_object.load(Ordering::Relaxed),
        )
    }

    /// Stops serving.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A parsed request path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    let t = |plural: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        resource: format!("{prefix}/{plural}"),
        namespace: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
    };
    Some(match rest {
        ["namespaces", ns, plural] => t(plural, Some(ns), None, None),
        ["namespaces", ns, plural, name] => t(plural, Some(ns), Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(plural, Some(ns), Some(name), Some(sub)),
        [plural] => t(plural, None, None, None),
        [plural, name] => t(plural, None, Some(name), None),
        [plural, name, sub] => t(plural, None, Some(name), Some(sub)),
        _ => return None,
    })
}

fn respond(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: ApiError) -> Response {
    respond(e.code, &e.status())
}

async fn handle(
    AxumState(app): AxumState<Arc<App>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    if uri.path() == "/version" {
        return respond(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-danm-testkit"}),
        );
    }
    let Some(target) = parse_path(uri.path()) else {
        return error(ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        ));
    };
    let is_write = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if is_write {
        // As the real API server: a body over 3 MiB is refused at once (413); an object
        // over etcd's 1.5 MiB request limit fails when it is stored (500).
        if body.len() > MAX_REQUEST_BYTES {
            return error(ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: limit is {MAX_REQUEST_BYTES}"),
            ));
        }
        if body.len() > app.options.max_object_bytes {
            return error(ApiError::new(
                500,
                "InternalError",
                "etcdserver: request is too large",
            ));
        }
        if !app.options.write_latency.is_zero() {
            tokio::time::sleep(app.options.write_latency).await;
        }
        return match serve_write(&app, &method, &target, &query, &headers, &body) {
            Ok((code, v)) => respond(code, &v),
            Err(e) => {
                if e.reason == "Conflict" {
                    app.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                error(e)
            }
        };
    }
    if method != Method::GET {
        return error(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
        ));
    }
    let labels = match Selector::labels(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => {
            return error(ApiError::new(
                400,
                "BadRequest",
                format!("unable to parse requirement: {e}"),
            ));
        }
    };
    let fields = match Selector::fields(query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return error(ApiError::new(400, "BadRequest", e)),
    };
    match &target.name {
        Some(name) => {
            let key = ObjectKey {
                resource: target.resource.clone(),
                namespace: target.namespace.clone().unwrap_or_default(),
                name: name.clone(),
            };
            match app.state.lock().expect("state lock").get(&key) {
                Ok(v) => respond(200, &v),
                Err(e) => error(e),
            }
        }
        None if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(app, target, query, labels, fields)
        }
        None => {
            let state = app.state.lock().expect("state lock");
            let items: Vec<Value> =
                state.list_where(&target.resource, target.namespace.as_deref(), |o| {
                    labels.matches_labels(o) && fields.matches_fields(o)
                });
            let kind = items
                .first()
                .and_then(|o| o.get("kind"))
                .and_then(Value::as_str)
                .map(|k| format!("{k}List"))
                .unwrap_or_else(|| "List".into());
            respond(
                200,
                &json!({
                    "apiVersion": target.resource.rsplit_once('/').map(|(p, _)| p.trim_start_matches("api/").trim_start_matches("apis/")).unwrap_or("v1"),
                    "kind": kind,
                    "metadata": {"resourceVersion": state.rv().to_string()},
                    "items": items,
                }),
            )
        }
    }
}

fn serve_write(
    app: &App,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(u16, Value), ApiError> {
    let _ = query;
    let parse = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut state = app.state.lock().expect("state lock");
    let (code, object, events) = match (method, &target.name) {
        (&Method::POST, None) => {
            let mut object = parse()?;
            if let Some(ns) = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                && !ns.is_empty()
                && ns != namespace
            {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!(
                        "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
                    ),
                ));
            }
            let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => match object
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                {
                    Some(prefix) => format!(
                        "{prefix}{:05x}",
                        app.generated.fetch_add(1, Ordering::Relaxed)
                    ),
                    None => {
                        return Err(ApiError::new(
                            422,
                            "Invalid",
                            "metadata.name: Required value: name or generateName is required",
                        ));
                    }
                },
            };
            object["metadata"]["name"] = json!(name);
            let key = ObjectKey {
                resource: target.resource.clone(),
                namespace,
                name,
            };
            let (v, e) = state.create(&key, object)?;
            (201, v, vec![e])
        }
        (&Method::PUT, Some(name)) => {
            let key = ObjectKey {
                resource: target.resource.clone(),
                namespace,
                name: name.clone(),
            };
            let mut object = parse()?;
            if let Some(body_name) = object.pointer("/metadata/name").and_then(Value::as_str)
                && body_name != name
            {
                return Err(ApiError::new(
                    400,
                    "BadRequest",
                    format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({name})"
                    ),
                ));
            }
            if target.subresource.as_deref() == Some("status") {
                let mut current = state.get(&key)?;
                current["status"] = object.get("status").cloned().unwrap_or(Value::Null);
                if let Some(rv) = object.pointer("/metadata/resourceVersion") {
                    current["metadata"]["resourceVersion"] = rv.clone();
                }
                object = current;
            }
            let (v, e) = state.replace(&key, object)?;
            (200, v, vec![e])
        }
        (&Method::PATCH, Some(name)) => {
            let key = ObjectKey {
                resource: target.resource.clone(),
                namespace,
                name: name.clone(),
            };
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_type.contains("json-patch") {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the stand-in supports merge patches only",
                ));
            }
            let patch = parse()?;
            let mut current = state.get(&key)?;
            let expected_rv = patch.pointer("/metadata/resourceVersion").cloned();
            merge_patch(&mut current, &patch);
            if expected_rv.is_none() {
                // Without a resourceVersion in the patch, a patch is unconditional.
                if let Some(m) = current.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
            let (v, e) = state.replace(&key, current)?;
            (200, v, vec![e])
        }
        (&Method::DELETE, Some(name)) => {
            let key = ObjectKey {
                resource: target.resource.clone(),
                namespace,
                name: name.clone(),
            };
            let precondition = if body.is_empty() {
                None
            } else {
                parse()?
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let (v, events) = state.delete(&key, precondition.as_deref())?;
            (200, v, events)
        }
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} {} is not supported", target.resource),
            ));
        }
    };
    app.writes.fetch_add(1, Ordering::Relaxed);
    app.largest_object
        .fetch_max(body.len() as u64, Ordering::Relaxed);
    for e in events {
        // Sent under the state lock, so watchers see events in resourceVersion order.
        let _ = app.events.send(e);
    }
    drop(state);
    Ok((code, object))
}

fn watch(
    app: Arc<App>,
    target: Target,
    query: HashMap<String, String>,
    labels: Selector,
    fields: Selector,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let bookmarks = matches!(
        query.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let since = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
        .filter(|rv| *rv > 0);
    let resource = target.resource.clone();
    let list_namespace = target.namespace.clone();
    let matches = move |e: &Event| {
        e.resource == target.resource
            && target
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == e.namespace)
            && labels.matches_labels(&e.object)
            && fields.matches_fields(&e.object)
    };
    let line = |kind: &str, object: &Value| {
        Ok(Bytes::from(format!(
            "{}\n",
            json!({"type": kind, "object": object})
        )))
    };
    // Take the backlog and subscribe under one lock: no event is missed or doubled.
    let (backlog, mut live, mut last_rv) = {
        let state = app.state.lock().expect("state lock");
        let live = app.events.subscribe();
        let backlog: Result<Vec<(String, Value)>, ()> = match since {
            Some(rv) => state
                .events_since(rv)
                .map(|events| {
                    events
                        .into_iter()
                        .filter(|e| matches(e))
                        .map(|e| (e.kind.to_owned(), e.object))
                        .collect()
                })
                .ok_or(()),
            None => Ok(state
                .list(&resource, list_namespace.as_deref())
                .into_iter()
                .map(|object| Event {
                    rv: 0,
                    resource: resource.clone(),
                    namespace: object
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    kind: "ADDED",
                    object,
                })
                .filter(|e| matches(e))
                .map(|e| (e.kind.to_owned(), e.object))
                .collect()),
        };
        (backlog, live, state.rv())
    };
    let kind_hint = "Status";
    tokio::spawn(async move {
        let backlog = match backlog {
            Ok(b) => b,
            Err(()) => {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {} ({})",
                        since.unwrap_or(0),
                        last_rv
                    ),
                );
                let _ = tx.send(line("ERROR", &gone.status())).await;
                return;
            }
        };
        for (kind, object) in backlog {
            if tx.send(line(&kind, &object)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(app.options.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = ticker.tick(), if bookmarks => {
                    let rv = app.state.lock().expect("state lock").rv();
                    let mark = json!({"kind": kind_hint, "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                event = live.recv() => match event {
                    Ok(e) => {
                        if e.rv <= last_rv || !matches(&e) {
                            continue;
                        }
                        last_rv = e.rv;
                        if tx.send(line(e.kind, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    // Too slow or shut down: end the watch; the client re-lists.
                    Err(_) => return,
                },
            }
        }
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("valid response")
}
