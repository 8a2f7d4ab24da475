//! Issuing: the suite's CA, the certificates it signs, and the checks that decide whether
//! a stored certificate is still the one wanted (signer, names, key, expiry). No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{BACKDATE, CA_CERT_KEY, CA_KEY_KEY, CertsError, TLS_CERT_KEY, TLS_KEY_KEY};

/// What a certificate is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server certificate (serverAuth) for these DNS names; the first is also its CN.
    Server {
        /// The names clients connect to.
        dns_names: Vec<String>,
    },
    /// A client certificate (clientAuth) with this subject CN.
    Client {
        /// The identity servers see.
        common_name: String,
    },
}

/// A certificate of the suite and the Secret it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The `kubernetes.io/tls` Secret.
    pub secret: String,
    /// What it is for.
    pub usage: Usage,
}

impl Leaf {
    /// The serving certificate of Service `service` in `namespace`, under every name a pod
    /// may use to reach it.
    pub fn server(secret: &str, service: &str, namespace: &str) -> Leaf {
        Leaf {
            secret: secret.to_owned(),
            usage: Usage::Server {
                dns_names: vec![
                    service.to_owned(),
                    format!("{service}.{namespace}"),
                    format!("{service}.{namespace}.svc"),
                    format!("{service}.{namespace}.svc.cluster.local"),
                ],
            },
        }
    }

    /// A client certificate whose subject CN is `common_name`.
    pub fn client(secret: &str, common_name: &str) -> Leaf {
        Leaf {
            secret: secret.to_owned(),
            usage: Usage::Client {
                common_name: common_name.to_owned(),
            },
        }
    }

    fn common_name(&self) -> &str {
        match &self.usage {
            Usage::Server { dns_names } => dns_names.first().map_or("", String::as_str),
            Usage::Client { common_name } => common_name,
        }
    }
}

/// The certificates of the suite in `namespace`: the webhook's and ipamd's serving
/// certificates and the cleaner's client certificate.
pub fn leaves(namespace: &str) -> Vec<Leaf> {
    vec![
        Leaf::server("danm-webhook-tls", "danm-webhook", namespace),
        Leaf::server("danm-ipamd-tls", "danm-ipamd", namespace),
        Leaf::client("danm-cleaner-tls", "danm-cleaner"),
    ]
}

/// What a TLS Secret needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// A new certificate, for this reason.
    Reissue(String),
    /// Only the trust bundle in its `ca.crt` (a CA joined or left it).
    Bundle,
}

