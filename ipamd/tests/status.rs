//! The networks' `status` on the real API server, written by two ipamd binaries as deployed
//! (`--store kube`, each with the danm-ipamd ServiceAccount's rights under
//! `DANM_TESTS_AS_SERVICE_ACCOUNTS`): one replica, elected by the status Lease, writes every
//! network's pools, `Ready` condition and the nodes' link reports summed; `kubectl get
//! danmnets` shows them in its columns;
//! a refused network says which field and rule; writes are rate-limited; when the writer
//! stops, the other replica takes over.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danm_crds::{
    DanmNet, LinkFailure, LinkSummary, NetworkStatus, NodeLinkReport, NodeLinkReportSpec,
};
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::identity;
use danm_testkit::process::{KillOnDrop, free_addr};
use kube::api::{Api, PostParams};

struct Replica {
    process: KillOnDrop,
    listen: String,
    admin: String,
    log: tempfile::NamedTempFile,
}

async fn start_replica(
    plane: &ControlPlane,
    ipamd_namespace: &str,
    name: &str,
    interval: &str,
) -> Replica {
    let listen = free_addr();
    let admin = free_addr();
    let log = tempfile::NamedTempFile::new().unwrap();
    let kubeconfig = identity::kubeconfig_for(plane, "ipamd", &[ipamd_namespace]).await;
    let process = Command::new(env!("CARGO_BIN_EXE_ipamd"))
        .args(["--store", "kube", "--namespace", ipamd_namespace])
        .args(["--listen", &listen, "--admin-listen", &admin])
        .args(["--orphan-grace-seconds", "0"])
        .args(["--status-interval-seconds", interval])
        .args(["--identity", name])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("NO_COLOR", "1")
        .stderr(log.reopen().unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Replica {
        process: KillOnDrop(process),
        listen,
        admin,
        log,
    }
}

fn sig(ns: &str) -> Option<pb::NetworkRef> {
    Some(pb::NetworkRef {
        kind: pb::NetworkKind::DanmNet as i32,
        namespace: ns.into(),
        name: "sig".into(),
    })
}

fn owner(ns: &str, cid: &str) -> Option<pb::Owner> {
    Some(pb::Owner {
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod_namespace: ns.into(),
        pod_name: format!("pod-{cid}"),
        ..Default::default()
    })
}

impl Replica {
    /// `danm_ipamd_status_writes_total`, or None while the admin port does not answer.
    async fn status_writes(&self) -> Option<u64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("danm_ipamd_status_writes_total "))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn allocate(&self, ns: &str, cid: &str) -> Result<pb::AllocateResponse, String> {
        let mut client = IpamClient::connect(format!("http://{}", self.listen))
            .await
            .map_err(|e| e.to_string())?;
        client
            .allocate(pb::AllocateRequest {
                network: sig(ns),
                owner: owner(ns, cid),
                ip: "dynamic".into(),
                ip6: "dynamic".into(),
            })
            .await
            .map(|a| a.into_inner())
            .map_err(|e| e.to_string())
    }

    async fn release(&self, ns: &str, cid: &str) {
        let mut client = IpamClient::connect(format!("http://{}", self.listen))
            .await
            .unwrap();
        client
            .release(pb::ReleaseRequest {
                network: sig(ns),
                owner: owner(ns, cid),
            })
            .await
            .unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// Waits until the status of `ns/name` passes `check`, which says what it waits for.
async fn wait_status(
    api: &Api<DanmNet>,
    name: &str,
    what: &str,
    check: impl Fn(&DanmNet, &NetworkStatus) -> bool,
) -> DanmNet {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let net = api.get(name).await.unwrap();
        if let Some(status) = &net.status
            && check(&net, status)
        {
            return net;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} within 60 s; status: {:?}",
            net.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(status: &NetworkStatus) -> (&str, &str, &str) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_elected_replica_writes_every_networks_status_and_kubectl_shows_it() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("status").await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: sig, namespace: {ns}}}\nspec: {{NetworkID: sig, NetworkType: macvlan, Options: {{cidr: 10.79.0.0/24, net6: 'fd00:79::/64'}}}}\n\
             ---\napiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: broken, namespace: {ns}}}\nspec: {{NetworkID: broken, NetworkType: macvlan, Options: {{cidr: 10.79.1.0/33}}}}\n"
        ))
        .unwrap();
    let a = start_replica(plane, &ipamd_namespace, "replica-a", "2").await;
    let b = start_replica(plane, &ipamd_namespace, "replica-b", "2").await;
    let api: Api<DanmNet> = Api::namespaced(plane.client().await, &ns);

    // Before any allocation: the pools, empty, and Ready.
    let net = wait_status(&api, "sig", "Ready with its pools", |_, s| {
        ready(s).0 == "True" && s.ipv4.is_some() && s.ipv6.is_some()
    })
    .await;
    let status = net.status.clone().unwrap();
    assert_eq!(status.observed_generation, net.metadata.generation);
    assert_eq!(ready(&status), ("True", "Served", ""));
    assert_eq!(status.ipv4.as_ref().unwrap().capacity, "254");
    assert_eq!(status.ipv4.as_ref().unwrap().used, 0);
    assert_eq!(
        status.ipv6.as_ref().unwrap().capacity,
        ((1u64 << 22) - 2).to_string()
    );

    // A refused network says which field, and under which rule.
    let broken = wait_status(&api, "broken", "refused", |_, s| ready(s).0 == "False").await;
    let (_, reason, message) = ready(broken.status.as_ref().unwrap());
    assert_eq!(reason, "Invalid");
    assert!(message.starts_with("spec.Options.cidr: "), "{message}");
    assert!(broken.status.as_ref().unwrap().ipv4.is_none());

    // Allocations through either replica are counted from the shards.
    for i in 0..3 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match replica.allocate(&ns, &format!("cid-{i}")).await {
                Ok(answer) => {
                    assert!(answer.ip.starts_with("10.79.0."), "{answer:?}");
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no allocation within 30 s: {e}\n{}",
                    replica.log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_status(&api, "sig", "3 used", |_, s| {
        s.ipv4.as_ref().is_some_and(|p| p.used == 3) && s.ipv6.as_ref().is_some_and(|p| p.used == 3)
    })
    .await;

    // The nodes' link reports (netwatcher's) are summed into status.links.
    let reports = Api::<NodeLinkReport>::all(plane.client().await);
    let sig = format!("DanmNet {ns}/sig");
    for (node, spec) in [
        (
            "status-node-1",
            NodeLinkReportSpec {
                ready: vec![sig.clone()],
                ready_count: 1,
                ..NodeLinkReportSpec::default()
            },
        ),
        (
            "status-node-2",
            NodeLinkReportSpec {
                failing: vec![LinkFailure {
                    network: sig.clone(),
                    reason: "HostDeviceMissing: no device ens9".into(),
                }],
                failing_count: 1,
                ..NodeLinkReportSpec::default()
            },
        ),
    ] {
        reports
            .create(&PostParams::default(), &NodeLinkReport::new(node, spec))
            .await
            .unwrap();
    }
    let net = wait_status(&api, "sig", "with its links", |_, s| s.links.is_some()).await;
    assert_eq!(
        net.status.unwrap().links,
        Some(LinkSummary {
            nodes_ready: 1,
            nodes_failing: 1,
            first_failure: "status-node-2: HostDeviceMissing: no device ens9".into(),
        })
    );
    // The reports gone, the summary goes too: the status is replaced, not merged.
    for node in ["status-node-1", "status-node-2"] {
        reports.delete(node, &Default::default()).await.unwrap();
    }
    wait_status(&api, "sig", "without links", |_, s| s.links.is_none()).await;

    // One replica writes; the other only waits for the Lease.
    let writes = (a.status_writes().await, b.status_writes().await);
    let (writer, standby, writer_writes) = match writes {
        (Some(n), Some(0)) if n > 0 => (a, b, n),
        (Some(0), Some(n)) if n > 0 => (b, a, n),
        other => panic!(
            "expected exactly one replica to write statuses, got {other:?}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        ),
    };

    // kubectl shows the status in the network's columns, as `kubectl get sp` does.
    let table = plane
        .kubectl()
        .args(["get", "danmnets", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    // Columns are read at their header's offset: empty cells (VLAN, VxLAN) are blank.
    let header = table.lines().next().unwrap();
    for column in ["READY", "USED", "CAPACITY"] {
        assert!(header.split_whitespace().any(|h| h == column), "{table}");
    }
    let cell = |name: &str, column: &str| -> String {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in\n{table}"));
        let at = header.find(&format!("{column} ")).unwrap();
        line[at..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        (
            cell("sig", "READY"),
            cell("sig", "USED"),
            cell("sig", "CAPACITY")
        ),
        ("True".to_owned(), "3".to_owned(), "254".to_owned()),
        "{table}"
    );
    assert_eq!(cell("broken", "READY"), "False", "{table}");
    let wide = plane
        .kubectl()
        .args(["get", "danmnets", "-n", &ns, "-o", "wide"])
        .output()
        .unwrap();
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    assert!(
        wide.lines().next().unwrap().contains("REASON")
            && wide
                .lines()
                .any(|l| l.starts_with("broken ") && l.contains("Invalid")),
        "{wide}"
    );

    // A burst of allocations is written at most once per interval (2 s) per network.
    let started = Instant::now();
    for i in 3..23 {
        writer.allocate(&ns, &format!("cid-{i}")).await.unwrap();
    }
    wait_status(&api, "sig", "23 used", |_, s| {
        s.ipv4.as_ref().is_some_and(|p| p.used == 23)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let burst_writes = writer.status_writes().await.unwrap() - writer_writes;
    assert!(
        (burst_writes as f64) <= elapsed / 2.0 + 2.0,
        "{burst_writes} status writes in {elapsed:.1} s with a 2 s interval"
    );

    // The writer stops (SIGTERM releases the Lease): the other replica takes over.
    let pid = writer.process.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let mut writer = writer;
    let _ = writer.process.0.wait();
    standby.release(&ns, "cid-0").await;
    wait_status(&api, "sig", "22 used after the takeover", |_, s| {
        s.ipv4.as_ref().is_some_and(|p| p.used == 22)
    })
    .await;
    assert!(
        standby.status_writes().await.unwrap() > 0,
        "{}",
        standby.log()
    );
}
