//! `mailcall history`: what became of each recipient, and by which path.

use std::path::PathBuf;

use mailcall::config::Config;
use mailcall::history::{self, DeliveryPath, History};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (TOML); default: the embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only this message: its queue id or its Message-ID.
    #[arg(long)]
    id: Option<String>,
    /// Only this recipient.
    #[arg(long)]
    rcpt: Option<String>,
    /// Only this path.
    #[arg(long, value_enum)]
    path: Option<DeliveryPath>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    let attempts: Vec<_> = History::read(&config.resolve(&config.server.data_dir))?
        .into_iter()
        .filter(|a| {
            args.id.as_ref().is_none_or(|id| {
                a.queue_id == *id || a.message_id.as_deref() == Some(id.trim_matches(['<', '>']))
            })
        })
        .filter(|a| {
            args.rcpt
                .as_ref()
                .is_none_or(|rcpt| a.recipient.eq_ignore_ascii_case(rcpt))
        })
        .filter(|a| args.path.is_none_or(|path| a.path == path))
        .collect();
    if args.json {
        for attempt in &attempts {
            println!("{}", serde_json::to_string(attempt)?);
        }
    } else {
        print!("{}", history::table(&attempts));
    }
    Ok(())
}
