//! `mailcall queue list|flush`: the operator's view of the queue.

use std::path::{Path, PathBuf};

use super::data_dir;

use anyhow::{bail, Context};
use mailcall::queue::spool::{Outcome, Spool};
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
}

pub fn run(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::List { config } => list(&data_dir(config.as_deref())?),
        QueueCommand::Flush { config } => flush(&data_dir(config.as_deref())?),
    }
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
            let state = match outcome {
                None => "waiting".to_string(),
                Some(Outcome::Delivered { detail }) => format!("delivered: {detail}"),
                Some(Outcome::Failed { detail, .. }) => format!("failed: {detail}"),
                Some(Outcome::Deferred {
                    detail,
                    attempts,
                    retry_at,
                }) => {
                    format!("deferred ({attempts} attempts, next at {retry_at}): {detail}")
                }
            };
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
