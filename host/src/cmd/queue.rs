//! `mailcall queue list|flush|hold|release|retry|delete|bounce`: the
//! operator's view of the queue and the actions on it, as `postqueue` and
//! `postsuper` give them for Postfix.

use std::path::{Path, PathBuf};

use super::data_dir;

use anyhow::{bail, Context};
use mailcall::queue::action::Action;
use mailcall::queue::spool::{Outcome, Spool};
use mailcall::server::control::{self, Request};
use mailcall::server::PID_FILE;

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// List the messages still in the queue, with each recipient's state.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running server to try every queued recipient now.
    Flush {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Keep messages from delivery until released (kept across restarts).
    Hold(Targets),
    /// Let held messages be delivered again, now.
    Release(Targets),
    /// Try deferred messages now instead of at their retry time.
    Retry(Targets),
    /// Remove messages without telling their senders.
    Delete(Targets),
    /// Fail messages for good and send each sender a delivery report.
    Bounce(Targets),
}

/// The messages an action is for.
#[derive(Debug, clap::Args)]
pub struct Targets {
    /// Queue ids as `mailcall queue list` shows them, or `ALL`.
    #[arg(required = true)]
    ids: Vec<String>,
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub fn run(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::List { config } => list(&data_dir(config.as_deref())?),
        QueueCommand::Flush { config } => flush(&data_dir(config.as_deref())?),
        QueueCommand::Hold(targets) => act(Action::Hold, targets),
        QueueCommand::Release(targets) => act(Action::Release, targets),
        QueueCommand::Retry(targets) => act(Action::Retry, targets),
        QueueCommand::Delete(targets) => act(Action::Delete, targets),
        QueueCommand::Bounce(targets) => act(Action::Bounce, targets),
    }
}

/// Asks the running server to carry out `action`: it owns the queue, so
/// the action and its deliveries happen under its lock, not beside it.
fn act(action: Action, Targets { ids, config }: Targets) -> anyhow::Result<()> {
    let data_dir = data_dir(config.as_deref())?;
    let answer = control::ask(&data_dir, &Request::Queue { action, ids })?;
    for line in &answer.lines {
        println!("{line}");
    }
    if !answer.ok {
        bail!(
            "{}",
            answer
                .error
                .unwrap_or_else(|| format!("{action} was refused"))
        );
    }
    Ok(())
}

fn list(data_dir: &Path) -> anyhow::Result<()> {
    let recovery = Spool::inspect(&data_dir.join("queue"))?;
    for damage in &recovery.damage {
        println!("DAMAGED {damage}");
    }
    let queued = recovery.messages;
    if queued.is_empty() {
        println!("the queue is empty");
        return Ok(());
    }
    for message in &queued {
        let from = if message.envelope.mail_from.is_empty() {
            "<>"
        } else {
            &message.envelope.mail_from
        };
        println!(
            "{}  received {}  from {from}",
            message.id, message.envelope.received_at
        );
        for (recipient, outcome) in message.envelope.recipients.iter().zip(&message.outcomes) {
            let state = outcome
                .as_ref()
                .map_or_else(|| "waiting".to_string(), Outcome::summary);
            println!("    {recipient}  {state}");
        }
    }
    println!("{} messages", queued.len());
    Ok(())
}

fn flush(data_dir: &Path) -> anyhow::Result<()> {
    let pid_file = data_dir.join(PID_FILE);
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("no server running here? cannot read {}", pid_file.display()))?;
    let pid = pid.trim();
    let status = std::process::Command::new("kill")
        .args(["-USR1", pid])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("the server (pid {pid}) did not take the signal; is it running?");
    }
    println!("asked the server (pid {pid}) to flush its queue");
    Ok(())
}
