//! `cleaner --watch` as a replicated Deployment runs it: two replicas, one Lease; only the
//! holder cleans, the other takes over when the holder is killed, both serve their metrics,
//! and SIGTERM stops a replica cleanly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bed, TURN};
use danm_core::OwnerKey;
use danm_crds::DanmEp;
use danm_testkit::process::{KillOnDrop, free_addr};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

struct Replica {
    identity: String,
    admin: String,
    child: KillOnDrop,
}

fn replica(bed: &Bed, identity: &str, lease: &str) -> Replica {
    let admin = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_cleaner"))
        .args(["--watch", "--interval", "1s", "--grace", "0s"])
        .args(["--ipamd", &bed.ipamd_url, "--admin-listen", &admin])
        .args([
            "--namespace",
            &bed.ns,
            "--lease",
            lease,
            "--identity",
            identity,
        ])
        .env("KUBECONFIG", &bed.cleaner_kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        identity: identity.into(),
        admin,
        child: KillOnDrop(child),
    }
}

/// deploy/ runs the cleaner as a CronJob (`--once`), so its ServiceAccount has no Lease.
/// Run as it (`DANM_TESTS_AS_SERVICE_ACCOUNTS`), `--watch` gets what
/// `deploy/base/cleaner/rbac.yaml` says a Deployment with `--watch` needs, in the bed's
/// namespace: get and patch on the one Lease, create (not restrictable by name). That
/// proves the comment, and the rest of the cleaner's access still comes from the manifests.
fn grant_the_lease(bed: &Bed, lease: &str) {
    if !danm_testkit::identity::as_service_accounts() {
        return;
    }
    let ns = &bed.ns;
    bed.plane
        .kubectl_apply(&format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: danm-cleaner-lease, namespace: {ns}}}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{lease}]
  verbs: [get, patch]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: danm-cleaner-lease, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: danm-cleaner-lease}}
subjects:
- {{kind: ServiceAccount, name: danm-cleaner, namespace: danm-system}}
"#
        ))
        .unwrap();
}

/// The admin server's `/metrics`, once it answers.
const FREED: &str = "danm_cleaner_freed_total{reason=\"pod-gone\"}";

async fn metrics(admin: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = scrape(admin).await {
            return text;
        }
        assert!(Instant::now() < deadline, "no /metrics on {admin}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scrape(admin: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The metrics once `series` reaches `at_least`: a pass counts its frees after its deletes,
/// so the DanmEp can be gone a moment before the counter moves.
async fn metrics_once(admin: &str, series: &str, at_least: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(admin).await;
        if count(&text, series) >= at_least || Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn holder(bed: &Bed, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(bed.client.clone(), &bed.ns)
        .get_opt(lease)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

/// Leaks one DanmEp (a pod that never existed) and waits until a cleaner frees it.
async fn leak_and_wait(bed: &Bed, net: &danm_proto::v1::NetworkRef, cid: &str, within: Duration) {
    bed.allocate(net, cid, &format!("pod-{cid}"), "uid", "", "dynamic", "")
        .await
        .unwrap();
    let name = OwnerKey::new(cid, "eth0").unwrap().endpoint_name();
    let api = Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns);
    let deadline = Instant::now() + within;
    while api.get_opt(&name).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "{cid} was not cleaned within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_cleans_and_the_other_takes_over_when_it_dies() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("watch").await;
    let net = bed.danmnet("watch", "10.87.0.0/24", None).await;
    let lease = "danm-cleaner";
    grant_the_lease(&bed, lease);
    let mut replicas = vec![
        replica(&bed, "replica-a", lease),
        replica(&bed, "replica-b", lease),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(h) = holder(&bed, lease).await {
            break h;
        }
        assert!(Instant::now() < deadline, "nobody took the Lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    leak_and_wait(&bed, &net, "cid-1", Duration::from_secs(30)).await;
    let (lead, other): (Vec<Replica>, Vec<Replica>) =
        replicas.drain(..).partition(|r| r.identity == leader);
    let (lead, mut other) = (
        lead.into_iter().next().unwrap(),
        other.into_iter().next().unwrap(),
    );
    metrics_once(&lead.admin, FREED, 1).await;
    let lead_metrics = metrics_once(&lead.admin, "danm_cleaner_passes_total", 1).await;
    assert_eq!(count(&lead_metrics, FREED), 1, "{lead_metrics}");
    assert!(count(&lead_metrics, "danm_cleaner_passes_total") >= 1);
    let other_metrics = metrics(&other.admin).await;
    assert_eq!(
        count(&other_metrics, "danm_cleaner_passes_total"),
        0,
        "the replica without the Lease does not clean: {other_metrics}"
    );

    // The holder dies without releasing the Lease: the other takes over once it expires.
    drop(lead);
    leak_and_wait(&bed, &net, "cid-2", Duration::from_secs(60)).await;
    assert_eq!(
        holder(&bed, lease).await.as_deref(),
        Some(other.identity.as_str())
    );
    let took_over = metrics_once(&other.admin, FREED, 1).await;
    assert_eq!(count(&took_over, FREED), 1, "{took_over}");

    // SIGTERM: the replica stops cleanly and gives the Lease up.
    let pid = other.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = other.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    assert_eq!(holder(&bed, lease).await, None, "the Lease is released");
}
