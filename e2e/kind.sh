#!/usr/bin/env bash
# The real-cluster suite: Weir end to end with a one-node Apache Kafka, on a kind cluster it
# creates, or on any cluster KUBECONFIG (kubectl's current context) points at.
#
#   e2e/kind.sh [--cluster kind|existing] [--step STEP[,STEP...]] [--dry-run] [FLAGS]
#
# Steps, always in this order; by default every step of the mode (kind: all but push;
# existing: all but images, load, push and delete-cluster). --step runs only those named, in
# this order; each assumes the ones before it ran, in this run or an earlier one.
#   cluster         kind: create kind cluster NAME unless it exists (Kafka's external listener
#                   is a NodePort mapped to 127.0.0.1:30092); existing: show the context and
#                   check the API server answers and allows installing a CRD
#   images          docker build the operator and worker images with the names below
#   load            kind load docker-image (kind only)
#   push            docker push the two images (existing only, never by default)
#   kafka           namespace NS, Kafka (apache/kafka, KRaft, one node) and its topics
#   chart           helm upgrade --install charts/weir watching NS, with the images below
#   jobs            the examples, pointed at that Kafka, and input lines for them
#   ready           every job Ready, lag drained to 0, word-count's offsets committed
#   restart         word-count's worker pod deleted: a new pod, the job Ready again
#   suspend         suspend scales word-count to zero workers; then resume it
#   exactly-once    e2e/chaos.sh --sink kafka --records N --kills K against this Kafka (needs
#                   cargo; existing: through kubectl port-forward to 127.0.0.1:30092)
#   uninstall       in the README's order: delete the jobs (the operator drains them), helm
#                   uninstall, delete namespace NS, and the CRD only when no job is left anywhere
#   delete-cluster  kind delete cluster (kind only); runs at exit, after a failure too
#
# Flags (also as --flag=value):
#   --cluster kind|existing  kind (default): images built and loaded into a kind cluster; needs
#                            docker and kind. existing: the cluster of KUBECONFIG, no kind, no
#                            docker; the images must be where it pulls from (pushed by you, or
#                            --step images,push) and named with the flags below.
#   --no-kind                the same as --cluster existing
#   --kind-name NAME         the kind cluster (default weir-e2e)
#   --image-registry REG     images REG/weir-operator:TAG, REG/weir-worker:TAG (default
#                            ghcr.io/weir-dev)
#   --tag TAG                their tag (default the chart's appVersion)
#   --operator-image REF     the operator image as REPOSITORY:TAG (instead of the two above)
#   --worker-image REF       the worker image as REPOSITORY:TAG
#   --namespace NS           the jobs' and Kafka's namespace (default weir-e2e)
#   --operator-namespace NS  the chart's release namespace (default weir-system)
#   --helm-set KEY=VALUE     passed to helm install as --set (repeatable), e.g.
#                            imagePullSecrets[0].name=regcred
#   --records N, --kills K   for the exactly-once step (default 1000000 and 20)
#   --keep                   leave what the suite made: no uninstall, no delete-cluster
#   --dry-run                print the plan: every command, in order, with the manifests it
#                            applies; runs nothing, needs no cluster, docker, kind, kubectl or helm
#   -h, --help               this text
# Exit status: 0 passed, 1 a check failed, 2 bad flags or a missing tool.
#
# Against an existing cluster the suite installs the StreamingJob CRD (cluster-wide) and the
# chart with namespaced RBAC: use a cluster you may change. On a failure it leaves what it made
# for inspection; `--cluster existing --step uninstall` removes it.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

readonly ALL_STEPS="cluster images load push kafka chart jobs ready restart suspend exactly-once uninstall delete-cluster"
readonly CHART=charts/weir
readonly RELEASE=weir

usage() { sed -n '/^set -Eeuo pipefail/q; 2,$s/^# \{0,1\}//p' "$0"; }
# Bad usage: what is wrong, what to do, exit 2.
usage_error() {
  printf 'e2e/kind.sh: %s\n' "$1" >&2
  printf '%s\n' "${2:-Run e2e/kind.sh --help for the flags and the steps.}" >&2
  exit 2
}

