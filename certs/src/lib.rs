//! `danm-certs`: the suite's PKI. The TLS material of the suite is created at install time
//! by the `danm-certs` Job, renewed by its CronJob (or `--every`), and kept idempotent:
//! running it again changes nothing unless something needs it.
//!
//! In one namespace:
//!
//! * Secret [`CA_SECRET`] (Opaque): the suite's CA (`ca.crt`, `ca.key`), and while it is
//!   rotated ([`rotation`]) the next CA (`next.crt`, `next.key`) or the previous one
//!   (`previous.crt`), with the trust bundle of them all (`ca-bundle.crt`). A CA Secret
//!   that cannot be used is an error, never overwritten: nodes and clients trust it.
//! * One `kubernetes.io/tls` Secret per [`Leaf`] (`tls.crt`, `tls.key`, `ca.crt`: the trust
//!   bundle): the serving certificates of the webhook and ipamd, and the cleaner's client
//!   certificate (ipamd authorizes it by its CN). Each is issued when missing and
//!   re-issued when a key is missing, it is not signed by the CA that signs now, its names
//!   are not the wanted ones, its key does not match, or it expires within
//!   `renew_before`; a Secret whose only fault is an old bundle gets the new one.
//! * ConfigMap [`CA_CONFIGMAP`] (`ca.crt`: the trust bundle), for the CNI installer to copy
//!   onto the nodes.
//! * `caBundle` of every webhook of the Mutating- and ValidatingWebhookConfiguration of
//!   the given name (the trust bundle), so that the API server trusts the webhook's
//!   certificate.
//!
//! Nothing here ever logs key material: logs and errors name objects and reasons only.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use time::OffsetDateTime;

/// The Secret holding the CA and its key.
pub const CA_SECRET: &str = "danm-ca";
/// The ConfigMap holding the public CA certificate.
pub const CA_CONFIGMAP: &str = "danm-ca";
/// Key of a certificate authority's certificate (in the CA Secret, the ConfigMap and every
/// TLS Secret).
pub const CA_CERT_KEY: &str = "ca.crt";
/// Key of the CA's private key in the CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";
/// Key of the next CA's certificate in the CA Secret (during a rotation).
pub const NEXT_CERT_KEY: &str = "next.crt";
/// Key of the next CA's private key in the CA Secret.
pub const NEXT_KEY_KEY: &str = "next.key";
/// Key of the previous CA's certificate in the CA Secret (after a switch).
pub const PREVIOUS_CERT_KEY: &str = "previous.crt";
/// Key of the trust bundle (every CA trusted now) in the CA Secret.
pub const BUNDLE_KEY: &str = "ca-bundle.crt";
/// Annotation of the CA Secret: when the next CA was published (Unix seconds).
pub const NEXT_PUBLISHED: &str = "danm.io/next-ca-published";
/// Annotation of the CA Secret: until when the previous CA is trusted (Unix seconds).
pub const PREVIOUS_UNTIL: &str = "danm.io/previous-ca-trusted-until";
/// Key of a TLS Secret's certificate.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// Key of a TLS Secret's private key.
pub const TLS_KEY_KEY: &str = "tls.key";
/// The Secret type the kubelet and every TLS consumer expect.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issued certificate is valid (capped by the CA's own end).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back `notBefore` is set, so that a node whose clock lags a little still accepts
/// a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Field manager of every write, and the `app.kubernetes.io/managed-by` label of what is
/// created here.
const MANAGER: &str = "danm-certs";

