//! `mailcall reload`, `mailcall rules rollback` and `mailcall rules status`:
//! ask the running server (over its control socket) to change or show the
//! policy generation in force.

use std::path::PathBuf;

use super::data_dir;

use anyhow::{bail, Context};
use mailcall::server::control::{self, Answer, PolicyRequest, Request};

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The configuration file: the server rebuilds its policy from it (and
    /// watches it from then on). Default: the file it was started with.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The generation number to put back in force (see `rules status`);
    /// default: the one before the generation in force.
    #[arg(long)]
    to: Option<u64>,
    /// The running server's configuration file (for its data folder).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The running server's configuration file (for its data folder).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Prints the outcome; an error (exit 1) when the server refused.
fn report(answer: Answer, done: &str) -> anyhow::Result<()> {
    for setting in &answer.needs_restart {
        println!("{setting} changed: needs a restart, ignored until then");
    }
    let generation = answer.generation.as_deref().unwrap_or("-");
    if answer.ok {
        println!("{done}: generation {generation} in force");
        Ok(())
    } else {
        bail!(
            "refused, generation {generation} stays in force: {}",
            answer.error.as_deref().unwrap_or("no reason given")
        )
    }
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(file) => Some(
            std::fs::canonicalize(file)
                .with_context(|| format!("cannot find {}", file.display()))?,
        ),
        None => None,
    };
    let answer = control::ask(
        &data_dir(args.config.as_deref())?,
        &Request::Policy(PolicyRequest::Reload { config }),
    )?;
    report(answer, "reloaded")
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let answer = control::ask(
        &data_dir(args.config.as_deref())?,
        &Request::Policy(PolicyRequest::Rollback { to: args.to }),
    )?;
    report(answer, "rolled back")
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let answer = control::ask(
        &data_dir(args.config.as_deref())?,
        &Request::Policy(PolicyRequest::Status),
    )?;
    let Some(status) = answer.status else {
        return report(answer, "status");
    };
    println!("generations (oldest first):");
    for (id, built_at, active) in &status.generations {
        let mark = if *active { "  <- in force" } else { "" };
        println!("  {id}  built at {built_at}{mark}");
    }
    for rule in &status.rules {
        let digest = rule
            .digest
            .as_deref()
            .map_or("(not loaded)", |d| &d[..12.min(d.len())]);
        let contract = rule.contract.as_deref().unwrap_or("-");
        println!(
            "rule {}  module {digest}  contract {contract}  {}",
            rule.name, rule.mode
        );
        println!(
            "  evaluations {}  dials {}  smtp {}  no opinion {}",
            rule.evaluations, rule.dials, rule.smtp, rule.no_opinion
        );
        println!(
            "  failures {} (deadline {}, memory cap {})  deferrals {}  fallbacks {}  breaker trips {}",
            rule.failures, rule.timeouts, rule.memory_caps, rule.deferrals, rule.fallbacks, rule.breaker_trips
        );
        println!(
            "  as a shadow: evaluations {}  disagreements {}",
            rule.shadow_evaluations, rule.shadow_disagreements
        );
    }
    Ok(())
}
