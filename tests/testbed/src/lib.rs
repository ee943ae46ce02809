//! The test bed the host's tests, the SIP crate's tests and their
//! benchmarks share: loopback ports free for UDP and TCP, a guard that
//! stops a peer process (SIGTERM, then SIGKILL), a bounded wait,
//! Kamailio as registrar and proxy (with TLS), a name server on loopback
//! (`dns`), network namespaces (`netns`) and a test CA (`pki`).

pub mod dns;
pub mod netns;
pub mod pki;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free for both UDP and TCP right now (SIP listens on
/// both with one port; so may anything else a test starts).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
        let port = udp.local_addr().expect("its address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP and TCP");
}

/// Waits until `ready` (checked every 20 ms), at most `within`; panics
/// with `what` if it never is.
pub fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether something accepts TCP connections on loopback `port`.
pub fn listens(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// How long a peer has to stop after SIGTERM before it gets SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A peer process, stopped when dropped: SIGTERM first (Kamailio stops
/// its workers, a server finishes cleanly), SIGKILL if it lingers.
pub struct Process {
    pub child: Child,
    pub name: &'static str,
}

impl Process {
    /// Starts `command` as the peer `name`; panics if it cannot (the
    /// message says which package `scripts/setup` installs it from).
    pub fn spawn(name: &'static str, command: &mut Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{name} (scripts/setup installs it): {error}"));
        Process { child, name }
    }

    /// Guards `child`, started elsewhere.
    pub fn of(name: &'static str, child: Child) -> Process {
        Process { child, name }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while started.elapsed() < GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The digest authentication Kamailio asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KamailioAuth {
    None,
    Md5,
    Sha256,
}

/// Kamailio (Debian package `kamailio`) as registrar and proxy on a free
/// loopback port, UDP and TCP, and TLS on another with `Kamailio::with_tls`
/// (package `kamailio-tls-modules`), with `kamailio.cfg` of this crate; its
/// stderr shown if `KAMAILIO_LOG` is set. Stopped when dropped.
pub struct Kamailio {
    pub port: u16,
    /// SIP over TLS, when started with a certificate.
    pub tls_port: Option<u16>,
    run_dir: PathBuf,
    process: Option<Process>,
}

impl Kamailio {
    pub fn start(auth: KamailioAuth) -> Kamailio {
        Kamailio::launch(auth, None)
    }

    /// Also listening on TLS, showing `certificate` (and not asking for
    /// ours).
    pub fn with_tls(auth: KamailioAuth, certificate: &pki::Issued) -> Kamailio {
        Kamailio::launch(auth, Some(certificate))
    }

    fn launch(auth: KamailioAuth, tls: Option<&pki::Issued>) -> Kamailio {
        let port = free_port();
        let run_dir = std::env::temp_dir().join(format!("mailcall-kamailio-{port}"));
        std::fs::create_dir_all(&run_dir).expect("a run folder for kamailio");
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio.cfg");
        let mut command = Command::new("kamailio");
        command
            .args(["-f", config, "-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&run_dir)
            .arg("-P")
            .arg(run_dir.join("kamailio.pid"))
            .args(["-l", &format!("udp:127.0.0.1:{port}")])
            .args(["-l", &format!("tcp:127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let tls_port = tls.map(|issued| {
            let tls_port = free_port();
            command
                .args(["-l", &format!("tls:127.0.0.1:{tls_port}")])
                .args(["-A", "WITH_TLS"])
                .arg("-A")
                .arg(format!(
                    "TLS_CERTIFICATE=\"{}\"",
                    issued.certificate.display()
                ))
                .arg("-A")
                .arg(format!("TLS_KEY=\"{}\"", issued.key.display()));
            tls_port
        });
        match auth {
            KamailioAuth::None => {}
            KamailioAuth::Md5 => {
                command.args(["-A", "WITH_AUTH"]);
            }
            KamailioAuth::Sha256 => {
                command.args(["-A", "WITH_AUTH", "-A", "WITH_SHA256"]);
            }
        }
        if std::env::var_os("KAMAILIO_LOG").is_none() {
            command.stderr(Stdio::null());
        }
        let process = Process::spawn("kamailio", &mut command);
        wait_until("kamailio did not start", Duration::from_secs(10), || {
            listens(port) && tls_port.is_none_or(listens)
        });
        Kamailio {
            port,
            tls_port,
            run_dir,
            process: Some(process),
        }
    }

    /// `sip:127.0.0.1:PORT` (UDP), or with `;transport=tcp`.
    pub fn uri(&self, tcp: bool) -> String {
        let transport = if tcp { ";transport=tcp" } else { "" };
        format!("sip:127.0.0.1:{}{transport}", self.port)
    }

    /// `sip:127.0.0.1:TLS_PORT;transport=tls`.
    pub fn tls_uri(&self) -> String {
        let port = self.tls_port.expect("kamailio started with TLS");
        format!("sip:127.0.0.1:{port};transport=tls")
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // Stopped first, then its run folder goes.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_ignores_sigterm_is_killed() {
        let mut command = Command::new("sh");
        command.args(["-c", "trap '' TERM; exec sleep 30"]);
        let process = Process::spawn("stubborn", &mut command);
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        drop(process);
        let took = started.elapsed();
        assert!(
            took >= GRACE && took < GRACE + Duration::from_secs(3),
            "{took:?}"
        );
    }
}
