//! The spool's durability, proven by simulation: seeded random workloads
//! (enqueue — alone, or as a few sessions sharing one group commit —
//! record outcomes, rotate with a tiny segment limit, compact, restart,
//! fill the disk) on a simulated disk that loses what was not
//! synced, with the power cut at every write and sync point in turn. After
//! each crash and `open()`:
//! - every message whose enqueue returned is there, body intact, unless
//!   all its recipients had final outcomes recorded;
//! - every recorded outcome is still the latest one (so retry counts never
//!   go backwards), unless the operation cut short changed it;
//! - no finished message comes back;
//! - nothing that was not written appears, and nothing refused (a full
//!   disk) appears;
//! - the recovered spool goes on: finishing everything leaves it empty.
//!
//! `MAILCALL_CRASH_SEEDS` sets the number of seeds (default 400, each
//! crashed at every point: tens of thousands of crashes);
//! `MAILCALL_CRASH_SEED` runs one seed (as printed by a failure).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailcall::history::{self, Attempt, AttemptOutcome, DeliveryPath, History};
use mailcall::queue::spool::{Envelope, MessageId, Outcome, Spool, SpoolOptions};
use mailcall::storage::sim::SimStorage;
use mailcall::storage::Storage;

const DATA: &str = "/data";
const DIR: &str = "/data/queue";

fn envelope(recipients: usize) -> Envelope {
    Envelope {
        mail_from: "a@sender.example".into(),
        recipients: (0..recipients).map(|r| format!("r{r}@y.example")).collect(),
        received_at: 1_795_000_000,
        received_at_ms: 0,
        client_address: "127.0.0.1".into(),
        helo: "client.example".into(),
        envelope_id: None,
        return_full: None,
        notify: Vec::new(),
        original_recipients: Vec::new(),
    }
}

/// An operation cut short by the crash: it may or may not have happened.
#[derive(Debug, Clone)]
enum InFlight {
    Enqueue(Vec<u8>),
    Record(MessageId, usize, Outcome),
}

/// What the spool acknowledged, as its callers would remember it.
#[derive(Debug, Default)]
struct Model {
    bodies: BTreeMap<MessageId, (Vec<u8>, usize)>,
    outcomes: BTreeMap<(MessageId, usize), Outcome>,
    finished: BTreeSet<MessageId>,
    /// Bodies whose enqueue was refused (disk full): never to appear.
    refused: BTreeSet<Vec<u8>>,
    /// The operations cut short (several enqueues when sessions shared a
    /// group commit).
    in_flight: Vec<InFlight>,
    /// Every outcome acknowledged, in order (each needs its history line).
    recorded: Vec<(MessageId, usize, Outcome)>,
}

/// The history line the planner writes for an outcome.
fn attempt(id: MessageId, index: usize, outcome: &Outcome) -> Attempt {
    Attempt {
        at_ms: 0,
        queue_id: id.to_string(),
        message_id: None,
        recipient: format!("r{index}@y.example"),
        path: DeliveryPath::Relay,
        outcome: AttemptOutcome::Delivered,
        detail: outcome.detail().to_string(),
        number: None,
        rule: None,
        rule_version: None,
        policy: None,
        shadow_disagreements: Vec::new(),
        reason: None,
        call_id: None,
        sip_status: None,
        peer: None,
        elapsed_ms: 0,
        ladder: Vec::new(),
    }
}

impl Model {
    /// An enqueue has its answer: accepted as `id`, or refused.
    fn settle(&mut self, body: Vec<u8>, accepted: Option<(MessageId, usize)>) {
        self.in_flight
            .retain(|cut| !matches!(cut, InFlight::Enqueue(b) if *b == body));
        match accepted {
            Some((id, recipients)) => {
                self.bodies.insert(id, (body, recipients));
            }
            None => {
                self.refused.insert(body);
            }
        }
    }

    fn unfinished(&self) -> Vec<MessageId> {
        self.bodies
            .keys()
            .filter(|id| !self.finished.contains(id))
            .copied()
            .collect()
    }

