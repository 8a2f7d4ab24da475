//! Taking TLS connections, as ipamd's gRPC port and the webhook both do: [`accept`] the
//! next TCP connection (an accept error is retried, not fatal), then [`handshake`] within
//! [`HANDSHAKE_TIMEOUT`], a failure counted and logged once, not per byte a scanner sends.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete its TLS handshake: a connection that sends nothing
/// must not hold a slot for longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an accept error (out of file descriptors, say) pauses the accept loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The next connection of `listener`, with Nagle's algorithm off: answers are small
/// writes, and without this the client's delayed ACK adds about 40 ms to each. An accept
/// error is logged and retried after 100 ms.
pub async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return (tcp, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// `tcp`'s TLS session once its handshake is done, within [`HANDSHAKE_TIMEOUT`]; `None`
/// when it fails or times out, which is counted in `failures` and logged (at debug: a
/// client without a certificate, a port scanner or plaintext is not the server's fault).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    failures: &Counter,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}