mode=kind
kind_name=weir-e2e
registry=ghcr.io/weir-dev
tag=""
operator_ref=""
worker_ref=""
ns=weir-e2e
operator_ns=weir-system
helm_sets=()
records=1000000
kills=20
keep=false
dry=false
steps_asked=""

while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) flag="${1%%=*}"; value="${1#*=}"; shift; set -- "$flag" "$value" "$@" ;;
  esac
  case "$1" in
    --cluster|--kind-name|--image-registry|--tag|--operator-image|--worker-image|--namespace|--operator-namespace|--helm-set|--records|--kills|--step)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
      case "$2" in -*) usage_error "$1 needs a value, not the flag '$2'" ;; esac ;;
  esac
  case "$1" in
    --cluster)
      case "$2" in
        kind|existing) mode="$2" ;;
        *) usage_error "--cluster takes kind or existing, not '$2'" \
             "For the kind cluster's name use --kind-name NAME; for the cluster of KUBECONFIG use --cluster existing." ;;
      esac
      shift 2 ;;
    --no-kind) mode=existing; shift ;;
    --kind-name) kind_name="$2"; shift 2 ;;
    --image-registry) registry="${2%/}"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --operator-image) operator_ref="$2"; shift 2 ;;
    --worker-image) worker_ref="$2"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    --operator-namespace) operator_ns="$2"; shift 2 ;;
    --helm-set) helm_sets+=("$2"); shift 2 ;;
    --records) records="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    --step) steps_asked="$steps_asked ${2//,/ }"; shift 2 ;;
    --keep) keep=true; shift ;;
    --dry-run) dry=true; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) usage_error "unknown flag '$1'" ;;
    *) usage_error "unexpected argument '$1' (this script takes only flags)" ;;
  esac
done

for n in "$records" "$kills"; do
  case "$n" in ''|*[!0-9]*) usage_error "--records and --kills take a whole number, not '$n'" ;; esac
done
for name in "$ns" "$operator_ns"; do
  # Kubernetes namespace names (RFC 1123 labels); a wrong one would fail half-way through.
  case "$name" in
    *[!a-z0-9-]*|-*|*-) usage_error "'$name' is not a namespace name (lower-case letters, digits and '-')" ;;
  esac
done

# --- images -----------------------------------------------------------------------------------
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
[ -n "$version" ] || usage_error "no appVersion in $CHART/Chart.yaml" "Run the script from a checkout of the repository."
operator_image="${operator_ref:-$registry/weir-operator:${tag:-$version}}"
worker_image="${worker_ref:-$registry/weir-worker:${tag:-$version}}"
# The chart takes an image as repository and tag: the tag follows the last ':' after the last
# '/' (a registry's port is not a tag).
for ref in "$operator_image" "$worker_image"; do
  case "${ref##*/}" in
    *:?*) ;;
    *) usage_error "image '$ref' needs a tag: give it as REPOSITORY:TAG" ;;
  esac
done
operator_tag="${operator_image##*:}"
worker_tag="${worker_image##*:}"
operator_repo="${operator_image%:*}"
worker_repo="${worker_image%:*}"

# --- steps ------------------------------------------------------------------------------------
in_list() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if [ "$mode" = kind ]; then
  only_other_mode="push"
  not_by_default="push"
else
  only_other_mode="load delete-cluster"
  not_by_default="images load push delete-cluster"
fi
if [ -n "${steps_asked// /}" ]; then
  for s in $steps_asked; do
    in_list "$s" "$ALL_STEPS" || usage_error "unknown step '$s'" "Steps, in order: $ALL_STEPS."
    if in_list "$s" "$only_other_mode"; then
      if [ "$mode" = kind ]; then
        usage_error "step $s is for --cluster existing" "A kind cluster gets the images with the load step."
      else
        usage_error "step $s needs kind (--cluster kind)" "Against an existing cluster, push the images yourself (or --step images,push) and name them with --image-registry or --operator-image and --worker-image."
      fi
    fi
  done
  selected=""
  for s in $ALL_STEPS; do in_list "$s" "$steps_asked" && selected="$selected $s"; done
