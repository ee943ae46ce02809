//! `mailcall demo`: the whole invention on one machine. Three servers on
//! loopback — A (`a.example`), B (`b.example`) and C (`c.example`, the
//! rest of the internet) — with direct SIP routes between A and B and no
//! SIP server. Sample messages go into A, one for every path: a number in
//! the address, the address table, a keyword, the custom rule, no number
//! (normal relay), a number B refuses (fallback to relay), and local mail.
//! The demo prints the call ladder of one delivery and a table of results,
//! and succeeds only if every message ended where it should.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mailcall::config::{Config, ConfigFile};
use mailcall::history::{self, Attempt, AttemptOutcome, DeliveryPath, History};
use mailcall::smtp::client::{self, ClientSettings, Outgoing, Relayed};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the built stock rules are (`scripts/build-rules`).
    #[arg(long, default_value = "build/rules")]
    pub rules_dir: PathBuf,
    /// The demo's folder: configurations, data, and `demo.log`; emptied
    /// first.
    #[arg(long, default_value = "mailcall-demo")]
    pub dir: PathBuf,
    /// After the results, keep the servers running (until Ctrl-C), to look
    /// at A's console.
    #[arg(long)]
    pub stay: bool,
}

const B_NUMBER: &str = "05022220000";
/// A number routed to B that B does not answer for: B refuses the call.
const REFUSED_NUMBER: &str = "05033330000";

/// One sample message and where it must end.
struct Sample {
    recipient: &'static str,
    subject: &'static str,
    extra_headers: &'static str,
    body: &'static str,
    /// The path of the final, successful attempt.
    path: DeliveryPath,
    /// The host and mailbox it must arrive in.
    arrives: (&'static str, &'static str),
    /// What it shows.
    shows: &'static str,
}

const SAMPLES: &[Sample] = &[
    Sample {
        recipient: "050-2222-0000@b.example",
        subject: "number in the address",
        extra_headers: "",
        body: "The recipient's address carries B's number.",
        path: DeliveryPath::Call,
        arrives: ("b", "hanako"),
        shows: "claim 2: a number in the address (embedded-number)",
    },
    Sample {
        recipient: "hanako@b.example",
        subject: "address table",
        extra_headers: "",
        body: "The address table maps this address to B's number.",
        path: DeliveryPath::Call,
        arrives: ("b", "hanako"),
        shows: "claim 3: the address table (address-table)",
    },
    Sample {
        recipient: "sales@b.example",
        subject: "for the Osaka branch",
        extra_headers: "",
        body: "Please forward to OSAKASITEN.",
        path: DeliveryPath::Call,
        arrives: ("b", "sales"),
        shows: "claim 4: a keyword in the body (keyword-table)",
    },
    Sample {
        recipient: "boss@b.example",
        subject: "URGENT: the contract",
        extra_headers: "Importance: high\r\n",
        body: "Urgent mail from a.example is called in.",
        path: DeliveryPath::Call,
        arrives: ("b", "boss"),
        shows: "the custom rule: urgent mail from a configured sender domain",
    },
    Sample {
        recipient: "someone@c.example",
        subject: "no number",
        extra_headers: "",
        body: "No rule finds a number: normal SMTP relay.",
        path: DeliveryPath::Relay,
        arrives: ("c", "someone"),
        shows: "S8: no number, normal relay",
    },
    Sample {
        recipient: "jiro@b.example",
        subject: "B refuses the call",
        extra_headers: "",
        body: "B answers 404 for this number: A falls back to relay.",
        path: DeliveryPath::Relay,
        arrives: ("b", "jiro"),
        shows: "S8 after a failed call: fallback relay",
    },
    Sample {
        recipient: "taro@a.example",
        subject: "local mail",
        extra_headers: "",
        body: "For A's own user: stored in A's Maildir.",
        path: DeliveryPath::Local,
        arrives: ("a", "taro"),
        shows: "S3: local delivery",
    },
];

/// The log file in the demo's folder (set up by `main`).
pub fn log_file(args: &Args) -> PathBuf {
    args.dir.join("demo.log")
}

/// Empties the demo's folder before the log is opened in it.
pub fn prepare(args: &Args) -> anyhow::Result<()> {
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot empty {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rules_dir = std::path::absolute(&args.rules_dir)?;
    for rule in [
        "embedded-number",
        "address-table",
        "keyword-table",
        "custom",
    ] {
        let file = rules_dir.join(format!("{rule}.wasm"));
        if !file.is_file() {
            bail!(
                "{} is missing: run scripts/build-rules first",
                file.display()
            );
        }
    }
    let dir = std::path::absolute(&args.dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(&dir, &rules_dir, &log_file(&args), args.stay))
}

/// A loopback port free for both TCP and UDP right now (SIP takes both).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no loopback port is free for both TCP and UDP")
}

struct Ports {
    smtp: u16,
    pop3: u16,
    sip: u16,
    /// The console's (A's only is on).
    admin: u16,
}

