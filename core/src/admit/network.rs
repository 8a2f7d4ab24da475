//! Admission of DanmNet, TenantNetwork and ClusterNetwork (DANM's `/netvalidation` and
//! `/netdeletion`).
//!
//! CREATE and UPDATE, in order: the object is parsed (a field of the wrong type is named);
//! an UPDATE that leaves the spec as stored is admitted as it is (only the reservation
//! annotation is guarded);
//! the admission rules and [`plan`]'s rules are checked on what the user sent, with
//! `NetworkType` defaulted to `ipvlan`; a created TenantNetwork gets its interface profile,
//! id and NetworkID from the TenantConfig; the result is checked again (a NetworkID is
//! mandatory, and a mapped one must fit); the pools DANM defaulted are written out. Nothing
//! is reserved before every check has passed, so a refused network never holds an id.
//! DELETE is refused while pods are connected (rule 22).

use danm_crds::{IfaceProfile, IpPool, IpPoolV6, NetworkOptions, NetworkSpec, TenantConfig};
use serde_json::Value;

use super::patch::{TokenAnnotation, network_patch};
use super::vni::{self, VNI_RESERVATION_ANNOTATION, VniError, VniPick, VniType, lowest_free};
use super::{Denial, Operation, parse_object};
use crate::hostlinks::{self, LinkClash, LinkSpec, LinkTable};
use crate::network::{
    FieldProblem, NetworkError, NetworkKey, NetworkKind, NetworkPlan, Rule, default_v6_pool_cidr,
    effective_network_type, is_dynamic_backend, plan,
};

/// One admission request for a network.
#[derive(Clone, Copy, Debug)]
pub struct NetworkRequest<'a> {
    /// CREATE, UPDATE or DELETE.
    pub operation: Operation,
    /// The network's kind (from the request, not from the object).
    pub kind: NetworkKind,
    /// Its namespace (empty for a ClusterNetwork).
    pub namespace: &'a str,
    /// Its name (empty on a CREATE with `generateName`).
    pub name: &'a str,
    /// The object sent (CREATE, UPDATE).
    pub object: Option<&'a Value>,
    /// The stored object (UPDATE, DELETE).
    pub old_object: Option<&'a Value>,
}

/// What the webhook read for the decision.
pub struct Environment<'a> {
    /// The TenantConfig TenantNetworks take their profiles from (DANM: the first by name).
    pub tenant_config: Option<&'a TenantConfig>,
    /// A pod connected to the network, if any (`namespace/name`), from the DanmEp index.
    pub connected_pod: Option<&'a str>,
    /// Chooses one of `n` interface profiles for a TenantNetwork that names none (random
    /// in the webhook).
    pub choose: &'a mut dyn FnMut(usize) -> usize,
    /// The token a reserved id is recorded under (unique per admission request).
    pub reservation_token: &'a str,
    /// The host links every other network asks for (a watch-fed index): a network may not
    /// ask for a link name another asks for with another device or id, and a
    /// TenantNetwork shares no link and no segment with another network.
    pub links: &'a LinkTable,
}

impl std::fmt::Debug for Environment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field(
                "tenant_config",
                &self.tenant_config.map(|c| &c.metadata.name),
            )
            .field("connected_pod", &self.connected_pod)
            .field("reservation_token", &self.reservation_token)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// An admitted request: the patch to apply, the id to reserve first, warnings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Admitted {
    /// The mutation (empty when nothing changes).
    pub patch: json_patch::Patch,
    /// The id the patch gives a new TenantNetwork: the webhook must record it in the
    /// TenantConfig (under the request's token) before it answers.
    pub reservation: Option<VniPick>,
    /// The network as it will be stored (CREATE, UPDATE).
    pub spec: Option<NetworkSpec>,
    /// Warnings for the client (`kubectl` prints them): what was admitted but will not
    /// work as written.
    pub warnings: Vec<String>,
}

