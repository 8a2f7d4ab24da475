//! Pure domain logic of the DANM successor: no I/O, no async, no Kubernetes client.
//!
//! * [`addr`]: IPv4/IPv6 CIDRs as offsets (`u128`) from the network base address.
//! * [`network`]: a network spec (DANM's `cidr`, `allocation_pool`, `net6`,
//!   `allocation_pool_v6`, `routes`, `routes6`) validated and defaulted into a
//!   [`network::NetworkPlan`]: per family, the pool and the reserved addresses.
//! * [`layout`]: how a family's address space splits into fixed-size `AllocationShard`s, and
//!   their object names.
//! * [`codec`]: one shard's state (a roaring bitmap of allocated offsets plus one owner
//!   fingerprint per allocation) to and from its base64 payload with CRC32.
//! * [`endpoint`]: which network a DanmEp is on (one answer for every component).
//! * [`policy`]: `dynamic` / static / `none` requests and the search for a free address.
//! * [`input`]: what every field of a request must look like (no surrounding whitespace).
//! * [`names`]: the one rule by which a string from an object becomes a file, program or
//!   link name (a plain name: one path component).
//! * [`owner`]: the owner key (container id + interface name) of an allocation.
//! * [`interfaces`]: the `danm.io/interfaces` pod annotation and DANM's interface naming.
//! * [`admit`]: admission of networks and TenantConfigs (DANM's validation rules and
//!   mutations, VLAN/VxLAN id reservations), for the webhook.
//! * [`hostlinks`]: the VLAN and VxLAN host links the networks ask for, and the plan that
//!   brings a node's links there (netwatcher's decisions).
//! * [`leak`]: which DanmEps and shard addresses are leaked, and why (the cleaner's
//!   decisions).
//! * [`services`]: which Services are DANM's and the EndpointSlices each should have
//!   (svcwatcher's decisions).
//! * [`netpol`]: which DanmNetworkPolicies isolate which interface of a pod and what they
//!   allow there (the policer's decisions).
//! * [`migrate`]: reading DANM's `alloc`/`alloc6` bit arrays, for migration into shards.

pub mod addr;
#[cfg(feature = "kube")]
pub mod admit;
pub mod calico;
pub mod codec;
#[cfg(feature = "kube")]
pub mod endpoint;
pub mod hostlinks;
pub mod input;
pub mod interfaces;
pub mod layout;
#[cfg(feature = "kube")]
pub mod leak;
pub mod migrate;
pub mod names;
pub mod netpol;
pub mod network;
pub mod owner;
pub mod policy;
pub mod services;

pub use addr::{Cidr, Family, PerFamily};
pub use codec::{CodecError, ShardBits};
pub use network::{FamilyPlan, NetworkError, NetworkKey, NetworkKind, NetworkPlan};
pub use owner::OwnerKey;
pub use policy::{AddressRequest, AllocError};