    fn is_finished(&self, id: MessageId, recipients: usize) -> bool {
        (0..recipients).all(|index| {
            self.outcomes
                .get(&(id, index))
                .is_some_and(Outcome::is_final)
        })
    }
}

fn options(rng: &mut fastrand::Rng) -> SpoolOptions {
    SpoolOptions {
        segment_limit: rng.u64(64..1500),
    }
}

/// The spool and the history as the server opens them: the history's
/// lines ride in the outcome records.
fn open(sim: &Arc<SimStorage>, options: SpoolOptions) -> Result<Spool, String> {
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let history = Arc::new(History::on(storage.clone(), Path::new(DATA)));
    let (spool, _) = Spool::open_with(storage, Path::new(DIR), options, Some(history))
        .map_err(|e| e.to_string())?;
    Ok(spool)
}

/// With `MAILCALL_CRASH_TRACE` set, prints each operation of a workload.
fn trace(sim: &SimStorage, line: impl FnOnce() -> String) {
    if std::env::var_os("MAILCALL_CRASH_TRACE").is_some() {
        eprintln!("[point {}] {}", sim.points(), line());
    }
}

/// Runs seed `seed`'s workload, the power going at fault point `crash_at`
/// (if any); returns what was acknowledged up to then.
fn workload(seed: u64, sim: &Arc<SimStorage>, crash_at: Option<u64>) -> Model {
    let mut rng = fastrand::Rng::with_seed(seed);
    let options = options(&mut rng);
    if let Some(point) = crash_at {
        sim.crash_at(point);
    }
    let mut model = Model::default();
    let Ok(mut spool) = open(sim, options) else {
        return model;
    };
    let steps = rng.usize(10..40);
    let mut full_for = 0;
    for step in 0..steps {
        if sim.has_crashed() {
            break;
        }
        if full_for > 0 {
            full_for -= 1;
            if full_for == 0 {
                sim.set_space(None);
            }
        } else if rng.u8(..) < 12 {
            // The disk fills up for a few operations.
            sim.set_space(Some(rng.u64(0..400)));
            full_for = rng.usize(1..4);
        }
        match rng.u8(..) {
            0..=99 => {
                // One session, or a few whose messages are all written
                // before the first of them waits for its sync.
                let sessions = if rng.u8(..3) == 0 { rng.usize(2..5) } else { 1 };
                let mut begun = Vec::new();
                for session in 0..sessions {
                    let recipients = rng.usize(1..4);
                    let mut body =
                        format!("seed {seed} step {step} session {session}\r\n").into_bytes();
                    body.extend(std::iter::repeat_n(b'x', rng.usize(0..600)));
                    model.in_flight.push(InFlight::Enqueue(body.clone()));
                    let result = spool.begin_enqueue(envelope(recipients), &body);
                    trace(sim, || {
                        format!("begin enqueue {} bytes: {result:?}", body.len())
                    });
                    match result {
                        Ok(appended) => begun.push((appended, body, recipients)),
                        Err(_) if sim.has_crashed() => break,
                        Err(_) => model.settle(body, None),
                    }
                }
                for (appended, body, recipients) in begun {
                    if sim.has_crashed() {
                        break;
                    }
                    let result = spool.commit_enqueue(appended);
                    trace(sim, || format!("commit enqueue: {result:?}"));
                    match result {
                        Ok(id) => model.settle(body, Some((id, recipients))),
                        Err(_) if sim.has_crashed() => break,
                        Err(_) => model.settle(body, None),
                    }
                }
                if sim.has_crashed() {
                    break;
                }
            }
            100..=239 => {
                let unfinished = model.unfinished();
                if unfinished.is_empty() {
                    continue;
                }
                let id = unfinished[rng.usize(..unfinished.len())];
                let recipients = model.bodies[&id].1;
                let index = rng.usize(..recipients);
                let previous = model.outcomes.get(&(id, index));
                if previous.is_some_and(Outcome::is_final) {
                    continue;
                }
                let attempts = match previous {
                    Some(Outcome::Deferred { attempts, .. } | Outcome::Held { attempts, .. }) => {
                        attempts + 1
                    }
                    _ => 1,
                };
                // Deliveries and the operator's holds and deletions.
                let outcome = match rng.u8(..5) {
                    0 => Outcome::Deferred {
                        detail: format!("451 later, step {step}"),
                        attempts,
                        retry_at: u64::from(attempts),
                    },
                    1 => Outcome::Delivered {
                        detail: format!("250 ok after {attempts}, step {step}"),
                    },
                    2 => Outcome::Failed {
                        detail: format!("550 no, step {step}"),
                        code: 550,
                    },
                    3 => Outcome::Held {
                        detail: format!("held, step {step}"),
                        attempts,
                    },
                    _ => Outcome::Deleted {
                        detail: format!("deleted, step {step}"),
                    },
                }
                // What the spool keeps: a hold outlasts a deferral.
                .over(previous);
                model.in_flight = vec![InFlight::Record(id, index, outcome.clone())];
                // As the planner does: the outcome with its history line.
                let lines = history::lines(&[attempt(id, index, &outcome)]);
                let result = spool.record(id, index, outcome.clone(), lines);
                trace(sim, || {
                    format!("record {id} {index} {outcome:?}: {result:?}")
                });
                match result {
                    Ok(()) => {
                        model.recorded.push((id, index, outcome.clone()));
                        model.outcomes.insert((id, index), outcome);
                        if model.is_finished(id, recipients) {
                            model.finished.insert(id);
                        }
                    }
                    Err(_) if sim.has_crashed() => break,
                    Err(_) => {}
                }
            }
            _ => {
                // A clean restart: the process ends, the disk keeps
                // everything (page cache included).
                model.in_flight.clear();
                trace(sim, || "restart".to_string());
                drop(spool);
                match open(sim, options) {
                    Ok(reopened) => spool = reopened,
                    Err(_) => break,
                }
            }
        }
        model.in_flight.clear();
    }
    model
}

