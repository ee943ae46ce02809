//! The host side of the rule contract, generated from `wit/rule.wit`. The
//! values also serialize, so a decision record can keep the input a rule saw
//! and `rules replay` can feed it to another module.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
    additional_derives: [serde::Serialize, serde::Deserialize],
});
