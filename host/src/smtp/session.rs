//! One inbound SMTP session (step S1), without I/O: bytes from the client go
//! in, replies come out, and an accepted message is handed to the caller to
//! commit durably before its `250` is written.
//!
//! The caller (a TCP connection, or later a call's media channel) loops:
//! [`Session::feed`] what it read, then [`Session::step`] until it asks for
//! more input, a commit, or the end of the session. Commands are parsed by
//! smtp-proto; the `DATA` body by [`super::data`]. Pipelined commands after
//! the end of data wait until the message is committed.

use std::collections::HashSet;
use std::net::IpAddr;

use mailcall_sip::Network;
use smtp_proto::request::receiver::RequestReceiver;
use smtp_proto::{Error as ParseError, Request};

use super::data::{DataError, DataReceiver, Progress};
use super::reply::Reply;
use crate::queue::spool::{MessageId, SpoolError};

/// Why an accepted message could not be stored: the client hears `451`.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the commit was interrupted: {0}")]
    Interrupted(String),
}
use crate::auth::Verdict;

/// The longest command line accepted, CRLF included (Postfix's
/// `line_length_limit`; RFC 5321 asks for at least 512).
const COMMAND_LINE_LIMIT: usize = 2048;

/// What the server accepts, and its limits.
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// The name the server gives in its greeting and `Received:` headers.
    pub hostname: String,
    /// Domains whose mail is delivered here (lower case, no trailing dot).
    pub local_domains: HashSet<String>,
    /// Addresses of local mailboxes and aliases (`user@domain`, lower case).
    pub local_addresses: HashSet<String>,
    /// Networks allowed to relay without authentication.
    pub relay_networks: Vec<Network>,
    /// Largest message accepted, in bytes.
    pub max_message_size: usize,
    /// Most recipients in one message.
    pub max_recipients: usize,
    /// Errors before the session is closed.
    pub max_errors: u32,
    /// Whether `STARTTLS` is offered (the caller can upgrade the stream).
    pub tls_available: bool,
    /// The session runs on an answered call's channel: mail for local
    /// domains only (a call is never a way to relay), so no AUTH, and no
    /// STARTTLS (a TLS channel is negotiated in the call's SDP).
    pub over_call: bool,
    /// Clients whose end of data is answered only once the message was
    /// tried (synchronous mode): these networks, and these users once
    /// authenticated.
    pub synchronous_networks: Vec<Network>,
    pub synchronous_users: HashSet<String>,
}

/// The envelope of an accepted message, with the RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    /// `ENVID`, `RET=FULL` (true) or `RET=HDRS` (false), if given.
    pub envelope_id: Option<String>,
    pub return_full: Option<bool>,
    /// The message, with the `Received:` header added.
    pub message: Vec<u8>,
    pub helo: String,
    /// The client waits for the delivery attempt (synchronous mode).
    pub synchronous: bool,
}

/// One accepted recipient and its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    /// `NOTIFY` flags as smtp-proto parses them (`RCPT_NOTIFY_*`).
    pub notify: u64,
    /// `ORCPT`, if given.
    pub original: Option<String>,
}

/// What the caller must do next.
#[derive(Debug)]
pub enum Step {
    /// Read more from the client and [`Session::feed`] it.
    NeedInput,
    /// Store the message durably, then call [`Session::committed`].
    Commit(Box<Accepted>),
    /// Write what is pending, then close the connection.
    Close,
    /// Write what is pending (the `220`), run the TLS handshake, then call
    /// [`Session::tls_started`].
    StartTls,
    /// Check these credentials (`AUTH`), then call
    /// [`Session::authenticated`] with the verdict.
    Authenticate { login: String, password: String },
}

/// Where the session is.
enum Mode {
    Commands,
    /// Discarding the rest of an overlong command line.
    SkipLine,
    Data(DataReceiver),
    /// Reading a `BDAT` chunk; `ready` is false when there was no
    /// transaction with recipients to add it to.
    Bdat {
        left: usize,
        last: bool,
        ready: bool,
    },
    /// Waiting for the caller to commit; input is held.
    Committing,
    /// The `220` to `STARTTLS` is out; waiting for the handshake.
    StartingTls,
    /// Reading the client's next line of an `AUTH` exchange.
    Auth(AuthStage),
    /// Waiting for the caller to check credentials.
    Authenticating,
    Closed,
}

/// Where an `AUTH` exchange is.
enum AuthStage {
    /// `AUTH PLAIN` without an initial response: the response is next.
    Plain,
    /// `AUTH LOGIN`: the user name is next.
    LoginUser,
    /// `AUTH LOGIN`: the password for this user is next.
    LoginPassword(String),
}

struct Transaction {
    mail_from: String,
    envelope_id: Option<String>,
    return_full: Option<bool>,
    recipients: Vec<Recipient>,
    /// Bytes received by `BDAT` so far.
    chunks: Vec<u8>,
    /// `BDAT` content is refused (too large) but still read.
    chunks_too_large: bool,
}

/// One SMTP session.
pub struct Session {
    policy: SessionPolicy,
    client: IpAddr,
    helo: Option<String>,
    transaction: Option<Transaction>,
    mode: Mode,
    input: Vec<u8>,
    errors: u32,
    /// The user logged in with `AUTH`.
    authenticated: Option<String>,
    tls: bool,
    /// The messages queued in this session, with their recipients.
    queued: Vec<(MessageId, Vec<String>)>,
}

