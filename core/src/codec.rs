//! One shard's state and its wire form.
//!
//! [`ShardBits`] holds the allocated offsets of a shard (a roaring bitmap of local offsets)
//! and, for each of them in ascending order, the 64-bit fingerprint of its owner (see
//! [`crate::owner`]). The fingerprint is what proves ownership: a release frees an address
//! only if the releaser's fingerprint is the one stored for it, so a stale release can never
//! free an address that has since gone to another owner.
//!
//! Wire form: `version (1 byte) | roaring length (u32 LE) | roaring bytes | fingerprints
//! (u64 LE each)`, base64-encoded, with the CRC32 (IEEE) of the raw bytes beside it. A payload
//! whose CRC does not match is refused with [`CodecError::CrcMismatch`], never repaired.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use roaring::RoaringBitmap;

use crate::layout::SHARD_SIZE;

const CODEC_VERSION: u8 = 1;

/// Why a shard payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The payload is not valid base64.
    #[error("payload is not valid base64: {0}")]
    Base64(String),
    /// The CRC32 of the payload does not match the recorded one.
    #[error("CRC32 mismatch: recorded {recorded:#010x}, payload has {actual:#010x}")]
    CrcMismatch {
        /// CRC recorded in the object.
        recorded: u32,
        /// CRC of the payload as read.
        actual: u32,
    },
    /// The bytes are not a shard of a version this build understands.
    #[error("payload is malformed: {0}")]
    Malformed(String),
}

/// Why a stored AllocationShard is refused: not used, not touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The shard says another family than the one it is read as (its key's in ipamd, its
    /// first address's in the cleaner), or none.
    #[error("family {found:?} does not match its key ({expected})")]
    Family {
        /// The `family` field as stored.
        found: String,
        /// The family it is read as.
        expected: &'static str,
    },
    /// The payload's CRC does not match.
    #[error("corrupt payload: {0}")]
    Corrupt(CodecError),
    /// The payload cannot be decoded.
    #[error("{0}")]
    Payload(CodecError),
}

/// Decodes a stored shard, the one rule ipamd and the cleaner share: its `family` must be
/// `expected`, its payload's CRC must match and its payload decode.
pub fn decode_shard(
    spec: &danm_crds::AllocationShardSpec,
    expected: crate::Family,
) -> Result<ShardBits, ShardError> {
    if crate::Family::parse(&spec.family) != Some(expected) {
        return Err(ShardError::Family {
            found: spec.family.clone(),
            expected: expected.as_str(),
        });
    }
    ShardBits::decode(&spec.payload, spec.crc32).map_err(|e| match e {
        CodecError::CrcMismatch { .. } => ShardError::Corrupt(e),
        other => ShardError::Payload(other),
    })
}

/// Why an allocation or release on a shard was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitsError {
    /// The offset is already allocated.
    #[error("already allocated")]
    Taken {
        /// Fingerprint of the current owner.
        owner: u64,
    },
    /// The offset is not allocated.
    #[error("not allocated")]
    NotAllocated,
    /// The offset is allocated to another owner.
    #[error("allocated to another owner")]
    OtherOwner,
}

/// The allocated offsets of one shard with their owners' fingerprints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardBits {
    bits: RoaringBitmap,
    /// `owners[i]` belongs to the i-th smallest set bit.
    owners: Vec<u64>,
}

/// A shard in wire form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedShard {
    /// Base64 payload.
    pub payload: String,
    /// CRC32 of the raw payload bytes.
    pub crc32: u32,
    /// Number of allocated offsets.
    pub allocated: u32,
}

impl ShardBits {
    /// An empty shard.
    pub fn new() -> ShardBits {
        ShardBits::default()
    }

