//! Who a test acts as: kubeconfigs and clients of a user (a client certificate signed by the
//! cluster CA) or of a ServiceAccount (a token from the TokenRequest API), and the
//! certificates a test's servers present.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::{CertifiedKey, ControlPlane, Error};

impl ControlPlane {
    /// A unique file name in the control plane's folder.
    pub(super) fn unique_path(&self, stem: &str, extension: &str) -> PathBuf {
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}-{n}.{extension}"))
    }

    /// A kubeconfig file of `user` in `groups` (a client certificate signed by the CA).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        self.user_credentials(user, groups).0
    }

    /// A kubeconfig file of `user` in `groups`, as [`ControlPlane::user_kubeconfig`], and
    /// the certificate and key it holds (for a kubelet, which also keeps them in a file).
    pub fn user_credentials(&self, user: &str, groups: &[&str]) -> (PathBuf, CertifiedKey) {
        let cert = self
            .pki
            .client_cert(user, groups)
            .expect("a client certificate");
        let path = self.unique_path("user", "kubeconfig");
        write(
            &path,
            &kubeconfig_text(
                &self.url,
                Some(&self.pki.ca_pem),
                Credentials::Certificate(&cert),
            ),
        )
        .expect("the control plane's folder is writable");
        (path, cert)
    }

    /// A client of `user` in `groups`.
    pub async fn user_client(&self, user: &str, groups: &[&str]) -> kube::Client {
        client_from_file(&self.user_kubeconfig(user, groups))
            .await
            .expect("a generated kubeconfig is valid")
    }

    /// A kubeconfig file of the ServiceAccount `namespace/name` (which must exist), with a
    /// one-hour token from the TokenRequest API: what a pod of that ServiceAccount gets.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("a token for ServiceAccount {namespace}/{name}: {e}"))
            .status
            .expect("a TokenRequest answer has a status")
            .token;
        let path = self.unique_path("serviceaccount", "kubeconfig");
        write(
            &path,
            &kubeconfig_text(
                &self.url,
                Some(&self.pki.ca_pem),
                Credentials::Token(&token),
            ),
        )
        .expect("the control plane's folder is writable");
        path
    }

    /// A client of the ServiceAccount `namespace/name` (which must exist).
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> kube::Client {
        client_from_file(&self.service_account_kubeconfig(namespace, name).await)
            .await
            .expect("a generated kubeconfig is valid")
    }

    /// A client certificate of `common_name` signed by the control plane's CA: the API
    /// server's own to its webhooks is [`WEBHOOK_CLIENT`]; a test plays the API server (or
    /// an impostor) with one.
    pub fn client_cert(&self, common_name: &str) -> CertifiedKey {
        self.pki
            .client_cert(common_name, &[])
            .expect("a client certificate")
    }

    /// A serving certificate signed by the control plane's CA, for a server the API
    /// server calls (an admission webhook on `names`).
    pub fn serving_cert(&self, names: &[&str]) -> CertifiedKey {
        self.pki.serving_cert(names).expect("a serving certificate")
    }
}

/// How a kubeconfig's user authenticates.
pub(super) enum Credentials<'a> {
    Certificate(&'a CertifiedKey),
    Token(&'a str),
    None,
}

pub(super) fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A kubeconfig (JSON, which is YAML) for `server`.
pub(super) fn kubeconfig_text(
    server: &str,
    ca_pem: Option<&str>,
    credentials: Credentials<'_>,
) -> String {
    let mut cluster = json!({ "server": server });
    if let Some(ca) = ca_pem {
        cluster["certificate-authority-data"] = json!(b64(ca));
    }
    let user = match credentials {
        Credentials::Certificate(c) => json!({
            "client-certificate-data": b64(&c.cert_pem),
            "client-key-data": b64(&c.key_pem),
        }),
        Credentials::Token(t) => json!({ "token": t }),
        Credentials::None => json!({}),
    };
    serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "danm-testkit", "cluster": cluster }],
        "users": [{ "name": "user", "user": user }],
        "contexts": [{
            "name": "danm-testkit",
            "context": { "cluster": "danm-testkit", "user": "user", "namespace": "default" },
        }],
        "current-context": "danm-testkit",
    }))
    .expect("a kubeconfig serializes")
}

/// A kubeconfig with no credentials for a plain-HTTP server (the fault proxy).
pub fn plain_kubeconfig(server: &str) -> String {
    kubeconfig_text(server, None, Credentials::None)
}

pub(super) fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::Io(path.display().to_string(), e))
}

/// A client from a kubeconfig file, as our binaries build theirs from `KUBECONFIG`.
pub async fn client_from_file(path: &Path) -> Result<kube::Client, Error> {
    let config = config_from_file(path).await?;
    kube::Client::try_from(config).map_err(|e| Error::Kube(path.display().to_string(), e))
}

/// A client configuration from a kubeconfig file.
pub async fn config_from_file(path: &Path) -> Result<kube::Config, Error> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
}