/// A newly issued certificate and its key (PEM).
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The suite's CA: its certificate and what signs with its key.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA, valid from now for `validity` ([`super::CA_VALIDITY`] by default). Its
    /// path length is 0: it signs leaves only.
    pub fn generate(validity: Duration) -> Result<Ca, CertsError> {
        Ca::generate_at(validity, OffsetDateTime::now_utc().unix_timestamp())
    }

    /// [`Ca::generate`] as of `now` (Unix seconds).
    pub fn generate_at(validity: Duration, now: i64) -> Result<Ca, CertsError> {
        let generate = |source| CertsError::Generate {
            what: "the CA".into(),
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "danm-ca");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "danm");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now =
            OffsetDateTime::from_unix_timestamp(now).unwrap_or_else(|_| OffsetDateTime::now_utc());
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.self_signed(&key).map_err(generate)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of `cert_pem` and `key_pem`, as stored in `object` (named in errors): it must
    /// be a CA certificate and the key must be its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str, object: &str) -> Result<Ca, CertsError> {
        let unusable = |reason: String| CertsError::Unusable {
            object: object.to_owned(),
            reason: format!(
                "{reason}; delete it to have a new CA generated (every certificate is then \
                 re-issued, and whatever trusts the old CA must be given the new one)"
            ),
        };
        let cert_der = pem_der(cert_pem)
            .ok_or_else(|| unusable(format!("{CA_CERT_KEY} holds no PEM certificate")))?;
        let cert = parse_der(&cert_der)
            .ok_or_else(|| unusable(format!("{CA_CERT_KEY} is not an X.509 certificate")))?;
        if !cert.is_ca() {
            return Err(unusable(format!("{CA_CERT_KEY} is not a CA certificate")));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| unusable(format!("{CA_KEY_KEY} is not a usable private key: {e}")))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(unusable(format!(
                "{CA_KEY_KEY} is not the key of {CA_CERT_KEY}"
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| unusable(format!("{CA_CERT_KEY} cannot sign certificates: {e}")))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate (PEM), what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PEM). Handle with care; never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA stops being valid (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.parsed().validity().not_after.timestamp()
    }

    fn parsed(&self) -> X509Certificate<'_> {
        parse_der(&self.cert_der).expect("the CA was parsed when it was loaded or made")
    }

    /// Issues `leaf` with a new key, valid from now for `validity` (but never past the
    /// CA's own end, so a leaf does not outlive what vouches for it).
    pub fn issue(&self, leaf: &Leaf, validity: Duration) -> Result<Issued, CertsError> {
        let generate = |source| CertsError::Generate {
            what: format!("the certificate of Secret {}", leaf.secret),
            source,
        };
        let dns_names = match &leaf.usage {
            Usage::Server { dns_names } => dns_names.clone(),
            Usage::Client { .. } => Vec::new(),
        };
        let mut params = CertificateParams::new(dns_names).map_err(generate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf.usage {
            Usage::Server { .. } => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client { .. } => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        let ca_end = OffsetDateTime::from_unix_timestamp(self.not_after()).unwrap_or(now);
        params.not_before = now - BACKDATE;
        params.not_after = (now + validity).min(ca_end);
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// What the TLS Secret holding `data` needs: a new certificate (this CA signs, and it
    /// is not one of its fitting and fresh ones), only the trust bundle `bundle` in its
    /// `ca.crt`, or nothing.
    pub fn renewal(
        &self,
        leaf: &Leaf,
        data: &BTreeMap<String, ByteString>,
        renew_before: Duration,
        bundle: &str,
    ) -> Option<Renewal> {
        if let Some(why) = self.renewal_reason(leaf, data, renew_before) {
            return Some(Renewal::Reissue(why));
        }
        let held = data
            .get(CA_CERT_KEY)
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .unwrap_or_default();
        (held.trim() != bundle.trim()).then_some(Renewal::Bundle)
    }

    /// Why the certificate in `data` (a TLS Secret's) must be re-issued, or `None` when it
    /// is fine as it is.
    pub fn renewal_reason(
        &self,
        leaf: &Leaf,
        data: &BTreeMap<String, ByteString>,
        renew_before: Duration,
    ) -> Option<String> {
        for key in [TLS_CERT_KEY, TLS_KEY_KEY] {
            if !data.contains_key(key) {
                return Some(format!("{key} is missing"));
            }
        }
        let text = |key: &str| std::str::from_utf8(&data[key].0).unwrap_or_default();
        let Some(der) = pem_der(text(TLS_CERT_KEY)) else {
            return Some(format!("{TLS_CERT_KEY} holds no PEM certificate"));
        };
        let Some(cert) = parse_der(&der) else {
            return Some(format!("{TLS_CERT_KEY} is not an X.509 certificate"));
        };
        let ca = self.parsed();
        if cert.issuer().as_raw() != ca.subject().as_raw()
            || cert.verify_signature(Some(ca.public_key())).is_err()
        {
            return Some("not signed by the current CA".into());
        }
        match KeyPair::from_pem(text(TLS_KEY_KEY)) {
            Ok(key)
                if key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref() => {}
            _ => return Some(format!("{TLS_KEY_KEY} is not the key of {TLS_CERT_KEY}")),
        }
        if let Some(why) = identity_mismatch(leaf, &cert) {
            return Some(why);
        }
        let not_after = &cert.validity().not_after;
        let left = not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        if left < i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX) {
            return Some(format!(
                "it expires at {not_after}, within the renewal window of {}s",
                renew_before.as_secs()
            ));
        }
        None
    }
}

/// How `cert` differs from what `leaf` wants (names, CN, extended key usage), if it does.
fn identity_mismatch(leaf: &Leaf, cert: &X509Certificate<'_>) -> Option<String> {
    let usages = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    match &leaf.usage {
        Usage::Server { dns_names } => {
            let mut have: Vec<&str> = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::DNSName(name) => Some(*name),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut want: Vec<&str> = dns_names.iter().map(String::as_str).collect();
            have.sort_unstable();
            want.sort_unstable();
            if have != want {
                return Some(format!("its DNS names are {have:?}, not {want:?}"));
            }
            if !usages.is_some_and(|u| u.server_auth) {
                return Some("it is not a server certificate (serverAuth)".into());
            }
        }
        Usage::Client { common_name } => {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok());
            if cn != Some(common_name.as_str()) {
                return Some(format!("its CN is {cn:?}, not {common_name:?}"));
            }
            if !usages.is_some_and(|u| u.client_auth) {
                return Some("it is not a client certificate (clientAuth)".into());
            }
        }
    }
    None
}

/// The DER of the first CERTIFICATE block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    (block.label == "CERTIFICATE").then_some(block.contents)
}

fn parse_der(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert)
}