/// Checks the invariants on the spool recovered after a crash.
fn check(seed: u64, point: u64, sim: &Arc<SimStorage>, model: &Model) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let options = options(&mut rng);
    let fail = |what: String| Err(format!("seed {seed}, crash at point {point}: {what}"));
    let spool = match open(sim, options) {
        Ok(opened) => opened,
        Err(error) => return fail(format!("the spool does not open: {error}")),
    };
    // Every recorded outcome has its line in the history.
    let lines = History::read_on(&sim.clone(), Path::new(DATA)).map_err(|e| e.to_string())?;
    for (id, index, outcome) in &model.recorded {
        let line = attempt(*id, *index, outcome);
        if !lines.contains(&line) {
            return fail(format!(
                "the history misses {id} recipient {index}: {outcome:?}"
            ));
        }
    }
    let pending = spool.pending();
    let pending_ids: BTreeSet<MessageId> = pending.iter().map(|q| q.id).collect();
    for id in model.unfinished() {
        // The outcome cut short may have reached the disk and finished it.
        let finished_by_cut = model.in_flight.iter().any(|cut| match cut {
            InFlight::Record(cut, index, outcome) if *cut == id => {
                let recipients = model.bodies[&id].1;
                (0..recipients).all(|i| {
                    let o = if i == *index {
                        Some(outcome)
                    } else {
                        model.outcomes.get(&(id, i))
                    };
                    o.is_some_and(Outcome::is_final)
                })
            }
            _ => false,
        });
        if !pending_ids.contains(&id) && !finished_by_cut {
            let storage: Arc<dyn Storage> = Arc::new(sim.clone());
            let damage = Spool::open_on(storage, Path::new(DIR), options).map(|(_, r)| r.damage);
            return fail(format!(
                "acknowledged message {id} is lost (segments {:?}, damage {damage:?})",
                sim.list(Path::new(DIR)).unwrap_or_default()
            ));
        }
    }
    for queued in &pending {
        let body = spool.body(queued.id).map_err(|e| e.to_string())?;
        match model.bodies.get(&queued.id) {
            Some((expected, _)) if *expected != body => {
                return fail(format!("message {} has a damaged body", queued.id))
            }
            Some(_) => {}
            None => {
                let in_flight = model
                    .in_flight
                    .iter()
                    .any(|cut| matches!(cut, InFlight::Enqueue(b) if *b == body));
                if !in_flight {
                    return fail(format!(
                        "message {} appeared that was never acknowledged (refused: {})",
                        queued.id,
                        model.refused.contains(&body)
                    ));
                }
            }
        }
        if model.finished.contains(&queued.id) {
            return fail(format!("finished message {} came back", queued.id));
        }
        for (index, recovered) in queued.outcomes.iter().enumerate() {
            let acknowledged = model.outcomes.get(&(queued.id, index));
            let cut_short = model.in_flight.iter().find_map(|cut| match cut {
                InFlight::Record(id, i, o) if *id == queued.id && *i == index => Some(o),
                _ => None,
            });
            if recovered.as_ref() != acknowledged && recovered.as_ref() != cut_short {
                return fail(format!(
                    "message {} recipient {index}: recovered {recovered:?}, acknowledged {acknowledged:?}",
                    queued.id
                ));
            }
        }
    }
    // The recovered spool goes on: finish everything, and it empties.
    for queued in &pending {
        for index in 0..queued.outcomes.len() {
            let done = Outcome::Delivered {
                detail: "250 after the crash".into(),
            };
            if queued.outcomes[index]
                .as_ref()
                .is_none_or(|o| !o.is_final())
            {
                if let Err(error) = spool.record(queued.id, index, done, String::new()) {
                    return fail(format!("cannot record after recovery: {error}"));
                }
            }
        }
    }
    drop(spool);
    let spool = match open(sim, options) {
        Ok(opened) => opened,
        Err(error) => return fail(format!("the spool does not reopen: {error}")),
    };
    if !spool.pending().is_empty() {
        return fail("finished messages are still pending".into());
    }
    let segments = sim.list(Path::new(DIR)).unwrap_or_default();
    if segments.iter().filter(|n| n.ends_with(".seg")).count() != 1 {
        return fail(format!(
            "an empty spool keeps segments {segments:?} (only the new one should be left)"
        ));
    }
    Ok(())
}

