//! A node of the end-to-end cluster: its `Node` object, and an agent that plays kubelet's
//! network part for the pods the scheduler binds to it.
//!
//! For each pod bound here the agent makes a network namespace, calls CNI ADD through the
//! real `danm` binary inside the node's namespace (with the node's `00-danm.conf` and the
//! node's client certificate, CN `system:node:<node>`, as a kubelet's), and writes the
//! pod's status (IPs, Running, Ready) through the status subresource. When the pod is being
//! deleted it calls CNI DEL, removes the namespace and deletes the pod for good (grace 0,
//! conditional on its UID), as kubelet does once the containers are gone. A failed ADD is
//! retried every second, as kubelet retries a sandbox, and published as kubelet's
//! `FailedCreatePodSandBox` Warning Event on the pod.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::fabric::{Machine, unique};

/// One pod's sandbox: its namespace and the container id CNI knows it by.
#[derive(Clone, Debug)]
struct Sandbox {
    netns: String,
    container_id: String,
}

/// What a node needs to run pods.
#[derive(Debug)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// The `danm` binary.
    pub danm: PathBuf,
    /// `00-danm.conf`.
    pub cni_config: Value,
}

/// A running node: drop it to stop its agent (its namespaces stay until [`NodeAgent::kill`] or
/// the machine is dropped).
#[derive(Debug)]
pub struct NodeAgent {
    /// The node's name.
    pub name: String,
    /// Its machine.
    pub machine: Arc<Machine>,
    task: tokio::task::JoinHandle<()>,
    sandboxes: Arc<Mutex<HashMap<String, Sandbox>>>,
}

impl Drop for NodeAgent {
    /// The agent stops and every pod namespace goes, with no CNI DEL (a test that fails
    /// half-way leaves nothing on the machine).
    fn drop(&mut self) {
        self.task.abort();
        for sandbox in self.sandboxes.lock().expect("lock").values() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &sandbox.netns])
                .status();
        }
    }
}

impl NodeAgent {
    /// Registers the Node object (Ready, with room for 250 pods) and starts the agent.
    pub async fn start(
        client: kube::Client,
        machine: Arc<Machine>,
        config: NodeConfig,
    ) -> NodeAgent {
        register(&client, &config.name, &machine.address).await;
        let sandboxes = Arc::new(Mutex::new(HashMap::new()));
        let agent = Agent {
            client,
            machine: Arc::clone(&machine),
            config: Arc::new(config),
            sandboxes: Arc::clone(&sandboxes),
        };
        let name = agent.config.name.clone();
        let task = tokio::spawn(agent.run());
        NodeAgent {
            name,
            machine,
            task,
            sandboxes,
        }
    }

    /// The namespace of a running pod's sandbox, by pod UID.
    pub fn sandbox_netns(&self, pod_uid: &str) -> Option<String> {
        self.sandboxes
            .lock()
            .expect("lock")
            .get(pod_uid)
            .map(|s| s.netns.clone())
    }

    /// The node dies: its agent stops and every pod namespace vanishes, with no CNI DEL.
    pub fn kill(self) {
        drop(self);
    }
}

