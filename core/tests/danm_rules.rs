//! One test per rule of DANM's user guide, "List of validation rules" (numbered as in the
//! current guide: DanmNet 1-22, TenantNetwork 1-6, TenantConfig 1-4; docs/webhook.md maps the
//! older numbering), each with an object that breaks the rule and one that keeps it. Every
//! denial must name the field and the rule.

use danm_core::admit::vni::{VNI_RESERVATION_ANNOTATION, VniType};
use danm_core::admit::{
    Admitted, Denial, Environment, NetworkRequest, Operation, TenantConfigRequest, admit_network,
    admit_tenant_config, admit_tenant_config_delete,
};
use danm_core::network::{NetworkKind, Rule};
use danm_crds::{IfaceProfile, TenantConfig, VniReservation};
use serde_json::{Value, json};

use NetworkKind::{ClusterNetwork, DanmNet, TenantNetwork};
use Operation::{Create, Delete, Update};

fn tconf() -> TenantConfig {
    TenantConfig {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("tconf".into()),
            ..Default::default()
        },
        host_devices: vec![
            IfaceProfile {
                name: "ens4".into(),
                vni_type: "vlan".into(),
                vni_range: "1000-2000".into(),
                ..Default::default()
            },
            IfaceProfile {
                name: "ens5".into(),
                vni_type: "vlan".into(),
                vni_range: "2000-3000".into(),
                ..Default::default()
            },
            IfaceProfile {
                name: "nokia.k8s.io/sriov_ens1f0".into(),
                vni_type: "vxlan".into(),
                vni_range: "700-710".into(),
                ..Default::default()
            },
        ],
        network_ids: [("flannel".to_string(), "flannel".to_string())].into(),
        ..Default::default()
    }
}

fn object(kind: NetworkKind, spec: Value) -> Value {
    json!({
        "apiVersion": "danm.io/v1",
        "kind": kind.as_str(),
        "metadata": {"name": "net", "namespace": "ns"},
        "spec": spec,
    })
}

struct Call<'a> {
    kind: NetworkKind,
    operation: Operation,
    spec: Value,
    old: Option<Value>,
    connected: Option<&'a str>,
    config: Option<TenantConfig>,
}

impl Call<'_> {
    fn new(kind: NetworkKind, operation: Operation, spec: Value) -> Self {
        Call {
            kind,
            operation,
            spec,
            old: None,
            connected: None,
            config: Some(tconf()),
        }
    }
    fn run(&self) -> Result<Admitted, Denial> {
        let obj = object(self.kind, self.spec.clone());
        let old = self.old.clone().map(|s| object(self.kind, s));
        let (object, old_object) = match self.operation {
            Delete => (None, Some(old.as_ref().unwrap_or(&obj))),
            _ => (Some(&obj), old.as_ref()),
        };
        let mut first = |_n: usize| 0;
        admit_network(
            &NetworkRequest {
                operation: self.operation,
                kind: self.kind,
                namespace: "ns",
                name: "net",
                object,
                old_object,
            },
            &mut Environment {
                tenant_config: self.config.as_ref(),
                connected_pod: self.connected,
                choose: &mut first,
                reservation_token: "token-1",
                links: &danm_core::hostlinks::LinkTable::default(),
            },
        )
    }
}

fn admitted(call: Call) -> Admitted {
    match call.run() {
        Ok(a) => a,
        Err(d) => panic!("refused: {d}"),
    }
}

#[track_caller]
fn refused(call: Call, field: &str, rule: Rule) -> Denial {
    let denial = match call.run() {
        Ok(a) => panic!("admitted, expected {field} refused by {rule}: {a:?}"),
        Err(d) => d,
    };
    assert!(
        denial
            .problems
            .iter()
            .any(|p| p.field == field && p.rule == rule),
        "expected {field} refused by {rule}, got: {denial}"
    );
    let text = denial.to_string();
    assert!(
        text.contains(field) && text.contains(&rule.to_string()),
        "{text}"
    );
    denial
}

fn dn(spec: Value) -> Call<'static> {
    Call::new(DanmNet, Create, spec)
}

fn base() -> Value {
    json!({"NetworkID": "net", "NetworkType": "ipvlan", "Options": {"host_device": "ens3"}})
}

fn with(mut spec: Value, options: Value) -> Value {
    for (k, v) in options.as_object().unwrap() {
        spec["Options"][k] = v.clone();
    }
    spec
}

#[test]
fn danmnet_rule_01_cidr_must_be_valid_ipv4() {
    refused(
        dn(with(base(), json!({"cidr": "10.0.0/24"}))),
        "spec.Options.cidr",
        Rule::DanmNet(1),
    );
    refused(
        dn(with(base(), json!({"cidr": "2001:db8::/64"}))),
        "spec.Options.cidr",
        Rule::DanmNet(1),
    );
    admitted(dn(with(base(), json!({"cidr": "10.0.0.0/24"}))));
    // DANM refused anything wider than /9 (its bit arrays): lifted.
    admitted(dn(with(base(), json!({"cidr": "10.0.0.0/8"}))));
}

