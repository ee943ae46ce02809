//! Local mailboxes (step S3): one Maildir per user.
//!
//! - [`maildir`]: durable delivery into a Maildir, and reading it back for
//!   POP3.

pub mod maildir;
