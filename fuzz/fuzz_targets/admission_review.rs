//! The webhook's input: any AdmissionReview body (the API server sends them, but the port
//! is reachable by anything in the cluster). Decoding never panics; a decoded request is
//! decided (against DANM's 1_good_tconf) without panicking; and nothing invalid is
//! admitted: an admitted network's patch applies to its object, and the result parses
//! and passes ipamd's validation with a NetworkID; an admitted TenantConfig's ranges parse.
#![no_main]

use danm_core::admit::review::{NetworkRoute, Path, Route, decode, route};
use danm_core::admit::vni::{VniRange, VniType};
use danm_core::admit::{
    Environment, Operation, TenantConfigRequest, admit_network, admit_tenant_config,
    admit_tenant_config_delete,
};
use danm_core::network::{NetworkKey, NetworkKind, plan};
use danm_crds::{IfaceProfile, NetworkSpec, TenantConfig};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn tenant_config() -> TenantConfig {
    let profile = |name: &str, vni_type: &str, vni_range: &str| IfaceProfile {
        name: name.into(),
        vni_type: vni_type.into(),
        vni_range: vni_range.into(),
        ..Default::default()
    };
    TenantConfig {
        host_devices: vec![
            profile("ens4", "vlan", "1000-2000"),
            profile("ens5", "vlan", "2000-3000"),
            profile("nokia.k8s.io/sriov_ens1f0", "vxlan", "700-710"),
        ],
        network_ids: [("flannel".to_string(), "flannel".to_string())].into(),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode(data) else {
        return;
    };
    // Routed as the webhook routes it, at each of its paths.
    for path in Path::ALL {
        match route(path, &request) {
            Route::Allow | Route::Deny(_) => {}
            Route::TenantConfigDelete { old } => {
                let _ = admit_tenant_config_delete(&old);
            }
            Route::TenantConfigWrite {
                operation,
                object,
                old,
            } => tenant_config_write(operation, &object, old.as_ref()),
            Route::Network(network) => network_request(&network, data),
            Route::Policy(object) => {
                let _ = danm_core::admit::admit_policy(&object);
            }
        }
    }
});

fn tenant_config_write(operation: Operation, object: &Value, old: Option<&Value>) {
    let admitted = admit_tenant_config(&TenantConfigRequest {
        operation,
        object,
        old,
        other: None,
    });
    if let Ok(admitted) = admitted {
        let mut doc = object.clone();
        json_patch::patch(&mut doc, &admitted.patch).expect("the patch applies to its object");
        let config: TenantConfig =
            serde_json::from_value(doc).expect("an admitted TenantConfig parses");
        for p in &config.host_devices {
            if let Some(t) = VniType::parse(&p.vni_type) {
                VniRange::parse(&p.vni_range, t).expect("an admitted range parses");
            }
        }
    }
}

fn network_request(network: &NetworkRoute<'_>, data: &[u8]) {
    let (operation, kind) = (network.operation, network.kind);
    let (object, old_object) = (&network.object, &network.old_object);
    let config = tenant_config();
    let mut choose = |n: usize| data.len() % n;
    let Ok(admitted) = admit_network(
        &network.request(),
        &mut Environment {
            tenant_config: Some(&config),
            connected_pod: None,
            choose: &mut choose,
            reservation_token: "token",
            links: &danm_core::hostlinks::LinkTable::default(),
        },
    ) else {
        return;
    };
    // A DELETE admitted is a network no pod uses: its object is not judged. Nor is an
    // UPDATE that leaves the spec as stored (metadata changes).
    if operation == Operation::Delete
        || (operation == Operation::Update && admitted.patch.0.is_empty() && {
            // As the webhook reads a spec: absent or null is the default one.
            let spec = |o: &Option<serde_json::Value>| match o.as_ref().and_then(|o| o.get("spec"))
            {
                None | Some(serde_json::Value::Null) => Ok(NetworkSpec::default()),
                Some(s) => serde_json::from_value::<NetworkSpec>(s.clone()),
            };
            matches!((spec(object), spec(old_object)), (Ok(new), Ok(old)) if new == old)
        })
    {
        return;
    }
    let Some(mut doc) = object.clone() else {
        return;
    };
    json_patch::patch(&mut doc, &admitted.patch).expect("the patch applies to its object");
    let spec: NetworkSpec = match doc.get("spec") {
        Some(spec) => serde_json::from_value(spec.clone()).expect("the patched spec parses"),
        None => NetworkSpec::default(),
    };
    assert!(!spec.network_id.is_empty(), "admitted without a NetworkID");
    if let Err(e) = plan(
        NetworkKey::new(kind, network.namespace, network.name),
        &spec,
    ) {
        panic!("admitted a network ipamd refuses: {e}");
    }
    if kind == NetworkKind::TenantNetwork && operation == Operation::Create {
        let opts = &spec.options;
        assert!(
            admitted.reservation.is_some() == (opts.vlan.is_some() || opts.vxlan.is_some()),
            "an id given without being recorded"
        );
    }
}
