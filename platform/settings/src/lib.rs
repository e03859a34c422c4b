//! Settings, and the secrets among them: database URLs with passwords, registry credentials,
//! provider keys.
//!
//! A setting whose flag hides its environment value (`hide_env_values`) is a secret: it comes from
//! its environment variable or from the file named by that variable with `_FILE` appended
//! (`ORDERFLOW_ORDERS_DATABASE_URL_FILE=/run/secrets/orders-url`, as Kubernetes and compose mount
//! them), never from the command line, where `ps` and `/proc/<pid>/cmdline` show it to every
//! user of the machine. Any other setting may come from a `_FILE` too.
//!
//! Every binary parses its flags through [`parse`], which does both; [`Secret`] keeps a value out
//! of `Debug` and `Display` output.

use std::{fmt, path::Path};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, parser::ValueSource};

/// A secret value; printed as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret file's content without its trailing line break (editors and `echo` add one).
pub fn read_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the secret file {}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!value.is_empty(), "the secret file {} is empty", path.display());
    Ok(value)
}

/// `command` (and its subcommands) with every setting that has an environment variable `X` also
/// read from the file `X_FILE` names (both set is an error: which one is meant?).
pub fn with_files(mut command: clap::Command) -> anyhow::Result<clap::Command> {
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        let sub = with_files(command.find_subcommand(&name).cloned().expect("listed above"))?;
        command = command.mut_subcommand(name, |_| sub);
    }
    let mut from_files = Vec::new();
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env().and_then(|n| n.to_str()) else { continue };
        let file_var = format!("{name}_FILE");
        let Some(path) = std::env::var_os(&file_var) else { continue };
        anyhow::ensure!(std::env::var_os(name).is_none(), "both {name} and {file_var} are set; set one");
        let value = read_file(Path::new(&path)).with_context(|| format!("reading {file_var}"))?;
        from_files.push((arg.get_id().clone(), value));
    }
    Ok(from_files.into_iter().fold(command, |command, (id, value)| {
        command.mut_arg(id, |arg| arg.default_value(value).hide_default_value(true).required(false))
    }))
}

/// Refuses secrets given on the command line (in the command or any of its subcommands).
pub fn refuse_secrets_in_argv(command: &clap::Command, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    for arg in command.get_arguments().filter(|a| a.is_hide_env_values_set()) {
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            let env = arg.get_env().and_then(|n| n.to_str()).unwrap_or("its variable");
            anyhow::bail!(
                "--{} is a secret: pass it in {env} or a file named by {env}_FILE, never on the command line \
                 (every user of the machine can read a process's arguments)",
                arg.get_long().unwrap_or(arg.get_id().as_str())
            );
        }
    }
    match matches.subcommand() {
        Some((name, sub_matches)) => match command.find_subcommand(name) {
            Some(sub) => refuse_secrets_in_argv(sub, sub_matches),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Parses `T`'s flags from the process's arguments and environment with `_FILE` settings
/// ([`with_files`]) and no secret in argv ([`refuse_secrets_in_argv`]); `adjust` may rename or
/// add settings first. Exits with clap's message on a usage error, as `Parser::parse` does.
pub fn parse_with<T: CommandFactory + FromArgMatches>(adjust: impl FnOnce(clap::Command) -> clap::Command) -> T {
    match try_parse_from(adjust(T::command()), std::env::args_os()) {
        Ok(args) => args,
        Err(error) => match error.downcast::<clap::Error>() {
            Ok(usage) => usage.exit(),
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(2)
            }
        },
    }
}

/// [`parse_with`] for a binary with nothing to adjust.
pub fn parse<T: CommandFactory + FromArgMatches>() -> T {
    parse_with(|command| command)
}

/// [`parse_with`] on explicit arguments, returning errors (tests and tools).
pub fn try_parse_from<T: FromArgMatches>(
    command: clap::Command,
    argv: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> anyhow::Result<T> {
    let command = with_files(command)?;
    let matches = command.clone().try_get_matches_from(argv)?;
    refuse_secrets_in_argv(&command, &matches)?;
    Ok(T::from_arg_matches(&matches)?)
}
