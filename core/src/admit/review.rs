//! AdmissionReview bodies, as the API server sends them to a webhook: `admission.k8s.io/v1`,
//! or the `v1beta1` of DANM's era (the same shape). What does not parse is a bad request
//! (HTTP 400), never a panic.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};

/// Why a body is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    /// Not JSON of the AdmissionReview shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Shape(#[from] serde_json::Error),
    /// An `apiVersion`/`kind` other than AdmissionReview v1 or v1beta1.
    #[error(
        "apiVersion {api_version:?} kind {kind:?} is not admission.k8s.io/v1 or v1beta1 AdmissionReview"
    )]
    Version {
        /// As sent.
        api_version: String,
        /// As sent.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// An empty `request.uid` (the API server always sends one; a TenantNetwork's id is
    /// recorded under it).
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

/// Reads an AdmissionReview body (v1 or v1beta1) into its request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let types = &review.types;
    if types.kind != "AdmissionReview"
        || !matches!(
            types.api_version.as_str(),
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(BadReview::Version {
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    if request.uid.trim().is_empty() {
        return Err(BadReview::NoUid);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(api_version: &str, with_request: bool) -> Vec<u8> {
        let mut review = serde_json::json!({"apiVersion": api_version, "kind": "AdmissionReview"});
        if with_request {
            review["request"] = serde_json::json!({
                "uid": "u", "kind": {"group": "danm.io", "version": "v1", "kind": "DanmNet"},
                "resource": {"group": "danm.io", "version": "v1", "resource": "danmnets"},
                "operation": "CREATE", "userInfo": {},
                "object": {"metadata": {"name": "n"}, "spec": {}}
            });
        }
        serde_json::to_vec(&review).unwrap()
    }

    #[test]
    fn v1_and_v1beta1_are_read_and_keep_their_version() {
        for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
            let request = decode(&body(version, true)).unwrap();
            assert_eq!(request.types.api_version, version);
            assert_eq!(request.kind.kind, "DanmNet");
        }
    }

    #[test]
    fn what_is_not_a_review_is_a_bad_request() {
        assert!(matches!(decode(b"{"), Err(BadReview::Shape(_))));
        assert!(matches!(
            decode(&body("admission.k8s.io/v2", true)),
            Err(BadReview::Version { .. })
        ));
        assert!(matches!(
            decode(&body("admission.k8s.io/v1", false)),
            Err(BadReview::NoRequest)
        ));
        let mut no_uid: serde_json::Value =
            serde_json::from_slice(&body("admission.k8s.io/v1", true)).unwrap();
        no_uid["request"]["uid"] = " ".into();
        assert!(matches!(
            decode(&serde_json::to_vec(&no_uid).unwrap()),
            Err(BadReview::NoUid)
        ));
    }
}
