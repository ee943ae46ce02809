//! Operator-edited tables (claims 3 and 4): address/domain tables and
//! keyword tables, each a TOML file of `"key" = "value"` lines.
//!
//! ```toml
//! "abc@efg.com"   = "050-1234-5678"
//! "muratec.co.jp" = "050-2222-3333"
//! "*.example.net" = "080-0000-1111"
//! ```
//!
//! The host keeps the file order and answers look-ups case-insensitively;
//! for the searches of the rule contract (`tables.match-address`,
//! `tables.search-keywords`) it reads the values as numbers of the plan,
//! once per table version, and indexes the keywords. A changed table file
//! builds a new policy generation; a file that fails to parse leaves the
//! generation in force as it is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use super::address::table_keys;
use super::bindings::mailcall::rule::types::{KeyKind, NumberingPlan};
use super::keywords::{KeywordIndex, KeywordMatch};
use super::numbers::normalize;

/// A table file that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("table {name}: cannot read {path}: {error}")]
    Read {
        name: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("table {name}: {path}: {message}")]
    Parse {
        name: String,
        path: PathBuf,
        message: String,
    },
}

/// One loaded table.
#[derive(Debug, Default)]
pub struct Table {
    /// Entries in file order, as written.
    entries: Vec<(String, String)>,
    /// Lower-cased key to index in `entries`.
    index: HashMap<String, usize>,
    /// The values read as numbers and the keyword index, made at the first
    /// search (most tables are only ever searched one way or not at all).
    prepared: OnceLock<Prepared>,
}

/// A table read for the searches under one numbering plan.
#[derive(Debug, Clone)]
struct Prepared {
    plan: NumberingPlan,
    /// Each entry's value as a number in national form, by entry.
    numbers: Vec<Option<String>>,
    keywords: OnceLock<KeywordIndex>,
}

/// The entry of an address table that decides for an address.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressMatch {
    /// The key as looked up (lower-cased).
    pub key: String,
    pub kind: KeyKind,
    pub value: String,
    pub number: String,
}

impl Table {
    /// Parses a table file's text.
    pub fn parse(text: &str) -> Result<Table, String> {
        let parsed: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut table = Table::default();
        for (key, value) in parsed {
            let value = match value {
                toml::Value::String(value) => value,
                toml::Value::Integer(_) => {
                    return Err(format!(
                        "{key:?}: write the number as a quoted string (\"050-1234-5678\"), \
                         or its leading zero is lost"
                    ))
                }
                other => {
                    return Err(format!(
                        "{key:?}: expected a quoted string, found {}",
                        other.type_str()
                    ))
                }
            };
            let folded = key.to_lowercase();
            if table.index.contains_key(&folded) {
                return Err(format!("{key:?} is listed twice (keys ignore case)"));
            }
            table.index.insert(folded, table.entries.len());
            table.entries.push((key, value));
        }
        Ok(table)
    }

    /// The value under `key`, ignoring case.
    pub fn get(&self, key: &str) -> Option<&str> {
        let index = *self.index.get(&key.to_lowercase())?;
        Some(self.entries[index].1.as_str())
    }

    /// Every entry in file order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The most specific entry for `address` whose value is a number.
    pub fn match_address(
        &self,
        name: &str,
        address: &str,
        plan: &NumberingPlan,
    ) -> Option<AddressMatch> {
        let prepared = self.prepared(name, plan);
        table_keys(address).into_iter().find_map(|(kind, key)| {
            let index = *self.index.get(&key)?;
            let number = prepared.numbers[index].clone()?;
            Some(AddressMatch {
                kind,
                value: self.entries[index].1.clone(),
                number,
                key,
            })
        })
    }

    /// The keyword `text` mentions first, of the entries whose value is a
    /// number.
    pub fn search_keywords(
        &self,
        name: &str,
        text: &str,
        plan: &NumberingPlan,
    ) -> Option<KeywordMatch> {
        let prepared = self.prepared(name, plan);
        let index = prepared.keywords.get_or_init(|| {
            KeywordIndex::new(self.entries.iter().zip(&prepared.numbers).filter_map(
                |((key, value), number)| Some((key.as_str(), value.as_str(), number.clone()?)),
            ))
        });
        index.search(text)
    }

