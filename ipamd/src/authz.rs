//! Who may call what: ipamd authorizes every RPC by the caller's TLS client certificate.
//!
//! With `--tls-client-ca`, every caller presents a certificate that chains to one of the
//! given CAs (rustls checks that before any RPC runs). Its subject names the caller:
//!
//! * a **node**: common name `system:node:<name>` with organization `system:nodes`, the
//!   identity Kubernetes gives each kubelet (`/var/lib/kubelet/pki/kubelet-client-current.pem`),
//!   which the CNI plugins on that node present. A node may Attach and Allocate only for pods
//!   whose `spec.nodeName` is that node, and Detach, Release, Interfaces and Gc only what was
//!   attached on it (the endpoint record's host, which ipamd itself sets to the caller's node
//!   at Attach); it may read Status, GetNetwork and Check;
//! * an **administrator**: a common name listed in `--admin-clients` (the cleaner's
//!   `danm-cleaner`), which may call everything, for any node;
//! * anyone else: refused, `PERMISSION_DENIED`, whatever the RPC.
//!
//! Why client certificates and not ServiceAccount tokens checked by a TokenReview: every
//! node already has its kubelet certificate, signed by the cluster CA, so the CNI needs no
//! new secret; the check is offline (no API round trip per CNI call, nothing to cache, no
//! call that fails while the API server is slow); and the identity is bound to the TLS
//! connection, so it cannot be replayed like a bearer token.

use std::collections::BTreeSet;
use std::sync::Arc;

use danm_runtime::tls::{ClientCaError, ReloadingClientCas};

use crate::tokens::NodeTokens;
use tonic::{Request, Status};

use crate::wire::denied;

use crate::engine::OwnerInfo;
use crate::store::{EndpointRecord, Store};

/// The organization of node certificates.
const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node certificate's common name.
const NODE_PREFIX: &str = "system:node:";

/// How callers are authorized.
#[derive(Clone, Debug, Default)]
pub enum Policy {
    /// Every caller may do everything: no client certificates are asked for (plain TLS or
    /// plaintext), or any certificate the CA signed is trusted alike.
    #[default]
    Open,
    /// Node-scoped: see the module's overview.
    Nodes {
        /// Common names that may call everything.
        admins: BTreeSet<String>,
        /// When set, the CA that alone may issue administrator certificates (DANM's own;
        /// `--admin-client-ca`): an administrator CN whose chain does not verify against
        /// it, and a node identity whose chain does, are refused.
        admin_ca: Option<AdminCa>,
        /// When set (`--node-identity sa-token`), a node is who its bearer token says
        /// (a TokenReview), not its certificate.
        tokens: Option<Arc<NodeTokens>>,
    },
}

/// The CA of administrator certificates: a client's chain is verified against it alone
/// (signatures, validity, client-auth usage), so a certificate from another CA that merely
/// names the same issuer is not one of its. The file is re-read when it changes (a CA
/// rotation).
#[derive(Clone, Debug)]
pub struct AdminCa(Arc<ReloadingClientCas>);

impl AdminCa {
    /// The CA(s) of the PEM file at `path`, re-read every `every` when it changes.
    pub fn start(
        path: &std::path::Path,
        every: std::time::Duration,
    ) -> Result<AdminCa, ClientCaError> {
        Ok(AdminCa(ReloadingClientCas::start(
            vec![path.to_owned()],
            false,
            every,
        )?))
    }

    /// Whether the client's chain (leaf first) verifies against this CA.
    fn issued(&self, chain: &[rustls::pki_types::CertificateDer<'_>]) -> bool {
        self.0.verifies(chain)
    }
}

/// The caller of one RPC, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authorization is off: everything is allowed.
    Unrestricted,
    /// An administrator (its common name).
    Admin(String),
    /// The CNI of this node.
    Node(String),
}

impl Caller {
    /// The node the caller is confined to, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the caller is an administrator (not merely unrestricted).
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin(_))
    }

    /// Refuses a node where only administrators may go.
    pub fn require_admin(&self, rpc: &str) -> Result<(), Status> {
        match self {
            Caller::Node(node) => Err(denied(format!(
                "{rpc} is for administrators; node {node} may not call it"
            ))),
            _ => Ok(()),
        }
    }
}

/// The request's bearer token, if it carries one.
fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| denied("the authorization header is not text".into()))?;
    text.strip_prefix("Bearer ")
        .map(Some)
        .ok_or_else(|| denied("the authorization header is not a bearer token".into()))
}

impl Policy {
    /// Who is calling, from the request's bearer token (with `--node-identity sa-token`)
    /// or its client certificate; refused when the policy does not know the identity.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Policy::Nodes {
            admins,
            admin_ca,
            tokens,
        } = self
        else {
            return Ok(Caller::Unrestricted);
        };
        if let Some(tokens) = tokens
            && let Some(token) = bearer(request)?
        {
            return Ok(Caller::Node(tokens.node_of(token).await?));
        }
        let certs = request.peer_certs().ok_or_else(|| {
            denied("a client certificate is required (node or administrator identity)".into())
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| denied("a client certificate is required".into()))?;
        let subject = Subject::of(leaf.as_ref())
            .ok_or_else(|| denied("the client certificate cannot be read".into()))?;
        let caller = identify(&subject, admins)?;
        if let Some(admin_ca) = admin_ca {
            let from_admin_ca = admin_ca.issued(&certs);
            match &caller {
                Caller::Admin(cn) if !from_admin_ca => {
                    return Err(denied(format!(
                        "client {cn:?} is an administrator name, but its certificate is not from --admin-client-ca"
                    )));
                }
                Caller::Node(node) if from_admin_ca => {
                    return Err(denied(format!(
                        "node {node}'s certificate comes from --admin-client-ca, which issues administrators only"
                    )));
                }
                _ => {}
            }
        }
        Ok(caller)
    }
}