/// Decides one admission request; see the module overview.
pub fn admit_network(request: &NetworkRequest, env: &mut Environment) -> Result<Admitted, Denial> {
    let key = NetworkKey::new(request.kind, request.namespace, request.name);
    let subject = key.to_string();
    if request.operation == Operation::Delete {
        return match env.connected_pod {
            Some(pod) => Err(Denial::one(
                subject,
                "metadata.name",
                Rule::DanmNet(22),
                format!("pods are still connected to the network, e.g. pod {pod}"),
            )),
            None => Ok(Admitted::default()),
        };
    }
    let deny = |problems: Vec<FieldProblem>| Denial::new(subject.clone(), problems);
    let Some(object) = request.object else {
        return Err(Denial::one(
            &subject,
            "request.object",
            Rule::Schema,
            "the request carries no object".into(),
        ));
    };
    let spec = parse_spec(object).map_err(|p| deny(vec![p]))?;
    let old = match (request.operation, request.old_object) {
        (Operation::Update, Some(old)) => Some(parse_spec(old).map_err(|p| deny(vec![p]))?),
        // The rules on changes (DANM's TenantNetwork 3-6, 21, ours) judge against the
        // stored object: the API server always sends it, and without it nothing can be
        // judged.
        (Operation::Update, None) => {
            return Err(Denial::one(
                &subject,
                "request.oldObject",
                Rule::Schema,
                "an UPDATE must carry the stored object, which its changes are judged against"
                    .into(),
            ));
        }
        _ => None,
    };
    // An UPDATE that leaves the spec as stored (labels, annotations, finalizers) is not
    // judged again: objects stored before the webhook, or under older rules, stay
    // manageable. Only the webhook's annotation is guarded.
    if old.as_ref() == Some(&spec) {
        if let Some(problem) = annotation_problems(request, object) {
            return Err(deny(vec![problem]));
        }
        return Ok(Admitted {
            spec: Some(spec),
            ..Admitted::default()
        });
    }

    let mut problems = request_problems(request, &spec, old.as_ref(), env.connected_pod);
    if request.kind == NetworkKind::TenantNetwork
        && let Some(problem) = network_type_problem(&spec, env.tenant_config)
    {
        problems.push(problem);
    }
    problems.extend(annotation_problems(request, object));
    let mut fin = spec.clone();
    fin.network_type = effective_network_type(&spec.network_type).to_owned();
    if let Err(NetworkError::Invalid { problems: p, .. }) = plan(key.clone(), &fin) {
        problems.extend(p);
    }
    if !problems.is_empty() {
        return Err(deny(problems));
    }

    let (reservation, holds_id) =
        if request.kind == NetworkKind::TenantNetwork && request.operation == Operation::Create {
            tenant_details(&mut fin, request.namespace, env).map_err(|p| deny(vec![p]))?
        } else {
            (None, false)
        };

    let plan = final_plan(key.clone(), &fin).map_err(deny)?;
    let clashes = link_problems(&key, &fin, env);
    if !clashes.is_empty() {
        return Err(deny(clashes));
    }
    fill_pool_defaults(&mut fin, &plan);
    let annotation = match (holds_id, request.operation) {
        (true, _) => TokenAnnotation::Set(env.reservation_token),
        (false, Operation::Create) if request.kind == NetworkKind::TenantNetwork => {
            TokenAnnotation::Strip
        }
        _ => TokenAnnotation::Keep,
    };
    Ok(Admitted {
        patch: network_patch(object, &spec, &fin, annotation),
        reservation,
        spec: Some(fin),
        warnings: Vec::new(),
    })
}

fn parse_spec(object: &Value) -> Result<NetworkSpec, FieldProblem> {
    match object.get("spec") {
        None | Some(Value::Null) => Ok(NetworkSpec::default()),
        Some(spec) => parse_object(spec, "spec"),
    }
}

