//! Command-line parsing and dispatch.

mod check_config;
mod demo;
mod hash_password;
mod history;
mod queue;
mod reload;
mod rules_check;
mod rules_decisions;
mod rules_new;
mod rules_test;
mod serve;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use mailcall::config::Config;

/// mailcall: an email server that delivers mail by calling the destination
/// server over SIP.
#[derive(Debug, Parser)]
#[command(name = "mailcall", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mail server. Without --config: SMTP on 127.0.0.1:2525, data
    /// in ./mailcall-data, local domain `localhost` with a `postmaster` mailbox.
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Deliver sample mail over calls between two hosts on loopback (A and
    /// B, direct SIP routes, no SIP server) and print the call ladder and
    /// the results; exits 0 only if every message ended where it should.
    Demo(demo::Args),
    /// Work with routing rules (WebAssembly components).
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The operator's view of the queue.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// What became of each recipient: path (local, call, relay), number,
    /// rule, Call-ID, replies and times.
    History(history::Args),
    /// Read a password on stdin and print its argon2 hash for
    /// `[users.NAME] password_hash`.
    HashPassword,
    /// Ask the running server to rebuild its policy (rule chain, modules,
    /// tables, numbering plan) from its configuration file; prints the new
    /// generation, or why it was refused (exit 1; the old one stays).
    Reload(reload::ReloadArgs),
    /// Check a configuration file and say what is wrong, with the line.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(required_unless_present = "config")]
        file: Option<PathBuf>,
        /// The same, spelt as every other command takes it.
        #[arg(long, short, conflicts_with = "file")]
        config: Option<PathBuf>,
    },
    /// Print the manual page (roff, for `man -l -`), or with --out write
    /// one page per command into a folder (for /usr/share/man/man1).
    Man {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the shell completion script, e.g.
    /// `mailcall completions bash > /etc/bash_completion.d/mailcall`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run the rule chain on a message for one recipient and print the
    /// decision as one JSON line.
    Test(rules_test::Args),
    /// Create a ready-to-build rule project (WIT, build script, test message).
    New(rules_new::Args),
    /// Run a case list (messages, recipients, expected decisions) against
    /// the chain: pass or fail per case with the difference, and each
    /// rule's instruction count; exit 1 on any failure.
    Check(rules_check::Args),
    /// How each recipient of a message was decided, step by step: every
    /// rule's decision, reason, time and the look-ups it made (from the
    /// decision log).
    Explain(rules_decisions::ExplainArgs),
    /// Run a candidate module against the recorded decisions and count how
    /// many it would decide the same, differently, or fail on.
    Replay(rules_decisions::ReplayArgs),
    /// Put an earlier policy generation back in force on the running server.
    Rollback(reload::RollbackArgs),
    /// The running server's policy: kept generations, and each rule of the
    /// one in force with its module and counters.
    Status(reload::StatusArgs),
}

impl Cli {
    /// Log filter when `RUST_LOG` is not set: quiet for one-shot commands,
    /// whose output is on stdout. rsipstack logs every raw SIP message at
    /// INFO; our own T/R lines tell the ladder.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve { .. } | Command::Demo(_) => "info,rsipstack=warn",
            _ => "warn",
        }
    }

    /// The configuration `serve` runs on, read once, before the log
    /// starts (its `[log] format` decides the log's); `None` for the other
    /// commands.
    pub fn serve_config(&self) -> Option<anyhow::Result<Config>> {
        match &self.command {
            Command::Serve { config: Some(path) } => Some(Config::load(path).map_err(Into::into)),
            Command::Serve { config: None } => Some(Ok(Config::defaults())),
            _ => None,
        }
    }

    /// Where the log goes instead of stderr: the demo keeps it in its
    /// folder (emptied now) and prints from it.
    pub fn log_file(&self) -> anyhow::Result<Option<PathBuf>> {
        match &self.command {
            Command::Demo(args) => {
                demo::prepare(args)?;
                Ok(Some(demo::log_file(args)))
            }
            _ => Ok(None),
        }
    }
}

/// Runs the command; `serve_config` is what [`Cli::serve_config`] read.
pub fn run(cli: Cli, serve_config: Option<Config>) -> anyhow::Result<()> {
    match cli.command {
        Command::Rules {
            command: RulesCommand::Test(args),
        } => rules_test::run(args),
        Command::Rules {
            command: RulesCommand::New(args),
        } => rules_new::run(args),
        Command::Rules {
            command: RulesCommand::Rollback(args),
        } => reload::rollback(args),
        Command::Rules {
            command: RulesCommand::Explain(args),
        } => rules_decisions::explain(args),
        Command::Rules {
            command: RulesCommand::Check(args),
        } => rules_check::run(args),
        Command::Rules {
            command: RulesCommand::Replay(args),
        } => rules_decisions::replay(args),
        Command::Rules {
            command: RulesCommand::Status(args),
        } => reload::status(args),
        Command::Reload(args) => reload::reload(args),
        Command::CheckConfig { file, config } => {
            // clap requires one of the two.
            let file = file.or(config).unwrap_or_default();
            check_config::run(&file)
        }
        Command::Serve { .. } => serve::run(serve_config.unwrap_or_else(Config::defaults)),
        Command::Man { out } => manual(out.as_deref()),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "mailcall", &mut std::io::stdout());
            Ok(())
        }
        Command::HashPassword => hash_password::run(),
        Command::Queue { command } => queue::run(command),
        Command::History(args) => history::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

/// The configuration in `file`, or the embedded default without one.
fn config_or_default(file: Option<&Path>) -> anyhow::Result<mailcall::config::Config> {
    Ok(match file {
        Some(path) => mailcall::config::Config::load(path)?,
        None => mailcall::config::Config::defaults(),
    })
}

/// The data folder of the configuration in `file` (or the default's).
fn data_dir(file: Option<&Path>) -> anyhow::Result<PathBuf> {
    let config = config_or_default(file)?;
    Ok(config.resolve(&config.server.data_dir))
}

/// `mailcall man`: the pages clap_mangen makes of the definitions above.
fn manual(out: Option<&Path>) -> anyhow::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    match out {
        Some(folder) => {
            std::fs::create_dir_all(folder)?;
            clap_mangen::generate_to(command, folder)?;
            println!("manual pages written to {}", folder.display());
        }
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout())?,
    }
    Ok(())
}
