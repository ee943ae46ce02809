//! SMTP (steps S1 and S6): the protocol pieces shared by the server and the
//! client.
//!
//! - [`data`]: the body of `DATA`, ended only by `<CRLF>.<CRLF>`.

pub mod data;