/// Why the TLS material could not be read, issued or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A request to the API server failed.
    #[error("cannot {action} {object}")]
    Kube {
        /// `read`, `create`, `replace` or `patch`.
        action: &'static str,
        /// The object, e.g. `Secret danm-system/danm-ca`.
        object: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// An existing object holds something that cannot be used and must not be overwritten.
    #[error("{object}: {reason}")]
    Unusable {
        /// The object.
        object: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
    /// A key or certificate could not be generated.
    #[error("cannot generate {what}")]
    Generate {
        /// What, e.g. `the certificate of Secret danm-system/danm-ipamd-tls`.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A webhook configuration to patch does not exist, and it is required.
    #[error("{object} does not exist (--require-webhook-configurations)")]
    MissingWebhookConfiguration {
        /// The object.
        object: String,
    },
}

/// What to create and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace of the Secrets and the ConfigMap (and of the Services the serving
    /// certificates name).
    pub namespace: String,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose `caBundle`s are set.
    pub webhook_configuration: String,
    /// A certificate expiring within this is re-issued.
    pub renew_before: Duration,
    /// How long an issued certificate is valid (capped by its CA's own end).
    pub leaf_validity: Duration,
    /// When and how the CA is rotated.
    pub rotation: RotationPolicy,
    /// Fail when a webhook configuration does not exist (instead of skipping it).
    pub require_webhook_configurations: bool,
}

impl Options {
    /// The defaults of `danm-certs` for `namespace`.
    pub fn new(namespace: &str, webhook_configuration: &str) -> Options {
        Options {
            namespace: namespace.to_owned(),
            webhook_configuration: webhook_configuration.to_owned(),
            renew_before: RENEW_BEFORE,
            leaf_validity: LEAF_VALIDITY,
            rotation: RotationPolicy {
                ca_validity: CA_VALIDITY,
                renew_before: CA_RENEW_BEFORE,
                overlap: CA_OVERLAP,
            },
            require_webhook_configurations: false,
        }
    }
}

/// By default a certificate is re-issued when it expires within 30 days.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// By default a next CA is published a year before the current one ends.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);
/// By default a next CA is trusted a day before it signs, and a previous one a day after.
pub const CA_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// What was done to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and was rewritten, for the reason given.
    Updated(String),
    /// It was already right.
    Unchanged,
    /// It was not touched, for the reason given (a webhook configuration that does not
    /// exist).
    Skipped(String),
}

/// One object and what was done to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The object, e.g. `Secret danm-system/danm-ca`.
    pub object: String,
    /// What was done.
    pub action: Action,
}

/// Everything [`run`] did, in order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per object.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Whether any object was created or rewritten.
    pub fn changed(&self) -> bool {
        self.outcomes
            .iter()
            .any(|o| matches!(o.action, Action::Created | Action::Updated(_)))
    }

    /// One line: how many objects were created, updated, unchanged and skipped.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Action) -> bool| self.outcomes.iter().filter(|o| f(&o.action)).count();
        format!(
            "{} created, {} updated, {} unchanged, {} skipped",
            count(|a| matches!(a, Action::Created)),
            count(|a| matches!(a, Action::Updated(_))),
            count(|a| matches!(a, Action::Unchanged)),
            count(|a| matches!(a, Action::Skipped(_))),
        )
    }

    fn record(&mut self, object: String, action: Action) {
        match &action {
            Action::Created => tracing::info!(%object, "created"),
            Action::Updated(why) => tracing::info!(%object, reason = %why, "updated"),
            Action::Unchanged => tracing::info!(%object, "unchanged"),
            Action::Skipped(why) => tracing::warn!(%object, reason = %why, "skipped"),
        }
        self.outcomes.push(Outcome { object, action });
    }
}

mod issue;
pub mod rotation;
pub use issue::{Ca, Issued, Leaf, Renewal, Usage, leaves};
pub use rotation::{Rotation, RotationPolicy};

