//! `mailcall rules test`: run the chain on a message file for one recipient.

use std::path::PathBuf;

use anyhow::{bail, Context};
use mailcall::config::Config;
use mailcall::policy::{named_after, Envelope, PolicyEngine, Route, RuleFailure, Verdict};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration (chain, tables, numbering plan, limits).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The recipient to decide for (RCPT TO).
    #[arg(long)]
    rcpt: String,
    /// The sender (MAIL FROM); empty for the null sender.
    #[arg(long, default_value = "")]
    from: String,
    /// The SMTP client's address the rules see.
    #[arg(long, default_value = "127.0.0.1")]
    client_address: String,
    /// The EHLO name the rules see.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// Run these modules, in order, instead of the configured chain.
    #[arg(long = "rule", value_name = "FILE.wasm")]
    rules: Vec<PathBuf>,
    /// The message (RFC 5322, e.g. an .eml file).
    message: PathBuf,
}

/// The one line printed.
#[derive(Serialize)]
struct Output<'a> {
    rcpt: &'a str,
    decision: &'static str,
    number: Option<&'a str>,
    rule: Option<&'a str>,
    reason: &'a str,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let raw = std::fs::read(&args.message)
        .with_context(|| format!("cannot read message {}", args.message.display()))?;
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None if !args.rules.is_empty() => Config::defaults(),
        None => bail!("give --config FILE, or --rule FILE.wasm to run modules without one"),
    };
    for rule in &args.rules {
        if !rule.is_file() {
            bail!("rule module {} does not exist", rule.display());
        }
    }
    let engine = PolicyEngine::metered(&config, named_rules(&args.rules))?;
    let message = engine
        .view(&raw)
        .with_context(|| format!("cannot parse {}", args.message.display()))?;
    let envelope = Envelope {
        mail_from: args.from,
        rcpt_to: args.rcpt,
        client_address: args.client_address,
        helo: args.helo,
    };
    let verdict = engine.evaluate(&envelope, &message);
    for (rule, failure) in &verdict.failures {
        let hint = match failure {
            RuleFailure::Timeout(_) => "deadline_ms",
            RuleFailure::MemoryCap(_) => "memory_limit_mib",
            _ => continue,
        };
        eprintln!(
            "hint: rule {rule} hit a limit; raise [rules.{rule}] {hint} in the --config file \
             (JavaScript and Python runtimes need about 200 ms and 64 MiB)"
        );
    }
    print_costs(&verdict);
    let output = Output {
        rcpt: &envelope.rcpt_to,
        decision: match verdict.route {
            Route::Dial { .. } => "dial",
            Route::Smtp => "smtp",
            Route::Defer => "defer",
        },
        number: verdict.number(),
        rule: verdict.rule.as_deref(),
        reason: &verdict.reason,
    };
    println!("{}", serde_json::to_string(&output)?);
    Ok(())
}

/// `--rule FILE.wasm` arguments as rules named after their files (`None`:
/// the configured chain).
pub fn named_rules(files: &[PathBuf]) -> Option<Vec<(String, PathBuf)>> {
    if files.is_empty() {
        return None;
    }
    Some(files.iter().map(|file| named_after(file)).collect())
}

/// Each rule's cost, on stderr (stdout is the one JSON line).
pub fn print_costs(verdict: &Verdict) {
    for step in &verdict.steps {
        if let Some(instructions) = step.instructions {
            eprintln!(
                "cost: rule {} ran {instructions} instructions in {:.2} ms",
                step.rule,
                step.took_us as f64 / 1000.0
            );
        }
    }
}
