//! The console's pages, rendered on the server (maud): no script is needed
//! to read them, and nothing is fetched from elsewhere.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::Session;
use crate::history::{Attempt, AttemptOutcome, DeliveryPath, Filter};
use crate::metrics::recent::{Figures, PATHS};
use crate::queue::action::Action;
use crate::queue::spool::{Outcome, Queued, RecipientStates};
use crate::server::control::Status;
use mailcall_sip::{RegistrationState, Side};

const STYLE: &str = "
body { font-family: sans-serif; margin: 1.5em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; font-size: 0.9em; }
td.n { text-align: right; }
.delivered { color: #146c2e; } .failed { color: #a4262c; }
.deferred, .fell-back { color: #8a5a00; }
svg text { font-family: monospace; font-size: 12px; }
";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " — mailcall" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/" { "Overview" } a href="/deliveries" { "Deliveries" } a href="/queue" { "Queue" } a href="/rules" { "Rules" } a href="/metrics" { "Metrics" } }
                h1 { (title) }
                (body)
            }
        }
    }
}

/// What the overview shows.
pub struct Overview {
    pub accepted: u64,
    /// Per path: delivered, deferred, failed, fell back, since start.
    pub counts: Vec<(DeliveryPath, [u64; 4])>,
    /// The last hour, summed and by minute (oldest first).
    pub last_hour: Figures,
    pub series: Vec<Figures>,
    pub queued: usize,
    pub states: RecipientStates,
    /// Calls in progress (as caller or callee); `None` without SIP.
    pub calls: Option<usize>,
    pub registrations: Vec<RegistrationState>,
    pub generation: Option<String>,
    pub uptime_secs: u64,
}

/// The overview's column of each count, and its cells' id suffix.
const COUNTED: [&str; 4] = ["delivered", "deferred", "failed", "fell-back"];

/// Keeps the overview current: each event of `/events` is the figures by
/// element id; the script writes them in (the plot as markup) and counts
/// the updates.
const LIVE: &str = "
const live = new EventSource('/events');
live.onmessage = (event) => {
  for (const [id, value] of Object.entries(JSON.parse(event.data))) {
    const element = document.getElementById(id);
    if (!element) continue;
    if (element.dataset.markup !== undefined) element.innerHTML = value;
    else element.textContent = value;
  }
  document.body.dataset.updates = Number(document.body.dataset.updates || 0) + 1;
};
";

impl Overview {
    /// The figures by the id of the element that shows them, as `/events`
    /// sends them.
    pub fn values(&self) -> serde_json::Value {
        let mut values = serde_json::Map::new();
        let mut put = |id: String, value: String| {
            values.insert(id, value.into());
        };
        put("uptime".into(), self.uptime_secs.to_string());
        put("accepted".into(), self.accepted.to_string());
        put("hour-accepted".into(), self.last_hour.accepted.to_string());
        put("queued".into(), self.queued.to_string());
        put("waiting".into(), self.states.waiting.to_string());
        put("deferred".into(), self.states.deferred.to_string());
        put("held".into(), self.states.held.to_string());
        put(
            "generation".into(),
            self.generation.as_deref().unwrap_or("none").into(),
        );
        if let Some(calls) = self.calls {
            put("calls".into(), calls.to_string());
        }
        for (index, registration) in self.registrations.iter().enumerate() {
            put(
                format!("registration-{index}"),
                registration.standing.to_string(),
            );
        }
        for (path, counts) in &self.counts {
            for (name, count) in COUNTED.iter().zip(counts) {
                put(format!("{path}-{name}"), count.to_string());
            }
        }
        for (path, counts) in PATHS.iter().zip(&self.last_hour.attempts) {
            for (name, count) in COUNTED.iter().zip(counts) {
                put(format!("hour-{path}-{name}"), count.to_string());
            }
        }
        put("plot".into(), plot(&self.series).into_string());
        values.into()
    }
}