/// Creates the Node object and marks it Ready.
async fn register(client: &kube::Client, name: &str, address: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .expect("a Node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("the Node is created");
    let room = json!({"cpu": "16", "memory": "32Gi", "pods": "250"});
    let status = json!({"status": {
        "capacity": room, "allocatable": room,
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "danm-rs e2e node agent", "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("the Node's status is written");
    // The API server taints a new Node not-ready; the node lifecycle controller (which
    // this control plane does not run: no kubelet heartbeats) lifts it once Ready.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": null}})),
        )
        .await
        .expect("the Node's taints are lifted");
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

struct Agent {
    client: kube::Client,
    machine: Arc<Machine>,
    config: Arc<NodeConfig>,
    sandboxes: Arc<Mutex<HashMap<String, Sandbox>>>,
}

impl Agent {
    async fn run(self) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let selector =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.name));
        let mut events = watcher::watcher(pods, selector).boxed();
        let shared = Arc::new(self);
        let mut busy: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        while let Some(event) = events.next().await {
            let pods = match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    vec![(pod, false)]
                }
                Ok(watcher::Event::Delete(pod)) => vec![(pod, true)],
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "pod watch failed; it restarts");
                    Vec::new()
                }
            };
            for (pod, gone) in pods {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                busy.retain(|_, task| !task.is_finished());
                if busy.contains_key(&uid) && !gone && pod.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                let agent = Arc::clone(&shared);
                let previous = busy.remove(&uid);
                busy.insert(
                    uid,
                    tokio::spawn(async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        agent.handle(pod, gone).await;
                    }),
                );
            }
        }
    }

    async fn handle(self: Arc<Self>, pod: Pod, gone: bool) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if gone || pod.metadata.deletion_timestamp.is_some() {
            self.tear_down(&pod, &uid).await;
            if !gone {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace(&pod));
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let _ = pods.delete(&name(&pod), &params).await;
            }
            return;
        }
        if self.sandboxes.lock().expect("lock").contains_key(&uid) {
            return;
        }
        let mut reported = String::new();
        loop {
            match self.set_up(&pod, &uid).await {
                Ok(()) => return,
                Err(why) => {
                    tracing::info!(pod = %format!("{}/{}", namespace(&pod), name(&pod)), %why, "sandbox not ready; retrying");
                    // As kubelet: a Warning Event on the pod, once per distinct failure.
                    if why != reported {
                        self.sandbox_failed(&pod, &why).await;
                        reported = why;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace(&pod));
                    match pods.get_opt(&name(&pod)).await {
                        Ok(Some(p))
                            if p.metadata.uid.as_deref() == Some(&uid)
                                && p.metadata.deletion_timestamp.is_none() => {}
                        _ => return,
                    }
                }
            }
        }
    }

    /// Publishes kubelet's `FailedCreatePodSandBox` Warning Event on `pod`.
    async fn sandbox_failed(&self, pod: &Pod, why: &str) {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &namespace(pod));
        let event = json!({
            "metadata": {"generateName": format!("{}.", name(pod))},
            "involvedObject": {"kind": "Pod", "namespace": namespace(pod), "name": name(pod),
                               "uid": pod.metadata.uid, "apiVersion": "v1"},
            "reason": "FailedCreatePodSandBox",
            "message": format!("Failed to create pod sandbox: plugin type=\"danm\" failed (add): {why}"),
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.config.name},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        });
        let event = serde_json::from_value(event).expect("an Event");
        if let Err(e) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(error = %e, "cannot publish the sandbox's failure");
        }
    }

    async fn set_up(self: &Arc<Self>, pod: &Pod, uid: &str) -> Result<(), String> {
        let sandbox = Sandbox {
            netns: unique("e2ep"),
            container_id: format!("{}{}", uid.replace('-', ""), unique("c")),
        };
        // Processes run off the async threads: 200 pods at once must not stall the watch.
        let (agent, p, u, s) = (
            Arc::clone(self),
            pod.clone(),
            uid.to_owned(),
            sandbox.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            crate::fabric::ip(&["netns", "add", &s.netns]);
            let result = agent.cni("ADD", &p, &u, &s);
            if result.is_err() {
                let _ = agent.cni("DEL", &p, &u, &s);
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &s.netns])
                    .status();
            }
            result
        })
        .await
        .map_err(|e| format!("the ADD task: {e}"))??;
        self.sandboxes
            .lock()
            .expect("lock")
            .insert(uid.to_owned(), sandbox);
        let ips = pod_ips(&result);
        let containers: Vec<Value> = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers.iter().map(|c| json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now()}},
            })).collect()
            })
            .unwrap_or_default();
        let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now()});
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": self.machine.address,
            "hostIPs": [{"ip": self.machine.address}],
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "startTime": now(),
            "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")],
            "containerStatuses": containers,
        }});
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace(pod));
        pods.patch_status(&name(pod), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| format!("writing the pod's status: {e}"))?;
        Ok(())
    }

    async fn tear_down(self: &Arc<Self>, pod: &Pod, uid: &str) {
        let sandbox = self.sandboxes.lock().expect("lock").remove(uid);
        if let Some(sandbox) = sandbox {
            let (agent, pod, uid) = (Arc::clone(self), pod.clone(), uid.to_owned());
            let _ = tokio::task::spawn_blocking(move || {
                // As kubelet, a failed DEL is retried: the pod is not finished before its
                // network is torn down.
                for attempt in 1..=60 {
                    match agent.cni("DEL", &pod, &uid, &sandbox) {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::info!(error = %e, attempt, "CNI DEL failed; retrying");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                    }
                }
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &sandbox.netns])
                    .status();
            })
            .await;
        }
    }

    /// Runs `danm` in the node's namespace as a runtime does; the result on success.
    fn cni(&self, command: &str, pod: &Pod, uid: &str, sandbox: &Sandbox) -> Result<Value, String> {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={uid}",
            namespace(pod),
            name(pod),
            sandbox.container_id
        );
        let plugins = self.config.danm.parent().expect("the plugin's folder");
        let mut child = self
            .machine
            .command(&self.config.danm)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", format!("/var/run/netns/{}", sandbox.netns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{}:/usr/lib/cni", plugins.display()))
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run danm: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(self.config.cni_config.to_string().as_bytes())
            .map_err(|e| format!("danm's stdin: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("danm: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "CNI {command}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("CNI {command} result: {e}"))
    }
}

/// The pod's IPs as kubelet reports them: one per family, of the interface `eth0` (the
/// pod's primary), from a CNI result.
fn pod_ips(result: &Value) -> Vec<String> {
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["name"].as_str().unwrap_or_default())
        .collect();
    let mut ips: Vec<String> = Vec::new();
    for ip in result["ips"].as_array().into_iter().flatten() {
        let on_eth0 = ip["interface"]
            .as_u64()
            .and_then(|i| names.get(i as usize))
            .is_some_and(|n| *n == "eth0");
        let Some(address) = ip["address"].as_str().and_then(|a| a.split('/').next()) else {
            continue;
        };
        let v6 = address.contains(':');
        if on_eth0 && !ips.iter().any(|known| known.contains(':') == v6) {
            ips.push(address.to_owned());
        }
    }
    ips
}

fn namespace(pod: &Pod) -> String {
    pod.metadata.namespace.clone().unwrap_or_default()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}
