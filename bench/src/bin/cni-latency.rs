//! `cni-latency`: how long kubelet waits for the `danm` plugin. Runs `--iterations` ADD and
//! DEL of a pod with one macvlan interface, each timed from process start to exit, against
//! a real ipamd process (`--store memory`) on a veth parent in a fresh network namespace.
//! Needs root. Prints one JSON object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use danm_bench::stats::Latencies;
use serde_json::json;

/// Times the danm CNI plugin's ADD and DEL (process start to exit).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// ADD+DEL cycles.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// The ipamd binary (default: beside this one).
    #[arg(long)]
    ipamd: Option<PathBuf>,
    /// The danm binary (default: beside this one).
    #[arg(long)]
    danm: Option<PathBuf>,
}

fn beside(name: &str, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no directory")?.join(name);
    if !path.is_file() {
        bail!(
            "no {name} beside {}: cargo build --release -p danm-ipamd -p danm-cni -p danm-bench, or pass --{name} PATH",
            exe.display()
        );
    }
    Ok(path)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args(args)
        .status()
        .context("running ip")?;
    if !status.success() {
        bail!("ip {args:?} failed");
    }
    Ok(())
}

/// What is torn down at the end, whatever happens.
struct Scene {
    netns: String,
    veth: String,
    ipamd: Option<Child>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(mut c) = self.ipamd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
    }
}

fn run_plugin(danm: &Path, command: &str, netns: &str, config: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(danm)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "latency0")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=latency",
        )
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(config)?;
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!("{command} failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(elapsed)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ipamd = beside("ipamd", args.ipamd)?;
    let danm = beside("danm", args.danm)?;
    let id = std::process::id();
    let mut scene = Scene {
        netns: format!("danmlat{id}"),
        veth: format!("dlat{id}"),
        ipamd: None,
    };
    ip(&[
        "link",
        "add",
        &scene.veth,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}p", scene.veth),
    ])?;
    ip(&["link", "set", &scene.veth, "up"])?;
    ip(&["netns", "add", &scene.netns])?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("networks.yaml"),
        format!(
            "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: lat, namespace: default}}\nspec:\n  NetworkID: lat\n  NetworkType: macvlan\n  Options:\n    host_device: {}\n    cidr: 10.77.0.0/16\n",
            scene.veth
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    scene.ipamd = Some(
        Command::new(&ipamd)
            .args(["--store", "memory", "--listen", &listen, "--networks"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting ipamd")?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        if Instant::now() > deadline {
            bail!("ipamd did not listen on {listen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = json!({
        "cniVersion": "1.1.0", "name": "danm", "type": "danm", "ipamd": format!("http://{listen}"),
        "args": {"danm.io/interfaces": [{"network": "lat", "ip": "dynamic"}]}
    })
    .to_string();
    let netns = format!("/var/run/netns/{}", scene.netns);
    let (mut add, mut del, mut both) = (
        Latencies::default(),
        Latencies::default(),
        Latencies::default(),
    );
    for _ in 0..args.iterations {
        let a = run_plugin(&danm, "ADD", &netns, config.as_bytes())?;
        let d = run_plugin(&danm, "DEL", &netns, config.as_bytes())?;
        add.push(a);
        del.push(d);
        both.push(a + d);
    }
    let report = json!({
        "iterations": args.iterations,
        "interfaces": 1,
        "add_ms": add.summary(),
        "del_ms": del.summary(),
        "add_plus_del_ms": both.summary(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(scene);
    Ok(())
}
