//! SMTP (steps S1 and S6): the protocol pieces shared by the server and the
//! client.
//!
//! - [`client`]: the blocking client that relays (S8).
//! - [`data`]: the body of `DATA`, ended only by `<CRLF>.<CRLF>`.
//! - [`reply`]: reply codes and their wire form.
//! - [`session`]: one inbound session, without I/O.

pub mod client;
pub mod data;
pub mod reply;
pub mod session;
