//! The `mailcall` command.

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Many small, short-lived allocations per SIP message and SMTP command:
/// mimalloc serves them for about a fifth less CPU than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    let log_file = match cli.log_file() {
        Ok(file) => file,
        Err(error) => {
            eprintln!("mailcall: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let serve_config = match cli.serve_config().transpose() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mailcall: error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let json = serve_config
        .as_ref()
        .is_some_and(|config| config.log.format == mailcall::config::LogFormat::Json);
    match log_file.map(std::fs::File::create) {
        Some(Ok(file)) => init_log(std::sync::Mutex::new(file), false, json, filter),
        Some(Err(error)) => {
            eprintln!("mailcall: error: cannot create the log file: {error}");
            return ExitCode::FAILURE;
        }
        None => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            init_log(std::io::stderr, ansi, json, filter)
        }
    }
    match cmd::run(cli, serve_config) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`mailcall man | head`): it has what it
        // wanted, as with any Unix filter.
        Err(error) if broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mailcall: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Installs the log: text (colored on a terminal) or a JSON object a line.
fn init_log<W>(writer: W, ansi: bool, json: bool, filter: tracing_subscriber::EnvFilter)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // Clients that send an IP address as SNI are not worth a warning.
    let quiet = mailcall::tls::QuietIpSni;
    let log = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    if json {
        log.json().with_ansi(false).finish().with(quiet).init()
    } else {
        log.with_ansi(ansi).finish().with(quiet).init()
    }
}
