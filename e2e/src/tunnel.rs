//! A way from a node's namespace to a service of the host (ipamd, the API server): this
//! machine lets namespaces talk to each other but drops what they send to the host's own
//! addresses. So each service is offered inside the node's namespace on its loopback, and
//! every connection made there is carried to the host through a unix socket (the file
//! system is shared by every namespace): a listener in the node's namespace, a unix
//! socket, a dialer in the host's. What a node's process sees is a local port, as a
//! kubelet sees a Service's address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Offers `target` (a host address) on `127.0.0.1:<port>` inside the namespace at
/// `netns_path`; returns the port. `dir` holds the unix socket. Runs on two threads of its
/// own for as long as the process lives (the namespace's end ends the listener).
pub fn offer(netns_path: &Path, dir: &Path, target: SocketAddr) -> u16 {
    let socket = dir.join(format!("tunnel-{}.sock", target.port()));
    let host_side = UnixListener::bind_std(&socket);
    spawn_host_side(host_side, target);
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let netns_path = netns_path.to_owned();
    std::thread::spawn(move || {
        let inside = std::fs::File::open(&netns_path).expect("the node's namespace");
        nix::sched::setns(&inside, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("entering the node's namespace");
        // This thread now lives in the node's namespace: its sockets are created there.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port in the node's namespace");
            port_tx
                .send(listener.local_addr().expect("bound").port())
                .expect("the caller waits");
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect(&socket).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    });
    port_rx.recv().expect("the tunnel's port")
}

trait BindStd {
    fn bind_std(path: &Path) -> std::os::unix::net::UnixListener;
}

impl BindStd for UnixListener {
    fn bind_std(path: &Path) -> std::os::unix::net::UnixListener {
        let _ = std::fs::remove_file(path);
        let listener =
            std::os::unix::net::UnixListener::bind(path).expect("a unix socket for the tunnel");
        listener.set_nonblocking(true).expect("non-blocking");
        listener
    }
}

fn spawn_host_side(listener: std::os::unix::net::UnixListener, target: SocketAddr) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = UnixListener::from_std(listener).expect("a tokio unix listener");
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    });
}

/// The path of a namespace made by `ip netns add`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Whether a TCP connection from the namespace `from` reaches `address:port` served in the
/// namespace `to` (a listener there, a connection and a few bytes): what two pods' processes
/// would do over their interfaces.
pub fn tcp_reaches(from: &str, to: &str, address: std::net::IpAddr, port: u16) -> bool {
    tcp_probe(from, to, address, port) == Reach::Reached
}

/// What a TCP probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The bytes arrived at the listener.
    Reached,
    /// Refused at once (a TCP reset: a REJECT, or nobody listening).
    Refused,
    /// Nothing within the timeout (dropped, or no route).
    Silent,
}

/// A connection from the namespace `from` to `address:port`, served for the probe in the
/// namespace `to`; the listener ends with the probe, whatever happened.
pub fn tcp_probe(from: &str, to: &str, address: std::net::IpAddr, port: u16) -> Reach {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    fn enter(name: &str) -> Result<(), String> {
        let file = std::fs::File::open(netns_path(name)).map_err(|e| e.to_string())?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
    }
    let target = SocketAddr::new(address, port);
    let to = to.to_owned();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = std::sync::Arc::clone(&done);
    let server = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        enter(&to)?;
        let listener =
            std::net::TcpListener::bind(target).map_err(|e| format!("bind {target}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Acquire) || Instant::now() > deadline {
                        return Err("no connection".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut got = vec![0u8; 4];
        std::io::Read::read_exact(&mut stream, &mut got).map_err(|e| e.to_string())?;
        Ok(got)
    });
    if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        done.store(true, Ordering::Release);
        let _ = server.join();
        return Reach::Silent;
    }
    let from = from.to_owned();
    let client = std::thread::spawn(move || -> Result<(), std::io::Error> {
        enter(&from).map_err(std::io::Error::other)?;
        let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        std::io::Write::write_all(&mut stream, b"ping")
    });
    let sent = client
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
    done.store(true, Ordering::Release);
    let received = matches!(server.join(), Ok(Ok(bytes)) if bytes == b"ping");
    match sent {
        Ok(()) if received => Reach::Reached,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        _ => Reach::Silent,
    }
}
