//! Unit tests of the metaplugin: configuration parsing and interface naming.

use super::*;
use crate::ipamd::DEFAULT_IPAMD;
use serde_json::json;
use std::path::PathBuf;

#[test]
fn reads_00_danm_conf() {
    let c = DanmConfig::parse(&json!({
        "cniVersion": "1.0.0", "name": "danm", "type": "danm",
        "ipamd": "http://10.0.0.1:50051", "cniDir": "/etc/cni/danm", "namingScheme": "legacy",
        "args": {"danm.io/interfaces": [{"network": "internal", "ip": "dynamic"}]}
    }))
    .unwrap();
    assert_eq!(c.ipamd, "http://10.0.0.1:50051");
    assert_eq!(c.cni_dir, PathBuf::from("/etc/cni/danm"));
    assert_eq!(c.naming_scheme, "legacy");
    assert_eq!(c.interfaces, r#"[{"ip":"dynamic","network":"internal"}]"#);
    assert_eq!(c.policer, None);
    let d = DanmConfig::parse(&json!({})).unwrap();
    assert_eq!(d.ipamd, DEFAULT_IPAMD);
    assert_eq!(d.interfaces, "");
    // The installer renders `policer` empty without deploy/components/policer.
    let p = DanmConfig::parse(&json!({"policer": ""})).unwrap();
    assert_eq!(p.policer, None);
    let p = DanmConfig::parse(&json!({"policer": "/var/run/danm/policer.sock"})).unwrap();
    assert_eq!(p.policer, Some(PathBuf::from("/var/run/danm/policer.sock")));
    // A node identified by its agent's token (ipamd --node-identity sa-token), passed
    // on to danm-ipam as written.
    let t = DanmConfig::parse(&json!({"ipamdTLS": {
        "ca": "/etc/cni/net.d/danm/ipamd-ca.crt", "token": "/etc/cni/net.d/danm/node-token"}}))
    .unwrap();
    let tls = t.tls.unwrap();
    assert_eq!(
        tls.token,
        Some(PathBuf::from("/etc/cni/net.d/danm/node-token"))
    );
    assert_eq!(
        ipamd::tls_json(&tls)["token"],
        "/etc/cni/net.d/danm/node-token"
    );
}

#[test]
fn bad_keys_are_named() {
    for (config, field) in [
        (json!({"ipamd": 5}), "ipamd"),
        (json!({"namingScheme": "new"}), "namingScheme"),
        (
            json!({"args": {"danm.io/interfaces": 3}}),
            "args.danm.io/interfaces",
        ),
        (json!({"ipamdTLS": {"cert": "x"}}), "ipamdTLS.ca"),
        (json!({"ipamdTLS": {"ca": "c", "cert": "x"}}), "ipamdTLS"),
        (json!({"ipamdTLS": {"ca": "c", "pin": "x"}}), "ipamdTLS.pin"),
        (json!({"policer": "${DANM_POLICER_SOCKET}"}), "policer"),
        (json!({"policer": "policer.sock"}), "policer"),
        (json!({"policer": true}), "policer"),
    ] {
        let e = DanmConfig::parse(&config).unwrap_err();
        assert!(e.msg.starts_with(field), "{config}: {e}");
    }
}

#[test]
fn parents_follow_danms_names() {
    let mut p = pb::InterfacePlan {
        network_id: "internal".into(),
        host_device: "ens3".into(),
        ..Default::default()
    };
    assert_eq!(parent_device(&p), "ens3");
    p.vlan = 500;
    assert_eq!(parent_device(&p), "internal.500");
    p.vxlan = 600;
    assert_eq!(parent_device(&p), "vx_internal");
    // The parent must carry this network's id, on its device.
    let vx = |vni, lower| Some(LinkId::Vxlan { vni, lower });
    assert_eq!(
        parent_mismatch(&p, "vx_internal", vx(600, 3), Some(3)),
        None
    );
    let why = parent_mismatch(&p, "vx_internal", vx(601, 3), Some(3)).unwrap();
    assert!(
        why.contains("VxLAN 601") && why.contains("VxLAN 600 over ens3"),
        "{why}"
    );
    assert!(parent_mismatch(&p, "vx_internal", vx(600, 4), Some(3)).is_some());
    assert!(parent_mismatch(&p, "vx_internal", None, Some(3)).is_some());
    // A network whose device is unknown here (no host_device on this node) cannot
    // tell its link from another's: refused, whatever the link's VNI.
    assert!(parent_mismatch(&p, "vx_internal", vx(600, 3), None).is_some());
    p.vxlan = 0;
    let vlan = |id, lower| Some(LinkId::Vlan { id, lower });
    assert_eq!(
        parent_mismatch(&p, "internal.500", vlan(500, 3), Some(3)),
        None
    );
    assert!(parent_mismatch(&p, "internal.500", vlan(501, 3), Some(3)).is_some());
    assert!(parent_mismatch(&p, "internal.500", vx(500, 3), Some(3)).is_some());
    assert!(parent_mismatch(&p, "internal.500", vlan(500, 3), None).is_some());
    p.vlan = 0;
    assert_eq!(
        parent_mismatch(&p, "ens3", None, None),
        None,
        "a plain device"
    );
    assert_eq!(backend(""), Some(Backend::Ipvlan));
    assert_eq!(backend("macvlan"), Some(Backend::Macvlan));
    assert_eq!(backend("sriov"), None);
}
