//! The host side of the rule contract, generated from `wit/rule.wit`
//! (`mailcall:rule@0.2.0`) and from the frozen `wit/frozen/0.1.0/rule.wit`,
//! which rules built before 0.2.0 implement. The values also serialize, so a
//! decision record can keep the input a rule saw and `rules replay` can feed
//! it to another module.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

/// The 0.1.0 world. Its `types` are those of 0.2.0 (0.2.0 only added to
/// them), so a rule of either version is given the same envelope and message
/// and answers with the same decision; its imports are the 0.2.0 ones minus
/// the helpers.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/frozen/0.1.0",
        world: "rule",
        with: {
            "mailcall:rule/types": super::mailcall::rule::types,
        },
    });
}

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

/// A version of the rule contract a component can be built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    V0_1,
    V0_2,
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContractVersion::V0_1 => "0.1.0",
            ContractVersion::V0_2 => "0.2.0",
        })
    }
}

impl ContractVersion {
    /// The version `component` imports the contract's interfaces of; a
    /// rule that imports none of them (it only exports `resolve`) links
    /// against the newest.
    pub fn of(component: &Component, engine: &Engine) -> ContractVersion {
        let imports_v0_1 = component
            .component_type()
            .imports(engine)
            .any(|(name, _)| name.starts_with("mailcall:rule/") && name.ends_with("@0.1.0"));
        if imports_v0_1 {
            ContractVersion::V0_1
        } else {
            ContractVersion::V0_2
        }
    }
}

/// Adds every version's imports to `linker`, implemented by the same host
/// state.
pub fn add_to_linker<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: mailcall::rule::types::Host
        + mailcall::rule::tables::Host
        + mailcall::rule::numbering::Host
        + mailcall::rule::numbers::Host
        + mailcall::rule::text::Host
        + mailcall::rule::config::Host
        + mailcall::rule::log::Host
        + v0_1::mailcall::rule::tables::Host
        + v0_1::mailcall::rule::numbering::Host
        + v0_1::mailcall::rule::config::Host
        + v0_1::mailcall::rule::log::Host
        + 'static,
{
    Rule::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    // 0.1.0's `types` has no functions: an empty instance of that name
    // satisfies the import, and its types are checked structurally.
    linker.instance("mailcall:rule/types@0.1.0")?;
    v0_1::mailcall::rule::tables::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_1::mailcall::rule::numbering::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_1::mailcall::rule::config::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_1::mailcall::rule::log::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    Ok(())
}

/// A rule linked against the contract version it was built for, ready to
/// instantiate.
pub enum LinkedRule<T: 'static> {
    V0_1(v0_1::RulePre<T>),
    V0_2(RulePre<T>),
}

impl<T: 'static> LinkedRule<T> {
    /// Links `component` with `linker` as the rule world of its version.
    pub fn new(
        linker: &Linker<T>,
        component: &Component,
        engine: &Engine,
    ) -> wasmtime::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        Ok(match ContractVersion::of(component, engine) {
            ContractVersion::V0_1 => LinkedRule::V0_1(v0_1::RulePre::new(pre)?),
            ContractVersion::V0_2 => LinkedRule::V0_2(RulePre::new(pre)?),
        })
    }

    /// The contract version the rule was built against.
    pub fn contract(&self) -> ContractVersion {
        match self {
            LinkedRule::V0_1(_) => ContractVersion::V0_1,
            LinkedRule::V0_2(_) => ContractVersion::V0_2,
        }
    }

    pub fn instantiate(&self, store: &mut Store<T>) -> wasmtime::Result<RuleInstance> {
        Ok(match self {
            LinkedRule::V0_1(pre) => RuleInstance::V0_1(pre.instantiate(store)?),
            LinkedRule::V0_2(pre) => RuleInstance::V0_2(pre.instantiate(store)?),
        })
    }
}

/// An instance of a rule, of either contract version.
pub enum RuleInstance {
    V0_1(v0_1::Rule),
    V0_2(Rule),
}

impl RuleInstance {
    pub fn call_resolve<T: 'static>(
        &self,
        store: &mut Store<T>,
        envelope: &Envelope,
        message: &Message,
    ) -> wasmtime::Result<Decision> {
        match self {
            RuleInstance::V0_1(rule) => rule.call_resolve(store, envelope, message),
            RuleInstance::V0_2(rule) => rule.call_resolve(store, envelope, message),
        }
    }
}
