//! `danm-certs` against the real API server: the CA, the TLS Secrets and the CA ConfigMap
//! are created with the right types, keys, names and usages, verified the way rustls
//! clients and servers verify them; the webhooks' caBundle is set; a second run writes
//! nothing (every resourceVersion stays); a deleted Secret, a certificate about to expire
//! and one of another CA are each re-issued alone; a required webhook configuration that
//! does not exist fails the binary with a message naming it; a next CA that lost its
//! publication time gets it back once.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use danm_certs::{self as certs, Action, Ca, Leaf, Options, Report};
use danm_testkit::control_plane::ControlPlane;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::{ByteString, Resource as _};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::json;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const TLS_SECRETS: [&str; 3] = ["danm-webhook-tls", "danm-ipamd-tls", "danm-cleaner-tls"];

/// A webhook configuration of both kinds named `name`, with one webhook that can never be
/// called: its selectors match no namespace and no object (other tests share the API
/// server), and it is ignored if it fails anyway.
async fn create_webhook_configurations(client: &Client, name: &str) {
    let webhook = |kind: &str| {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [{
                "name": "never.certs.danm.io",
                "clientConfig": {"url": "https://127.0.0.1:1/x"},
                "rules": [{
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["configmaps"],
                }],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "danm.io/never-matches", "operator": "Exists"},
                ]},
                "objectSelector": {"matchExpressions": [
                    {"key": "danm.io/never-matches", "operator": "Exists"},
                ]},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Ignore",
            }],
        })
    };
    let mutating: MutatingWebhookConfiguration =
        serde_json::from_value(webhook(MutatingWebhookConfiguration::KIND)).unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .unwrap();
    let validating: ValidatingWebhookConfiguration =
        serde_json::from_value(webhook(ValidatingWebhookConfiguration::KIND)).unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .unwrap();
}

/// The binary, as the Job runs it.
fn danm_certs(plane: &ControlPlane, args: &[&str]) -> Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danm-certs"))
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(args)
        .env_remove("POD_NAMESPACE")
        .env("RUST_LOG", "info")
        .output()
        .expect("danm-certs runs");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        !logs.contains("PRIVATE KEY"),
        "key material logged:\n{logs}"
    );
    output
}

fn options(namespace: &str, webhook_configuration: &str) -> Options {
    Options {
        require_webhook_configurations: true,
        ..Options::new(namespace, webhook_configuration)
    }
}

/// The resourceVersion of every object danm-certs writes.
async fn versions(
    client: &Client,
    ns: &str,
    webhook_configuration: &str,
) -> BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut versions = BTreeMap::new();
    for name in std::iter::once("danm-ca").chain(TLS_SECRETS) {
        let secret = secrets.get(name).await.unwrap();
        versions.insert(format!("Secret {name}"), secret.resource_version().unwrap());
    }
    let configmap = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("danm-ca")
        .await
        .unwrap();
    versions.insert(
        "ConfigMap danm-ca".into(),
        configmap.resource_version().unwrap(),
    );
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(webhook_configuration)
        .await
        .unwrap();
    versions.insert("Mutating".into(), mutating.resource_version().unwrap());
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(webhook_configuration)
        .await
        .unwrap();
    versions.insert("Validating".into(), validating.resource_version().unwrap());
    versions
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("the Secret has data");
    let value = data
        .get(key)
        .unwrap_or_else(|| panic!("{key} in {}", secret.name_any()));
    String::from_utf8(value.0.clone()).unwrap()
}

fn keys(secret: &Secret) -> Vec<&str> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect()
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
    x509_parser::parse_x509_certificate(der)
        .expect("an X.509 certificate")
        .1
}

fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    Arc::new(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The actions of `report` on the objects it changed, by object.
fn changes(report: &Report) -> BTreeMap<String, Action> {
    report
        .outcomes
        .iter()
        .filter(|o| matches!(o.action, Action::Created | Action::Updated(_)))
        .map(|o| (o.object.clone(), o.action.clone()))
        .collect()
}

/// Asserts everything the module overview says of a first run.
async fn assert_material(client: &Client, ns: &str, webhook_configuration: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret = secrets.get("danm-ca").await.unwrap();
    assert_eq!(ca_secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(keys(&ca_secret), ["ca-bundle.crt", "ca.crt", "ca.key"]);
    let ca_pem = text(&ca_secret, "ca.crt");
    // No rotation under way: the trust bundle is the CA alone.
    assert_eq!(
        text(&ca_secret, "ca-bundle.crt").trim(),
        ca_pem.trim(),
        "the trust bundle of a steady CA"
    );
    let ca_der = der(&ca_pem);
    let ca = parse(&ca_der);
    assert!(ca.is_ca());
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert_eq!(years, 10, "the CA is valid 10 years");

    for name in TLS_SECRETS {
        let secret = secrets.get(name).await.unwrap();
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"), "{name}");
        assert_eq!(keys(&secret), ["ca.crt", "tls.crt", "tls.key"], "{name}");
        assert_eq!(text(&secret, "ca.crt"), ca_pem, "{name} carries the CA");
    }

    // The serving certificates are accepted by a rustls client trusting the CA, under
    // every name of the Service, and carry exactly those names.
    let servers =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(&ca_pem), provider())
            .build()
            .unwrap();
    for service in ["danm-webhook", "danm-ipamd"] {
        let secret = secrets.get(&format!("{service}-tls")).await.unwrap();
        let cert_der = der(&text(&secret, "tls.crt"));
        let want = [
            service.to_owned(),
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
        ];
        for name in &want {
            servers
                .verify_server_cert(
                    &cert_der,
                    &[],
                    &ServerName::try_from(name.as_str()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{service}-tls for {name}: {e}"));
        }
        let cert = parse(&cert_der);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let dns: Vec<String> = san
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(dns, want);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / (24 * 3600);
        assert!(
            (365..=366).contains(&days),
            "{service}-tls valid {days} days"
        );
    }

    // The cleaner's certificate is accepted by a rustls server requiring client
    // certificates of the CA, and ipamd sees CN danm-cleaner.
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&ca_pem), provider())
            .build()
            .unwrap();
    let secret = secrets.get("danm-cleaner-tls").await.unwrap();
    let cert_der = der(&text(&secret, "tls.crt"));
    clients
        .verify_client_cert(&cert_der, &[], UnixTime::now())
        .expect("the cleaner's certificate is a client certificate of the CA");
    let cert = parse(&cert_der);
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "danm-cleaner");
    let usage = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(usage.client_auth && !usage.server_auth);

    let configmap = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("danm-ca")
        .await
        .unwrap();
    assert_eq!(configmap.data.unwrap()["ca.crt"], ca_pem);

    let bundle = Some(ByteString(ca_pem.clone().into_bytes()));
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(webhook_configuration)
        .await
        .unwrap();
    for webhook in mutating.webhooks.unwrap() {
        assert_eq!(webhook.client_config.ca_bundle, bundle, "mutating caBundle");
    }
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(webhook_configuration)
        .await
        .unwrap();
    for webhook in validating.webhooks.unwrap() {
        assert_eq!(
            webhook.client_config.ca_bundle, bundle,
            "validating caBundle"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suites_tls_material_is_created_once_and_repaired_alone() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("certs").await;
    let config = format!("danm-certs-{ns}");
    create_webhook_configurations(&client, &config).await;

    // First run, through the binary as the Job runs it.
    let first = danm_certs(
        plane,
        &[
            "--namespace",
            &ns,
            "--webhook-configuration",
            &config,
            "--require-webhook-configurations",
        ],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_material(&client, &ns, &config).await;

    // A second run writes nothing.
    let before = versions(&client, &ns, &config).await;
    let second = danm_certs(
        plane,
        &["--namespace", &ns, "--webhook-configuration", &config],
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(versions(&client, &ns, &config).await, before);

    // A deleted Secret is created again, and nothing else is written.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .delete("danm-ipamd-tls", &DeleteParams::default())
        .await
        .unwrap();
    let report = certs::run(client.clone(), &options(&ns, &config))
        .await
        .unwrap();
    assert_eq!(
        changes(&report),
        BTreeMap::from([(format!("Secret {ns}/danm-ipamd-tls"), Action::Created)])
    );
    let after = versions(&client, &ns, &config).await;
    for (object, version) in &before {
        if object != "Secret danm-ipamd-tls" {
            assert_eq!(&after[object], version, "{object} untouched");
        }
    }
    assert_material(&client, &ns, &config).await;

    // A certificate expiring within --renew-before is re-issued, alone.
    let ca_secret = secrets.get("danm-ca").await.unwrap();
    let ca = Ca::from_pem(
        &text(&ca_secret, "ca.crt"),
        &text(&ca_secret, "ca.key"),
        "danm-ca",
    )
    .unwrap();
    let webhook_leaf = Leaf::server("danm-webhook-tls", "danm-webhook", &ns);
    let short = ca
        .issue(&webhook_leaf, Duration::from_secs(7 * 24 * 3600))
        .unwrap();
    let mut secret = secrets.get("danm-webhook-tls").await.unwrap();
    let data = secret.data.as_mut().unwrap();
    data.insert("tls.crt".into(), ByteString(short.cert_pem.into_bytes()));
    data.insert("tls.key".into(), ByteString(short.key_pem.into_bytes()));
    secrets
        .replace("danm-webhook-tls", &PostParams::default(), &secret)
        .await
        .unwrap();
    let before = versions(&client, &ns, &config).await;
    let report = certs::run(client.clone(), &options(&ns, &config))
        .await
        .unwrap();
    let changed = changes(&report);
    assert_eq!(changed.len(), 1, "{changed:?}");
    match &changed[&format!("Secret {ns}/danm-webhook-tls")] {
        Action::Updated(why) => assert!(why.contains("expires"), "{why}"),
        other => panic!("{other:?}"),
    }
    let after = versions(&client, &ns, &config).await;
    for (object, version) in &before {
        if object != "Secret danm-webhook-tls" {
            assert_eq!(&after[object], version, "{object} untouched");
        }
    }
    assert_material(&client, &ns, &config).await;

    // A certificate of another CA is re-issued by ours.
    let other = Ca::generate(certs::CA_VALIDITY).unwrap();
    let foreign = other
        .issue(
            &Leaf::client("danm-cleaner-tls", "danm-cleaner"),
            certs::LEAF_VALIDITY,
        )
        .unwrap();
    let mut secret = secrets.get("danm-cleaner-tls").await.unwrap();
    let data = secret.data.as_mut().unwrap();
    data.insert("tls.crt".into(), ByteString(foreign.cert_pem.into_bytes()));
    data.insert("tls.key".into(), ByteString(foreign.key_pem.into_bytes()));
    secrets
        .replace("danm-cleaner-tls", &PostParams::default(), &secret)
        .await
        .unwrap();
    let report = certs::run(client.clone(), &options(&ns, &config))
        .await
        .unwrap();
    let changed = changes(&report);
    assert_eq!(changed.len(), 1, "{changed:?}");
    match &changed[&format!("Secret {ns}/danm-cleaner-tls")] {
        Action::Updated(why) => assert!(why.contains("not signed by the current CA"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_material(&client, &ns, &config).await;

    // And a last run finds nothing to do.
    let report = certs::run(client.clone(), &options(&ns, &config))
        .await
        .unwrap();
    assert!(!report.changed(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webhook_configuration_is_skipped_unless_required() {
    let plane = ControlPlane::shared().await;
    let ns = plane.namespace("certs-required").await;
    let missing = format!("danm-certs-missing-{ns}");

    let skipped = danm_certs(
        plane,
        &["--namespace", &ns, "--webhook-configuration", &missing],
    );
    let logs = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{logs}");
    assert!(
        logs.contains(&format!("MutatingWebhookConfiguration {missing}")),
        "the skip names the object: {logs}"
    );

    let required = danm_certs(
        plane,
        &[
            "--namespace",
            &ns,
            "--webhook-configuration",
            &missing,
            "--require-webhook-configurations",
        ],
    );
    let logs = String::from_utf8_lossy(&required.stderr);
    assert_eq!(required.status.code(), Some(1), "{logs}");
    assert!(
        logs.contains(&format!(
            "MutatingWebhookConfiguration {missing} does not exist"
        )),
        "the error names the object: {logs}"
    );
}

/// A next CA whose publication time was lost (the annotation edited away) gets it back
/// on the next run, set to that run's time, and keeps it: without it, every run would
/// restart the overlap and the next CA would never sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_ca_that_lost_its_publication_time_gets_it_back_once() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = plane.namespace("certs-published").await;
    let config = format!("danm-certs-{ns}");
    create_webhook_configurations(&client, &config).await;
    const DAY: u64 = 24 * 3600;
    // A CA of ten days, renewed fifteen days before its end: the second run publishes
    // the next one.
    let options = Options {
        renew_before: Duration::from_secs(DAY),
        rotation: certs::RotationPolicy {
            ca_validity: Duration::from_secs(10 * DAY),
            renew_before: Duration::from_secs(15 * DAY),
            overlap: Duration::from_secs(DAY),
        },
        ..options(&ns, &config)
    };
    certs::run(client.clone(), &options).await.unwrap();
    certs::run(client.clone(), &options).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let published = |secret: &Secret| secret.annotations().get(certs::NEXT_PUBLISHED).cloned();
    let mut secret = secrets.get(certs::CA_SECRET).await.unwrap();
    assert!(
        keys(&secret).contains(&certs::NEXT_CERT_KEY),
        "{:?}",
        keys(&secret)
    );
    assert!(published(&secret).is_some());

    secret.annotations_mut().remove(certs::NEXT_PUBLISHED);
    secrets
        .replace(certs::CA_SECRET, &PostParams::default(), &secret)
        .await
        .unwrap();
    let report = certs::run(client.clone(), &options).await.unwrap();
    match &changes(&report)[&format!("Secret {ns}/{}", certs::CA_SECRET)] {
        Action::Updated(why) => assert!(why.contains("publication time"), "{why}"),
        other => panic!("{other:?}"),
    }
    let restored = published(&secrets.get(certs::CA_SECRET).await.unwrap())
        .expect("the publication time is written back");
    // Kept from then on: the next run writes nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = certs::run(client.clone(), &options).await.unwrap();
    assert!(!report.changed(), "{report:?}");
    assert_eq!(
        published(&secrets.get(certs::CA_SECRET).await.unwrap()),
        Some(restored)
    );
}
