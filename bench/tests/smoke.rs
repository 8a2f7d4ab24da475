//! The bench binary runs end to end on a small load (two replicas, a few clients) on a real
//! API server and prints the JSON docs/benchmarks.md documents. Its figures are not checked: speed
//! is measured by running the bench, never asserted in tests.

use std::process::Command;

/// Runs the bench with `args`; its JSON report.
fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .expect("bench runs");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// With a write latency added by the fault proxy in front of the API server.
#[test]
fn bench_prints_both_runs_and_their_ratio() {
    let report = bench(&[
        "--replicas",
        "2",
        "--clients",
        "4",
        "--cidr",
        "10.1.0.0/22",
        "--fill",
        "300",
        "--churn",
        "100",
        "--write-latency-ms",
        "1",
    ]);
    for run in ["ipamd", "danm_baseline"] {
        let r = &report[run];
        assert_eq!(r["fill"]["allocations"], 300, "{run}: {r}");
        assert_eq!(r["churn"]["operations"], 200, "{run}: {r}");
        assert_eq!(r["live_owners"], 300, "{run}");
        assert_eq!(r["duplicates"], 0, "{run}");
        for key in ["allocations_per_second", "api_writes_per_allocation"] {
            assert!(r["fill"][key].as_f64().unwrap() > 0.0, "{run}: {key}");
        }
        for q in ["p50", "p99", "max"] {
            assert!(r["fill"]["allocate_ms"][q].is_number(), "{run}: {q}");
        }
        assert!(r["largest_object_bytes"].as_u64().unwrap() > 0, "{run}");
    }
    assert_eq!(report["setup"]["added_write_latency_ms"], 1);
    assert_eq!(report["ipamd"]["peak_rss_mib"].as_array().unwrap().len(), 2);
    assert!(
        report["ratio"]["fill_allocations_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// Straight to the real API server and etcd (no proxy): the counters come from the API
/// server's own metrics.
#[test]
fn bench_runs_on_the_real_api_server() {
    let report = bench(&[
        "--replicas",
        "2",
        "--clients",
        "4",
        "--cidr",
        "10.1.0.0/22",
        "--fill",
        "200",
        "--churn",
        "50",
    ]);
    assert_eq!(
        report["setup"]["api"],
        "real kube-apiserver and etcd (fsync on)"
    );
    for run in ["ipamd", "danm_baseline"] {
        let r = &report[run];
        assert_eq!(r["fill"]["allocations"], 200, "{run}: {r}");
        assert_eq!(r["live_owners"], 200, "{run}");
        assert_eq!(r["duplicates"], 0, "{run}");
        // Each allocation writes at least once (ipamd: the shard in groups and the DanmEp;
        // DANM: the network and the DanmEp).
        assert!(
            r["fill"]["api_writes_per_allocation"].as_f64().unwrap() >= 1.0,
            "{run}: {r}"
        );
    }
}

#[test]
fn bench_refuses_a_fill_larger_than_the_network() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--cidr", "10.1.0.0/24", "--fill", "1000", "--no-baseline"])
        .output()
        .expect("bench runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--fill 1000 does not fit in --cidr 10.1.0.0/24"),
        "{stderr}"
    );
}

/// `scale-bench` on the real API server, small: the API requests and the bytes one pod's
/// Attach, Interfaces and Detach cost are the same with 10 and with 1,000 DanmEps of other
/// pods (a list of DanmEps on any of these paths would grow the bytes a hundredfold),
/// Interfaces one (the GET of the pod's one DanmEp, which ipamd's cache finds), and Attach
/// three.
#[test]
fn scale_bench_requests_per_call_do_not_grow_with_the_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_scale-bench"))
        .args(["--endpoints", "10,1000", "--pods", "20"])
        .output()
        .expect("scale-bench runs");
    assert!(
        out.status.success(),
        "scale-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let requests = |run: &serde_json::Value, call: &str| {
        run["calls"][call]["api_requests_per_call"]
            .as_f64()
            .unwrap()
    };
    for call in ["attach", "interfaces", "detach"] {
        let (small, large) = (requests(&runs[0], call), requests(&runs[1], call));
        // Background requests of the control plane may add a fraction of one per call.
        assert!(
            (small - large).abs() < 0.5,
            "{call}: {small} requests per call with 10 DanmEps, {large} with 1,000"
        );
    }
    let bytes = |run: &serde_json::Value, call: &str| {
        run["calls"][call]["api_response_bytes_per_call"]
            .as_f64()
            .unwrap()
    };
    for call in ["attach", "interfaces", "detach"] {
        let (small, large) = (bytes(&runs[0], call), bytes(&runs[1], call));
        assert!(
            large <= small * 1.5 + 2_000.0,
            "{call}: {small} bytes per call with 10 DanmEps, {large} with 1,000"
        );
    }
    assert!(
        (requests(&runs[1], "interfaces") - 1.0).abs() < 0.5,
        "Interfaces reads the one DanmEp it names"
    );
    assert!(
        report["cache_bytes_per_danmep"].is_number(),
        "the cache's cost per DanmEp is reported"
    );
    assert!(
        requests(&runs[1], "attach") >= 3.0,
        "Attach reads the pod and writes"
    );
    // The pod read, the shard write and the DanmEp create: no read of a DanmEp that is not
    // there (ipamd's cache tells it has none).
    assert!(
        requests(&runs[1], "attach") < 3.5,
        "Attach costs {} requests",
        requests(&runs[1], "attach")
    );
}

