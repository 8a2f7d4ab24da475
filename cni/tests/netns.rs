//! The `danm` and `danm-ipam` binaries as a runtime calls them, in real network namespaces
//! over veth parents, against an in-process ipamd (memory store; and once on the Kubernetes
//! store of the real API server, where `danm` finds the pod's interfaces in its annotation).
//! Needs root and `ip` (iproute2); the delegation tests need Debian's
//! containernetworking-plugins in /usr/lib/cni (`.ci/run` installs both).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use danm_ipamd::store::Store;
use danm_testkit::netns::{ip, unique};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_macvlan_interfaces_add_check_del() {
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([
            {"network": "dual", "ip": "dynamic", "ip6": "dynamic"},
            {"network": "pr", "ip": "dynamic", "ip6": "dynamic",
             "proutes": {"10.70.0.0/16": "10.51.0.254"},
             "proutes6": {"2001:db8:70::/48": "2001:db8:51::fe"}}
        ]),
    );
    let add = danm("ADD", "c-two", &ns.path(), &conf).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let r = &add.stdout;
    assert_eq!(r["cniVersion"], "1.1.0");
    let names = interface_names(r);
    assert_eq!(names, ["eth0", "ext1"]);
    assert_eq!(r["interfaces"][0]["sandbox"], ns.path().as_str());
    let ips: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), 4, "{r}");
    let (v4, v6, pr, pr6) = (ips[0], ips[1], ips[2], ips[3]);
    assert!(pr6.starts_with("2001:db8:51::"), "{pr6}");
    assert!(v4.starts_with("10.50.0.") && v4.ends_with("/24"), "{v4}");
    assert!(
        v6.starts_with("2001:db8:50::") && v6.ends_with("/64"),
        "{v6}"
    );
    assert!(pr.starts_with("10.51.0."), "{pr}");
    assert_eq!(r["ips"][2]["interface"], 1);

    // Inside the namespace, as asked.
    let eth0 = ns.ip(&["addr", "show", "eth0"]);
    assert!(eth0.contains(v4) && eth0.contains(v6), "{eth0}");
    assert!(ns.ip(&["addr", "show", "ext1"]).contains(pr));
    let main = ns.ip(&["route", "show"]);
    assert!(
        main.contains("10.60.0.0/16 via 10.50.0.1 dev eth0"),
        "{main}"
    );
    let table = ns.ip(&["route", "show", "table", "200"]);
    assert!(
        table.contains("10.70.0.0/16 via 10.51.0.254 dev ext1"),
        "{table}"
    );
    let pr_ip = pr.split('/').next().unwrap();
    let rules = ns.ip(&["rule", "show"]);
    assert!(
        rules.contains(&format!("from {pr_ip} lookup 200")),
        "{rules}"
    );
    let table6 = ns.ip(&["-6", "route", "show", "table", "200"]);
    assert!(
        table6.contains("2001:db8:70::/48 via 2001:db8:51::fe dev ext1"),
        "{table6}"
    );
    let pr6_ip = pr6.split('/').next().unwrap();
    let rules6 = ns.ip(&["-6", "rule", "show"]);
    assert!(
        rules6.contains(&format!("from {pr6_ip} lookup 200")),
        "{rules6}"
    );
    assert_eq!(allocated(&ipamd).await, 4);

    let check = danm("CHECK", "c-two", &ns.path(), &conf).await;
    assert!(check.ok, "CHECK failed: {} {}", check.stdout, check.stderr);

    let del = danm("DEL", "c-two", &ns.path(), &conf).await;
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert_eq!(ns.links(), ["lo"], "links removed");
    for family in ["-4", "-6"] {
        assert!(
            !ns.ip(&[family, "rule", "show"]).contains("lookup 200"),
            "{family} rule removed"
        );
    }
    assert_eq!(allocated(&ipamd).await, 0, "addresses released");
    let again = danm("DEL", "c-two", &ns.path(), &conf).await;
    assert!(again.ok, "a second DEL succeeds: {}", again.stdout);
    // CHECK of a container that holds nothing: code 3.
    let check = danm("CHECK", "c-two", &ns.path(), &conf).await;
    assert!(!check.ok);
    assert_eq!(check.stdout["code"], 3);
}

