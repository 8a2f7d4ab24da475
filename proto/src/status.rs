//! Reading a failed call's status as a client of ipamd.

use tonic::{Code, Status};

/// Whether a failed call is known not to have been carried out by the server, so that
/// trying it again (on another replica) is safe and expected: ipamd is unavailable or
/// stopping. That is UNAVAILABLE; CANCELLED by the client's own transport (a call still
/// queued on a connection that closed, never sent); and a stream the server refused with
/// an HTTP/2 GOAWAY as it began to stop (the server processes no stream above the GOAWAY's
/// last one), which tonic reports as INTERNAL.
pub fn never_carried_out(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Cancelled | Code::Internal => {
            let mut source = std::error::Error::source(status);
            while let Some(error) = source {
                if let Some(h2) = error.downcast_ref::<h2::Error>() {
                    return h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
                }
                if let Some(hyper) = error.downcast_ref::<hyper::Error>()
                    && hyper.is_canceled()
                {
                    return true;
                }
                source = error.source();
            }
            false
        }
        _ => false,
    }
}

/// A status for a person: its code and message, and the causes behind a transport error
/// (a refused TLS handshake is only "transport error" without them).
pub fn describe(status: &Status) -> String {
    let causes = std::error::Error::source(status)
        .map(|e| format!(" ({})", crate::client::source_chain(e)))
        .unwrap_or_default();
    format!("{:?}: {}{causes}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_transport_refusals_were_never_carried_out() {
        assert!(never_carried_out(&Status::unavailable("ipamd is stopping")));
        // A status the server sent, whatever its code, was carried out by it.
        assert!(!never_carried_out(&Status::cancelled("the caller gave up")));
        assert!(!never_carried_out(&Status::internal(
            "a store write failed"
        )));
        assert!(!never_carried_out(&Status::resource_exhausted("full")));
        // A stream reset by the server (not a GOAWAY) may have been carried out.
        let reset = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert!(!never_carried_out(&reset));
    }
}
