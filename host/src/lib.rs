//! mailcall: an email server that delivers mail by calling the destination
//! server over SIP. See `DESIGN.md` for the flow (S1–S8) and the call
//! ladder (T1–T7).
//!
//! - [`config`]: the configuration file.
//! - [`policy`]: step S4, the chain of WebAssembly rules that finds a number.

pub mod config;
pub mod policy;