    /// Number of allocated offsets.
    pub fn len(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Whether `local` is allocated.
    pub fn contains(&self, local: u32) -> bool {
        self.bits.contains(local)
    }

    /// The owner fingerprint of `local`, if allocated.
    pub fn owner_of(&self, local: u32) -> Option<u64> {
        self.bits
            .contains(local)
            .then(|| self.owners[self.bits.rank(local) as usize - 1])
    }

    /// Allocates `local` to `owner`.
    pub fn insert(&mut self, local: u32, owner: u64) -> Result<(), BitsError> {
        debug_assert!(local < SHARD_SIZE);
        if let Some(current) = self.owner_of(local) {
            return Err(BitsError::Taken { owner: current });
        }
        self.bits.insert(local);
        let index = self.bits.rank(local) as usize - 1;
        self.owners.insert(index, owner);
        Ok(())
    }

    /// Frees `local` if `owner` holds it.
    pub fn remove(&mut self, local: u32, owner: u64) -> Result<(), BitsError> {
        match self.owner_of(local) {
            None => Err(BitsError::NotAllocated),
            Some(current) if current != owner => Err(BitsError::OtherOwner),
            Some(_) => {
                let index = self.bits.rank(local) as usize - 1;
                self.bits.remove(local);
                self.owners.remove(index);
                Ok(())
            }
        }
    }

    /// Allocated offsets with their owners, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.bits.iter().zip(self.owners.iter().copied())
    }

    /// The smallest unallocated offset in `from..=to` for which `usable` holds.
    pub fn first_free(&self, from: u32, to: u32, usable: impl Fn(u32) -> bool) -> Option<u32> {
        if from > to {
            return None;
        }
        let mut candidate = from;
        let mut runs = self.bits.range(from..=to);
        loop {
            // `candidate` is free up to the start of the next allocated run.
            let next_run = runs.next_range();
            let free_end = match &next_run {
                Some(run) => run.start().saturating_sub(1),
                None => to,
            };
            if next_run.as_ref().is_none_or(|run| *run.start() > candidate) {
                while candidate <= free_end {
                    if usable(candidate) {
                        return Some(candidate);
                    }
                    candidate += 1;
                }
            }
            match next_run {
                Some(run) if *run.end() < to => candidate = candidate.max(run.end() + 1),
                _ => return None,
            }
        }
    }

    /// Encodes to wire form.
    pub fn encode(&self) -> EncodedShard {
        let raw = self.to_bytes();
        EncodedShard {
            crc32: crc32fast::hash(&raw),
            payload: BASE64.encode(&raw),
            allocated: self.len(),
        }
    }

    /// Decodes a wire payload, checking its CRC first.
    pub fn decode(payload: &str, crc32: u32) -> Result<ShardBits, CodecError> {
        let raw = BASE64
            .decode(payload.as_bytes())
            .map_err(|e| CodecError::Base64(e.to_string()))?;
        let actual = crc32fast::hash(&raw);
        if actual != crc32 {
            return Err(CodecError::CrcMismatch {
                recorded: crc32,
                actual,
            });
        }
        ShardBits::from_bytes(&raw)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let bitmap_len = self.bits.serialized_size();
        let mut out = Vec::with_capacity(5 + bitmap_len + 8 * self.owners.len());
        out.push(CODEC_VERSION);
        out.extend_from_slice(&(bitmap_len as u32).to_le_bytes());
        self.bits
            .serialize_into(&mut out)
            .expect("writing to a Vec cannot fail");
        for owner in &self.owners {
            out.extend_from_slice(&owner.to_le_bytes());
        }
        out
    }