/// Runs seed `seed` crashed at each of its fault points in turn; returns
/// how many crashes were checked.
fn crash_everywhere(seed: u64) -> Result<u64, String> {
    let clean = SimStorage::new(seed);
    workload(seed, &clean, None);
    let points = clean.points();
    let only: Option<u64> = std::env::var("MAILCALL_CRASH_POINT")
        .ok()
        .and_then(|p| p.parse().ok());
    for point in (1..=points).filter(|p| only.is_none_or(|o| o == *p)) {
        let sim = SimStorage::new(seed ^ point.rotate_left(32));
        let model = workload(seed, &sim, Some(point));
        sim.restart();
        check(seed, point, &sim, &model)?;
    }
    Ok(points)
}

#[test]
fn acknowledged_mail_survives_a_crash_at_every_write_and_sync() {
    if let Ok(seed) = std::env::var("MAILCALL_CRASH_SEED") {
        let seed = seed.parse().expect("a seed number");
        let crashes = crash_everywhere(seed).unwrap_or_else(|e| panic!("{e}"));
        println!("seed {seed}: {crashes} crashes checked");
        return;
    }
    let seeds: u64 = std::env::var("MAILCALL_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    // A bound on time too, so a slow machine still finishes: the seeds
    // that ran are printed.
    let budget = Duration::from_secs(240);
    let started = Instant::now();
    let mut crashes = 0;
    let mut ran = 0;
    for seed in 0..seeds {
        if started.elapsed() > budget {
            break;
        }
        crashes += crash_everywhere(seed).unwrap_or_else(|e| {
            panic!("{e}\nrerun with MAILCALL_CRASH_SEED={seed} cargo test --test spool_crash")
        });
        ran += 1;
    }
    println!(
        "{ran} seeds, {crashes} crashes checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(ran > 0 && crashes > ran, "the simulation ran");
}
