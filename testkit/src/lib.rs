//! Test-only helpers; never linked into a product binary.
//!
//! * [`control_plane`]: a real Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager, optionally kube-scheduler) built from the upstream Go modules
//!   pinned in `testkit/k8s/`, started once per test binary with generated certificates,
//!   RBAC and the danm.io CRDs: what every Kubernetes-facing test runs against.
//! * [`fault_proxy`]: an HTTP proxy in front of that API server that injects faults on
//!   demand (500s, conflicts, timeouts whose write did or did not land, dropped watches) and
//!   counts requests and writes.
//! * [`webhook`]: registering our admission webhook with the API server, and a
//!   round-robin TCP forwarder in front of several webhook processes.
//! * [`fixtures`]: manifests modelled on DANM's examples, written in this repository.
//! * [`identity`]: the identity a component under test acts as: the administrator, or
//!   (with `DANM_TESTS_AS_SERVICE_ACCOUNTS`) its ServiceAccount and RBAC from `deploy/base`.
//! * [`netns`]: network namespaces and host links, unique per process, deleted on drop.
//! * [`process`]: child processes killed however a test ends, and free loopback ports.
//! * [`pods`]: pods bound to a node whose container never runs, made Ready or not.
//! * [`pki`]: test CAs and the server and client certificates they issue, as PEM files.
//! * [`cni`]: a CNI plugin binary run as a container runtime runs it.
//! * [`metrics_doc`]: keeps `docs/metrics.md` naming every series the binaries serve.
//! * [`image`]: container images assembled from files (a docker archive, as `docker save`
//!   writes), since no container engine runs here and no registry is reachable.

pub mod cni;
pub mod control_plane;
pub mod fault_proxy;
pub mod fixtures;
pub mod identity;
pub mod image;
pub mod metrics_doc;
pub mod netns;
pub mod pki;
pub mod pods;
pub mod process;
pub mod webhook;

/// Serves `router` on `listener` in a task until the returned sender is used or dropped,
/// with TCP_NODELAY on every connection, as Go's net/http (the real API server) does.
pub(crate) fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    what: &'static str,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    stop
}

/// A kustomization in a temporary folder, as an operator writes one: `deploy/<overlay>` as
/// its resource and `deploy/components/<c>` for each of `components` (by relative paths:
/// kustomize takes no absolute ones). Build or apply the returned folder.
pub fn kustomization_with(overlay: &str, components: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/");
    let up = dir
        .path()
        .canonicalize()
        .expect("the temporary folder")
        .components()
        .count()
        - 1;
    let relative = std::path::Path::new(&"../".repeat(up))
        .join(deploy.strip_prefix("/").expect("an absolute path"));
    let listed: String = components
        .iter()
        .map(|c| format!("- {}\n", relative.join("components").join(c).display()))
        .collect();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\ncomponents:\n{listed}",
            relative.join(overlay).display(),
        ),
    )
    .expect("the kustomization");
    dir
}

/// `kubectl kustomize <dir>` with the test control plane's kubectl (built, not started):
/// the YAML it prints; a panic with kubectl's error when the build fails.
pub fn kustomize(dir: &std::path::Path) -> String {
    let kubectl = control_plane::binaries()
        .expect("the test control plane's binaries")
        .join("kubectl");
    let out = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 YAML")
}