/// The rules that compare the request with the stored object or judge it by kind.
fn request_problems(
    request: &NetworkRequest,
    spec: &NetworkSpec,
    old: Option<&NetworkSpec>,
    connected_pod: Option<&str>,
) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    let mut problem = |field: &str, rule: Rule, message: String| {
        out.push(FieldProblem {
            field: field.to_owned(),
            message,
            rule,
        })
    };
    let opts = &spec.options;
    let old_opts = old.map(|o| &o.options);
    for (field, rule, value, old_value) in [
        (
            "spec.Options.alloc",
            Rule::DanmNet(5),
            &opts.alloc,
            old_opts.map(|o| &o.alloc),
        ),
        (
            "spec.Options.alloc6",
            Rule::DanmNet(6),
            &opts.alloc6,
            old_opts.map(|o| &o.alloc6),
        ),
    ] {
        let given = value.as_deref().is_some_and(|v| !v.is_empty());
        match request.operation {
            Operation::Create if given => problem(
                field,
                rule,
                "allocation bit arrays cannot be given: addresses are kept by ipamd".into(),
            ),
            Operation::Update if given && old_value != Some(value) => problem(
                field,
                rule,
                "a DANM-era bit array can be kept or removed, not set or changed".into(),
            ),
            _ => {}
        }
    }

    let host_device = given(&opts.host_device);
    let device_pool = given(&opts.device_pool);
    if spec.network_type == "sriov" {
        if device_pool.is_none() {
            problem(
                "spec.Options.device_pool",
                Rule::DanmNet(20),
                "must be given for NetworkType sriov (the device plugin's resource)".into(),
            );
        }
        if host_device.is_some() {
            problem(
                "spec.Options.host_device",
                Rule::DanmNet(20),
                "cannot be given for NetworkType sriov: the device comes from device_pool".into(),
            );
        }
    } else if host_device.is_some() && device_pool.is_some() {
        problem(
            "spec.Options.host_device",
            Rule::DanmNet(20),
            "host_device and device_pool cannot be given together".into(),
        );
    } else if device_pool.is_some() && matches!(network_type_of(spec), "ipvlan" | "macvlan") {
        // The interface hangs off host_device (or its VLAN/VxLAN link): a device pool would
        // leave the parent unnamed, and the plugin unable to check it.
        problem(
            "spec.Options.device_pool",
            Rule::Ours,
            format!(
                "is not for NetworkType {}: its interfaces hang off host_device (device \
                 pools are for sriov and delegated types)",
                network_type_of(spec)
            ),
        );
    }

    let tenant = request.kind == NetworkKind::TenantNetwork;
    match (request.operation, old) {
        (Operation::Create, _) if tenant => {
            if opts.vlan.is_some() {
                problem(
                    "spec.Options.vlan",
                    Rule::TenantNetwork(1),
                    "cannot be given for a TenantNetwork: the webhook hands VLAN ids out".into(),
                );
            }
            if opts.vxlan.is_some() {
                problem(
                    "spec.Options.vxlan",
                    Rule::TenantNetwork(2),
                    "cannot be given for a TenantNetwork: the webhook hands VxLAN ids out".into(),
                );
            }
        }
        (Operation::Update, Some(old)) => {
            // What names the plugin and its files (and the host links): for a
            // TenantNetwork chosen once, at creation (the TenantConfig maps NetworkIDs
            // then); for the other kinds fixed while pods use the network.
            for (field, changed) in [
                (
                    "spec.NetworkType",
                    network_type_of(spec) != network_type_of(old),
                ),
                ("spec.NetworkID", spec.network_id != old.network_id),
            ] {
                if !changed {
                    continue;
                }
                if tenant {
                    problem(
                        field,
                        Rule::Ours,
                        "cannot be changed on a TenantNetwork (it names the plugin, its \
                         configuration and the host links)"
                            .into(),
                    );
                } else if let Some(pod) = connected_pod {
                    problem(
                        field,
                        Rule::Ours,
                        format!("cannot be changed while pods are connected, e.g. pod {pod}"),
                    );
                }
            }
            let changes = [
                ("spec.Options.vlan", 3, opts.vlan != old.options.vlan),
                ("spec.Options.vxlan", 4, opts.vxlan != old.options.vxlan),
                (
                    "spec.Options.host_device",
                    5,
                    host_device != given(&old.options.host_device),
                ),
                (
                    "spec.Options.device_pool",
                    6,
                    device_pool != given(&old.options.device_pool),
                ),
            ];
            for (field, n, changed) in changes {
                if !changed {
                    continue;
                }
                if tenant {
                    problem(
                        field,
                        Rule::TenantNetwork(n),
                        "cannot be changed on a TenantNetwork".into(),
                    );
                } else if let Some(pod) = connected_pod {
                    problem(
                        field,
                        Rule::DanmNet(21),
                        format!("cannot be changed while pods are connected, e.g. pod {pod}"),
                    );
                }
            }
        }
        _ => {}
    }
    out
}

