//! Input from whoever can create a pod or reach ipamd, tried as a hostile user would: what
//! DANM refused is refused (a static address with another prefix than its network's, a
//! prefix that is no prefix length), what one pod can take is bounded
//! (`--max-interfaces-per-pod`), duplicates and whitespace are INVALID_ARGUMENT naming the
//! field, and, for random mostly malformed Allocate, Release, Attach and Detach requests
//! through the gRPC service, a refused request leaves the store as it was, byte for byte.

mod common;

use std::sync::Arc;

use danm_ipamd::engine::{Engine, EngineConfig};
use danm_ipamd::service::IpamService;
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::worker::WorkerConfig;
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_server::Ipam;
use proptest::prelude::*;
use tonic::{Code, Request};

const NETS: &str = r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: internal, namespace: default}
spec:
  NetworkID: internal
  NetworkType: macvlan
  Options: {cidr: 10.240.1.0/24, net6: "fd00:240::/64", container_prefix: int}
---
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: other, namespace: default}
spec:
  NetworkID: other
  NetworkType: macvlan
  Options: {cidr: 10.241.0.0/24, container_prefix: int}
---
apiVersion: danm.io/v1
kind: ClusterNetwork
metadata: {name: shared}
spec:
  NetworkID: shared
  NetworkType: macvlan
  Options: {cidr: 10.242.0.0/16}
"#;

async fn service(store: &Arc<MemoryStore>) -> IpamService {
    common::add_networks(store.as_ref(), NETS).await;
    let engine = Engine::start(
        Arc::clone(store) as Arc<dyn Store>,
        EngineConfig::from(WorkerConfig::default()),
    )
    .await
    .unwrap();
    IpamService::new(engine)
}

fn network(name: &str) -> Option<pb::NetworkRef> {
    Some(pb::NetworkRef {
        kind: pb::NetworkKind::DanmNet as i32,
        namespace: "default".into(),
        name: name.into(),
    })
}

fn allocate(ip: &str, ip6: &str) -> pb::AllocateRequest {
    pb::AllocateRequest {
        network: network("internal"),
        owner: common::owner("c1", "eth0"),
        ip: ip.into(),
        ip6: ip6.into(),
    }
}

fn attach(interfaces: &str, naming: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        pod_namespace: "default".into(),
        pod_name: "web-0".into(),
        container_id: "c-attach".into(),
        interfaces_json: interfaces.into(),
        naming_scheme: naming.into(),
        ..Default::default()
    }
}

/// The status of a refused call, and that the store did not change meanwhile.
async fn refused<T: std::fmt::Debug>(
    store: &MemoryStore,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> tonic::Status {
    let before = store.snapshot();
    let status = call.await.expect_err("refused");
    assert_eq!(
        store.snapshot(),
        before,
        "a refused request changed the store"
    );
    status
}

#[tokio::test]
async fn a_static_address_with_another_prefix_is_refused_naming_both() {
    let store = Arc::new(MemoryStore::new());
    let ipam = service(&store).await;
    let s = refused(
        &store,
        ipam.allocate(Request::new(allocate("10.240.1.123/16", ""))),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("10.240.1.123/16") && s.message().contains("10.240.1.0/24"),
        "{}",
        s.message()
    );
    // The network's own prefix, and no prefix, are accepted.
    let ok = ipam
        .allocate(Request::new(allocate("10.240.1.123/24", "")))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().ip, "10.240.1.123/24");
}

#[tokio::test]
async fn a_prefix_that_is_no_prefix_length_is_refused_naming_the_field() {
    let store = Arc::new(MemoryStore::new());
    let ipam = service(&store).await;
    for (ip, ip6, field) in [
        ("10.240.1.120/33", "", "ip:"),
        ("10.240.1.120/", "", "ip:"),
        ("", "fd00:240::5/129", "ip6:"),
    ] {
        let s = refused(&store, ipam.allocate(Request::new(allocate(ip, ip6)))).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{ip}{ip6}: {s:?}");
        assert!(
            s.message().starts_with(field) && s.message().contains("prefix length"),
            "{}",
            s.message()
        );
    }
}

#[tokio::test]
async fn thirty_three_interfaces_are_refused_before_anything_is_allocated() {
    let store = Arc::new(MemoryStore::new());
    let ipam = service(&store).await;
    let entries: Vec<String> = (0..33)
        .map(|_| r#"{"clusterNetwork":"shared","ip":"dynamic"}"#.to_owned())
        .collect();
    let s = refused(
        &store,
        ipam.attach(Request::new(attach(
            &format!("[{}]", entries.join(",")),
            "",
        ))),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message()
            .contains("asks for 33 interfaces; a pod may have at most 32"),
        "{}",
        s.message()
    );
    // 32 are fine.
    let ok = ipam
        .attach(Request::new(attach(
            &format!("[{}]", entries[..32].join(",")),
            "",
        )))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().interfaces.len(), 32);
}

