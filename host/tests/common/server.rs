//! `mailcall serve` and its real peers, started and stopped by tests:
//! the server on free loopback ports, swaks, Postfix's smtp-sink.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// Each test binary uses its own part of the test bed.
#[allow(unused_imports)]
pub use mailcall::config::ConfigFile;
#[allow(unused_imports)]
pub use mailcall_testbed::{free_port, Kamailio, KamailioAuth, Process};

/// A running `mailcall serve`.
pub struct Server {
    pub _process: Process,
    pub address: SocketAddr,
}

/// The tests' server: `mx.test`, SMTP on `port` and POP3 on `pop3_port`,
/// local domains `localhost` and `local.test`, users `postmaster` and
/// `taro` (alias `info`), no console (a test that wants one calls
/// [`console`]).
pub fn host(port: u16, pop3_port: u16) -> ConfigFile {
    ConfigFile::host("mx.test", port, pop3_port, &["localhost", "local.test"])
        .section("users.postmaster")
        .set("users.taro", "aliases", vec!["info"])
        .set("admin", "enabled", false)
}

/// `file` relaying for loopback clients.
pub fn relaying(file: ConfigFile) -> ConfigFile {
    file.set("server", "relay_networks", vec!["127.0.0.0/8"])
}

/// `file` with the console on loopback `port`.
pub fn console(file: ConfigFile, port: u16) -> ConfigFile {
    file.set("admin", "enabled", true)
        .set("admin", "listen", format!("127.0.0.1:{port}"))
}

/// [`host`] on `port` (POP3 on a free port), started in `dir` (data in
/// `dir/data`); waits until it accepts connections.
pub fn start(dir: &Path, port: u16) -> Server {
    start_file(dir, &host(port, free_port()))
}

/// Starts the server on `file` in `dir`; waits until its SMTP port takes
/// connections.
pub fn start_file(dir: &Path, file: &ConfigFile) -> Server {
    let smtp: SocketAddr = file
        .get("server", "smtp_listen")
        .and_then(|value| value.as_str())
        .and_then(|text| text.parse().ok())
        .expect("[server] smtp_listen is set");
    start_config(dir, smtp.port(), &file.to_toml())
}

/// Writes `config` to `dir/mailcall.toml`, starts the server on it (its
/// log in `dir/server.log`), and waits until it takes connections on `port`.
pub fn start_config(dir: &Path, port: u16, config: &str) -> Server {
    let path = dir.join("mailcall.toml");
    std::fs::write(&path, config).unwrap();
    // The log (the call ladder, the S-steps) goes to `dir/server.log`.
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info,rsipstack=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while TcpStream::connect(address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        _process: Process::of("mailcall", child),
        address,
    }
}

