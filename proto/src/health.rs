//! The service names ipamd's `grpc.health.v1` answers for (on its gRPC port and on its
//! plaintext health port, `--health-listen`).
//!
//! | name | SERVING when |
//! |------|--------------|
//! | `""` (the server) and [`IPAM`] | the store answers and no network waits for its migration from DANM (the readiness probe) |
//! | [`DEFAULT_NETWORK`] | as above, and ipamd serves at least one network named `default` |

/// The Ipam service itself: ipamd can allocate.
pub const IPAM: &str = "danm.ipam.v1.Ipam";

/// ipamd can allocate and serves a default network (any network named `default`), so a
/// pod with no `danm.io/interfaces` annotation can get an interface: the CNI installer
/// waits for it before it makes `danm` a node's CNI (`danm health`).
pub const DEFAULT_NETWORK: &str = "danm.io/default-network";
