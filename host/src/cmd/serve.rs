//! `mailcall serve`: run the mail server.

use std::path::PathBuf;
use std::sync::Arc;

use mailcall::config::Config;

/// Runs until interrupted (Ctrl-C or SIGTERM). Without a configuration:
/// the embedded default, on loopback only.
pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::defaults(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(mailcall::server::serve(Arc::new(config), shutdown_signal()))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
