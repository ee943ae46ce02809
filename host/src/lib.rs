//! mailcall: an email server that delivers mail by calling the destination
//! server over SIP. See `DESIGN.md` for the flow (S1–S8) and the call
//! ladder (T1–T7).
//!
//! - [`auth`]: password checks for SMTP AUTH and POP3, bounded in cost and
//!   slowed per client address after failures.
//! - [`config`]: the configuration file.
//! - [`credentials`]: user names and passwords, for SMTP AUTH and POP3.
//! - [`delivery`]: the planner, steps S2–S8 per recipient.
//! - [`history`]: what became of every recipient, for `mailcall history`.
//! - [`mailbox`]: step S3, local Maildir storage.
//! - [`policy`]: step S4, the chain of WebAssembly rules that finds a number.
//! - [`pop3`]: the POP3 server, for reading local mail.
//! - [`private`]: files and folders only their owner may read.
//! - [`queue`]: the durable spool (group-committed journal) under the queue.
//! - [`server`]: `mailcall serve`, listeners and the delivery worker.
//! - [`smtp`]: SMTP protocol pieces: the DATA reader, replies, the session,
//!   the client.
//! - [`storage`]: the durable file operations, real and simulated.
//! - [`tls`]: certificates and TLS settings for STARTTLS and STLS.

pub mod admin;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod history;
pub mod mailbox;
pub mod metrics;
pub mod policy;
pub mod pop3;
pub mod private;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod storage;
pub mod tls;
