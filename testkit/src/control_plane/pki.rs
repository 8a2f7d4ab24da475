//! The control plane's certificates, generated with rcgen at every start: a CA, the API
//! server's serving certificate, client certificates for any user and groups (the admin is
//! `system:masters`), and the ServiceAccount token signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::Error;

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// The CA and the files the control plane's processes read.
pub(crate) struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) ca_pem: String,
    pub(crate) ca_file: PathBuf,
    pub(crate) serving_cert_file: PathBuf,
    pub(crate) serving_key_file: PathBuf,
    pub(crate) sa_key_file: PathBuf,
    pub(crate) sa_pub_file: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Certificate(format!("{what}: {e}"))
}

impl Pki {
    /// Generates every key and certificate and writes the files into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Pki, Error> {
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("CA"))?;
        ca.distinguished_name
            .push(DnType::CommonName, "danm-testkit-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(rcgen_error("CA key"))?;
        let ca_pem = ca.self_signed(&ca_key).map_err(rcgen_error("CA"))?.pem();
        let issuer = Issuer::new(ca, ca_key);

        let mut serving = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
        ])
        .map_err(rcgen_error("serving certificate"))?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .subject_alt_names
            .push(SanType::IpAddress(super::SERVICE_IP.into()));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate().map_err(rcgen_error("serving key"))?;
        let serving_pem = serving
            .signed_by(&serving_key, &issuer)
            .map_err(rcgen_error("serving certificate"))?
            .pem();

        let sa_key = KeyPair::generate().map_err(rcgen_error("service account key"))?;
        let pki = Pki {
            issuer,
            ca_pem: ca_pem.clone(),
            ca_file: dir.join("ca.crt"),
            serving_cert_file: dir.join("apiserver.crt"),
            serving_key_file: dir.join("apiserver.key"),
            sa_key_file: dir.join("sa.key"),
            sa_pub_file: dir.join("sa.pub"),
        };
        for (path, text) in [
            (&pki.ca_file, ca_pem),
            (&pki.serving_cert_file, serving_pem),
            (&pki.serving_key_file, serving_key.serialize_pem()),
            (&pki.sa_key_file, sa_key.serialize_pem()),
            (&pki.sa_pub_file, sa_key.public_key_pem()),
        ] {
            std::fs::write(path, text).map_err(|e| Error::Io(path.display().to_string(), e))?;
        }
        Ok(pki)
    }

    /// A client certificate for `user` in `groups`, signed by the control plane's CA (the
    /// API server takes the common name as the user and the organizations as the groups).
    pub(crate) fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertifiedKey, Error> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("client"))?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params, "client certificate")
    }

    /// A new key and its certificate of `params`, signed by the CA.
    fn sign(&self, params: CertificateParams, what: &str) -> Result<CertifiedKey, Error> {
        let key = KeyPair::generate().map_err(rcgen_error(what))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error(what))?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A serving certificate for `names` (DNS names or IP addresses), signed by the CA: for
    /// servers the API server calls (admission webhooks).
    pub(crate) fn serving_cert(&self, names: &[&str]) -> Result<CertifiedKey, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_error("serving certificate"))?;
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    (*name)
                        .try_into()
                        .map_err(rcgen_error("serving certificate name"))?,
                ),
            });
        }
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "serving certificate")
    }
}
