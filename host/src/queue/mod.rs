//! The durable queue (step S1's promise: nothing accepted is lost).
//!
//! - [`schedule`]: when to retry a deferred recipient, and when to give up.
//! - [`spool`]: an append-only journal of accepted messages and of what
//!   happened to each recipient, fsynced with group commit before the
//!   client hears `250`, replayed on start.

pub mod schedule;
pub mod spool;