else
  $keep && not_by_default="$not_by_default uninstall delete-cluster"
  selected=""
  for s in $ALL_STEPS; do in_list "$s" "$not_by_default" || selected="$selected $s"; done
fi
selected="${selected# }"

# --- how commands run: each is printed, then run unless --dry-run -----------------------------
# Quotes words for the printed plan so that each line can be pasted into a shell.
quote() {
  local out="" a
  for a in "$@"; do
    case "$a" in
      ''|*[!A-Za-z0-9_@%+=:,./-]*) a="'${a//\'/\'\\\'\'}'" ;;
    esac
    out="${out:+$out }$a"
  done
  printf '%s' "$out"
}
# "$(CMD)" as text, for the shell lines below: expanded when a line runs, not here.
# shellcheck disable=SC2016
cmdsub() { printf '"$(%s)"' "$(quote "$@")"; }
show() { printf '+ %s\n' "$1"; }
run() { show "$(quote "$@")"; $dry || "$@"; }
# run_in BODY CMD...: CMD reading BODY on stdin, shown as a here-document.
run_in() {
  local body="$1"; shift
  printf "+ %s <<'YAML'\n%s\nYAML\n" "$(quote "$@")" "$body"
  $dry || "$@" <<<"$body"
}
# run_sh LINE: a pipeline, test or assignment as one shell line, made of quote'd words: the
# line shown is the line evaluated.
run_sh() { show "$1"; $dry || eval "$1"; }
# await SECONDS INTERVAL CONDITION WHAT: until the CONDITION line holds, or fail with WHAT.
await() {
  local timeout="$1" interval="$2" condition="$3" what="$4" deadline
  show "until $condition; do sleep $interval; done   # at most $timeout s"
  $dry && return 0
  deadline=$((SECONDS + timeout))
  until eval "$condition"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited $timeout s)"
    sleep "$interval"
  done
}
fail() {
  echo "FAIL: $*" >&2
  "${kc[@]}" -n "$ns" get sj -o wide >&2 || true
  cleanup_hint
  exit 1
}
cleanup_hint() {
  if [ "$mode" = existing ]; then
    echo "What the suite made is left for inspection; remove it with: e2e/kind.sh --cluster existing --namespace $ns --operator-namespace $operator_ns --step uninstall" >&2
  fi
}
header() { printf '\n==== step %s: %s ====\n' "$1" "$2"; }

# --- tools (none for a dry run) -----------------------------------------------------------------
if ! $dry; then
  needs() { for s in $2; do if in_list "$s" "$selected"; then echo "$1"; return; fi; done; }
  tools="$(needs kubectl "kafka chart jobs ready restart suspend exactly-once uninstall") $(needs helm "chart uninstall") $(needs cargo exactly-once)"
  if [ "$mode" = kind ]; then
    tools="$tools $(needs docker "cluster images load") $(needs kind "cluster load delete-cluster")"
  else
    tools="$tools $(needs kubectl cluster) $(needs docker "images push")"
  fi
  for tool in $tools; do
    command -v "$tool" >/dev/null || usage_error "the steps '$selected' need $tool on PATH" \
      "Install $tool, or choose other steps with --step (see --help); --dry-run shows the plan without any tool."
  done
  if in_list docker "$tools"; then
    docker info >/dev/null 2>&1 || usage_error "docker is on PATH but its engine does not answer (docker info)" "Start the Docker engine, or leave out the steps that need it."
  fi
fi

# In kind mode every kubectl and helm names the kind cluster's context, whichever is current.
if [ "$mode" = kind ]; then
  kc=(kubectl --context "kind-$kind_name")
  hc=(helm --kube-context "kind-$kind_name")
else
  kc=(kubectl)
  hc=(helm)
fi

