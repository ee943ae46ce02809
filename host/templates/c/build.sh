#!/usr/bin/env bash
# Builds {{name}}.wasm from rule.c: wit-bindgen generates the C bindings of
# wit/rule.wit into bindings/, clang compiles for wasm32-wasi (wasi-libc) as
# a reactor, and wasm-tools makes a component with the WASI preview-1
# reactor adapter. Needs (mailcall's scripts/setup installs them): clang,
# lld and wasi-libc (Debian: apt-get install clang lld wasi-libc), and
# under ~/.cache/mailcall-tools/c: wit-bindgen 0.63.0 and wasm-tools
# (cargo install wit-bindgen-cli wasm-tools) and
# wasi_snapshot_preview1.reactor.wasm (from the crate
# wasi-preview1-component-adapter-provider). Set WASI_CC, WASI_SYSROOT,
# WIT_BINDGEN, WASM_TOOLS or WASI_ADAPTER to use others.
set -euo pipefail
cd "$(dirname "$0")"
tools=${MAILCALL_TOOLS:-$HOME/.cache/mailcall-tools}
wit_bindgen=${WIT_BINDGEN:-$tools/c/bin/wit-bindgen}
wasm_tools=${WASM_TOOLS:-$tools/c/bin/wasm-tools}
adapter=${WASI_ADAPTER:-$tools/c/wasi_snapshot_preview1.reactor.wasm}
cc=${WASI_CC:-clang}
sysroot=()
if [[ -n "${WASI_SYSROOT:-}" ]]; then sysroot=("--sysroot=$WASI_SYSROOT"); fi

"$wit_bindgen" c wit --world rule --out-dir bindings > /dev/null
$cc --target=wasm32-wasi -mexec-model=reactor -Os -Wl,--strip-all -Wall "${sysroot[@]}" -I bindings \
    -o {{name}}.module.wasm rule.c bindings/rule.c bindings/rule_component_type.o
"$wasm_tools" component new {{name}}.module.wasm \
    --adapt "wasi_snapshot_preview1=$adapter" -o {{name}}.wasm
rm {{name}}.module.wasm
echo "built {{name}}.wasm"
