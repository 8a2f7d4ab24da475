//! `danm` run by hand rather than by a container runtime (a runtime passes everything in
//! `CNI_*` variables and no argument): `--help`, `--version`, and `health`, the question the
//! CNI installer asks before it makes `danm` a node's CNI.
//!
//! `danm health [--service NAME] ADDRESS` asks ipamd's plaintext health port
//! (`--health-listen`; the `health` port of the `danm-ipamd` Service) whether `NAME`
//! (default [`health::DEFAULT_NETWORK`]) is SERVING. Exit codes: 0 serving, 1 not serving
//! or not reachable (the reason on stderr), 2 a usage error.

use std::process::ExitCode;
use std::time::Duration;

use danm_proto::health;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long one health question may take, connection included.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

const USAGE: &str = "\
danm: the DANM CNI metaplugin. A container runtime runs it with CNI_COMMAND and the other
CNI_* variables set and the network configuration on stdin (see docs/cni.md); nothing else
is needed on the node.

By hand:
  danm health [--service NAME] ADDRESS
      Asks ipamd's plaintext health port (ADDRESS: host:port or http://host:port, the
      `health` port of the danm-ipamd Service) whether NAME is SERVING. NAME defaults to
      danm.io/default-network: ipamd can allocate and serves a network named `default`,
      which the CNI installer waits for before it writes 00-danm.conf. Other names:
      danm.ipam.v1.Ipam (ipamd can allocate). Exit 0 serving, 1 not (the reason on
      stderr), 2 a usage error.
  danm --version
  danm --help
";

/// What the arguments ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `health`: whether `service` is SERVING at `address` (an `http://` URL).
    Health { address: String, service: String },
}

/// Reads the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => Ok(Invocation::Help),
        Some("-V" | "--version") => Ok(Invocation::Version),
        Some("health") => {
            let mut service = health::DEFAULT_NETWORK.to_owned();
            let mut address = None;
            let mut rest = args[1..].iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--service" => {
                        service = rest.next().ok_or("health: --service needs a NAME")?.clone();
                    }
                    flag if flag.starts_with('-') => {
                        return Err(format!("health: unknown flag {flag}"));
                    }
                    a if address.is_none() => address = Some(a.to_owned()),
                    extra => return Err(format!("health: unexpected argument {extra:?}")),
                }
            }
            let address =
                address.ok_or("health: the ADDRESS of ipamd's health port is required")?;
            let address = if address.starts_with("http://") {
                address
            } else if address.contains("://") {
                return Err(format!(
                    "health: {address:?}: the health port is plaintext: host:port or http://host:port"
                ));
            } else {
                format!("http://{address}")
            };
            Ok(Invocation::Health { address, service })
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no CNI_COMMAND and no command".to_owned()),
    }
}

/// Runs `danm` by hand; see the module overview.
pub async fn run(args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(Invocation::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Invocation::Version) => {
            println!("danm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Invocation::Health { address, service }) => match serving(&address, &service).await {
            Ok(()) => {
                println!("{service}: SERVING at {address}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("{service}: {why}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprint!("danm: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Whether `service` is SERVING at `address`; otherwise why not, in words.
pub async fn serving(address: &str, service: &str) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|e| format!("{address:?} is not an address: {e}"))?
        .connect_timeout(HEALTH_TIMEOUT)
        .timeout(HEALTH_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        format!(
            "ipamd's health port at {address} does not answer: {}",
            danm_proto::client::source_chain(&e)
        )
    })?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| {
            format!(
                "ipamd at {address} answered {:?}: {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    match ServingStatus::try_from(reply.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(status) => Err(format!(
            "{} at {address}{}",
            status.as_str_name(),
            if service == health::DEFAULT_NETWORK {
                " (ipamd is not ready, or serves no valid network named `default`)"
            } else {
                ""
            }
        )),
        Err(_) => Err(format!("unknown status {} at {address}", reply.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn health_takes_an_address_and_an_optional_service() {
        assert_eq!(
            parse(&args(&["health", "10.96.0.9:50052"])),
            Ok(Invocation::Health {
                address: "http://10.96.0.9:50052".into(),
                service: health::DEFAULT_NETWORK.into()
            })
        );
        assert_eq!(
            parse(&args(&[
                "health",
                "--service",
                health::IPAM,
                "http://[fd00::9]:50052"
            ])),
            Ok(Invocation::Health {
                address: "http://[fd00::9]:50052".into(),
                service: health::IPAM.into()
            })
        );
    }

    #[test]
    fn bad_arguments_name_what_is_wrong() {
        for (list, needle) in [
            (&["health"][..], "ADDRESS"),
            (&["health", "--service"][..], "--service needs a NAME"),
            (&["health", "--tls", "a:1"][..], "unknown flag --tls"),
            (&["health", "a:1", "b:2"][..], "unexpected argument \"b:2\""),
            (&["health", "https://a:1"][..], "plaintext"),
            (&["add"][..], "unknown command \"add\""),
        ] {
            let e = parse(&args(list)).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }
}
