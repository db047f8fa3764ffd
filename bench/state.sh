#!/usr/bin/env bash
# Keyed state at a million keys: update rate, memory per key, changelog bytes, restore rate.
# Usage: bench/state.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
cargo bench -p weir-worker --bench state 2>/dev/null
