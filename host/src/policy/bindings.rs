//! The host side of the rule contract, generated from `wit/rule.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule",
});
