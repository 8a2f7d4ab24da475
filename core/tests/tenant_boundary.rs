//! The tenant boundary, decided in `core` (issue 23): what a tenant who may create
//! TenantNetworks tries, and the rule that refuses it, naming the field. The same attacks
//! run through the real API server with the webhook registered in
//! `e2e/tests/hostile_tenant.rs`; these tests pin the decisions themselves.

use danm_core::admit::vni::VniType;
use danm_core::admit::{Admitted, Denial, Environment, NetworkRequest, Operation, admit_network};
use danm_core::hostlinks::LinkTable;
use danm_core::network::{NetworkKind, Rule};
use danm_core::{NetworkKey, admit};
use danm_crds::{IfaceProfile, NetworkSpec, TenantConfig, VniReservation};
use serde_json::{Value, json};

use NetworkKind::{ClusterNetwork, DanmNet, TenantNetwork};

fn tconf() -> TenantConfig {
    TenantConfig {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("tconf".into()),
            ..Default::default()
        },
        host_devices: vec![
            IfaceProfile {
                name: "ens4".into(),
                vni_type: "vxlan".into(),
                vni_range: "700-710".into(),
                ..Default::default()
            },
            IfaceProfile {
                name: "ens5".into(),
                vni_type: "vlan".into(),
                vni_range: "100-110".into(),
                max_per_namespace: Some(2),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

struct Call<'a> {
    kind: NetworkKind,
    operation: Operation,
    namespace: &'a str,
    spec: Value,
    old: Option<Value>,
    connected: Option<&'a str>,
    config: Option<&'a TenantConfig>,
    links: &'a LinkTable,
    token: &'a str,
}

impl<'a> Call<'a> {
    fn create(kind: NetworkKind, spec: Value, links: &'a LinkTable) -> Call<'a> {
        Call {
            kind,
            operation: Operation::Create,
            namespace: "tenant-b",
            spec,
            old: None,
            connected: None,
            config: None,
            links,
            token: "token-b",
        }
    }

    fn run(&self) -> Result<Admitted, Denial> {
        let object = |spec: &Value| {
            json!({
                "apiVersion": "danm.io/v1", "kind": self.kind.as_str(),
                "metadata": {"name": "net", "namespace": self.namespace},
                "spec": spec,
            })
        };
        let obj = object(&self.spec);
        let old = self.old.as_ref().map(object);
        let mut first = |_: usize| 0;
        admit_network(
            &NetworkRequest {
                operation: self.operation,
                kind: self.kind,
                namespace: self.namespace,
                name: "net",
                object: Some(&obj),
                old_object: old.as_ref(),
            },
            &mut Environment {
                tenant_config: self.config,
                connected_pod: self.connected,
                choose: &mut first,
                reservation_token: self.token,
                links: self.links,
            },
        )
    }
}

#[track_caller]
fn refused(call: &Call, field: &str) -> String {
    let denial = match call.run() {
        Ok(a) => panic!("admitted, expected {field} refused: {:?}", a.spec),
        Err(d) => d,
    };
    assert!(
        denial
            .problems
            .iter()
            .any(|p| p.field == field && p.rule == Rule::Ours),
        "expected {field} refused, got: {denial}"
    );
    denial.to_string()
}

fn spec_of(value: Value) -> NetworkSpec {
    serde_json::from_value(value).unwrap()
}

/// Finding 1: a NetworkType or NetworkID that is not a plain name, on every kind, refused
/// with the field named (and the webhook refuses what ipamd would refuse).
#[test]
fn path_names_are_refused_on_every_kind() {
    let links = LinkTable::default();
    let tc = tconf();
    for kind in [DanmNet, TenantNetwork, ClusterNetwork] {
        for (field, spec) in [
            (
                "spec.NetworkType",
                json!({"NetworkID": "n", "NetworkType": "/sbin/reboot"}),
            ),
            (
                "spec.NetworkType",
                json!({"NetworkID": "n", "NetworkType": "../../../usr/bin/x"}),
            ),
            (
                "spec.NetworkID",
                json!({"NetworkID": "../../etc/kubernetes/admin", "NetworkType": "flannel"}),
            ),
            (
                "spec.NetworkID",
                json!({"NetworkID": "/etc/shadow", "NetworkType": "bridge"}),
            ),
        ] {
            let mut call = Call::create(kind, spec, &links);
            call.config = Some(&tc);
            let said = refused(&call, field);
            assert!(
                said.contains("path separators") || said.contains("folder"),
                "{said}"
            );
        }
    }
}

/// Finding 1, UPDATE: what names the plugin and its file cannot change on a TenantNetwork
/// (the TenantConfig's NetworkID mapping applies at creation), nor on a network pods use.
#[test]
fn network_type_and_id_cannot_change_under_pods_or_on_a_tenant_network() {
    let links = LinkTable::default();
    let old = json!({"NetworkID": "be", "NetworkType": "ipvlan",
        "Options": {"host_device": "ens4", "vxlan": 700}});
    for (field, new) in [
        (
            "spec.NetworkType",
            json!({"NetworkID": "be", "NetworkType": "host-device",
                "Options": {"host_device": "ens4", "vxlan": 700}}),
        ),
        (
            "spec.NetworkID",
            json!({"NetworkID": "platform", "NetworkType": "ipvlan",
                "Options": {"host_device": "ens4", "vxlan": 700}}),
        ),
    ] {
        let mut call = Call::create(TenantNetwork, new.clone(), &links);
        call.operation = Operation::Update;
        call.old = Some(old.clone());
        refused(&call, field);
        // An administrator's network: only while pods are connected.
        call.kind = ClusterNetwork;
        assert!(call.run().is_ok(), "{field} changes on an unused network");
        call.connected = Some("ns/pod-0");
        let said = refused(&call, field);
        assert!(said.contains("ns/pod-0"), "{said}");
    }
    // The default NetworkType written out is no change.
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "be", "Options": {"host_device": "ens4", "vxlan": 700}}),
        &links,
    );
    call.operation = Operation::Update;
    call.old = Some(old);
    call.spec["Options"]["cidr"] = json!("10.0.0.0/24");
    assert!(call.run().is_ok(), "{:?}", call.run());
}

