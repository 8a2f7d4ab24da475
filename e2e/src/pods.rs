//! What the scenarios ask of pods: readiness as kubelet reports it, and waiting for a
//! Deployment's pods, with the cluster's state in the failure message.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;

/// Whether the pod's Ready condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node the pod is bound to.
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The pod's IP (of its primary interface).
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// Waits until exactly `count` pods match `selector` in `pods` and all are ready; panics
/// with the cluster's state after `seconds`.
pub async fn wait_ready(
    cluster: &Cluster,
    pods: &Api<Pod>,
    selector: &str,
    count: usize,
    seconds: u64,
) -> Vec<Pod> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        if list.len() == count && list.iter().all(ready) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{selector}: {} of {count} pods ready after {seconds} s\n{}",
            list.iter().filter(|p| ready(p)).count(),
            cluster.diagnose()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until pod `name` has ended; its phase (`Succeeded` or `Failed`). Panics with
/// `diagnose()` after 90 s.
pub async fn phase_when_done(pods: &Api<Pod>, name: &str, diagnose: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let phase = pods
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.status?.phase)
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return phase;
        }
        assert!(
            Instant::now() < deadline,
            "{name} has not ended after 90 s (phase {phase:?})\n{}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Polls `check` every 250 ms for at most `seconds`; panics with `diagnose()` after.
pub async fn eventually<T, F, Fut>(
    seconds: u64,
    what: &str,
    diagnose: impl Fn() -> String,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {seconds} s\n{}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The test's log output: the node agents' warnings (a failing CNI call, say).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("danm_e2e=warn")
        .with_test_writer()
        .try_init();
}
