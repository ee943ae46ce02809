//! The POP3 server with real clients and a real mail store: fetchmail and
//! mpop fetch over STLS and end the TLS session cleanly, and Dovecot reads
//! the Maildir mailcall delivered to (and writes into it) and counts the
//! same sizes as mailcall's `LIST`.
//!
//! Each test skips, saying so, when its tool is missing, unless `CI` is set:
//! in CI a missing tool fails (scripts/setup installs them all).

mod common;
use common::server::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PASSWORD: &str = "secret pw";

/// Whether `tool` is installed; prints why the test is skipped if not, and
/// fails in CI.
fn installed(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing (scripts/setup installs it)"
        );
        eprintln!("SKIPPED: {tool} is not installed (scripts/setup installs it)");
    }
    found
}

/// A server with taro's password, holding the messages swaks sent:
/// one with a body line starting with a dot, one plain, and one file with
/// LF line ends put into the Maildir as another program would.
fn server_with_mail(dir: &Path) -> (Server, u16) {
    let hash = hash_password(PASSWORD);
    let pop3_port = free_port();
    let server = start_file(
        dir,
        &host(free_port(), pop3_port).set("users.taro", "password_hash", hash.as_str()),
    );
    for (subject, body) in [("dotted", ".a line with a leading dot"), ("plain", "hello")] {
        let (ok, transcript) = swaks(
            &server,
            &[
                "--to",
                "taro@local.test",
                "--h-Subject",
                subject,
                "--body",
                body,
            ],
        );
        assert!(ok, "{transcript}");
    }
    assert_eq!(wait_for_files(dir, "taro", 2).len(), 2);
    std::fs::write(
        dir.join("data/mail/taro/new/1900000000.M1P1.elsewhere"),
        "Subject: lf only\nFrom: <x@local.test>\n\nline one\nline two\n",
    )
    .unwrap();
    (server, pop3_port)
}

/// Lines of a client's output that tell of a TLS session not ended
/// properly, or of any TLS error.
fn tls_trouble(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| {
            let line = line.to_lowercase();
            [
                "unexpected eof",
                "close_notify",
                "close notify",
                "non-properly terminated",
                "unexpectedly",
                "tls error",
                "ssl error",
                "ssl_read",
                "ssl connection failed",
            ]
            .iter()
            .any(|symptom| line.contains(symptom))
        })
        .collect()
}

#[test]
fn fetchmail_fetches_over_stls_and_the_tls_session_ends_cleanly() {
    if !installed("fetchmail") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, pop3_port) = server_with_mail(dir.path());
    let fetched = dir.path().join("fetched.mbox");
    let rc = dir.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             poll 127.0.0.1 service {pop3_port} protocol POP3 auth password\n\
             \x20 user \"taro\" there with password \"{PASSWORD}\" is \"root\" here\n\
             \x20 sslproto \"tls1.2+\" no sslcertck\n\
             \x20 mda \"cat >> {fetched}\"\n",
            fetched = fetched.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("fetchmail")
        .arg("--fetchmailrc")
        .arg(&rc)
        .arg("--pidfile")
        .arg(dir.path().join("fetchmail.pid"))
        .args(["--verbose", "--nodetach"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("STLS"), "{text}");
    assert!(text.contains("3 messages for taro"), "{text}");
    assert!(tls_trouble(&text).is_empty(), "{text}");
    let mbox = std::fs::read_to_string(&fetched).unwrap();
    for subject in ["dotted", "plain", "lf only"] {
        assert!(mbox.contains(&format!("Subject: {subject}")), "{mbox}");
    }
    assert!(mbox.contains("\n.a line with a leading dot"), "{mbox}");
    assert!(
        maildir_files(dir.path(), "taro").is_empty(),
        "fetchmail deletes what it fetched, at QUIT"
    );
}

