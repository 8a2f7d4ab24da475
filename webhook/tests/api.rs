//! The webhook through the real API server: DANM's 4_0 examples, two replicas handing out
//! ids concurrently, dry runs, a create refused after admission, the TenantConfig's
//! reservations kept, the delete and update guards, malformed reviews, certificate reload,
//! metrics.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{bed, delete_tenant_networks, eventually, https, reservations_of};
use danm_core::admit::vni::VNI_RESERVATION_ANNOTATION;
use danm_crds::{
    DanmEp, DanmEpSpec, DanmNet, NetworkOptions, NetworkSpec, TenantNetwork, TenantNetworkSpec,
};
use danm_testkit::fixtures;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

fn example(name: &str, namespace: &str) -> String {
    fixtures::read(&format!("4_0_examples/{name}.yaml"))
        .replace("namespace: default", &format!("namespace: {namespace}"))
}

fn tenant_network(name: &str, network_id: &str) -> TenantNetwork {
    TenantNetwork::new(
        name,
        TenantNetworkSpec {
            network: NetworkSpec {
                network_id: network_id.into(),
                network_type: "ipvlan".into(),
                ..Default::default()
            },
        },
    )
}

/// (device, id) of a TenantNetwork.
fn device_and_vlan(tn: &TenantNetwork) -> (String, i64) {
    let o = &tn.spec.network.options;
    (
        o.host_device.clone().unwrap_or_default(),
        o.vlan.expect("a VLAN id"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn danm_4_0_examples_are_refused_or_mutated_as_danm_documents() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("examples").await;
    let tns: Api<TenantNetwork> = Api::namespaced(plane.client().await, &ns);

    let err = plane
        .kubectl_apply(&example("0_wrong_tconf", &ns))
        .unwrap_err();
    assert!(
        err.contains("hostDevices[0].vniRange") && err.contains("TenantConfig rule 2"),
        "kubectl printed: {err}"
    );
    let err = plane
        .kubectl_apply(&example("2_tnet_with_vlan", &ns))
        .unwrap_err();
    assert!(
        err.contains("spec.Options.vlan") && err.contains("TenantNetwork rule 1"),
        "kubectl printed: {err}"
    );
    let err = plane
        .kubectl_apply(&example("5_wrong_device", &ns))
        .unwrap_err();
    assert!(
        err.contains("spec.Options.host_device") && err.contains("\"ens6\""),
        "kubectl printed: {err}"
    );

    plane
        .kubectl_apply(&example("3_chosen_device", &ns))
        .unwrap();
    let chosen = tns.get("internal").await.unwrap();
    let (device, vlan) = device_and_vlan(&chosen);
    assert_eq!(device, "ens4");
    assert!((1000..=2000).contains(&vlan), "{vlan}");

    plane
        .kubectl_apply(&example("4_random_device", &ns))
        .unwrap();
    let random = tns.get("internal2").await.unwrap();
    match device_and_vlan(&random) {
        (d, id) if d == "ens4" => assert!((1000..=2000).contains(&id), "{id}"),
        (d, id) if d == "ens5" => assert!((2000..=3000).contains(&id), "{id}"),
        other => panic!("not a profile of 1_good_tconf: {other:?}"),
    }

    plane.kubectl_apply(&example("6_static_tnet", &ns)).unwrap();
    let management = tns.get("management").await.unwrap();
    assert_eq!(management.spec.network.network_id, "flannel");
    assert!(management.spec.network.options.vlan.is_none());

    plane
        .kubectl_apply(&example("7_default_cnet", &ns))
        .unwrap();
    plane
        .kubectl_apply(&example("8_external_cnet", &ns))
        .unwrap();

    // Each id is recorded in the TenantConfig under the token its network carries.
    let held: HashSet<String> = reservations_of(plane, &ns)
        .await
        .into_iter()
        .map(|(_, _, token)| token)
        .collect();
    let carried: HashSet<String> = [&chosen, &random]
        .iter()
        .map(|tn| tn.annotations()[VNI_RESERVATION_ANNOTATION].clone())
        .collect();
    assert_eq!(held, carried);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hand_out_200_distinct_ids_and_deleting_frees_all() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("many").await;
    let client = plane.client().await;
    let tns: Api<TenantNetwork> = Api::namespaced(client.clone(), &ns);

    let creates = (0..200).map(|i| {
        let tns = tns.clone();
        async move {
            tns.create(
                &PostParams::default(),
                &tenant_network(&format!("tn-{i}"), &format!("t{i}")),
            )
            .await
        }
    });
    for result in futures::future::join_all(creates).await {
        result.expect("every create is admitted");
    }
    let created = tns.list(&Default::default()).await.unwrap().items;
    assert_eq!(created.len(), 200);
    let ids: HashSet<(String, i64)> = created.iter().map(device_and_vlan).collect();
    if ids.len() != 200 {
        let mut seen = std::collections::HashMap::new();
        for tn in &created {
            seen.entry(device_and_vlan(tn))
                .or_insert_with(Vec::new)
                .push((
                    tn.name_any(),
                    tn.annotations().get(VNI_RESERVATION_ANNOTATION).cloned(),
                ));
        }
        seen.retain(|_, v| v.len() > 1);
        let logs: Vec<String> = bed
            .processes
            .lock()
            .unwrap()
            .iter()
            .map(|p| {
                p.log()
                    .lines()
                    .filter(|l| !l.contains("DEBUG"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        panic!(
            "an id was handed out twice: {seen:?}\n{}",
            logs.join("\n-----\n")
        );
    }
    // Across the whole cluster too (other tests create TenantNetworks at the same time).
    let everywhere = Api::<TenantNetwork>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let all: Vec<(String, i64)> = everywhere
        .iter()
        .filter(|tn| tn.spec.network.options.vlan.is_some())
        .map(device_and_vlan)
        .collect();
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        all.len(),
        "two networks share an id"
    );
    assert_eq!(reservations_of(plane, &ns).await.len(), 200);
    // Both replicas handed ids out.
    for process in bed.processes.lock().unwrap().iter() {
        let log = process.log();
        let reserved = log
            .lines()
            .filter(|l| l.contains("reserved an id") && l.contains(&format!("{ns}/")))
            .count();
        assert!(
            reserved > 0,
            "a replica reserved nothing:\n{}",
            process.log_tail(20)
        );
    }

    delete_tenant_networks(plane, &ns).await;
    eventually(30, "all 200 ids freed", || async {
        reservations_of(plane, &ns).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_dry_run_creates_reserve_nothing() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("dry").await;
    let tns: Api<TenantNetwork> = Api::namespaced(plane.client().await, &ns);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let creates = (0..50).map(|i| {
        let (tns, dry) = (tns.clone(), dry.clone());
        async move {
            tns.create(&dry, &tenant_network(&format!("dry-{i}"), "dry"))
                .await
        }
    });
    for result in futures::future::join_all(creates).await {
        let tn = result.expect("a dry run is admitted");
        assert!(tn.spec.network.options.vlan.is_some(), "and shows its id");
    }
    assert!(
        tns.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(reservations_of(plane, &ns).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_after_admission_leaks_nothing_after_the_grace_period() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("leak").await;
    let tns: Api<TenantNetwork> = Api::namespaced(plane.client().await, &ns);
    let kept = tns
        .create(&PostParams::default(), &tenant_network("dup", "dup"))
        .await
        .unwrap();
    let token = kept.annotations()[VNI_RESERVATION_ANNOTATION].clone();
    // Admitted (an id reserved), then refused by the API server: the name is taken.
    match tns
        .create(&PostParams::default(), &tenant_network("dup", "dup"))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let reserved: usize = bed
        .processes
        .lock()
        .unwrap()
        .iter()
        .map(|p| {
            p.log()
                .lines()
                .filter(|l| l.contains("reserved an id") && l.contains(&format!("{ns}/dup")))
                .count()
        })
        .sum();
    assert_eq!(reserved, 2, "the refused create had reserved an id too");

    eventually(
        common::GRACE_SECONDS * 5,
        "the refused create's id is freed",
        || async {
            let left = reservations_of(plane, &ns).await;
            left.len() == 1 && left[0].2 == token
        },
    )
    .await;
    // The kept network's id stays, however long the reconciliation runs.
    tokio::time::sleep(Duration::from_secs(common::GRACE_SECONDS * 2)).await;
    let left = reservations_of(plane, &ns).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].2, token);
    tns.delete("dup", &DeleteParams::default()).await.unwrap();
    eventually(30, "the deleted network's id is freed", || async {
        reservations_of(plane, &ns).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_config_keeps_its_reservations_and_stays_while_it_holds_ids() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("keep").await;
    let tns: Api<TenantNetwork> = Api::namespaced(plane.client().await, &ns);
    let tn = tns
        .create(&PostParams::default(), &tenant_network("kept", "kept"))
        .await
        .unwrap();
    let token = tn.annotations()[VNI_RESERVATION_ANNOTATION].clone();
    let kubectl = |args: &[&str], stdin: &str| common::kubectl(plane, args, stdin);

    // The original manifest over the stored object: its hostDevices carry no reservations.
    let manifest = fixtures::read("4_0_examples/1_good_tconf.yaml");
    let (ok, err) = kubectl(&["replace", "-f", "-"], &manifest);
    assert!(ok, "{err}");
    let left = reservations_of(plane, &ns).await;
    assert_eq!(left.len(), 1, "the reservation survived the replace");
    assert_eq!(left[0].2, token);

    let (ok, err) = kubectl(&["delete", "tenantconfig", "tconf"], "");
    assert!(
        !ok && err.contains("delete those TenantNetworks first"),
        "{err}"
    );
    let second = manifest.replace("name: tconf", "name: another");
    let (ok, err) = kubectl(&["create", "-f", "-"], &second);
    assert!(!ok && err.contains("TenantConfig tconf exists"), "{err}");

    tns.delete("kept", &DeleteParams::default()).await.unwrap();
    eventually(30, "the id is freed", || async {
        reservations_of(plane, &ns).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_pods_use_cannot_be_deleted_or_rewired() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("guard").await;
    let client = plane.client().await;
    let nets: Api<DanmNet> = Api::namespaced(client.clone(), &ns);
    let eps: Api<DanmEp> = Api::namespaced(client.clone(), &ns);
    let mut net = DanmNet::new("guarded", Default::default());
    net.spec.network = NetworkSpec {
        network_id: "guarded".into(),
        network_type: "macvlan".into(),
        options: NetworkOptions {
            host_device: Some("ens3".into()),
            vlan: Some(10),
            ..Default::default()
        },
        ..Default::default()
    };
    nets.create(&PostParams::default(), &net).await.unwrap();
    let ep = DanmEp::new(
        "guarded-ep",
        DanmEpSpec {
            network_name: "guarded".into(),
            api_type: "DanmNet".into(),
            pod: "pod-0".into(),
            ..Default::default()
        },
    );
    eps.create(&PostParams::default(), &ep).await.unwrap();

    let kubectl = |args: &[&str]| common::kubectl(plane, args, "");
    eventually(30, "the delete is refused (rule 22)", || async {
        let (ok, err) = kubectl(&["delete", "danmnet", "guarded", "-n", &ns]);
        !ok && err.contains("DanmNet rule 22") && err.contains(&format!("{ns}/pod-0"))
    })
    .await;
    let (ok, err) = kubectl(&[
        "patch",
        "danmnet",
        "guarded",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"Options":{"vlan":11}}}"#,
    ]);
    assert!(!ok && err.contains("DanmNet rule 21"), "{err}");
    let (ok, err) = kubectl(&[
        "patch",
        "danmnet",
        "guarded",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"Options":{"rt_tables":9}}}"#,
    ]);
    assert!(ok, "other fields may change: {err}");

    eps.delete("guarded-ep", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "the delete is allowed once no pod uses it", || async {
        kubectl(&["delete", "danmnet", "guarded", "-n", &ns]).0
    })
    .await;

    // A TenantNetwork keeps its device and id, pods or not (TenantNetwork rules 3-6), and
    // its reservation annotation.
    let tns: Api<TenantNetwork> = Api::namespaced(client, &ns);
    tns.create(&PostParams::default(), &tenant_network("fixed", "fixed"))
        .await
        .unwrap();
    for (patch, rule) in [
        (
            r#"{"spec":{"Options":{"vlan":3999}}}"#,
            "TenantNetwork rule 3",
        ),
        (
            r#"{"spec":{"Options":{"host_device":"ens9"}}}"#,
            "TenantNetwork rule 5",
        ),
        (
            r#"{"metadata":{"annotations":{"danm.io/vni-reservation":"mine"}}}"#,
            "danm.io/vni-reservation",
        ),
    ] {
        let (ok, err) = kubectl(&[
            "patch",
            "tenantnetwork",
            "fixed",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            patch,
        ]);
        assert!(!ok && err.contains(rule), "{patch}: {err}");
    }
}

/// A DanmEp that DANM itself wrote (no `apiType`) is on a DanmNet, for the delete guard as
/// for the cleaner and svcwatcher: its DanmNet cannot be deleted while it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_danm_era_endpoint_without_api_type_keeps_its_danmnet() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("legacy").await;
    let client = plane.client().await;
    let nets: Api<DanmNet> = Api::namespaced(client.clone(), &ns);
    let eps: Api<DanmEp> = Api::namespaced(client, &ns);
    let mut net = DanmNet::new("legacy", Default::default());
    net.spec.network = NetworkSpec {
        network_id: "legacy".into(),
        network_type: "macvlan".into(),
        options: NetworkOptions {
            host_device: Some("ens3".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    nets.create(&PostParams::default(), &net).await.unwrap();
    let ep = DanmEp::new(
        "legacy-ep",
        DanmEpSpec {
            network_name: "legacy".into(),
            api_type: String::new(),
            pod: "danm-era-pod".into(),
            ..Default::default()
        },
    );
    eps.create(&PostParams::default(), &ep).await.unwrap();

    let kubectl = |args: &[&str]| common::kubectl(plane, args, "");
    eventually(30, "the delete is refused (rule 22)", || async {
        let (ok, err) = kubectl(&["delete", "danmnet", "legacy", "-n", &ns]);
        !ok && err.contains("DanmNet rule 22") && err.contains(&format!("{ns}/danm-era-pod"))
    })
    .await;
    eps.delete("legacy-ep", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        30,
        "the delete is allowed once the DanmEp is gone",
        || async { kubectl(&["delete", "danmnet", "legacy", "-n", &ns]).0 },
    )
    .await;
}

fn review(api_version: &str, kind: &str, operation: &str, object: Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "7f0b2891-1111-4222-8333-444455556666",
            "kind": {"group": "danm.io", "version": "v1", "kind": kind},
            "resource": {"group": "danm.io", "version": "v1", "resource": "danmnets"},
            "name": "n", "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": "tester"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reviews_get_400_and_bad_objects_are_denied_with_the_field() {
    let bed = bed().await;
    let client = https(bed.plane);
    let url = format!("https://{}/netvalidation", bed.replicas[0]);

    let r = client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("not an AdmissionReview"));
    let r = client
        .post(&url)
        .json(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no request"));
    let r = client
        .post(&url)
        .json(&json!({"apiVersion": "v1", "kind": "Pod"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A DANM-era v1beta1 review gets a v1beta1 answer; the bad field is named.
    let object = json!({"apiVersion": "danm.io/v1", "kind": "DanmNet",
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {"NetworkID": "n", "Options": {"vlan": "ten"}}});
    let answer: Value = client
        .post(&url)
        .json(&review(
            "admission.k8s.io/v1beta1",
            "DanmNet",
            "CREATE",
            object,
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(
        answer["response"]["uid"],
        "7f0b2891-1111-4222-8333-444455556666"
    );
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("spec.Options.vlan"), "{message}");

    // A good v1 review is allowed with a JSONPatch.
    let object = json!({"apiVersion": "danm.io/v1", "kind": "DanmNet",
        "metadata": {"name": "n", "namespace": "ns"},
        "spec": {"NetworkID": "n", "Options": {"cidr": "10.0.0.0/24"}}});
    let answer: Value = client
        .post(&url)
        .json(&review("admission.k8s.io/v1", "DanmNet", "CREATE", object))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    // Metrics count what was answered.
    let metrics = client
        .get(format!("https://{}/metrics", bed.replicas[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("danm_webhook_admissions_total{") && metrics.contains("result=\"denied\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("danm_webhook_denials_total{rule=\""),
        "no denials by rule: {metrics}"
    );

    // The same registry on the plain-HTTP admin port (--admin-listen), for scrapers that
    // do not speak TLS: the denial above was a schema one.
    let admin = reqwest::get(format!("http://{}/metrics", bed.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "danm_webhook_admissions_total{",
        "danm_webhook_denials_total{rule=\"schema\"}",
        "danm_webhook_admission_duration_seconds_count",
    ] {
        assert!(
            admin.contains(series),
            "no {series} on the admin port: {admin}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let bed = bed().await;
    let plane = bed.plane;
    let dir = tempfile::tempdir().unwrap();
    let first = plane.serving_cert(&["127.0.0.1"]);
    std::fs::write(dir.path().join("tls.crt"), &first.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &first.key_pem).unwrap();
    let port = danm_testkit::control_plane::free_port();
    let mut process = common::start_webhook(plane, "webhook-reload", port, dir.path()).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    common::wait_ready(plane, addr, &mut process).await;

    // A certificate from another CA, written over the files.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let trusting_new = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let healthz = format!("https://{addr}/healthz");
    assert!(trusting_new.get(&healthz).send().await.is_err());
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    eventually(20, "the new certificate is served", || async {
        trusting_new.get(&healthz).send().await.is_ok()
    })
    .await;
    assert!(https(plane).get(&healthz).send().await.is_err());
    assert!(process.log().contains("serving certificate reloaded"));
}

/// A DanmNetworkPolicy whose label selectors Kubernetes would refuse is refused at
/// admission by `/policyvalidation`, each field named (the CRD's own rules cannot say it
/// within the API server's cost budget); a valid one is admitted, and so is its update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_an_invalid_label_selector_is_refused_naming_the_field() {
    let bed = bed().await;
    let plane = bed.plane;
    let ns = plane.namespace("policies").await;
    let policy = |name: &str, selector: &str| {
        format!(
            "apiVersion: danm.io/v1\nkind: DanmNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - podSelector: {selector}\n"
        )
    };
    let err = plane
        .kubectl_apply(&policy(
            "bad-operator",
            "{matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
        ))
        .unwrap_err();
    assert!(
        err.contains("spec.ingress[0].from[0].podSelector.matchExpressions[0].operator")
            && err.contains("\"Equals\""),
        "kubectl printed: {err}"
    );
    let err = plane
        .kubectl_apply(&policy(
            "no-values",
            "{matchExpressions: [{key: app, operator: In}]}",
        ))
        .unwrap_err();
    assert!(
        err.contains("spec.ingress[0].from[0].podSelector.matchExpressions[0].values")
            && err.contains("at least one value"),
        "kubectl printed: {err}"
    );
    plane
        .kubectl_apply(&policy(
            "good",
            "{matchExpressions: [{key: app, operator: In, values: [a]}]}",
        ))
        .expect("a valid policy is admitted");
    // A network that does not exist is no error, but kubectl warns that it selects nothing.
    let named = format!(
        "apiVersion: danm.io/v1\nkind: DanmNetworkPolicy\nmetadata: {{name: named, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - networkSelector: [{{name: nowhere, type: DanmNet}}]\n"
    );
    let mut apply = plane.kubectl();
    apply
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = apply.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), named.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("spec.ingress[0].from[0].networkSelector[0]")
            && stderr.contains(&format!("DanmNet {ns}/nowhere does not exist (yet)")),
        "kubectl printed: {stderr}"
    );
    // An update that breaks it is refused too.
    let err = plane
        .kubectl_apply(&policy(
            "good",
            "{matchExpressions: [{key: app, operator: Exists, values: [a]}]}",
        ))
        .unwrap_err();
    assert!(err.contains("no values"), "kubectl printed: {err}");
}
