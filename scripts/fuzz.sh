#!/usr/bin/env bash
# Fuzzes what Weir reads from outside (job specs, CEL expressions, Kafka records) with
# cargo-fuzz (libFuzzer). CI runs a short pass; run longer by hand:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20 s; targets: all three)
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and
# --sanitizer none needs no nightly-only sanitizer runtime. Debug assertions stay on, so an
# integer overflow is a crash too. An input that runs longer than 10 s or grows the process
# past 2 GiB also counts as a crash (hang, unbounded allocation).
# Seeds are in fuzz/seeds/<target> and token dictionaries in fuzz/dicts/<target>.dict (in
# git); what libFuzzer learns goes to fuzz/corpus/<target> (not in git), and a crash to
# fuzz/artifacts/<target>/crash-*: reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --sanitizer none -a <target> <file>
# Env: WEIR_TOOLS (cargo-fuzz from scripts/install-tools.sh), WEIR_FUZZ_TARGET_DIR (build dir,
#      default fuzz/target).
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-20}"
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(job_spec cel record)
TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"
if [[ -z "${WEIR_CARGO_FUZZ_BIN:-}" && -f "$TOOLS/env.sh" ]]; then
  # shellcheck disable=SC1091
  source "$TOOLS/env.sh"
fi
CARGO_FUZZ="${WEIR_CARGO_FUZZ_BIN:-$(command -v cargo-fuzz || true)}"
[[ -x "$CARGO_FUZZ" ]] || {
  echo "fuzz: cargo-fuzz not found; run scripts/install-tools.sh first" >&2
  exit 1
}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${WEIR_FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
mkdir -p "$CARGO_TARGET_DIR"

# Longest input per target: past each surface's limit, so the limits themselves are fuzzed.
declare -A MAX_LEN=([job_spec]=16384 [cel]=8192 [record]=65536)

if ! "$CARGO_FUZZ" build --fuzz-dir fuzz --sanitizer none --debug-assertions >"$CARGO_TARGET_DIR/fuzz-build.log" 2>&1; then
  tail -40 "$CARGO_TARGET_DIR/fuzz-build.log"
  echo "fuzz: build failed (log: $CARGO_TARGET_DIR/fuzz-build.log)" >&2
  exit 1
fi
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/artifacts/$t/last-run.log"
  dict=""
  [[ -f "fuzz/dicts/$t.dict" ]] && dict="-dict=fuzz/dicts/$t.dict"
  printf '\n==== fuzz %s: %s s ====\n' "$t" "$SECONDS_PER_TARGET"
  if "$CARGO_FUZZ" run --fuzz-dir fuzz --sanitizer none --debug-assertions "$t" \
      "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -max_len="${MAX_LEN[$t]:-4096}" ${dict:+"$dict"} \
      -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -3 "$log"
  else
    status=1
    echo "fuzz $t: FAILED; the input is in fuzz/artifacts/$t/ (log: $log)"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 || tail -30 "$log"
  fi
done
exit "$status"
