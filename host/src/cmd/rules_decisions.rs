//! `mailcall rules explain` and `mailcall rules replay`: the decision log
//! read back — how each recipient was decided, step by step, and what a
//! candidate module would decide on the recorded inputs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use mailcall::history::History;

use super::config_or_default;
use mailcall::policy::decisions::{self, DecisionRecord};
use mailcall::policy::{PolicyEngine, StepDecision, StepRole};

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The message: its queue id, or its Message-ID.
    id: String,
    /// The server's configuration file (for its data folder).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The candidate: a rule name of the chain and the module to try in its
    /// place (`keyword-table=new.wasm`).
    #[arg(long, value_name = "NAME=FILE")]
    rule: String,
    /// Only decisions recorded within this time (`90s`, `30m`, `12h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Differences spelled out.
    #[arg(long, default_value_t = 5)]
    show: usize,
    /// The server's configuration file (its data folder, tables, rule
    /// settings).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and s, m, h or d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(number * seconds))
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let config = config_or_default(args.config.as_deref())?;
    let data_dir = config.resolve(&config.server.data_dir);
    let wanted = args.id.trim_matches(['<', '>']);
    // A Message-ID names the queue ids its history lines have.
    let mut queue_ids: BTreeSet<String> = BTreeSet::from([wanted.to_uppercase()]);
    for attempt in History::read(&data_dir)? {
        if attempt.message_id.as_deref() == Some(wanted) {
            queue_ids.insert(attempt.queue_id);
        }
    }
    let records: Vec<DecisionRecord> = decisions::read(&data_dir.join("decisions"))?
        .into_iter()
        .filter(|r| queue_ids.contains(&r.queue_id.to_uppercase()))
        .collect();
    if records.is_empty() {
        bail!(
            "no decision recorded for {} (the log keeps the latest [policy] decision_log_mib)",
            args.id
        );
    }
    for record in &records {
        println!(
            "{} for {}: {} by {} (generation {})",
            record.queue_id,
            record.recipient,
            record.route,
            record.rule.as_deref().unwrap_or("no rule"),
            record.generation
        );
        println!("  reason: {}", record.reason);
        for (n, step) in record.steps.iter().enumerate() {
            let module = step
                .module
                .as_deref()
                .map_or("-", |m| &m[..12.min(m.len())]);
            let role = match step.role {
                StepRole::Active => "",
                StepRole::Shadow => " [shadow]",
                StepRole::Fallback => " [previous module]",
            };
            println!(
                "  {}. {}{role} (module {module}, {:.1} ms): {}",
                n + 1,
                step.rule,
                step.took_us as f64 / 1000.0,
                step.decision
            );
            for import in &step.imports {
                println!(
                    "       {}({}) -> {}",
                    import.import,
                    import.args.join(", "),
                    import.result
                );
            }
        }
    }
    Ok(())
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let (name, file) = args
        .rule
        .split_once('=')
        .context("--rule takes NAME=FILE.wasm")?;
    let config = config_or_default(args.config.as_deref())?;
    let data_dir = config.resolve(&config.server.data_dir);
    let engine =
        PolicyEngine::with_named_rules(&config, vec![(name.to_string(), PathBuf::from(file))])?;
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let since_ms = args
        .since
        .map_or(0, |since| now_ms.saturating_sub(since.as_millis() as u64));
    let mut tally = Tally::default();
    for record in decisions::read(&data_dir.join("decisions"))? {
        if record.at_ms < since_ms {
            continue;
        }
        // Redacted records carry no input; a message is missing only where
        // the line that held it was cut off.
        let Some((envelope, message)) = record
            .input
            .as_ref()
            .and_then(|input| Some((&input.envelope, input.message.as_ref()?)))
        else {
            tally.not_replayable += 1;
            continue;
        };
        let verdict = engine.evaluate(envelope, message);
        let Some(step) = verdict.steps.first() else {
            continue;
        };
        tally.durations.push(step.took_us);
        let recorded = record.steps.iter().find(|s| s.rule == name);
        match (&step.decision, recorded) {
            (StepDecision::Failed { .. }, _) => tally.failed += 1,
            (_, None) => tally.not_recorded += 1,
            (new, Some(old)) if new.same_as(&old.decision) => tally.same += 1,
            (new, Some(old)) => {
                tally.different += 1;
                if tally.examples.len() < args.show {
                    tally.examples.push(format!(
                        "{} {}: recorded {}, now {}",
                        record.queue_id, record.recipient, old.decision, new
                    ));
                }
            }
        }
    }
    tally.print(name, file);
    Ok(())
}

/// What a replay found.
#[derive(Default)]
struct Tally {
    same: usize,
    different: usize,
    failed: usize,
    /// Records in which the rule did not run (the chain stopped before it,
    /// or it was not in the chain then).
    not_recorded: usize,
    not_replayable: usize,
    durations: Vec<u64>,
    examples: Vec<String>,
}

impl Tally {
    fn print(mut self, name: &str, file: &str) {
        println!("replay of {file} as rule {name}");
        println!("| same | different | failed | rule not run then | not replayable (redacted) |");
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} |",
            self.same, self.different, self.failed, self.not_recorded, self.not_replayable
        );
        self.durations.sort_unstable();
        if !self.durations.is_empty() {
            let at = |q: f64| self.durations[((self.durations.len() - 1) as f64 * q) as usize];
            println!(
                "duration per evaluation: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                at(0.5) as f64 / 1000.0,
                at(0.99) as f64 / 1000.0,
                at(1.0) as f64 / 1000.0
            );
        }
        for example in &self.examples {
            println!("  {example}");
        }
    }
}
