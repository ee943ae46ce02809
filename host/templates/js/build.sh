#!/usr/bin/env bash
# Builds {{name}}.wasm with componentize-js (from the npm registry; set
# COMPONENTIZE_JS to use an installed one).
set -euo pipefail
cd "$(dirname "$0")"
componentize_js=${COMPONENTIZE_JS:-"npx --yes -p @bytecodealliance/componentize-js@0.23.0 componentize-js"}
$componentize_js rule.js --wit wit --world-name rule -o {{name}}.wasm
