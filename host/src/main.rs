//! The `mailcall` command.

mod cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
    // Clients that send an IP address as SNI are not worth a warning.
    let quiet = mailcall::tls::QuietIpSni;
    match log_file.map(std::fs::File::create) {
        Some(Ok(file)) => tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(filter)
            .finish()
            .with(quiet)
            .init(),
        Some(Err(error)) => {
            eprintln!("mailcall: error: cannot create the log file: {error}");
            return ExitCode::FAILURE;
        }
        None => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(filter)
            .finish()
            .with(quiet)
            .init(),
    }
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mailcall: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
