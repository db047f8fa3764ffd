#!/usr/bin/env bash
# Drain benchmark: how fast a worker drains a backlog, next to a raw librdkafka consumer.
#
#   bench/drain.sh [RECORDS] [--bootstrap HOST:PORT]
#                  [--job stateless|windowed|event-time|keyed|stateful|exactly-once|
#                         table-join|sql-keyed|event-time-keyed|sql-windowed]
#                  [--bin DIR] [-- WORKER_RUN_FLAGS...]
#
# Without --bootstrap it hosts librdkafka's mock cluster on a loopback port, with enough
# partitions that the backlog fits the mock's per-partition retention (about 5 MiB). It writes
# RECORDS (default 1000000) 100-byte JSON records, drains them once with a raw consumer (assign,
# same fetch settings, counting only) and once with a worker running a job of one kind:
#   stateless     filter + map, nothing kept (the per-record path);
#   windowed      filter + keyBy + a 10 s window count per input partition (no shuffle);
#   event-time    the same window over the records' own time (their Kafka timestamps, a 5 s
#                 watermark delay): tumbling, closed by the watermark;
#   keyed         filter + keyBy + count per batch, keys meeting across partitions (through the
#                 shuffle: two stages);
#   stateful      a running count per page (a state step, its changelog, a Kafka sink at least
#                 once, through the shuffle);
#   exactly-once  the same with the exactly-once Kafka sink (a transaction per partition and
#                 batch); it also prints where its transactions' time went (produce and acks,
#                 the offsets sent to the transaction, EndTxn);
#   table-join    each record joined with its user's row of an 800-row file table (a left
#                 join), then reshaped: next to stateless, what the lookup costs;
#   sql-keyed     `SELECT page, COUNT(*) ... GROUP BY page`: next to keyed, what SQL costs;
#   event-time-keyed  a 10 s event-time window count per page through the shuffle, by hand;
#   sql-windowed  the same as SQL (GROUP BY TUMBLE(_timestamp, ...), page).
# It prints both rates and `ratio=<worker/raw>`, where the worker's rate is the first stage's
# records over its batches' processing time, and `wall_ratio`, from the worker's start until
# every stage has read everything the stage before it wrote: what a user waits for.
# Both processes' peak RSS and CPU seconds are printed too (raw_peak_rss_mib, worker_peak_rss_mib,
# worker_cpu_s). --bin DIR runs weir-worker and weir-bench from DIR instead of building them
# (to compare builds in one session); flags after `--` go to `weir-worker run` (e.g.
# --batch-bytes 16Mi). Not a test: figures depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

records=1000000
bootstrap=""
job=stateless
bin=""
worker_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap) bootstrap="$2"; shift 2 ;;
    --bootstrap=*) bootstrap="${1#*=}"; shift ;;
    --job) job="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --) shift; worker_flags=("$@"); break ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) records="$1"; shift ;;
  esac
done
case "$records" in ''|*[!0-9]*) echo "RECORDS must be a number, got '$records'" >&2; exit 2 ;; esac
case "$job" in stateless|windowed|event-time|keyed|stateful|exactly-once|table-join|sql-keyed|event-time-keyed|sql-windowed) ;; *) echo "--job must be stateless, windowed, event-time, keyed, stateful, exactly-once, table-join, sql-keyed, event-time-keyed or sql-windowed, got '$job'" >&2; exit 2 ;; esac

if [ -z "$bin" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir-target}"
  cargo build --release -q -p weir-worker -p weir-e2e --bins
  bin="$CARGO_TARGET_DIR/release"
fi
for b in weir-worker weir-bench; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing" >&2; exit 2; }
done

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
# The raw consumer's peak RSS and CPU time, from the kernel's accounting of the child.
raw=$(python3 - "$bin/weir-bench" "$bootstrap" "$topic" <<'PY'
import resource, subprocess, sys
out = subprocess.run([sys.argv[1], "raw", "--bootstrap", sys.argv[2], "--topic", sys.argv[3]],
                     check=True, capture_output=True, text=True).stdout.strip()
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{out} raw_cpu_s={r.ru_utime + r.ru_stime:.2f} raw_peak_rss_mib={r.ru_maxrss / 1024:.0f}")
PY
)
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
JOB
case "$job" in
  stateless|table-join|sql-*) ;;
  *) echo '  - {id: by-page, keyBy: "value.page"}' >> "$work/job.yaml" ;;
esac
case "$job" in
  event-time*|sql-windowed) sed -i 's/^pipeline:$/  watermark: {delay: 5s}\npipeline:/' "$work/job.yaml" ;;
