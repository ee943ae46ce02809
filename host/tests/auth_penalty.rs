//! Failed logins slow down the address they come from, over POP3 and SMTP
//! alike, and never lock the user out elsewhere: Python's poplib and
//! smtplib connect to the server from 127.0.0.2 and 127.0.0.3.

mod common;
use common::server::*;

const PASSWORD: &str = "secret pw";

#[test]
fn failures_from_one_address_slow_it_while_another_logs_in_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password(PASSWORD);
    let pop3_port = free_port();
    let server = start_file(
        dir.path(),
        &host(free_port(), pop3_port).set("users.taro", "password_hash", hash.as_str()),
    );
    let smtp_port = server.address.port();
    // Events are printed in the order they happen; the test reads the order.
    let script = format!(
        r#"
import poplib, smtplib, socket, threading, time

class From(poplib.POP3):
    """poplib from a chosen source address."""
    def __init__(self, source):
        self.source = source
        super().__init__("127.0.0.1", {pop3_port}, timeout=60)
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))

events = []
lock = threading.Lock()
def event(text):
    with lock:
        events.append(text)

# A burst of wrong passwords from 127.0.0.2 (each one waits longer).
burst = From("127.0.0.2")
for attempt in range(2):
    burst.user("taro")
    try:
        burst.pass_("wrong")
        event("wrong password accepted")
    except poplib.error_proto as error:
        event(f"refused {{error.args[0].decode()}}")
burst.quit()

# The right password from 127.0.0.2, over SMTP this time: it waits for the
# penalty the POP3 failures earned, and then works.
def penalized():
    smtp = smtplib.SMTP("127.0.0.1", {smtp_port}, timeout=60, source_address=("127.0.0.2", 0))
    smtp.ehlo("penalized.test")
    event("127.0.0.2 AUTH sent")
    code, _ = smtp.login("taro", "{PASSWORD}")
    event(f"127.0.0.2 AUTH {{code}}")
    smtp.quit()
slow = threading.Thread(target=penalized)
slow.start()
while "127.0.0.2 AUTH sent" not in events:
    time.sleep(0.01)
time.sleep(0.2)

# Meanwhile the same user from 127.0.0.3 logs in over POP3 at once.
elsewhere = From("127.0.0.3")
elsewhere.user("taro")
event(f"127.0.0.3 PASS {{elsewhere.pass_('{PASSWORD}').decode()}}")
elsewhere.quit()
slow.join()
for text in events:
    print(text)
"#
    );
    let stdout = python(&script);
    let events: Vec<&str> = stdout.lines().collect();
    assert_eq!(events.len(), 5, "{stdout}");
    assert!(
        events[..2]
            .iter()
            .all(|e| e.starts_with("refused -ERR [AUTH]")),
        "{stdout}"
    );
    assert_eq!(events[2], "127.0.0.2 AUTH sent", "{stdout}");
    // Sent later, answered first: 127.0.0.3 did not wait for 127.0.0.2's
    // penalty, and 127.0.0.2 was not locked out, only slowed.
    assert!(events[3].starts_with("127.0.0.3 PASS +OK"), "{stdout}");
    assert_eq!(events[4], "127.0.0.2 AUTH 235", "{stdout}");
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert_eq!(log.matches("login failed").count(), 2, "{log}");
}
