//! The bench binary runs end to end on a small load (one replica, a few clients, no write
//! latency) and prints the JSON the README documents. Its figures are not checked: speed
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
    assert_eq!(report["ipamd"]["peak_rss_mib"].as_array().unwrap().len(), 2);
    assert!(
        report["ratio"]["fill_allocations_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// The same on the real API server and etcd (`--api real`): the counters come from the API
/// server's own metrics.
#[test]
fn bench_runs_on_the_real_api_server() {
    let report = bench(&[
        "--api",
        "real",
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