esac
case "$job" in
  stateless) printf '%s\n' "  - {id: page, map: \"{'page': value.page}\"}" 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  windowed) printf '%s\n' '  - {id: views, perPartition: true, window: {length: 10s}, aggregate: {count: {}}}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  event-time)
    printf '%s\n' '  - {id: views, perPartition: true, window: {time: event, length: 10s}, aggregate: {count: {}}}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  # The same count per page and 10 s of the records' own time, through the shuffle: by hand,
  # and as SQL (which compiles to these steps and a select).
  event-time-keyed) printf '%s\n' '  - {id: views, window: {time: event, length: 10s}, aggregate: {count: {}}}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  sql-windowed) printf '%s\n' "  - {id: views, sql: \"SELECT page, window_start, COUNT(*) AS views FROM input GROUP BY TUMBLE(_timestamp, INTERVAL '10' SECOND), page\"}" 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  sql-keyed) printf '%s\n' '  - {id: views, sql: "SELECT page, COUNT(*) AS views FROM input GROUP BY page"}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  # Each record joined with its user's row of an 800-row table (users u0..u799 of 1000), left.
  table-join)
    python3 -c 'import json; print(json.dumps({f"u{i}": {"plan": ["free", "pro", "team"][i % 3]} for i in range(800)}))' > "$work/users.json"
    printf '%s\n' "  - {id: with-user, join: {table: {file: $work/users.json}, on: value.user, kind: left}}" "  - {id: page, select: {page: value.page, plan: \"table == null ? 'none' : table.plan\"}}" 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  keyed) printf '%s\n' '  - {id: views, aggregate: {count: {}}}' 'sink: {stdout: {limit: 0}}' >> "$work/job.yaml" ;;
  stateful) printf '%s\n' "  - {id: views, state: {initial: '0', update: 'state + size(values)'}}" "sink: {kafka: {topic: $topic-out}}" >> "$work/job.yaml" ;;
  exactly-once) printf '%s\n' "  - {id: views, state: {initial: '0', update: 'state + size(values)'}}" "sink: {kafka: {topic: $topic-out, delivery: exactlyOnce}}" >> "$work/job.yaml" ;;
esac
echo "job: $job ${worker_flags[*]}"
# The worker runs as the child of the poller, so that its peak RSS is known even when it fails.
# JSON logs, with the exactly-once sink's per-batch split of its transactions' time (debug).
WEIR_LOG="info,weir_worker::sink=debug" WEIR_LOG_FORMAT=json \
python3 - "$port" "$raw" "$work/worker.err" "$bin/weir-worker" run "$work/job.yaml" \
  --http-addr "127.0.0.1:$port" "${worker_flags[@]}" <<'PY'
import json, os, resource, subprocess, sys, time, urllib.request
port, raw, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
raw_fields = dict(kv.split("=") for kv in raw.split())
raw_rate = float(raw_fields["raw_rate"])
# What the log holds (the mock's retention may have dropped the oldest records of a partition).
records = int(raw_fields["raw_records"])
with open(log, "w") as err:
    started = time.time()
    worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def drained(snap):
    """The first stage read the whole backlog and each later stage what the one before wrote."""
    if snap["recordsIn"] < records:
        return False
    wrote = snap["recordsOut"]
    for stage in snap.get("stages", []):
        if stage["recordsIn"] < wrote:
            return False
        wrote = stage["recordsOut"]
    return True


deadline = time.time() + 1800
while True:
    if worker.poll() is not None:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"worker_exit={worker.returncode} worker_peak_rss_mib={r.ru_maxrss / 1024:.0f} worker_cpu_s={r.ru_utime + r.ru_stime:.2f}")
        with open(log) as f:
            print("".join(f.readlines()[-3:]), end="")
        sys.exit("the worker stopped before it drained the backlog")
    try:
        snap = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/progress?last=100", timeout=5))
    except Exception:
        snap = None
    if snap and drained(snap):
        wall = time.time() - started
        break
    if time.time() > deadline:
        worker.kill()
        sys.exit("worker did not drain the backlog in 30 minutes")
    time.sleep(0.05)
busy = [b for b in snap["batches"] if b["recordsIn"] > 0]
seconds = sum(b["processingMs"] for b in busy) / 1000.0
rate = snap["recordsIn"] / seconds
print(f"worker_records={snap['recordsIn']} worker_batches={len(busy)} worker_seconds={seconds:.3f} worker_rate={rate:.0f}")
print(f"worker_stages={1 + len(snap.get('stages', []))} worker_wall_s={wall:.2f} wall_rate={snap['recordsIn'] / wall:.0f} wall_ratio={snap['recordsIn'] / wall / raw_rate:.2f}")
# Peak RSS (VmHWM) and CPU seconds of the worker so far, from /proc.
with open(f"/proc/{worker.pid}/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
with open(f"/proc/{worker.pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
print(f"worker_peak_rss_mib={hwm / 1024:.0f} worker_cpu_s={cpu:.2f} worker_cpu_s_per_million={cpu / snap['recordsIn'] * 1e6:.2f}")
if "inFlight" in snap:
    f = snap["inFlight"]
    print(f"budget_bytes={f['budget']['bytes']} budget_records={f['budget']['records']} peak_batch_bytes={f['peakBytes']} peak_batch_records={f['peakRecords']}")
# The exactly-once sink's debug line per batch: where its transactions' time went.
split = {"produce_ms": 0, "acks_ms": 0, "offsets_ms": 0, "end_txn_ms": 0, "write_ms": 0}
txns = 0
with open(log) as f:
    for line in f:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        fields = e.get("fields", {})
        if "end_txn_ms" in fields:
            txns += fields.get("transactions", 0)
            for k in split:
                split[k] += fields.get(k, 0)
if txns:
    # write: the sinks' wall time; produce: queuing the records (one thread); acks, offsets
    # (send_offsets_to_transaction) and EndTxn: summed over transactions that run side by side.
    s = {k: v / 1000 for k, v in split.items()}
    print(f"eos_transactions={txns} eos_write_s={s['write_ms']:.2f} eos_produce_s={s['produce_ms']:.2f} "
          f"eos_acks_s={s['acks_ms']:.2f} eos_offsets_s={s['offsets_ms']:.2f} eos_end_txn_s={s['end_txn_ms']:.2f} "
          f"per_txn_ms: acks={split['acks_ms'] / txns:.1f} offsets={split['offsets_ms'] / txns:.1f} end_txn={split['end_txn_ms'] / txns:.1f}")
print(f"ratio={rate / raw_rate:.2f}")
worker.terminate()
worker.wait(timeout=60)
PY
