#!/usr/bin/env bash
# The whole test suite, in one command (the README's second command; .ci/run calls exactly this):
# tools, the shell checks (shellcheck over every script, e2e/kind.sh's plan), formatting,
# lints, every cargo test in the workspace, a short fuzz pass, then the offline chart checks.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
export WEIR_TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"

section() { printf '\n==== %s ====\n' "$*"; }
started=$SECONDS

section "tools (scripts/install-tools.sh)"
bash scripts/install-tools.sh
# WEIR_HELM_BIN, WEIR_KUBECTL_BIN, WEIR_KUBE_VALIDATE_BIN, WEIR_TANSU_BIN, WEIR_PG_BIN,
# WEIR_PROMTOOL_BIN, WEIR_PROMETHEUS_BIN, WEIR_SHELLCHECK_BIN for the tests.
# shellcheck disable=SC1091
source "$WEIR_TOOLS/env.sh"

section "scripts/check-shell.sh (shellcheck, e2e/kind.sh's plan; seconds, before any build)"
bash scripts/check-shell.sh

section "scripts/module-cycles.py (no import circle between the modules of any crate)"
# Each crate's top-level modules, and the submodules of each module directory: a new circle
# fails the suite.
python3 scripts/module-cycles.py contract/src contract/src/*/ worker/src worker/src/*/ testkit/src \
  operator/src operator/src/*/

section "toolchain"
cargo --version
rustc --version

section "cargo fmt --all -- --check"
cargo fmt --all -- --check

section "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo test --workspace --all-targets"
# The operator's tests start its binary (the live-Prometheus test), which `cargo test` does
# not build for a crate without integration tests.
cargo build -p weir-operator --bin weir-operator
# --all-targets: every unit and integration test, without doc-tests (there are none to run).
cargo test --workspace --all-targets 2>&1 | tee "$CARGO_TARGET_DIR/weir-test.log"
test_summary=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }' "$CARGO_TARGET_DIR/weir-test.log")

section "scripts/fuzz.sh 20 (a short pass over each fuzz target; longer runs by hand)"
# Its own build dir (instrumented, release), kept between runs like the main one.
WEIR_FUZZ_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" bash scripts/fuzz.sh 20

section "scripts/check-chart.sh"
bash scripts/check-chart.sh

section "all tests passed ($((SECONDS - started)) s)"
echo "tests: $test_summary"
