//! Shared by the integration tests: settings on free loopback ports, an
//! echo handler that records what it received, and log set-up.

#![allow(dead_code)] // each test binary uses its own part of this

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailcall_sip::{CallHandler, CallInfo, Channel, HandlerFuture, SipSettings, Stats, UserAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(unused_imports)]
pub use mailcall_testbed::free_port;

/// Channel port ranges, 20 ports per user agent, distinct per test binary
/// (`base`) and per user agent within it.
pub fn channel_ports(base: u16) -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = base + 20 * NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{first}-{}", first + 19)
}

/// A user agent's settings on a free UDP port (TCP takes the same port).
pub fn settings(base: u16, numbers: &[&str]) -> SipSettings {
    SipSettings {
        udp_listen: Some("127.0.0.1:0".parse().unwrap()),
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        numbers: numbers.iter().map(|n| n.to_string()).collect(),
        channel_ports: channel_ports(base),
        invite_timeout_secs: 5,
        channel_connect_timeout_secs: 5,
        channel_accept_timeout_secs: 5,
        session_timeout_secs: 10,
        // Tests never ask the internet's DNS: ENUM only where a test
        // starts its own name server.
        enum_suffixes: Vec::new(),
        ..SipSettings::default()
    }
}

pub fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init()
        .ok();
}

/// The calls a handler saw, with the bytes each received.
pub type Received = Arc<Mutex<Vec<(CallInfo, Vec<u8>)>>>;

/// Echoes what it reads until the caller closes, and records it.
#[derive(Default, Clone)]
pub struct Echo {
    pub received: Received,
}

impl CallHandler for Echo {
    fn handle(&self, mut channel: Channel, call: CallInfo) -> HandlerFuture {
        let received = self.received.clone();
        Box::pin(async move {
            let mut bytes = Vec::new();
            if channel.read_to_end(&mut bytes).await.is_ok() {
                channel.write_all(&bytes).await.ok();
                channel.shutdown().await.ok();
            }
            received.lock().unwrap().push((call, bytes));
        })
    }
}

impl Echo {
    /// The sessions so far, once there are `count` at least (waiting, up
    /// to 10 s: a session ends on the test's runtime a moment after the
    /// caller got its echo back).
    pub async fn sessions(&self, count: usize) -> Vec<(CallInfo, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= count || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The caller's session: sends `message`, closes its side, returns the echo.
pub async fn send_and_read_back(mut channel: Channel, message: Vec<u8>) -> Vec<u8> {
    channel.write_all(&message).await.unwrap();
    channel.shutdown().await.unwrap();
    let mut back = Vec::new();
    channel.read_to_end(&mut back).await.unwrap();
    back
}

/// The UDP address of a started user agent.
pub fn udp_of(agent: &UserAgent) -> SocketAddr {
    agent.local_addrs().0.unwrap()
}

/// Waits (bounded) until the agent holds no call, dialog or listener
/// (transactions linger for their RFC 3261 timers: up to 64*T1 over UDP),
/// and returns what it holds, transactions left out.
pub async fn settle(agent: &UserAgent, within: Duration) -> Stats {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = Stats {
            transactions: 0,
            ..agent.stats()
        };
        if stats == Stats::default() || tokio::time::Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
