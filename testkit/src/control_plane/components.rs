//! The control plane's processes: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, each started with its arguments and the files it reads.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::credentials::{b64, write};
use super::process::Process;
use super::{
    CONTROLLERS, ControlPlane, Error, ISSUER, Options, SERVICE_CIDR, WEBHOOK_CLIENT, free_port,
};

impl ControlPlane {
    pub(super) fn spawn(&self, name: &str, args: Vec<String>) -> Result<(), Error> {
        let process = Process::spawn(
            &self._watchdog,
            &self.dir,
            name,
            &self.bin_dir.join(name),
            &args,
        )?;
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process);
        Ok(())
    }

    /// Starts etcd; returns its client URL.
    pub(super) fn start_etcd(&self, options: &Options) -> Result<String, Error> {
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let data = options
            .etcd_data_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("etcd"));
        self.spawn(
            "etcd",
            vec![
                "--name=default".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=default={peer}"),
                format!("--unsafe-no-fsync={}", !options.etcd_fsync),
                // 4 GiB: room for the scale tests' hundreds of thousands of objects.
                "--quota-backend-bytes=4294967296".into(),
                "--log-level=warn".into(),
            ],
        )?;
        Ok(client)
    }

    /// The AdmissionConfiguration that makes the API server present a client certificate
    /// (CN [`WEBHOOK_CLIENT`], signed by the CA) to every admission webhook it calls, as a
    /// cluster administrator configures it so that webhooks can tell the API server from
    /// anyone else (`kubeConfigFile`, user `*`); its path.
    fn admission_config(&self) -> Result<PathBuf, Error> {
        let cert = self.pki.client_cert(WEBHOOK_CLIENT, &[])?;
        let kubeconfig = self.dir.join("webhook-client.kubeconfig");
        let text = serde_json::to_string_pretty(&json!({
            "apiVersion": "v1",
            "kind": "Config",
            "users": [{"name": "*", "user": {
                "client-certificate-data": b64(&cert.cert_pem),
                "client-key-data": b64(&cert.key_pem),
            }}],
        }))
        .expect("a kubeconfig serializes");
        write(&kubeconfig, &text)?;
        let config = self.dir.join("admission.yaml");
        let plugin = |name: &str, kind: &str| {
            json!({"name": name, "configuration": {
                "apiVersion": "apiserver.config.k8s.io/v1",
                "kind": kind,
                "kubeConfigFile": kubeconfig.display().to_string(),
            }})
        };
        let text = serde_json::to_string_pretty(&json!({
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                plugin("MutatingAdmissionWebhook", "WebhookAdmissionConfiguration"),
                plugin("ValidatingAdmissionWebhook", "WebhookAdmissionConfiguration"),
            ],
        }))
        .expect("an AdmissionConfiguration serializes");
        write(&config, &text)?;
        Ok(config)
    }

    pub(super) fn start_apiserver(&self, port: u16, etcd: &str) -> Result<(), Error> {
        let admission = self.admission_config()?;
        let pki = &self.pki;
        let file = |p: &Path| p.display().to_string();
        self.spawn(
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", file(&pki.serving_cert_file)),
                format!("--tls-private-key-file={}", file(&pki.serving_key_file)),
                format!("--client-ca-file={}", file(&pki.ca_file)),
                format!("--service-account-issuer={ISSUER}"),
                format!("--service-account-key-file={}", file(&pki.sa_pub_file)),
                format!(
                    "--service-account-signing-key-file={}",
                    file(&pki.sa_key_file)
                ),
                "--authorization-mode=RBAC".into(),
                format!("--admission-control-config-file={}", file(&admission)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                // The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints
                // refuse: no reconciler.
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )
    }

    /// The flags kube-controller-manager and kube-scheduler share: the administrator's
    /// kubeconfig, no leader election, serving on a free loopback port.
    fn component_args(&self) -> Vec<String> {
        let kubeconfig = self.admin_kubeconfig.display().to_string();
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            "--v=1".into(),
        ]
    }

    pub(super) fn start_controller_manager(&self, options: &Options) -> Result<(), Error> {
        let mut args = self.component_args();
        let mut controllers = CONTROLLERS.to_owned();
        if options.pod_gc {
            controllers.push_str(",podgc");
        }
        if options.node_lifecycle {
            controllers.push_str(",nodelifecycle");
        }
        if options.cron_jobs {
            controllers.push_str(",cronjob");
        }
        args.extend([
            format!("--controllers={controllers}"),
            format!("--cert-dir={}", self.dir.join("kcm-certs").display()),
            format!(
                "--service-account-private-key-file={}",
                self.pki.sa_key_file.display()
            ),
            format!("--root-ca-file={}", self.pki.ca_file.display()),
            "--use-service-account-credentials=false".into(),
            "--cluster-name=danm-testkit".into(),
        ]);
        self.spawn("kube-controller-manager", args)
    }

    pub(super) fn start_scheduler(&self) -> Result<(), Error> {
        let mut args = self.component_args();
        args.push(format!(
            "--cert-dir={}",
            self.dir.join("scheduler-certs").display()
        ));
        self.spawn("kube-scheduler", args)
    }
}