/// Creates or fixes everything the module overview lists, in that order.
pub async fn run(client: kube::Client, options: &Options) -> Result<Report, CertsError> {
    let mut report = Report::default();
    let ns = &options.namespace;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);

    let rotation = ensure_ca(&secrets, ns, options, &mut report).await?;
    let bundle = rotation.bundle();
    for leaf in leaves(ns) {
        ensure_leaf(
            &secrets,
            ns,
            &rotation.current,
            &bundle,
            &leaf,
            options,
            &mut report,
        )
        .await?;
    }
    ensure_ca_configmap(
        &Api::namespaced(client.clone(), ns),
        ns,
        &bundle,
        &mut report,
    )
    .await?;

    let name = &options.webhook_configuration;
    let require = options.require_webhook_configurations;
    patch_ca_bundles::<MutatingWebhookConfiguration>(&client, name, &bundle, require, &mut report)
        .await?;
    patch_ca_bundles::<ValidatingWebhookConfiguration>(
        &client,
        name,
        &bundle,
        require,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// `Kind namespace/name`, or `Kind name` for a cluster-scoped object.
fn object(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn kube_error(action: &'static str, object: &str) -> impl FnOnce(kube::Error) -> CertsError {
    let object = object.to_owned();
    move |source| CertsError::Kube {
        action,
        object,
        source,
    }
}

fn metadata(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    }
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

/// The CAs of Secret [`CA_SECRET`] (generated and stored first if the Secret is missing),
/// with the rotation moved on to now and written back when it moved.
async fn ensure_ca(
    secrets: &Api<Secret>,
    ns: &str,
    options: &Options,
    report: &mut Report,
) -> Result<Rotation, CertsError> {
    let name = object("Secret", Some(ns), CA_SECRET);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let existing = secrets
        .get_opt(CA_SECRET)
        .await
        .map_err(kube_error("read", &name))?;
    let Some(mut secret) = existing else {
        let rotation = Rotation {
            current: Ca::generate(options.rotation.ca_validity)?,
            next: None,
            previous: None,
        };
        let mut secret = Secret {
            metadata: metadata(CA_SECRET, ns),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        store_rotation(&mut secret, &rotation);
        return match secrets.create(&post_params(), &secret).await {
            Ok(_) => {
                report.record(name, Action::Created);
                Ok(rotation)
            }
            // Another run created it between our read and our create: use theirs, or the
            // two runs would hand out certificates of two different CAs.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let theirs = secrets
                    .get(CA_SECRET)
                    .await
                    .map_err(kube_error("read", &name))?;
                let rotation = rotation_of(&theirs, &name)?;
                report.record(name, Action::Unchanged);
                Ok(rotation)
            }
            Err(e) => Err(kube_error("create", &name)(e)),
        };
    };
    let mut rotation = rotation_of(&secret, &name)?;
    let mut changed = rotation.advance(now, &options.rotation)?;
    // A next CA whose publication time was lost (an edit, a restore) counts as published
    // now: written down, or every run would restart its overlap and it would never sign.
    if rotation.next.is_some() && annotation_time(&secret, NEXT_PUBLISHED).is_none() {
        changed.push(format!(
            "the next CA's publication time ({NEXT_PUBLISHED}) was missing: its overlap \
             starts now"
        ));
    }
    if changed.is_empty() && bundle_stored(&secret) == Some(rotation.bundle()) {
        report.record(name, Action::Unchanged);
        return Ok(rotation);
    }
    store_rotation(&mut secret, &rotation);
    // The resourceVersion read above rides along: a concurrent run makes this fail (and
    // the next run starts from what it wrote) rather than two CAs being made.
    secrets
        .replace(CA_SECRET, &post_params(), &secret)
        .await
        .map_err(kube_error("replace", &name))?;
    let why = if changed.is_empty() {
        "the trust bundle was written out".to_owned()
    } else {
        changed.join("; ")
    };
    report.record(name, Action::Updated(why));
    Ok(rotation)
}

/// The time (Unix seconds) the Secret's annotation `key` holds.
fn annotation_time(secret: &Secret, key: &str) -> Option<i64> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i64>().ok())
}