/// Optional part of finding 1: a TenantConfig may list the NetworkTypes tenants use.
#[test]
fn the_tenant_config_can_limit_tenants_to_some_network_types() {
    let links = LinkTable::default();
    let mut tc = tconf();
    tc.allowed_network_types = vec!["ipvlan".into(), "macvlan".into()];
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "x", "NetworkType": "host-device"}),
        &links,
    );
    call.config = Some(&tc);
    let said = refused(&call, "spec.NetworkType");
    assert!(said.contains("ipvlan, macvlan"), "{said}");
    call.spec = json!({"NetworkID": "x"});
    assert!(call.run().is_ok(), "the default ipvlan is allowed");
}

/// Finding 2: tenant B asks for tenant A's VxLAN link name (another VNI), or for A's
/// segment under another name; an administrator's network cannot join a tenant's
/// segment either. Another tenant's network is not named in the message.
#[test]
fn a_tenant_cannot_take_over_or_join_another_networks_link() {
    let mut links = LinkTable::default();
    let a = NetworkKey::new(TenantNetwork, "tenant-a", "net");
    links.insert(
        &a,
        &spec_of(json!({"NetworkID": "shared", "NetworkType": "macvlan",
            "Options": {"host_device": "ens4", "vxlan": 700}})),
    );
    let tc = tconf();
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "shared", "NetworkType": "macvlan"}),
        &links,
    );
    call.config = Some(&tc);
    let said = refused(&call, "spec.NetworkID");
    assert!(
        said.contains("vx_shared") && !said.contains("tenant-a"),
        "{said}"
    );
    // The id handed out skips what the index shows in use on the device: A holds 700
    // in the index only (its reservation is not in this TenantConfig copy).
    call.spec = json!({"NetworkID": "mine", "NetworkType": "macvlan"});
    let admitted = call.run().unwrap();
    assert_eq!(admitted.spec.unwrap().options.vxlan, Some(701));
    assert_eq!(admitted.reservation.unwrap().link, "vx_mine");
    // An administrator's ClusterNetwork on A's segment, under its own name.
    let mut admin = Call::create(
        ClusterNetwork,
        json!({"NetworkID": "platform", "NetworkType": "macvlan",
            "Options": {"host_device": "ens4", "vxlan": 700}}),
        &links,
    );
    admin.namespace = "";
    refused(&admin, "spec.Options.vxlan");
}

