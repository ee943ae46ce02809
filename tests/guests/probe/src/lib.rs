//! A rule for the engine's tests that probes its sandbox and reports what
//! it could reach in a `use-smtp` reason: environment, arguments, files,
//! the clock, the network.

use std::time::{SystemTime, UNIX_EPOCH};

use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};

struct Probe;

impl Rule for Probe {
    fn resolve(_envelope: Envelope, _message: Message) -> Decision {
        let env = std::env::vars().count();
        let args = std::env::args().count();
        let root = std::fs::read_dir("/").is_ok();
        let cwd = std::fs::read_dir(".").is_ok();
        let file = std::fs::read("/etc/passwd").is_ok();
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        let tcp = std::net::TcpStream::connect("127.0.0.1:9").is_ok();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
        let map_works = std::collections::HashMap::from([(1, 2)]).len();
        Decision::UseSmtp(format!(
            "env={env} args={args} root={root} cwd={cwd} file={file} clock={clock} tcp={tcp} udp={udp} hashmap={map_works}"
        ))
    }
}

export_rule!(Probe);
