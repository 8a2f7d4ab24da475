//! Every danm.io manifest of the test fixtures (modelled on DANM's examples, written in this
//! repository) deserializes into our types, and the checked-in CRD YAML matches the types.

use std::path::Path;

use danm_crds::{ClusterNetwork, DanmEp, DanmNet, TenantConfig, TenantNetwork};

#[test]
fn every_danm_example_manifest_deserializes() {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (file, text) in danm_testkit::fixtures::all() {
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
        for value in documents {
            if value.get("apiVersion").and_then(|v| v.as_str()) != Some("danm.io/v1") {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let result = match kind.as_str() {
                "DanmNet" => serde_json::from_value::<DanmNet>(value).map(drop),
                "TenantNetwork" => serde_json::from_value::<TenantNetwork>(value).map(drop),
                "ClusterNetwork" => serde_json::from_value::<ClusterNetwork>(value).map(drop),
                "TenantConfig" => serde_json::from_value::<TenantConfig>(value).map(drop),
                "DanmEp" => serde_json::from_value::<DanmEp>(value).map(drop),
                other => panic!("{file}: unexpected danm.io kind {other}"),
            };
            if let Err(e) = result {
                panic!("{file}: {kind} does not deserialize: {e}");
            }
            *counts.entry(kind).or_default() += 1;
        }
    }
    println!("deserialized: {counts:?}");
    for kind in ["DanmNet", "TenantNetwork", "ClusterNetwork", "TenantConfig"] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} fixture was read"
        );
    }
}

#[test]
fn field_names_are_danms() {
    let net: TenantNetwork = serde_saphyr::from_str(
        "apiVersion: danm.io/v1\nkind: TenantNetwork\nmetadata: {name: internal, namespace: default}\nspec:\n  NetworkID: internal\n  NetworkType: ipvlan\n  Options:\n    host_device: ens4\n    container_prefix: int\n    rt_tables: 200\n    vlan: 700\n    cidr: 10.240.1.0/24\n    allocation_pool: {start: 10.240.1.100, end: 10.240.1.200}\n",
    )
    .unwrap();
    let o = &net.spec.network.options;
    assert_eq!(net.spec.network.network_id, "internal");
    assert_eq!(o.host_device.as_deref(), Some("ens4"));
    assert_eq!(o.vlan, Some(700));
    assert_eq!(
        o.allocation_pool.as_ref().unwrap().end.as_deref(),
        Some("10.240.1.200")
    );
    let back = serde_json::to_value(&net).unwrap();
    assert_eq!(
        back["spec"]["Options"]["allocation_pool"]["start"],
        "10.240.1.100"
    );
    assert_eq!(back["spec"]["NetworkType"], "ipvlan");
    let tc: TenantConfig = serde_saphyr::from_str(
        "apiVersion: danm.io/v1\nkind: TenantConfig\nmetadata: {name: t}\nhostDevices:\n- {name: ens4, vniType: vlan, vniRange: 700-710}\nnetworkIds: {flannel: flannel}\n",
    )
    .unwrap();
    assert_eq!(tc.host_devices[0].vni_range, "700-710");
    assert_eq!(tc.network_ids["flannel"], "flannel");
}

/// Both copies: `crds/manifests/` (the test control plane applies it) and
/// `deploy/crds/` (kustomize reads only files inside `deploy/`).
#[test]
fn checked_in_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["crds/manifests", "deploy/crds"] {
        let path = root.join("..").join(dir);
        for (file, crd) in danm_crds::all_crds() {
            let expected = danm_crds::render_crd(&crd);
            let actual = std::fs::read_to_string(path.join(file)).unwrap_or_default();
            assert!(
                actual == expected,
                "{dir}/{file} is out of date: run `cargo run -p danm-crds --bin crdgen`"
            );
        }
    }
}

/// `deploy/crds/kustomization.yaml` lists every generated CRD file.
#[test]
fn the_crds_kustomization_lists_every_crd() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("../deploy/crds/kustomization.yaml")).unwrap();
    for (file, _) in danm_crds::all_crds() {
        assert!(
            text.lines().any(|l| l.trim() == format!("- {file}")),
            "deploy/crds/kustomization.yaml does not list {file}"
        );
    }
}

#[test]
fn crds_have_danms_names_and_short_names() {
    let crds = danm_crds::all_crds();
    let names: Vec<(String, Vec<String>, String)> = crds
        .iter()
        .map(|(_, c)| {
            (
                c.metadata.name.clone().unwrap(),
                c.spec.names.short_names.clone().unwrap_or_default(),
                c.spec.scope.clone(),
            )
        })
        .collect();
    let expect = [
        ("danmnets.danm.io", vec!["dn", "dnet"], "Namespaced"),
        ("tenantnetworks.danm.io", vec!["tn", "tnet"], "Namespaced"),
        ("clusternetworks.danm.io", vec!["cn", "cnet"], "Cluster"),
        ("tenantconfigs.danm.io", vec!["tc", "tconf"], "Cluster"),
        ("danmeps.danm.io", vec!["de", "dep"], "Namespaced"),
        (
            "allocationshards.danm.io",
            vec!["ashard", "ash"],
            "Namespaced",
        ),
        ("danmnetworkpolicies.danm.io", vec!["dnetpol"], "Namespaced"),
    ];
    for (name, short, scope) in expect {
        let found = names
            .iter()
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(found.1, short, "{name}");
        assert_eq!(found.2, scope, "{name}");
    }
}
