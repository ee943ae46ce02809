//! The durable queue (step S1's promise: nothing accepted is lost).
//!
//! - [`action`]: the operator's hold, release, retry, delete and bounce.
//! - [`bounce`]: RFC 3464 reports to the sender of failed recipients.
//! - [`schedule`]: when to retry a deferred recipient, and when to give up.
//! - [`spool`]: an append-only journal of accepted messages and of what
//!   happened to each recipient, fsynced with group commit before the
//!   client hears `250`, replayed on start.

pub mod action;
pub mod bounce;
pub mod schedule;
pub mod spool;
