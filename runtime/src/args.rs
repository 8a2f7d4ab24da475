//! Parsing a binary's flags, with `--completions SHELL` added to every one of them: the
//! shell completion script of the binary's flags (clap_complete's), printed on standard
//! output (`source <(ipamctl --completions bash)`).

use clap::{Arg, CommandFactory, FromArgMatches};
use clap_complete::Shell;

/// The flag's id.
const COMPLETIONS: &str = "completions";

/// Parses the process arguments as `A` (clap's own errors, `--help` and `--version` as
/// usual), after answering `--completions SHELL`.
pub fn parse<A: CommandFactory + FromArgMatches>() -> A {
    parse_from(std::env::args_os())
}

/// As [`parse`], from `args` (the program name first).
pub fn parse_from<A, I, T>(args: I) -> A
where
    A: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut command = with_completions(A::command());
    if let Some(shell) = completions_asked(&command, &args) {
        // The name it was run as (showalloc and kubectl-showalloc share their flags).
        let name = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| command.get_name().to_owned());
        clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
        std::process::exit(0);
    }
    let matches = command.clone().get_matches_from(args);
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit())
}

/// The shell `args` ask a completion script for, if they do (clap's error, and exit, when
/// `--completions` comes with anything else or names no shell it knows).
fn completions_asked(command: &clap::Command, args: &[std::ffi::OsString]) -> Option<Shell> {
    let asked = args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == "--completions" || a.starts_with("--completions="))
    });
    if !asked {
        return None;
    }
    // `exclusive` lifts the required flags; a required subcommand or group is lifted here.
    // Values from the environment (a pod's IPAMD_* variables) would count as flags given
    // beside the exclusive one: they are not read for this question.
    let mut lifted = command
        .clone()
        .subcommand_required(false)
        .mut_args(|a| a.env(None));
    let groups: Vec<clap::Id> = lifted.get_groups().map(|g| g.get_id().clone()).collect();
    for id in groups {
        lifted = lifted.mut_group(id, |g| g.required(false));
    }
    let matches = lifted.get_matches_from(args);
    matches.get_one::<Shell>(COMPLETIONS).copied()
}

/// `command` with `--completions SHELL`, which takes no other flag or subcommand.
pub fn with_completions(command: clap::Command) -> clap::Command {
    command.arg(
        Arg::new(COMPLETIONS)
            .long(COMPLETIONS)
            .value_name("SHELL")
            .value_parser(clap::value_parser!(Shell))
            .exclusive(true)
            .help(
                "Print the shell completion script (bash, zsh, fish, elvish, powershell) and exit",
            ),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// A program with a required flag, a required group and a required subcommand, and a
    /// flag read from the environment.
    #[derive(Parser, Debug)]
    #[command(name = "demo")]
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "watch"])))]
    struct Demo {
        #[arg(long, env = "DANM_ARGS_TEST_LEVEL", default_value = "info")]
        level: String,
        #[arg(long)]
        once: bool,
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        store: String,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Status,
    }

    #[test]
    fn completions_need_nothing_else_and_parsing_is_unchanged() {
        let command = super::with_completions(<Demo as clap::CommandFactory>::command());
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            super::completions_asked(&command, &args(&["demo", "--completions", "bash"])),
            Some(clap_complete::Shell::Bash)
        );
        assert_eq!(
            super::completions_asked(&command, &args(&["demo", "--completions=zsh"])),
            Some(clap_complete::Shell::Zsh)
        );
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command.clone(),
            "demo",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(
            script.contains("--store") && script.contains("status"),
            "{script}"
        );

        let parsed: Demo = super::parse_from(["demo", "--once", "--store", "kube", "status"]);
        assert_eq!(parsed.store, "kube");
        assert!(matches!(parsed.command, Sub::Status));
        assert!(
            command
                .try_get_matches_from(["demo", "--completions", "bash", "--store", "x"])
                .is_err(),
            "--completions stands alone"
        );
    }
}