#[test]
fn danmnet_rule_02_route_gateways_inside_cidr() {
    refused(
        dn(with(
            base(),
            json!({"cidr": "10.0.0.0/24", "routes": {"10.9.0.0/16": "10.0.1.1"}}),
        )),
        "spec.Options.routes[10.9.0.0/16]",
        Rule::DanmNet(2),
    );
    refused(
        dn(with(base(), json!({"routes": {"10.9.0.0/16": "10.0.0.1"}}))),
        "spec.Options.routes",
        Rule::DanmNet(2),
    );
    admitted(dn(with(
        base(),
        json!({"cidr": "10.0.0.0/24", "routes": {"10.9.0.0/16": "10.0.0.1"}}),
    )));
}

#[test]
fn danmnet_rule_03_net6_must_be_valid_ipv6() {
    refused(
        dn(with(base(), json!({"net6": "10.0.0.0/24"}))),
        "spec.Options.net6",
        Rule::DanmNet(3),
    );
    admitted(dn(with(base(), json!({"net6": "2001:db8::/64"}))));
}

#[test]
fn danmnet_rule_04_route6_gateways_inside_net6() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "routes6": {"2001:db9::/64": "2001:db7::1"}}),
        )),
        "spec.Options.routes6[2001:db9::/64]",
        Rule::DanmNet(4),
    );
    admitted(dn(with(
        base(),
        json!({"net6": "2001:db8::/64", "routes6": {"2001:db9::/64": "2001:db8::1"}}),
    )));
}

#[test]
fn danmnet_rule_05_alloc_not_given() {
    refused(
        dn(with(
            base(),
            json!({"cidr": "10.0.0.0/30", "alloc": "gAAB"}),
        )),
        "spec.Options.alloc",
        Rule::DanmNet(5),
    );
    // An UPDATE may keep or drop DANM's array (ipamd migrates it), not change it.
    let old = with(base(), json!({"cidr": "10.0.0.0/30", "alloc": "gAAB"}));
    let mut keep = Call::new(DanmNet, Update, old.clone());
    keep.old = Some(old.clone());
    admitted(keep);
    let mut change = Call::new(
        DanmNet,
        Update,
        with(base(), json!({"cidr": "10.0.0.0/30", "alloc": "wAAB"})),
    );
    change.old = Some(old);
    refused(change, "spec.Options.alloc", Rule::DanmNet(5));
}

#[test]
fn danmnet_rule_06_alloc6_not_given() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "alloc6": "gAAB"}),
        )),
        "spec.Options.alloc6",
        Rule::DanmNet(6),
    );
}

#[test]
fn danmnet_rule_07_allocation_pool_needs_cidr() {
    refused(
        dn(with(
            base(),
            json!({"allocation_pool": {"start": "10.0.0.1"}}),
        )),
        "spec.Options.allocation_pool",
        Rule::DanmNet(7),
    );
}

#[test]
fn danmnet_rule_08_pool_start_inside_cidr() {
    refused(
        dn(with(
            base(),
            json!({"cidr": "10.0.0.0/24", "allocation_pool": {"start": "10.0.1.1"}}),
        )),
        "spec.Options.allocation_pool.start",
        Rule::DanmNet(8),
    );
}

#[test]
fn danmnet_rule_09_pool_end_inside_cidr() {
    refused(
        dn(with(
            base(),
            json!({"cidr": "10.0.0.0/24", "allocation_pool": {"end": "10.0.1.1"}}),
        )),
        "spec.Options.allocation_pool.end",
        Rule::DanmNet(9),
    );
}

#[test]
fn danmnet_rule_10_pool_end_not_before_start() {
    refused(
        dn(with(
            base(),
            json!({"cidr": "10.0.0.0/24", "allocation_pool": {"start": "10.0.0.9", "end": "10.0.0.5"}}),
        )),
        "spec.Options.allocation_pool",
        Rule::DanmNet(10),
    );
    // DANM wanted end > start; a one-address pool is fine here.
    admitted(dn(with(
        base(),
        json!({"cidr": "10.0.0.0/24", "allocation_pool": {"start": "10.0.0.9", "end": "10.0.0.9"}}),
    )));
}

#[test]
fn danmnet_rule_11_pool6_needs_net6() {
    refused(
        dn(with(
            base(),
            json!({"allocation_pool_v6": {"cidr": "2001:db8::/120"}}),
        )),
        "spec.Options.allocation_pool_v6",
        Rule::DanmNet(11),
    );
}

#[test]
fn danmnet_rule_12_pool6_start_inside_its_cidr() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "allocation_pool_v6": {"cidr": "2001:db8::/120", "start": "2001:db8::1:1"}}),
        )),
        "spec.Options.allocation_pool_v6.start",
        Rule::DanmNet(12),
    );
}

#[test]
fn danmnet_rule_13_pool6_end_inside_its_cidr() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "allocation_pool_v6": {"cidr": "2001:db8::/120", "end": "2001:db8::1:1"}}),
        )),
        "spec.Options.allocation_pool_v6.end",
        Rule::DanmNet(13),
    );
}

