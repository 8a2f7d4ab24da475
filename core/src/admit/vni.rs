//! VLAN and VxLAN ids of TenantNetworks: a profile's `vniRange`, the ids it has reserved,
//! and the choice of the next one.
//!
//! DANM kept one bit per id (ids 0-5000) in the profile's `alloc` and forgot who held it:
//! an id reserved for a create that then failed stayed taken forever, and a repeated
//! delete freed an id that had meanwhile gone to another network. Here a profile keeps a
//! map `reservations` from id to its holder: the TenantNetwork's name, the token the
//! webhook also writes into that TenantNetwork (annotation [`VNI_RESERVATION_ANNOTATION`]) and
//! the time of the reservation. An id is freed only for the holder whose token it carries;
//! a reservation whose token no TenantNetwork carries is freed once older than a grace
//! period (its create failed after admission). Ids set in a DANM-era `alloc` stay taken.

use std::collections::BTreeSet;
use std::fmt;

use danm_crds::{IfaceProfile, TenantConfig, VniReservation};

pub use danm_crds::names::VNI_RESERVATION_ANNOTATION;

/// What a profile hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VniType {
    /// 802.1Q VLAN ids, 1-4094.
    Vlan,
    /// VxLAN network identifiers, 1-16777214.
    Vxlan,
}

impl VniType {
    /// Parses `vniType` (exactly `vlan` or `vxlan`, as DANM).
    pub fn parse(text: &str) -> Option<VniType> {
        match text {
            "vlan" => Some(VniType::Vlan),
            "vxlan" => Some(VniType::Vxlan),
            _ => None,
        }
    }
    /// The smallest and largest id the protocol allows (0 means "none" in DANM's API, and
    /// 4095 and 16777215 are reserved).
    pub fn bounds(self) -> (u32, u32) {
        match self {
            VniType::Vlan => (1, 4094),
            VniType::Vxlan => (1, 16_777_214),
        }
    }
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VniType::Vlan => "vlan",
            VniType::Vxlan => "vxlan",
        }
    }
}

impl fmt::Display for VniType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `vniRange`: ascending, non-overlapping inclusive ranges of ids the protocol
/// allows, and what the text named outside the protocol's bounds (DANM accepted VLAN ids
/// up to 5000, its bit array's size: a TenantConfig carried over may hold some).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniRange {
    ids: Vec<(u32, u32)>,
    outside: Vec<(u32, u32)>,
}

impl VniRange {
    /// Parses the Linux list format DANM used (`1000-2000,2500,3000-3010`): no spaces, every
    /// range ascending. Overlaps are merged. Ids outside `vni_type`'s bounds are left out
    /// (and kept in [`VniRange::outside`], for a warning); a range with no id inside them is
    /// refused.
    pub fn parse(text: &str, vni_type: VniType) -> Result<VniRange, String> {
        let (min, max) = vni_type.bounds();
        let mut ranges = Vec::new();
        let mut outside = Vec::new();
        for token in text.split(',') {
            let id = |s: &str| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{token:?} is not an id or a range of ids (a-b)"));
                }
                s.parse::<u32>()
                    .map_err(|_| format!("{s} is outside {min}-{max}, the {vni_type} ids"))
            };
            let (a, b) = match token.split_once('-') {
                Some((a, b)) => (id(a)?, id(b)?),
                None => {
                    let n = id(token)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(format!("{token:?} ends before it starts"));
            }
            if a < min {
                outside.push((a, b.min(min - 1)));
            }
            if b > max {
                outside.push((a.max(max + 1), b));
            }
            let (a, b) = (a.max(min), b.min(max));
            if a <= b {
                ranges.push((a, b));
            }
        }
        if ranges.is_empty() {
            return Err(format!(
                "no id of {text:?} is within {min}-{max}, the {vni_type} ids"
            ));
        }
        Ok(VniRange {
            ids: merge(ranges),
            outside: merge(outside),
        })
    }

    /// Whether `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.iter().any(|(a, b)| (*a..=*b).contains(&id))
    }

    /// The ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().flat_map(|(a, b)| *a..=*b)
    }

    /// What the text named outside the protocol's bounds (never handed out).
    pub fn outside(&self) -> &[(u32, u32)] {
        &self.outside
    }
}

fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// A profile's id that an admission picked, to be written to the TenantConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VniPick {
    /// The profile's `name`.
    pub profile: String,
    /// The profile's `vniType`.
    pub vni_type: VniType,
    /// The id.
    pub id: u32,
    /// The host link the id names (recorded in the reservation).
    pub link: String,
}

/// Why a TenantConfig cannot give a TenantNetwork an id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VniError {
    /// The profile is not (or no longer) in the TenantConfig.
    #[error("TenantConfig {config} has no {vni_type} profile {profile}")]
    NoProfile {
        /// The TenantConfig.
        config: String,
        /// The profile name.
        profile: String,
        /// Its id type.
        vni_type: VniType,
    },
    /// The profile's `vniRange` does not parse.
    #[error("the vniRange of profile {profile} is invalid: {message}")]
    BadRange {
        /// The profile name.
        profile: String,
        /// Why.
        message: String,
    },
    /// The profile's DANM-era `alloc` does not decode.
    #[error("the alloc bit array of profile {profile} is corrupt: {message}")]
    BadAlloc {
        /// The profile name.
        profile: String,
        /// Why.
        message: String,
    },
    /// Every id of the range is taken.
    #[error("every id of profile {profile}'s vniRange {range} is reserved")]
    Exhausted {
        /// The profile name.
        profile: String,
        /// Its range as written.
        range: String,
    },
    /// The id is already reserved (another replica got it first).
    #[error("{vni_type} id {id} of profile {profile} is already reserved for {holder}")]
    Taken {
        /// The profile name.
        profile: String,
        /// Its id type.
        vni_type: VniType,
        /// The id.
        id: u32,
        /// Who holds it.
        holder: String,
    },
}

/// The ids a profile's DANM-era `alloc` bit array marks as taken (bit 0 aside).
fn legacy_ids(profile: &IfaceProfile) -> Result<BTreeSet<u32>, VniError> {
    if profile.alloc.is_empty() {
        return Ok(BTreeSet::new());
    }
    let bits =
        crate::migrate::set_bits("alloc", &profile.alloc).map_err(|e| VniError::BadAlloc {
            profile: profile.name.clone(),
            message: e.to_string(),
        })?;
    Ok(bits
        .into_iter()
        .filter(|b| *b > 0)
        .filter_map(|b| u32::try_from(b).ok())
        .collect())
}

/// Whether a profile's DANM-era `alloc` marks any id as taken (a corrupt one counts: it
/// cannot prove the ids free).
pub fn legacy_ids_held(profile: &IfaceProfile) -> bool {
    legacy_ids(profile).map_or(true, |ids| !ids.is_empty())
}

/// The profile of `config` with this name and id type.
pub fn profile<'a>(
    config: &'a TenantConfig,
    name: &str,
    vni_type: VniType,
) -> Option<&'a IfaceProfile> {
    config
        .host_devices
        .iter()
        .find(|p| p.name == name && VniType::parse(&p.vni_type) == Some(vni_type))
}

fn profile_mut<'a>(
    config: &'a mut TenantConfig,
    name: &str,
    vni_type: VniType,
) -> Option<&'a mut IfaceProfile> {
    config
        .host_devices
        .iter_mut()
        .find(|p| p.name == name && VniType::parse(&p.vni_type) == Some(vni_type))
}

/// The lowest id of the profile's range that is neither reserved, nor set in its DANM-era
/// `alloc`, nor `in_use` (by a network of an administrator on the same device, say).
pub fn lowest_free(
    profile: &IfaceProfile,
    vni_type: VniType,
    in_use: &dyn Fn(u32) -> bool,
) -> Result<u32, VniError> {
    let range =
        VniRange::parse(&profile.vni_range, vni_type).map_err(|message| VniError::BadRange {
            profile: profile.name.clone(),
            message,
        })?;
    let legacy = legacy_ids(profile)?;
    range
        .ids()
        .find(|id| {
            !profile.reservations.contains_key(&id.to_string())
                && !legacy.contains(id)
                && !in_use(*id)
        })
        .ok_or_else(|| VniError::Exhausted {
            profile: profile.name.clone(),
            range: profile.vni_range.clone(),
        })
}

