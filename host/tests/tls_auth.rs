//! STARTTLS, AUTH and STLS with real clients: swaks (SMTP), Python's
//! poplib (POP3), and mailcall relaying to another mailcall over
//! opportunistic TLS.

mod common;
use common::server::*;

const PASSWORD: &str = "secret pw";

#[test]
fn swaks_authenticates_over_starttls_and_relays() {
    let dir = tempfile::tempdir().unwrap();
    let accepting = sink(&dir.path().join("sink"), &[]);
    let hash = hash_password(PASSWORD);
    let file = host(free_port(), free_port())
        .set("users.taro", "password_hash", hash.as_str())
        .set(
            "routes",
            "remote.test",
            format!("127.0.0.1:{}", accepting.port),
        );
    let server = start_file(dir.path(), &file);
    // The certificate was generated on first start, its key private.
    let key = dir.path().join("data/tls/key.pem");
    assert!(dir.path().join("data/tls/certificate.pem").is_file());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Without AUTH, relaying is refused even over TLS.
    let (ok, transcript) = swaks(&server, &["--tls", "--to", "x@remote.test"]);
    assert!(!ok);
    assert!(transcript.contains("554 5.7.1"), "{transcript}");

    for mechanism in ["PLAIN", "LOGIN"] {
        let (ok, transcript) = swaks(
            &server,
            &[
                "--tls",
                "--auth",
                mechanism,
                "--auth-user",
                "taro@local.test",
                "--auth-password",
                PASSWORD,
                "--to",
                "x@remote.test",
                "--h-Subject",
                &format!("relayed after AUTH {mechanism}"),
            ],
        );
        assert!(ok, "{transcript}");
        assert!(
            transcript.contains("220 2.0.0 Ready to start TLS"),
            "{transcript}"
        );
        assert!(transcript.contains("235 2.7.0"), "{transcript}");
    }
    let dumps = wait_for_dumps(&dir.path().join("sink"), 2);
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    for dump in dumps {
        let text = String::from_utf8_lossy(&std::fs::read(dump).unwrap()).into_owned();
        assert!(text.contains("with ESMTPSA"), "{text}");
    }

    let (ok, transcript) = swaks(
        &server,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "taro",
            "--auth-password",
            "wrong",
            "--to",
            "x@remote.test",
        ],
    );
    assert!(!ok);
    assert!(transcript.contains("535 5.7.8"), "{transcript}");
}

#[test]
fn poplib_logs_in_after_stls() {
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password(PASSWORD);
    let pop3_port = free_port();
    let server = start_file(
        dir.path(),
        &host(free_port(), pop3_port).set("users.taro", "password_hash", hash.as_str()),
    );
    let (ok, transcript) = swaks(&server, &["--to", "taro@local.test"]);
    assert!(ok, "{transcript}");
    assert_eq!(wait_for_files(dir.path(), "taro", 1).len(), 1);
    let script = format!(
        r#"
import poplib, ssl
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
pop = poplib.POP3("127.0.0.1", {pop3_port}, timeout=10)
assert "STLS" in pop.capa(), pop.capa()
pop.stls(context=context)
assert "STLS" not in pop.capa()
pop.user("taro")
pop.pass_("{PASSWORD}")
count, size = pop.stat()
print("messages", count)
lines = pop.retr(1)[1]
print("received", any(line.startswith(b"Received:") for line in lines))
pop.quit()
"#
    );
    let stdout = python(&script);
    assert!(stdout.contains("messages 1"), "{stdout}");
    assert!(stdout.contains("received True"), "{stdout}");
}