/// The reservation token annotation is the webhook's: an UPDATE may not set, change or
/// remove it (on CREATE, whatever a copied manifest carries is replaced or removed).
fn annotation_problems(request: &NetworkRequest, object: &Value) -> Option<FieldProblem> {
    if request.kind != NetworkKind::TenantNetwork || request.operation != Operation::Update {
        return None;
    }
    let token = |o: &Value| {
        o.pointer("/metadata/annotations")
            .and_then(|a| a.get(VNI_RESERVATION_ANNOTATION))
            .cloned()
    };
    let now = token(object);
    let before = request.old_object.and_then(token);
    (now != before).then(|| FieldProblem {
        field: format!("metadata.annotations[{VNI_RESERVATION_ANNOTATION}]"),
        message: "is written by the webhook (it ties the network to its reserved id)".into(),
        rule: Rule::Ours,
    })
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// The NetworkType, with DANM's default.
fn network_type_of(spec: &NetworkSpec) -> &str {
    effective_network_type(&spec.network_type)
}

/// A TenantNetwork's NetworkType must be one the TenantConfig allows (when it lists any).
fn network_type_problem(spec: &NetworkSpec, config: Option<&TenantConfig>) -> Option<FieldProblem> {
    let allowed = &config?.allowed_network_types;
    let wanted = network_type_of(spec);
    if allowed.is_empty() || allowed.iter().any(|t| t == wanted) {
        return None;
    }
    Some(FieldProblem {
        field: "spec.NetworkType".into(),
        message: format!(
            "{wanted:?} is not one of the NetworkTypes the TenantConfig allows tenants: {}",
            allowed.join(", ")
        ),
        rule: Rule::Ours,
    })
}

/// What keeps the network's host links from being admitted: a name another network asks
/// for with another device or id, or (for a TenantNetwork, or beside one) a shared link or
/// segment. Another tenant's network is not named.
fn link_problems(key: &NetworkKey, spec: &NetworkSpec, env: &Environment) -> Vec<FieldProblem> {
    let Ok(links) = hostlinks::network_links(spec) else {
        // A bad id or a name too long is plan's to report.
        return Vec::new();
    };
    let describe = |holder: &NetworkKey| {
        if holder.kind == NetworkKind::TenantNetwork && holder.namespace != key.namespace {
            "a TenantNetwork of another namespace".to_owned()
        } else {
            holder.to_string()
        }
    };
    let mut out: Vec<FieldProblem> = env
        .links
        .clashes(key, &links)
        .into_iter()
        .map(|clash| match clash {
            LinkClash::Name {
                name,
                holder,
                shared: false,
            } => FieldProblem {
                field: "spec.NetworkID".into(),
                message: format!(
                    "host link {name} is already asked for by {} with another device or id: \
                     choose another NetworkID",
                    describe(&holder)
                ),
                rule: Rule::Ours,
            },
            LinkClash::Name { name, holder, .. } => FieldProblem {
                field: "spec.NetworkID".into(),
                message: format!(
                    "host link {name} belongs to {}: a TenantNetwork shares no link with \
                     another network; choose another NetworkID",
                    describe(&holder)
                ),
                rule: Rule::Ours,
            },
            LinkClash::Segment { name, holder } => FieldProblem {
                field: if spec.options.vxlan.is_some_and(|v| v != 0) {
                    "spec.Options.vxlan".into()
                } else {
                    "spec.Options.vlan".into()
                },
                message: format!(
                    "the segment of host link {name} (device and id) is already used by {}: \
                     a TenantNetwork shares no segment with another network",
                    describe(&holder)
                ),
                rule: Rule::Ours,
            },
        })
        .collect();
    // Between TenantNetworks, the reservations of the TenantConfig say it too, in the same
    // optimistic-concurrency write that records the id (the index may lag behind a create
    // a moment old).
    if key.kind == NetworkKind::TenantNetwork
        && let Some(config) = env.tenant_config
    {
        for (name, _) in &links {
            let taken = vni::reservations(config)
                .into_iter()
                .find(|h| &h.holder.link == name && h.holder.token != env.reservation_token);
            if let Some(held) = taken {
                let holder = match held.holder.network.split_once('/') {
                    Some((ns, n)) => NetworkKey::new(NetworkKind::TenantNetwork, ns, n),
                    None => NetworkKey::new(NetworkKind::TenantNetwork, "", &held.holder.network),
                };
                out.push(FieldProblem {
                    field: "spec.NetworkID".into(),
                    message: format!(
                        "host link {name} is already reserved for {}: choose another NetworkID",
                        describe(&holder)
                    ),
                    rule: Rule::Ours,
                });
            }
        }
    }
    out
}

/// A created TenantNetwork's profile, id and NetworkID from the TenantConfig: the id to
/// record, and whether the network holds an id recorded under the request's token (new or
/// recorded by an earlier call for the same request).
fn tenant_details(
    spec: &mut NetworkSpec,
    namespace: &str,
    env: &mut Environment,
) -> Result<(Option<VniPick>, bool), FieldProblem> {
    let Some(config) = env.tenant_config else {
        return Err(FieldProblem {
            field: "spec".into(),
            message: "no TenantConfig exists: an administrator creates one before tenants \
                      create TenantNetworks"
                .into(),
            rule: Rule::Unnumbered,
        });
    };
    let config_name = config.metadata.name.as_deref().unwrap_or_default();
    let mut reservation = None;
    let mut holds_id = false;
    if is_dynamic_backend(&spec.network_type)
        && already_reserved(spec, config, env.reservation_token)
    {
        holds_id = true;
    } else if is_dynamic_backend(&spec.network_type) {
        let profile = choose_profile(config, &spec.options, &mut *env.choose)?;
        let opts = &mut spec.options;
        if given(&opts.host_device).is_none() && given(&opts.device_pool).is_none() {
            opts.host_device = Some(profile.name.clone());
        }
        if let Some(vni_type) = VniType::parse(&profile.vni_type) {
            let slot = match vni_type {
                VniType::Vlan => &mut opts.vlan,
                VniType::Vxlan => &mut opts.vxlan,
            };
            if slot.is_none() {
                within_namespace_limit(profile, namespace, vni_type)?;
                // An id an administrator's network already uses on this device is skipped:
                // the tenant would join that segment.
                let parent = profile.name.clone();
                let in_use = |id: u32| {
                    env.links.in_use(&match vni_type {
                        VniType::Vlan => LinkSpec::Vlan {
                            parent: parent.clone(),
                            id: u16::try_from(id).unwrap_or(u16::MAX),
                        },
                        VniType::Vxlan => LinkSpec::Vxlan {
                            parent: parent.clone(),
                            vni: id,
                        },
                    })
                };
                let id = lowest_free(profile, vni_type, &in_use).map_err(|e| FieldProblem {
                    field: format!("spec.Options.{vni_type}"),
                    message: format!("no id for it in TenantConfig {config_name}: {e}"),
                    rule: match e {
                        VniError::Exhausted { .. } => Rule::Unnumbered,
                        _ => Rule::Ours,
                    },
                })?;
                *slot = Some(i64::from(id));
                holds_id = true;
                reservation = Some(VniPick {
                    profile: profile.name.clone(),
                    vni_type,
                    id,
                    link: String::new(),
                });
            }
        }
    }
    match mapped_network_id(config, &spec.network_type) {
        Some(id) => spec.network_id = id.to_owned(),
        // A delegated type runs the configuration `<cniDir>/<NetworkID>.conf` of every
        // node (sriov too, when it exists): a tenant must not pick one of the
        // administrators' (the primary CNI's, say). The TenantConfig names it.
        None if !matches!(network_type_of(spec), "ipvlan" | "macvlan") => {
            return Err(FieldProblem {
                field: "spec.NetworkType".into(),
                message: format!(
                    "{:?} delegates to a CNI configuration on every node: a TenantNetwork of \
                     it takes its NetworkID from TenantConfig {config_name}'s networkIds, \
                     which maps no NetworkID for it (an administrator adds one)",
                    network_type_of(spec)
                ),
                rule: Rule::Ours,
            });
        }
        None => {}
    }
    // The link the id names, recorded with the reservation.
    if let Some(pick) = reservation.as_mut() {
        pick.link = match pick.vni_type {
            VniType::Vlan => hostlinks::vlan_link_name(&spec.network_id, pick.id),
            VniType::Vxlan => hostlinks::vxlan_link_name(&spec.network_id),
        };
    }
    Ok((reservation, holds_id))
}

/// A profile's `maxPerNamespace`: the ids the TenantNetworks of one namespace hold there
/// (counted in the TenantConfig's reservations, so two replicas cannot both pass it).
fn within_namespace_limit(
    profile: &IfaceProfile,
    namespace: &str,
    vni_type: VniType,
) -> Result<(), FieldProblem> {
    let Some(limit) = profile.max_per_namespace else {
        return Ok(());
    };
    let prefix = format!("{namespace}/");
    let held = profile
        .reservations
        .values()
        .filter(|h| h.network.starts_with(&prefix))
        .count();
    if held < limit as usize {
        return Ok(());
    }
    Err(FieldProblem {
        field: format!("spec.Options.{vni_type}"),
        message: format!(
            "namespace {namespace} already holds {held} {vni_type} id(s) of profile {}, its \
             limit (maxPerNamespace {limit}): delete one of its TenantNetworks first",
            profile.name
        ),
        rule: Rule::Ours,
    })
}

/// A retried admission (the API server calls a webhook again after a broken connection,
/// with the same request uid): the id already recorded under this token is given again,
/// rather than a second one. Returns whether it was.
fn already_reserved(spec: &mut NetworkSpec, config: &TenantConfig, token: &str) -> bool {
    let Some((profile, vni_type, id)) = super::vni::reservations(config)
        .into_iter()
        .filter(|h| h.holder.token == token)
        .find_map(|h| Some((h.profile, h.vni_type?, h.id.parse::<u32>().ok()?)))
    else {
        return false;
    };
    let opts = &mut spec.options;
    let named = given(&opts.device_pool).or(given(&opts.host_device));
    if named.is_some_and(|n| n != profile) {
        return false;
    }
    if named.is_none() {
        opts.host_device = Some(profile);
    }
    let slot = match vni_type {
        VniType::Vlan => &mut opts.vlan,
        VniType::Vxlan => &mut opts.vxlan,
    };
    *slot = Some(i64::from(id));
    true
}

/// DANM's choice: the profile named by `device_pool`, else the one named by `host_device`
/// (never a device pool), else one of the NIC profiles (names without `/`) at random.
fn choose_profile<'a>(
    config: &'a TenantConfig,
    opts: &NetworkOptions,
    choose: &mut dyn FnMut(usize) -> usize,
) -> Result<&'a IfaceProfile, FieldProblem> {
    let config_name = config.metadata.name.as_deref().unwrap_or_default();
    let nics: Vec<&IfaceProfile> = config
        .host_devices
        .iter()
        .filter(|p| !p.name.contains('/'))
        .collect();
    let offered = || {
        let names: Vec<&str> = config
            .host_devices
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let unknown = |field: &str, name: &str| FieldProblem {
        field: field.to_owned(),
        message: format!(
            "{name:?} is in no interface profile of TenantConfig {config_name} \
             (tenants may use: {})",
            offered()
        ),
        rule: Rule::Unnumbered,
    };
    if let Some(pool) = given(&opts.device_pool) {
        return config
            .host_devices
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| unknown("spec.Options.device_pool", pool));
    }
    if let Some(device) = given(&opts.host_device) {
        return nics
            .into_iter()
            .find(|p| p.name == device)
            .ok_or_else(|| unknown("spec.Options.host_device", device));
    }
    if nics.is_empty() {
        return Err(FieldProblem {
            field: "spec.Options.host_device".into(),
            message: format!(
                "TenantConfig {config_name} has no interface profile for TenantNetworks"
            ),
            rule: Rule::Unnumbered,
        });
    }
    let at = choose(nics.len()) % nics.len();
    Ok(nics[at])
}