fn bundle_stored(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(BUNDLE_KEY)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// Writes the rotation into the CA Secret: the keys and the two annotations.
fn store_rotation(secret: &mut Secret, rotation: &Rotation) {
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    for key in [NEXT_CERT_KEY, NEXT_KEY_KEY, PREVIOUS_CERT_KEY] {
        data.remove(key);
    }
    data.insert(CA_CERT_KEY.to_owned(), bytes(rotation.current.cert_pem()));
    data.insert(CA_KEY_KEY.to_owned(), bytes(rotation.current.key_pem()));
    data.insert(BUNDLE_KEY.to_owned(), bytes(&rotation.bundle()));
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.remove(NEXT_PUBLISHED);
    annotations.remove(PREVIOUS_UNTIL);
    if let Some((next, published)) = &rotation.next {
        data.insert(NEXT_CERT_KEY.to_owned(), bytes(next.cert_pem()));
        data.insert(NEXT_KEY_KEY.to_owned(), bytes(next.key_pem()));
        annotations.insert(NEXT_PUBLISHED.to_owned(), published.to_string());
    }
    if let Some((previous, until)) = &rotation.previous {
        data.insert(PREVIOUS_CERT_KEY.to_owned(), bytes(previous));
        annotations.insert(PREVIOUS_UNTIL.to_owned(), until.to_string());
    }
}

/// The rotation a CA Secret holds.
fn rotation_of(secret: &Secret, name: &str) -> Result<Rotation, CertsError> {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
    };
    let required = |key: &str| {
        text(key).ok_or_else(|| CertsError::Unusable {
            object: name.to_owned(),
            reason: format!(
                "{key} is missing or not text; fix it, or delete the Secret to have a new \
                 CA generated"
            ),
        })
    };
    let time = |annotation: &str| annotation_time(secret, annotation);
    let current = Ca::from_pem(required(CA_CERT_KEY)?, required(CA_KEY_KEY)?, name)?;
    let next = match (text(NEXT_CERT_KEY), text(NEXT_KEY_KEY)) {
        (Some(cert), Some(key)) => Some((
            Ca::from_pem(cert, key, name)?,
            // A next CA whose publication time is lost counts as published now: its
            // overlap starts again, never shorter.
            time(NEXT_PUBLISHED).unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp()),
        )),
        _ => None,
    };
    let previous = text(PREVIOUS_CERT_KEY)
        .zip(time(PREVIOUS_UNTIL))
        .map(|(pem, until)| (pem.to_owned(), until));
    Ok(Rotation {
        current,
        next,
        previous,
    })
}

/// Issues `leaf` into its Secret if the Secret is missing or its certificate needs it, and
/// keeps its `ca.crt` the trust `bundle`.
async fn ensure_leaf(
    secrets: &Api<Secret>,
    ns: &str,
    ca: &Ca,
    bundle: &str,
    leaf: &Leaf,
    options: &Options,
    report: &mut Report,
) -> Result<(), CertsError> {
    let name = object("Secret", Some(ns), &leaf.secret);
    let existing = secrets
        .get_opt(&leaf.secret)
        .await
        .map_err(kube_error("read", &name))?;
    let fresh = |issued: Issued| {
        [
            (TLS_CERT_KEY.to_owned(), bytes(&issued.cert_pem)),
            (TLS_KEY_KEY.to_owned(), bytes(&issued.key_pem)),
            (CA_CERT_KEY.to_owned(), bytes(bundle)),
        ]
    };
    let Some(mut secret) = existing else {
        let secret = Secret {
            metadata: metadata(&leaf.secret, ns),
            type_: Some(TLS_SECRET_TYPE.into()),
            data: Some(fresh(ca.issue(leaf, options.leaf_validity)?).into()),
            ..Secret::default()
        };
        secrets
            .create(&post_params(), &secret)
            .await
            .map_err(kube_error("create", &name))?;
        report.record(name, Action::Created);
        return Ok(());
    };
    // The type of a Secret cannot be changed in place, and replacing someone's Secret of
    // another kind by deleting it is not this tool's call to make.
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != TLS_SECRET_TYPE {
        return Err(CertsError::Unusable {
            object: name,
            reason: format!(
                "it is of type {type_}, not {TLS_SECRET_TYPE}; delete it to have it created"
            ),
        });
    }
    let data = secret.data.get_or_insert_with(BTreeMap::new);
    // Other keys someone added are kept; ours are replaced. The resourceVersion read above
    // rides along, so a concurrent writer makes this fail instead of being overwritten.
    let reason = match ca.renewal(leaf, data, options.renew_before, bundle) {
        None => {
            report.record(name, Action::Unchanged);
            return Ok(());
        }
        Some(Renewal::Bundle) => {
            data.insert(CA_CERT_KEY.to_owned(), bytes(bundle));
            format!("{CA_CERT_KEY} is now the current trust bundle")
        }
        Some(Renewal::Reissue(reason)) => {
            data.extend(fresh(ca.issue(leaf, options.leaf_validity)?));
            reason
        }
    };
    secrets
        .replace(&leaf.secret, &post_params(), &secret)
        .await
        .map_err(kube_error("replace", &name))?;
    report.record(name, Action::Updated(reason));
    Ok(())
}