/// The last hour by minute as an SVG chart: messages accepted, recipients
/// delivered and failed (bounced), one point a minute.
fn plot(series: &[Figures]) -> Markup {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 120.0;
    const LEFT: f64 = 40.0;
    let lines: [(&str, &str, Vec<u64>); 3] = [
        (
            "accepted",
            "#1f4fbf",
            series.iter().map(|f| f.accepted).collect(),
        ),
        (
            "delivered",
            "#146c2e",
            series
                .iter()
                .map(|f| f.outcome(AttemptOutcome::Delivered))
                .collect(),
        ),
        (
            "failed",
            "#a4262c",
            series
                .iter()
                .map(|f| f.outcome(AttemptOutcome::Failed))
                .collect(),
        ),
    ];
    let highest = lines
        .iter()
        .flat_map(|(_, _, values)| values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let step = WIDTH / (series.len().max(2) - 1) as f64;
    let points = |values: &[u64]| -> String {
        values
            .iter()
            .enumerate()
            .map(|(minute, value)| {
                let y = HEIGHT - (*value as f64 / highest as f64) * HEIGHT;
                format!("{:.1},{:.1}", LEFT + minute as f64 * step, 10.0 + y)
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.plot xmlns="http://www.w3.org/2000/svg" width="700" height="170" viewBox="0 0 700 170" role="img" {
            title { "The last hour, per minute" }
            line x1=(LEFT) y1="10" x2=(LEFT) y2=(10.0 + HEIGHT) stroke="#999" {}
            line x1=(LEFT) y1=(10.0 + HEIGHT) x2=(LEFT + WIDTH) y2=(10.0 + HEIGHT) stroke="#999" {}
            text x="2" y="16" { (highest) }
            text x="2" y=(14.0 + HEIGHT) { "0" }
            text x=(LEFT) y=(28.0 + HEIGHT) { "60 min ago" }
            text x=(LEFT + WIDTH - 24.0) y=(28.0 + HEIGHT) { "now" }
            @for (index, (name, colour, values)) in lines.iter().enumerate() {
                polyline class=(name) data-total=(values.iter().sum::<u64>()) fill="none" stroke=(colour) stroke-width="1.5" points=(points(values)) {}
                text x=(LEFT + 120.0 + index as f64 * 110.0) y=(28.0 + HEIGHT) fill=(colour) { "— " (name) }
            }
        }
    }
}

fn counts_table(id: &str, prefix: &str, rows: &[(DeliveryPath, [u64; 4])]) -> Markup {
    html! {
        table id=(id) {
            tr { th { "path" } th { "delivered" } th { "deferred" } th { "failed" } th { "fell back" } }
            @for (path, counts) in rows {
                tr data-path=(path) {
                    td { a href={ "/deliveries?path=" (path) } { (path) } }
                    @for (name, count) in COUNTED.iter().zip(counts) { td.n id={ (prefix) (path) "-" (name) } { (count) } }
                }
            }
        }
    }
}

pub fn overview(overview: &Overview) -> Markup {
    let hour: Vec<(DeliveryPath, [u64; 4])> = PATHS
        .iter()
        .copied()
        .zip(overview.last_hour.attempts)
        .collect();
    page(
        "Overview",
        html! {
            p {
                "Since start (" span #uptime { (overview.uptime_secs) } " s ago): "
                strong #accepted { (overview.accepted) } " messages accepted; in the last hour "
                strong #hour-accepted { (overview.last_hour.accepted) } "."
            }
            p { "Rule policy in force: " code #generation { (overview.generation.as_deref().unwrap_or("none")) } }
            h2 { "Recipients since start" }
            (counts_table("counts", "", &overview.counts))
            h2 { "The last hour" }
            (counts_table("hour", "hour-", &hour))
            div #plot data-markup { (plot(&overview.series)) }
            h2 { "Queue" }
            p {
                strong #queued { (overview.queued) } " messages unfinished; recipients: "
                span #waiting { (overview.states.waiting) } " not tried yet or being tried, "
                span #deferred { (overview.states.deferred) } " deferred, "
                span #held { (overview.states.held) } " held. "
                a href="/queue" { "The queue →" }
            }
            h2 { "Calls" }
            @match overview.calls {
                Some(calls) => p { strong #calls { (calls) } " calls in progress (as caller or callee)." },
                None => p { "SIP is off: no " code { "[sip]" } " section." },
            }
            @if !overview.registrations.is_empty() {
                table #registrations {
                    tr { th { "number" } th { "registrar" } th { "standing" } th { "since (UTC)" } }
                    @for (index, registration) in overview.registrations.iter().enumerate() {
                        tr {
                            td { (registration.number) }
                            td { (registration.registrar) }
                            td id={ "registration-" (index) } { (registration.standing) }
                            td { (time(unix_ms(registration.since))) }
                        }
                    }
                }
            }
            script { (PreEscaped(LIVE)) }
        },
    )
}

/// Milliseconds since the Unix epoch.
fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn outcome_options(selected: Option<AttemptOutcome>) -> Markup {
    let all = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Deferred,
        AttemptOutcome::Failed,
        AttemptOutcome::FellBack,
        AttemptOutcome::Held,
        AttemptOutcome::Released,
        AttemptOutcome::Retried,
        AttemptOutcome::Deleted,
        AttemptOutcome::Received,
    ];
    html! {
        option value="" { "any outcome" }
        @for outcome in all {
            option value=(outcome) selected[selected == Some(outcome)] { (outcome) }
        }
    }
}

pub fn deliveries(filter: &Filter, page_number: usize, attempts: &[Attempt], more: bool) -> Markup {
    let paths = [
        DeliveryPath::Local,
        DeliveryPath::Call,
        DeliveryPath::Relay,
        DeliveryPath::Operator,
    ];
    let query = |page: usize| {
        let mut query = vec![format!("page={page}")];
        if let Some(path) = filter.path {
            query.push(format!("path={path}"));
        }
        if let Some(outcome) = filter.outcome {
            query.push(format!("outcome={outcome}"));
        }
        for (name, value) in [("rcpt", &filter.recipient), ("id", &filter.id)] {
            if let Some(value) = value {
                query.push(format!("{name}={}", percent(value)));
            }
        }
        format!("/deliveries?{}", query.join("&"))
    };
    page(
        "Deliveries",
        html! {
            form method="get" action="/deliveries" {
                select name="path" {
                    option value="" { "any path" }
                    @for path in paths { option value=(path) selected[filter.path == Some(path)] { (path) } }
                }
                " "
                select name="outcome" { (outcome_options(filter.outcome)) }
                " "
                input name="rcpt" placeholder="recipient" value=(filter.recipient.as_deref().unwrap_or(""));
                " "
                input name="id" placeholder="queue id or Message-ID" value=(filter.id.as_deref().unwrap_or(""));
                " "
                button type="submit" { "Filter" }
            }
            table #deliveries {
                tr { th { "time (UTC)" } th { "queue id" } th { "recipient" } th { "path" } th { "number" } th { "rule" } th { "outcome" } th { "ms" } th { "detail" } }
                @for attempt in attempts {
                    tr.attempt {
                        td { (time(attempt.at_ms)) }
                        td { a href={ "/deliveries/" (attempt.queue_id) } { (attempt.queue_id) } }
                        td { (attempt.recipient) }
                        td { (attempt.path) }
                        td { (attempt.number.as_deref().unwrap_or("-")) }
                        td { (attempt.rule.as_deref().unwrap_or("-")) }
                        td class=(attempt.outcome) { (attempt.outcome) }
                        td.n { (attempt.elapsed_ms) }
                        td { (attempt.detail) }
                    }
                }
            }
            p {
                @if page_number > 0 { a #newer href=(query(page_number - 1)) { "← newer" } " " }
                @if more { a #older href=(query(page_number + 1)) { "older →" } }
            }
        },
    )
}

pub fn delivery(id: &str, attempts: &[Attempt], queued: Option<&Queued>) -> Markup {
    page(
        &format!("Delivery {id}"),
        html! {
            @if let Some(queued) = queued {
                h2 { "In the queue" }
                table #queue {
                    tr { th { "recipient" } th { "state" } }
                    @for (index, recipient) in queued.envelope.recipients.iter().enumerate() {
                        tr { td { (recipient) } td { (state(queued.outcomes[index].as_ref())) } }
                    }
                }
            }
            h2 { "Attempts" }
            @for attempt in attempts {
                section.attempt {
                    h3 class=(attempt.outcome) {
                        (attempt.recipient) " by " (attempt.path) ": " (attempt.outcome)
                    }
                    p {
                        (time(attempt.at_ms)) ", " (attempt.elapsed_ms) " ms. " (attempt.detail)
                        @if let Some(number) = &attempt.number { br; "Number " (number) }
                        @if let Some(rule) = &attempt.rule { ", chosen by " (rule) }
                        @if let Some(reason) = &attempt.reason { " (" (reason) ")" }
                        @if let Some(call_id) = &attempt.call_id { br; "Call-ID " code { (call_id) } }
                    }
                    @if !attempt.ladder.is_empty() { (ladder(attempt)) }
                }
            }
        },
    )
}

const ACTIONS: [Action; 5] = [
    Action::Hold,
    Action::Release,
    Action::Retry,
    Action::Delete,
    Action::Bounce,
];

/// Who is logged in, and the way out (a form: it changes something).
fn signed_in(session: &Session) -> Markup {
    html! {
        form.logout method="post" action="/logout" {
            "Logged in as " strong #user { (session.user) } ". "
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { "Log out" }
        }
    }
}

/// The queue, each recipient's state, and (logged in) the actions.
pub fn queue(queued: &[Queued], session: Option<&Session>) -> Markup {
    page(
        "Queue",
        html! {
            @match session {
                Some(session) => (signed_in(session)),
                None => p { a #login href="/login" { "Log in" } " as an administrator to hold, release, retry, delete or bounce." },
            }
            @if queued.is_empty() {
                p #empty { "The queue is empty." }
            }
            table #queue {
                tr { th { "queue id" } th { "received (UTC)" } th { "from" } th { "recipient" } th { "state" } @if session.is_some() { th { "actions" } } }
                @for message in queued {
                    @for (index, recipient) in message.envelope.recipients.iter().enumerate() {
                        tr.recipient data-id=(message.id) {
                            @if index == 0 {
                                td rowspan=(message.envelope.recipients.len()) { a href={ "/deliveries/" (message.id) } { (message.id) } }
                                td rowspan=(message.envelope.recipients.len()) { (time(message.envelope.received_at_ms)) }
                                td rowspan=(message.envelope.recipients.len()) {
                                    @if message.envelope.mail_from.is_empty() { "<>" } @else { (message.envelope.mail_from) }
                                }
                            }
                            td { (recipient) }
                            td.state { (state(message.outcomes[index].as_ref())) }
                            @if let (Some(session), 0) = (session, index) {
                                td rowspan=(message.envelope.recipients.len()) {
                                    form.act method="post" action="/queue/act" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="id" value=(message.id);
                                        @for action in ACTIONS {
                                            button type="submit" name="action" value=(action) { (action) } " "
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The policy generations kept and each rule in force with its counters,
/// as `mailcall rules status` prints them.
pub fn rules(status: Option<&Status>) -> Markup {
    page(
        "Rules",
        html! {
            @match status {
                None => p #no-policy { "This server runs no rule chain ([policy] chain is empty)." },
                Some(status) => {
                    h2 { "Generations" }
                    table #generations {
                        tr { th { "generation" } th { "built (UTC)" } th { "" } }
                        @for (id, built_at, active) in status.generations.iter().rev() {
                            tr data-generation=(id) {
                                td { code { (id) } }
                                td { (time(built_at * 1000)) }
                                td { @if *active { strong.active { "in force" } } }
                            }
                        }
                    }
                    p {
                        "Reloads since start: " span #reloads-applied { (status.reloads.0) } " put in force, "
                        span #reloads-refused { (status.reloads.1) } " refused. Roll back with "
                        code { "mailcall rules rollback [--to GENERATION]" } "."
                    }
                    h2 { "Rules in force, in chain order" }
                    table #rules {
                        tr {
                            th { "rule" } th { "mode" } th { "module (SHA-256)" } th { "contract" } th { "evaluations" } th { "dials" } th { "smtp" }
                            th { "no opinion" } th { "failures" } th { "p50" } th { "p90" } th { "p99" }
                        }
                        @for rule in &status.rules {
                            tr data-rule=(rule.name) {
                                td { (rule.name) }
                                td data-mode { (rule.mode) }
                                td { code title=(rule.digest.as_deref().unwrap_or("")) { (rule.digest.as_deref().map_or("-", |d| d.get(..16).unwrap_or(d))) } }
                                td data-contract { (rule.contract.as_deref().unwrap_or("-")) }
                                @for (name, count) in [
                                    ("evaluations", rule.evaluations), ("dials", rule.dials), ("smtp", rule.smtp),
                                    ("no-opinion", rule.no_opinion), ("failures", rule.failures),
                                ] {
                                    td.n data-counter=(name) { (count) }
                                }
                                @for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
                                    td.n data-latency=(name) { (latency(rule.latency.quantile_us(quantile), rule.latency.count())) }
                                }
                            }
                        }
                    }
                    p { "Latency: the bucket bound under which that share of evaluations finished (buckets double from 10 µs)." }
                    h2 { "Failures and shadows" }
                    table #rule-failures {
                        tr {
                            th { "rule" } th { "timeouts" } th { "memory caps" } th { "shadow runs" }
                            th { "shadow disagreements" } th { "deferrals" } th { "fallbacks" } th { "breaker trips" }
                        }
                        @for rule in &status.rules {
                            tr data-failures-of=(rule.name) {
                                td { (rule.name) }
                                @for (name, count) in [
                                    ("timeouts", rule.timeouts), ("memory-caps", rule.memory_caps),
                                    ("shadow-evaluations", rule.shadow_evaluations),
                                    ("shadow-disagreements", rule.shadow_disagreements), ("deferrals", rule.deferrals),
                                    ("fallbacks", rule.fallbacks), ("breaker-trips", rule.breaker_trips),
                                ] {
                                    td.n data-counter=(name) { (count) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A latency quantile for the rules page.
fn latency(bound_us: Option<u64>, samples: u64) -> String {
    match bound_us {
        None if samples == 0 => "-".into(),
        None => "> 10 s".into(),
        Some(us) if us < 1000 => format!("≤ {us} µs"),
        Some(us) => format!("≤ {:.1} ms", us as f64 / 1000.0),
    }
}

pub fn login(refusal: Option<&str>) -> Markup {
    page(
        "Log in",
        html! {
            @if let Some(refusal) = refusal { p.failed #refusal { (refusal) } }
            form method="post" action="/login" {
                label { "User " input name="user" autocomplete="username"; }
                " "
                label { "Password " input name="password" type="password" autocomplete="current-password"; }
                " "
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn refused(reason: &str) -> Markup {
    page("Refused", html! { p.failed #refusal { (reason) } })
}

/// What an action did, a line per message.
pub fn acted(action: Action, lines: &[String], session: &Session) -> Markup {
    page(
        &format!("Queue: {action}"),
        html! {
            (signed_in(session))
            ul #acted { @for line in lines { li { (line) } } }
            p { a href="/queue" { "Back to the queue" } }
        },
    )
}

pub fn not_found(reason: &str) -> Markup {
    page("Not found", html! { p { (reason) } })
}

fn state(outcome: Option<&Outcome>) -> String {
    outcome.map_or_else(|| "not tried yet".into(), Outcome::summary)
}

/// Fig. 4 as SVG: A and B as lifelines, one arrow per step with its label
/// and its time from the INVITE, top to bottom.
fn ladder(attempt: &Attempt) -> Markup {
    const A: u32 = 150;
    const B: u32 = 650;
    const STEP: u32 = 34;
    let height = 60 + STEP * attempt.ladder.len() as u32;
    html! {
        svg.ladder xmlns="http://www.w3.org/2000/svg" width="800" height=(height) viewBox={ "0 0 800 " (height) } role="img" {
            title { "Call ladder of " (attempt.call_id.as_deref().unwrap_or("the call")) }
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#444" {}
                }
            }
            @if attempt.outcome == AttemptOutcome::Received {
                // The callee's record: we are B.
                text x=(A) y="20" text-anchor="middle" { "A " (attempt.peer.as_deref().unwrap_or("")) }
                text x=(B) y="20" text-anchor="middle" { "B (this server) " (attempt.number.as_deref().unwrap_or("")) }
            } @else {
                text x=(A) y="20" text-anchor="middle" { "A (this server)" }
                text x=(B) y="20" text-anchor="middle" { "B " (attempt.number.as_deref().unwrap_or("")) }
            }
            line x1=(A) y1="30" x2=(A) y2=(height - 10) stroke="#888" {}
            line x1=(B) y1="30" x2=(B) y2=(height - 10) stroke="#888" {}
            @for (index, rung) in attempt.ladder.iter().enumerate() {
                @let y = 50 + STEP * index as u32;
                g.rung data-label=(rung.label) {
                    text x="5" y=(y + 4) fill="#666" { (format!("{:.1} ms", rung.at_us as f64 / 1000.0)) }
                    @match rung.label.sender() {
                        // A step of the caller's own (finding where to call): a dot on A.
                        Side::Local => {
                            circle cx=(A) cy=(y) r="4" fill="#444" {}
                            text.label x=(A + 10) y=(y + 4) {
                                (rung.label) " " (shorten(&rung.text))
                            }
                        }
                        side => {
                            @let (from, to) = if side == Side::Caller { (A, B) } else { (B, A) };
                            line x1=(from) y1=(y) x2=(to) y2=(y) stroke="#444" marker-end="url(#arrow)" {}
                            text.label x={ ((A + B) / 2) } y=(y - 5) text-anchor="middle" {
                                (rung.label) " " (shorten(&rung.text))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let kept: String = text.chars().take(MAX - 1).collect();
        format!("{kept}…")
    }
}

/// `2026-12-04 03:12:45.120`, from Unix milliseconds.
fn time(at_ms: u64) -> String {
    let seconds = at_ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        at_ms % 1000
    )
}

/// Enough of percent-encoding for a query value.
fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_calendar_dates_in_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000");
        assert_eq!(time(1_796_354_765_120), "2026-12-04 03:26:05.120");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent("a b&c=d@e.example"), "a%20b%26c%3Dd@e.example");
    }
}
