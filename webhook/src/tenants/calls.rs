//! The API calls of [`super`]: bounded in time, their failures sorted (a lost write race
//! against everything else), and the backoff after a lost race.

use std::time::Duration;

use super::TenantsError;

/// Jittered exponential backoff after a lost write race: 5-10 ms, doubling up to 80-160 ms.
/// Short, because a write holds a whole batch: the race is only as long as one write.
pub(super) async fn backoff(attempt: u32) {
    let base = 5u64 << attempt.min(4);
    tokio::time::sleep(Duration::from_millis(base + fastrand::u64(..base))).await;
}

/// How long one TenantConfig or TenantNetwork call may take: a hung call must not hold
/// every admission waiting behind it until the API server gives up on them.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// How a call of [`bounded`] failed.
#[derive(Clone, Debug, thiserror::Error)]
pub(super) enum CallError {
    /// 409: another writer changed the object first.
    #[error("changed meanwhile by another writer")]
    Conflict,
    /// Any other answer of the API server.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer, or none within [`API_TIMEOUT`].
    #[error("unreachable: {0}")]
    Unreachable(String),
}

impl CallError {
    /// The error to report for TenantConfig `name`.
    pub(super) fn of(&self, name: &str) -> TenantsError {
        match self {
            CallError::Conflict => TenantsError::Busy(name.to_owned()),
            CallError::Refused(reason) => TenantsError::Refused {
                name: name.to_owned(),
                reason: reason.clone(),
            },
            CallError::Unreachable(reason) => TenantsError::Unreachable {
                name: name.to_owned(),
                reason: reason.clone(),
            },
        }
    }
}

/// `call`, within [`API_TIMEOUT`] (a write that timed out may still have landed: an id it
/// recorded is freed by the reconciliation, as for any failed create).
pub(super) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(kube::Error::Api(e))) if e.code == 409 => Err(CallError::Conflict),
        Ok(Err(kube::Error::Api(e))) => Err(CallError::Refused(e.message)),
        Ok(Err(e)) => Err(CallError::Unreachable(e.to_string())),
        Err(_) => Err(CallError::Unreachable(format!(
            "no answer within {} s",
            API_TIMEOUT.as_secs()
        ))),
    }
}