port_forward_pid=""
on_exit() {
  if [ -n "$port_forward_pid" ]; then kill "$port_forward_pid" 2>/dev/null || true; fi
  if [ "$mode" = kind ] && in_list delete-cluster "$selected"; then
    header delete-cluster "kind delete cluster $kind_name"
    run kind delete cluster --name "$kind_name"
  fi
}
if ! $dry; then
  trap on_exit EXIT
  # A command that fails outside a check (set -e) ends the run: say so, not just stop.
  trap 'echo "FAIL: the command above exited with status $?" >&2; cleanup_hint' ERR
fi

# --- the steps ----------------------------------------------------------------------------------
step_cluster() {
  if [ "$mode" = kind ]; then
    header cluster "kind cluster $kind_name (created unless it exists)"
    # Kafka's external listener is a NodePort the host reaches on 127.0.0.1:30092.
    run_sh "$(quote kind get clusters) | $(quote grep -qx "$kind_name") || $(quote kind create cluster --name "$kind_name" --wait 120s --config -) <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - {containerPort: 30092, hostPort: 30092, listenAddress: \"127.0.0.1\"}
YAML"
  else
    header cluster "the cluster of KUBECONFIG=${KUBECONFIG:-(unset: ~/.kube/config)}"
    run "${kc[@]}" config current-context
    run "${kc[@]}" version
    run "${kc[@]}" auth can-i create customresourcedefinitions.apiextensions.k8s.io \
      || fail "this context may not create CustomResourceDefinitions, which the chart installs"
  fi
}

step_images() {
  header images "docker build $operator_image, $worker_image"
  run docker build --target operator -t "$operator_image" .
  run docker build --target worker -t "$worker_image" .
}

step_load() {
  header load "the images into kind cluster $kind_name"
  run kind load docker-image --name "$kind_name" "$operator_image" "$worker_image"
}

step_push() {
  header push "docker push $operator_image, $worker_image"
  run docker push "$operator_image"
  run docker push "$worker_image"
}