/// Refuses a node caller any record attached on another node. The record's host says
/// where it was attached (ipamd sets it to the caller's node at Attach and Allocate); a
/// record whose host is not the caller's (written before node authorization, when the CNI
/// sent the kernel's host name) is allowed only if the API says its pod, with the
/// recorded UID, is bound to the caller's node.
pub async fn confine(
    store: &dyn Store,
    caller: &Caller,
    rpc: &str,
    records: &[&EndpointRecord],
) -> Result<(), Status> {
    let Some(node) = caller.node() else {
        return Ok(());
    };
    for record in records.iter().filter(|r| r.spec.host != node) {
        let bound = match store.pod(&record.namespace, &record.spec.pod).await {
            Ok(Some(pod)) => {
                pod.node_name == node
                    && (record.spec.pod_uid.is_empty() || pod.uid == record.spec.pod_uid)
            }
            Ok(None) | Err(crate::store::StoreError::NotFound(_)) => false,
            Err(e) => return Err(crate::wire::status(&e.into())),
        };
        if !bound {
            return Err(denied(format!(
                "{rpc}: node {node} may not touch pod {}/{}, attached on {:?}",
                record.namespace, record.spec.pod, record.spec.host
            )));
        }
    }
    Ok(())
}

/// Refuses unless the API says `owner`'s pod is bound to `node`.
pub async fn pod_on_node(store: &dyn Store, owner: &OwnerInfo, node: &str) -> Result<(), Status> {
    let pod = format!("{}/{}", owner.pod_namespace, owner.pod_name);
    if owner.pod_namespace.is_empty() || owner.pod_name.is_empty() {
        return Err(denied(format!(
            "node {node} must name the pod (owner.pod_namespace, owner.pod_name)"
        )));
    }
    match store.pod(&owner.pod_namespace, &owner.pod_name).await {
        Ok(Some(info)) if info.node_name == node => Ok(()),
        Ok(Some(info)) => Err(denied(format!(
            "node {node} may not allocate for pod {pod}, which is bound to {:?}",
            info.node_name
        ))),
        Ok(None) => Err(denied(format!(
            "node authorization needs a store that reads pods (--store kube); cannot check pod {pod}"
        ))),
        Err(e) => Err(crate::wire::status(&e.into())),
    }
}

/// What authorization reads of a certificate's subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// The common name.
    pub common_name: String,
    /// Every organization.
    pub organizations: Vec<String>,
    /// The DER issuer name.
    pub issuer: Vec<u8>,
}

impl Subject {
    /// Reads the subject of a DER certificate.
    pub fn of(der: &[u8]) -> Option<Subject> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().ok().map(String::from);
        Some(Subject {
            common_name: subject.iter_common_name().next().and_then(text)?,
            organizations: subject.iter_organization().filter_map(text).collect(),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }
}

/// The caller a subject names under the node policy.
pub fn identify(subject: &Subject, admins: &BTreeSet<String>) -> Result<Caller, Status> {
    let cn = &subject.common_name;
    if admins.contains(cn) {
        return Ok(Caller::Admin(cn.clone()));
    }
    match cn.strip_prefix(NODE_PREFIX) {
        Some(node)
            if !node.is_empty() && subject.organizations.iter().any(|o| o == NODES_GROUP) =>
        {
            Ok(Caller::Node(node.to_owned()))
        }
        Some(_) => Err(denied(format!(
            "client {cn:?} is not a node identity: a node certificate has organization {NODES_GROUP}"
        ))),
        None => Err(denied(format!(
            "client {cn:?} is neither a node (CN {NODE_PREFIX}<node>) nor one of the administrators"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(cn: &str, orgs: &[&str]) -> Subject {
        Subject {
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            issuer: Vec::new(),
        }
    }

    #[test]
    fn nodes_need_the_nodes_group_and_admins_their_listed_name() {
        let admins = BTreeSet::from(["danm-cleaner".to_owned()]);
        assert_eq!(
            identify(&subject("system:node:n1", &[NODES_GROUP]), &admins).unwrap(),
            Caller::Node("n1".into())
        );
        assert_eq!(
            identify(&subject("danm-cleaner", &[]), &admins).unwrap(),
            Caller::Admin("danm-cleaner".into())
        );
        for (cn, orgs) in [
            ("system:node:n1", &[][..]),
            ("system:node:", &[NODES_GROUP][..]),
            ("danm-cni", &[NODES_GROUP][..]),
            ("system:admin", &["system:masters"][..]),
        ] {
            let refused = identify(&subject(cn, orgs), &admins).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{cn}");
        }
    }

    #[test]
    fn only_admins_pass_require_admin() {
        assert!(Caller::Admin("a".into()).require_admin("X").is_ok());
        assert!(Caller::Unrestricted.require_admin("X").is_ok());
        let refused = Caller::Node("n1".into()).require_admin("X").unwrap_err();
        assert!(refused.message().contains("n1"));
    }
}