#[test]
fn danmnet_rule_14_pool6_end_not_before_start() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "allocation_pool_v6": {"start": "2001:db8::9", "end": "2001:db8::5"}}),
        )),
        "spec.Options.allocation_pool_v6",
        Rule::DanmNet(14),
    );
}

#[test]
fn danmnet_rule_15_pool6_cidr_valid_and_inside_net6() {
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "allocation_pool_v6": {"cidr": "2001:db9::/120"}}),
        )),
        "spec.Options.allocation_pool_v6.cidr",
        Rule::DanmNet(15),
    );
    refused(
        dn(with(
            base(),
            json!({"net6": "2001:db8::/64", "allocation_pool_v6": {"cidr": "banana"}}),
        )),
        "spec.Options.allocation_pool_v6.cidr",
        Rule::DanmNet(15),
    );
}

#[test]
fn danmnet_rule_16_eight_million_addresses_lifted() {
    // DANM refused more than 2^23 allocatable addresses (its bit arrays); shards have no
    // such limit, so a /64 pool next to a /9 is admitted.
    admitted(dn(with(
        base(),
        json!({"cidr": "10.0.0.0/9", "net6": "2001:db8::/64", "allocation_pool_v6": {"cidr": "2001:db8::/64"}}),
    )));
}

#[test]
fn danmnet_rule_17_vlan_and_vxlan_not_together() {
    refused(
        dn(with(base(), json!({"vlan": 10, "vxlan": 20}))),
        "spec.Options.vlan",
        Rule::DanmNet(17),
    );
    admitted(dn(with(base(), json!({"vlan": 10}))));
}

#[test]
fn danmnet_rule_18_network_id_mandatory_and_short_for_dynamic_backends() {
    refused(
        dn(json!({"NetworkID": "elevenchars", "NetworkType": "macvlan"})),
        "spec.NetworkID",
        Rule::DanmNet(18),
    );
    refused(
        dn(json!({"NetworkType": "macvlan"})),
        "spec.NetworkID",
        Rule::DanmNet(18),
    );
    // Bytes, not characters: the kernel's limit on interface names.
    refused(
        dn(json!({"NetworkID": "ééééé_", "NetworkType": "ipvlan"})),
        "spec.NetworkID",
        Rule::DanmNet(18),
    );
    admitted(dn(
        json!({"NetworkID": "elevenchars", "NetworkType": "flannel"}),
    ));
}

#[test]
fn danmnet_rule_19_allowed_tenants_only_on_cluster_networks() {
    let mut spec = base();
    spec["AllowedTenants"] = json!(["ns"]);
    refused(dn(spec.clone()), "spec.AllowedTenants", Rule::DanmNet(19));
    refused(
        Call::new(TenantNetwork, Create, spec.clone()),
        "spec.AllowedTenants",
        Rule::DanmNet(19),
    );
    admitted(Call::new(ClusterNetwork, Create, spec));
}

#[test]
fn danmnet_rule_20_device_pool_for_sriov_never_with_host_device() {
    refused(
        dn(
            json!({"NetworkID": "sriov", "NetworkType": "sriov", "Options": {"host_device": "ens3"}}),
        ),
        "spec.Options.device_pool",
        Rule::DanmNet(20),
    );
    refused(
        dn(
            json!({"NetworkID": "sriov", "NetworkType": "sriov", "Options": {"host_device": "ens3"}}),
        ),
        "spec.Options.host_device",
        Rule::DanmNet(20),
    );
    refused(
        dn(with(base(), json!({"device_pool": "nokia.k8s.io/pool"}))),
        "spec.Options.host_device",
        Rule::DanmNet(20),
    );
    admitted(dn(
        json!({"NetworkID": "sriov", "NetworkType": "sriov", "Options": {"device_pool": "nokia.k8s.io/pool"}}),
    ));
}

#[test]
fn danmnet_rule_21_device_and_ids_fixed_while_pods_are_connected() {
    let old = with(base(), json!({"vlan": 10}));
    for (change, field) in [
        (json!({"vlan": 11}), "spec.Options.vlan"),
        (json!({"host_device": "ens9"}), "spec.Options.host_device"),
    ] {
        for kind in [DanmNet, ClusterNetwork] {
            let mut call = Call::new(kind, Update, with(old.clone(), change.clone()));
            call.old = Some(old.clone());
            call.connected = Some("ns/pod-0");
            let denial = refused(call, field, Rule::DanmNet(21));
            assert!(denial.to_string().contains("ns/pod-0"), "{denial}");
            let mut free = Call::new(kind, Update, with(old.clone(), change.clone()));
            free.old = Some(old.clone());
            admitted(free);
        }
    }
    // Other fields may change under connected pods.
    let mut call = Call::new(DanmNet, Update, with(old.clone(), json!({"rt_tables": 7})));
    call.old = Some(old);
    call.connected = Some("ns/pod-0");
    admitted(call);
}

#[test]
fn danmnet_rule_22_not_deleted_while_pods_are_connected() {
    for kind in [DanmNet, TenantNetwork, ClusterNetwork] {
        let mut call = Call::new(kind, Delete, base());
        call.connected = Some("ns/pod-0");
        refused(call, "metadata.name", Rule::DanmNet(22));
        admitted(Call::new(kind, Delete, base()));
    }
}

