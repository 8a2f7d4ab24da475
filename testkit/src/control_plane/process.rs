//! The control plane's processes: each writes its output to a log file in the control
//! plane's folder, and each is registered with a watchdog that kills them all and removes
//! that folder when the test process ends, however it ends (a panic, `exit`, a signal,
//! SIGKILL): the watchdog reads its stdin, which only the test process holds, and acts at
//! end of file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

use super::Error;

/// Kills the registered processes (SIGTERM, then SIGKILL after 5 s) and removes the folder
/// once its stdin closes. It ignores the terminal's signals so that a Ctrl-C of the test
/// run still ends in the clean-up.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
dir="$1"
pids=""
while read -r pid; do pids="$pids $pid"; done
[ -n "$pids" ] && kill -TERM $pids 2>/dev/null
for _ in $(seq 50); do
  alive=""
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
done
[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
rm -rf "$dir"
"#;

/// The watchdog of one control plane.
#[derive(Debug)]
pub(crate) struct Watchdog {
    stdin: Mutex<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog of `dir`.
    pub(crate) fn start(dir: &Path) -> Result<Watchdog, Error> {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("danm-testkit-watchdog")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::Io("bash (the control plane's watchdog)".into(), e))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        // The watchdog outlives this process on purpose; it is reaped by init.
        std::mem::forget(child);
        Ok(Watchdog {
            stdin: Mutex::new(stdin),
        })
    }

    fn register(&self, pid: u32) -> Result<(), Error> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(stdin, "{pid}").map_err(|e| Error::Io("the watchdog's stdin".into(), e))
    }
}

/// A running process of the control plane.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args`, its output in `<dir>/<name>.log`, registered with the
    /// watchdog.
    pub(crate) fn spawn(
        watchdog: &Watchdog,
        dir: &Path,
        name: &str,
        binary: &Path,
        args: &[String],
    ) -> Result<Process, Error> {
        let mut command = Command::new(binary);
        command.args(args);
        Process::spawn_command(watchdog, dir, name, command)
    }

    /// Starts `command`, its output in `<dir>/<name>.log`, registered with the watchdog.
    pub(crate) fn spawn_command(
        watchdog: &Watchdog,
        dir: &Path,
        name: &str,
        mut command: Command,
    ) -> Result<Process, Error> {
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).map_err(|e| Error::Io(log.display().to_string(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::Io(log.display().to_string(), e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::Io(format!("{:?}", command.get_program()), e))?;
        watchdog.register(child.id())?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The exit status if it has ended.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