pub fn maildir_files(dir: &Path, user: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(dir.join("data/mail").join(user).join(sub)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    files
}

pub fn wait_for_files(dir: &Path, user: &str, count: usize) -> Vec<PathBuf> {
    let started = Instant::now();
    loop {
        let files = maildir_files(dir, user);
        if files.len() >= count || started.elapsed() > Duration::from_secs(10) {
            return files;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn swaks(server: &Server, args: &[&str]) -> (bool, String) {
    let from: &[&str] = if args.contains(&"--from") {
        &[]
    } else {
        &["--from", "sender@remote.test"]
    };
    let output = Command::new("swaks")
        .args([
            "--server",
            &server.address.to_string(),
            "--helo",
            "client.test",
        ])
        .args(from)
        .args(args)
        .output()
        .expect("swaks is installed by scripts/setup");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Postfix's smtp-sink on a free port, dumping each transaction into
/// `dump`; `options` make it refuse commands (`-f rcpt`: 5xx, `-r rcpt`: 4xx).
pub struct Sink {
    pub _process: Process,
    pub port: u16,
}

pub fn sink(dump: &Path, options: &[&str]) -> Sink {
    sink_on(dump, options, free_port())
}

/// As [`sink`], on `port` (to stand in for one that was stopped).
pub fn sink_on(dump: &Path, options: &[&str], port: u16) -> Sink {
    std::fs::create_dir_all(dump).unwrap();
    // As root, smtp-sink wants a user to run as once it has its socket.
    let user = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        vec!["-u", "root"]
    } else {
        vec![]
    };
    let child = Command::new("smtp-sink")
        .args(user)
        .args(options)
        .arg("-d")
        .arg(dump.join("%M."))
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink is installed by scripts/setup (Debian package postfix)");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "smtp-sink did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sink {
        _process: Process::of("smtp-sink", child),
        port,
    }
}

/// An argon2 hash of `password`, from `mailcall hash-password`.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// `mailcall queue ACTION` for the configuration in `dir`; its output.
pub fn queue(dir: &Path, action: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["queue", action, "--config"])
        .arg(dir.join("mailcall.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits (at most 15 s) until `mailcall queue list` shows every one of
/// `expected`; returns the last listing.
pub fn wait_for_queue(dir: &Path, expected: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let listing = queue(dir, "list");
        if expected.iter().all(|e| listing.contains(e))
            || started.elapsed() > Duration::from_secs(15)
        {
            return listing;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The files smtp-sink dumped into `dump`, waiting (at most 15 s) for
/// `count` of them, each written to its end: smtp-sink creates a dump file
/// when a transaction starts and fills it as data comes, so a file counts
/// once its size held still between two looks.
pub fn wait_for_dumps(dump: &Path, count: usize) -> Vec<PathBuf> {
    let started = Instant::now();
    let sizes = || -> Vec<(PathBuf, u64)> {
        let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dump)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    };
    let mut last = sizes();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sizes();
        let settled = now == last && now.iter().all(|(_, size)| *size > 0);
        if (settled && now.len() >= count) || started.elapsed() > Duration::from_secs(15) {
            return now.into_iter().map(|(path, _)| path).collect();
        }
        last = now;
    }
}

/// `mailcall history --json` for the configuration in `dir`, as JSON values.
pub fn history(dir: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["history", "--json", "--config"])
        .arg(dir.join("mailcall.toml"))
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits (at most 20 s) until the history in `dir` has an attempt for
/// `recipient` with `outcome`; returns every attempt for the recipient.
pub fn wait_for_history(dir: &Path, recipient: &str, outcome: &str) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let attempts: Vec<serde_json::Value> = history(dir)
            .into_iter()
            .filter(|a| a["recipient"] == recipient)
            .collect();
        if attempts.iter().any(|a| a["outcome"] == outcome)
            || started.elapsed() > Duration::from_secs(20)
        {
            return attempts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a Python script (smtplib, poplib) and returns its output; fails
/// the test if the script fails.
pub fn python(script: &str) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits (at most 10 s) until `ready`, failing the test with `what`.
pub fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(10), ready)
}

/// As [`wait_until`], at most `limit`.
pub fn wait_until_within(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    mailcall_testbed::wait_until(what, limit, ready)
}

/// One HTTP/1.1 request to the console at `port` (`form`: a POST's
/// urlencoded body): its status, headers and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            form.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(form);
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// The value of the first `name="NAME" value="…"` in a page.
pub fn form_value(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
        + marker.len();
    page[start..][..page[start..].find('"').unwrap()].to_string()
}

/// The page at `url` as a real browser left it (headless Chromium, the DOM
/// after its scripts ran), with a screenshot kept in `screenshot`.
pub fn browse(url: &str, screenshot: &Path) -> String {
    let run = |extra: &[&str]| {
        let output = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(url)
            .current_dir(screenshot.parent().unwrap())
            .output()
            .expect("chromium runs (scripts/setup installs it)");
        assert!(
            output.status.success(),
            "chromium {extra:?} {url}: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&[
        "--window-size=1100,900",
        &format!("--screenshot={}", screenshot.display()),
    ]);
    assert!(screenshot.exists(), "no screenshot of {url}");
    run(&["--dump-dom"])
}

/// Headless Chromium driven over the DevTools protocol: a page stays open
/// while the test acts, and its DOM is read as its scripts leave it.
pub struct Browser {
    _process: Process,
    page: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and connects to its page.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--window-size=1100,700")
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium runs (scripts/setup installs it)");
        let process = Process::of("chromium", child);
        let mut address = None;
        wait_until_within(
            "Chromium's DevTools to list the page",
            Duration::from_secs(30),
            || {
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                    return false;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // DevTools names the page's address after the Host header.
                let request = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
                if std::io::Write::write_all(&mut stream, request.as_bytes()).is_err() {
                    return false;
                }
                let targets: Vec<serde_json::Value> = devtools_body(&mut stream)
                    .and_then(|body| serde_json::from_str(&body).ok())
                    .unwrap_or_default();
                address = targets
                    .iter()
                    .find(|t| {
                        t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string));
                address.is_some()
            },
        );
        let (page, _) = tungstenite::connect(address.unwrap()).unwrap();
        Browser {
            _process: process,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Calls a DevTools method; its result.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.page
            .send(tungstenite::Message::text(request.to_string()))
            .unwrap();
        loop {
            let message = self.page.read().unwrap();
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: serde_json::Value = serde_json::from_str(text).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// Waits (at most 15 s) until `expression` is true in the page.
    pub fn wait_for(&mut self, expression: &str) {
        let started = Instant::now();
        while self.eval(expression) != serde_json::Value::Bool(true) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the page never had {expression}: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is now, kept in `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// The body of a DevTools HTTP answer: it keeps the connection open, so
/// read what its Content-Length says.
fn devtools_body(stream: &mut TcpStream) -> Option<String> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let read = std::io::Read::read(stream, &mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        response.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&response);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if body.len() >= length {
            return Some(body.to_string());
        }
    }
}
