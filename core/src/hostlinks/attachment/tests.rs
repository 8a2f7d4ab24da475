use super::*;

fn vx(parent: &str, vni: u32) -> LinkSpec {
    LinkSpec::Vxlan {
        parent: parent.into(),
        vni,
    }
}

#[test]
fn a_plugin_with_master_and_ids_asks_for_danms_links() {
    let config = r#"{"cniVersion":"0.4.0","name":"sig","type":"macvlan","master":"ens4","vlan":100,"vxlan":700,"mode":"bridge"}"#;
    let got = links(config, Written::default()).unwrap().unwrap();
    assert_eq!(
        got.links,
        vec![
            (
                "sig.100".to_owned(),
                LinkSpec::Vlan {
                    parent: "ens4".into(),
                    id: 100
                }
            ),
            ("vx_sig".to_owned(), vx("ens4", 700)),
        ]
    );
    assert_eq!(got.master, "vx_sig", "the VxLAN link when both are asked");
    assert_eq!(got.device, "ens4");
    assert!(!got.rewritten);
    // Rewritten: master names the link, the annotation the device.
    let rewritten = rewrite(config, &got.master).unwrap();
    let value: serde_json::Value = serde_json::from_str(&rewritten).unwrap();
    assert_eq!(value["master"], "vx_sig");
    assert_eq!(value["mode"], "bridge", "the rest is kept");
    let annotations = Written {
        original: Some("ens4"),
        rewritten: Some("vx_sig"),
    };
    let again = links(&rewritten, annotations).unwrap().unwrap();
    assert_eq!(again.links, got.links);
    assert!(again.rewritten);
    // The owner changes the VNI and the name after the rewrite: master still names the
    // link netwatcher wrote, so the device is still the annotation's.
    let changed = rewritten
        .replace("700", "701")
        .replace("\"sig\"", "\"sig2\"");
    let moved = links(&changed, annotations).unwrap().unwrap();
    assert_eq!(moved.device, "ens4");
    assert_eq!(moved.master, "vx_sig2");
    assert!(!moved.rewritten, "master must name the new link");
    // Without the annotation the device is unknown: refused, nothing guessed.
    let e = links(&rewritten, Written::default()).unwrap_err();
    assert!(e.to_string().contains(ORIGINAL_MASTER), "{e}");
    assert_eq!(e.reason(), "BadAttachmentConfig");
}

#[test]
fn a_configuration_without_ids_asks_for_nothing() {
    for config in [
        r#"{"name":"n","type":"macvlan","master":"ens4"}"#,
        r#"{"name":"n","type":"macvlan","master":"ens4","vlan":0}"#,
        r#"{"name":"n","plugins":[{"type":"macvlan","master":"ens4"},{"type":"tuning"}]}"#,
    ] {
        assert_eq!(links(config, Written::default()).unwrap(), None, "{config}");
    }
}

#[test]
fn in_a_plugin_list_the_one_plugin_that_asks_is_read_and_rewritten() {
    let config = r#"{"cniVersion":"1.0.0","name":"sig","plugins":[{"type":"macvlan","master":"ens4","vxlan":42},{"type":"tuning","sysctl":{}}]}"#;
    let got = links(config, Written::default()).unwrap().unwrap();
    assert_eq!(got.links, vec![("vx_sig".to_owned(), vx("ens4", 42))]);
    let rewritten = rewrite(config, "vx_sig").unwrap();
    let value: serde_json::Value = serde_json::from_str(&rewritten).unwrap();
    assert_eq!(value["plugins"][0]["master"], "vx_sig");
    assert_eq!(value["plugins"][1]["type"], "tuning");
    let two = r#"{"name":"sig","plugins":[{"type":"macvlan","master":"ens4","vxlan":42},{"type":"macvlan","master":"ens5","vlan":7}]}"#;
    let e = links(two, Written::default()).unwrap_err();
    assert!(e.to_string().contains("only one may"), "{e}");
}

/// Whoever may write NetworkAttachmentDefinitions writes these strings: none of them
/// becomes a link name, or names a device, unless it is a plain name the kernel takes.
#[test]
fn hostile_configurations_are_refused_with_the_field_named() {
    let cases = [
        (r#"not json"#, "spec.config is not JSON"),
        (r#"["a"]"#, "not a JSON object"),
        (
            r#"{"name":"../../x","master":"ens4","vxlan":1}"#,
            "spec.config name",
        ),
        (
            r#"{"name":"","master":"ens4","vxlan":1}"#,
            "spec.config name",
        ),
        (r#"{"master":"ens4","vxlan":1}"#, "spec.config name"),
        (
            r#"{"name":"a/b","master":"ens4","vlan":1}"#,
            "spec.config name",
        ),
        (
            r#"{"name":"n","master":"/dev/x","vlan":1}"#,
            "spec.config master",
        ),
        (r#"{"name":"n","vlan":1}"#, "spec.config master is missing"),
        (
            r#"{"name":"n","master":"a-very-long-device-name","vlan":1}"#,
            "longer than 15",
        ),
        (
            r#"{"name":"n","master":"ens4","vlan":4095}"#,
            "spec.config vlan 4095",
        ),
        (
            r#"{"name":"n","master":"ens4","vxlan":16777216}"#,
            "spec.config vxlan",
        ),
        (
            r#"{"name":"n","master":"ens4","vlan":"7"}"#,
            "spec.config vlan is \"7\", not an integer",
        ),
        (
            r#"{"name":"n","plugins":[{"type":"macvlan","master":"e;x","vxlan":3}]}"#,
            "spec.config plugins[0].master",
        ),
        (r#"{"name":"n","plugins":{"a":1}}"#, "plugins is not a list"),
    ];
    for (config, said) in cases {
        let e = links(config, Written::default()).unwrap_err();
        assert!(e.to_string().contains(said), "{config}: {e}");
    }
    // A name whose link would be longer than the kernel takes.
    let e = links(
        r#"{"name":"a-long-network-name","master":"ens4","vxlan":1}"#,
        Written::default(),
    )
    .unwrap_err();
    assert!(matches!(e, LinkProblem::NameTooLong(_)), "{e}");
    // The annotation is checked as the master is.
    let e = links(
        r#"{"name":"n","master":"vx_n","vxlan":1}"#,
        Written {
            original: Some("../../etc"),
            rewritten: None,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains(ORIGINAL_MASTER), "{e}");
}
