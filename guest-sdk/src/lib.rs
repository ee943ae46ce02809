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
//! The SDK is thin on purpose: the bindings of the contract
//! (`mailcall:rule@0.2.0`), and in [`host`] its imports with plain Rust
//! signatures. The hard parts — folding text, telling human-written headers
//! from trace headers, finding numbers of the plan, searching tables — are
//! the host's helpers, the same for a rule in every language.

pub mod host;

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
    AddressMatch, Decision, Dial, Envelope, FoundNumber, Header, KeyKind, KeywordMatch, LogLevel,
    Mailbox, Message, NumberingPlan, Part, TableEntry,
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

impl KeyKind {
    /// How a reason names this kind of address-table entry.
    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Address => "address",
            KeyKind::Domain => "domain",
            KeyKind::Wildcard => "wildcard",
        }
    }
}
