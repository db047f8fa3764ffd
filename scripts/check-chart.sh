#!/usr/bin/env bash
# Offline checks of the Helm chart, the CRDs and the examples (no cluster needed):
#   1. helm lint --strict, with the default values and with each value set below;
#   2. helm template (with the CRDs) for each value set, every rendered object validated with
#      kubernetes-validate --strict against the Kubernetes schemas, plus a few assertions on
#      what each value set must (not) render;
#   3. bad values must make helm template fail, saying why (values.schema.json at work);
#   4. crds/*.yaml and the chart's crds/ validated as CustomResourceDefinitions;
#   5. examples/*.yaml well-formed YAML with apiVersion, kind and metadata.name (their check
#      against the CRD's own schema is a Rust test), and the dashboard JSON parses;
#   6. the alerts: the rendered PrometheusRule's groups through `promtool check rules`, and
#      `promtool test rules` over charts/weir/tests/alerts.test.yaml (each alert fires on
#      series that should fire it and not on others); a changed threshold must fail them; the
#      dashboard's expressions parse (promtool check rules, as recording rules).
# Usage: scripts/check-chart.sh [CHART_DIR]     (default charts/weir)
# Tools: WEIR_HELM_BIN, WEIR_KUBE_VALIDATE_BIN, WEIR_PROMTOOL_BIN (or promtool on PATH), or
# $WEIR_TOOLS/env.sh from scripts/install-tools.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
CHART="${1:-charts/weir}"
KUBE_VERSION="${WEIR_KUBE_VERSION:-1.33}"
TOOLS="${WEIR_TOOLS:-$HOME/.cache/weir-tools}"

if [[ -z "${WEIR_HELM_BIN:-}" || -z "${WEIR_KUBE_VALIDATE_BIN:-}" ]] && [[ -f "$TOOLS/env.sh" ]]; then
  # shellcheck disable=SC1091
  source "$TOOLS/env.sh"
fi
HELM="${WEIR_HELM_BIN:-}"
KV="${WEIR_KUBE_VALIDATE_BIN:-}"
PROMTOOL="${WEIR_PROMTOOL_BIN:-$(command -v promtool || true)}"
[[ -x "$HELM" && -x "$KV" && -x "$PROMTOOL" ]] || {
  echo "check-chart: helm, kubernetes-validate or promtool not found; run scripts/install-tools.sh first" >&2
  exit 1
}
# The venv's python has PyYAML (a kubernetes-validate dependency).
PY="$(dirname "$KV")/python"