/// Records `holder` as the holder of `pick` in `config`; refused when the id is taken.
pub fn reserve(
    config: &mut TenantConfig,
    pick: &VniPick,
    holder: VniReservation,
) -> Result<(), VniError> {
    let config_name = config.metadata.name.clone().unwrap_or_default();
    let profile =
        profile_mut(config, &pick.profile, pick.vni_type).ok_or_else(|| VniError::NoProfile {
            config: config_name,
            profile: pick.profile.clone(),
            vni_type: pick.vni_type,
        })?;
    let key = pick.id.to_string();
    if let Some(existing) = profile.reservations.get(&key) {
        return Err(VniError::Taken {
            profile: pick.profile.clone(),
            vni_type: pick.vni_type,
            id: pick.id,
            holder: existing.network.clone(),
        });
    }
    if legacy_ids(profile)?.contains(&pick.id) {
        return Err(VniError::Taken {
            profile: pick.profile.clone(),
            vni_type: pick.vni_type,
            id: pick.id,
            holder: "a DANM-era network (the profile's alloc)".into(),
        });
    }
    profile.reservations.insert(key, holder);
    Ok(())
}

/// One reservation, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldVni {
    /// The profile's `name`.
    pub profile: String,
    /// The profile's id type (`None` if the profile's `vniType` is not valid).
    pub vni_type: Option<VniType>,
    /// The id.
    pub id: String,
    /// Its holder.
    pub holder: VniReservation,
}

/// Every reservation of `config`.
pub fn reservations(config: &TenantConfig) -> Vec<HeldVni> {
    config
        .host_devices
        .iter()
        .flat_map(|p| {
            p.reservations.iter().map(|(id, holder)| HeldVni {
                profile: p.name.clone(),
                vni_type: VniType::parse(&p.vni_type),
                id: id.clone(),
                holder: holder.clone(),
            })
        })
        .collect()
}

/// Removes every reservation for which `free` says yes; returns what was removed.
pub fn release_where(
    config: &mut TenantConfig,
    mut free: impl FnMut(&HeldVni) -> bool,
) -> Vec<HeldVni> {
    let mut removed = Vec::new();
    for p in &mut config.host_devices {
        let vni_type = VniType::parse(&p.vni_type);
        let name = p.name.clone();
        p.reservations.retain(|id, holder| {
            let held = HeldVni {
                profile: name.clone(),
                vni_type,
                id: id.clone(),
                holder: holder.clone(),
            };
            if free(&held) {
                removed.push(held);
                false
            } else {
                true
            }
        });
    }
    removed
}

