#!/usr/bin/env bash
# Checks of the repository's shell scripts; no cluster, Docker, kind or Rust build needed:
#   1. shellcheck over every shell script git knows: *.sh, and any file whose first line runs
#      sh or bash (.ci/run);
#   2. e2e/kind.sh --dry-run, for kind and for an existing cluster, with a PATH holding only
#      bash, dirname and sed (no kind, docker, kubectl, helm or cargo): exit 0, every step of
#      the mode in order, the helm install with the chart and the images given, the examples
#      applied to the suite's Kafka, nothing of kind or docker against an existing cluster;
#   3. --step picks steps (kept in the suite's order), and bad flags exit 2 saying what to do;
#   4. e2e/kind.sh run for real (not a dry run) against an existing "cluster" of stub kubectl
#      and helm that record their calls: it passes, prints the same plan as the dry run, and
#      each kubectl and helm command it prints is a call the stubs received, in that order;
#      a failed check exits 1 and says which, and so does a failed command.
# Usage: scripts/check-shell.sh
# Tools: shellcheck (WEIR_SHELLCHECK_BIN or on PATH; scripts/install-tools.sh installs it).
set -Eeuo pipefail

cd "$(dirname "$0")/.."
TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"
if [[ -z "${WEIR_SHELLCHECK_BIN:-}" && -f "$TOOLS/env.sh" ]]; then
  # shellcheck disable=SC1091
  source "$TOOLS/env.sh"
fi
SHELLCHECK="${WEIR_SHELLCHECK_BIN:-$(command -v shellcheck || true)}"
[[ -x "$SHELLCHECK" ]] || {
  echo "check-shell: shellcheck not found; run scripts/install-tools.sh first (or apt-get install shellcheck)" >&2
  exit 1
}

