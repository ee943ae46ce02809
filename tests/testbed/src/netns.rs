//! Network namespaces for tests that need more than loopback (NAT): made
//! with `ip netns` and `nft` when the tests run as root, removed when
//! dropped. Tests that need them skip, saying why, anywhere else.

use std::process::{Command, Output};

/// A network namespace of the test's own.
pub struct Netns {
    pub name: String,
}

/// Why namespaces cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    let user = Command::new("id").arg("-u").output();
    if !user.is_ok_and(|output| output.stdout.trim_ascii() == b"0") {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup installs it)"
            ));
        }
    }
    None
}

/// Runs `command`, panicking with its output if it fails.
fn run(command: &mut Command) -> Output {
    let output = command.output().expect("a command the namespace needs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Netns {
    /// A new namespace `name` (made unique by the process id), its
    /// loopback up.
    pub fn new(name: &str) -> Netns {
        let name = format!("mc-{name}-{}", std::process::id());
        // A namespace left over by a killed run of the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `command` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        run(self.command("ip").args(args));
    }

    /// Loads `ruleset` (nft syntax) inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset).expect("writing the ruleset");
        run(self.command("nft").arg("-f").arg(&path));
        let _ = std::fs::remove_file(path);
    }

    /// Joins `self` and `other` with a veth pair, `address` (with prefix)
    /// on this end and `other_address` on the other, both up.
    pub fn link(&self, address: &str, other: &Netns, other_address: &str) {
        let (here, there) = (
            format!("{}-a", self.short()),
            format!("{}-b", other.short()),
        );
        run(Command::new("ip").args([
            "link",
            "add",
            &here,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            &other.name,
        ]));
        self.ip(&["addr", "add", address, "dev", &here]);
        self.ip(&["link", "set", &here, "up"]);
        other.ip(&["addr", "add", other_address, "dev", &there]);
        other.ip(&["link", "set", &there, "up"]);
    }

    /// Whether something listens on TCP `address` inside the namespace.
    pub fn listens(&self, address: &str) -> bool {
        let (host, port) = address.rsplit_once(':').expect("address:port");
        self.command("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .output()
            .is_ok_and(|output| output.status.success())
    }

    /// Interface names are short: 15 bytes at most.
    fn short(&self) -> String {
        let id = std::process::id() % 100_000;
        let role: String = self
            .name
            .trim_start_matches("mc-")
            .chars()
            .take(3)
            .collect();
        format!("{role}{id}")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