#[test]
fn a_pop3_tls_session_ends_with_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, pop3_port) = server_with_mail(dir.path());
    // After QUIT, the server's close_notify makes the read end cleanly
    // (b""); a bare TCP close raises SSLEOFError ("EOF occurred in
    // violation of protocol") once ragged EOFs are not suppressed, which
    // poplib's stls() does not allow: the session is driven by hand.
    let script = format!(
        r#"
import socket, ssl
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
sock = socket.create_connection(("127.0.0.1", {pop3_port}), timeout=10)
lines = sock.makefile("rb")
def say(line):
    sock.sendall(line.encode() + b"\r\n")
    return lines.readline().decode().strip()
lines.readline()
assert say("STLS").startswith("+OK")
sock = context.wrap_socket(sock, suppress_ragged_eofs=False)
lines = sock.makefile("rb")
assert say("USER taro").startswith("+OK")
assert say("PASS {PASSWORD}").startswith("+OK")
print(say("QUIT"))
try:
    print("after QUIT", sock.recv(1))
except ssl.SSLError as error:
    print("after QUIT", type(error).__name__, error)
"#
    );
    let stdout = python(&script);
    assert!(stdout.contains("+OK bye"), "{stdout}");
    assert!(stdout.contains("after QUIT b''"), "{stdout}");
}