fn tn(spec: Value) -> Call<'static> {
    Call::new(TenantNetwork, Create, spec)
}

#[test]
fn tenantnetwork_rule_1_vlan_not_given() {
    refused(
        tn(with(base(), json!({"host_device": "ens4", "vlan": 700}))),
        "spec.Options.vlan",
        Rule::TenantNetwork(1),
    );
}

#[test]
fn tenantnetwork_rule_2_vxlan_not_given() {
    refused(
        tn(with(base(), json!({"host_device": "ens4", "vxlan": 700}))),
        "spec.Options.vxlan",
        Rule::TenantNetwork(2),
    );
}

fn tn_update(field: &str, value: Value) -> Call<'static> {
    let old = with(base(), json!({"host_device": "ens4", "vlan": 1000}));
    let mut new = old.clone();
    new["Options"][field] = value;
    let mut call = Call::new(TenantNetwork, Update, new);
    call.old = Some(old);
    call
}

#[test]
fn tenantnetwork_rule_3_vlan_not_changed() {
    refused(
        tn_update("vlan", json!(1001)),
        "spec.Options.vlan",
        Rule::TenantNetwork(3),
    );
    // Unchanged, it passes (no pods needed to be connected for the rule to hold).
    admitted(tn_update("vlan", json!(1000)));
}

#[test]
fn tenantnetwork_rule_4_vxlan_not_changed() {
    refused(
        tn_update("vxlan", json!(5)),
        "spec.Options.vxlan",
        Rule::TenantNetwork(4),
    );
}

#[test]
fn tenantnetwork_rule_5_host_device_not_changed() {
    refused(
        tn_update("host_device", json!("ens5")),
        "spec.Options.host_device",
        Rule::TenantNetwork(5),
    );
}

#[test]
fn tenantnetwork_rule_6_device_pool_not_changed() {
    refused(
        tn_update("device_pool", json!("nokia.k8s.io/sriov_ens1f0")),
        "spec.Options.device_pool",
        Rule::TenantNetwork(6),
    );
}

fn tenant_config_object(body: &Value) -> Value {
    let mut object =
        json!({"apiVersion": "danm.io/v1", "kind": "TenantConfig", "metadata": {"name": "tconf"}});
    for (k, v) in body.as_object().unwrap() {
        object[k] = v.clone();
    }
    object
}

fn tc(operation: Operation, body: Value, old: Option<Value>) -> Result<Admitted, Denial> {
    let object = tenant_config_object(&body);
    let old = old.map(|o| tenant_config_object(&o));
    admit_tenant_config(&TenantConfigRequest {
        operation,
        object: &object,
        old: old.as_ref(),
        other: None,
    })
}

#[track_caller]
fn tc_refused(result: Result<Admitted, Denial>, field: &str, rule: Rule) {
    let denial = result.expect_err("refused");
    assert!(
        denial
            .problems
            .iter()
            .any(|p| p.field == field && p.rule == rule),
        "expected {field} refused by {rule}, got: {denial}"
    );
}

#[test]
fn tenantconfig_rule_1_host_devices_or_network_ids() {
    tc_refused(
        tc(Create, json!({}), None),
        "hostDevices",
        Rule::TenantConfig(1),
    );
    tc(Create, json!({"networkIds": {"flannel": "flannel"}}), None).unwrap();
    tc(Create, json!({"hostDevices": [{"name": "ens4"}]}), None).unwrap();
}

#[test]
fn tenantconfig_rule_2_vni_type_and_range_together() {
    // DANM's 0_wrong_tconf.
    tc_refused(
        tc(
            Create,
            json!({"hostDevices": [{"name": "ens4", "vniType": "vlan"}]}),
            None,
        ),
        "hostDevices[0].vniRange",
        Rule::TenantConfig(2),
    );
    tc_refused(
        tc(
            Create,
            json!({"hostDevices": [{"name": "ens4", "vniRange": "10-20"}]}),
            None,
        ),
        "hostDevices[0].vniRange",
        Rule::TenantConfig(2),
    );
    tc(
        Create,
        json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "1000-2000"}]}),
        None,
    )
    .unwrap();
}

#[test]
fn tenantconfig_rule_3_mappings_have_key_and_value() {
    tc_refused(
        tc(Create, json!({"networkIds": {"flannel": ""}}), None),
        "networkIds[flannel]",
        Rule::TenantConfig(3),
    );
    tc_refused(
        tc(Create, json!({"networkIds": {"": "x"}}), None),
        "networkIds[]",
        Rule::TenantConfig(3),
    );
}

#[test]
fn tenantconfig_rule_4_mapped_network_id_short_for_dynamic_types() {
    tc_refused(
        tc(
            Create,
            json!({"networkIds": {"IPVLAN": "elevenchars"}}),
            None,
        ),
        "networkIds[IPVLAN]",
        Rule::TenantConfig(4),
    );
    tc(
        Create,
        json!({"networkIds": {"calico": "elevenchars"}}),
        None,
    )
    .unwrap();
}

