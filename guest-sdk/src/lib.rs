//! Write mailcall routing rules in Rust.
//!
//! A rule is a type that implements [`Rule`] and is exported with
//! [`export_rule!`]; build it for `wasm32-wasip2` as a `cdylib`:
//!
//! ```ignore
//! use mailcall_guest_sdk::{export_rule, Decision, Envelope, Message, Rule};
//!
//! struct Always;
//!
//! impl Rule for Always {
//!     fn resolve(_envelope: Envelope, _message: Message) -> Decision {
//!         Decision::UseSmtp("this rule never calls".into())
//!     }
//! }
//!
//! export_rule!(Always);
//! ```
//!
//! Besides the bindings, the SDK carries the logic the stock rules share:
//! [`number`] finds and normalizes phone numbers of the numbering plan,
//! [`text`] folds and searches text, [`address`] splits addresses and lists
//! the keys of a domain look-up, [`headers`] tells human-written headers from
//! trace headers, and [`embedded`] is the whole search of the
//! `embedded-number` rule (so it can also run natively, in benchmarks).

pub mod address;
pub mod embedded;
pub mod headers;
pub mod host;
pub mod number;
pub mod text;

/// The bindings generated from `wit/rule.wit`.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rule",
        pub_export_macro: true,
        export_macro_name: "export_rule",
        default_bindings_module: "mailcall_guest_sdk::bindings",
    });
}

pub use bindings::export_rule;
pub use bindings::mailcall::rule::types::{
    Decision, Dial, Envelope, Header, LogLevel, Mailbox, Message, NumberingPlan, TableEntry,
};
/// The trait a rule implements: one `resolve` function per recipient.
pub use bindings::Guest as Rule;

impl Decision {
    /// A decision to call `number` (digits only) for `reason`.
    pub fn dial(number: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision::Dial(Dial {
            number: number.into(),
            reason: reason.into(),
        })
    }
}