/// Clears the DANM-era `alloc` bit of `id` in a profile (a TenantNetwork DANM created, with
/// no reservation token, is gone); returns whether a bit was cleared.
pub fn release_legacy(
    config: &mut TenantConfig,
    profile: &str,
    vni_type: VniType,
    id: u32,
) -> Result<bool, VniError> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    let Some(p) = profile_mut(config, profile, vni_type) else {
        return Ok(false);
    };
    if id == 0 || p.alloc.is_empty() {
        return Ok(false);
    }
    let mut bytes = BASE64
        .decode(p.alloc.trim())
        .map_err(|e| VniError::BadAlloc {
            profile: profile.to_owned(),
            message: e.to_string(),
        })?;
    let (byte, mask) = ((id / 8) as usize, 0x80u8 >> (id % 8));
    match bytes.get_mut(byte) {
        Some(b) if *b & mask != 0 => {
            *b &= !mask;
            p.alloc = BASE64.encode(bytes);
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(range: &str) -> IfaceProfile {
        IfaceProfile {
            name: "ens4".into(),
            vni_type: "vlan".into(),
            vni_range: range.into(),
            ..Default::default()
        }
    }

    fn holder(token: &str) -> VniReservation {
        VniReservation {
            network: format!("ns/{token}"),
            token: token.into(),
            since: "2026-01-01T00:00:00Z".into(),
            link: String::new(),
        }
    }

    #[test]
    fn ranges_parse_as_danm_wrote_them() {
        let r = VniRange::parse("2000-2002,1000,1001-1001,2001-2005", VniType::Vlan).unwrap();
        assert_eq!(r.ids, vec![(1000, 1001), (2000, 2005)]);
        assert!(r.outside().is_empty());
        assert!(r.contains(2003) && !r.contains(1002));
        for bad in [
            "",
            "1000-",
            "a",
            "1 -2",
            "2000-1000",
            "0",
            "4095",
            "1-2-3",
            "1,,2",
        ] {
            assert!(VniRange::parse(bad, VniType::Vlan).is_err(), "{bad:?}");
        }
        assert!(VniRange::parse("4095-5000", VniType::Vxlan).is_ok());
        // A DANM-era range past the protocol's bounds: the valid ids, and what is left out.
        let danm = VniRange::parse("4000-5000,0-2", VniType::Vlan).unwrap();
        assert_eq!(danm.ids().next(), Some(1));
        assert!(danm.contains(4094) && !danm.contains(4095) && !danm.contains(0));
        assert_eq!(danm.outside(), &[(0, 0), (4095, 5000)]);
        let mut profile = profile("4094-5000");
        profile.reservations.insert("4094".into(), holder("a"));
        assert!(matches!(
            lowest_free(&profile, VniType::Vlan, &|_| false),
            Err(VniError::Exhausted { .. })
        ));
        assert!(VniRange::parse("16777215", VniType::Vxlan).is_err());
        assert!(VniRange::parse("99999999999", VniType::Vxlan).is_err());
    }

    #[test]
    fn the_lowest_free_id_is_picked_around_reservations_and_legacy_bits() {
        let mut p = profile("700-710");
        assert_eq!(lowest_free(&p, VniType::Vlan, &|_| false), Ok(700));
        p.reservations.insert("700".into(), holder("a"));
        // DANM's array: bit 0 pre-set, 701 taken.
        p.alloc = crate::migrate::danm_bit_array(5001, &[701]);
        assert_eq!(lowest_free(&p, VniType::Vlan, &|_| false), Ok(702));
        let mut full = profile("5");
        full.reservations.insert("5".into(), holder("b"));
        assert!(matches!(
            lowest_free(&full, VniType::Vlan, &|_| false),
            Err(VniError::Exhausted { .. })
        ));
    }

    #[test]
    fn an_id_is_reserved_once_and_freed_only_for_its_token() {
        let mut config = TenantConfig {
            host_devices: vec![profile("1-10")],
            ..Default::default()
        };
        let pick = VniPick {
            profile: "ens4".into(),
            vni_type: VniType::Vlan,
            id: 3,
            link: "n.3".into(),
        };
        reserve(&mut config, &pick, holder("a")).unwrap();
        assert!(matches!(
            reserve(&mut config, &pick, holder("b")),
            Err(VniError::Taken { .. })
        ));
        let wrong = release_where(&mut config, |h| h.holder.token == "b");
        assert!(wrong.is_empty());
        let freed = release_where(&mut config, |h| h.holder.token == "a");
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].id, "3");
        assert!(reservations(&config).is_empty());
        let other = VniPick {
            profile: "ens5".into(),
            ..pick
        };
        assert!(matches!(
            reserve(&mut config, &other, holder("c")),
            Err(VniError::NoProfile { .. })
        ));
    }

    #[test]
    fn a_legacy_bit_is_cleared_once() {
        let mut config = TenantConfig {
            host_devices: vec![IfaceProfile {
                alloc: crate::migrate::danm_bit_array(5001, &[1001]),
                ..profile("1000-2000")
            }],
            ..Default::default()
        };
        assert_eq!(
            lowest_free(&config.host_devices[0], VniType::Vlan, &|_| false),
            Ok(1000)
        );
        assert_eq!(
            release_legacy(&mut config, "ens4", VniType::Vlan, 1001),
            Ok(true)
        );
        assert_eq!(
            release_legacy(&mut config, "ens4", VniType::Vlan, 1001),
            Ok(false)
        );
        assert_eq!(
            release_legacy(&mut config, "ens4", VniType::Vlan, 0),
            Ok(false)
        );
    }
}