#[test]
fn tenantconfig_checks_danm_made_without_numbers() {
    let cases = [
        (
            json!({"hostDevices": [{"name": "ens4", "vniType": "qinq", "vniRange": "1"}]}),
            "hostDevices[0].vniType",
        ),
        (
            json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "2000-1000"}]}),
            "hostDevices[0].vniRange",
        ),
        (
            json!({"hostDevices": [{"name": "", "vniType": "vlan", "vniRange": "1"}]}),
            "hostDevices[0].name",
        ),
        (
            json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "1", "alloc": "gA=="}]}),
            "hostDevices[0].alloc",
        ),
    ];
    for (body, field) in cases {
        tc_refused(tc(Create, body, None), field, Rule::Unnumbered);
    }
}

#[test]
fn tenantconfig_rules_of_ours() {
    // DANM capped ids at 5000 (its bit array); the protocols' limits apply instead.
    tc(
        Create,
        json!({"hostDevices": [{"name": "ens4", "vniType": "vxlan", "vniRange": "100000-100100"}]}),
        None,
    )
    .unwrap();
    // Ids beyond them (a TenantConfig carried over from DANM) are admitted with a warning
    // and never handed out; a range with no valid id is refused.
    let carried = tc(
        Create,
        json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "4000-5000"}]}),
        None,
    )
    .unwrap();
    assert_eq!(
        carried.warnings,
        [
            "hostDevices[0].vniRange: 4095-5000 outside 1-4094 (the vlan ids) will never be handed out"
        ]
    );
    tc_refused(
        tc(
            Create,
            json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "4095-5000"}]}),
            None,
        ),
        "hostDevices[0].vniRange",
        Rule::Unnumbered,
    );
    tc_refused(
        tc(
            Create,
            json!({"hostDevices": [
                {"name": "ens4", "vniType": "vlan", "vniRange": "1-2"},
                {"name": "ens4", "vniType": "vlan", "vniRange": "3-4"}]}),
            None,
        ),
        "hostDevices[1].name",
        Rule::Ours,
    );
    // A profile holding reservations cannot be removed or retyped.
    let held = json!({"hostDevices": [{"name": "ens4", "vniType": "vlan", "vniRange": "1-9",
        "reservations": {"1": {"network": "ns/a", "token": "t", "since": "2026-01-01T00:00:00Z"}}}]});
    tc_refused(
        tc(
            Update,
            json!({"hostDevices": [{"name": "ens4", "vniType": "vxlan", "vniRange": "1-9"}]}),
            Some(held.clone()),
        ),
        "hostDevices",
        Rule::Ours,
    );
    tc(Update, held.clone(), Some(held.clone())).unwrap();
    tc_refused(
        tc(Create, held, None),
        "hostDevices[0].reservations",
        Rule::Ours,
    );
    tc_refused(
        tc(Create, json!({"hostDevices": "ens4"}), None),
        "hostDevices",
        Rule::Schema,
    );
}

#[test]
fn an_update_that_leaves_reservations_out_gets_them_back() {
    let reservations =
        json!({"1001": {"network": "ns/a", "token": "t", "since": "2026-01-01T00:00:00Z"}});
    let stored = json!({"hostDevices": [
        {"name": "ens5", "vniType": "vlan", "vniRange": "2000-3000"},
        {"name": "ens4", "vniType": "vlan", "vniRange": "1000-2000",
         "alloc": "gA==", "reservations": reservations}]});
    // `kubectl apply` of the original manifest, profiles reordered and a range widened.
    let applied = json!({"hostDevices": [
        {"name": "ens4", "vniType": "vlan", "vniRange": "1000-2500"},
        {"name": "ens5", "vniType": "vlan", "vniRange": "2000-3000"}]});
    let patch = tc(Update, applied.clone(), Some(stored.clone()))
        .unwrap()
        .patch;
    let mut doc = tenant_config_object(&applied);
    json_patch::patch(&mut doc, &patch).unwrap();
    assert_eq!(doc["hostDevices"][0]["reservations"], reservations);
    assert_eq!(doc["hostDevices"][0]["alloc"], "gA==");
    assert_eq!(doc["hostDevices"][0]["vniRange"], "1000-2500");
    assert!(doc["hostDevices"][1].get("reservations").is_none());
    // Emptied on purpose (as the webhook does when it frees the last id): kept empty.
    let emptied = json!({"hostDevices": [
        {"name": "ens4", "vniType": "vlan", "vniRange": "1000-2000", "alloc": "", "reservations": {}},
        {"name": "ens5", "vniType": "vlan", "vniRange": "2000-3000"}]});
    assert!(
        tc(Update, emptied, Some(stored))
            .unwrap()
            .patch
            .0
            .is_empty()
    );
}

