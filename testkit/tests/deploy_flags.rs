//! Every command line in `deploy/` is one our binaries accept: each container's `command`
//! and `args` (from the production overlay's build, with `--help` appended) run against the
//! binary the workspace built. clap refuses an unknown flag or a bad value before it gets
//! to `--help`, so a flag renamed in the code and not in the manifests fails here, not on a
//! cluster. The CNI installer's shell script is not a binary of ours and is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The workspace's binaries: `target/<profile>/`, two levels above this test's executable
/// (`target/<profile>/deps/deploy_flags-...`). `cargo test --workspace` builds them all.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

fn containers(object: &Value) -> Vec<&Value> {
    let spec = match object["kind"].as_str() {
        Some("CronJob") => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        Some("Deployment" | "DaemonSet" | "Job" | "StatefulSet") => {
            &object["spec"]["template"]["spec"]
        }
        _ => return Vec::new(),
    };
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .collect()
}

/// What kubelet makes of `$(NAME)` in a command line: the value of the container's
/// variable `NAME`. A variable from the downward API gets the kind of value the API
/// gives (`status.hostIP`: an address); an unknown `$(NAME)` stays as written, as kubelet
/// leaves it.
fn expand(word: &str, container: &Value) -> String {
    let mut out = word.to_owned();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default();
        let value = match (
            &var["value"],
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Value::String(v), _) => v.clone(),
            (_, Some("status.hostIP" | "status.podIP")) => "10.0.0.7".to_owned(),
            (_, Some(_)) => "example".to_owned(),
            _ => continue,
        };
        out = out.replace(&format!("$({name})"), &value);
    }
    out
}

/// The production overlay with the components that change command lines.
fn production_with_components() -> String {
    let dir = tempfile::tempdir().unwrap();
    // kustomize takes no absolute paths: deploy/, relative to the temporary folder.
    let deploy = deploy_dir().canonicalize().unwrap();
    let up = dir.path().canonicalize().unwrap().components().count() - 1;
    let relative = Path::new(&"../".repeat(up)).join(deploy.strip_prefix("/").unwrap());
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- {}\ncomponents:\n- {}\n- {}\n",
            relative.join("overlays/production").display(),
            relative.join("components/apiserver-client-auth").display(),
            relative.join("components/node-token").display(),
        ),
    )
    .unwrap();
    danm_testkit::kustomize(dir.path())
}

#[test]
fn every_command_line_of_the_manifests_is_accepted_by_its_binary() {
    for built in [
        danm_testkit::kustomize(&deploy_dir().join("overlays/production")),
        production_with_components(),
    ] {
        check_command_lines(&built);
    }
}

fn check_command_lines(built: &str) {
    let objects: Vec<Value> = serde_saphyr::from_multiple(built).unwrap();
    let mut checked = Vec::new();
    for object in &objects {
        for container in containers(object) {
            let words: Vec<String> = container["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(container["args"].as_array().into_iter().flatten())
                .map(|w| expand(w.as_str().expect("a string"), container))
                .collect();
            let Some(program) = words.first() else {
                continue;
            };
            if program.ends_with(".sh") {
                continue;
            }
            let Some(name) = program.strip_prefix("/usr/local/bin/") else {
                panic!(
                    "{} {}: command {program:?} is not one of our binaries in /usr/local/bin",
                    object["kind"], object["metadata"]["name"]
                );
            };
            let run = Command::new(workspace_binary(name))
                .args(&words[1..])
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{} {}: `{}` is refused by the binary:\n{}",
                object["kind"],
                object["metadata"]["name"],
                words.join(" "),
                String::from_utf8_lossy(&run.stderr)
            );
            checked.push(name.to_owned());
        }
    }
    checked.sort();
    checked.dedup();
    assert_eq!(
        checked,
        [
            "cleaner",
            "danm-certs",
            "ipamd",
            "netwatcher",
            "svcwatcher",
            "webhook"
        ],
        "every binary of the suite has its command line checked"
    );
}

/// Every binary an operator runs prints its shell completion script (`--completions`,
/// added by `danm_runtime::args`), even one with required flags or subcommands, and lists
/// the flag in `--help`. The CNI plugins are run by the container runtime with CNI's
/// environment, not flags: they have none.
#[test]
fn every_binary_of_the_suite_prints_its_shell_completions() {
    let binaries = [
        "ipamd",
        "ipamctl",
        "showalloc",
        "kubectl-showalloc",
        "webhook",
        "netwatcher",
        "svcwatcher",
        "cleaner",
        "policer",
        "danm-certs",
    ];
    for name in binaries {
        let binary = workspace_binary(name);
        for (shell, marker) in [
            ("bash", "complete -F"),
            ("zsh", "#compdef"),
            ("fish", "complete -c"),
        ] {
            // As in a pod, where the Deployment sets flags' environment variables.
            let out = Command::new(&binary)
                .args(["--completions", shell])
                .env("IPAMD_STORE", "memory")
                .env("POD_NAME", "x")
                .env("POD_NAMESPACE", "danm-system")
                .env("NODE_NAME", "node-1")
                .output()
                .unwrap();
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && script.contains(marker) && script.contains(name),
                "{name} --completions {shell}: {}{script}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let help = Command::new(&binary).arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--completions <SHELL>"),
            "{name} --help"
        );
        let refused = Command::new(&binary)
            .args(["--completions", "tcsh"])
            .output()
            .unwrap();
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{name}: an unknown shell is a usage error"
        );
    }
}

/// `deploy/krew/package.sh` makes the archive krew installs `kubectl showalloc` from: the
/// manifest it writes names the archive's sha256, its `bin` and `files` are in the archive,
/// and the binary in it runs.
#[test]
fn the_krew_manifest_names_the_archive_package_sh_builds() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("sh")
        .arg(deploy_dir().join("krew/package.sh"))
        .arg("v9.9.9")
        .arg(out.path())
        .arg(workspace_binary("kubectl-showalloc"))
        .status()
        .unwrap();
    assert!(status.success());
    let manifest: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(out.path().join("showalloc.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["spec"]["version"], "v9.9.9");
    let platform = &manifest["spec"]["platforms"][0];
    let archive = out.path().join("kubectl-showalloc-linux-amd64.tar.gz");
    assert!(
        platform["uri"]
            .as_str()
            .unwrap()
            .ends_with("/download/v9.9.9/kubectl-showalloc-linux-amd64.tar.gz")
    );
    let sum = Command::new("sha256sum").arg(&archive).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(platform["sha256"].as_str(), sum.split_whitespace().next());
    let unpacked = tempfile::tempdir().unwrap();
    assert!(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(unpacked.path())
            .status()
            .unwrap()
            .success()
    );
    for file in platform["files"].as_array().unwrap() {
        assert!(
            unpacked
                .path()
                .join(file["from"].as_str().unwrap())
                .exists()
        );
    }
    let bin = unpacked.path().join(platform["bin"].as_str().unwrap());
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--all-namespaces"));
}