step_kafka() {
  header kafka "Kafka (KRaft, one node) in namespace $ns"
  local external_service
  if [ "$mode" = kind ]; then
    external_service="  type: NodePort
  selector: {app: kafka}
  ports: [{port: 9094, targetPort: 9094, nodePort: 30092}]"
  else
    # No NodePort on a cluster that is not ours: the exactly-once step port-forwards to this.
    external_service="  selector: {app: kafka}
  ports: [{port: 9094, targetPort: 9094}]"
  fi
  run_sh "$(quote "${kc[@]}" create namespace "$ns" --dry-run=client -o yaml) | $(quote "${kc[@]}" apply -f -)"
  run_in "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: kafka}
spec:
  serviceName: kafka
  replicas: 1
  selector: {matchLabels: {app: kafka}}
  template:
    metadata: {labels: {app: kafka}}
    spec:
      containers:
        - name: kafka
          image: apache/kafka:3.9.0
          ports: [{containerPort: 9092}]
          env:
            - {name: KAFKA_NODE_ID, value: \"1\"}
            - {name: KAFKA_PROCESS_ROLES, value: \"broker,controller\"}
            - {name: KAFKA_LISTENERS, value: \"PLAINTEXT://:9092,CONTROLLER://:9093,EXTERNAL://:9094\"}
            - {name: KAFKA_ADVERTISED_LISTENERS, value: \"PLAINTEXT://kafka.$ns.svc:9092,EXTERNAL://localhost:30092\"}
            - {name: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP, value: \"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT\"}
            - {name: KAFKA_INTER_BROKER_LISTENER_NAME, value: \"PLAINTEXT\"}
            - {name: KAFKA_CONTROLLER_LISTENER_NAMES, value: \"CONTROLLER\"}
            - {name: KAFKA_CONTROLLER_QUORUM_VOTERS, value: \"1@localhost:9093\"}
            - {name: KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR, value: \"1\"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR, value: \"1\"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_MIN_ISR, value: \"1\"}
            - {name: KAFKA_NUM_PARTITIONS, value: \"4\"}
---
apiVersion: v1
kind: Service
metadata: {name: kafka}
spec:
  selector: {app: kafka}
  ports: [{port: 9092}]
---
apiVersion: v1
kind: Service
metadata: {name: kafka-external}
spec:
$external_service" "${kc[@]}" -n "$ns" apply -f -
  run "${kc[@]}" -n "$ns" rollout status statefulset/kafka --timeout=300s
  local t
  for t in lines:4 word-counts:4 word-totals:4 page-views:4 page-view-counts:4 lines-dlq:1 page-views-dlq:1; do
    run "${kc[@]}" -n "$ns" exec kafka-0 -- /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 \
      --create --if-not-exists --topic "${t%%:*}" --partitions "${t##*:}"
  done
}

step_chart() {
  header chart "helm upgrade --install $RELEASE $CHART in $operator_ns, watching $ns"
  local args=(upgrade --install "$RELEASE" "$CHART" -n "$operator_ns" --create-namespace
    --set "watchNamespaces={$ns}"
    --set "image.repository=$operator_repo" --set "image.tag=$operator_tag"
    --set "workerImage.repository=$worker_repo" --set "workerImage.tag=$worker_tag")
  local s
  for s in ${helm_sets[@]+"${helm_sets[@]}"}; do args+=(--set "$s"); done
  run "${hc[@]}" "${args[@]}" --wait --timeout 300s
}

step_jobs() {
  header jobs "the examples against kafka.$ns.svc:9092, and their input"
  local f
  for f in examples/*.yaml; do
    run_sh "$(quote sed "s/bootstrapServers: kafka:9092/bootstrapServers: kafka.$ns.svc:9092/" "$f") | $(quote "${kc[@]}" -n "$ns" apply -f -)"
  done
  # Lines for the word jobs, page views for page-views.
  local produce=("${kc[@]}" -n "$ns" exec -i kafka-0 -- /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic)
  run_sh "$(quote seq 2000) | $(quote sed 's/^/the quick brown fox /') | $(quote "${produce[@]}" lines)"
  run_sh "$(quote seq 2000) | $(quote awk '{ printf "{\"page\": \"/p%d\"}\n", NR % 7 }') | $(quote "${produce[@]}" page-views)"
}

step_ready() {
  header ready "every job Ready, lag drained, offsets committed"
  run "${kc[@]}" -n "$ns" wait --for=condition=Ready sj --all --timeout=300s || fail "not every job became Ready"
  await 300 5 "[ \"\$($(quote "${kc[@]}" -n "$ns" get sj -o 'jsonpath={range .items[*]}{.status.lag.records}{"\n"}{end}') | sort -u)\" = 0 ]" \
    "the jobs' lag did not reach 0"
  run "${kc[@]}" -n "$ns" get sj -o wide
  run_sh "[ -n $(cmdsub "${kc[@]}" -n "$ns" get sj word-count -o 'jsonpath={.status.offsets.partitions[*].committed}') ]" \
    || fail "word-count shows no committed offsets"
}

step_restart() {
  # A recreated pod is a new pod, not a restart the status counts (restarts.rs counts container
  # restarts): what this shows is that the job comes back, from its committed offsets.
  header restart "word-count's worker pod deleted: a new pod, the job Ready again"
  run_sh "old_pod=$(cmdsub "${kc[@]}" -n "$ns" get pod word-count-0 -o 'jsonpath={.metadata.uid}')"
  run "${kc[@]}" -n "$ns" delete pod word-count-0 --grace-period=0 --force
  await 120 2 "new_pod=$(cmdsub "${kc[@]}" -n "$ns" get pod word-count-0 -o 'jsonpath={.metadata.uid}') && [ -n \"\$new_pod\" ] && [ \"\$new_pod\" != \"\$old_pod\" ]" \
    "no new word-count-0 pod"
  run "${kc[@]}" -n "$ns" wait --for=condition=Ready pod/word-count-0 --timeout=300s || fail "the new word-count-0 pod is not Ready"
  run "${kc[@]}" -n "$ns" wait --for=condition=Ready sj/word-count --timeout=300s || fail "word-count did not recover"
}

step_suspend() {
  header suspend "suspend scales word-count to zero, then resume"
  run "${kc[@]}" -n "$ns" patch sj word-count --type merge -p '{"spec":{"suspend":true}}'
  await 120 3 "[ $(cmdsub "${kc[@]}" -n "$ns" get sj word-count -o 'jsonpath={.status.phase}') = Suspended ]" \
    "word-count not Suspended"
  run_sh "[ $(cmdsub "${kc[@]}" -n "$ns" get statefulset word-count -o 'jsonpath={.spec.replicas}') = 0 ]" \
    || fail "suspended word-count still has workers"
  run "${kc[@]}" -n "$ns" patch sj word-count --type merge -p '{"spec":{"suspend":false}}'
  run "${kc[@]}" -n "$ns" wait --for=condition=Ready sj/word-count --timeout=300s || fail "word-count did not resume"
}

step_exactly_once() {
  header exactly-once "e2e/chaos.sh --sink kafka against this Kafka: $records records, $kills kills"
  if [ "$mode" = existing ]; then
    # Kafka advertises its external listener as localhost:30092; a port-forward makes that true here.
    show "$(quote "${kc[@]}" -n "$ns" port-forward svc/kafka-external 30092:9094) >/dev/null &"
    if ! $dry; then
      "${kc[@]}" -n "$ns" port-forward svc/kafka-external 30092:9094 >/dev/null &
      port_forward_pid=$!
    fi
    await 30 1 "(: </dev/tcp/127.0.0.1/30092) 2>/dev/null" "kubectl port-forward to Kafka did not open 127.0.0.1:30092"
  fi
  local chaos=(bash e2e/chaos.sh --sink kafka --records "$records" --kills "$kills" --bootstrap localhost:30092)
  show "$(quote "${chaos[@]}") | tail -1   # must print: lost=0 duplicated=0 state_equal=true"
  if ! $dry; then
    local line
    line=$("${chaos[@]}" | tail -1) || true
    echo "$line"
    [ "$line" = "lost=0 duplicated=0 state_equal=true" ] || fail "exactly-once kill test: $line"
  fi
  if [ "$mode" = existing ]; then
    show "kill \$port_forward_pid   # the port-forward above"
    if ! $dry; then kill "$port_forward_pid" 2>/dev/null || true; port_forward_pid=""; fi
  fi
}

step_uninstall() {
  header uninstall "jobs, chart, namespace $ns (the README's order)"
  run "${kc[@]}" -n "$ns" delete sj --all --wait=true --timeout=300s
  run "${hc[@]}" uninstall "$RELEASE" -n "$operator_ns"
  run "${kc[@]}" delete namespace "$ns" --wait=true --timeout=300s
  # The CRD goes only when no job is left anywhere: deleting it deletes every job.
  run_sh "if [ -z $(cmdsub "${kc[@]}" get sj -A -o name) ]; then $(quote "${kc[@]}" delete crd streamingjobs.weir.dev); else echo 'StreamingJobs remain in other namespaces: the CRD stays'; fi"
}

# --- the plan -----------------------------------------------------------------------------------
if $dry; then
  echo "e2e/kind.sh --dry-run: the plan; nothing below runs"
fi
if [ "$mode" = kind ]; then
  echo "cluster: kind cluster $kind_name"
else
  echo "cluster: the current context of KUBECONFIG=${KUBECONFIG:-(unset: ~/.kube/config)}"
fi
echo "images: operator $operator_image, worker $worker_image"
echo "chart: $CHART, release $RELEASE in $operator_ns; jobs and Kafka in $ns"
echo "steps: $selected"

for s in $selected; do
  case "$s" in
    # Run by on_exit, so that a failure deletes the cluster too; a dry run shows it here.
    delete-cluster)
      if $dry; then header delete-cluster "kind delete cluster $kind_name (at exit, after a failure too)"; run kind delete cluster --name "$kind_name"; fi ;;
    *) "step_${s//-/_}" ;;
  esac
done

if $dry; then
  printf '\ndry run: nothing was run\n'
else
  printf '\n==== e2e/kind.sh: passed (%s) ====\n' "$selected"
fi