#[test]
fn a_tenant_config_holding_ids_is_not_deleted_and_a_second_one_is_refused() {
    let held = tenant_config_object(&json!({"hostDevices": [{"name": "ens4", "vniType": "vlan",
        "vniRange": "1-9", "reservations": {"3": {"network": "ns/a", "token": "t", "since": "x"}}}]}));
    let denial = admit_tenant_config_delete(&held).unwrap_err();
    assert!(denial.to_string().contains("ns/a"), "{denial}");
    let legacy = tenant_config_object(&json!({"hostDevices": [{"name": "ens4", "vniType": "vlan",
        "vniRange": "1-9", "alloc": danm_core::migrate::danm_bit_array(5001, &[3])}]}));
    assert!(admit_tenant_config_delete(&legacy).is_err());
    // DANM's array of a profile that never handed an id out: no bit set.
    let free = tenant_config_object(&json!({"hostDevices": [{"name": "ens4", "vniType": "vlan",
        "vniRange": "1-9", "alloc": "AAAAAAAAAAA="}]}));
    admit_tenant_config_delete(&free).unwrap();

    let second = tenant_config_object(&json!({"networkIds": {"flannel": "flannel"}}));
    let request = |other| TenantConfigRequest {
        operation: Create,
        object: &second,
        old: None,
        other,
    };
    let denial = admit_tenant_config(&request(Some("first"))).unwrap_err();
    assert!(
        denial.to_string().contains("TenantConfig first exists"),
        "{denial}"
    );
    admit_tenant_config(&request(Some("tconf"))).unwrap();
    admit_tenant_config(&request(None)).unwrap();
}

#[test]
fn an_update_that_leaves_the_spec_as_stored_is_admitted_as_it_is() {
    // Stored before the webhook: no NetworkID, a pool end before its start. A label or a
    // finalizer changes nothing in the spec.
    let stored = json!({"Options": {"cidr": "10.0.0.0/24",
        "allocation_pool": {"start": "10.0.0.9", "end": "10.0.0.1"}}});
    let mut call = dn(stored.clone());
    call.operation = Update;
    call.old = Some(stored.clone());
    assert!(admitted(call).patch.0.is_empty());
    // A change to the spec is judged in full.
    let mut changed = stored.clone();
    changed["Options"]["host_device"] = json!("ens3");
    let mut call = dn(changed);
    call.operation = Update;
    call.old = Some(stored);
    refused(call, "spec.Options.allocation_pool", Rule::DanmNet(10));
}

#[test]
fn a_field_of_the_wrong_type_is_named() {
    refused(
        dn(with(base(), json!({"vlan": "ten"}))),
        "spec.Options.vlan",
        Rule::Schema,
    );
    refused(dn(json!({"NetworkID": 5})), "spec.NetworkID", Rule::Schema);
}

fn apply(spec: Value, admitted: &Admitted) -> Value {
    let mut doc = object(TenantNetwork, spec);
    json_patch::patch(&mut doc, &admitted.patch).expect("the patch applies");
    doc
}

#[test]
fn a_tenant_network_gets_the_named_profile_an_id_and_the_mapped_network_id() {
    // DANM's 3_chosen_device.
    let spec = json!({"NetworkID": "internal", "NetworkType": "ipvlan",
        "Options": {"host_device": "ens5", "cidr": "10.240.1.0/24"}});
    let a = admitted(tn(spec.clone()));
    let pick = a.reservation.clone().unwrap();
    assert_eq!(
        (pick.profile.as_str(), pick.vni_type, pick.id),
        ("ens5", VniType::Vlan, 2000)
    );
    let doc = apply(spec, &a);
    assert_eq!(doc["spec"]["Options"]["vlan"], 2000);
    assert_eq!(doc["spec"]["Options"]["host_device"], "ens5");
    assert_eq!(
        doc["spec"]["Options"]["allocation_pool"],
        json!({"start": "10.240.1.1", "end": "10.240.1.254"})
    );
    assert_eq!(
        doc["metadata"]["annotations"][VNI_RESERVATION_ANNOTATION],
        "token-1"
    );

    // DANM's 6_static_tnet: the mapping overrides what the tenant wrote.
    let spec = json!({"NetworkID": "iknowitbetter", "NetworkType": "flannel"});
    let a = admitted(tn(spec.clone()));
    assert!(a.reservation.is_none());
    let doc = apply(spec, &a);
    assert_eq!(doc["spec"]["NetworkID"], "flannel");
    assert!(doc["metadata"].get("annotations").is_none());
}

#[test]
fn a_tenant_network_naming_no_device_gets_a_nic_profile_never_a_device_pool() {
    let spec = json!({"NetworkID": "internal2", "Options": {"cidr": "10.250.1.0/24"}});
    for pick in 0..6 {
        let mut choose = move |n: usize| {
            assert_eq!(n, 2, "only the two NIC profiles are candidates");
            pick
        };
        let obj = object(TenantNetwork, spec.clone());
        let config = tconf();
        let a = admit_network(
            &NetworkRequest {
                operation: Create,
                kind: TenantNetwork,
                namespace: "ns",
                name: "net",
                object: Some(&obj),
                old_object: None,
            },
            &mut Environment {
                tenant_config: Some(&config),
                connected_pod: None,
                choose: &mut choose,
                reservation_token: "t",
                links: &danm_core::hostlinks::LinkTable::default(),
            },
        )
        .unwrap();
        let doc = apply(spec.clone(), &a);
        let (device, id) = [("ens4", 1000), ("ens5", 2000)][pick % 2];
        assert_eq!(doc["spec"]["Options"]["host_device"], device);
        assert_eq!(doc["spec"]["Options"]["vlan"], id);
        assert_eq!(doc["spec"]["NetworkType"], "ipvlan");
    }
}

