//! Logins for SMTP `AUTH` and POP3 `PASS`, at a bounded cost: one
//! [`Authenticator`] checks every password for both servers.
//!
//! An argon2 check takes 19 MiB and tens of milliseconds on purpose, and
//! anyone can reach POP3. So the checks run on a few threads of their own,
//! each computing in memory it allocated once (freed argon2 memory stayed
//! in glibc's arenas, one per thread: 50 failed logins on tokio's blocking
//! threads took 800 MB), at most that many at once, the rest
//! waiting a bounded time; and a client address whose logins fail is made to
//! wait before each further try (as Dovecot's `auth_penalty`), which never
//! locks the user out from other addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};

use crate::config::Config;

/// Threads that check passwords, and so checks at once: each holds the
/// 19 MiB of one argon2 check.
const VERIFIERS: usize = 2;

/// How long a login waits for a free verifier before it is answered with a
/// temporary error.
const VERIFIER_WAIT: Duration = Duration::from_secs(10);

/// The delay after the first failure from an address; it doubles with each
/// further one (Dovecot's `AUTH_PENALTY_INIT_SECS`).
const FIRST_PENALTY: Duration = Duration::from_secs(2);

/// An address without a failure for this long starts afresh.
const PENALTY_FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

/// Addresses remembered at most; past that the one quiet the longest is
/// forgotten first.
const PENALTY_ADDRESSES: usize = 10_000;

/// How a login went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The credentials identify this user (the configuration's spelling).
    Accepted(String),
    /// Wrong user name or password.
    Refused,
    /// Not checked now (too many checks waiting): the client may try again
    /// (SMTP `454 4.7.0`, POP3 `-ERR [SYS/TEMP]`).
    Unavailable,
}

/// One password check for a verifier thread.
struct Job {
    login: String,
    password: String,
    answer: oneshot::Sender<Option<String>>,
}

/// Checks logins for every session of both servers.
pub struct Authenticator {
    /// One permit per verifier thread: a check waits here, not in the
    /// threads' queue, so its wait can be bounded.
    verifiers: Semaphore,
    /// Where checks go to the verifier threads; the threads end when it is
    /// dropped.
    jobs: Mutex<std_mpsc::Sender<Job>>,
    /// Failures per client address.
    penalties: Mutex<Penalties>,
}

impl Authenticator {
    /// Starts the verifier threads, which check against the users of
    /// `config`.
    pub fn new(config: Arc<Config>) -> std::io::Result<Authenticator> {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..VERIFIERS {
            let (queue, config) = (queue.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("verifier-{index}"))
                .spawn(move || {
                    // argon2's 19 MiB, allocated once for this thread.
                    let mut memory = Vec::new();
                    loop {
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let user = crate::credentials::check(
                            &config,
                            &job.login,
                            &job.password,
                            &mut memory,
                        );
                        let _ = job.answer.send(user);
                    }
                })?;
        }
        let max_penalty = Duration::from_secs(config.server.auth_penalty_max_secs.into());
        Ok(Authenticator {
            verifiers: Semaphore::new(VERIFIERS),
            jobs: Mutex::new(jobs),
            penalties: Mutex::new(Penalties::new(max_penalty, PENALTY_ADDRESSES)),
        })
    }

    /// Checks `login` and `password` from `client`: after the client's
    /// penalty delay, if it has one, and a bounded wait for a verifier.
    pub async fn verify(&self, client: IpAddr, login: &str, password: &str) -> Verdict {
        self.verify_as(client, login, password, |_| true).await
    }