/// The TenantConfig's NetworkID for a NetworkType: the exact key, else the first key equal
/// ignoring case (DANM matched ignoring case).
fn mapped_network_id<'a>(config: &'a TenantConfig, network_type: &str) -> Option<&'a str> {
    config
        .network_ids
        .get(network_type)
        .or_else(|| {
            config
                .network_ids
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(network_type))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

/// The checks on the network as it will be stored.
fn final_plan(key: NetworkKey, spec: &NetworkSpec) -> Result<NetworkPlan, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    if spec.network_id.is_empty() {
        problems.push(FieldProblem {
            field: "spec.NetworkID".into(),
            message: "is mandatory (it names the host interfaces and the delegate's \
                      configuration)"
                .into(),
            rule: Rule::DanmNet(18),
        });
    }
    match plan(key, spec) {
        Ok(plan) if problems.is_empty() => Ok(plan),
        Ok(_) => Err(problems),
        Err(NetworkError::Invalid { problems: p, .. }) => {
            problems.extend(p);
            Err(problems)
        }
    }
}

/// Writes out the pools DANM defaulted: `allocation_pool` from `cidr`, and
/// `allocation_pool_v6` (its CIDR, start and end) from `net6`.
fn fill_pool_defaults(spec: &mut NetworkSpec, plan: &NetworkPlan) {
    let opts = &mut spec.options;
    if let Some(v4) = &plan.v4
        && let (Some(start), Some(end)) = (v4.pool_start(), v4.pool_end())
    {
        let pool = opts.allocation_pool.get_or_insert_with(IpPool::default);
        fill(&mut pool.start, start.to_string());
        fill(&mut pool.end, end.to_string());
    }
    if let Some(v6) = &plan.v6
        && let (Some(start), Some(end)) = (v6.pool_start(), v6.pool_end())
    {
        let pool = opts
            .allocation_pool_v6
            .get_or_insert_with(IpPoolV6::default);
        fill(&mut pool.cidr, default_v6_pool_cidr(&v6.cidr).to_string());
        fill(&mut pool.start, start.to_string());
        fill(&mut pool.end, end.to_string());
    }
}

fn fill(slot: &mut Option<String>, value: String) {
    if slot.as_deref().is_none_or(|s| s.trim().is_empty()) {
        *slot = Some(value);
    }
}