/// ConfigMap [`CA_CONFIGMAP`] with the trust bundle.
async fn ensure_ca_configmap(
    configmaps: &Api<ConfigMap>,
    ns: &str,
    bundle: &str,
    report: &mut Report,
) -> Result<(), CertsError> {
    let name = object("ConfigMap", Some(ns), CA_CONFIGMAP);
    let existing = configmaps
        .get_opt(CA_CONFIGMAP)
        .await
        .map_err(kube_error("read", &name))?;
    let Some(mut configmap) = existing else {
        let configmap = ConfigMap {
            metadata: metadata(CA_CONFIGMAP, ns),
            data: Some(BTreeMap::from([(
                CA_CERT_KEY.to_owned(),
                bundle.to_owned(),
            )])),
            ..ConfigMap::default()
        };
        configmaps
            .create(&post_params(), &configmap)
            .await
            .map_err(kube_error("create", &name))?;
        report.record(name, Action::Created);
        return Ok(());
    };
    let data = configmap.data.get_or_insert_with(BTreeMap::new);
    if data.get(CA_CERT_KEY).map(|s| s.trim()) == Some(bundle.trim()) {
        report.record(name, Action::Unchanged);
        return Ok(());
    }
    data.insert(CA_CERT_KEY.to_owned(), bundle.to_owned());
    configmaps
        .replace(CA_CONFIGMAP, &post_params(), &configmap)
        .await
        .map_err(kube_error("replace", &name))?;
    report.record(
        name,
        Action::Updated(format!("{CA_CERT_KEY} was not the current trust bundle")),
    );
    Ok(())
}

/// The webhooks of a Mutating- or ValidatingWebhookConfiguration, as far as `caBundle` goes.
trait WebhookConfiguration {
    /// Each webhook's name and `caBundle` (the PEM bytes), in order.
    fn ca_bundles(&self) -> Vec<(&str, Option<&ByteString>)>;
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    fn ca_bundles(&self) -> Vec<(&str, Option<&ByteString>)> {
        let webhooks = self.webhooks.iter().flatten();
        webhooks
            .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()))
            .collect()
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    fn ca_bundles(&self) -> Vec<(&str, Option<&ByteString>)> {
        let webhooks = self.webhooks.iter().flatten();
        webhooks
            .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()))
            .collect()
    }
}

/// Sets `caBundle` to `ca_pem` on every webhook of configuration `name` of kind `K` whose
/// bundle differs, with a JSON patch that first tests each webhook's name at its index: if
/// the list changed since it was read, the patch fails instead of hitting the wrong one.
async fn patch_ca_bundles<K>(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
    require: bool,
    report: &mut Report,
) -> Result<(), CertsError>
where
    K: WebhookConfiguration
        + kube::Resource<DynamicType = ()>
        + Clone
        + fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::all(client.clone());
    let object = object(&K::kind(&()), None, name);
    let Some(config) = api
        .get_opt(name)
        .await
        .map_err(kube_error("read", &object))?
    else {
        if require {
            return Err(CertsError::MissingWebhookConfiguration { object });
        }
        report.record(object, Action::Skipped("it does not exist".into()));
        return Ok(());
    };
    // The API takes caBundle as base64 of the PEM; reads give the PEM bytes back.
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut ops = Vec::new();
    let mut patched = Vec::new();
    for (i, (webhook, current)) in config.ca_bundles().into_iter().enumerate() {
        if current.is_some_and(|b| b.0 == ca_pem.as_bytes()) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook}));
        ops.push(json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": bundle,
        }));
        patched.push(webhook.to_owned());
    }
    if ops.is_empty() {
        report.record(object, Action::Unchanged);
        return Ok(());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(ops.into()).expect("the operations are valid JSON patch");
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Json::<()>(patch))
        .await
        .map_err(kube_error("patch", &object))?;
    report.record(
        object,
        Action::Updated(format!("caBundle set on {}", patched.join(", "))),
    );
    Ok(())
}

/// A duration as `--renew-before` takes it, where a day is 24 hours: `30d`, `2w`, `720h`,
/// `90m`.
pub fn parse_renew_before(text: &str) -> Result<Duration, String> {
    let span: jiff::Span = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 30d or 720h: {e}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{text:?} has no fixed length (use weeks or less): {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} is negative"))
}