    /// As [`verify`](Self::verify), for a door only some users may pass
    /// (the console: administrators). Another user's right password is
    /// refused and counted as a failure: it must not wipe the address's
    /// penalty, or guessing an administrator's password could go on
    /// unslowed between logins with a known one.
    pub async fn verify_as(
        &self,
        client: IpAddr,
        login: &str,
        password: &str,
        may_pass: impl Fn(&str) -> bool,
    ) -> Verdict {
        let delay = self.penalties().delay(client, Instant::now());
        if !delay.is_zero() {
            tracing::debug!(%client, ?delay, "login delayed after failures");
            tokio::time::sleep(delay).await;
        }
        let Ok(Ok(permit)) = tokio::time::timeout(VERIFIER_WAIT, self.verifiers.acquire()).await
        else {
            tracing::warn!(%client, "no password verifier free: login refused for now");
            return Verdict::Unavailable;
        };
        let (answer, answered) = oneshot::channel();
        let job = Job {
            login: login.to_string(),
            password: password.to_string(),
            answer,
        };
        let sent = self.jobs.lock().is_ok_and(|jobs| jobs.send(job).is_ok());
        let user = if sent { answered.await.ok() } else { None };
        drop(permit);
        match user {
            None => Verdict::Unavailable,
            Some(Some(user)) if may_pass(&user) => {
                self.penalties().succeeded(client);
                Verdict::Accepted(user)
            }
            Some(_) => {
                self.penalties().failed(client, Instant::now());
                tracing::info!(%client, login, "login failed");
                Verdict::Refused
            }
        }
    }

    fn penalties(&self) -> std::sync::MutexGuard<'_, Penalties> {
        // The table holds counters only: after a panic elsewhere it is
        // still usable.
        self.penalties
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Failed logins per client address, and the delay they earn: 2 s after
/// the first failure, doubling with each further one up to a maximum;
/// forgotten after a success or an hour without failures. IPv6 addresses
/// count per /64, what one host usually holds. The clock is the caller's,
/// so tests can move it.
#[derive(Debug)]
pub struct Penalties {
    /// Per address (or /64): failures in a row and when the last was.
    failures: HashMap<IpAddr, (u32, Instant)>,
    /// The longest delay; zero turns penalties off.
    max: Duration,
    /// Addresses remembered at most.
    capacity: usize,
}

impl Penalties {
    pub fn new(max: Duration, capacity: usize) -> Penalties {
        Penalties {
            failures: HashMap::new(),
            max,
            capacity: capacity.max(1),
        }
    }

    /// How long a login from `client` waits before it is checked.
    pub fn delay(&mut self, client: IpAddr, now: Instant) -> Duration {
        let key = key(client);
        let Some(&(count, last)) = self.failures.get(&key) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(last) >= PENALTY_FORGOTTEN_AFTER {
            self.failures.remove(&key);
            return Duration::ZERO;
        }
        let doublings = count.saturating_sub(1).min(16);
        (FIRST_PENALTY * (1 << doublings)).min(self.max)
    }