/// The SHA-256 fingerprint of the server's certificate, as mpop pins it
/// (`AB:CD:…`).
fn certificate_fingerprint(pem: &Path) -> String {
    use base64::Engine;
    use sha2::Digest;
    let text = std::fs::read_to_string(pem).unwrap();
    let body: String = text
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let digest = sha2::Sha256::digest(der);
    digest
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn mpop_fetches_over_stls_with_a_pinned_certificate_and_ends_cleanly() {
    if !installed("mpop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, pop3_port) = server_with_mail(dir.path());
    let inbox = dir.path().join("inbox");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).unwrap();
    }
    let fingerprint = certificate_fingerprint(&dir.path().join("data/tls/certificate.pem"));
    let conf = dir.path().join("mpoprc");
    std::fs::write(
        &conf,
        format!(
            "account mailcall\n\
             host 127.0.0.1\n\
             port {pop3_port}\n\
             user taro\n\
             password {PASSWORD}\n\
             auth user\n\
             tls on\n\
             tls_starttls on\n\
             tls_fingerprint {fingerprint}\n\
             delivery maildir {inbox}\n\
             keep off\n\
             uidls_file {uidls}\n",
            inbox = inbox.display(),
            uidls = dir.path().join("uidls").display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new("mpop")
        .arg("--file")
        .arg(&conf)
        .args(["--debug", "mailcall"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("STLS"), "{text}");
    assert!(tls_trouble(&text).is_empty(), "{text}");
    let fetched: Vec<PathBuf> = std::fs::read_dir(inbox.join("new"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert_eq!(fetched.len(), 3, "{text}");
    let all: String = fetched
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    for subject in ["dotted", "plain", "lf only"] {
        assert!(all.contains(&format!("Subject: {subject}")), "{all}");
    }
    assert!(all.contains(".a line with a leading dot"), "{all}");
    assert!(maildir_files(dir.path(), "taro").is_empty(), "{text}");
}

/// A Dovecot instance for doveadm, on its own folders, never a system
/// service: stopped when dropped.
struct Dovecot {
    config: PathBuf,
    _process: Process,
}

impl Dovecot {
    /// Dovecot serving `maildir` as the mailbox of any user, read and
    /// written as `nobody` (Dovecot refuses root for mail).
    fn start(dir: &Path, maildir: &Path) -> Dovecot {
        let config = dir.join("dovecot.conf");
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::write(
            &config,
            format!(
                "base_dir = {base}\n\
                 state_dir = {state}\n\
                 log_path = {log}\n\
                 protocols =\n\
                 ssl = no\n\
                 default_internal_user = root\n\
                 default_login_user = root\n\
                 mail_location = maildir:{maildir}\n\
                 passdb {{\n  driver = static\n  args = password=unused\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={home}\n}}\n",
                base = dir.join("run").display(),
                state = dir.join("state").display(),
                log = dir.join("dovecot.log").display(),
                maildir = maildir.display(),
                home = dir.join("home").display(),
            ),
        )
        .unwrap();
        // mailcall keeps its data folder 0700: let `nobody` pass through
        // the folders above the Maildir (traverse only), as an operator
        // sharing a Maildir with Dovecot would.
        {
            use std::os::unix::fs::PermissionsExt;
            let temp = std::env::temp_dir();
            for folder in maildir.ancestors().skip(1) {
                if !folder.starts_with(&temp) || folder == temp {
                    break;
                }
                let mode = std::fs::metadata(folder).unwrap().permissions().mode();
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | 0o111))
                    .unwrap();
            }
        }
        for path in [maildir, &dir.join("home")] {
            let status = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let process = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = dir.join("run/auth-userdb");
        wait_until("Dovecot did not start", || socket.exists());
        Dovecot {
            config,
            _process: Process::of("dovecot", process),
        }
    }

    /// Runs `doveadm` with `args`; its standard output.
    fn doveadm(&self, args: &[&str], input: Option<&[u8]>) -> String {
        use std::io::Write;
        let mut child = Command::new("doveadm")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or_default()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "doveadm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The master's children go with it.
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stderr(Stdio::null())
            .status();
    }
}

/// mailcall's `UIDL` and `LIST`, paired: unique name → size.
fn mailcall_sizes(pop3_port: u16) -> Vec<(String, u64)> {
    let script = format!(
        r#"
import poplib
pop = poplib.POP3("127.0.0.1", {pop3_port}, timeout=10)
pop.user("taro")
pop.pass_("{PASSWORD}")
uids = dict(line.decode().split() for line in pop.uidl()[1])
for line in pop.list()[1]:
    number, size = line.decode().split()
    print(uids[number], size)
pop.quit()
"#
    );
    let mut sizes: Vec<(String, u64)> = python(&script)
        .lines()
        .map(|line| {
            let (unique, size) = line.split_once(' ').unwrap();
            (unique.to_string(), size.parse().unwrap())
        })
        .collect();
    sizes.sort();
    sizes
}

#[test]
fn dovecot_reads_the_maildir_and_counts_the_sizes_pop3_lists() {
    if !installed("dovecot") || !installed("doveadm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, pop3_port) = server_with_mail(dir.path());
    let maildir = dir.path().join("data/mail/taro");
    let dovecot = Dovecot::start(&dir.path().join("dovecot"), &maildir);
    // Dovecot delivers one more itself: LF line ends, and its sizes in the
    // file name (`,S=…,W=…`).
    dovecot.doveadm(
        &["save", "-u", "taro"],
        Some(b"Subject: saved by dovecot\nFrom: <d@local.test>\n\n.dotted\nbody\n"),
    );
    let fetched = dovecot.doveadm(&["fetch", "-u", "taro", "guid size.virtual", "ALL"], None);
    // For a Maildir, Dovecot's GUID is the file's unique name: POP3's UIDL.
    let mut dovecot_sizes: Vec<(String, u64)> = Vec::new();
    let mut guid = None;
    for line in fetched.lines() {
        if let Some(value) = line.strip_prefix("guid: ") {
            guid = Some(value.to_string());
        } else if let Some(value) = line.strip_prefix("size.virtual: ") {
            dovecot_sizes.push((guid.take().unwrap(), value.parse().unwrap()));
        }
    }
    dovecot_sizes.sort();
    assert_eq!(dovecot_sizes.len(), 4, "{fetched}");
    assert!(
        dovecot_sizes.iter().any(|(guid, _)| guid.contains(",W=")),
        "{fetched}"
    );
    assert_eq!(mailcall_sizes(pop3_port), dovecot_sizes, "{fetched}");
}
