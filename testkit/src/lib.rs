//! Test-only helpers; never linked into a product binary.
//!
//! [`apiserver`]: a Kubernetes API stand-in over real HTTP, reached through the real
//! `kube::Client`. It serves any resource path (`/api/v1/...`, `/apis/GROUP/VERSION/...`,
//! namespaced or cluster scoped) with the behaviours our components rely on, each pinned by
//! a test in `tests/apiserver.rs`: create (409 AlreadyExists), get/replace/delete (404
//! NotFound), replace with a stale `metadata.resourceVersion` (409 Conflict), merge patch,
//! list and watch with label and field selectors, watch bookmarks, 410 Gone for a
//! resourceVersion older than the retained history, the 1.5 MiB object limit (413),
//! cascading deletion through `ownerReferences`, and injectable write latency and faults
//! (500s, conflicts, timeouts whose write may or may not have happened, dropped watches).
//! It runs in-process ([`apiserver::ApiServer::start`]) or as the `fake-apiserver` binary.

pub mod apiserver;
