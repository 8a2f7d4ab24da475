//! SIGTERM while admissions are in flight, on the real API server: a webhook process gets
//! a steady stream of TenantNetwork CREATE reviews, each of which records a VLAN id in
//! the TenantConfig before it is answered (through the fault proxy, which slows every
//! write by 200 ms, so that SIGTERM always finds reviews half-way), on one HTTP/2
//! connection as the API server sends them. The webhook answers every review it had
//! taken, refuses the rest (its listener closed: connection refused), exits 0, and leaves
//! nothing half-written: the TenantConfig holds an id for exactly the reviews that were
//! answered. No other webhook runs and the grace period is long, so no reconciliation
//! hides a leftover.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use danm_crds::{NetworkSpec, TenantConfig, TenantNetwork, TenantNetworkSpec};
use danm_testkit::control_plane::{ControlPlane, free_port};
use danm_testkit::fault_proxy::FaultProxy;
use danm_testkit::{fixtures, identity};
use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Callers sending reviews at once, one after another each.
const CALLERS: usize = 16;
/// SIGTERM once this many reviews are answered.
const ANSWERED_BEFORE_TERM: usize = 40;

/// A TenantNetwork CREATE review for `namespace/name`.
fn create_review(namespace: &str, name: &str) -> Value {
    let mut tn = TenantNetwork::new(
        name,
        TenantNetworkSpec {
            network: NetworkSpec {
                network_id: name.into(),
                network_type: "ipvlan".into(),
                ..Default::default()
            },
        },
    );
    tn.metadata.namespace = Some(namespace.into());
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{namespace}-{name}"),
            "kind": {"group": "danm.io", "version": "v1", "kind": "TenantNetwork"},
            "resource": {"group": "danm.io", "version": "v1", "resource": "tenantnetworks"},
            "name": name, "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": tn,
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// How the reviews ended.
#[derive(Default)]
struct Outcomes {
    /// Set once SIGTERM has been sent.
    terminated: AtomicBool,
    /// `namespace/name` of every review answered (allowed, with an id).
    answered: Mutex<BTreeSet<String>>,
    /// Reviews answered after SIGTERM was sent: the ones in flight.
    answered_after_term: AtomicUsize,
    /// `namespace/name`, error, and whether it failed to connect, of every review that
    /// got no answer.
    refused: Mutex<Vec<(String, String, bool)>>,
}

/// Sends reviews one after another, on `client`, until one gets no answer.
async fn caller(
    client: reqwest::Client,
    url: String,
    namespace: String,
    caller: usize,
    outcomes: Arc<Outcomes>,
) {
    for n in 0.. {
        let name = format!("tn-{caller}-{n}");
        let network = format!("{namespace}/{name}");
        let sent = client
            .post(&url)
            .json(&create_review(&namespace, &name))
            .send()
            .await;
        let answer = match sent {
            Ok(r) => {
                assert_eq!(r.status(), 200, "{network}");
                assert_eq!(
                    r.version(),
                    reqwest::Version::HTTP_2,
                    "as the API server calls"
                );
                r.json::<Value>().await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(review) => {
                let response = &review["response"];
                assert_eq!(response["allowed"], true, "{network}: {review}");
                // The JSONPatch (bytes, as kube serializes it) sets the VLAN id.
                let patch: Vec<u8> = serde_json::from_value(response["patch"].clone())
                    .unwrap_or_else(|e| panic!("{network}: no patch ({e}): {review}"));
                let patch = String::from_utf8(patch).unwrap();
                assert!(patch.contains("/spec/Options/vlan"), "{network}: {patch}");
                if outcomes.terminated.load(Ordering::SeqCst) {
                    outcomes.answered_after_term.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.answered.lock().await.insert(network);
            }
            Err(e) => {
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(&format!(": {s}"));
                    source = s.source();
                }
                let connect = e.is_connect();
                outcomes
                    .refused
                    .lock()
                    .await
                    .push((network, chain, connect));
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_reviews_in_flight_and_leaves_nothing_half_written() {
    let plane = ControlPlane::shared().await;
    let proxy = FaultProxy::start(plane).await.unwrap();
    proxy
        .faults()
        .write_latency_ms
        .store(200, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let as_webhook = identity::kubeconfig_for(plane, "webhook", &[]).await;
    std::fs::write(
        &kubeconfig,
        identity::through_proxy(&as_webhook, &proxy.url()),
    )
    .unwrap();
    let cert = plane.serving_cert(&["127.0.0.1", "localhost"]);
    std::fs::write(dir.path().join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &cert.key_pem).unwrap();
    // DANM's good TenantConfig (no webhook is registered: it is not reviewed).
    plane
        .kubectl_apply(&fixtures::read("4_0_examples/1_good_tconf.yaml"))
        .unwrap();
    let namespace = plane.namespace("sigterm").await;

    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Reservations no TenantNetwork carries (all of this test's: it creates none) stay
    // for 10 minutes: a leftover stays visible.
    let command = common::webhook_command(plane, &kubeconfig, port, dir.path(), 600);
    let mut webhook = plane.spawn_beside("webhook-sigterm", command).unwrap();
    common::wait_ready(plane, addr, &mut webhook).await;

    // One HTTP/2 connection (TLS ALPN) carrying every caller's reviews, as the API server
    // calls a webhook.
    let client = common::https(plane);
    let outcomes = Arc::new(Outcomes::default());
    let url = format!("https://{addr}/netvalidation");
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (client, url, namespace) = (client.clone(), url.clone(), namespace.clone());
            tokio::spawn(caller(client, url, namespace, i, outcomes.clone()))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outcomes.answered.lock().await.len() < ANSWERED_BEFORE_TERM {
        assert!(
            Instant::now() < deadline,
            "too few reviews answered:\n{}",
            webhook.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = webhook.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
    outcomes.terminated.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = webhook.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = webhook.log();
    assert!(status.success(), "exited with {status}:\n{log}");
    let graceful = log
        .lines()
        .any(|l| l.contains("danm_runtime") && l.contains("shutting down"));
    assert!(graceful, "no graceful shutdown in the log:\n{log}");
    assert!(!log.contains("did not finish in time"), "{log}");
    for c in callers {
        c.await.unwrap();
    }

    let answered = outcomes.answered.lock().await.clone();
    let refused = outcomes.refused.lock().await.clone();
    let after = outcomes.answered_after_term.load(Ordering::Relaxed);
    println!(
        "{} reviews answered ({after} after SIGTERM), {} refused: {refused:?}",
        answered.len(),
        refused.len()
    );
    assert!(after > 0, "no review in flight at SIGTERM was answered");
    // A review went unanswered only when the webhook never took it: its connection was
    // refused (the listener closed), never cut off in flight.
    let cut: Vec<_> = refused.iter().filter(|(_, _, connect)| !connect).collect();
    assert!(cut.is_empty(), "reviews cut off in flight: {cut:?}");

    // Exactly the answered reviews hold an id: none answered without its id recorded, none
    // recorded without its answer.
    let config = Api::<TenantConfig>::all(plane.client().await)
        .get("tconf")
        .await
        .unwrap();
    let recorded: BTreeSet<String> = danm_core::admit::vni::reservations(&config)
        .into_iter()
        .map(|held| held.holder.network)
        .filter(|network| network.starts_with(&format!("{namespace}/")))
        .collect();
    let unanswered: Vec<&String> = recorded.difference(&answered).collect();
    let unrecorded: Vec<&String> = answered.difference(&recorded).collect();
    assert!(
        unanswered.is_empty() && unrecorded.is_empty(),
        "ids recorded for unanswered reviews: {unanswered:?}; answered without a record: {unrecorded:?}"
    );
}
