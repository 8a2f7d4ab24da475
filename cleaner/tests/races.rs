//! The cleaner where DANM's and Whereabouts' cleaners went wrong: a StatefulSet pod
//! re-created under its name while a pass runs, an address re-given to a new owner before the
//! old record is cleaned, a DanmEp with an empty IPv6 slot, and an orphan that is still young.

mod common;

use std::time::Duration;

use common::{Bed, TURN};
use danm_cleaner::metrics::Metrics;
use danm_cleaner::{Finding, Outcome, PassConfig, Sightings, Subject, facts, survey};
use danm_core::OwnerKey;
use danm_core::leak::Reason;
use danm_crds::DanmEp;
use kube::api::{Api, PostParams};

fn ep_name(cid: &str) -> String {
    OwnerKey::new(cid, "eth0").unwrap().endpoint_name()
}

async fn endpoint(bed: &Bed, cid: &str) -> Option<DanmEp> {
    Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns)
        .get_opt(&ep_name(cid))
        .await
        .unwrap()
}

/// A pass surveys while `web-0` is gone; before it frees, `web-0` is re-created (new UID)
/// and attached. The old record is freed (its static address becomes free for the new pod),
/// and a stale finding about the new pod's record, as a survey could have made while the new
/// pod was not listed yet, is kept on re-check: the new pod keeps its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_pod_recreated_during_a_pass_keeps_its_address() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("sts").await;
    let net = bed.danmnet("sts", "10.82.0.0/24", None).await;
    let node = format!("{}-node", bed.ns);
    bed.node(&node, true).await;
    let old_uid = bed.pod("web-0", &node).await;
    let old = bed
        .allocate(
            &net,
            "cid-old",
            "web-0",
            &old_uid,
            &node,
            "10.82.0.10/24",
            "",
        )
        .await
        .unwrap();
    assert_eq!(old.ip, "10.82.0.10/24");
    // The node crashed: no CNI DEL; the pod is deleted and the survey sees its record leaked.
    bed.delete_pod("web-0").await;
    let surveyed = survey(
        &bed.cleaner_client,
        Duration::ZERO,
        100,
        &mut Sightings::default(),
    )
    .await
    .unwrap();
    let mut findings: Vec<Finding> = surveyed
        .findings
        .into_iter()
        .filter(|f| matches!(&f.subject, Subject::Endpoint(e) if e.namespace == bed.ns))
        .collect();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].reason, Reason::PodGone);
    // Meanwhile the StatefulSet re-creates web-0; the static address is still held, so
    // the new instance starts on another one for now.
    let new_uid = bed.pod("web-0", &node).await;
    let static_refused = bed
        .allocate(
            &net,
            "cid-new",
            "web-0",
            &new_uid,
            &node,
            "10.82.0.10/24",
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(
        static_refused.code(),
        tonic::Code::AlreadyExists,
        "{static_refused:?}"
    );
    let new = bed
        .allocate(&net, "cid-new", "web-0", &new_uid, &node, "dynamic", "")
        .await
        .unwrap();
    let stale = facts::endpoint(&endpoint(&bed, "cid-new").await.unwrap());
    findings.push(Finding {
        reason: Reason::PodGone,
        subject: Subject::Endpoint(Box::new(stale)),
    });

    let settled = bed.freer(false).settle(findings, 4).await;
    assert_eq!(
        settled[0].finding.reason,
        Reason::PodReplaced,
        "re-judged from fresh reads"
    );
    assert_eq!(
        settled[0].outcome,
        Outcome::Freed(vec!["10.82.0.10".into()])
    );
    assert!(
        matches!(&settled[1].outcome, Outcome::Kept(_)),
        "{:?}",
        settled[1].outcome
    );
    assert!(endpoint(&bed, "cid-old").await.is_none());
    let kept = endpoint(&bed, "cid-new")
        .await
        .expect("the new pod's record stays");
    assert_eq!(kept.spec.interface.address, new.ip);
    let held = bed.allocations(&net).await;
    assert_eq!(
        held,
        vec![(
            new.ip.trim_end_matches("/24").to_owned(),
            "cid-new".to_owned()
        )]
    );
    // The static address is free again for the new instance.
    let back = bed
        .allocate(
            &net,
            "cid-new2",
            "web-0",
            &new_uid,
            &node,
            "10.82.0.10/24",
            "",
        )
        .await
        .unwrap();
    assert_eq!(back.ip, "10.82.0.10/24");
}

