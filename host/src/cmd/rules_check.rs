//! `mailcall rules check CASES.toml`: runs a case list against the chain
//! and prints pass or fail per case, with the difference; exit 1 on any
//! failure. Each rule's instruction count is measured (a metering engine),
//! so `max_instructions` in a case catches cost regressions.

use std::path::PathBuf;

use anyhow::{bail, Context};
use mailcall::config::Config;
use mailcall::policy::fixtures;
use mailcall::policy::{named_after, PolicyEngine};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The case list (TOML, `[[case]]` entries; see docs/rules.md).
    cases: PathBuf,
    /// The configuration (chain, tables, numbering plan, rule settings).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Run these rules, in order, instead of the configured chain:
    /// `NAME=FILE.wasm` (the rule's settings are NAME's) or `FILE.wasm`.
    #[arg(long = "rule", value_name = "NAME=FILE.wasm")]
    rules: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None if !args.rules.is_empty() => Config::defaults(),
        None => bail!("give --config FILE, or --rule NAME=FILE.wasm"),
    };
    let rules = (!args.rules.is_empty()).then(|| {
        args.rules
            .iter()
            .map(|rule| match rule.split_once('=') {
                Some((name, file)) => (name.to_string(), PathBuf::from(file)),
                None => named_after(std::path::Path::new(rule)),
            })
            .collect()
    });
    let engine = PolicyEngine::metered(&config, rules)?;
    let cases = fixtures::load(&args.cases).map_err(anyhow::Error::msg)?;
    let base = args.cases.parent().map(PathBuf::from).unwrap_or_default();
    let mut failed = 0;
    for case in &cases {
        let raw = case.message(&base).map_err(anyhow::Error::msg)?;
        let view = engine
            .view(&raw)
            .with_context(|| format!("case {:?}: not a message", case.name))?;
        let verdict = engine.evaluate(&case.envelope(), &view);
        let differences = case.differences(&verdict);
        let cost: Vec<String> = verdict
            .steps
            .iter()
            .filter_map(|s| Some(format!("{} {}", s.rule, s.instructions?)))
            .collect();
        if differences.is_empty() {
            println!("pass  {}  (instructions: {})", case.name, cost.join(", "));
        } else {
            failed += 1;
            println!("FAIL  {}", case.name);
            for difference in &differences {
                println!("      {difference}");
            }
        }
    }
    println!(
        "{} cases, {} passed, {failed} failed",
        cases.len(),
        cases.len() - failed
    );
    if failed > 0 {
        bail!("{failed} of {} cases failed", cases.len());
    }
    Ok(())
}
