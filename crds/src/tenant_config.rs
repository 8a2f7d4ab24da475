//! TenantConfig: DANM keeps its fields at the top level of the object (no `spec`), so the
//! kube derive does not fit; the `Resource` impl and the CRD are written out here.

#[cfg(feature = "kube")]
use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Interface profiles and NetworkType→NetworkID mappings for tenant networks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantConfig {
    /// `danm.io/v1`.
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// `TenantConfig`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    #[schemars(skip)]
    pub metadata: ObjectMeta,
    /// Host devices tenants may use, with their VNI ranges.
    #[serde(rename = "hostDevices", default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<IfaceProfile>,
    /// NetworkType → NetworkID overrides for static delegates.
    #[serde(
        rename = "networkIds",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub network_ids: BTreeMap<String, String>,
    /// The NetworkTypes TenantNetworks may use (the default `ipvlan` counts as `ipvlan`);
    /// empty: any, as in DANM. Not one of DANM's fields. A tenant's NetworkType names the
    /// CNI plugin every node runs for its pods: list the ones tenants may have.
    #[serde(
        rename = "allowedNetworkTypes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_network_types: Vec<String>,
}

/// One host device a tenant may use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IfaceProfile {
    /// Host device name.
    pub name: String,
    /// `vlan` or `vxlan`.
    #[serde(rename = "vniType", default, skip_serializing_if = "String::is_empty")]
    pub vni_type: String,
    /// VNI range, e.g. `700-710,900`.
    #[serde(rename = "vniRange", default, skip_serializing_if = "String::is_empty")]
    pub vni_range: String,
    /// DANM's VNI allocation bit array (base64, most significant bit first). The ids it
    /// marks stay taken; new reservations go to `reservations`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alloc: String,
    /// The ids of this profile reserved for TenantNetworks, by id: written by the webhook
    /// when it hands an id out, removed when the TenantNetwork is gone. Always written,
    /// even empty: the webhook restores the reservations of an update that leaves the
    /// field out (a `kubectl apply` of the original manifest), not of one that empties it.
    /// No `default` in the CRD, for the same reason: the API server would fill it in.
    #[serde(default)]
    #[schemars(transform = without_default)]
    pub reservations: BTreeMap<String, VniReservation>,
    /// The most ids of this profile the TenantNetworks of one namespace may hold; none: no
    /// limit (DANM had none). Not one of DANM's fields.
    #[serde(
        rename = "maxPerNamespace",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_per_namespace: Option<u32>,
}

fn without_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// Who holds one reserved id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VniReservation {
    /// The TenantNetwork, as `namespace/name` (for people: the holder is the token).
    pub network: String,
    /// The token the webhook wrote into the TenantNetwork's `danm.io/vni-reservation`
    /// annotation: the id is freed when no TenantNetwork carries it any more.
    pub token: String,
    /// When it was reserved (RFC 3339): a reservation whose TenantNetwork never came to
    /// exist (its create failed after admission) is freed once it is older than the grace
    /// period.
    pub since: String,
    /// The host link the TenantNetwork's id names (`vx_<NetworkID>` or
    /// `<NetworkID>.<id>`): no other TenantNetwork may be given a link of that name, which
    /// this field lets the webhook check in the same optimistic-concurrency write that
    /// reserves the id. Empty in reservations made before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
}

#[cfg(feature = "kube")]
impl kube::Resource for TenantConfig {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "TenantConfig".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        crate::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        crate::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "tenantconfigs".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The TenantConfig CRD, built from the [`TenantConfig`] type's schema.
pub fn tenant_config_crd() -> CustomResourceDefinition {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let schema = generator.into_root_schema_for::<TenantConfig>();
    let mut value = serde_json::to_value(&schema).expect("schema serializes");
    if let Some(obj) = value.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
        obj.remove("required");
        if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.insert("metadata".into(), serde_json::json!({"type": "object"}));
            // The API server sets apiVersion and kind itself and refuses a CRD that
            // defaults them.
            for field in ["apiVersion", "kind"] {
                if let Some(p) = props.get_mut(field).and_then(|p| p.as_object_mut()) {
                    p.remove("default");
                }
            }
        }
    }
    let props: JSONSchemaProps =
        serde_json::from_value(value).expect("schemars output is a valid JSONSchemaProps");
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some("tenantconfigs.danm.io".into()),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: crate::GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: "TenantConfig".into(),
                list_kind: Some("TenantConfigList".into()),
                plural: "tenantconfigs".into(),
                singular: Some("tenantconfig".into()),
                short_names: Some(vec!["tc".into(), "tconf".into()]),
                ..Default::default()
            },
            scope: "Cluster".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: crate::VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(props),
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}