#[tokio::test]
async fn the_limit_is_ipamds_flag() {
    let store = Arc::new(MemoryStore::new());
    common::add_networks(store.as_ref(), NETS).await;
    let engine = Engine::start(
        Arc::clone(&store) as Arc<dyn Store>,
        EngineConfig {
            worker: WorkerConfig::default(),
            max_interfaces_per_pod: 2,
        },
    )
    .await
    .unwrap();
    let ipam = IpamService::new(engine);
    let s = refused(
        &store,
        ipam.attach(Request::new(attach(
            r#"[{"network":"internal","ip":"dynamic"},{"network":"other","ip":"dynamic"},{"clusterNetwork":"shared","ip":"dynamic"}]"#,
            "",
        ))),
    )
    .await;
    assert!(s.message().contains("at most 2"), "{}", s.message());
}

#[tokio::test]
async fn duplicate_interface_names_and_addresses_are_invalid_argument() {
    let store = Arc::new(MemoryStore::new());
    let ipam = service(&store).await;
    // The first interface is eth0; the legacy scheme names the next two exactly `int`.
    let s = refused(
        &store,
        ipam.attach(Request::new(attach(
            r#"[{"clusterNetwork":"shared","ip":"dynamic"},{"network":"internal","ip":"dynamic"},{"network":"other","ip":"dynamic"}]"#,
            "legacy",
        ))),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message()
            .contains("interfaces[1] and interfaces[2] would both be named int"),
        "{}",
        s.message()
    );
    let s = refused(
        &store,
        ipam.attach(Request::new(attach(
            r#"[{"network":"internal","ip":"10.240.1.9"},{"network":"internal","ip":"10.240.1.9/24"}]"#,
            "",
        ))),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message()
            .contains("interfaces[0] and interfaces[1] both ask for 10.240.1.9"),
        "{}",
        s.message()
    );
}