impl Session {
    pub fn new(policy: SessionPolicy, client: IpAddr) -> Session {
        Session {
            policy,
            client,
            helo: None,
            transaction: None,
            mode: Mode::Commands,
            input: Vec::new(),
            errors: 0,
            authenticated: None,
            tls: false,
            queued: Vec::new(),
        }
    }

    /// The caller queued a message of this session as `id`.
    pub fn note_queued(&mut self, id: MessageId, recipients: Vec<String>) {
        self.queued.push((id, recipients));
    }

    /// The messages queued in this session so far, with their recipients.
    pub fn queued(&self) -> &[(MessageId, Vec<String>)] {
        &self.queued
    }

    /// The `220` greeting.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP mailcall", self.policy.hostname))
    }

    /// True while message data (`DATA` or a `BDAT` chunk) is being read,
    /// for the caller's choice of timeout.
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Bdat { .. })
    }

    /// The TLS handshake after `STARTTLS` succeeded: the session starts
    /// over (RFC 3207), and anything the client sent before the handshake is
    /// dropped, so no command can be injected in clear into the encrypted
    /// session.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.transaction = None;
        self.input.clear();
        self.mode = Mode::Commands;
    }

    /// The stream is encrypted already (a call's channel over TLS).
    pub fn set_encrypted(&mut self) {
        self.tls = true;
    }

    /// The caller checked the credentials of [`Step::Authenticate`].
    pub fn authenticated(&mut self, verdict: Verdict, out: &mut Vec<u8>) {
        self.mode = Mode::Commands;
        match verdict {
            Verdict::Accepted(user) => {
                tracing::info!(client = %self.client, %user, "authenticated");
                self.authenticated = Some(user);
                self.reply(out, Reply::new(235, "2.7.0", "Authentication successful"));
            }
            Verdict::Refused => self.reply(
                out,
                Reply::new(535, "5.7.8", "Authentication credentials invalid"),
            ),
            Verdict::Unavailable => self.reply(
                out,
                Reply::new(454, "4.7.0", "Temporary authentication failure"),
            ),
        }
    }

    /// Whether `AUTH` may be used now: only where the password cannot be
    /// read on the way (TLS, or the loopback interface).
    fn auth_allowed(&self) -> bool {
        !self.policy.over_call && (self.tls || self.client.is_loopback())
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Processes buffered input, writing replies to `out`.
    pub fn step(&mut self, out: &mut Vec<u8>) -> Step {
        loop {
            match &mut self.mode {
                Mode::Closed => return Step::Close,
                Mode::Committing | Mode::Authenticating => return Step::NeedInput,
                Mode::StartingTls => return Step::StartTls,
                Mode::Auth(_) => {
                    // An overlong response ends the exchange and is skipped
                    // to its end, as an overlong command is: however it is
                    // cut into reads, no part of it is read as a command.
                    let end = match self.input.iter().position(|&b| b == b'\n') {
                        Some(end) if end + 1 > COMMAND_LINE_LIMIT => {
                            self.input.drain(..=end);
                            self.mode = Mode::Commands;
                            self.reply(out, Reply::new(500, "5.5.2", "Line too long"));
                            continue;
                        }
                        Some(end) => end,
                        None if self.input.len() > COMMAND_LINE_LIMIT => {
                            self.mode = Mode::SkipLine;
                            continue;
                        }
                        None => return Step::NeedInput,
                    };
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    let Mode::Auth(stage) = std::mem::replace(&mut self.mode, Mode::Commands)
                    else {
                        unreachable!("in auth mode");
                    };
                    if let Some(step) = self.auth_response(stage, &line, out) {
                        return step;
                    }
                }
                Mode::Data(receiver) => match receiver.feed(&self.input) {
                    Progress::More => {
                        self.input.clear();
                        return Step::NeedInput;
                    }
                    Progress::Ended { consumed } => {
                        self.input.drain(..consumed);
                        let Mode::Data(receiver) =
                            std::mem::replace(&mut self.mode, Mode::Commands)
                        else {
                            unreachable!("in data mode");
                        };
                        match receiver.finish() {
                            Ok(body) => return self.commit(body),
                            Err(error) => {
                                self.transaction = None;
                                self.reply(out, data_error_reply(error));
                            }
                        }
                    }
                },
                Mode::Bdat { left, last, ready } => {
                    let take = (*left).min(self.input.len());
                    let last = *last;
                    let ready = *ready;
                    *left -= take;
                    let done = *left == 0;
                    let chunk: Vec<u8> = self.input.drain(..take).collect();
                    if let Some(transaction) = self.transaction.as_mut().filter(|_| ready) {
                        if transaction.chunks.len() + chunk.len() > self.policy.max_message_size {
                            transaction.chunks_too_large = true;
                        } else if !transaction.chunks_too_large {
                            transaction.chunks.extend_from_slice(&chunk);
                        }
                    }
                    if !done {
                        return Step::NeedInput;
                    }
                    self.mode = Mode::Commands;
                    let too_large = self
                        .transaction
                        .as_ref()
                        .is_some_and(|t| t.chunks_too_large);
                    if !ready {
                        self.transaction = None;
                        self.reply(out, Reply::new(503, "5.5.1", "Need MAIL and RCPT first"));
                    } else if too_large {
                        self.transaction = None;
                        self.reply(out, data_error_reply(DataError::TooLarge));
                    } else if last {
                        let body = self
                            .transaction
                            .as_mut()
                            .map(|t| std::mem::take(&mut t.chunks));
                        return self.commit(body.unwrap_or_default());
                    } else {
                        let size = self.transaction.as_ref().map_or(0, |t| t.chunks.len());
                        self.reply(
                            out,
                            Reply::new(250, "2.0.0", format!("{size} octets received")),
                        );
                    }
                }
                Mode::SkipLine => match self.input.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.input.drain(..=end);
                        self.mode = Mode::Commands;
                        self.reply(out, Reply::new(500, "5.5.2", "Line too long"));
                    }
                    None => {
                        self.input.clear();
                        return Step::NeedInput;
                    }
                },
                Mode::Commands => {
                    // Parse whole lines only, and none longer than the limit.
                    let end = match self.input.iter().position(|&b| b == b'\n') {
                        Some(end) if end + 1 > COMMAND_LINE_LIMIT => {
                            self.input.drain(..=end);
                            self.reply(out, Reply::new(500, "5.5.2", "Line too long"));
                            continue;
                        }
                        Some(end) => end,
                        None if self.input.len() > COMMAND_LINE_LIMIT => {
                            self.mode = Mode::SkipLine;
                            continue;
                        }
                        None => return Step::NeedInput,
                    };
                    // The parser sees one line and nothing after it, so no
                    // error in one command can reach into the next.
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    let parsed = RequestReceiver::default()
                        .ingest(&mut line.iter())
                        .map(Request::into_owned);
                    match parsed {
                        Ok(request) => self.command(request, out),
                        Err(ParseError::NeedsMoreData { .. }) => {
                            // A whole line that is not a whole command.
                            self.reply(out, Reply::new(500, "5.5.2", "Syntax error"));
                        }
                        Err(error) => {
                            let reply = parse_error_reply(error);
                            self.reply(out, reply);
                        }
                    }
                }
            }
        }
    }

    /// The caller stored the accepted message and, in synchronous mode,
    /// tried it: `reply` says how that went. Go on with held input.
    pub fn committed_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        self.mode = Mode::Commands;
        self.reply(out, reply);
    }

    /// The caller stored the accepted message (`Ok(queue id)`) or could not
    /// (`Err(why)`): write the reply and go on with held input.
    pub fn committed(&mut self, result: Result<MessageId, CommitError>, out: &mut Vec<u8>) {
        self.mode = Mode::Commands;
        match result {
            Ok(id) => self.reply(out, Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))),
            Err(error) => {
                tracing::error!(step = "S1", "cannot queue an accepted message: {error}");
                self.reply(
                    out,
                    Reply::new(451, "4.3.0", "Local error in processing; try again later"),
                );
            }
        }
    }

    fn commit(&mut self, body: Vec<u8>) -> Step {
        let Some(transaction) = self.transaction.take() else {
            return Step::NeedInput;
        };
        self.mode = Mode::Committing;
        let helo = self.helo.clone().unwrap_or_default();
        let mut message = self.received_header(&helo, &transaction).into_bytes();
        message.extend_from_slice(&body);
        Step::Commit(Box::new(Accepted {
            mail_from: transaction.mail_from,
            recipients: transaction.recipients,
            envelope_id: transaction.envelope_id,
            return_full: transaction.return_full,
            message,
            helo,
            synchronous: self.is_synchronous(),
        }))
    }

    /// Whether this client gets synchronous replies.
    fn is_synchronous(&self) -> bool {
        let policy = &self.policy;
        !policy.over_call
            && (self
                .authenticated
                .as_ref()
                .is_some_and(|user| policy.synchronous_users.contains(&user.to_lowercase()))
                || policy
                    .synchronous_networks
                    .iter()
                    .any(|network| network.contains(self.client)))
    }

    fn received_header(&self, helo: &str, transaction: &Transaction) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let date = mail_parser::DateTime::from_timestamp(now).to_rfc822();
        let for_clause = match &transaction.recipients[..] {
            [only] => format!("\r\n\tfor <{}>", only.address),
            _ => String::new(),
        };
        // RFC 3848: ESMTP, plus S with TLS, plus A when authenticated.
        let protocol = match (self.tls, self.authenticated.is_some()) {
            (false, false) => "ESMTP",
            (true, false) => "ESMTPS",
            (false, true) => "ESMTPA",
            (true, true) => "ESMTPSA",
        };
        format!(
            "Received: from {helo} ([{client}])\r\n\tby {host} (mailcall) with {protocol}{for_clause};\r\n\t{date}\r\n",
            client = self.client,
            host = self.policy.hostname,
        )
    }

    fn reply(&mut self, out: &mut Vec<u8>, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
        }
        reply.write_to(out);
        if self.errors >= self.policy.max_errors && !matches!(self.mode, Mode::Closed) {
            Reply::new(
                421,
                "4.7.0",
                format!("{} Too many errors; closing", self.policy.hostname),
            )
            .write_to(out);
            self.mode = Mode::Closed;
        }
    }

    fn command(&mut self, request: Request<String>, out: &mut Vec<u8>) {
        let reply = match request {
            Request::Ehlo { host } => {
                self.helo = Some(host.clone());
                self.transaction = None;
                let mut lines = vec![
                    format!("{} greets {host}", self.policy.hostname),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.policy.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "SMTPUTF8".into(),
                    "DSN".into(),
                    "CHUNKING".into(),
                ];
                if self.policy.tls_available && !self.tls && !self.policy.over_call {
                    lines.push("STARTTLS".into());
                }
                if self.auth_allowed() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                Reply {
                    code: 250,
                    status: "",
                    lines,
                }
            }
            Request::Helo { host } => {
                self.helo = Some(host);
                self.transaction = None;
                Reply::new(250, "", self.policy.hostname.clone())
            }
            Request::Lhlo { .. } => Reply::new(500, "5.5.1", "LHLO is for LMTP"),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => match &self.transaction {
                Some(t) if !t.recipients.is_empty() => {
                    self.mode = Mode::Data(DataReceiver::new(self.policy.max_message_size));
                    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
                }
                Some(_) => Reply::new(554, "5.5.1", "No valid recipients"),
                None => Reply::new(503, "5.5.1", "Need MAIL and RCPT first"),
            },
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                // The chunk is read either way, to stay in step with the
                // client; the reply comes once it is read.
                let ready = self
                    .transaction
                    .as_ref()
                    .is_some_and(|t| !t.recipients.is_empty());
                self.mode = Mode::Bdat {
                    left: chunk_size,
                    last: is_last,
                    ready,
                };
                return;
            }
            Request::Rset => {
                self.transaction = None;
                Reply::new(250, "2.0.0", "Ok")
            }
            Request::Noop { .. } => Reply::new(250, "2.0.0", "Ok"),
            Request::Quit => {
                Reply::new(221, "2.0.0", "Bye").write_to(out);
                self.mode = Mode::Closed;
                return;
            }
            Request::Vrfy { .. } => Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user; send mail and it will be delivered or bounced",
            ),
            Request::Expn { .. } => Reply::new(502, "5.5.1", "EXPN is disabled"),
            Request::Help { .. } => Reply::new(214, "2.0.0", "See RFC 5321"),
            Request::StartTls => {
                if self.tls {
                    Reply::new(503, "5.5.1", "TLS already active")
                } else if !self.policy.tls_available || self.policy.over_call {
                    Reply::new(454, "4.7.0", "TLS not available")
                } else {
                    Reply::new(220, "2.0.0", "Ready to start TLS").write_to(out);
                    self.mode = Mode::StartingTls;
                    return;
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => match self.auth(mechanism, initial_response, out) {
                Some(reply) => reply,
                None => return,
            },
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Reply::new(502, "5.5.1", "Command not implemented")
            }
        };
        self.reply(out, reply);
    }

    /// `AUTH mechanism [initial-response]`: a reply, or `None` when the
    /// exchange goes on (a `334` challenge is out) or the caller must check.
    fn auth(&mut self, mechanism: u64, initial: String, out: &mut Vec<u8>) -> Option<Reply> {
        if !self.auth_allowed() {
            return Some(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if self.authenticated.is_some() {
            return Some(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.transaction.is_some() {
            return Some(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        let stage = if mechanism == smtp_proto::AUTH_PLAIN {
            AuthStage::Plain
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            AuthStage::LoginUser
        } else {
            return Some(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
        };
        if initial.is_empty() {
            let challenge = match stage {
                AuthStage::Plain => "",
                _ => "VXNlcm5hbWU6", // "Username:"
            };
            Reply::new(334, "", challenge).write_to(out);
            self.mode = Mode::Auth(stage);
            return None;
        }
        // The initial response is answered as if it came on its own line.
        let line = format!("{initial}\r\n");
        self.input.splice(0..0, line.into_bytes());
        self.mode = Mode::Auth(stage);
        None
    }

    /// The client's answer to a `334`: the next challenge, an error, or
    /// credentials for the caller to check.
    fn auth_response(&mut self, stage: AuthStage, line: &str, out: &mut Vec<u8>) -> Option<Step> {
        if line == "*" {
            self.reply(out, Reply::new(501, "5.7.0", "Authentication cancelled"));
            return None;
        }
        let Some(decoded) = decode_base64(line) else {
            self.reply(out, Reply::new(501, "5.5.2", "Cannot decode the response"));
            return None;
        };
        match stage {
            AuthStage::Plain => {
                // authzid NUL authcid NUL password (RFC 4616).
                let mut parts = decoded.split('\0');
                let (Some(_authzid), Some(login), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    self.reply(out, Reply::new(501, "5.5.2", "Malformed PLAIN response"));
                    return None;
                };
                self.mode = Mode::Authenticating;
                Some(Step::Authenticate {
                    login: login.to_string(),
                    password: password.to_string(),
                })
            }
            AuthStage::LoginUser => {
                Reply::new(334, "", "UGFzc3dvcmQ6").write_to(out); // "Password:"
                self.mode = Mode::Auth(AuthStage::LoginPassword(decoded));
                None
            }
            AuthStage::LoginPassword(login) => {
                self.mode = Mode::Authenticating;
                Some(Step::Authenticate {
                    login,
                    password: decoded,
                })
            }
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1", "Send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, "5.5.1", "Nested MAIL command");
        }
        if from.size > self.policy.max_message_size {
            return Reply::new(552, "5.3.4", "Message size exceeds fixed limit");
        }
        let return_full = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(true)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(false)
        } else {
            None
        };
        self.transaction = Some(Transaction {
            mail_from: from.address,
            envelope_id: from.env_id,
            return_full,
            recipients: Vec::new(),
            chunks: Vec::new(),
            chunks_too_large: false,
        });
        Reply::new(250, "2.1.0", "Ok")
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Reply {
        let max_recipients = self.policy.max_recipients;
        let Some(transaction) = &self.transaction else {
            return Reply::new(503, "5.5.1", "Need MAIL first");
        };
        if transaction.recipients.len() >= max_recipients {
            return Reply::new(452, "4.5.3", "Too many recipients");
        }
        let address = to.address.trim().to_string();
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Reply::new(501, "5.1.3", "Recipient address must be user@domain");
        };
        let domain = domain.trim_end_matches('.').to_lowercase();
        if local.is_empty() || domain.is_empty() {
            return Reply::new(501, "5.1.3", "Recipient address must be user@domain");
        }
        if self.policy.local_domains.contains(&domain) {
            // Only whole local addresses: `a%b@local`, `"a@b"@local` are
            // just unknown users, never a way to relay.
            let key = format!("{}@{domain}", local.to_lowercase());
            if !self.policy.local_addresses.contains(&key) {
                return Reply::new(
                    550,
                    "5.1.1",
                    format!("<{address}>: Recipient address rejected: User unknown"),
                );
            }
        } else if !self.may_relay() {
            return Reply::new(554, "5.7.1", format!("<{address}>: Relay access denied"));
        }
        let recipient = Recipient {
            address: format!("{local}@{domain}"),
            notify: to.flags,
            original: to.orcpt,
        };
        if let Some(transaction) = &mut self.transaction {
            transaction.recipients.push(recipient);
        }
        Reply::new(250, "2.1.5", "Ok")
    }

    fn may_relay(&self) -> bool {
        if self.policy.over_call {
            return false;
        }
        self.authenticated.is_some()
            || self
                .policy
                .relay_networks
                .iter()
                .any(|network| network.contains(self.client))
    }
}

/// Base64 text (an `AUTH` response) as UTF-8; `=` alone is empty.
fn decode_base64(text: &str) -> Option<String> {
    use base64::Engine;
    if text == "=" {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn data_error_reply(error: DataError) -> Reply {
    match error {
        DataError::BareNewline => {
            Reply::new(550, "5.5.2", "Message refused: bare <CR> or <LF> received")
        }
        DataError::TooLarge => Reply::new(552, "5.3.4", "Message size exceeds fixed limit"),
    }
}

fn parse_error_reply(error: ParseError) -> Reply {
    match error {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Command unrecognized"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => Reply::new(501, "5.5.4", format!("Syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
        }
        ParseError::ResponseTooLong => Reply::new(500, "5.5.2", "Line too long"),
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, "5.5.1", "Command unrecognized")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SessionPolicy {
        SessionPolicy {
            hostname: "mx.local.example".into(),
            local_domains: HashSet::from(["local.example".to_string()]),
            local_addresses: HashSet::from([
                "postmaster@local.example".to_string(),
                "taro@local.example".to_string(),
            ]),
            relay_networks: vec!["10.1.0.0/16".parse().unwrap()],
            max_message_size: 10_000,
            max_recipients: 3,
            max_errors: 10,
            tls_available: true,
            over_call: false,
            synchronous_networks: Vec::new(),
            synchronous_users: HashSet::new(),
        }
    }

    /// A client on the other side: sends bytes, collects replies and the
    /// messages the session asked to commit.
    struct Client {
        session: Session,
        accepted: Vec<Accepted>,
        closed: bool,
    }

    impl Client {
        fn new(address: &str) -> Client {
            Client::with(policy(), address)
        }

        fn with(policy: SessionPolicy, address: &str) -> Client {
            Client {
                session: Session::new(policy, address.parse().unwrap()),
                accepted: Vec::new(),
                closed: false,
            }
        }

        /// Sends `bytes` and returns every reply line written in response.
        fn send(&mut self, bytes: &str) -> Vec<String> {
            let mut out = Vec::new();
            self.session.feed(bytes.as_bytes());
            loop {
                match self.session.step(&mut out) {
                    Step::NeedInput => break,
                    Step::Close => {
                        self.closed = true;
                        break;
                    }
                    Step::Commit(accepted) => {
                        self.accepted.push(*accepted);
                        let id = MessageId(self.accepted.len() as u64);
                        self.session.committed(Ok(id), &mut out);
                    }
                    // The handshake itself is the connection's business.
                    Step::StartTls => self.session.tls_started(),
                    Step::Authenticate { login, password } => {
                        let verdict = match (login.as_str(), password.as_str()) {
                            ("taro", "secret pass") => Verdict::Accepted("taro".into()),
                            ("taro", "busy") => Verdict::Unavailable,
                            _ => Verdict::Refused,
                        };
                        self.session.authenticated(verdict, &mut out);
                    }
                }
            }
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }

        /// Sends one line and returns the last reply line.
        fn say(&mut self, line: &str) -> String {
            self.send(&format!("{line}\r\n")).pop().unwrap_or_default()
        }
    }

    fn base64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// Each command is its own line, whatever ends it and whatever is wrong
    /// with it: the parser never takes the next command as part of a bad
    /// one (the parser is handed one line at a time).
    #[test]
    fn a_command_never_reads_past_its_line() {
        let bad_lines = [
            "MAIL FROM:<a@sender.example> SIZE=abc\n",
            "MAIL FROM:<\"unterminated\n",
            "RCPT TO:\n",
            "HELO\n",
            "EHLO a\"b\n",
            "AUTH\n",
            "MAIL FROM:<a@sender.example> BODY=\r\n",
            "VRFY \"x\r\n",
            "\n",
            "\r\n",
        ];
        for bad in bad_lines {
            for end in ["\r\n", "\n"] {
                let mut client = Client::new("127.0.0.1");
                client.say("EHLO client.example");
                let replies: Vec<String> = client
                    .send(&format!("{bad}NOOP{end}NOOP{end}"))
                    .into_iter()
                    .filter(|line| line.as_bytes().get(3) == Some(&b' '))
                    .collect();
                assert_eq!(
                    replies.len(),
                    3,
                    "{bad:?} then NOOP{end:?}: one reply per line: {replies:?}"
                );
                assert_eq!(replies[1], "250 2.0.0 Ok", "{bad:?}: {replies:?}");
                assert_eq!(replies[2], "250 2.0.0 Ok", "{bad:?}: {replies:?}");
            }
        }
    }

    #[test]
    fn a_session_over_a_call_takes_local_mail_only() {
        let mut client = Client::with(
            SessionPolicy {
                over_call: true,
                // Even a client address inside the relay networks.
                ..policy()
            },
            "10.1.2.3",
        );
        let ehlo = client.send("EHLO caller.example\r\n");
        assert!(!ehlo
            .iter()
            .any(|l| l.contains("STARTTLS") || l.contains("AUTH")));
        client.say("MAIL FROM:<a@caller.example>");
        assert!(client
            .say("RCPT TO:<x@remote.test>")
            .starts_with("554 5.7.1"));
        assert!(client
            .say("RCPT TO:<taro@local.example>")
            .starts_with("250"));
        assert!(client.say("STARTTLS").starts_with("454"));
        assert!(client.say("AUTH PLAIN AGEAYg==").starts_with("538"));
    }

    #[test]
    fn starttls_drops_what_was_pipelined_before_the_handshake() {
        let mut client = Client::new("192.0.2.7");
        let ehlo = client.send("EHLO c\r\n");
        assert!(ehlo
            .iter()
            .any(|l| l == "250-STARTTLS" || l == "250 STARTTLS"));
        assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "no AUTH in clear");
        // CVE-2011-0411: a command sent in clear after STARTTLS must not be
        // run inside the TLS session.
        let replies = client.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
        assert_eq!(replies, ["220 2.0.0 Ready to start TLS"]);
        assert!(
            client.say("MAIL FROM:<a@b.test>").starts_with("503"),
            "EHLO again first"
        );
        let ehlo = client.send("EHLO c\r\n");
        assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")));
        assert!(ehlo.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")));
        assert!(client.say("STARTTLS").starts_with("503"));
        client.say("MAIL FROM:<a@b.test>");
        client.say("RCPT TO:<taro@local.example>");
        client.send("DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
        let message = String::from_utf8(client.accepted[0].message.clone()).unwrap();
        assert!(message.contains("with ESMTPS"), "{message}");
    }

    #[test]
    fn auth_needs_tls_or_loopback() {
        let mut client = Client::new("192.0.2.7");
        client.say("EHLO c");
        let initial = base64("\0taro\0secret pass");
        assert!(client
            .say(&format!("AUTH PLAIN {initial}"))
            .starts_with("538 5.7.11"));
        let mut local = Client::new("127.0.0.1");
        let ehlo = local.send("EHLO c\r\n");
        assert!(ehlo.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")));
        assert_eq!(
            local.say(&format!("AUTH PLAIN {initial}")),
            "235 2.7.0 Authentication successful"
        );
        assert!(local.say("AUTH PLAIN").starts_with("503"), "only once");
    }

    #[test]
    fn an_authenticated_client_may_relay_and_a_wrong_password_may_not() {
        let mut client = Client::new("192.0.2.7");
        client.send("EHLO c\r\nSTARTTLS\r\n");
        client.say("EHLO c");
        // AUTH PLAIN with the response on its own line.
        assert_eq!(client.say("AUTH PLAIN"), "334 ");
        assert!(client
            .say(&base64("\0taro\0wrong"))
            .starts_with("535 5.7.8"));
        client.say("MAIL FROM:<a@b.test>");
        assert!(client
            .say("RCPT TO:<x@remote.test>")
            .starts_with("554 5.7.1"));
        client.say("RSET");
        // AUTH LOGIN: user name, then password, each asked for.
        assert_eq!(client.say("AUTH LOGIN"), "334 VXNlcm5hbWU6");
        assert_eq!(client.say(&base64("taro")), "334 UGFzc3dvcmQ6");
        assert!(client.say(&base64("secret pass")).starts_with("235"));
        client.say("MAIL FROM:<a@b.test>");
        assert!(client.say("RCPT TO:<x@remote.test>").starts_with("250"));
        client.send("DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
        let message = String::from_utf8(client.accepted[0].message.clone()).unwrap();
        assert!(message.contains("with ESMTPSA"), "{message}");
    }

    #[test]
    fn a_check_not_made_now_is_a_temporary_failure_and_auth_may_be_retried() {
        let mut client = Client::new("127.0.0.1");
        client.say("EHLO c");
        assert_eq!(
            client.say(&format!("AUTH PLAIN {}", base64("\0taro\0busy"))),
            "454 4.7.0 Temporary authentication failure"
        );
        assert!(client
            .say(&format!("AUTH PLAIN {}", base64("\0taro\0secret pass")))
            .starts_with("235"));
    }

    #[test]
    fn auth_exchanges_can_be_cancelled_and_bad_input_is_refused() {
        let mut client = Client::new("127.0.0.1");
        client.say("EHLO c");
        assert_eq!(client.say("AUTH LOGIN"), "334 VXNlcm5hbWU6");
        assert!(client.say("*").starts_with("501 5.7.0"));
        assert!(client.say("AUTH PLAIN !!notbase64").starts_with("501"));
        assert!(client
            .say(&format!("AUTH PLAIN {}", base64("no separators")))
            .starts_with("501"));
        assert!(client.say("AUTH CRAM-MD5").starts_with("504"));
        assert!(client.say("NOOP").starts_with("250"), "still in step");
    }

    #[test]
    fn a_whole_transaction_is_accepted_with_a_received_header() {
        let mut client = Client::new("192.0.2.7");
        assert!(client
            .session
            .greeting()
            .to_string()
            .starts_with("220 mx.local.example"));
        let ehlo = client.send("EHLO client.example\r\n");
        for extension in [
            "PIPELINING",
            "SIZE 10000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "DSN",
            "CHUNKING",
        ] {
            assert!(
                ehlo.iter().any(|line| line.ends_with(extension)),
                "{extension}: {ehlo:?}"
            );
        }
        assert_eq!(
            client.say("MAIL FROM:<a@sender.example> RET=HDRS ENVID=abc123"),
            "250 2.1.0 Ok"
        );
        assert_eq!(
            client.say("RCPT TO:<Taro@LOCAL.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;taro@local.example"),
            "250 2.1.5 Ok"
        );
        assert_eq!(client.say("DATA"), "354 End data with <CR><LF>.<CR><LF>");
        let reply = client.send("Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n");
        assert_eq!(reply, ["250 2.0.0 Ok: queued as 0000000000000001"]);
        let accepted = &client.accepted[0];
        assert_eq!(accepted.mail_from, "a@sender.example");
        assert_eq!(accepted.recipients[0].address, "Taro@local.example");
        assert_eq!(
            accepted.recipients[0].notify,
            smtp_proto::RCPT_NOTIFY_SUCCESS | smtp_proto::RCPT_NOTIFY_FAILURE
        );
        assert!(accepted.recipients[0].original.is_some());
        assert_eq!(accepted.envelope_id.as_deref(), Some("abc123"));
        assert_eq!(accepted.return_full, Some(false));
        let text = String::from_utf8(accepted.message.clone()).unwrap();
        assert!(
            text.starts_with(
                "Received: from client.example ([192.0.2.7])\r\n\tby mx.local.example"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Subject: hi\r\n\r\n.dot\r\nbody\r\n"),
            "{text}"
        );
        assert_eq!(client.say("QUIT"), "221 2.0.0 Bye");
        assert!(client.closed);
    }

    #[test]
    fn pipelined_commands_are_answered_in_order() {
        let mut client = Client::new("192.0.2.7");
        let replies = client.send(
            "EHLO c\r\nMAIL FROM:<a@s.example>\r\nRCPT TO:<taro@local.example>\r\nRCPT TO:<nobody@local.example>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n",
        );
        let codes: Vec<&str> = replies
            .iter()
            .filter(|l| !l.starts_with("250-"))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(codes, ["250", "250", "250", "550", "354", "250", "250"]);
        assert_eq!(client.accepted.len(), 1);
    }

    #[test]
    fn relaying_is_denied_whatever_the_address_tricks() {
        let mut client = Client::new("192.0.2.7");
        client.say("EHLO c");
        client.say("MAIL FROM:<a@s.example>");
        for rcpt in [
            "<x@remote.example>",
            "<x@remote.example.>",
            "<x@REMOTE.example>",
            "<x%remote.example@local.example>",
            "<\"x@remote.example\"@local.example>",
            "<@local.example:x@remote.example>",
            "<x@remote.example@local.example>",
            "<remote.example!x@local.example>",
        ] {
            let reply = client.say(&format!("RCPT TO:{rcpt}"));
            assert!(reply.starts_with('5'), "{rcpt} got {reply}");
        }
        assert_eq!(client.say("DATA"), "554 5.5.1 No valid recipients");
    }

    #[test]
    fn relay_networks_may_relay_and_unknown_local_users_are_refused() {
        let mut client = Client::new("10.1.2.3");
        client.say("HELO c");
        client.say("MAIL FROM:<a@s.example>");
        assert_eq!(client.say("RCPT TO:<x@remote.example>"), "250 2.1.5 Ok");
        assert!(client
            .say("RCPT TO:<nobody@local.example>")
            .starts_with("550 5.1.1"));
        assert_eq!(
            client.say("RCPT TO:<postmaster@local.example>"),
            "250 2.1.5 Ok"
        );
    }

    #[test]
    fn smuggled_end_of_data_never_ends_the_message() {
        for smuggled in ["\n.\r\n", "\r\n.\n", "\n.\n", "\r.\r\n"] {
            let mut client = Client::new("192.0.2.7");
            client.send(
                "EHLO c\r\nMAIL FROM:<a@s.example>\r\nRCPT TO:<taro@local.example>\r\nDATA\r\n",
            );
            let replies = client.send(&format!(
                "Subject: x\r\n\r\nhello{smuggled}MAIL FROM:<evil@s.example>\r\nRCPT TO:<postmaster@local.example>\r\nDATA\r\nevil\r\n.\r\nRSET\r\n"
            ));
            assert_eq!(
                replies,
                [
                    "550 5.5.2 Message refused: bare <CR> or <LF> received",
                    "250 2.0.0 Ok"
                ],
                "{smuggled:?}"
            );
            assert!(client.accepted.is_empty(), "{smuggled:?}");
        }
    }

    #[test]
    fn bdat_chunks_make_one_message_and_are_read_even_when_refused() {
        let mut client = Client::new("192.0.2.7");
        client.say("EHLO c");
        // Refused (no transaction), but the chunk is read, not run as commands.
        assert_eq!(
            client.send("BDAT 6\r\nQUIT\r\n"),
            ["503 5.5.1 Need MAIL and RCPT first"]
        );
        assert!(!client.closed);
        client.say("MAIL FROM:<a@s.example>");
        client.say("RCPT TO:<taro@local.example>");
        assert_eq!(client.send("BDAT 12\r\nSubject: "), Vec::<String>::new());
        assert_eq!(client.send("x\r\n"), ["250 2.0.0 12 octets received"]);
        assert_eq!(
            client.send("BDAT 6 LAST\r\n\r\nhi\r\n"),
            ["250 2.0.0 Ok: queued as 0000000000000001"]
        );
        assert!(String::from_utf8_lossy(&client.accepted[0].message)
            .ends_with("Subject: x\r\n\r\nhi\r\n"));
    }

    #[test]
    fn limits_have_their_reply_codes() {
        let mut client = Client::new("10.1.0.1");
        client.say("EHLO c");
        assert!(client
            .say("MAIL FROM:<a@s.example> SIZE=20000")
            .starts_with("552 5.3.4"));
        client.say("MAIL FROM:<a@s.example>");
        for n in 0..3 {
            assert_eq!(
                client.say(&format!("RCPT TO:<r{n}@remote.example>")),
                "250 2.1.5 Ok"
            );
        }
        assert!(client
            .say("RCPT TO:<r4@remote.example>")
            .starts_with("452 4.5.3"));
        client.say("DATA");
        let body = format!("{}\r\n.\r\n", "a".repeat(20_000));
        assert!(client.send(&body)[0].starts_with("552 5.3.4"));
        assert!(client
            .say(&format!("NOOP {}", "x".repeat(5000)))
            .starts_with("500 5.5.2"));
        // An overlong line sent in pieces is skipped to its end.
        assert!(client.send(&"y".repeat(3000)).is_empty());
        assert_eq!(
            client.send("yyy\r\nNOOP\r\n"),
            ["500 5.5.2 Line too long", "250 2.0.0 Ok"]
        );
    }

    /// Found by the `smtp_session` fuzz target's chunking check: the tail
    /// of an overlong AUTH response that arrived in pieces was read as a
    /// command (here `RSET`), while sent at once it was not.
    #[test]
    fn an_overlong_auth_response_is_skipped_whatever_the_reads() {
        let response = format!("{}RSET\r\n", "x".repeat(COMMAND_LINE_LIMIT + 1));
        let mut at_once = Client::new("127.0.0.1");
        at_once.say("EHLO c");
        assert!(at_once.say("AUTH LOGIN").starts_with("334 "));
        assert_eq!(at_once.send(&response), ["500 5.5.2 Line too long"]);
        assert_eq!(at_once.say("NOOP"), "250 2.0.0 Ok");

        let mut in_pieces = Client::new("127.0.0.1");
        in_pieces.say("EHLO c");
        assert!(in_pieces.say("AUTH LOGIN").starts_with("334 "));
        let (first, rest) = response.split_at(COMMAND_LINE_LIMIT + 1);
        assert!(in_pieces.send(first).is_empty());
        assert_eq!(in_pieces.send(rest), ["500 5.5.2 Line too long"]);
        assert_eq!(in_pieces.say("NOOP"), "250 2.0.0 Ok");
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let mut limited = policy();
        limited.max_errors = 3;
        let mut client = Client::with(limited, "192.0.2.7");
        client.say("EHLO c");
        client.say("FOO");
        client.say("BAR");
        let replies = client.send("BAZ\r\n");
        assert_eq!(
            replies.last().unwrap(),
            "421 4.7.0 mx.local.example Too many errors; closing"
        );
        assert!(client.closed);
    }

    #[test]
    fn other_commands() {
        let mut client = Client::new("192.0.2.7");
        assert!(client
            .say("MAIL FROM:<a@s.example>")
            .starts_with("503 5.5.1"));
        client.say("EHLO c");
        assert!(client.say("VRFY taro").starts_with("252 2.5.0"));
        assert_eq!(client.say("NOOP"), "250 2.0.0 Ok");
        client.say("MAIL FROM:<>");
        assert!(client
            .say("MAIL FROM:<b@s.example>")
            .starts_with("503 5.5.1"));
        assert_eq!(client.say("RSET"), "250 2.0.0 Ok");
        assert_eq!(client.say("MAIL FROM:<b@s.example>"), "250 2.1.0 Ok");
        assert!(client.say("EXPN list").starts_with("502"));
        let mut without_tls = Client::with(
            SessionPolicy {
                tls_available: false,
                ..policy()
            },
            "192.0.2.7",
        );
        without_tls.say("EHLO c");
        assert!(without_tls.say("STARTTLS").starts_with("454 4.7.0"));
    }
}