/// ipamd on the Kubernetes store of the real API server: `danm` gets no interface list in
/// its configuration; ipamd reads the pod and its `danm.io/interfaces` annotation from the
/// API, allocates, and records DanmEps there; CHECK and DEL follow them; DEL removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_del_with_ipamd_on_the_real_api_server() {
    use danm_crds::DanmEp;
    use danm_ipamd::store::kube::KubeStore;
    use danm_testkit::control_plane::ControlPlane;
    use kube::api::{Api, ListParams};

    let plane = ControlPlane::shared().await;
    let namespace = plane.namespace("cni").await;
    let ipamd_namespace = plane.namespace("danm-system").await;
    let parent = veth();
    let netns = netns();
    plane
        .kubectl_apply(&format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: kube, namespace: {namespace}}}\nspec:\n  NetworkID: kube\n  NetworkType: macvlan\n  Options: {{host_device: {}, cidr: 10.57.0.0/24, net6: 'fd00:57::/64', container_prefix: kb}}\n",
            parent.name
        ))
        .unwrap();
    plane
        .kubectl_apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-c-kube\n  namespace: {namespace}\n  annotations:\n    danm.io/interfaces: '[{{\"network\":\"kube\",\"ip\":\"dynamic\",\"ip6\":\"dynamic\"}},{{\"network\":\"kube\",\"ip\":\"10.57.0.9/24\"}}]'\nspec:\n  containers: [{{name: app, image: busybox:latest}}]\n"
        ))
        .unwrap();
    let client = plane.client().await;
    let store: Arc<dyn Store> = Arc::new(KubeStore::new(client.clone(), &ipamd_namespace).await);
    let ipamd = ipamd_on(store).await;
    let url = ipamd.url();
    let dir = tempfile::tempdir().unwrap();
    // No `args`: the interfaces come from the pod's annotation, through ipamd.
    let conf = json!({
        "cniVersion": "1.1.0", "name": "danm", "type": "danm",
        "ipamd": url, "cniDir": dir.path(),
    });
    let add = danm_for_pod("ADD", "c-kube", &netns.path(), &conf, &namespace).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let names = interface_names(&add.stdout);
    // As DANM names them: the pod's first interface is eth0, then prefix and index.
    assert_eq!(names, ["eth0", "kb1"]);
    let static_ip = netns.ip(&["addr", "show", "kb1"]);
    assert!(static_ip.contains("10.57.0.9/24"), "{static_ip}");
    let eth0 = netns.ip(&["addr", "show", "eth0"]);
    assert!(
        eth0.contains("10.57.0.") && eth0.contains("fd00:57::"),
        "{eth0}"
    );
    let eps = Api::<DanmEp>::namespaced(client.clone(), &namespace);
    let recorded = eps.list(&ListParams::default()).await.unwrap().items;
    let mut addresses: Vec<(String, String)> = recorded
        .iter()
        .map(|e| {
            (
                e.spec.interface.name.clone(),
                e.spec.interface.address.clone(),
            )
        })
        .collect();
    addresses.sort();
    assert_eq!(addresses.len(), 2, "{addresses:?}");
    assert_eq!(
        addresses[1],
        ("kb1".to_string(), "10.57.0.9/24".to_string())
    );
    assert!(recorded.iter().all(|e| e.spec.pod == "pod-c-kube"));

    let check = danm_for_pod("CHECK", "c-kube", &netns.path(), &conf, &namespace).await;
    assert!(check.ok, "CHECK failed: {} {}", check.stdout, check.stderr);
    let del = danm_for_pod("DEL", "c-kube", &netns.path(), &conf, &namespace).await;
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert_eq!(netns.links(), ["lo"], "links removed");
    assert!(
        eps.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        ipamd
            .engine
            .list_allocations(None)
            .await
            .unwrap()
            .iter()
            .all(|a| a.network.namespace != namespace)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_whose_second_interface_fails_leaves_nothing() {
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "dual", "ip": "dynamic"}, {"network": "missing", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-fail", &ns.path(), &conf).await;
    assert!(!add.ok);
    assert_eq!(add.stdout["code"], 102, "{}", add.stdout);
    let details = add.stdout["details"].as_str().unwrap();
    assert!(
        details.contains("nosuchdev0") && details.contains("network missing"),
        "{details}"
    );
    assert_eq!(ns.links(), ["lo"], "no link left behind");
    assert_eq!(allocated(&ipamd).await, 0, "no allocation left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_full_pool_and_unreachable_ipamd_are_cni_errors_that_change_nothing() {
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();

    // Malformed stdin.
    let out = tokio::task::spawn_blocking({
        let path = ns.path();
        move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_danm"))
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", "c-bad")
                .env("CNI_NETNS", path)
                .env("CNI_IFNAME", "eth0")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"{\"cniVersion\": \"1.0.0\",")
                .unwrap();
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 6, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("not valid JSON"));

    // Unknown network.
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "nosuchnet", "ip": "dynamic"}]),
    );
    expect_error(
        &danm("ADD", "c-unknown", &ns.path(), &conf).await,
        7,
        "nosuchnet",
    );

    // Full pool: tiny (a /30) has two addresses.
    let tiny = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "tiny", "ip": "dynamic"}]),
    );
    let ns2 = netns();
    let ns3 = netns();
    // Results come in the version the configuration asks for.
    let mut old = tiny.clone();
    old["cniVersion"] = json!("0.4.0");
    let t1 = danm("ADD", "c-t1", &ns2.path(), &old).await;
    assert!(t1.ok, "{}", t1.stdout);
    assert_eq!(t1.stdout["cniVersion"], "0.4.0");
    assert_eq!(
        t1.stdout["ips"][0]["version"], "4",
        "0.4.0 results carry the address version"
    );
    // A `.conf` listing cniVersions, as containerd 1.6 passes it: the answer is in the
    // cniVersion the runtime parses, never a higher one of the list.
    let mut several = tiny.clone();
    several["cniVersion"] = json!("1.0.0");
    several["cniVersions"] = json!(["0.3.1", "1.0.0", "1.1.0"]);
    let t2 = danm("ADD", "c-t2", &ns3.path(), &several).await;
    assert!(t2.ok, "{}", t2.stdout);
    assert_eq!(
        t2.stdout["cniVersion"], "1.0.0",
        "the cniVersion the runtime chose"
    );
    assert!(t2.stdout["ips"][0].get("version").is_none());
    let full = danm("ADD", "c-t3", &ns.path(), &tiny).await;
    expect_error(&full, 100, "exhausted");
    assert_eq!(allocated(&ipamd).await, 2);
    // The error names the CNI call's request id, which ipamd's log line of the refusal
    // carries: one id from the runtime's log to ipamd's.
    let details = full.stdout["details"].as_str().unwrap_or_default();
    let id = details
        .split("(request id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no request id in the error: {}", full.stdout));
    assert!(id.starts_with("cni-"), "{id}");
    let log = String::from_utf8_lossy(&IPAMD_LOG.lock().unwrap()).into_owned();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("request_id={id}")))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("request refused")),
        "ipamd did not log the refusal under request id {id}: {lines:?}"
    );

    // ipamd unreachable.
    let gone = danm_conf(
        "http://127.0.0.1:1",
        dir.path(),
        json!([{"network": "dual", "ip": "dynamic"}]),
    );
    expect_error(
        &danm("ADD", "c-gone", &ns.path(), &gone).await,
        11,
        "127.0.0.1:1",
    );

    // None of these changed anything in the namespace.
    assert_eq!(ns.links(), ["lo"]);
    assert_eq!(allocated(&ipamd).await, 2);

    // DEL after the namespace is gone (the runtime removed it first) still releases.
    let ns2_path = ns2.path();
    drop(ns2);
    let del = danm("DEL", "c-t1", &ns2_path, &tiny).await;
    assert!(del.ok, "{} {}", del.stdout, del.stderr);
    assert_eq!(allocated(&ipamd).await, 1);

    // VERSION and STATUS.
    let version = danm("VERSION", "", "", &json!({"cniVersion": "1.1.0"})).await;
    assert!(
        version.stdout["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("0.4.0"))
    );
    assert!(danm("STATUS", "", "", &tiny).await.ok);
    // STATUS does not ask ipamd: an ipamd outage must not make every node NotReady (see
    // ipam_plugin::status). What the node itself lacks is reported: a missing TLS file.
    let status = danm("STATUS", "", "", &gone).await;
    assert!(status.ok, "{} {}", status.stdout, status.stderr);
    let mut no_ca = gone.clone();
    no_ca["ipamd"] = json!("https://127.0.0.1:1");
    no_ca["ipamdTLS"] = json!({"ca": dir.path().join("missing-ca.pem")});
    let status = danm("STATUS", "", "", &no_ca).await;
    assert_eq!(status.stdout["code"], 50, "{}", status.stdout);
    assert!(
        status.stdout["msg"]
            .as_str()
            .is_some_and(|m| m.contains("missing-ca.pem")),
        "{}",
        status.stdout
    );
    // An empty CA file trusts nothing: every ADD would fail at the handshake.
    std::fs::write(dir.path().join("empty-ca.pem"), "").unwrap();
    no_ca["ipamdTLS"] = json!({"ca": dir.path().join("empty-ca.pem")});
    let status = danm("STATUS", "", "", &no_ca).await;
    assert_eq!(status.stdout["code"], 50, "{}", status.stdout);
    assert!(
        status.stdout["msg"]
            .as_str()
            .is_some_and(|m| m.contains("holds no PEM certificate")),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_to_the_bridge_plugin_takes_its_address_from_ipamd() {
    assert!(
        Path::new(PLUGINS).join("bridge").is_file(),
        "{PLUGINS}/bridge missing: apt-get install containernetworking-plugins"
    );
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let bridge = unique("dbr");
    let _cleanup = HostLink::adopt(&bridge);
    std::fs::write(
        dir.path().join("br.conf"),
        json!({"cniVersion": "1.0.0", "name": "br", "type": "bridge", "bridge": bridge,
               "ipam": {"type": "host-local", "subnet": "192.168.99.0/24"}})
        .to_string(),
    )
    .unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "br", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-br", &ns.path(), &conf).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let address = ns.ip(&["addr", "show", "eth0"]);
    assert!(
        address.contains("10.52.0."),
        "the bridge got its address from ipamd: {address}"
    );
    assert!(
        !address.contains("192.168.99."),
        "host-local was replaced: {address}"
    );
    assert_eq!(allocated(&ipamd).await, 1);
    let del = danm("DEL", "c-br", &ns.path(), &conf).await;
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert_eq!(allocated(&ipamd).await, 0);
    assert_eq!(ns.links(), ["lo"]);
    // DEL gets the ADD's configuration (danm-ipam, not the file's host-local, which would
    // have opened its store for network br on the host).
    assert!(!Path::new("/var/lib/cni/networks/br").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_macvlan_plugin_uses_danm_ipam_directly() {
    let macvlan = Path::new(PLUGINS).join("macvlan");
    assert!(
        macvlan.is_file(),
        "{} missing: apt-get install containernetworking-plugins",
        macvlan.display()
    );
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "direct", "type": "macvlan", "master": a.name,
        "ipam": {"type": "danm-ipam", "ipamd": ipamd.url(), "network": "direct"}
    });
    let run = |command: &'static str, conf: Value, path: String| {
        let macvlan = macvlan.clone();
        tokio::task::spawn_blocking(move || {
            cni(&macvlan, command, "c-direct", &path, "net1", &conf)
        })
    };
    let add = run("ADD", conf.clone(), ns.path()).await.unwrap();
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let ip = add.stdout["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.55.0."), "{ip}");
    assert!(ns.ip(&["addr", "show", "net1"]).contains(&ip));
    let listed = ipamd.engine.list_allocations(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(format!("{}/24", listed[0].address), ip);
    // danm-ipam on its own: a repeated ADD of the same attachment gets the same address,
    // CHECK confirms it, GC keeps what is in the valid set.
    let ipam = bin_dir().join("danm-ipam");
    let again = {
        let (ipam, conf, path) = (ipam.clone(), conf.clone(), ns.path());
        tokio::task::spawn_blocking(move || cni(&ipam, "ADD", "c-direct", &path, "net1", &conf))
            .await
            .unwrap()
    };
    assert!(again.ok, "{}", again.stdout);
    assert_eq!(again.stdout["ips"][0]["address"], ip.as_str());
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = add.stdout.clone();
    let mut keep = conf.clone();
    keep["cni.dev/valid-attachments"] = json!([{"containerID": "c-direct", "ifname": "net1"}]);
    for (command, config) in [("CHECK", with_prev), ("GC", keep)] {
        let (ipam, path) = (ipam.clone(), ns.path());
        let out = tokio::task::spawn_blocking(move || {
            cni(&ipam, command, "c-direct", &path, "net1", &config)
        })
        .await
        .unwrap();
        assert!(out.ok, "{command}: {} {}", out.stdout, out.stderr);
    }
    assert_eq!(allocated(&ipamd).await, 1, "GC kept the valid attachment");
    let del = run("DEL", conf.clone(), ns.path()).await.unwrap();
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert_eq!(allocated(&ipamd).await, 0);
    assert!(
        run("DEL", conf, ns.path()).await.unwrap().ok,
        "a second DEL succeeds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel without ipvlan: this machine's kernel has no ipvlan links (the request itself is unit-tested in danm_netlink::socket)"]
async fn an_ipvlan_interface_is_built_in_the_pod_namespace() {
    let (a, b) = (veth(), veth());
    let yaml = networks(&a.name, &b.name).replace("NetworkType: macvlan", "NetworkType: ipvlan");
    let ipamd = start_ipamd(&yaml).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "dual", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-ipvlan", &ns.path(), &conf).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    assert!(ns.ip(&["-d", "link", "show", "eth0"]).contains("ipvlan"));
    assert!(danm("DEL", "c-ipvlan", &ns.path(), &conf).await.ok);
    assert_eq!(allocated(&ipamd).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vxlan_network_hangs_its_interface_off_netwatchers_vx_link() {
    let veth = veth();
    // netwatcher's link for NetworkID "vxn", VNI 42 (created here as netwatcher would).
    let vx = "vx_vxn";
    let _ = Command::new("ip").args(["link", "del", vx]).status();
    let _cleanup = HostLink::adopt(vx);
    ip(&[
        "link", "add", vx, "type", "vxlan", "id", "42", "dstport", "4789", "dev", &veth.name,
    ]);
    ip(&["link", "set", vx, "up"]);
    let yaml = format!(
        r#"
apiVersion: danm.io/v1
kind: DanmNet
metadata: {{name: vxn, namespace: default}}
spec:
  NetworkID: vxn
  NetworkType: macvlan
  Options:
    host_device: {}
    vxlan: 42
    cidr: 10.57.0.0/24
"#,
        veth.name
    );
    let ipamd = start_ipamd(&yaml).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "vxn", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-vx", &ns.path(), &conf).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let details = ns.ip(&["-d", "link", "show", "eth0"]);
    assert!(details.contains("macvlan"), "{details}");
    // eth0@ifN: N is the parent's index in the host namespace, which must be vx_vxn's.
    let host: Value = serde_json::from_str(&ip(&["-j", "link", "show", vx])).unwrap();
    let parent = host[0]["ifindex"].as_u64().unwrap();
    assert!(
        details.contains(&format!("eth0@if{parent}:")),
        "parent is {vx} ({parent}): {details}"
    );
    assert!(ns.ip(&["addr", "show", "eth0"]).contains("10.57.0."));
    let del = danm("DEL", "c-vx", &ns.path(), &conf).await;
    assert!(del.ok, "DEL failed: {}", del.stdout);
    assert_eq!(allocated(&ipamd).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflist_chain_runs_in_order_with_danm_ipam_in_its_first_plugin() {
    for plugin in ["bridge", "tuning"] {
        assert!(
            Path::new(PLUGINS).join(plugin).is_file(),
            "{PLUGINS}/{plugin} missing: apt-get install containernetworking-plugins"
        );
    }
    let (a, b) = (veth(), veth());
    let ipamd = start_ipamd(&networks(&a.name, &b.name)).await;
    let ns = netns();
    let dir = tempfile::tempdir().unwrap();
    let bridge = unique("dbr");
    let _cleanup = HostLink::adopt(&bridge);
    std::fs::write(
        dir.path().join("chain.conflist"),
        json!({"cniVersion": "1.0.0", "name": "chain", "plugins": [
            {"type": "bridge", "bridge": bridge, "ipam": {"type": "host-local", "subnet": "192.168.98.0/24"}},
            {"type": "tuning", "mac": "c2:b0:57:49:47:f1"}
        ]})
        .to_string(),
    )
    .unwrap();
    let conf = danm_conf(
        &ipamd.url(),
        dir.path(),
        json!([{"network": "chain", "ip": "dynamic"}]),
    );
    let add = danm("ADD", "c-chain", &ns.path(), &conf).await;
    assert!(add.ok, "ADD failed: {} {}", add.stdout, add.stderr);
    let eth0 = ns.ip(&["addr", "show", "eth0"]);
    assert!(eth0.contains("10.58.0."), "address from ipamd: {eth0}");
    assert!(
        eth0.contains("c2:b0:57:49:47:f1"),
        "tuning ran after bridge: {eth0}"
    );
    let del = danm("DEL", "c-chain", &ns.path(), &conf).await;
    assert!(del.ok, "DEL failed: {} {}", del.stdout, del.stderr);
    assert_eq!(allocated(&ipamd).await, 0);
    assert_eq!(ns.links(), ["lo"]);
}