#[tokio::test]
async fn whitespace_is_refused_in_every_field() {
    let store = Arc::new(MemoryStore::new());
    let ipam = service(&store).await;
    let s = refused(
        &store,
        ipam.allocate(Request::new(allocate(" dynamic", ""))),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().starts_with("ip: ") && s.message().contains("whitespace"));
    let mut spaced = allocate("dynamic", "");
    spaced.owner.as_mut().unwrap().pod_namespace = "default ".into();
    let s = refused(&store, ipam.allocate(Request::new(spaced))).await;
    assert!(
        s.message().starts_with("owner.pod_namespace: ") && s.message().contains("whitespace"),
        "{}",
        s.message()
    );
    let mut spaced = allocate("dynamic", "");
    spaced.network.as_mut().unwrap().name = " internal".into();
    let s = refused(&store, ipam.allocate(Request::new(spaced))).await;
    assert!(s.message().starts_with("network.name: "), "{}", s.message());
    for (annotation, field) in [
        (
            r#"[{"network":"internal ","ip":"dynamic"}]"#,
            "interfaces[0].network",
        ),
        (
            r#"[{"network":"internal","ip":"10.240.1.9 "}]"#,
            "interfaces[0].ip",
        ),
        (
            r#"[{"network":"internal","ip":"dynamic","proutes":{" 10.9.0.0/16":"10.240.1.1"}}]"#,
            "interfaces[0].proutes",
        ),
    ] {
        let s = refused(&store, ipam.attach(Request::new(attach(annotation, "")))).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{annotation}: {s:?}");
        assert!(
            s.message().contains(field) && s.message().contains("whitespace"),
            "{annotation}: {}",
            s.message()
        );
    }
    // A route of the wrong family, or not a route at all.
    for proutes in [
        r#"{"fd00::/64":"10.240.1.1"}"#,
        r#"{"10.9.0.0/16":"gateway"}"#,
        r#"{"10.9.0.0":"10.240.1.1"}"#,
    ] {
        let annotation =
            format!(r#"[{{"network":"internal","ip":"dynamic","proutes":{proutes}}}]"#);
        let s = refused(&store, ipam.attach(Request::new(attach(&annotation, "")))).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{proutes}: {s:?}");
        assert!(
            s.message().contains("interfaces[0].proutes"),
            "{}",
            s.message()
        );
    }
}

/// One request of the property test.
#[derive(Clone, Debug)]
enum Call {
    Allocate(pb::AllocateRequest),
    Release(pb::ReleaseRequest),
    Attach(pb::AttachRequest),
    Detach(pb::DetachRequest),
}

fn texts(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
) -> BoxedStrategy<String> {
    // Mostly malformed: one valid value in four.
    prop_oneof![
        1 => proptest::sample::select(valid).prop_map(str::to_owned),
        3 => prop_oneof![
            proptest::sample::select(invalid).prop_map(str::to_owned),
            "[ -~]{0,20}",
            "\\PC{0,12}",
        ],
    ]
    .boxed()
}

fn call() -> impl Strategy<Value = Call> {
    let network = (
        0..5i32,
        texts(&["default"], &["", " default", "Default", "x/y"]),
        texts(
            &["internal", "other", "shared"],
            &["", "nosuch", "internal ", "../x"],
        ),
    )
        .prop_map(|(kind, namespace, name)| {
            Some(pb::NetworkRef {
                kind,
                namespace,
                name,
            })
        });
    let owner = (
        texts(&["c1", "c2"], &["", " c1", "c\u{0}1"]),
        texts(
            &["eth0", "int1"],
            &["", "eth 0", "a/b", "waytoolonginterfacename"],
        ),
        texts(&["default"], &["", " default"]),
    )
        .prop_map(|(container_id, ifname, pod_namespace)| {
            Some(pb::Owner {
                container_id,
                ifname,
                pod_namespace,
                pod_name: "pod".into(),
                ..Default::default()
            })
        });
    let ip = texts(
        &["dynamic", "none", "", "10.240.1.7", "10.240.1.8/24"],
        &[
            "10.240.1.7/16",
            "10.240.1.7/33",
            "10.240.2.7",
            "10.240.1.0",
            "fd00:240::1",
            " dynamic",
            "dynamic\n",
            "10.240.1.7/",
            "999.1.1.1",
        ],
    );
    let ip6 = texts(
        &["dynamic", "", "fd00:240::9"],
        &[
            "fd00:240::9/48",
            "10.240.1.7",
            "fd00:240::9/129",
            "dynamic ",
        ],
    );
    let annotation = texts(
        &[
            r#"[{"network":"internal","ip":"dynamic"}]"#,
            r#"[{"clusterNetwork":"shared","ip":"dynamic"},{"network":"other","ip":"10.241.0.9"}]"#,
        ],
        &[
            "[",
            "{}",
            r#"[{"network":"internal","tenantNetwork":"x"}]"#,
            r#"[{"network":"internal","ip":"10.240.1.7/16"}]"#,
            r#"[{"network":"internal","bogus":1}]"#,
            r#"[{"network":"internal","ip":"dynamic","proutes":{"x":"y"}}]"#,
            r#"[{"network":"internal","ip":"10.240.1.9"},{"network":"internal","ip":"10.240.1.9"}]"#,
            r#"[{"network":"nosuch","ip":"dynamic"}]"#,
        ],
    );
    let cid = texts(&["c-attach", "c1"], &["", " c1"]);
    prop_oneof![
        (network.clone(), owner.clone(), ip, ip6).prop_map(|(network, owner, ip, ip6)| {
            Call::Allocate(pb::AllocateRequest {
                network,
                owner,
                ip,
                ip6,
            })
        }),
        (network, owner)
            .prop_map(|(network, owner)| Call::Release(pb::ReleaseRequest { network, owner })),
        (
            annotation,
            cid.clone(),
            texts(&["", "legacy"], &["LEGACY", " "])
        )
            .prop_map(|(interfaces_json, container_id, naming_scheme)| {
                Call::Attach(pb::AttachRequest {
                    pod_namespace: "default".into(),
                    pod_name: "pod".into(),
                    container_id,
                    interfaces_json,
                    naming_scheme,
                    ..Default::default()
                })
            }),
        cid.prop_map(|container_id| Call::Detach(pb::DetachRequest {
            container_id,
            pod_namespace: "default".into(),
            pod_name: "pod".into(),
        })),
    ]
}

/// Runs one call; its refusal code, if refused.
async fn run(ipam: &IpamService, call: Call) -> Option<Code> {
    let result = match call {
        Call::Allocate(r) => ipam.allocate(Request::new(r)).await.map(drop),
        Call::Release(r) => ipam.release(Request::new(r)).await.map(drop),
        Call::Attach(r) => ipam.attach(Request::new(r)).await.map(drop),
        Call::Detach(r) => ipam.detach(Request::new(r)).await.map(drop),
    };
    result.err().map(|s| s.code())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random sequences of mostly malformed requests: each one refused as malformed
    /// (INVALID_ARGUMENT, NOT_FOUND) leaves the store byte for byte as it was; no request
    /// panics the service.
    #[test]
    fn a_refused_request_changes_nothing(calls in proptest::collection::vec(call(), 1..12)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = Arc::new(MemoryStore::new());
            let ipam = service(&store).await;
            for call in calls {
                let before = store.snapshot();
                let shown = format!("{call:?}");
                if let Some(code) = run(&ipam, call).await
                    && matches!(code, Code::InvalidArgument | Code::NotFound)
                {
                    prop_assert_eq!(&store.snapshot(), &before, "{:?} refused with {:?} changed the store", shown, code);
                }
            }
            Ok(())
        })?;
    }
}