/// Finding 2, the race the watch-fed index cannot see: two tenants' creates a moment
/// apart. The first's reservation (in the TenantConfig, written with optimistic
/// concurrency) records its link, and the second is refused against it.
#[test]
fn the_reservations_refuse_a_link_the_index_has_not_seen_yet() {
    let links = LinkTable::default();
    let mut tc = tconf();
    tc.host_devices[0].reservations.insert(
        "700".into(),
        VniReservation {
            network: "tenant-a/net".into(),
            token: "token-a".into(),
            since: "2026-01-01T00:00:00Z".into(),
            link: "vx_shared".into(),
        },
    );
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "shared", "NetworkType": "macvlan"}),
        &links,
    );
    call.config = Some(&tc);
    let said = refused(&call, "spec.NetworkID");
    assert!(
        said.contains("already reserved") && !said.contains("tenant-a"),
        "{said}"
    );
    // The same request retried (same token) is not refused by its own reservation.
    call.token = "token-a";
    call.namespace = "tenant-a";
    assert!(call.run().is_ok(), "{:?}", call.run());
}

/// Finding 5: a profile's `maxPerNamespace` bounds what one namespace takes of a shared
/// range.
#[test]
fn one_namespace_cannot_exhaust_a_shared_range() {
    let links = LinkTable::default();
    let mut tc = tconf();
    let holder = |network: &str, token: &str| VniReservation {
        network: network.into(),
        token: token.into(),
        since: "2026-01-01T00:00:00Z".into(),
        link: String::new(),
    };
    let vlan = &mut tc.host_devices[1].reservations;
    vlan.insert("100".into(), holder("tenant-b/one", "t1"));
    vlan.insert("101".into(), holder("tenant-b/two", "t2"));
    vlan.insert("102".into(), holder("tenant-c/one", "t3"));
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "three", "NetworkType": "macvlan",
            "Options": {"host_device": "ens5"}}),
        &links,
    );
    call.config = Some(&tc);
    let said = refused(&call, "spec.Options.vlan");
    assert!(said.contains("maxPerNamespace 2"), "{said}");
    // Another namespace still gets one.
    call.namespace = "tenant-d";
    let admitted = call.run().unwrap();
    assert_eq!(admitted.reservation.unwrap().vni_type, VniType::Vlan);
}

/// Finding 3: a TenantNetwork keeps static addresses inside its pool and cannot choose
/// otherwise.
#[test]
fn a_tenant_network_cannot_widen_its_static_scope() {
    let links = LinkTable::default();
    let tc = tconf();
    let mut call = Call::create(
        TenantNetwork,
        json!({"NetworkID": "x", "NetworkType": "macvlan",
            "Options": {"cidr": "10.0.0.0/24", "static_scope": "cidr"}}),
        &links,
    );
    call.config = Some(&tc);
    refused(&call, "spec.Options.static_scope");
    let mut admin = Call::create(DanmNet, call.spec.clone(), &links);
    admin.namespace = "infra";
    assert!(admin.run().is_ok());
}

/// The TenantConfig's own checks still pass with the new fields.
#[test]
fn a_tenant_config_with_limits_is_admitted() {
    let object = serde_json::to_value(tconf()).unwrap();
    let mut object = object;
    object["metadata"] = json!({"name": "tconf"});
    object["allowedNetworkTypes"] = json!(["ipvlan"]);
    let request = admit::TenantConfigRequest {
        operation: Operation::Create,
        object: &object,
        old: None,
        other: None,
    };
    assert!(admit::admit_tenant_config(&request).is_ok());
    // Its mappings and plugin names become file and program names too.
    object["networkIds"] = json!({"flannel": "../../etc/passwd"});
    object["allowedNetworkTypes"] = json!(["/sbin/reboot"]);
    let request = admit::TenantConfigRequest {
        operation: Operation::Create,
        object: &object,
        old: None,
        other: None,
    };
    let said = admit::admit_tenant_config(&request)
        .unwrap_err()
        .to_string();
    assert!(
        said.contains("networkIds[flannel]") && said.contains("allowedNetworkTypes[0]"),
        "{said}"
    );
}
