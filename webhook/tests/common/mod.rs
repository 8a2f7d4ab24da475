//! The webhook's test bed: the real control plane, two webhook processes behind a TCP
//! round-robin forwarder (a Service in front of a Deployment's replicas; each
//! webhook closes a connection after 64 requests, so the API server's calls reach both),
//! registered with `deploy/base/webhook/webhook-configurations.yaml`
//! (clientConfig pointed at the forwarder), and DANM's `1_good_tconf` as the TenantConfig.
//!
//! The webhooks act as `danm_testkit::identity` says: the administrator, or with
//! `DANM_TESTS_AS_SERVICE_ACCOUNTS` the danm-webhook ServiceAccount of `deploy/base`. The
//! test's own requests stay the administrator's.
//!
//! As `deploy/components/apiserver-client-auth` configures them, the webhooks answer the
//! admission paths only for the API server's client certificate (the test control plane
//! presents one, CN [`WEBHOOK_CLIENT`]); the tests' own HTTPS client ([`https`]) presents
//! one too.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use danm_crds::{TenantConfig, TenantNetwork};
use danm_testkit::control_plane::{ControlPlane, Spawned, free_port};
use danm_testkit::fixtures;
use danm_testkit::identity;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::sync::OnceCell;

/// Reservations no TenantNetwork carries are freed this long after they were made.
pub const GRACE_SECONDS: u64 = 3;

/// See the module overview.
#[derive(Debug)]
pub struct Bed {
    pub plane: &'static ControlPlane,
    /// The two webhooks' own addresses.
    pub replicas: Vec<SocketAddr>,
    /// The plain-HTTP admin server (`--admin-listen`: /metrics, /healthz, /readyz) of the
    /// first webhook, `replicas[0]`.
    pub admin: SocketAddr,
    pub processes: std::sync::Mutex<Vec<Spawned>>,
    /// Where the API server calls them.
    pub forwarder: SocketAddr,
    pub cert_dir: PathBuf,
}

static BED: OnceCell<Bed> = OnceCell::const_new();

/// The bed, set up on first use.
pub async fn bed() -> &'static Bed {
    BED.get_or_init(setup).await
}

/// Starts a webhook process on `port` with the certificate files in `cert_dir`, acting as
/// the webhook's identity.
pub async fn start_webhook(
    plane: &ControlPlane,
    name: &str,
    port: u16,
    cert_dir: &std::path::Path,
) -> Spawned {
    let kubeconfig = identity::kubeconfig_for(plane, "webhook", &[]).await;
    start_webhook_on(plane, &kubeconfig, name, port, cert_dir, None)
}

/// The common name of the API server's client certificate towards webhooks.
pub use danm_testkit::control_plane::WEBHOOK_CLIENT;

/// [`start_webhook`], talking to the API server through `kubeconfig`, with its admin
/// server on `admin` if given.
pub fn start_webhook_on(
    plane: &ControlPlane,
    kubeconfig: &std::path::Path,
    name: &str,
    port: u16,
    cert_dir: &std::path::Path,
    admin: Option<SocketAddr>,
) -> Spawned {
    let mut command = webhook_command(plane, kubeconfig, port, cert_dir, GRACE_SECONDS);
    if let Some(admin) = admin {
        command.args(["--admin-listen", &admin.to_string()]);
    }
    plane
        .spawn_beside(name, command)
        .expect("the webhook starts")
}

/// The webhook's command line: on `127.0.0.1:port` with the certificate files in
/// `cert_dir`, talking to the API server through `kubeconfig`, freeing reservations no
/// TenantNetwork carries after `grace_seconds` (reconciled every second), answering the
/// admission paths for the control plane's webhook client certificate only.
pub fn webhook_command(
    plane: &ControlPlane,
    kubeconfig: &std::path::Path,
    port: u16,
    cert_dir: &std::path::Path,
    grace_seconds: u64,
) -> Command {
    let client_ca = cert_dir.join("apiserver-client-ca.pem");
    std::fs::write(&client_ca, plane.ca_pem()).expect("the client CA's file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_webhook"));
    command
        .arg("--client-ca")
        .arg(&client_ca)
        .args(["--client-name", WEBHOOK_CLIENT]);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", "info,danm_webhook=debug")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(cert_dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(cert_dir.join("tls.key"))
        .args(["--tls-reload-seconds", "1"])
        .args(["--reservation-grace-seconds", &grace_seconds.to_string()])
        .args(["--reconcile-seconds", "1"]);
    command
}

