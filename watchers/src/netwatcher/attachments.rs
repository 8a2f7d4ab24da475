//! NetworkAttachmentDefinitions (Multus' kind) as link owners, as DANM's netwatcher had
//! them: one whose configuration names a `master` with a `vlan` or `vxlan` gets the same
//! host links as a network ([`danm_core::hostlinks::attachment`] reads it), and its `master`
//! is rewritten to the link so that Multus' pods use it, the device it named kept in the
//! annotation `danm.io/original-master`.
//!
//! Off unless the operator lists namespaces (`--attachment-namespaces`): whoever may write
//! NetworkAttachmentDefinitions there chooses VLAN and VxLAN ids on the nodes' devices, and no
//! TenantConfig limits them. A link not made yet goes to the administrators' networks
//! before them; `master` is rewritten only by a node where the attachment is first by
//! precedence for each of its links and none failed, so a node that keeps a contested link
//! for it (the link was there first) never points Multus' pods at it cluster-wide.

use std::fmt;
use std::str::FromStr;

use danm_core::hostlinks::attachment::{
    self, AttachmentLinks, ORIGINAL_MASTER, REWRITTEN_MASTER, Written,
};
use danm_core::hostlinks::{Claim, LinkOwner};
use danm_crds::foreign::attachment::NetworkAttachmentDefinition;
use futures::{Stream, StreamExt};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use super::{Claimant, Metrics, created, follow};

/// Which namespaces' NetworkAttachmentDefinitions claim links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AttachmentNamespaces {
    /// None (the default).
    #[default]
    Off,
    /// Every namespace (`*`).
    All,
    /// These.
    Listed(Vec<String>),
}

impl FromStr for AttachmentNamespaces {
    type Err = String;

    /// `""`: off; `*`: all; else namespace names separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(AttachmentNamespaces::Off);
        }
        if s == "*" {
            return Ok(AttachmentNamespaces::All);
        }
        let mut listed = Vec::new();
        for ns in s.split(',').map(str::trim) {
            let label = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !ns.starts_with('-')
                && !ns.ends_with('-');
            if !label {
                return Err(format!(
                    "{ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
                ));
            }
            if !listed.iter().any(|l| l == ns) {
                listed.push(ns.to_owned());
            }
        }
        Ok(AttachmentNamespaces::Listed(listed))
    }
}

impl fmt::Display for AttachmentNamespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachmentNamespaces::Off => f.write_str("none"),
            AttachmentNamespaces::All => f.write_str("*"),
            AttachmentNamespaces::Listed(l) => f.write_str(&l.join(",")),
        }
    }
}

/// The reflectors of the followed namespaces (one for all of them with `*`).
pub(super) struct Attachments {
    stores: Vec<Store<NetworkAttachmentDefinition>>,
}

/// Follows the NetworkAttachmentDefinitions of `namespaces`: their stores, and a stream that
/// yields on every change of one.
pub(super) fn follow_attachments(
    client: &kube::Client,
    namespaces: &AttachmentNamespaces,
) -> (Attachments, impl Stream<Item = ()> + Send + 'static) {
    let apis: Vec<Api<NetworkAttachmentDefinition>> = match namespaces {
        AttachmentNamespaces::Off => Vec::new(),
        AttachmentNamespaces::All => vec![Api::all(client.clone())],
        AttachmentNamespaces::Listed(l) => l
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for api in apis {
        let (store, changes) = follow(api, "NetworkAttachmentDefinition");
        stores.push(store);
        streams.push(changes.boxed());
    }
    (Attachments { stores }, futures::stream::select_all(streams))
}

impl Attachments {
    /// Whether every store has its first list.
    pub(super) fn ready(&self) -> bool {
        self.stores.iter().all(|s| {
            futures::FutureExt::now_or_never(s.wait_until_ready()).is_some_and(|r| r.is_ok())
        })
    }

    /// The claims of every NetworkAttachmentDefinition that asks for a link (or whose
    /// configuration cannot be read: its problem is reported on it).
    pub(super) fn snapshot(&self) -> Vec<Claimant> {
        let mut out = Vec::new();
        for store in &self.stores {
            for nad in store.state() {
                let config = nad.spec.config.as_deref().unwrap_or_default();
                let written = Written {
                    original: nad.annotations().get(ORIGINAL_MASTER).map(String::as_str),
                    rewritten: nad.annotations().get(REWRITTEN_MASTER).map(String::as_str),
                };
                let links = match attachment::links(config, written) {
                    Ok(None) => continue,
                    Ok(Some(links)) => Ok(links),
                    Err(problem) => Err(problem),
                };
                let rewrite = match &links {
                    Ok(l) if !l.rewritten => Some(Rewrite {
                        nad: (*nad).clone(),
                        links: l.clone(),
                    }),
                    _ => None,
                };
                out.push(Claimant {
                    claim: Claim {
                        owner: LinkOwner::Attachment {
                            namespace: nad.namespace().unwrap_or_default(),
                            name: nad.name_any(),
                        },
                        links: links.map(|l| l.links),
                        created: created(nad.as_ref()),
                    },
                    reference: nad.object_ref(&()),
                    rewrite,
                });
            }
        }
        out
    }
}

/// A NetworkAttachmentDefinition whose `master` must name its link.
#[derive(Clone, Debug)]
pub(super) struct Rewrite {
    nad: NetworkAttachmentDefinition,
    links: AttachmentLinks,
}

impl Rewrite {
    /// Writes `master` and the annotation, on the condition that the object is the one
    /// read (its `resourceVersion`): a conflict means another node's netwatcher or the
    /// owner wrote first, and the next sync sees what they wrote.
    pub(super) async fn apply(&self, client: &kube::Client, metrics: &Metrics) {
        let mut nad = self.nad.clone();
        let namespace = nad.namespace().unwrap_or_default();
        let name = nad.name_any();
        let config = nad.spec.config.as_deref().unwrap_or_default();
        let rewritten = match attachment::rewrite(config, &self.links.master) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%namespace, %name, error = %e, "cannot rewrite master");
                return;
            }
        };
        nad.spec.config = Some(rewritten);
        nad.annotations_mut()
            .insert(ORIGINAL_MASTER.to_owned(), self.links.device.clone());
        nad.annotations_mut()
            .insert(REWRITTEN_MASTER.to_owned(), self.links.master.clone());
        nad.meta_mut().managed_fields = None;
        let api = Api::<NetworkAttachmentDefinition>::namespaced(client.clone(), &namespace);
        match api.replace(&name, &PostParams::default(), &nad).await {
            Ok(_) => {
                metrics.attachment_rewritten();
                tracing::info!(%namespace, %name, master = %self.links.master, device = %self.links.device, "NetworkAttachmentDefinition's master now names its link");
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                tracing::debug!(%namespace, %name, "written meanwhile; the next sync sees it");
            }
            Err(e) => {
                metrics.problem("AttachmentWriteFailed");
                tracing::warn!(%namespace, %name, error = %e, "cannot rewrite master");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_parsed_and_checked() {
        assert_eq!("".parse(), Ok(AttachmentNamespaces::Off));
        assert_eq!("*".parse(), Ok(AttachmentNamespaces::All));
        assert_eq!(
            "telco, sig,telco".parse(),
            Ok(AttachmentNamespaces::Listed(vec![
                "telco".into(),
                "sig".into()
            ]))
        );
        for bad in ["Telco", "a,,b", "-a", "a/b", "x*"] {
            assert!(bad.parse::<AttachmentNamespaces>().is_err(), "{bad}");
        }
    }
}