    /// The table read under `plan`. Every policy generation has one plan,
    /// so this is made once; a caller with another plan (never the server)
    /// gets its own, uncached.
    fn prepared(&self, name: &str, plan: &NumberingPlan) -> std::borrow::Cow<'_, Prepared> {
        let prepared = self.prepared.get_or_init(|| self.prepare(name, plan));
        if prepared.plan == *plan {
            std::borrow::Cow::Borrowed(prepared)
        } else {
            std::borrow::Cow::Owned(self.prepare(name, plan))
        }
    }

    fn prepare(&self, name: &str, plan: &NumberingPlan) -> Prepared {
        let numbers = self
            .entries
            .iter()
            .map(|(key, value)| {
                let number = normalize(value, plan);
                if number.is_none() {
                    tracing::warn!(
                        table = name,
                        key,
                        value,
                        "table entry is not a number; skipped"
                    );
                }
                number
            })
            .collect();
        Prepared {
            plan: plan.clone(),
            numbers,
            keywords: OnceLock::new(),
        }
    }
}

/// One consistent version of every table, as one evaluation sees them:
/// part of a policy generation, replaced with it.
#[derive(Debug, Default, Clone)]
pub struct TableSet {
    tables: HashMap<String, Arc<Table>>,
    /// SHA-256 (hex) of each table's file, for the generation's hash.
    digests: BTreeMap<String, String>,
}

impl TableSet {
    /// Loads every table; any failure is an error, so a policy is never
    /// built on a half-read table.
    pub fn load(files: &BTreeMap<String, PathBuf>) -> Result<TableSet, TableError> {
        let mut set = TableSet::default();
        for (name, path) in files {
            let (table, digest) = read_table(name, path)?;
            set.tables.insert(name.clone(), Arc::new(table));
            set.digests.insert(name.clone(), digest);
        }
        Ok(set)
    }

    /// The table called `name`.
    pub fn get(&self, name: &str) -> Option<&Table> {
        self.tables.get(name).map(Arc::as_ref)
    }

    /// Each table's name and the SHA-256 of its file, by name.
    pub fn digests(&self) -> impl Iterator<Item = (&str, &str)> {
        self.digests.iter().map(|(n, d)| (n.as_str(), d.as_str()))
    }
}

fn read_table(name: &str, path: &Path) -> Result<(Table, String), TableError> {
    let text = std::fs::read_to_string(path).map_err(|error| TableError::Read {
        name: name.to_string(),
        path: path.to_path_buf(),
        error,
    })?;
    let digest = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let table = Table::parse(&text).map_err(|message| TableError::Parse {
        name: name.to_string(),
        path: path.to_path_buf(),
        message: message.trim_end().to_string(),
    })?;
    Ok((table, digest))
}

/// Paths compare by their file name within the same folder, whether or not
/// they were written the same way (`./t.toml`, `/etc/x/t.toml`).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| -> Option<PathBuf> {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(dir.canonicalize().ok()?.join(p.file_name()?))
    };
    match (canonical(a), canonical(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_ignore_case_and_keep_file_order() {
        let table = Table::parse(
            "\"Abc@Efg.com\" = \"050-1234-5678\"\n\"*.example.net\" = \"080-0000-1111\"\n\"muratec.co.jp\" = \"050-2222-3333\"\n",
        )
        .unwrap();
        assert_eq!(table.get("abc@EFG.COM"), Some("050-1234-5678"));
        assert_eq!(table.get("*.EXAMPLE.net"), Some("080-0000-1111"));
        assert_eq!(table.get("efg.com"), None);
        let keys: Vec<&str> = table.entries().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["Abc@Efg.com", "*.example.net", "muratec.co.jp"]);
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        let error = Table::parse("KYOTOSITEN = 5012345678\n").unwrap_err();
        assert!(error.contains("quoted string"), "{error}");
        let error = Table::parse("KYOTOSITEN = 05012345678\n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        let error = Table::parse("a = \"1\"\nA = \"2\"\n").unwrap_err();
        assert!(error.contains("twice"), "{error}");
        let error = Table::parse("a = \n").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn a_set_loads_every_table_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("keywords.toml");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&good, "KYOTOSITEN = \"050-1234-5678\"\n").unwrap();
        std::fs::write(&bad, "KYOTOSITEN = \n").unwrap();
        let files = BTreeMap::from([("keywords".to_string(), good.clone())]);
        let set = TableSet::load(&files).unwrap();
        assert_eq!(
            set.get("keywords").unwrap().get("kyotositen"),
            Some("050-1234-5678")
        );
        let (_, digest) = set.digests().next().unwrap();
        assert_eq!(digest.len(), 64);

        let mut both = files.clone();
        both.insert("bad".to_string(), bad.clone());
        let error = TableSet::load(&both).unwrap_err().to_string();
        assert!(
            error.contains("table bad") && error.contains("line 1"),
            "{error}"
        );
        assert!(same_file(&dir.path().join("./keywords.toml"), &good));
    }
}
