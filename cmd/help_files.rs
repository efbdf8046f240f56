//! `mftq completions SHELL` and `mftq man`: the shell completion scripts and
//! the manual page, generated from the same clap definition as `--help`, so
//! they never drift from the flags.

use clap::CommandFactory;

use crate::args::{Cli, Shell};
use crate::error::CliError;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Result<(), CliError> {
    let mut command = Cli::command();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "mftq", &mut std::io::stdout());
    Ok(())
}

/// Writes the manual page (roff) to stdout: the top-level page, then one
/// section per command.
pub fn man() -> Result<(), CliError> {
    let command = Cli::command();
    let mut out = std::io::stdout().lock();
    let io = |e| CliError::io("writing the manual page", e);
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .map_err(io)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("mftq-{}", sub.get_name());
        let page = sub.clone().name(name);
        clap_mangen::Man::new(page).render(&mut out).map_err(io)?;
    }
    Ok(())
}