impl Ports {
    fn new() -> anyhow::Result<Ports> {
        Ok(Ports {
            smtp: free_port()?,
            pop3: free_port()?,
            sip: free_port()?,
            admin: free_port()?,
        })
    }
}

async fn demo(dir: &Path, rules_dir: &Path, log: &Path, stay: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let (a, b, c) = (Ports::new()?, Ports::new()?, Ports::new()?);
    let configs = [
        ("a", config_a(&a, &b, &c, rules_dir)),
        ("b", config_b(&b)),
        ("c", config_c(&c)),
    ];
    println!(
        "mailcall demo: three servers on loopback, in {}",
        dir.display()
    );
    println!(
        "  A  a.example  SMTP 127.0.0.1:{}  SIP 127.0.0.1:{}  number 05011110000  console http://127.0.0.1:{}/",
        a.smtp, a.sip, a.admin
    );
    println!(
        "  B  b.example  SMTP 127.0.0.1:{}  SIP 127.0.0.1:{}  number {B_NUMBER}",
        b.smtp, b.sip
    );
    println!(
        "  C  c.example  SMTP 127.0.0.1:{}  (the rest of the internet)",
        c.smtp
    );
    std::fs::create_dir_all(dir.join("a/tables"))?;
    std::fs::write(
        dir.join("a/tables/addresses.toml"),
        format!(
            "\"hanako@b.example\" = \"{B_NUMBER}\"\n\"jiro@b.example\" = \"{REFUSED_NUMBER}\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("a/tables/keywords.toml"),
        format!("OSAKASITEN = \"{B_NUMBER}\"\n"),
    )?;
    let mut servers = Vec::new();
    for (name, text) in configs {
        let host_dir = dir.join(name);
        std::fs::create_dir_all(&host_dir)?;
        let path = host_dir.join("mailcall.toml");
        std::fs::write(&path, &text)?;
        let config = Arc::new(Config::load(&path)?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(mailcall::server::serve(config, async {
            let _ = stopped.await;
        }));
        servers.push((name, stop, task));
    }
    for (port, (name, _, task)) in [a.smtp, b.smtp, c.smtp].into_iter().zip(&mut servers) {
        wait_for_port(name, port, task).await?;
    }

    println!("\nSubmitting {} messages to A:", SAMPLES.len());
    let settings = ClientSettings {
        hostname: "client.demo".into(),
        tls: None,
        connect_timeout: Duration::from_secs(5),
        reply_timeout: Duration::from_secs(30),
    };
    for (n, sample) in SAMPLES.iter().enumerate() {
        let message = format!(
            "From: Taro <taro@a.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <demo-{n}@a.example>\r\n{extra}\r\n{body}\r\n",
            to = sample.recipient,
            subject = sample.subject,
            extra = sample.extra_headers,
            body = sample.body,
        );
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", a.smtp)).await?;
        let recipients = [sample.recipient.to_string()];
        let outgoing = Outgoing {
            mail_from: "taro@a.example",
            recipients: &recipients,
            message: message.as_bytes(),
        };
        match client::send_over(stream, &settings, outgoing).await {
            Relayed::Replies(replies) if replies[0].is_positive() => {
                println!("  {:<26} {}", sample.recipient, sample.shows)
            }
            other => bail!("A refused the message for {}: {other:?}", sample.recipient),
        }
    }

    // Wait until A has a final outcome for every recipient.
    let deadline = Instant::now() + Duration::from_secs(45);
    let a_data = dir.join("a/data");
    let finals = loop {
        let attempts = History::read(&a_data)?;
        let finals: Vec<Option<Attempt>> = SAMPLES
            .iter()
            .map(|sample| final_attempt(&attempts, &recipient_key(sample.recipient)))
            .collect();
        if finals.iter().all(Option::is_some) || Instant::now() > deadline {
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let all_attempts = History::read(&a_data)?;

    if let Some(call) = all_attempts
        .iter()
        .find(|a| a.path == DeliveryPath::Call && a.outcome == AttemptOutcome::Delivered)
    {
        println!(
            "\nThe call ladder of one delivery, as A recorded it (`mailcall history --id {} --ladder --config {}`):",
            call.queue_id,
            dir.join("a/mailcall.toml").display()
        );
        print!("{}", history::ladder_text(call));
    }

    println!(
        "\nResults (A's history, `mailcall history --config {}`):",
        dir.join("a/mailcall.toml").display()
    );
    print!("{}", history::table(&all_attempts));

    let mut failures = Vec::new();
    for (sample, attempt) in SAMPLES.iter().zip(&finals) {
        let arrived = arrived(dir, sample);
        match attempt {
            Some(attempt)
                if attempt.outcome == AttemptOutcome::Delivered
                    && attempt.path == sample.path
                    && arrived => {}
            Some(attempt) => failures.push(format!(
                "{}: ended {} by {:?} (expected delivered by {:?}), in {}'s mailbox {}: {}",
                sample.recipient,
                attempt.outcome,
                attempt.path,
                sample.path,
                sample.arrives.0,
                sample.arrives.1,
                arrived
            )),
            None => failures.push(format!("{}: no final outcome in time", sample.recipient)),
        }
    }
    if stay {
        println!(
            "\nThe servers stay up: A's console is at http://127.0.0.1:{}/ (Ctrl-C stops them).",
            a.admin
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    for (_, stop, task) in servers {
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    println!(
        "\n{} messages in {:.1} s.",
        SAMPLES.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("Every message ended where it should.");
        Ok(())
    } else {
        for failure in &failures {
            println!("FAILED  {failure}");
        }
        bail!(
            "{} of {} messages did not end where they should (log: {})",
            failures.len(),
            SAMPLES.len(),
            log.display()
        )
    }
}

/// The recipient as A records it (the domain in lower case).
fn recipient_key(recipient: &str) -> String {
    match recipient.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
        None => recipient.to_string(),
    }
}

/// The last attempt for `recipient` if it is final (not deferred, not a
/// call that fell back to a relay still to come).
fn final_attempt(attempts: &[Attempt], recipient: &str) -> Option<Attempt> {
    let last = attempts.iter().rev().find(|a| a.recipient == recipient)?;
    last.outcome.is_final().then(|| last.clone())
}

/// Whether the sample is in the Maildir it should be in.
fn arrived(dir: &Path, sample: &Sample) -> bool {
    let (host, user) = sample.arrives;
    let mailbox = dir.join(host).join("data/mail").join(user).join("new");
    let Ok(entries) = std::fs::read_dir(mailbox) else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path())
            .is_ok_and(|text| text.contains(&format!("Subject: {}\r\n", sample.subject)))
    })
}

async fn wait_for_port(
    name: &str,
    port: u16,
    server: &mut tokio::task::JoinHandle<Result<(), mailcall::server::ServerError>>,
) -> anyhow::Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    // Generous: on a loaded machine the rule modules compile slowly.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(address).await.is_err() {
        if server.is_finished() {
            // It stopped before listening: say why, not that it is late.
            return match server.await {
                Ok(Err(error)) => Err(anyhow::anyhow!("server {name} did not start: {error}")),
                _ => bail!("server {name} stopped before listening on port {port}"),
            };
        }
        if Instant::now() > deadline {
            bail!("server {name} is not listening on port {port} after 60 s (log: see demo.log)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A host of the demo: `mx.DOMAIN` on its ports, local domain `DOMAIN`.
fn host(ports: &Ports, domain: &str) -> ConfigFile {
    ConfigFile::host(&format!("mx.{domain}"), ports.smtp, ports.pop3, &[domain])
}

/// `[sip]` on the host's port, for `domain` and its one number.
fn sip(file: ConfigFile, ports: &Ports, domain: &str, number: &str) -> ConfigFile {
    let address = format!("127.0.0.1:{}", ports.sip);
    file.set("sip", "udp_listen", address.as_str())
        .set("sip", "tcp_listen", address.as_str())
        .set("sip", "domain", domain)
        .set("sip", "numbers", vec![number])
}

/// A: relays for loopback clients; the stock rule chain; calls B directly;
/// mail for b.example falls back to B's SMTP port, the rest goes to C.
fn config_a(a: &Ports, b: &Ports, c: &Ports, rules_dir: &Path) -> String {
    let file = host(a, "a.example")
        .set("server", "relay_networks", vec!["127.0.0.0/8"])
        .section("users.taro")
        .set("routes", "b.example", format!("127.0.0.1:{}", b.smtp))
        .set("routes", "*", format!("127.0.0.1:{}", c.smtp))
        .set("policy", "rules_dir", rules_dir.display().to_string())
        .set(
            "policy",
            "chain",
            vec![
                "embedded-number",
                "address-table",
                "keyword-table",
                "custom",
            ],
        )
        .set("tables.addresses", "file", "tables/addresses.toml")
        .set("tables.keywords", "file", "tables/keywords.toml")
        .set("rules.address-table.config", "table", "addresses")
        .set("rules.keyword-table.config", "table", "keywords")
        .set("rules.custom.config.sender", "a.example", B_NUMBER);
    sip(file, a, "a.example", "05011110000")
        .set("sip", "invite_timeout_secs", 10)
        .set("sip.routes", "*", format!("sip:127.0.0.1:{}", b.sip))
        .set("admin", "listen", format!("127.0.0.1:{}", a.admin))
        .to_toml()
}

/// B: the final server for b.example, answering calls to its number.
fn config_b(b: &Ports) -> String {
    let file = host(b, "b.example")
        .set("users.hanako", "aliases", vec![B_NUMBER, "050-2222-0000"])
        .section("users.sales")
        .section("users.boss")
        .section("users.jiro");
    sip(file, b, "b.example", B_NUMBER)
        .set("sip", "allowed_sources", vec!["127.0.0.0/8"])
        .set("sip", "channel_ports", "47000-47049")
        .set("admin", "enabled", false)
        .to_toml()
}

/// C: everyone else's mail server.
fn config_c(c: &Ports) -> String {
    host(c, "c.example")
        .section("users.someone")
        .set("admin", "enabled", false)
        .to_toml()
}
