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
//! minute by the token's hash, refusals for five seconds (apart: a flood of refusals never
//! evicts a node's answer); a token whose own claims do not name the audience and the
//! account is refused without asking; at most a few reviews run at once and a call waits
//! for one at most two seconds (then UNAVAILABLE, "try again"): a flood of made-up tokens
//! costs the API server little and holds no node's call for long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::wire::denied;

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
/// How long a call waits for a review slot.
const REVIEW_WAIT: Duration = Duration::from_secs(2);

/// See the module overview.
pub struct NodeTokens {
    client: kube::Client,
    audience: String,
    /// The user a node's token must name, e.g.
    /// `system:serviceaccount:danm-system:danm-cni-installer`.
    account: String,
    accepted: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    refused: Mutex<HashMap<[u8; 32], (String, Instant)>>,
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
            accepted: Mutex::default(),
            refused: Mutex::default(),
            reviews: Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The node `token` speaks for, or why not (PERMISSION_DENIED; UNAVAILABLE when the
    /// API server cannot answer, or no review slot frees in time).
    pub async fn node_of(&self, token: &str) -> Result<String, Status> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.cached(&key) {
            return known.map_err(denied);
        }
        if let Err(why) = plausible(token, &self.audience, &self.account) {
            self.remember(key, Err(why.clone()));
            return Err(denied(why));
        }
        let _turn = tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire())
            .await
            .map_err(|_| Status::unavailable("too many node tokens are being reviewed; try again"))?
            .map_err(|_| Status::unavailable("ipamd is stopping"))?;
        // Another call may have reviewed the same token while this one waited.
        if let Some(known) = self.cached(&key) {
            return known.map_err(denied);
        }
        let outcome = self.review(token).await?;
        self.remember(key, outcome.clone());
        outcome.map_err(denied)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<String, String>> {
        let now = Instant::now();
        let fresh = |map: &Mutex<HashMap<[u8; 32], (String, Instant)>>| {
            map.lock()
                .expect("lock")
                .get(key)
                .filter(|(_, until)| now < *until)
                .map(|(value, _)| value.clone())
        };
        fresh(&self.accepted)
            .map(Ok)
            .or_else(|| fresh(&self.refused).map(Err))
    }

    fn remember(&self, key: [u8; 32], outcome: Result<String, String>) {
        let (map, value, ttl) = match outcome {
            Ok(node) => (&self.accepted, node, ACCEPTED_FOR),
            Err(why) => (&self.refused, why, REFUSED_FOR),
        };
        let mut map = map.lock().expect("lock");
        if map.len() >= CACHE_LIMIT {
            let now = Instant::now();
            map.retain(|_, (_, until)| now < *until);
            if map.len() >= CACHE_LIMIT {
                map.clear();
            }
        }
        map.insert(key, (value, Instant::now() + ttl));
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

/// Refuses, without asking the API server, a token whose own (unverified) claims do not
/// name this audience and account: a made-up or stray token costs no review.
fn plausible(token: &str, audience: &str, account: &str) -> Result<(), String> {
    use base64::Engine as _;
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .ok_or_else(|| "the token is not valid: not a ServiceAccount token (a JWT)".to_owned())?;
    let audience_ok = match &claims["aud"] {
        serde_json::Value::String(a) => *a == audience,
        serde_json::Value::Array(all) => all.iter().any(|a| *a == *audience),
        _ => false,
    };
    if !audience_ok {
        return Err(format!("the token is not valid for audience {}", audience));
    }
    if claims["sub"] != *account {
        return Err(format!(
            "the token is {}'s, not the node agent's ({})",
            claims["sub"].as_str().unwrap_or("nobody"),
            account
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::plausible;
    use base64::Engine as _;

    const ACCOUNT: &str = "system:serviceaccount:danm-system:danm-cni-installer";

    fn jwt(claims: serde_json::Value) -> String {
        let part = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            part(&serde_json::json!({"alg": "RS256"})),
            part(&claims)
        )
    }

    #[test]
    fn only_tokens_claiming_the_audience_and_the_account_are_reviewed() {
        let right = jwt(serde_json::json!({"aud": ["danm-ipamd"], "sub": ACCOUNT}));
        assert_eq!(plausible(&right, "danm-ipamd", ACCOUNT), Ok(()));
        let single = jwt(serde_json::json!({"aud": "danm-ipamd", "sub": ACCOUNT}));
        assert_eq!(plausible(&single, "danm-ipamd", ACCOUNT), Ok(()));
        for (token, says) in [
            ("not.a.token".to_owned(), "not a ServiceAccount token"),
            ("".to_owned(), "not a ServiceAccount token"),
            (
                jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc"], "sub": ACCOUNT})),
                "not valid for audience danm-ipamd",
            ),
            (
                jwt(serde_json::json!({"sub": ACCOUNT})),
                "not valid for audience",
            ),
            (
                jwt(
                    serde_json::json!({"aud": ["danm-ipamd"], "sub": "system:serviceaccount:x:default"}),
                ),
                "system:serviceaccount:x:default's, not the node agent's",
            ),
        ] {
            let why = plausible(&token, "danm-ipamd", ACCOUNT).unwrap_err();
            assert!(why.contains(says), "{token}: {why}");
        }
    }
}
