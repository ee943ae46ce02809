//! A mailcall callee on its own, for `scripts/bench-sip` and for trying
//! calls by hand: answers number 200 (or the numbers given) on a SIP
//! address and echoes each call's channel until the caller closes it.
//!
//!     cargo run -p mailcall-sip --example callee -- 127.0.0.1:5090 200
//!
//! `RUST_LOG=info` shows the ladder of every call.

use std::sync::Arc;

use mailcall_sip::{CallHandler, CallInfo, Channel, HandlerFuture, SipSettings, UserAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// As `mailcall` runs (host/src/main.rs), so the bench measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Echo;

impl CallHandler for Echo {
    fn handle(&self, mut channel: Channel, _call: CallInfo) -> HandlerFuture {
        Box::pin(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = channel.read(&mut buffer).await {
                if channel.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    // rsipstack logs every raw message at INFO: keep it at warn.
    tracing_subscriber::fmt()
        .with_env_filter(format!("{filter},rsipstack=warn"))
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5090".into())
        .parse()?;
    let mut numbers: Vec<String> = args.collect();
    if numbers.is_empty() {
        numbers.push("200".into());
    }
    let settings = SipSettings {
        udp_listen: Some(listen),
        tcp_listen: Some(listen),
        numbers,
        channel_ports: "47000-47999".into(),
        ..SipSettings::default()
    };
    let agent = UserAgent::start(settings, Some(Arc::new(Echo))).await?;
    println!("answering on {:?}", agent.local_addrs());
    std::future::pending::<()>().await;
    Ok(())
}