/// `bench --peer whereabouts`, small: both plugins' CNI binaries called as a runtime calls
/// them (Whereabouts built from the Go module proxy by testkit/peers/whereabouts), no
/// address given twice, nothing left after the DELs, and danm-ipam's ADD costing fewer API
/// requests than Whereabouts' (which takes a Lease and writes its pool and a reservation).
#[test]
fn the_peer_bench_runs_both_plugins_as_a_runtime_would() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--peer",
            "whereabouts",
            "--peer-adds",
            "12",
            "--peer-callers",
            "1,3",
        ])
        .output()
        .expect("bench runs");
    assert!(
        out.status.success(),
        "bench --peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{report}");
    for run in runs {
        assert_eq!(run["duplicates"], 0, "{run}");
        assert_eq!(run["left_after_del"], 0, "{run}");
        assert!(
            run["allocations_per_second"].as_f64().unwrap() > 0.0,
            "{run}"
        );
    }
    let requests = |plugin: &str, callers: u64| {
        runs.iter()
            .find(|r| r["plugin"] == plugin && r["callers"] == callers)
            .unwrap()["per_add"]["api_requests"]
            .as_f64()
            .unwrap()
    };
    for callers in [1, 3] {
        assert!(
            requests("danm-ipam", callers) < requests("whereabouts", callers),
            "{report}"
        );
    }
    assert_eq!(report["ratios"].as_array().unwrap().len(), 2);
}

/// `policer-bench` end to end, small (as root: it makes network namespaces): every pod's
/// table applied, then the change's, with the figures docs/benchmarks.md documents.
#[test]
fn policer_bench_applies_every_pod_and_the_change() {
    let out = Command::new(env!("CARGO_BIN_EXE_policer-bench"))
        .args(["--pods", "20", "--policies", "4", "--touched", "5"])
        .output()
        .expect("policer-bench runs");
    assert!(
        out.status.success(),
        "policer-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // 20 first-round removals, 20 tables for the 4 policies, 5 for the change.
    assert!(report["applies"].as_f64().unwrap() >= 45.0, "{report}");
    for key in [
        "first_round_seconds",
        "all_policies_applied_seconds",
        "change_applied_seconds",
        "first_round_ms_per_pod",
        "first_table_ms_per_pod",
        "replace_ms_per_pod",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    // The change's rounds looked at the pods it touches, not at the 15 others.
    assert_eq!(
        report["change_pods_evaluated"].as_f64(),
        Some(5.0),
        "{report}"
    );
}
