//! Rule fixtures: a case list (TOML) of messages, recipients and the
//! decisions expected for them. `mailcall rules check` runs one against a
//! chain; `[rules.NAME] fixtures = "FILE"` makes one a gate, so a
//! generation whose rule fails its fixtures is never put in force.
//!
//! ```toml
//! [[case]]
//! name = "keyword in RCPT TO"
//! rcpt = "kyotositen@branch.example"
//! message = "Subject: hello\n\nnothing here\n"   # or message_file = "x.eml"
//! number = "05012345678"          # expected: dial this (else: smtp)
//! decision = "dial"               # dial, smtp or defer (default from number)
//! rule = "keyword-table"          # the rule that decides (optional)
//! reason = "keyword KYOTOSITEN in RCPT TO"   # optional
//! max_instructions = 5000000      # optional, checked on a metering engine
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bindings::mailcall::rule::types::Envelope;
use super::chain::Verdict;

/// A case list file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseList {
    #[serde(default)]
    pub case: Vec<Case>,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub rcpt: String,
    /// MAIL FROM.
    #[serde(default)]
    pub from: String,
    /// The message inline (`\n` line ends are sent as CRLF) ...
    pub message: Option<String>,
    /// ... or in a file, relative to the case list.
    pub message_file: Option<PathBuf>,
    pub decision: Option<String>,
    pub number: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub max_instructions: Option<u64>,
}

impl Case {
    /// The message's bytes, with CRLF line ends.
    pub fn message(&self, base: &Path) -> Result<Vec<u8>, String> {
        match (&self.message, &self.message_file) {
            (Some(text), None) => Ok(text
                .replace("\r\n", "\n")
                .replace('\n', "\r\n")
                .into_bytes()),
            (None, Some(file)) => {
                let path = base.join(file);
                std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
            }
            _ => Err(format!(
                "case {:?}: give message or message_file",
                self.name
            )),
        }
    }

    pub fn envelope(&self) -> Envelope {
        Envelope {
            mail_from: self.from.clone(),
            rcpt_to: self.rcpt.clone(),
            client_address: "127.0.0.1".into(),
            helo: "localhost".into(),
        }
    }

    /// How `verdict` differs from what the case expects (empty: it passes).
    pub fn differences(&self, verdict: &Verdict) -> Vec<String> {
        let mut differences = Vec::new();
        let expected_decision = self.decision.clone().unwrap_or_else(|| {
            if self.number.is_some() {
                "dial"
            } else {
                "smtp"
            }
            .to_string()
        });
        let decision = match verdict.route {
            super::Route::Dial { .. } => "dial",
            super::Route::Smtp => "smtp",
            super::Route::Defer => "defer",
        };
        if decision != expected_decision {
            differences.push(format!(
                "decision: expected {expected_decision}, got {decision}"
            ));
        }
        if self.number.as_deref() != verdict.number() {
            differences.push(format!(
                "number: expected {}, got {}",
                self.number.as_deref().unwrap_or("none"),
                verdict.number().unwrap_or("none")
            ));
        }
        if let Some(rule) = &self.rule {
            if verdict.rule.as_ref() != Some(rule) {
                differences.push(format!(
                    "rule: expected {rule}, got {}",
                    verdict.rule.as_deref().unwrap_or("none")
                ));
            }
        }
        if let Some(reason) = &self.reason {
            if *reason != verdict.reason {
                differences.push(format!(
                    "reason: expected {reason:?}, got {:?}",
                    verdict.reason
                ));
            }
        }
        for (name, failure) in &verdict.failures {
            differences.push(format!("rule {name} failed: {failure}"));
        }
        if let Some(budget) = self.max_instructions {
            for step in &verdict.steps {
                if let Some(used) = step.instructions.filter(|&used| used > budget) {
                    differences.push(format!(
                        "rule {}: {used} instructions, over the budget of {budget}",
                        step.rule
                    ));
                }
            }
        }
        differences
    }
}

/// Reads a case list.
pub fn load(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let list: CaseList = toml::from_str(&text)
        .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
    Ok(list.case)
}