#[test]
fn relaying_uses_starttls_when_the_next_server_offers_it() {
    // B: the final server, local domain b.test.
    let b_dir = tempfile::tempdir().unwrap();
    let b_port = free_port();
    let _b = start_config(
        b_dir.path(),
        b_port,
        &format!(
            "[server]\nhostname = \"mx.b.test\"\ndata_dir = \"data\"\nsmtp_listen = \"127.0.0.1:{b_port}\"\npop3_listen = \"127.0.0.1:{}\"\nlocal_domains = [\"b.test\"]\n\n[users.hanako]\n",
            free_port()
        ),
    );
    // A relays for loopback clients, to B by a static route.
    let a_dir = tempfile::tempdir().unwrap();
    let file = relaying(host(free_port(), free_port())).set(
        "routes",
        "b.test",
        format!("127.0.0.1:{b_port}"),
    );
    let a = start_file(a_dir.path(), &file);
    let (ok, transcript) = swaks(
        &a,
        &["--to", "hanako@b.test", "--h-Subject", "over TLS to B"],
    );
    assert!(ok, "{transcript}");
    let files = wait_for_files(b_dir.path(), "hanako", 1);
    assert_eq!(files.len(), 1);
    let message = std::fs::read_to_string(&files[0]).unwrap();
    // Under B's Return-Path, B's trace header says the hop from A was
    // encrypted; A's is below it.
    assert!(
        message.starts_with(
            "Return-Path: <sender@remote.test>\r\nReceived: from mx.test ([127.0.0.1])\r\n\tby mx.b.test (mailcall) with ESMTPS"
        ),
        "{message}"
    );
    assert!(
        message.contains("by mx.test (mailcall) with ESMTP\r\n\tfor <hanako@b.test>"),
        "{message}"
    );
    assert!(message.contains("Subject: over TLS to B"), "{message}");
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, as
/// `AB:CD:…`, computed here (sha2) rather than by mailcall.
fn fingerprint_of(pem: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem).unwrap();
    let digest = sha2::Sha256::digest(der.as_ref());
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

#[test]
fn the_generated_certificate_names_the_host_for_a_year_and_its_fingerprint_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let _server = start(dir.path(), free_port());
    let pem_path = dir.path().join("data/tls/certificate.pem");
    let pem = std::fs::read(&pem_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let certificate = pem.parse_x509().unwrap();
    let common_name: Vec<&str> = certificate
        .subject()
        .iter_common_name()
        .map(|name| name.as_str().unwrap())
        .collect();
    assert_eq!(common_name, ["mx.test"]);
    let names = certificate.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        names.value.general_names,
        [x509_parser::extensions::GeneralName::DNSName("mx.test")]
    );
    let validity = certificate.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert_eq!(days, 365);

    // The log and `check-config` show the fingerprint, for pinning.
    let fingerprint = fingerprint_of(&pem_path);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS certificate") && l.contains(&fingerprint)),
        "{fingerprint} not in the log:\n{log}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .arg("check-config")
        .arg(dir.path().join("mailcall.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("SHA-256 {fingerprint}")) && stdout.contains("CN mx.test"),
        "{stdout}"
    );
}

#[test]
fn a_client_sending_an_ip_address_as_sni_is_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), free_port());
    // swaks sends what --tls-sni names, here the address it connects to,
    // as OpenSSL-based clients given an address do.
    let (ok, transcript) = swaks(
        &server,
        &["--tls", "--tls-sni", "127.0.0.1", "--to", "taro@local.test"],
    );
    assert!(ok, "{transcript}");
    assert!(
        transcript.contains("220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert_eq!(wait_for_files(dir.path(), "taro", 1).len(), 1);
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(!log.contains("Illegal SNI"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");
}

#[test]
fn a_configured_certificate_that_does_not_load_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let certificate = dir.path().join("certificate.pem");
    let generated = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    std::fs::write(&certificate, generated.cert.pem()).unwrap();
    let key = dir.path().join("missing-key.pem");
    let port = free_port();
    let config = dir.path().join("mailcall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"mx.test\"\ndata_dir = \"data\"\nsmtp_listen = \"127.0.0.1:{port}\"\npop3_listen = \"127.0.0.1:{}\"\ntls_certificate = {certificate:?}\ntls_key = {key:?}\n",
            free_port()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mailcall"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Process::of("mailcall", child);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the server runs without the TLS it was configured with"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("{}: No such file", key.display())),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
