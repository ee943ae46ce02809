//! `mailcall serve`: run the mail server.

use std::sync::Arc;

use anyhow::Context;
use mailcall::config::Config;

/// Runs until interrupted (Ctrl-C or SIGTERM). Without a configuration
/// file: the embedded default, on loopback only.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot take SIGTERM and SIGINT")?;
        mailcall::server::serve(Arc::new(config), shutdown).await?;
        anyhow::Ok(())
    })
}

/// SIGTERM or SIGINT (Ctrl-C), taken at once: one that comes after the
/// server said it is ready (`READY=1`) but before it waits for them must
/// stop it cleanly, not by the default action.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