    /// Decodes the raw bytes under the base64 (no CRC check: [`ShardBits::decode`] does it).
    pub fn from_bytes(raw: &[u8]) -> Result<ShardBits, CodecError> {
        let malformed = |m: &str| CodecError::Malformed(m.to_owned());
        let (&version, rest) = raw
            .split_first()
            .ok_or_else(|| malformed("empty payload"))?;
        if version != CODEC_VERSION {
            return Err(CodecError::Malformed(format!(
                "codec version {version}, expected {CODEC_VERSION}"
            )));
        }
        if rest.len() < 4 {
            return Err(malformed("truncated header"));
        }
        let (len_bytes, rest) = rest.split_at(4);
        let bitmap_len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        if rest.len() < bitmap_len {
            return Err(malformed("truncated bitmap"));
        }
        let (bitmap_bytes, owner_bytes) = rest.split_at(bitmap_len);
        let bits = RoaringBitmap::deserialize_from(bitmap_bytes)
            .map_err(|e| CodecError::Malformed(format!("bitmap: {e}")))?;
        if bits.max().is_some_and(|m| m >= SHARD_SIZE) {
            return Err(malformed("bitmap has an offset beyond the shard"));
        }
        if owner_bytes.len() as u64 != bits.len() * 8 {
            return Err(CodecError::Malformed(format!(
                "{} allocated offsets but {} bytes of owners",
                bits.len(),
                owner_bytes.len()
            )));
        }
        let owners = owner_bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(ShardBits { bits, owners })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_shard_of_another_family_or_crc_is_refused() {
        let mut bits = ShardBits::new();
        bits.insert(3, 7).unwrap();
        let e = bits.encode();
        let spec = |family: &str, crc32: u32| danm_crds::AllocationShardSpec {
            family: family.into(),
            first: "10.0.0.0".into(),
            crc32,
            payload: e.payload.clone(),
            ..Default::default()
        };
        use crate::Family::{V4, V6};
        assert_eq!(decode_shard(&spec("IPv4", e.crc32), V4).unwrap(), bits);
        for (family, expected) in [("IPv6", V4), ("IPv4", V6), ("", V4), ("ipv4", V4)] {
            assert!(
                matches!(
                    decode_shard(&spec(family, e.crc32), expected),
                    Err(ShardError::Family { .. })
                ),
                "{family:?} read as {expected:?}"
            );
        }
        let corrupt = decode_shard(&spec("IPv4", e.crc32 ^ 1), V4).unwrap_err();
        assert!(
            corrupt.to_string().starts_with("corrupt payload"),
            "{corrupt}"
        );
    }

    #[test]
    fn insert_remove_owner() {
        let mut s = ShardBits::new();
        s.insert(5, 50).unwrap();
        s.insert(1, 10).unwrap();
        s.insert(9, 90).unwrap();
        assert_eq!(s.owner_of(5), Some(50));
        assert_eq!(s.owner_of(1), Some(10));
        assert_eq!(s.insert(5, 7), Err(BitsError::Taken { owner: 50 }));
        assert_eq!(s.remove(5, 7), Err(BitsError::OtherOwner));
        assert_eq!(s.remove(6, 7), Err(BitsError::NotAllocated));
        s.remove(5, 50).unwrap();
        assert_eq!(s.owner_of(9), Some(90));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(1, 10), (9, 90)]);
    }

    #[test]
    fn first_free_skips_runs_and_unusable() {
        let mut s = ShardBits::new();
        for i in 0..10 {
            s.insert(i, 1).unwrap();
        }
        s.insert(11, 1).unwrap();
        assert_eq!(s.first_free(0, 1023, |_| true), Some(10));
        assert_eq!(s.first_free(0, 1023, |o| o != 10), Some(12));
        assert_eq!(s.first_free(0, 9, |_| true), None);
        assert_eq!(s.first_free(11, 11, |_| true), None);
        assert_eq!(s.first_free(3, 12, |o| o > 12), None);
        assert_eq!(ShardBits::new().first_free(7, 9, |_| true), Some(7));
    }

    #[test]
    fn crc_mismatch_is_typed() {
        let mut s = ShardBits::new();
        s.insert(3, 33).unwrap();
        let e = s.encode();
        assert_eq!(ShardBits::decode(&e.payload, e.crc32).unwrap(), s);
        assert!(matches!(
            ShardBits::decode(&e.payload, e.crc32 ^ 1),
            Err(CodecError::CrcMismatch { .. })
        ));
    }
}