failures=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
section() { printf '\n== check-chart: %s\n' "$*"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

section "chart $CHART (kubernetes $KUBE_VERSION, $("$HELM" version --short), kubernetes-validate $("$KV" --version))"
crd_files=("$CHART"/crds/*.yaml)
if [[ ! -f "$CHART/crds/streamingjob.yaml" ]]; then
  fail "$CHART/crds/streamingjob.yaml is missing (generate it: cargo run -p weir-operator -- crd > $CHART/crds/streamingjob.yaml)"
fi

# Validates every object in a file; ERROR lines fail, and so do objects without a schema except
# the kinds listed (CRD instances such as ServiceMonitor), so a typo in apiVersion cannot pass
# as "no schema found".
validate() {
  local file="$1" allowed_unknown="${2:-}" out
  out="$("$KV" --strict -k "$KUBE_VERSION" "$file" 2>&1)" || true
  local errors unknown
  errors="$(grep -E '^(ERROR|FATAL)' <<<"$out" || true)"
  unknown="$(grep -E '^WARN' <<<"$out" || true)"
  if [[ -n "$allowed_unknown" && -n "$unknown" ]]; then
    unknown="$(grep -vE "kind ($allowed_unknown) with" <<<"$unknown" || true)"
  fi
  if [[ -n "$errors" || -n "$unknown" ]]; then
    fail "kubernetes-validate $file:"
    printf '%s\n%s\n' "$errors" "$unknown" | sed '/^$/d; s/^/          /'
    return 1
  fi
  local n
  n="$(grep -c '^INFO' <<<"$out" || true)"
  if [[ "$n" -eq 0 ]]; then fail "kubernetes-validate $file: no objects validated"; return 1; fi
  pass "kubernetes-validate --strict: $n objects in $file"
}

# Structural assertions on a rendered file: python expressions over `objs` (a list of dicts)
# and the helper `kinds`, each line "description :: expression".
assert_rendered() {
  local file="$1"; shift
  "$PY" - "$file" "$@" <<'PY'
import json, sys, yaml
file, checks = sys.argv[1], sys.argv[2:]
objs = [o for o in yaml.safe_load_all(open(file)) if o]
kinds = [o["kind"] for o in objs]
def one(kind, name_suffix=""):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
def container():
    return one("Deployment")["spec"]["template"]["spec"]["containers"][0]
bad = 0
for check in checks:
    desc, expr = check.split(" :: ", 1)
    try:
        ok = eval(expr)
    except Exception as e:  # a failed lookup is a failed check, reported as such
        ok, desc = False, f"{desc} ({type(e).__name__}: {e})"
    print(("  ok    " if ok else "  FAIL  ") + desc)
    bad += not ok
sys.exit(1 if bad else 0)
PY
}

# --- value sets -------------------------------------------------------------------------------
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
declare -A SETS=(
  [default]=""
  [namespaced]="--set watchNamespaces={team-a,team-b}"
  [metrics-off]="--set metrics.service.enabled=false"
  [dashboard]="--set dashboard.enabled=true"
  [network-policy]="--set networkPolicy.enabled=true"
  [network-policy-workers]="--set networkPolicy.enabled=true --set watchNamespaces={team-a,team-b} --set networkPolicy.kafka.to[0].ipBlock.cidr=10.0.0.0/16"
  [service-monitor]="--set metrics.serviceMonitor.enabled=true --set replicaCount=2 --set logLevel=debug"
  [pod-monitor]="--set metrics.podMonitor.enabled=true --set networkPolicy.enabled=true --set watchNamespaces={team-a,team-b}"
  [pod-monitor-all-namespaces]="--set metrics.podMonitor.enabled=true"
  [alerts]="--set alerts.enabled=true --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true --set alerts.labels.release=prom"
)
# What every alert must carry, and the alerts the chart ships.
ALERT_NAMES="['WeirOffsetLagGrowing', 'WeirBatchLagHigh', 'WeirJobWorkersNotReady', 'WeirJobStalled', 'WeirJobRestarting', 'WeirJobObservationStale', 'WeirJobFailed', 'WeirOffsetsAtRisk', 'WeirSourceDown', 'WeirDeadLetters', 'WeirOperatorDown']"

declare -A ASSERTS=(
  [default]="operator image is the appVersion :: container()['image'] == 'ghcr.io/weir-dev/weir-operator:$APP_VERSION'
worker image is the appVersion :: '--worker-image=ghcr.io/weir-dev/weir-worker:$APP_VERSION' in container()['args']
args start with run :: container()['args'][0] == 'run'
all namespaces: no --namespaces flag :: not any(a.startswith('--namespaces') for a in container()['args'])
leader election in the release namespace :: '--leader-election-namespace=weir-system' in container()['args']
restricted securityContext :: container()['securityContext']['runAsNonRoot'] and container()['securityContext']['runAsUser'] == 65532 and container()['securityContext']['readOnlyRootFilesystem'] and not container()['securityContext']['allowPrivilegeEscalation'] and container()['securityContext']['capabilities']['drop'] == ['ALL'] and container()['securityContext']['seccompProfile']['type'] == 'RuntimeDefault'
probes on /healthz :: container()['livenessProbe']['httpGet']['path'] == '/healthz' and container()['readinessProbe']['httpGet']['path'] == '/healthz'
resources set :: container()['resources']['requests'] and container()['resources']['limits']
ClusterRole + binding :: one('ClusterRole') and one('ClusterRoleBinding')
ClusterRole has no wildcard :: all('*' not in r['verbs'] and '*' not in r['resources'] for r in one('ClusterRole')['rules'])
leases only in the leader-election Role :: any('leases' in r['resources'] for r in one('Role', '-leader-election')['rules']) and not any('leases' in r['resources'] for r in one('ClusterRole')['rules'])
metrics Service port 9090 named metrics :: one('Service')['spec']['ports'][0] == {'name': 'metrics', 'port': 9090, 'targetPort': 'metrics', 'protocol': 'TCP'}
StreamingJob CRD included :: any(o['kind'] == 'CustomResourceDefinition' and o['metadata']['name'] == 'streamingjobs.weir.dev' for o in objs)
no ServiceMonitor, PodMonitor, PrometheusRule, dashboard or NetworkPolicy :: not set(kinds) & {'ServiceMonitor', 'PodMonitor', 'PrometheusRule', 'NetworkPolicy', 'ConfigMap'}"
  [namespaced]="no ClusterRole :: 'ClusterRole' not in kinds and 'ClusterRoleBinding' not in kinds
a Role and RoleBinding per watched namespace :: sorted(o['metadata']['namespace'] for o in objs if o['kind'] == 'Role' and not o['metadata']['name'].endswith('-leader-election')) == ['team-a', 'team-b'] and sorted(o['metadata']['namespace'] for o in objs if o['kind'] == 'RoleBinding' and not o['metadata']['name'].endswith('-leader-election')) == ['team-a', 'team-b']
--namespaces flag :: '--namespaces=team-a,team-b' in container()['args']"
  [metrics-off]="no Service :: 'Service' not in kinds"
  [dashboard]="dashboard ConfigMap with the metrics :: all(m in one('ConfigMap', '-dashboard')['data']['weir.json'] for m in ['weir_worker_offset_lag', 'weir_batch_lag', 'weir_records_in_total', 'weir_records_per_second', 'weir_batch_processing_seconds', 'weir_batch_total_delay_seconds', 'weir_dead_letters_total', 'weir_source_up', 'weir_job_restarts', 'weir_operator_reconciles_total', 'weir_operator_reconcile_errors_total'])
dashboard JSON parses and has panels :: len(json.loads(one('ConfigMap', '-dashboard')['data']['weir.json'])['panels']) >= 12
dashboard templated by namespace and job :: [v['name'] for v in json.loads(one('ConfigMap', '-dashboard')['data']['weir.json'])['templating']['list']] == ['datasource', 'namespace', 'job']
every per-job panel filters on namespace and job :: all('namespace=~\"\$namespace\", job=~\"\$job\"' in t['expr'] for p in json.loads(one('ConfigMap', '-dashboard')['data']['weir.json'])['panels'] if not p['title'].startswith('Operator') for t in p['targets'])
labelled for the Grafana sidecar :: one('ConfigMap', '-dashboard')['metadata']['labels']['grafana_dashboard'] == '1'"
  [network-policy]="NetworkPolicy on the metrics port :: one('NetworkPolicy')['spec']['ingress'][0]['ports'][0]['port'] == 'metrics'
no workers' policy without namespaces to put it in :: kinds.count('NetworkPolicy') == 1"
  [network-policy-workers]="a workers' policy per watched namespace :: sorted(o['metadata']['namespace'] for o in objs if o['kind'] == 'NetworkPolicy' and o['metadata']['name'].endswith('-workers')) == ['team-a', 'team-b']
workers: ingress from the operator only, egress to DNS and the Kafka CIDR only :: all(len(p['spec']['ingress']) == 1 and p['spec']['ingress'][0]['from'][0]['namespaceSelector']['matchLabels'] == {'kubernetes.io/metadata.name': 'weir-system'} and len(p['spec']['egress']) == 2 and p['spec']['egress'][1]['to'] == [{'ipBlock': {'cidr': '10.0.0.0/16'}}] for p in objs if p['kind'] == 'NetworkPolicy' and p['metadata']['name'].endswith('-workers'))"
  [service-monitor]="2 replicas :: one('Deployment')['spec']['replicas'] == 2
ServiceMonitor scrapes the metrics port :: one('ServiceMonitor')['spec']['endpoints'][0]['port'] == 'metrics'
ServiceMonitor keeps the per-job gauges' job and namespace labels :: one('ServiceMonitor')['spec']['endpoints'][0]['honorLabels'] is True
log level :: '--log-level=debug' in container()['args']"
  [pod-monitor]="PodMonitor selects the operator's worker pods :: one('PodMonitor')['spec']['selector']['matchLabels'] == {'app.kubernetes.io/name': 'weir-worker', 'app.kubernetes.io/managed-by': 'weir-operator'}
PodMonitor scrapes /metrics on the workers' http port (8080 in operator/src/desired.rs) :: one('PodMonitor')['spec']['podMetricsEndpoints'][0]['port'] == 'http' and one('PodMonitor')['spec']['podMetricsEndpoints'][0]['path'] == '/metrics'
PodMonitor names series after the StreamingJob :: one('PodMonitor')['spec']['jobLabel'] == 'weir.dev/job'
PodMonitor in the watched namespaces :: one('PodMonitor')['spec']['namespaceSelector'] == {'matchNames': ['team-a', 'team-b']}
workers' policy lets the Prometheus in on 8080 :: all(p['spec']['ingress'][1] == {'from': [{'namespaceSelector': {'matchLabels': {'kubernetes.io/metadata.name': 'monitoring'}}, 'podSelector': {'matchLabels': {'app.kubernetes.io/name': 'prometheus'}}}], 'ports': [{'port': 8080, 'protocol': 'TCP'}]} and len(p['spec']['ingress']) == 2 for p in objs if p['kind'] == 'NetworkPolicy' and p['metadata']['name'].endswith('-workers'))"
  [pod-monitor-all-namespaces]="PodMonitor in every namespace :: one('PodMonitor')['spec']['namespaceSelector'] == {'any': True}
no PrometheusRule unless asked :: 'PrometheusRule' not in kinds"
  [alerts]="PrometheusRule labelled for the ruleSelector :: one('PrometheusRule')['metadata']['labels']['release'] == 'prom'
the alerts :: [r['alert'] for g in one('PrometheusRule')['spec']['groups'] for r in g['rules']] == $ALERT_NAMES
each alert has summary, description and runbook :: all({'summary', 'description', 'runbook'} <= set(r['annotations']) and all(r['annotations'].values()) for g in one('PrometheusRule')['spec']['groups'] for r in g['rules'])
each alert has a severity :: all(r['labels']['severity'] in ('warning', 'critical') for g in one('PrometheusRule')['spec']['groups'] for r in g['rules'])
batch lag at the seed's 10 :: any(r['expr'] == 'weir_job_batch_lag >= 10' for g in one('PrometheusRule')['spec']['groups'] for r in g['rules'])"
)

for name in default namespaced metrics-off dashboard network-policy network-policy-workers service-monitor pod-monitor pod-monitor-all-namespaces alerts; do
  # shellcheck disable=SC2206
  args=(${SETS[$name]})
  section "values: $name ${SETS[$name]:-(defaults)}"
  if "$HELM" lint --strict "$CHART" "${args[@]}" >"$tmp/lint.log" 2>&1; then
    pass "helm lint --strict"
  else
    fail "helm lint --strict"; sed 's/^/          /' "$tmp/lint.log"
  fi
  out="$tmp/$name.yaml"
  if "$HELM" template weir "$CHART" -n weir-system --include-crds --kube-version "$KUBE_VERSION.0" \
      "${args[@]}" >"$out" 2>"$tmp/template.log"; then
    pass "helm template ($(grep -c '^kind:' "$out") objects)"
    validate "$out" "ServiceMonitor|PodMonitor|PrometheusRule" || true
    mapfile -t checks <<<"${ASSERTS[$name]}"
    assert_rendered "$out" "${checks[@]}" || failures=$((failures + 1))
  else
    fail "helm template"; sed 's/^/          /' "$tmp/template.log"
  fi
done

# --- bad values must fail, and say why ----------------------------------------------------------
section "bad values are rejected (values.schema.json)"
bad_values=(
  "--set replicaCount=-1|/replicaCount"
  "--set replicaCount=two|/replicaCount"
  "--set logLevel=verbose|/logLevel"
  "--set watchNamespaces[0]=Team_A|/watchNamespaces/0"
  "--set imag.tag=x|'imag' not allowed"
  "--set resources.limits.memory=lots|/resources/limits/memory"
  "--set metrics.port=80|/metrics/port"
  "--set image.pullPolicy=Sometimes|/image/pullPolicy"
  "--set networkPolicy.kafka.ports[0].protocol=HTTP|/networkPolicy/kafka/ports/0/protocol"
  "--set networkPolicy.prometheus.podSelectr.a=b|'podSelectr' not allowed"
  "--set metrics.podMonitor.interval=30|/metrics/podMonitor/interval"
  "--set alerts.batchLag.threshold=0|/alerts/batchLag/threshold"
  "--set alerts.deadLetters.window=5min|/alerts/deadLetters/window"
  "--set alerts.deadLetters.perSecond=-1|/alerts/deadLetters/perSecond"
  "--set alerts.restarts.treshold=3|'treshold' not allowed"
)
for case in "${bad_values[@]}"; do
  set_args="${case%%|*}" want="${case#*|}"
  # shellcheck disable=SC2086
  if "$HELM" template weir "$CHART" $set_args >/dev/null 2>"$tmp/bad.log"; then
    fail "$set_args: accepted, should be rejected"
  elif grep -qF -- "$want" "$tmp/bad.log"; then
    pass "$set_args: rejected ($(grep -F -- "$want" "$tmp/bad.log" | head -1 | sed 's/^[- ]*//'))"
  else
    fail "$set_args: rejected, but the message does not name $want:"; sed 's/^/          /' "$tmp/bad.log"
  fi
done

# --- CRDs -------------------------------------------------------------------------------------
section "CRDs"
for f in crds/*.yaml "${crd_files[@]}"; do
  [[ -f "$f" ]] || continue
  validate "$f" || true
  if ! grep -q '^kind: CustomResourceDefinition' "$f"; then fail "$f: not a CustomResourceDefinition"; fi
done

# --- examples and dashboard -------------------------------------------------------------------
section "examples and dashboard"
for f in examples/*.yaml; do
  [[ -f "$f" ]] || { fail "no examples/*.yaml"; continue; }
  if msg="$("$PY" - "$f" 2>&1 <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]
assert docs, "no YAML documents"
for d in docs:
    assert isinstance(d, dict), "a document is not a mapping"
    for key in ("apiVersion", "kind"):
        assert d.get(key), f"missing {key}"
    assert (d.get("metadata") or {}).get("name"), "missing metadata.name"
print(", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
PY
  )"; then
    pass "$f: $msg"
  else
    fail "$f: not a well-formed manifest: $(tail -1 <<<"$msg")"
  fi
done
for f in "$CHART"/dashboards/*.json; do
  [[ -f "$f" ]] || continue
  if "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$f" 2>"$tmp/json.log"; then
    pass "$f: valid JSON"
  else
    fail "$f: invalid JSON: $(tail -1 "$tmp/json.log")"
  fi
done

# --- alerts -----------------------------------------------------------------------------------
section "alerts (promtool $("$PROMTOOL" --version 2>&1 | head -1 | awk '{print $3}'))"
# The PodMonitor's port name and the alerts' worker metrics are the operator's and the worker's:
# say so when either moves.
if grep -qF 'pub const HTTP_PORT: i32 = 8080;' operator/src/desired.rs &&
    grep -qF 'name: Some("http".into())' operator/src/desired.rs; then
  pass "workers serve /metrics on the port named http (8080) in operator/src/desired.rs"
else
  fail "operator/src/desired.rs no longer names the workers' port http/8080: update templates/podmonitor.yaml and networkpolicy.yaml"
fi
for m in weir_source_up weir_records_in weir_dead_letters; do
  if grep -qF "\"$m\"" worker/src/progress.rs; then
    pass "the worker exports $m"
  else
    fail "worker/src/progress.rs no longer exports $m, which templates/prometheusrule.yaml reads"
  fi
done
# Renders the rules with extra --set arguments into $tmp/promtool/rules.yaml, beside the tests.
render_rules() {
  mkdir -p "$tmp/promtool"
  cp "$CHART/tests/alerts.test.yaml" "$tmp/promtool/"
  "$HELM" template weir "$CHART" -n weir-system --show-only templates/prometheusrule.yaml \
      --set alerts.enabled=true --set metrics.serviceMonitor.enabled=true "$@" >"$tmp/rule.yaml" &&
    "$PY" -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"), sort_keys=False)' \
      "$tmp/rule.yaml" "$tmp/promtool/rules.yaml"
}
if ! render_rules 2>"$tmp/rules.log"; then
  fail "rendering the PrometheusRule"; sed 's/^/          /' "$tmp/rules.log"
elif "$PROMTOOL" check rules "$tmp/promtool/rules.yaml" >"$tmp/promtool.log" 2>&1; then
  pass "promtool check rules: $(grep -o '[0-9]* rules found' "$tmp/promtool.log")"
else
  fail "promtool check rules"; sed 's/^/          /' "$tmp/promtool.log"
fi
if (cd "$tmp/promtool" && "$PROMTOOL" test rules alerts.test.yaml) >"$tmp/promtool.log" 2>&1; then
  pass "promtool test rules $CHART/tests/alerts.test.yaml: $(grep -c '^  - interval' "$CHART/tests/alerts.test.yaml") groups, every alert firing and silent"
else
  fail "promtool test rules $CHART/tests/alerts.test.yaml"; sed 's/^/          /' "$tmp/promtool.log"
fi
# The dashboard's expressions parse as PromQL: each becomes a recording rule for promtool
# (Grafana's $namespace and $job sit inside regex matchers, so they parse as they are).
for f in "$CHART"/dashboards/*.json; do
  "$PY" - "$f" "$tmp/dashboard-rules.yaml" <<'PY'
import json, sys, yaml
panels = json.load(open(sys.argv[1]))["panels"]
rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"]}
         for p in panels for t in p.get("targets", [])]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
PY
  if "$PROMTOOL" check rules "$tmp/dashboard-rules.yaml" >"$tmp/promtool.log" 2>&1; then
    pass "$f: every expression parses ($(grep -o '[0-9]* rules found' "$tmp/promtool.log"))"
  else
    fail "$f: promtool check rules on its expressions"; sed 's/^/          /' "$tmp/promtool.log"
  fi
done
# The tests must see the thresholds: with one moved, they fail.
for moved in alerts.batchLag.threshold=11 alerts.stalled.for=30m alerts.deadLetters.perSecond=0.2 \
  alerts.jobFailed.for=10m alerts.offsetsAtRisk.for=15m; do
  if ! render_rules --set "$moved" 2>"$tmp/rules.log"; then
    fail "rendering the PrometheusRule with $moved"; sed 's/^/          /' "$tmp/rules.log"
  elif (cd "$tmp/promtool" && "$PROMTOOL" test rules alerts.test.yaml) >/dev/null 2>&1; then
    fail "promtool test rules passes with $moved: the tests do not pin that threshold"
  else
    pass "promtool test rules fails with $moved"
  fi
done

echo
if [[ "$failures" -gt 0 ]]; then
  echo "check-chart: FAILED ($failures failing checks)" >&2
  exit 1
fi
echo "check-chart: all checks passed"
