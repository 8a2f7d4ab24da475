//! The owner of an allocation: container (sandbox) id plus interface name, as kubelet gives
//! them to a CNI plugin. Every mutating call is idempotent on this key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an owner key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// A required field is empty.
    #[error("owner.{0} must not be empty")]
    Empty(&'static str),
    /// A field has characters or a length no owner key may have.
    #[error("owner.{field} {value:?} is invalid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Container id + interface name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnerKey {
    /// Container (sandbox) id.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
}

impl OwnerKey {
    /// Builds a key, refusing empty or oversized parts.
    pub fn new(container_id: &str, ifname: &str) -> Result<OwnerKey, OwnerError> {
        if container_id.is_empty() {
            return Err(OwnerError::Empty("container_id"));
        }
        if ifname.is_empty() {
            return Err(OwnerError::Empty("ifname"));
        }
        if crate::input::exact(container_id).is_err() {
            return Err(OwnerError::Invalid {
                field: "container_id",
                value: container_id.to_owned(),
                why: "has whitespace around it",
            });
        }
        if container_id.len() > 256 || container_id.chars().any(char::is_control) {
            return Err(OwnerError::Invalid {
                field: "container_id",
                value: container_id.to_owned(),
                why: "longer than 256 bytes or has control characters",
            });
        }
        // Linux IFNAMSIZ is 16 including the NUL.
        if ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) || ifname == "." || ifname == ".."
        {
            return Err(OwnerError::Invalid {
                field: "ifname",
                value: ifname.to_owned(),
                why: "not a valid Linux interface name (at most 15 bytes, no '/' or spaces)",
            });
        }
        Ok(OwnerKey {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.container_id.as_bytes());
        h.update([0u8]);
        h.update(self.ifname.as_bytes());
        h.finalize().into()
    }

    /// The 64-bit fingerprint stored in shards beside each allocated address.
    pub fn fingerprint(&self) -> u64 {
        let d = self.digest();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// The name of this owner's endpoint record (DanmEp): `ep-` and 40 hex digits of the
    /// key's SHA-256, so a retry finds the record it wrote before.
    pub fn endpoint_name(&self) -> String {
        let d = self.digest();
        let hex: String = d[..20].iter().map(|b| format!("{b:02x}")).collect();
        format!("ep-{hex}")
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        let a = OwnerKey::new("abc", "eth0").unwrap();
        let b = OwnerKey::new("abc", "eth1").unwrap();
        let c = OwnerKey::new("abce", "th0").unwrap();
        assert_eq!(
            a.fingerprint(),
            OwnerKey::new("abc", "eth0").unwrap().fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.endpoint_name().len(), 43);
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(
            OwnerKey::new("", "eth0"),
            Err(OwnerError::Empty("container_id"))
        );
        assert_eq!(OwnerKey::new("x", ""), Err(OwnerError::Empty("ifname")));
        assert!(OwnerKey::new("x", "averyveryverylongname").is_err());
        assert!(OwnerKey::new("x", "a/b").is_err());
    }
}