failures=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
section() { printf '\n== check-shell: %s\n' "$*"; }
indent() { sed 's/^/          /'; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# A check must fail by saying so, never by set -e ending the script quietly.
trap 'echo "check-shell: stopped by a failing command at line $LINENO" >&2' ERR

# --- 1. shellcheck ------------------------------------------------------------------------------
section "shellcheck ($("$SHELLCHECK" --version | sed -n 's/^version: //p'))"
scripts=()
while IFS= read -r -d '' f; do
  [[ -f "$f" ]] || continue
  if [[ "$f" == *.sh ]] || head -n 1 "$f" | grep -qE '^#!.*[/ ](ba)?sh( |$)'; then scripts+=("$f"); fi
done < <(git ls-files -z)
if [[ ${#scripts[@]} -eq 0 ]]; then
  fail "no shell scripts found (git ls-files)"
elif "$SHELLCHECK" "${scripts[@]}" >"$tmp/shellcheck.log" 2>&1; then
  pass "shellcheck: ${#scripts[@]} scripts clean: ${scripts[*]}"
else
  fail "shellcheck:"; indent <"$tmp/shellcheck.log"
fi

# --- 2. the dry-run plan -------------------------------------------------------------------------
# A PATH with only what the dry run needs: it must run without kind, docker, kubectl, helm, cargo.
mkdir -p "$tmp/bin"
for t in dirname sed; do ln -s "$(command -v "$t")" "$tmp/bin/$t"; done
BASH_BIN="$BASH"
for t in kind docker kubectl helm cargo; do
  if PATH="$tmp/bin" command -v "$t" >/dev/null; then fail "the restricted PATH has $t"; fi
done

# plan NAME ARGS...: runs e2e/kind.sh --dry-run ARGS with the restricted PATH into $tmp/NAME.
plan() {
  local name="$1"; shift
  local rc=0
  env -i PATH="$tmp/bin" HOME="$tmp" KUBECONFIG="$tmp/no-such-kubeconfig" \
    "$BASH_BIN" e2e/kind.sh --dry-run "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
  if [[ $rc -eq 0 ]]; then
    pass "$name: e2e/kind.sh --dry-run $*: exit 0 with PATH=bash,dirname,sed only"
  else
    fail "$name: e2e/kind.sh --dry-run $*: exit $rc"; indent <"$tmp/$name.err"
  fi
}
# steps_of NAME: the steps the plan shows, in order, on one line.
steps_of() { sed -n 's/^==== step \([a-z-]*\):.*/\1/p' "$tmp/$1.out" | tr '\n' ' ' | sed 's/ $//'; }
has() { grep -qF -- "$2" "$tmp/$1.out"; }
expect_line() {
  local name="$1" desc="$2" line="$3"
  if grep -qxF -- "$line" "$tmp/$name.out"; then pass "$name: $desc"; else fail "$name: $desc: no line"; printf '%s\n' "$line" | indent; fi
}
expect_steps() {
  local name="$1" want="$2" got
  got="$(steps_of "$name")"
  if [[ "$got" == "$want" ]]; then pass "$name: steps in order: $got"; else fail "$name: steps '$got', want '$want'"; fi
}
examples_applied() {
  local name="$1" ctx="$2" ns="$3" f
  for f in examples/*.yaml; do
    expect_line "$name" "$f applied to kafka.$ns.svc:9092" \
      "+ sed 's/bootstrapServers: kafka:9092/bootstrapServers: kafka.$ns.svc:9092/' $f | kubectl $ctx-n $ns apply -f -"
  done
}
# Every step after the one before it: helm installs before the jobs are applied, and so on.
in_order() {
  local name="$1"; shift
  local last=0 n pattern
  for pattern in "$@"; do
    n="$(grep -nF -- "$pattern" "$tmp/$name.out" | head -n 1 | cut -d: -f1 || true)"
    if [[ -z "$n" || "$n" -le "$last" ]]; then fail "$name: '$pattern' not after the line before it"; return; fi
    last="$n"
  done
  pass "$name: cluster, images, Kafka, chart, jobs, checks, uninstall in that order"
}

version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/weir/Chart.yaml)"

section "e2e/kind.sh --dry-run: kind"
plan kind
expect_steps kind "cluster images load kafka chart jobs ready restart suspend exactly-once uninstall delete-cluster"
ctx="--context kind-weir-e2e "
expect_line kind "kind cluster created unless it exists" \
  "+ kind get clusters | grep -qx weir-e2e || kind create cluster --name weir-e2e --wait 120s --config - <<'YAML'"
expect_line kind "operator image built" "+ docker build --target operator -t ghcr.io/weir-dev/weir-operator:$version ."
expect_line kind "worker image built" "+ docker build --target worker -t ghcr.io/weir-dev/weir-worker:$version ."
expect_line kind "images loaded into kind" \
  "+ kind load docker-image --name weir-e2e ghcr.io/weir-dev/weir-operator:$version ghcr.io/weir-dev/weir-worker:$version"
expect_line kind "helm installs charts/weir with the built images, on the kind context" \
  "+ helm --kube-context kind-weir-e2e upgrade --install weir charts/weir -n weir-system --create-namespace --set 'watchNamespaces={weir-e2e}' --set image.repository=ghcr.io/weir-dev/weir-operator --set image.tag=$version --set workerImage.repository=ghcr.io/weir-dev/weir-worker --set workerImage.tag=$version --wait --timeout 300s"
examples_applied kind "$ctx" weir-e2e
expect_line kind "Kafka's external listener a NodePort" "  ports: [{port: 9094, targetPort: 9094, nodePort: 30092}]"
expect_line kind "the kill test against the NodePort" \
  "+ bash e2e/chaos.sh --sink kafka --records 1000000 --kills 20 --bootstrap localhost:30092 | tail -1   # must print: lost=0 duplicated=0 state_equal=true"
expect_line kind "the cluster deleted last" "+ kind delete cluster --name weir-e2e"
if grep '^+ kubectl' "$tmp/kind.out" | grep -qv -- "^+ kubectl --context kind-weir-e2e "; then
  fail "kind: a kubectl command without --context kind-weir-e2e"
else
  pass "kind: every kubectl command names the kind context"
fi
in_order kind "+ kind get clusters" "+ docker build --target operator" "+ kind load docker-image" \
  "apply -f - <<'YAML'" "+ helm --kube-context kind-weir-e2e upgrade --install" "examples/word-count.yaml" \
  "wait --for=condition=Ready sj --all" "delete pod word-count-0" "suspend\":true" "+ bash e2e/chaos.sh" \
  "delete sj --all" "+ helm --kube-context kind-weir-e2e uninstall" "+ kind delete cluster"
if has kind "dry run: nothing was run"; then pass "kind: says nothing was run"; else fail "kind: no 'nothing was run'"; fi

section "e2e/kind.sh --dry-run: existing cluster, images pushed by the user"
plan existing --cluster existing --image-registry registry.example:5000/team --tag e2e-1 \
  --namespace e2e-x --helm-set 'imagePullSecrets[0].name=regcred' --records 5000 --kills 3
expect_steps existing "cluster kafka chart jobs ready restart suspend exactly-once uninstall"
expect_line existing "says which cluster" "cluster: the current context of KUBECONFIG=$tmp/no-such-kubeconfig"
expect_line existing "checks the cluster answers" "+ kubectl version"
expect_line existing "helm installs charts/weir with the images given, in the namespace given" \
  "+ helm upgrade --install weir charts/weir -n weir-system --create-namespace --set 'watchNamespaces={e2e-x}' --set image.repository=registry.example:5000/team/weir-operator --set image.tag=e2e-1 --set workerImage.repository=registry.example:5000/team/weir-worker --set workerImage.tag=e2e-1 --set 'imagePullSecrets[0].name=regcred' --wait --timeout 300s"
examples_applied existing "" e2e-x
expect_line existing "Kafka advertised in the namespace given" \
  "            - {name: KAFKA_ADVERTISED_LISTENERS, value: \"PLAINTEXT://kafka.e2e-x.svc:9092,EXTERNAL://localhost:30092\"}"
expect_line existing "the kill test through a port-forward" "+ kubectl -n e2e-x port-forward svc/kafka-external 30092:9094 >/dev/null &"
expect_line existing "with the records and kills given" \
  "+ bash e2e/chaos.sh --sink kafka --records 5000 --kills 3 --bootstrap localhost:30092 | tail -1   # must print: lost=0 duplicated=0 state_equal=true"
if grep -qE '^\+ .*(^|[ |(])(kind|docker) ' "$tmp/existing.out" || has existing "nodePort"; then
  fail "existing: the plan uses kind, docker or a NodePort"
else
  pass "existing: no kind, no docker, no NodePort"
fi
in_order existing "+ kubectl version" "apply -f - <<'YAML'" "+ helm upgrade --install" "examples/word-count.yaml" \
  "wait --for=condition=Ready sj --all" "delete pod word-count-0" "suspend\":true" "+ bash e2e/chaos.sh" \
  "delete sj --all" "+ helm uninstall" "delete crd streamingjobs.weir.dev"

section "e2e/kind.sh: --step, --keep, --operator-image/--worker-image"
plan picked --cluster existing --step jobs --step chart,uninstall
expect_steps picked "chart jobs uninstall"
plan reversed --step delete-cluster,uninstall,exactly-once,suspend,restart,ready,jobs,chart,kafka,load,images,cluster
expect_steps reversed "cluster images load kafka chart jobs ready restart suspend exactly-once uninstall delete-cluster"
plan kept --keep
expect_steps kept "cluster images load kafka chart jobs ready restart suspend exactly-once"
plan refs --no-kind --operator-image localhost:5000/op:1 --worker-image localhost:5000/a/wk:2 --step images,push,chart
expect_steps refs "images push chart"
expect_line refs "images given whole, split into repository and tag for the chart" \
  "+ helm upgrade --install weir charts/weir -n weir-system --create-namespace --set 'watchNamespaces={weir-e2e}' --set image.repository=localhost:5000/op --set image.tag=1 --set workerImage.repository=localhost:5000/a/wk --set workerImage.tag=2 --wait --timeout 300s"
expect_line refs "pushed as given" "+ docker push localhost:5000/a/wk:2"

section "e2e/kind.sh: bad flags exit 2 and say what to do"
bad_flags=(
  "--frob|unknown flag '--frob'"
  "--cluster weir|--cluster takes kind or existing"
  "--cluster|--cluster needs a value"
  "--tag --keep|--tag needs a value"
  "--step bogus|unknown step 'bogus'"
  "--cluster existing --step load|step load needs kind"
  "--step push|step push is for --cluster existing"
  "--operator-image localhost:5000/op|needs a tag"
  "--records lots|take a whole number"
  "--namespace Team_A|not a namespace name"
  "leftover|unexpected argument 'leftover'"
)
for case in "${bad_flags[@]}"; do
  args="${case%%|*}" want="${case#*|}" rc=0
  # shellcheck disable=SC2086
  env -i PATH="$tmp/bin" "$BASH_BIN" e2e/kind.sh --dry-run $args >/dev/null 2>"$tmp/bad.err" || rc=$?
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" "$tmp/bad.err" && grep -q -- '--help\|use \|Steps, in order\|Against\|gets the images' "$tmp/bad.err"; then
    pass "$args: exit 2, $(head -n 1 "$tmp/bad.err")"
  else
    fail "$args: exit $rc, want 2 and '$want' with what to do:"; indent <"$tmp/bad.err"
  fi
done

# --- 4. a real run against stubs -----------------------------------------------------------------
section "e2e/kind.sh run against stub kubectl and helm (existing cluster)"
mkdir -p "$tmp/stubs" "$tmp/calls"
for t in cat seq awk sort sleep tr; do ln -s "$(command -v "$t")" "$tmp/bin/$t"; done
# The stubs log each call quoted as the plan quotes it, keep what they read on stdin, and
# answer the reads the suite checks as a healthy job would (STUB_COMMITTED= for one that is not).
{
  echo "#!$BASH_BIN"
  echo 'set -euo pipefail'
  sed -n '/^quote() {/,/^}/p' e2e/kind.sh
  cat <<'STUB'
calls="$STUB_CALLS"
n=$(( $(cat "$calls/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$calls/count"
line="$(quote "$(basename "$0")" "$@")"
echo "$line" >>"$calls/log"
case " $* " in
  *" -f - "*|*" exec -i "*) cat >"$calls/$n.stdin"; echo "$line" >"$calls/$n.cmd" ;;
esac
case "$*" in
  *"create namespace"*"-o yaml"*) printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n' ;;
  *"auth can-i"*) echo yes ;;
  *".status.lag.records"*) printf '0\n0\n0\n' ;;
  *".status.offsets.partitions"*) printf '%s' "${STUB_COMMITTED-12 40}" ;;
  *"{.metadata.uid}"*) echo "uid-$n" ;;
  *"{.status.phase}"*) echo Suspended ;;
  *"{.spec.replicas}"*) echo 0 ;;
esac
exit "${STUB_EXIT:-0}"
STUB
} >"$tmp/stubs/kubectl"
cp "$tmp/stubs/kubectl" "$tmp/stubs/helm"
ln -s "$(command -v basename)" "$tmp/bin/basename"
chmod +x "$tmp/stubs/kubectl" "$tmp/stubs/helm"
steps="cluster,kafka,chart,jobs,ready,restart,suspend,uninstall"
flags=(--cluster existing --image-registry registry.example/team --tag t1 --step "$steps")
rc=0
env -i PATH="$tmp/stubs:$tmp/bin" HOME="$tmp" KUBECONFIG="$tmp/no-such-kubeconfig" STUB_CALLS="$tmp/calls" \
  "$BASH_BIN" e2e/kind.sh "${flags[@]}" </dev/null >"$tmp/real.out" 2>"$tmp/real.err" || rc=$?
if [[ $rc -eq 0 ]] && grep -qx '==== e2e/kind.sh: passed (.*) ====' "$tmp/real.out"; then
  pass "the steps $steps pass against the stubs ($(wc -l <"$tmp/calls/log") calls)"
else
  fail "the run against the stubs: exit $rc"; indent <"$tmp/real.err"; tail -n 20 "$tmp/real.out" | indent
fi
plan real-plan "${flags[@]}"
if diff <(grep -E '^(\+ |==== step )' "$tmp/real-plan.out") <(grep -E '^(\+ |==== step )' "$tmp/real.out") >"$tmp/plan.diff"; then
  pass "the run printed exactly the dry run's plan ($(grep -c '^+ ' "$tmp/real.out") commands)"
else
  fail "the run's commands differ from the dry run's plan:"; indent <"$tmp/plan.diff"
fi
# The plan's plain kubectl and helm commands (not pipelines or loops) must be the stubs' calls,
# in the same order (the calls include those inside pipelines and loops too).
grep -E '^\+ (kubectl|helm) ' "$tmp/real.out" | grep -vF ' | ' | sed "s/^+ //; s/ <<'YAML'\$//" >"$tmp/want.calls" || true
if awk 'NR == FNR { want[++n] = $0; next } i < n && $0 == want[i + 1] { i++ } END { exit !(n > 0 && i == n) }' \
    "$tmp/want.calls" "$tmp/calls/log"; then
  pass "each of the $(wc -l <"$tmp/want.calls") plain kubectl and helm commands printed was run, in order"
else
  fail "the printed commands were not all run in order; calls:"; indent <"$tmp/calls/log"
fi
helm_call="helm upgrade --install weir charts/weir -n weir-system --create-namespace --set 'watchNamespaces={weir-e2e}' --set image.repository=registry.example/team/weir-operator --set image.tag=t1 --set workerImage.repository=registry.example/team/weir-worker --set workerImage.tag=t1 --wait --timeout 300s"
if grep -qxF -- "$helm_call" "$tmp/calls/log"; then pass "helm ran with the chart and the images given"; else fail "helm did not run as: $helm_call"; fi
mapfile -t applied < <(grep -l -- ' apply -f -$' "$tmp"/calls/*.cmd | sed 's/cmd$/stdin/')
if [[ ${#applied[@]} -gt 0 ]] && [[ $(cat "${applied[@]}" | grep -c 'bootstrapServers: kafka.weir-e2e.svc:9092') -ge 3 ]] \
    && ! cat "${applied[@]}" | grep -q 'bootstrapServers: kafka:9092'; then
  pass "kubectl apply read the examples, pointed at kafka.weir-e2e.svc:9092"
else
  fail "kubectl apply did not read the three examples pointed at the suite's Kafka"
fi
lines="$(grep -l -- '--topic lines$' "$tmp"/calls/*.cmd | sed 's/cmd$/stdin/' || true)"
if [[ -n "$lines" && $(wc -l <"$lines") -eq 2000 ]] && grep -qx 'the quick brown fox 7' "$lines"; then
  pass "2000 lines produced to topic lines"
else
  fail "the producer of topic lines did not read 2000 lines"
fi
pages="$(grep -l -- '--topic page-views$' "$tmp"/calls/*.cmd | sed 's/cmd$/stdin/' || true)"
if [[ -n "$pages" ]] && grep -qx '{"page": "/p3"}' "$pages"; then pass "page views produced as JSON"; else fail "no page views produced"; fi

rc=0
env -i PATH="$tmp/stubs:$tmp/bin" HOME="$tmp" STUB_CALLS="$tmp/calls" STUB_COMMITTED="" \
  "$BASH_BIN" e2e/kind.sh --cluster existing --step ready </dev/null >"$tmp/failed.out" 2>"$tmp/failed.err" || rc=$?
if [[ $rc -eq 1 ]] && grep -qx 'FAIL: word-count shows no committed offsets' "$tmp/failed.err" \
    && grep -q -- '--step uninstall' "$tmp/failed.err"; then
  pass "no committed offsets: exit 1, $(head -n 1 "$tmp/failed.err"), and how to clean up"
else
  fail "no committed offsets: exit $rc, want 1 and a FAIL line:"; indent <"$tmp/failed.err"
fi

rc=0
env -i PATH="$tmp/stubs:$tmp/bin" HOME="$tmp" STUB_CALLS="$tmp/calls" STUB_EXIT=1 \
  "$BASH_BIN" e2e/kind.sh --cluster existing --step chart </dev/null >"$tmp/broken.out" 2>"$tmp/broken.err" || rc=$?
if [[ $rc -ne 0 ]] && grep -qx 'FAIL: the command above exited with status 1' "$tmp/broken.err" \
    && [[ "$(tail -n 1 "$tmp/broken.out")" == "+ helm upgrade --install "* ]]; then
  pass "helm failing: exit $rc, $(head -n 1 "$tmp/broken.err") (the helm command)"
else
  fail "helm failing: exit $rc, want non-zero and a FAIL line after the helm command:"; indent <"$tmp/broken.err"
fi

echo
if [[ "$failures" -gt 0 ]]; then
  echo "check-shell: FAILED ($failures failing checks)" >&2
  exit 1
fi
echo "check-shell: all checks passed"
