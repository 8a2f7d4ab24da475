//! control-plane: starts the test control plane (etcd, kube-apiserver,
//! kube-controller-manager, optionally kube-scheduler, with the danm.io CRDs) and keeps it
//! up until Ctrl-C, for poking at by hand with `kubectl` or our binaries. Test-only.

use clap::Parser;
use danm_testkit::control_plane::{ControlPlane, Options};

/// Runs the test control plane until Ctrl-C (test-only: loopback, generated certificates).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Also run kube-scheduler.
    #[arg(long)]
    scheduler: bool,
    /// Copy the administrator's kubeconfig here.
    #[arg(long)]
    kubeconfig_out: Option<std::path::PathBuf>,
    /// Panic once the control plane is up (the testkit's own tests use this to prove that
    /// nothing is left running after a panic).
    #[arg(long, hide = true)]
    panic: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let plane = ControlPlane::start(Options {
        scheduler: args.scheduler,
        ..Options::default()
    })
    .await?;
    if let Some(path) = &args.kubeconfig_out {
        std::fs::copy(plane.kubeconfig(), path)?;
    }
    println!("kubeconfig: {}", plane.kubeconfig().display());
    println!("kubectl: {}", plane.binary("kubectl").display());
    if args.panic {
        // Leaked on purpose: only the watchdog is left to stop the processes.
        std::mem::forget(plane);
        panic!("panicking with the control plane up, as asked");
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
