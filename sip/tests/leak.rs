//! No leaks: a thousand calls in direct mode (half over UDP, half over
//! TCP), then no call, dialog, transaction or channel listener is left,
//! and the tasks and file descriptors are back to their baseline; after
//! shutdown, every socket is closed.
//! Alone in its binary, so other tests' sockets do not count.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{init_logs, send_and_read_back, settings, settle, udp_of, Echo};
use mailcall_sip::{Ladder, Stats, Transport, UserAgent};

const PORTS: u16 = 45000;
const CALLS: usize = 1000;
const AT_ONCE: usize = 20;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_leave_nothing_behind() {
    init_logs();
    let fds_at_start = open_fds();
    let echo = Echo::default();
    let mut b_settings = settings(PORTS, &["200"]);
    b_settings.channel_ports = "45500-45599".into();
    let b = Arc::new(
        UserAgent::start(b_settings, Some(Arc::new(echo.clone())))
            .await
            .unwrap(),
    );
    let mut agents = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut a_settings = settings(PORTS, &["100"]);
        a_settings.transport = transport;
        a_settings
            .routes
            .insert("200".into(), format!("sip:{}", udp_of(&b)));
        agents.push(Arc::new(UserAgent::start(a_settings, None).await.unwrap()));
    }
    let call_once = |agent: Arc<UserAgent>, n: usize| async move {
        let message = format!("call {n}\r\n").into_bytes();
        let sent = message.clone();
        let call = agent
            .call("200", &Ladder::new(), move |channel, _| {
                send_and_read_back(channel, sent)
            })
            .await
            .unwrap_or_else(|e| panic!("call {n}: {e}"));
        assert_eq!(call.output, message);
    };
    // One call each way first: TCP connections between the agents stay
    // open for reuse and belong to the baseline.
    for agent in &agents {
        call_once(agent.clone(), 0).await;
    }
    for agent in agents.iter().chain([&b]) {
        settle(agent, Duration::from_secs(10)).await;
    }
    let (fds, tasks) = (open_fds(), alive_tasks());

    let all = async {
        for batch in 0..CALLS / AT_ONCE {
            let calls: Vec<_> = (0..AT_ONCE)
                .map(|i| {
                    let n = batch * AT_ONCE + i;
                    tokio::spawn(call_once(agents[n % 2].clone(), n))
                })
                .collect();
            for call in calls {
                call.await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(150), all)
        .await
        .expect("a thousand calls in time");
    assert_eq!(echo.sessions(CALLS + 2).await.len(), CALLS + 2);

    // UDP transactions linger for 64*T1 (32 s) after their last message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let agents_and_b: Vec<_> = agents.iter().chain([&b]).collect();
    loop {
        let stats: Vec<Stats> = agents_and_b.iter().map(|a| a.stats()).collect();
        if stats.iter().all(|s| *s == Stats::default()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left over: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (fds_after, tasks_after) = (open_fds(), alive_tasks());
    assert!(
        fds_after <= fds + 4,
        "file descriptors: {fds} before, {fds_after} after"
    );
    assert!(
        tasks_after <= tasks + 4,
        "tasks: {tasks} before, {tasks_after} after"
    );

    // Shutting down closes every socket the agents opened.
    for agent in agents.into_iter().chain([b]) {
        Arc::into_inner(agent)
            .expect("no call holds the agent")
            .shutdown()
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_fds() > fds_at_start + 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_at_end = open_fds();
    assert!(
        fds_at_end <= fds_at_start + 2,
        "file descriptors: {fds_at_start} at start, {fds_at_end} after shutdown"
    );
}
