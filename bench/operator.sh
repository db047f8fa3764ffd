#!/usr/bin/env bash
# Operator benchmark: JOBS StreamingJobs (default 1000) reconciled by the real controller against
# the scripted API server, in one release-built test process.
#
#   bench/operator.sh [JOBS]
#
# Prints the time until every job is observed with its children (its status written), the
# steady-state requests per job per 15 s observation period and per reconcile (the scripted API
# records every request; open watches are not counted), the CPU the process used and its peak
# RSS. The operator and the scripted API share the process, so CPU and memory are both of
# theirs; the API server's record of every request grows with the run. Not a test: figures
# depend on the machine. Needs no cluster and no broker (Kafka's answers are data).
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${1:-1000}"
case "$jobs" in ''|*[!0-9]*) echo "JOBS must be a number, got '$jobs'" >&2; exit 2 ;; esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
WEIR_BENCH_JOBS="$jobs" cargo test --release -p weir-operator --lib -- \
  --ignored --exact tests::scale::bench_a_thousand_jobs --nocapture 2>&1 \
  | grep -E '^(jobs|time until|CPU|steady|peak)'
