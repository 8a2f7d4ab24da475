//! Test certificates (rcgen) for the TLS tests of ipamd and the CNI plugins: a CA that
//! writes itself and the certificates it issues into a folder as PEM files, named by stem
//! (`<stem>.pem`, `<stem>-key.pem`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A server's (extended key usage serverAuth), for the names given.
    Server,
    /// A client's (clientAuth).
    Client,
}

/// A certificate issued by a [`TestCa`], as PEM.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A CA whose certificate is `<dir>/<name>.pem`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA with common name `name`, written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        TestCa::named(dir, name, name)
    }

    /// A new CA with common name `common_name`, written to `<dir>/<file>.pem` (two CAs
    /// with one name: an impostor of another).
    pub fn named(dir: &Path, file: &str, common_name: &str) -> TestCa {
        let name = file;
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a key");
        let pem = params.self_signed(&key).expect("the CA").pem();
        let ca = TestCa {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
        };
        std::fs::write(ca.path(), pem).expect("the CA's file");
        ca
    }

    /// The CA's certificate file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for common name `cn` (and organization `org`), with `names` as its
    /// subject alternative names, for `usage`.
    pub fn issue(&self, cn: &str, org: Option<&str>, names: &[&str], usage: Usage) -> Issued {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// [`TestCa::issue`], written to `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem`.
    pub fn issue_files(
        &self,
        stem: &str,
        cn: &str,
        org: Option<&str>,
        names: &[&str],
        usage: Usage,
    ) {
        let issued = self.issue(cn, org, names, usage);
        std::fs::write(self.dir.join(format!("{stem}.pem")), issued.cert_pem)
            .expect("the certificate's file");
        std::fs::write(self.dir.join(format!("{stem}-key.pem")), issued.key_pem)
            .expect("the key's file");
    }
}