#[test]
fn a_tenant_network_with_a_device_pool_gets_only_that_profile() {
    let spec = json!({"NetworkID": "sriov", "NetworkType": "sriov",
        "Options": {"device_pool": "nokia.k8s.io/sriov_ens1f0"}});
    let mut call = tn(spec.clone());
    let mut config = tconf();
    config.network_ids.insert("sriov".into(), "t-sriov".into());
    call.config = Some(config);
    let a = admitted(call);
    let doc = apply(spec, &a);
    assert_eq!(doc["spec"]["Options"]["vxlan"], 700);
    assert_eq!(doc["spec"]["NetworkID"], "t-sriov");
    assert!(doc["spec"]["Options"].get("host_device").is_none());
}

/// Our departure: a delegated (or sriov) TenantNetwork runs `<cniDir>/<NetworkID>.conf`
/// on every node, so its NetworkID comes from the TenantConfig's `networkIds`, never from
/// the tenant; a type the TenantConfig maps no NetworkID for is refused, naming the field.
#[test]
fn a_delegated_tenant_network_needs_a_network_id_from_the_tenant_config() {
    for (network_type, options) in [
        ("sriov", json!({"device_pool": "nokia.k8s.io/sriov_ens1f0"})),
        ("bridge", json!({"cidr": "10.5.0.0/24"})),
    ] {
        let spec = json!({"NetworkID": "primary", "NetworkType": network_type,
            "Options": options});
        let d = refused(tn(spec), "spec.NetworkType", Rule::Ours);
        assert!(d.to_string().contains("networkIds"), "{d}");
    }
    // A mapped type takes the TenantConfig's NetworkID, whatever the tenant wrote.
    let spec = json!({"NetworkID": "primary", "NetworkType": "flannel"});
    let doc = apply(spec.clone(), &admitted(tn(spec)));
    assert_eq!(doc["spec"]["NetworkID"], "flannel");
}

/// Our departure: a device pool is for sriov and delegated types; an ipvlan or macvlan
/// interface hangs off host_device, which the plugin checks on the node.
#[test]
fn a_device_pool_is_refused_for_ipvlan_and_macvlan() {
    for network_type in ["ipvlan", "macvlan"] {
        let spec = json!({"NetworkID": "net", "NetworkType": network_type,
            "Options": {"device_pool": "nokia.k8s.io/sriov_ens1f0", "cidr": "10.5.0.0/24"}});
        refused(dn(spec), "spec.Options.device_pool", Rule::Ours);
    }
}

#[test]
fn a_tenant_network_needs_a_known_device_and_a_tenant_config() {
    // DANM's 5_wrong_device.
    let d = refused(
        tn(with(base(), json!({"host_device": "ens6"}))),
        "spec.Options.host_device",
        Rule::Unnumbered,
    );
    assert!(d.to_string().contains("ens4, ens5"), "{d}");
    let mut call = tn(base());
    call.config = None;
    refused(call, "spec", Rule::Unnumbered);
    // A device pool is not a host device.
    refused(
        tn(with(
            base(),
            json!({"host_device": "nokia.k8s.io/sriov_ens1f0"}),
        )),
        "spec.Options.host_device",
        Rule::Unnumbered,
    );
}

#[test]
fn reserved_ids_are_skipped_and_an_exhausted_range_is_refused() {
    let mut config = tconf();
    config.host_devices[0].vni_range = "1000-1001".into();
    let holder = |t: &str| VniReservation {
        network: "ns/x".into(),
        token: t.into(),
        since: "2026-01-01T00:00:00Z".into(),
        link: String::new(),
    };
    config.host_devices[0]
        .reservations
        .insert("1000".into(), holder("a"));
    let mut call = tn(with(base(), json!({"host_device": "ens4"})));
    call.config = Some(config.clone());
    assert_eq!(admitted(call).reservation.unwrap().id, 1001);
    config.host_devices[0]
        .reservations
        .insert("1001".into(), holder("b"));
    let mut call = tn(with(base(), json!({"host_device": "ens4"})));
    call.config = Some(config);
    refused(call, "spec.Options.vlan", Rule::Unnumbered);
}

#[test]
fn a_refused_tenant_network_reserves_nothing() {
    // The NetworkID is too long only once the mapping is applied: refused before any id.
    let mut config = tconf();
    config
        .network_ids
        .insert("macvlan".into(), "muchtoolongid".into());
    let mut call = tn(json!({"NetworkID": "x", "NetworkType": "macvlan",
        "Options": {"host_device": "ens4"}}));
    call.config = Some(config);
    refused(call, "spec.NetworkID", Rule::DanmNet(18));
}

