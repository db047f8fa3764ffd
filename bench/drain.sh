#!/usr/bin/env bash
# Drain benchmark: how fast a worker drains a backlog, next to a raw librdkafka consumer.
#
#   bench/drain.sh [RECORDS] [--bootstrap HOST:PORT] [--job stateless|stateful|exactly-once]
#
# Without --bootstrap it hosts librdkafka's mock cluster on a loopback port, with enough
# partitions that the backlog fits the mock's per-partition retention (about 5 MiB). It writes
# RECORDS (default 1000000) 100-byte JSON records, drains them once with a raw consumer (assign,
# same fetch settings, counting only) and once with a worker running filter + keyBy + count (which
# since keys meet across partitions runs through the shuffle: the rate is its first stage's), and
# prints both rates and `ratio=<worker/raw>`. --job stateful runs a running count per page (a
# state step, its changelog, a Kafka sink at least once); --job exactly-once the same with the
# exactly-once Kafka sink (a transaction per partition and batch). Not a test: figures depend
# on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

records=1000000
bootstrap=""
job=stateless
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap) bootstrap="$2"; shift 2 ;;
    --bootstrap=*) bootstrap="${1#*=}"; shift ;;
    --job) job="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) records="$1"; shift ;;
  esac
done
case "$records" in ''|*[!0-9]*) echo "RECORDS must be a number, got '$records'" >&2; exit 2 ;; esac
case "$job" in stateless|stateful|exactly-once) ;; *) echo "--job must be stateless, stateful or exactly-once, got '$job'" >&2; exit 2 ;; esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
cargo build --release -q -p weir-worker -p weir-e2e --bins
bin="$CARGO_TARGET_DIR/release"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

topic="weir-drain-$$"
partitions=$(( (records + 24999) / 25000 )); [ "$partitions" -lt 8 ] && partitions=8
if [ -z "$bootstrap" ]; then
  mkfifo "$work/hold"
  # The mock cluster cannot create topics on request: every topic the job uses is made here,
  # among them the shuffle the worker puts before the keyed step (`views`, after a keyBy) and
  # that stage's changelog.
  "$bin/weir-worker" mock-kafka --topic "$topic:$partitions" --topic "$topic-out:$partitions" \
    --topic "weir-bench-$$-changelog:$partitions" --topic "job-views-repartition:$partitions" \
    --topic "weir-bench-$$-views-changelog:$partitions" < "$work/hold" > "$work/mock.out" 2>"$work/mock.err" &
  pids+=($!)
  exec 9>"$work/hold"   # keeps the mock's stdin open until this script exits
  for _ in $(seq 100); do grep -q bootstrap "$work/mock.out" 2>/dev/null && break; sleep 0.1; done
  bootstrap=$(sed -n 's/^bootstrap.servers=//p' "$work/mock.out")
  echo "mock cluster at $bootstrap, topic $topic with $partitions partitions"
else
  echo "using Kafka at $bootstrap, topic $topic (auto-created with the broker's default partitions)"
fi

"$bin/weir-bench" produce --bootstrap "$bootstrap" --topic "$topic" --records "$records"
raw=$("$bin/weir-bench" raw --bootstrap "$bootstrap" --topic "$topic")
echo "$raw"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/job.yaml" <<JOB
batchInterval: 1s
source:
  kafka:
    bootstrapServers: "$bootstrap"
    topics: [$topic]
    startingOffsets: earliest
    groupId: weir-bench-$$
pipeline:
  - {id: valid, filter: "has(value.page) && value.page != ''"}
  - {id: by-page, keyBy: "value.page"}
JOB
case "$job" in
  stateless) printf '%s\n' '  - {id: views, aggregate: {count: {}}}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  stateful) printf '%s\n' "  - {id: views, state: {initial: '0', update: 'state + size(values)'}}" "sink: {kafka: {topic: $topic-out}}" >> "$work/job.yaml" ;;
  exactly-once) printf '%s\n' "  - {id: views, state: {initial: '0', update: 'state + size(values)'}}" "sink: {kafka: {topic: $topic-out, delivery: exactlyOnce}}" >> "$work/job.yaml" ;;
esac
echo "job: $job"
"$bin/weir-worker" run "$work/job.yaml" --http-addr "127.0.0.1:$port" > /dev/null 2>"$work/worker.err" &
pids+=($!)
python3 - "$port" "$records" "$raw" <<'PY'
import json, sys, time, urllib.request
port, records, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3]
raw_rate = float(dict(kv.split("=") for kv in raw.split())["raw_rate"])
deadline = time.time() + 1800
while True:
    try:
        snap = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/progress?last=100", timeout=5))
    except Exception:
        snap = None
    if snap and snap["recordsIn"] >= records:
        break
    if time.time() > deadline:
        sys.exit("worker did not drain the backlog in 30 minutes")
    time.sleep(0.05)
busy = [b for b in snap["batches"] if b["recordsIn"] > 0]
seconds = sum(b["processingMs"] for b in busy) / 1000.0
rate = snap["recordsIn"] / seconds
print(f"worker_records={snap['recordsIn']} worker_batches={len(busy)} worker_seconds={seconds:.3f} worker_rate={rate:.0f}")
print(f"ratio={rate / raw_rate:.2f}")
PY
