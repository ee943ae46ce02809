//! A mailcall caller on its own, for `scripts/bench-sip`: places CALLS
//! calls to a SIP address, LIMIT at once, each with an empty session on its
//! channel, and prints the call rate and the failures.
//!
//!     cargo run -p mailcall-sip --example caller -- 127.0.0.1:5092 udp 10000 50
//!
//! The callee's SDP answer must name a TCP port that accepts connections
//! (`scripts/bench-sip` runs sipp with tests/sipp/bench_uas.xml and a
//! channel port this example accepts on: `--accept PORT`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mailcall_sip::{Ladder, SipSettings, Transport, UserAgent};
use tokio::sync::Semaphore;

/// As `mailcall` runs (host/src/main.rs), so the bench measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    target: String,
    transport: Transport,
    calls: usize,
    limit: usize,
    listen: std::net::SocketAddr,
    accept: Option<u16>,
}

fn args() -> Result<Args, Box<dyn std::error::Error>> {
    let usage = "caller TARGET udp|tcp CALLS LIMIT [--listen ADDR] [--accept PORT]";
    let mut args = std::env::args().skip(1);
    let mut next = |what: &str| args.next().ok_or(format!("{what} missing: {usage}"));
    let target = next("TARGET")?;
    let transport = match next("the transport")?.as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        other => return Err(format!("{other:?}: {usage}").into()),
    };
    let calls = next("CALLS")?.parse()?;
    let limit = next("LIMIT")?.parse()?;
    let mut parsed = Args {
        target,
        transport,
        calls,
        limit,
        listen: "127.0.0.1:5096".parse()?,
        accept: None,
    };
    while let Ok(flag) = next("an option") {
        match flag.as_str() {
            "--listen" => parsed.listen = next("ADDR")?.parse()?,
            "--accept" => parsed.accept = Some(next("PORT")?.parse()?),
            other => return Err(format!("{other:?}: {usage}").into()),
        }
    }
    Ok(parsed)
}

/// Accepts channel connections and closes them: the callee's end of an
/// empty session.
async fn accept_channels(port: u16) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    // rsipstack logs every raw message at INFO: keep it at warn.
    tracing_subscriber::fmt()
        .with_env_filter(format!("{filter},rsipstack=warn"))
        .init();
    let args = args()?;
    if let Some(port) = args.accept {
        accept_channels(port).await?;
    }
    let settings = SipSettings {
        udp_listen: Some(args.listen),
        tcp_listen: Some(args.listen),
        numbers: vec!["100".into()],
        routes: [("*".into(), format!("sip:{}", args.target))].into(),
        transport: args.transport,
        ..SipSettings::default()
    };
    let agent = Arc::new(UserAgent::start(settings, None).await?);
    let limit = Arc::new(Semaphore::new(args.limit));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..args.calls {
        let permit = limit.clone().acquire_owned().await?;
        let (agent, failed) = (agent.clone(), failed.clone());
        calls.spawn(async move {
            let placed = agent.call("200", &Ladder::new(), |_, _| async {}).await;
            if let Err(e) = placed {
                if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("call failed: {e}");
                }
            }
            drop(permit);
        });
        // Reaps finished calls as we go: the set stays LIMIT long.
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "calls/s {:.3} successful {} failed {failed}",
        args.calls as f64 / elapsed,
        args.calls - failed,
    );
    agent.shutdown().await;
    Ok(())
}
