//! A configuration file written from code, section by section: the demo's
//! three hosts and the tests' servers, instead of text templates with
//! positional holes. What it writes is TOML that [`Config::parse`] reads,
//! in the order the settings were given.
//!
//! [`Config::parse`]: super::Config::parse

use toml::{Table, Value};

#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    root: Table,
}

impl ConfigFile {
    pub fn new() -> ConfigFile {
        ConfigFile::default()
    }

    /// A server on loopback: `[server]` with its host name, `data_dir =
    /// "data"`, SMTP and POP3 on 127.0.0.1, and its local domains.
    pub fn host(hostname: &str, smtp: u16, pop3: u16, local_domains: &[&str]) -> ConfigFile {
        ConfigFile::new()
            .set("server", "hostname", hostname)
            .set("server", "data_dir", "data")
            .set("server", "smtp_listen", format!("127.0.0.1:{smtp}"))
            .set("server", "pop3_listen", format!("127.0.0.1:{pop3}"))
            .set("server", "local_domains", local_domains.to_vec())
    }

    /// Sets `key` of `section` (a dotted path: `users.taro`,
    /// `sip.routes`), making the section if it is new.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> ConfigFile {
        self.table(section).insert(key.to_string(), value.into());
        self
    }

    /// Makes `section` if it is new, with nothing in it (`[users.jiro]`:
    /// a user with no settings).
    pub fn section(mut self, section: &str) -> ConfigFile {
        self.table(section);
        self
    }

    /// The value of `key` in `section`, if set.
    pub fn get(&self, section: &str, key: &str) -> Option<&Value> {
        let mut table = &self.root;
        for name in section.split('.') {
            table = table.get(name)?.as_table()?;
        }
        table.get(key)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        // A table of strings, numbers, booleans, arrays and tables always
        // serializes.
        toml::to_string(&self.root).unwrap_or_default()
    }

    fn table(&mut self, section: &str) -> &mut Table {
        let mut table = &mut self.root;
        for name in section.split('.') {
            let entry = table
                .entry(name.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            table = entry.as_table_mut().expect("made a table just above");
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn what_it_writes_is_a_configuration_the_server_reads() {
        let file = ConfigFile::host("mx.test", 2525, 1110, &["local.test"])
            .set("server", "max_recipients", 5)
            .section("users.postmaster")
            .set("users.taro", "aliases", vec!["info"])
            .set("routes", "b.example", "127.0.0.1:2526")
            .set("admin", "enabled", false);
        let text = file.to_toml();
        let config = Config::parse(&text, std::path::Path::new("x.toml"), ".".into())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.server.hostname, "mx.test");
        assert_eq!(config.server.max_recipients, 5);
        assert_eq!(config.server.local_domains, ["local.test"]);
        assert!(config.users.contains_key("postmaster"));
        assert_eq!(config.users["taro"].aliases, ["info"]);
        assert_eq!(config.routes["b.example"].port(), 2526);
        assert!(!config.admin.enabled);
        assert_eq!(
            file.get("server", "smtp_listen").and_then(Value::as_str),
            Some("127.0.0.1:2525")
        );
        assert_eq!(file.get("users.nobody", "aliases"), None);
    }
}
