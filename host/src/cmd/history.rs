//! `mailcall history`: what became of each recipient, and by which path.

use std::path::PathBuf;

use mailcall::config::Config;
use mailcall::history::{self, DeliveryPath, Filter, History};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (TOML); default: the embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this message: its queue id or its Message-ID.
    #[arg(long)]
    id: Option<String>,
    /// Only recipients whose address contains this (any case).
    #[arg(long)]
    rcpt: Option<String>,
    /// Only this path.
    #[arg(long, value_enum)]
    path: Option<DeliveryPath>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// The ladder of each call attempt (Fig. 4: T1–T7, R1–R4), step by step.
    #[arg(long, conflicts_with = "json")]
    ladder: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    let filter = Filter {
        path: args.path,
        outcome: None,
        recipient: args.rcpt,
        id: args.id,
    };
    let attempts: Vec<_> = History::read(&config.resolve(&config.server.data_dir))?
        .into_iter()
        .filter(|attempt| filter.matches(attempt))
        .collect();
    if args.json {
        for attempt in &attempts {
            println!("{}", serde_json::to_string(attempt)?);
        }
    } else if args.ladder {
        let calls: Vec<_> = attempts.iter().filter(|a| !a.ladder.is_empty()).collect();
        if calls.is_empty() {
            anyhow::bail!("no call attempt with a recorded ladder matches");
        }
        for attempt in calls {
            println!("{}", history::ladder_text(attempt));
        }
    } else {
        print!("{}", history::table(&attempts));
    }
    Ok(())
}
