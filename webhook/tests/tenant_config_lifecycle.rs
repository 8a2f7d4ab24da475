//! The TenantConfig's whole life under a running webhook pair (a test binary of its own:
//! it deletes the cluster-wide TenantConfig the other tests use). Found by replaying
//! DANM's admission tables (issue 24): a webhook kept the copy of the TenantConfig it last
//! wrote and preferred it to the cluster's by `generation`, which starts again at 1 when
//! the object is re-created, so after a delete and a re-create TenantNetworks were refused
//! naming the old profiles until the webhook restarted.
//!
//! Each replica is sent its own TenantNetwork reviews (as the API server would, with a
//! fresh uid each), so that both hold a last-written copy of the first TenantConfig.
//!
//! The new TenantConfig carries a VLAN range reaching past 4094 (as one carried over from
//! DANM may): it is admitted, and the API server hands the webhook's warning to kubectl.

mod common;

use std::time::{Duration, Instant};

use common::*;
use danm_crds::TenantConfig;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

fn create_review(uid: &str, name: &str, device: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "danm.io", "version": "v1", "kind": "TenantNetwork"},
            "resource": {"group": "danm.io", "version": "v1", "resource": "tenantnetworks"},
            "name": name, "namespace": "lifecycle",
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": {
                "apiVersion": "danm.io/v1", "kind": "TenantNetwork",
                "metadata": {"name": name, "namespace": "lifecycle"},
                "spec": {"NetworkID": name, "NetworkType": "ipvlan",
                         "Options": {"host_device": device, "cidr": "10.77.0.0/24"}}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// Sends the review to `replica`; its `response`.
async fn send(bed: &Bed, replica: usize, review: &Value) -> Value {
    let answer: Value = https(bed.plane)
        .post(format!("https://{}/netvalidation", bed.replicas[replica]))
        .json(review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["response"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_config_deleted_and_created_again_is_the_one_used() {
    let bed = bed().await;
    let configs: Api<TenantConfig> = Api::all(bed.plane.client().await);
    // Each replica records an id in the first `tconf` (its copy is now the newest it knows).
    for replica in 0..2 {
        let uid = format!("00000000-0000-4000-8000-00000000000{replica}");
        let answer = send(bed, replica, &create_review(&uid, "first", "ens4")).await;
        assert_eq!(answer["allowed"], true, "{answer}");
    }
    // No TenantNetwork carries those ids: they are freed after the grace period, and the
    // TenantConfig may then go. It comes back with other profiles (generation 1 again).
    eventually(60, "tconf deleted once its ids are freed", || async {
        configs
            .delete("tconf", &DeleteParams::default())
            .await
            .is_ok()
    })
    .await;
    eventually(30, "tconf gone", || async {
        configs.get_opt("tconf").await.unwrap().is_none()
    })
    .await;
    // Created through kubectl, with a profile carried over from DANM whose range reaches
    // past the last VLAN id: admitted, and kubectl prints the webhook's warning.
    let created = bed
        .plane
        .kubectl()
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(
                br#"
apiVersion: danm.io/v1
kind: TenantConfig
metadata: {name: tconf}
hostDevices:
- {name: eth9, vniType: vlan, vniRange: 3000-3010}
- {name: eth8, vniType: vlan, vniRange: 4090-5000}
"#,
            )?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{stderr}");
    assert!(
        stderr.contains("Warning:")
            && stderr.contains("hostDevices[1].vniRange: 4095-5000 outside 1-4094"),
        "kubectl printed no warning: {stderr}"
    );
    // Both replicas decide on the new TenantConfig once their watches have it.
    for replica in 0..2 {
        let uid = format!("00000000-0000-4000-8000-00000000001{replica}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = send(bed, replica, &create_review(&uid, "second", "eth9")).await;
            if answer["allowed"] == true {
                let vlan = vlan_of(&answer);
                assert!((3000..=3010).contains(&vlan), "replica {replica}: {vlan}");
                break;
            }
            let message = answer["status"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("ens4"),
                "replica {replica} decided on the deleted TenantConfig: {message}"
            );
            assert!(Instant::now() < deadline, "replica {replica}: {answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The VLAN id the answer's JSONPatch gives the TenantNetwork (the patch's bytes come as a
/// JSON array of numbers, which the API server's decoder takes as well as base64).
fn vlan_of(answer: &Value) -> i64 {
    use base64::Engine as _;
    let patch: Vec<u8> = match &answer["patch"] {
        Value::String(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
        Value::Array(bytes) => bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("no patch in {answer}: {other}"),
    };
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    ops.iter()
        .find_map(|op| match op["path"].as_str() {
            Some("/spec/Options/vlan") => op["value"].as_i64(),
            Some("/spec/Options") => op["value"]["vlan"].as_i64(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no vlan in {ops:?}"))
}