#[test]
fn the_reservation_annotation_is_the_webhooks() {
    // On CREATE, a copied token is replaced (an id is reserved) or removed (none is).
    let copied = |spec: Value| {
        let mut obj = object(TenantNetwork, spec);
        obj["metadata"]["annotations"] =
            json!({VNI_RESERVATION_ANNOTATION: "copied", "keep": "me"});
        obj
    };
    let config = tconf();
    let run = |obj: &Value, operation: Operation, old: Option<&Value>| {
        let mut first = |_: usize| 0;
        admit_network(
            &NetworkRequest {
                operation,
                kind: TenantNetwork,
                namespace: "ns",
                name: "net",
                object: Some(obj),
                old_object: old,
            },
            &mut Environment {
                tenant_config: Some(&config),
                connected_pod: None,
                choose: &mut first,
                reservation_token: "fresh",
                links: &danm_core::hostlinks::LinkTable::default(),
            },
        )
    };
    for (spec, expected) in [
        (with(base(), json!({"host_device": "ens4"})), Some("fresh")),
        (json!({"NetworkID": "n", "NetworkType": "flannel"}), None),
    ] {
        let mut doc = copied(spec);
        let a = run(&doc, Create, None).unwrap();
        json_patch::patch(&mut doc, &a.patch).unwrap();
        let annotations = &doc["metadata"]["annotations"];
        assert_eq!(
            annotations
                .get(VNI_RESERVATION_ANNOTATION)
                .and_then(Value::as_str),
            expected
        );
        assert_eq!(annotations["keep"], "me");
    }
    // On UPDATE it cannot be set, changed or removed.
    let stored = {
        let mut o = object(
            TenantNetwork,
            with(base(), json!({"host_device": "ens4", "vlan": 1000})),
        );
        o["metadata"]["annotations"] = json!({VNI_RESERVATION_ANNOTATION: "t"});
        o
    };
    for value in [json!("other"), Value::Null] {
        let mut changed = stored.clone();
        changed["metadata"]["annotations"] = if value.is_null() {
            json!({})
        } else {
            json!({VNI_RESERVATION_ANNOTATION: value})
        };
        let err = run(&changed, Update, Some(&stored)).unwrap_err();
        assert!(
            err.to_string().contains(VNI_RESERVATION_ANNOTATION),
            "{err}"
        );
    }
    let same = run(&stored, Update, Some(&stored)).unwrap();
    assert!(same.patch.0.is_empty(), "{:?}", same.patch);
}

#[test]
fn danm_defaults_are_written_out() {
    let spec = json!({"NetworkID": "n", "Options": {"host_device": "ens3",
        "cidr": "10.0.0.0/24", "net6": "2001:db8::/64"}});
    let a = admitted(dn(spec.clone()));
    let mut doc = object(DanmNet, spec);
    json_patch::patch(&mut doc, &a.patch).unwrap();
    assert_eq!(doc["spec"]["NetworkType"], "ipvlan");
    assert_eq!(
        doc["spec"]["Options"]["allocation_pool_v6"],
        json!({"cidr": "2001:db8::/106", "start": "2001:db8::1", "end": "2001:db8::3f:fffe"})
    );
    // A second pass changes nothing.
    let again = admitted(dn(doc["spec"].clone()));
    assert!(again.patch.0.is_empty(), "{:?}", again.patch);
}

#[test]
fn a_retried_admission_gets_the_id_its_token_already_holds() {
    let mut config = tconf();
    config.host_devices[1].reservations.insert(
        "2500".into(),
        VniReservation {
            network: "ns/net".into(),
            token: "token-1".into(),
            since: "2026-01-01T00:00:00Z".into(),
            link: String::new(),
        },
    );
    let spec = json!({"NetworkID": "n", "Options": {}});
    let mut call = tn(spec.clone());
    call.config = Some(config);
    let a = admitted(call);
    assert!(a.reservation.is_none(), "nothing new to record");
    let doc = apply(spec, &a);
    assert_eq!(doc["spec"]["Options"]["host_device"], "ens5");
    assert_eq!(doc["spec"]["Options"]["vlan"], 2500);
    assert_eq!(
        doc["metadata"]["annotations"][VNI_RESERVATION_ANNOTATION],
        "token-1"
    );
}

/// What replaying DANM's own admission tables found (issue 24): an UPDATE that carries no
/// stored object cannot skip the rules on changes, and a pool whose only address is
/// reserved is refused, naming the field.
#[test]
fn departures_found_by_danms_admission_tables() {
    let spec = json!({"NetworkID": "n", "Options": {"host_device": "ens4", "vlan": 1000}});
    let mut call = Call::new(TenantNetwork, Update, spec);
    call.old = None;
    let denial = call.run().unwrap_err();
    assert!(
        denial
            .problems
            .iter()
            .any(|p| p.field == "request.oldObject"),
        "{denial}"
    );
    let only_broadcast = json!({"NetworkID": "n", "NetworkType": "macvlan", "Options": {
        "cidr": "10.0.0.0/24",
        "allocation_pool": {"start": "10.0.0.255", "end": "10.0.0.255"}}});
    for kind in [DanmNet, ClusterNetwork] {
        refused(
            Call::new(kind, Create, only_broadcast.clone()),
            "spec.Options.allocation_pool",
            Rule::Ours,
        );
    }
}
