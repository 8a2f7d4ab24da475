//! ipamd over mutual TLS stopped mid-load (in-process, memory store): 32 callers on four
//! TLS connections allocate until the server is told to stop. The server returns, its
//! listener is closed, every call either got its address or was refused in a way that says
//! it was never carried out (`danm_proto::status::never_carried_out`, which the CNI turns
//! into "try again later"), and the store holds exactly the answered allocations: nothing
//! was written for a call that got no answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{add_networks, alloc};
use danm_ipamd::engine::Engine;
use danm_ipamd::server::{ServeOptions, serve_with};
use danm_ipamd::store::Store;
use danm_ipamd::store::memory::MemoryStore;
use danm_ipamd::tls::TlsFiles;
use danm_ipamd::worker::WorkerConfig;
use danm_proto::status::never_carried_out;
use danm_proto::v1::ipam_client::IpamClient;
use danm_testkit::pki::{TestCa, Usage};
use tokio::sync::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const NETWORK: &str = "
apiVersion: danm.io/v1
kind: DanmNet
metadata: {name: big, namespace: default}
spec:
  NetworkID: big
  Options: {cidr: 10.64.0.0/16}
";

/// Calls answered before the server is told to stop.
const ANSWERED_BEFORE_STOP: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_stopped_mid_load_answers_or_refuses_every_call_and_writes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    ca.issue_files("server", "danm-ipamd", None, &["localhost"], Usage::Server);
    ca.issue_files("client", "danm-cleaner", None, &[], Usage::Client);
    let tls = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server-key.pem"),
        client_ca: vec![ca.path()],
        client_cert_optional: false,
    }
    .server_config(Duration::from_secs(10))
    .unwrap()
    .0;

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    add_networks(store.as_ref(), NETWORK).await;
    let engine = Engine::start(store, WorkerConfig::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServeOptions {
        tls: Some(tls),
        ..ServeOptions::default()
    };
    let server = tokio::spawn(serve_with(
        Arc::clone(&engine),
        listener,
        options,
        async move {
            let _ = stopped.await;
        },
    ));

    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("client.pem"),
            read("client-key.pem"),
        ))
        .domain_name("localhost");
    let mut channels = Vec::new();
    for _ in 0..4 {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(client_tls.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(channel);
    }

    // Each caller allocates for new owners until a call fails.
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(bool, String)>::new()));
    let callers: Vec<_> = (0..32)
        .map(|caller| {
            let mut client = IpamClient::new(channels[caller % channels.len()].clone());
            let (answered, refused) = (Arc::clone(&answered), Arc::clone(&refused));
            tokio::spawn(async move {
                for n in 0.. {
                    let cid = format!("c{caller}-{n}");
                    match client.allocate(alloc("big", &cid, "dynamic", "")).await {
                        Ok(_) => answered.lock().await.push(cid),
                        Err(s) => {
                            let never_carried_out = never_carried_out(&s);
                            refused
                                .lock()
                                .await
                                .push((never_carried_out, format!("{s:?}")));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    while answered.lock().await.len() < ANSWERED_BEFORE_STOP {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    for caller in callers {
        tokio::time::timeout(Duration::from_secs(20), caller)
            .await
            .expect("every caller gets an answer or a refusal")
            .unwrap();
    }

    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let refused = refused.lock().await.clone();
    let otherwise: Vec<&String> = refused
        .iter()
        .filter(|(never_carried_out, _)| !never_carried_out)
        .map(|(_, status)| status)
        .collect();
    assert!(otherwise.is_empty(), "calls cut off: {otherwise:?}");
    // Exactly the answered allocations are stored.
    let answered = answered.lock().await.len();
    let stored = engine.list_allocations(None).await.unwrap().len();
    println!("{answered} answered, {} refused", refused.len());
    assert_eq!(
        stored, answered,
        "an allocation was written without its answer"
    );
}