/// An HTTPS client trusting the control plane's CA, presenting the API server's client
/// certificate (as the API server calls webhooks).
pub fn https(plane: &ControlPlane) -> reqwest::Client {
    let client = plane.client_cert(WEBHOOK_CLIENT);
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(plane.ca_pem().as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(
                format!("{}{}", client.cert_pem, client.key_pem).as_bytes(),
            )
            .unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An HTTPS client trusting the control plane's CA, presenting no certificate (anyone who
/// reaches a node's port), its connections from `source` (a loopback address of its own,
/// so that the webhook's limits per address tell it from the API server).
pub fn anonymous_https(plane: &ControlPlane, source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(plane.ca_pem().as_bytes()).unwrap())
        .local_address(source)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Waits until `https://addr/readyz` answers 200.
pub async fn wait_ready(plane: &ControlPlane, addr: SocketAddr, process: &mut Spawned) {
    let client = https(plane);
    for _ in 0..300 {
        if let Some(status) = process.exited() {
            panic!("webhook exited ({status}):\n{}", process.log_tail(40));
        }
        if let Ok(r) = client.get(format!("https://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("webhook on {addr} never ready:\n{}", process.log_tail(40));
}

/// `deploy/base/webhook/webhook-configurations.yaml`.
pub fn configurations() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base/webhook/webhook-configurations.yaml")
}

async fn setup() -> Bed {
    let plane = ControlPlane::shared().await;
    let kubeconfig = identity::kubeconfig_for(plane, "webhook", &[]).await;
    setup_on(plane, &kubeconfig).await
}

/// A bed whose webhooks talk to the API server through `kubeconfig` (the webhook's
/// identity's, or a fault proxy's).
pub async fn setup_on(plane: &'static ControlPlane, kubeconfig: &std::path::Path) -> Bed {
    let cert = plane.serving_cert(&["127.0.0.1", "localhost"]);
    let cert_dir = std::env::temp_dir().join(format!("danm-webhook-test-{}", std::process::id()));
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(cert_dir.join("tls.key"), &cert.key_pem).unwrap();

    let ports = [free_port(), free_port()];
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut processes: Vec<Spawned> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            // One admin server is enough to test it; a second would need its own port.
            let admin = (i == 0).then_some(admin);
            let name = format!("webhook-{i}");
            start_webhook_on(plane, kubeconfig, &name, *port, &cert_dir, admin)
        })
        .collect();
    let replicas: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    for (addr, process) in replicas.iter().zip(processes.iter_mut()) {
        wait_ready(plane, *addr, process).await;
    }
    let forwarder = danm_testkit::webhook::round_robin(replicas.clone()).unwrap();
    danm_testkit::webhook::register(plane, &configurations(), forwarder)
        .await
        .unwrap();

    let bed = Bed {
        plane,
        replicas,
        admin,
        processes: std::sync::Mutex::new(processes),
        forwarder,
        cert_dir,
    };
    // DANM's good TenantConfig (valid, whether or not the registration is loaded yet).
    plane
        .kubectl_apply(&fixtures::read("4_0_examples/1_good_tconf.yaml"))
        .expect("1_good_tconf is admitted");
    wait_registered(plane).await;
    bed
}

/// Waits until the API server calls the webhooks: DANM's wrong TenantConfig is refused,
/// and a dry-run TenantNetwork gets a VLAN.
async fn wait_registered(plane: &ControlPlane) {
    let wrong = fixtures::read("4_0_examples/0_wrong_tconf.yaml");
    let client = plane.client().await;
    let tns: Api<TenantNetwork> = Api::namespaced(client.clone(), "default");
    let probe: TenantNetwork =
        serde_saphyr::from_str(&fixtures::read("4_0_examples/3_chosen_device.yaml")).unwrap();
    for _ in 0..300 {
        let tc: TenantConfig = serde_saphyr::from_str(&wrong).unwrap();
        let refused = match Api::<TenantConfig>::all(client.clone())
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &tc,
            )
            .await
        {
            Err(kube::Error::Api(e)) => e.message.contains("vniRange"),
            _ => false,
        };
        let mutated = tns
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &probe,
            )
            .await
            .is_ok_and(|tn| tn.spec.network.options.vlan.is_some());
        if refused && mutated {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the API server never called the webhooks");
}

/// Every reservation of the TenantConfig `tconf` held by TenantNetworks of `namespace`:
/// (profile, id, token).
pub async fn reservations_of(
    plane: &ControlPlane,
    namespace: &str,
) -> Vec<(String, String, String)> {
    let tc = Api::<TenantConfig>::all(plane.client().await)
        .get("tconf")
        .await
        .unwrap();
    danm_core::admit::vni::reservations(&tc)
        .into_iter()
        .filter(|h| h.holder.network.starts_with(&format!("{namespace}/")))
        .map(|h| (h.profile, h.id, h.holder.token))
        .collect()
}

/// Waits (up to `seconds`) until `check` holds.
pub async fn eventually<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never happened within {seconds} s: {what}");
}

/// Deletes every TenantNetwork of `namespace`.
pub async fn delete_tenant_networks(plane: &ControlPlane, namespace: &str) {
    let api: Api<TenantNetwork> = Api::namespaced(plane.client().await, namespace);
    for tn in api.list(&Default::default()).await.unwrap() {
        let name = tn.metadata.name.unwrap();
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

/// Runs the control plane's kubectl with `args` and `stdin`: whether it succeeded, and
/// what it printed on stderr.
pub fn kubectl(plane: &ControlPlane, args: &[&str], stdin: &str) -> (bool, String) {
    match plane.kubectl_with_input(args, stdin) {
        Ok(_) => (true, String::new()),
        Err(stderr) => (false, stderr),
    }
}
