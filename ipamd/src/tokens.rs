//! Node identity by ServiceAccount token (`--node-identity sa-token`), for clusters whose
//! kubelets' client certificates the plugin cannot present (k3s, RKE2, OpenShift, EKS keep
//! them elsewhere, or use tokens).
//!
//! The CNI installer's pod on each node holds a projected ServiceAccount token bound to
//! that pod (audience `danm-ipamd`, renewed by the kubelet); Kubernetes 1.30 and newer puts
//! the pod's node in such a token. The installer copies it onto the node, and the plugin
//! sends it as `authorization: Bearer ...`. ipamd asks the API server who it is
//! (TokenReview, for the audience): the installer's ServiceAccount, on the node the review
//! names (`authentication.kubernetes.io/node-name`), is that node. Answers are cached for a
//! minute by the token's hash, refusals for five seconds, and at most a few reviews run at
//! once: a flood of made-up tokens costs the API server little.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::authz::denied;

/// The extra key of a TokenReview's user that names a bound pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The audience of the installer's token (and of the reviews).
pub const DEFAULT_AUDIENCE: &str = "danm-ipamd";

/// How long an identity is trusted before the token is reviewed again.
const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Most tokens remembered (the cache is emptied when full).
const CACHE_LIMIT: usize = 8192;
/// Reviews in flight at once.
const CONCURRENT_REVIEWS: usize = 8;

/// A review's outcome (the node, or why not) and until when it holds.
type Remembered = (Result<String, String>, Instant);

/// See the module overview.
pub struct NodeTokens {
    client: kube::Client,
    audience: String,
    /// The user a node's token must name, e.g.
    /// `system:serviceaccount:danm-system:danm-cni-installer`.
    account: String,
    cache: Mutex<HashMap<[u8; 32], Remembered>>,
    reviews: Semaphore,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTokens")
            .field("audience", &self.audience)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl NodeTokens {
    /// Reviews tokens for `audience` through `client`, accepting those of `account`.
    pub fn new(client: kube::Client, audience: &str, account: &str) -> NodeTokens {
        NodeTokens {
            client,
            audience: audience.to_owned(),
            account: account.to_owned(),
            cache: Mutex::default(),
            reviews: Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The node `token` speaks for, or why not (PERMISSION_DENIED; UNAVAILABLE when the
    /// API server cannot answer).
    pub async fn node_of(&self, token: &str) -> Result<String, Status> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.cached(&key) {
            return known.map_err(denied);
        }
        let _turn = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Status::unavailable("ipamd is stopping"))?;
        // Another call may have reviewed the same token while this one waited.
        if let Some(known) = self.cached(&key) {
            return known.map_err(denied);
        }
        let outcome = self.review(token).await?;
        let ttl = if outcome.is_ok() {
            ACCEPTED_FOR
        } else {
            REFUSED_FOR
        };
        let mut cache = self.cache.lock().expect("lock");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, (outcome.clone(), Instant::now() + ttl));
        outcome.map_err(denied)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<String, String>> {
        let cache = self.cache.lock().expect("lock");
        cache
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(outcome, _)| outcome.clone())
    }

    /// One TokenReview: the node, or why the token names none (an API error is not a
    /// refusal: it is UNAVAILABLE, and not remembered).
    async fn review(&self, token: &str) -> Result<Result<String, String>, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot review the node's token with the API server: {e}"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(format!(
                "the token is not valid for audience {}{}",
                self.audience,
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.account {
            return Ok(Err(format!(
                "the token is {username}'s, not the node agent's ({})",
                self.account
            )));
        }
        let node = user
            .extra
            .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
            .and_then(|names| names.into_iter().next())
            .filter(|n| !n.is_empty());
        Ok(node.ok_or_else(|| {
            format!(
                "the token of {username} names no node: it must be bound to the node agent's pod \
                 (a projected ServiceAccount token, Kubernetes 1.30 or newer)"
            )
        }))
    }
}
