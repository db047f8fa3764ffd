#!/usr/bin/env bash
# The real-cluster suite: Weir on a kind cluster with a one-node Apache Kafka, end to end.
#
#   e2e/kind.sh [--keep] [--cluster NAME] [--records N] [--kills K]
#
# Needs docker (with a running engine), kind, kubectl and helm on PATH. It builds the operator
# and worker images from the Dockerfile, creates a kind cluster (unless one named NAME exists),
# loads the images, starts Kafka (apache/kafka, KRaft, one node) in namespace weir-e2e, installs
# the chart, applies the examples pointed at that Kafka, writes lines to their input, and checks
# what users see: each job Ready, offsets committed and lag falling to zero in `kubectl get sj`
# and its status, a worker killed and the job recording the restart, suspend scaling to zero.
# Last, the exactly-once kill test runs against this Kafka (reached from the host through a
# NodePort mapped by the kind cluster), where aborted transactions are hidden from
# read_committed readers as they must be: e2e/chaos.sh --sink kafka --records N --kills K.
# It deletes the cluster at the end unless --keep. The development machines of this project have
# no Docker engine, so this suite runs in the user's CI or on a laptop; tests/ covers what can
# run without a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=weir-e2e
keep=false
records=1000000
kills=20
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=true; shift ;;
    --cluster) cluster="$2"; shift 2 ;;
    --records) records="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e/kind.sh needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e/kind.sh needs a running Docker engine" >&2; exit 2; }

ns=weir-e2e
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/weir/Chart.yaml)
operator_image="ghcr.io/weir-dev/weir-operator:$version"
worker_image="ghcr.io/weir-dev/weir-worker:$version"
step() { printf '\n==== %s ====\n' "$*"; }
fail() { echo "FAIL: $*" >&2; kubectl get sj -A -o wide >&2 || true; exit 1; }

step "images"
docker build --target operator -t "$operator_image" .
docker build --target worker -t "$worker_image" .

step "cluster $cluster"
# Kafka's external listener is a NodePort the host reaches on localhost:30092.
kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster" --wait 120s --config - <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - {containerPort: 30092, hostPort: 30092, listenAddress: "127.0.0.1"}
YAML
$keep || trap 'kind delete cluster --name "$cluster"' EXIT
kind load docker-image --name "$cluster" "$operator_image" "$worker_image"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -

step "Kafka (KRaft, one node)"
kubectl -n "$ns" apply -f - <<'YAML'
apiVersion: apps/v1
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
            - {name: KAFKA_NODE_ID, value: "1"}
            - {name: KAFKA_PROCESS_ROLES, value: "broker,controller"}
            - {name: KAFKA_LISTENERS, value: "PLAINTEXT://:9092,CONTROLLER://:9093,EXTERNAL://:9094"}
            - {name: KAFKA_ADVERTISED_LISTENERS, value: "PLAINTEXT://kafka.weir-e2e.svc:9092,EXTERNAL://localhost:30092"}
            - {name: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP, value: "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,EXTERNAL:PLAINTEXT"}
            - {name: KAFKA_INTER_BROKER_LISTENER_NAME, value: "PLAINTEXT"}
            - {name: KAFKA_CONTROLLER_LISTENER_NAMES, value: "CONTROLLER"}
            - {name: KAFKA_CONTROLLER_QUORUM_VOTERS, value: "1@localhost:9093"}
            - {name: KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR, value: "1"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR, value: "1"}
            - {name: KAFKA_TRANSACTION_STATE_LOG_MIN_ISR, value: "1"}
            - {name: KAFKA_NUM_PARTITIONS, value: "4"}
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
  type: NodePort
  selector: {app: kafka}
  ports: [{port: 9094, targetPort: 9094, nodePort: 30092}]
YAML
kubectl -n "$ns" rollout status statefulset/kafka --timeout=300s
kafka() { kubectl -n "$ns" exec kafka-0 -- "$@"; }
for t in lines:4 word-counts:4 word-totals:4 page-views:4 page-view-counts:4 lines-dlq:1 page-views-dlq:1; do
  kafka /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 --create --if-not-exists \
    --topic "${t%%:*}" --partitions "${t##*:}"
done

step "chart"
helm upgrade --install weir charts/weir -n weir-system --create-namespace \
  --set watchNamespaces="{$ns}" --wait --timeout 300s

step "examples"
for f in examples/*.yaml; do
  sed 's/bootstrapServers: kafka:9092/bootstrapServers: kafka.weir-e2e.svc:9092/' "$f" \
    | kubectl -n "$ns" apply -f -
done
# Lines for the word jobs, page views for page-views.
kafka bash -c 'for i in $(seq 2000); do echo "the quick brown fox $i"; done \
  | /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic lines'
kafka bash -c 'for i in $(seq 2000); do echo "{\"page\": \"/p$((i % 7))\"}"; done \
  | /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic page-views'

step "each job Ready, lag drained"
for job in $(kubectl -n "$ns" get sj -o name); do
  kubectl -n "$ns" wait --for=condition=Ready "$job" --timeout=300s || fail "$job not Ready"
done
deadline=$((SECONDS + 300))
until [ "$(kubectl -n "$ns" get sj -o jsonpath='{range .items[*]}{.status.lag.records}{"\n"}{end}' | sort -u)" = "0" ]; do
  [ $SECONDS -lt $deadline ] || fail "lag did not reach 0"
  sleep 5
done
kubectl -n "$ns" get sj -o wide
committed=$(kubectl -n "$ns" get sj word-count -o jsonpath='{.status.offsets.partitions[*].committed}')
[ -n "$committed" ] || fail "word-count shows no committed offsets"

step "a killed worker is recorded and resumes"
kubectl -n "$ns" delete pod word-count-0 --grace-period=0 --force
kubectl -n "$ns" wait --for=condition=Ready sj/word-count --timeout=300s || fail "word-count did not recover"

step "suspend scales to zero"
kubectl -n "$ns" patch sj word-count --type merge -p '{"spec":{"suspend":true}}'
deadline=$((SECONDS + 120))
until [ "$(kubectl -n "$ns" get sj word-count -o jsonpath='{.status.phase}')" = "Suspended" ]; do
  [ $SECONDS -lt $deadline ] || fail "word-count not Suspended"
  sleep 3
done
[ "$(kubectl -n "$ns" get statefulset word-count -o jsonpath='{.spec.replicas}')" = "0" ] || fail "suspended workers still running"
kubectl -n "$ns" patch sj word-count --type merge -p '{"spec":{"suspend":false}}'

step "exactly-once kill test against this Kafka: $records records, $kills kills"
line=$(bash e2e/chaos.sh --sink kafka --records "$records" --kills "$kills" --bootstrap localhost:30092 | tail -1) || true
echo "$line"
[ "$line" = "lost=0 duplicated=0 state_equal=true" ] || fail "exactly-once kill test: $line"

step "kind suite passed"
