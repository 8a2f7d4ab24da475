//! Admission of the network APIs and of TenantConfigs: DANM's validation rules and
//! mutations as pure functions, which the webhook calls with what it read from the API.
//!
//! * [`network`]: DanmNet, TenantNetwork and ClusterNetwork on CREATE, UPDATE and DELETE.
//!   The address rules are [`crate::network::plan`], the very function ipamd validates a
//!   network with, so the webhook and ipamd can never disagree; the rules that only make
//!   sense at admission (no `alloc` on creation, no `vlan` on a TenantNetwork, nothing
//!   changed under connected pods) are here. A TenantNetwork gets its host device, id and
//!   NetworkID from the TenantConfig.
//! * [`tenant_config`]: a TenantConfig on CREATE, UPDATE and DELETE.
//! * [`policy`]: a DanmNetworkPolicy's label selectors on CREATE and UPDATE.
//! * [`vni`]: ids of a profile: its range, its reservations, the next free one.
//! * [`review`]: AdmissionReview bodies (v1 and v1beta1) decoded into requests.
//! * [`patch`]: the JSONPatch (RFC 6902) of a network's mutation.
//!
//! Every refusal is a [`Denial`]: each problem names its field and its rule
//! ([`crate::network::Rule`]).

pub mod network;
pub mod patch;
pub mod policy;
pub mod review;
pub mod tenant_config;
pub mod vni;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::network::{FieldProblem, Rule};

pub use network::{Admitted, Environment, NetworkRequest, admit_network};
pub use policy::admit_policy;
pub use tenant_config::{TenantConfigRequest, admit_tenant_config, admit_tenant_config_delete};

/// The operation being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A change to a stored object.
    Update,
    /// A deletion.
    Delete,
}

impl Operation {
    /// The operation of an AdmissionRequest; `None` for CONNECT, which no rule concerns.
    pub fn of(operation: &kube::core::admission::Operation) -> Option<Operation> {
        match operation {
            kube::core::admission::Operation::Create => Some(Operation::Create),
            kube::core::admission::Operation::Update => Some(Operation::Update),
            kube::core::admission::Operation::Delete => Some(Operation::Delete),
            kube::core::admission::Operation::Connect => None,
        }
    }
}

/// Why an object is refused: every problem found, each with its field and rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Denial {
    /// The object, e.g. `TenantNetwork default/internal`.
    pub subject: String,
    /// Every problem.
    pub problems: Vec<FieldProblem>,
}

impl Denial {
    /// A denial of `subject`.
    pub fn new(subject: impl Into<String>, problems: Vec<FieldProblem>) -> Denial {
        Denial {
            subject: subject.into(),
            problems,
        }
    }

    /// A denial with one problem.
    pub fn one(subject: impl Into<String>, field: &str, rule: Rule, message: String) -> Denial {
        Denial::new(
            subject,
            vec![FieldProblem {
                field: field.to_owned(),
                message,
                rule,
            }],
        )
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is refused: ", self.subject)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {} ({})", p.field, p.message, p.rule)?;
        }
        Ok(())
    }
}

/// Parses `value` as a `T`; a value that does not fit names the field (below `prefix`).
pub(crate) fn parse_object<T: DeserializeOwned>(
    value: &Value,
    prefix: &str,
) -> Result<T, FieldProblem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "(object)".to_owned(),
            (prefix, ".") => prefix.to_owned(),
            ("", path) => path.to_owned(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        FieldProblem {
            field,
            message: e.into_inner().to_string(),
            rule: Rule::Schema,
        }
    })
}
