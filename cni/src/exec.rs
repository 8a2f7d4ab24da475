//! The one place that talks to the runtime: reads the environment and stdin, calls the
//! plugin, writes the result or the error JSON to stdout, and picks the exit code.

use std::io::{Read, Write};
use std::process::ExitCode;

use async_trait::async_trait;
use serde_json::Value;

use crate::protocol::{CniError, CniResult, Command, ErrorCode, Request, version_reply};

/// A CNI plugin's logic; [`run`] does the protocol around it.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// ADD: returns the result for the runtime.
    async fn add(&self, request: &Request) -> Result<CniResult, CniError>;
    /// DEL: must succeed when there is nothing left to delete.
    async fn del(&self, request: &Request) -> Result<(), CniError>;
    /// CHECK.
    async fn check(&self, request: &Request) -> Result<(), CniError>;
    /// STATUS: whether ADD can be served.
    async fn status(&self, request: &Request) -> Result<(), CniError>;
    /// GC: release what is not in `cni.dev/valid-attachments`.
    async fn gc(&self, request: &Request) -> Result<(), CniError>;
}

/// Runs one plugin call with this process's environment, stdin and stdout.
pub async fn run(plugin: &dyn Plugin) -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return emit_error(
            "1.1.0",
            &CniError::new(ErrorCode::IoFailure, "cannot read stdin", e.to_string()),
        );
    }
    let (version, outcome) = handle(plugin, &|k| std::env::var(k).ok(), &stdin).await;
    match outcome {
        Ok(Some(out)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => emit_error(&version, &e),
    }
}

/// The protocol without process I/O: returns the version to answer in and what to print
/// (nothing for DEL, STATUS and GC).
pub async fn handle(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> (String, Result<Option<Value>, CniError>) {
    let request = match Request::parse(env, stdin) {
        Ok(r) => r,
        Err(e) => {
            let version = serde_json::from_slice::<Value>(stdin)
                .ok()
                .and_then(|c| {
                    c.get("cniVersion")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "1.1.0".to_owned());
            return (version, Err(e));
        }
    };
    let version = request.version.clone();
    let outcome = match request.command {
        Command::Version => Ok(Some(version_reply(&version))),
        Command::Add => plugin
            .add(&request)
            .await
            .map(|r| Some(r.to_json(&version))),
        Command::Del => plugin.del(&request).await.map(|()| None),
        Command::Check => plugin.check(&request).await.map(|()| None),
        Command::Status => plugin.status(&request).await.map(|()| None),
        Command::Gc => plugin.gc(&request).await.map(|()| None),
    };
    (version, outcome)
}

fn emit_error(version: &str, error: &CniError) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", error.to_json(version));
    let _ = writeln!(std::io::stderr(), "{error}");
    ExitCode::FAILURE
}