/// Whereabouts #176 and DANM's cleaner freed by pod name: here the old pod's address was
/// released (CNI DEL ran) but its record survived, and the address went to the new pod of
/// the same name. Cleaning the old record frees nothing: ipamd releases only what the old
/// owner key holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_record_never_frees_an_address_re_given_to_a_new_owner() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("regiven").await;
    let net = bed.danmnet("regiven", "10.83.0.0/24", None).await;
    let node = format!("{}-node", bed.ns);
    bed.node(&node, true).await;
    let old_uid = bed.pod("db-0", &node).await;
    bed.allocate(&net, "cid-old", "db-0", &old_uid, &node, "10.83.0.7/24", "")
        .await
        .unwrap();
    let record = endpoint(&bed, "cid-old").await.unwrap();
    // CNI DEL: the address is freed and the record deleted; then the record comes back
    // (a DanmEp written by a crashed, late writer).
    let released = bed
        .ipamd
        .clone()
        .release(danm_proto::v1::ReleaseRequest {
            network: Some(net.clone()),
            owner: Some(danm_proto::v1::Owner {
                container_id: "cid-old".into(),
                ifname: "eth0".into(),
                pod_namespace: bed.ns.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.released, vec!["10.83.0.7".to_owned()]);
    let mut stale = DanmEp::new(&ep_name("cid-old"), record.spec.clone());
    stale.metadata.namespace = Some(bed.ns.clone());
    Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns)
        .create(&PostParams::default(), &stale)
        .await
        .unwrap();
    bed.delete_pod("db-0").await;
    let new_uid = bed.pod("db-0", &node).await;
    bed.allocate(&net, "cid-new", "db-0", &new_uid, &node, "10.83.0.7/24", "")
        .await
        .unwrap();

    let report = bed.pass(false).await;
    let ours: Vec<_> = report
        .settled
        .iter()
        .filter(|s| matches!(&s.finding.subject, Subject::Endpoint(e) if e.namespace == bed.ns))
        .collect();
    assert_eq!(ours.len(), 1, "{:?}", report.settled);
    assert_eq!(ours[0].finding.reason, Reason::PodReplaced);
    assert_eq!(
        ours[0].outcome,
        Outcome::Freed(vec![]),
        "the record goes, no address"
    );
    assert!(endpoint(&bed, "cid-old").await.is_none());
    assert_eq!(
        bed.allocations(&net).await,
        vec![("10.83.0.7".to_owned(), "cid-new".to_owned())]
    );
}

/// danm-cni #256: DANM's cleaner never deleted a DanmEp with an empty IPv6 (or IPv4) slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_an_empty_address_slot_are_cleaned() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("slots").await;
    let net = bed
        .danmnet("dual", "10.84.0.0/24", Some("fd00:198:84::/64"))
        .await;
    let node = format!("{}-node", bed.ns);
    bed.node(&node, true).await;
    let v4_only = bed
        .allocate(&net, "cid-v4", "gone-a", "uid-a", &node, "dynamic", "")
        .await
        .unwrap();
    let v6_only = bed
        .allocate(&net, "cid-v6", "gone-b", "uid-b", &node, "", "dynamic")
        .await
        .unwrap();
    assert!(v4_only.ip6.is_empty() && v6_only.ip.is_empty());
    assert_eq!(
        endpoint(&bed, "cid-v4")
            .await
            .unwrap()
            .spec
            .interface
            .address_ipv6,
        ""
    );
    let report = bed.pass(false).await;
    eprint!("{}", report.text());
    let freed: Vec<_> = report
        .settled
        .iter()
        .filter(|s| matches!(&s.finding.subject, Subject::Endpoint(e) if e.namespace == bed.ns))
        .map(|s| (s.finding.reason, s.outcome.clone()))
        .collect();
    assert_eq!(freed.len(), 2, "{freed:?}");
    assert!(
        freed
            .iter()
            .all(|(r, o)| *r == Reason::PodGone && matches!(o, Outcome::Freed(a) if a.len() == 1))
    );
    assert!(endpoint(&bed, "cid-v4").await.is_none());
    assert!(endpoint(&bed, "cid-v6").await.is_none());
    assert!(bed.allocations(&net).await.is_empty());
}

/// An address no DanmEp names is left alone while it is younger than the grace period (its
/// record may be on its way), and freed by a later pass once it is older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_orphan_waits_for_the_grace_period() {
    let _turn = TURN.lock().await;
    let bed = Bed::start("young").await;
    let net = bed.danmnet("young", "10.85.0.0/24", None).await;
    bed.allocate(&net, "cid-orphan", "p", "", "", "dynamic", "")
        .await
        .unwrap();
    Api::<DanmEp>::namespaced(bed.client.clone(), &bed.ns)
        .delete(&ep_name("cid-orphan"), &Default::default())
        .await
        .unwrap();
    let config = PassConfig {
        grace: Duration::from_secs(3600),
        concurrency: 4,
        page: 100,
    };
    let metrics = Metrics::new();
    let mut sightings = Sightings::default();
    let freer = bed.freer(false);
    let first = danm_cleaner::pass(&freer, &config, &mut sightings, &metrics)
        .await
        .unwrap();
    let mine = |r: &danm_cleaner::Report| {
        r.settled
            .iter()
            .filter(|s| matches!(&s.finding.subject, Subject::Address { network, .. } if network.namespace == bed.ns))
            .count()
    };
    assert_eq!(mine(&first), 0);
    assert!(first.young_orphans >= 1);
    assert_eq!(
        bed.allocations(&net).await.len(),
        1,
        "kept within the grace period"
    );
    // Seen for longer than a (short) grace period in watch mode: freed.
    let short = PassConfig {
        grace: Duration::from_secs(2),
        concurrency: 4,
        page: 100,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = danm_cleaner::pass(&freer, &short, &mut sightings, &metrics)
        .await
        .unwrap();
    assert_eq!(mine(&later), 1, "{:?}", later.settled);
    assert!(bed.allocations(&net).await.is_empty());
    let text = metrics.encode();
    assert!(
        text.contains("danm_cleaner_freed_total{reason=\"orphan\"}"),
        "{text}"
    );
}