    /// A login from `client` failed at `now`.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        if self.max.is_zero() {
            return;
        }
        let key = key(client);
        if !self.failures.contains_key(&key) && self.failures.len() >= self.capacity {
            self.failures.retain(|_, (_, last)| {
                now.saturating_duration_since(*last) < PENALTY_FORGOTTEN_AFTER
            });
            if self.failures.len() >= self.capacity {
                let quietest = self
                    .failures
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(key, _)| *key);
                if let Some(quietest) = quietest {
                    self.failures.remove(&quietest);
                }
            }
        }
        let entry = self.failures.entry(key).or_insert((0, now));
        *entry = (entry.0.saturating_add(1), now);
    }

    /// A login from `client` succeeded: its failures are forgotten.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.failures.remove(&key(client));
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The table's key for `client`: the address, or its /64 for IPv6.
fn key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_delay_doubles_per_failure_up_to_the_maximum() {
        let mut penalties = Penalties::new(Duration::from_secs(15), 100);
        let start = Instant::now();
        let client = ip("192.0.2.1");
        assert_eq!(penalties.delay(client, start), Duration::ZERO);
        let mut delays = Vec::new();
        for second in 0..6 {
            penalties.failed(client, start + Duration::from_secs(second));
            delays.push(
                penalties
                    .delay(client, start + Duration::from_secs(second))
                    .as_secs(),
            );
        }
        assert_eq!(delays, [2, 4, 8, 15, 15, 15]);
        // Another address, and so the same user from elsewhere, waits not.
        assert_eq!(penalties.delay(ip("192.0.2.2"), start), Duration::ZERO);
    }

    #[test]
    fn a_success_or_an_hour_of_quiet_forgets_the_failures() {
        let mut penalties = Penalties::new(Duration::from_secs(15), 100);
        let start = Instant::now();
        let client = ip("192.0.2.1");
        penalties.failed(client, start);
        penalties.failed(client, start);
        penalties.succeeded(client);
        assert_eq!(penalties.delay(client, start), Duration::ZERO);

        penalties.failed(client, start);
        let later = start + Duration::from_secs(3599);
        assert_eq!(penalties.delay(client, later), Duration::from_secs(2));
        let quiet = start + Duration::from_secs(3600);
        assert_eq!(penalties.delay(client, quiet), Duration::ZERO);
        assert!(penalties.is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut penalties = Penalties::new(Duration::from_secs(15), 100);
        let now = Instant::now();
        penalties.failed(ip("2001:db8:1:2::1"), now);
        assert_eq!(penalties.delay(ip("2001:db8:1:2::ffff"), now).as_secs(), 2);
        assert_eq!(penalties.delay(ip("2001:db8:1:3::1"), now), Duration::ZERO);
        penalties.failed(ip("::ffff:192.0.2.9"), now);
        assert_eq!(penalties.delay(ip("192.0.2.9"), now).as_secs(), 2);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_quietest_first() {
        let mut penalties = Penalties::new(Duration::from_secs(15), 3);
        let start = Instant::now();
        for (i, client) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .iter()
            .enumerate()
        {
            penalties.failed(ip(client), start + Duration::from_secs(i as u64));
        }
        assert_eq!(penalties.len(), 3);
        let now = start + Duration::from_secs(10);
        assert_eq!(penalties.delay(ip("10.0.0.1"), now), Duration::ZERO);
        assert_eq!(penalties.delay(ip("10.0.0.4"), now).as_secs(), 2);
    }

    #[test]
    fn a_zero_maximum_turns_penalties_off() {
        let mut penalties = Penalties::new(Duration::ZERO, 100);
        let now = Instant::now();
        penalties.failed(ip("192.0.2.1"), now);
        assert_eq!(penalties.delay(ip("192.0.2.1"), now), Duration::ZERO);
        assert!(penalties.is_empty());
    }

    fn config_with_taro() -> Arc<Config> {
        use argon2::PasswordHasher;
        let hash = argon2::Argon2::default()
            .hash_password(b"right")
            .unwrap()
            .to_string();
        let text = format!("[users.taro]\npassword_hash = {hash:?}\n");
        let config = Config::parse(&text, "test.toml".as_ref(), std::path::PathBuf::new());
        Arc::new(config.unwrap())
    }

    #[tokio::test]
    async fn verdicts_and_the_penalty_they_leave() {
        let authenticator = Authenticator::new(config_with_taro()).unwrap();
        let client = ip("192.0.2.1");
        assert_eq!(
            authenticator.verify(client, "taro", "right").await,
            Verdict::Accepted("taro".into())
        );
        assert_eq!(
            authenticator.verify(client, "taro", "wrong").await,
            Verdict::Refused
        );
        // An unknown user is refused the same way, and the penalty is the
        // address's (the first failure's delay is 2 s).
        let elsewhere = ip("192.0.2.2");
        assert_eq!(
            authenticator.verify(elsewhere, "nobody", "right").await,
            Verdict::Refused
        );
        let now = Instant::now();
        assert_eq!(authenticator.penalties().delay(client, now).as_secs(), 2);
        assert_eq!(authenticator.penalties().delay(elsewhere, now).as_secs(), 2);
        assert_eq!(
            authenticator.penalties().delay(ip("192.0.2.3"), now),
            Duration::ZERO
        );
    }

    #[tokio::test]
    async fn a_right_password_behind_a_door_it_may_not_pass_is_a_failure() {
        let authenticator = Authenticator::new(config_with_taro()).unwrap();
        let client = ip("192.0.2.9");
        let admins_only = |user: &str| user == "root";
        assert_eq!(
            authenticator
                .verify_as(client, "taro", "right", admins_only)
                .await,
            Verdict::Refused
        );
        // Counted: the address now waits, and it was not forgiven.
        let now = Instant::now();
        assert_eq!(authenticator.penalties().delay(client, now).as_secs(), 2);
    }
}
