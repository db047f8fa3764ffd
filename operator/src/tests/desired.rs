//! PURE: the children built from a job.

use k8s_openapi::api::core::v1::Container;
use serde_json::json;
use weir_contract::spec::JobSpec;

use crate::crd::StreamingJob;
use crate::desired::{children, Children, Defaults, CONFIG_HASH_ANNOTATION, JOB_FILE_KEY};
use crate::fixtures;

fn job(spec: serde_json::Value) -> StreamingJob {
    serde_json::from_value(fixtures::job("wc", 1, spec)).unwrap()
}

fn build(spec: serde_json::Value) -> Children {
    children(&job(spec), &Defaults::default(), None).unwrap()
}

fn worker(c: &Children) -> Container {
    c.stateful_set
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .clone()
}

#[test]
fn config_map_holds_the_bare_job_spec() {
    let c = build(fixtures::spec());
    let yaml = &c.config_map.data.as_ref().unwrap()[JOB_FILE_KEY];
    let parsed: JobSpec = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(parsed, job(fixtures::spec()).spec.job);
    assert!(
        !yaml.contains("workers"),
        "Kubernetes-only fields stay out of the worker's file"
    );
    weir_contract::spec::parse_job(yaml, "wc").expect("the worker accepts its file");
}

#[test]
fn every_child_is_owned_by_the_job_and_labelled() {
    let c = build(fixtures::spec());
    let metas = [
        &c.config_map.metadata,
        &c.service.metadata,
        &c.stateful_set.metadata,
        &c.pdb.metadata,
    ];
    for m in metas {
        assert_eq!(m.name.as_deref(), Some("wc"));
        assert_eq!(m.namespace.as_deref(), Some("default"));
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StreamingJob", "wc", "uid-wc")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "weir-worker");
        assert_eq!(labels["app.kubernetes.io/instance"], "wc");
        assert_eq!(labels["weir.dev/job"], "wc");
    }
}

#[test]
fn statefulset_runs_the_workers_safely() {
    let c = build(fixtures::spec());
    let sts = c.stateful_set.spec.clone().unwrap();
    assert_eq!(
        sts.replicas,
        Some(2),
        "workers.min while partitions are unknown"
    );
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(sts.service_name.as_deref(), Some("wc"));
    let pod = sts.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    let w = worker(&c);
    assert_eq!(w.name, "worker");
    assert_eq!(w.image.as_deref(), Some(Defaults::default().image.as_str()));
    assert_eq!(
        w.args,
        Some(vec!["run".to_string(), "/etc/weir/job.yaml".into()])
    );
    let env = serde_json::to_value(w.env.unwrap()).unwrap();
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "WEIR_WORKERS", "value": "2"})));
    assert!(env.as_array().unwrap().contains(&json!({"name": "WEIR_WORKER_ORDINAL",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}})));
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "WEIR_HTTP_ADDR", "value": "0.0.0.0:8080"})));
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "WEIR_LOG_FORMAT", "value": "text"})),
        "workers log as the chart's logFormat says: {env}"
    );
    let sc = w.security_context.unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert_eq!(
        w.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    // Ready means the brokers answer; live only that the batch loop goes on, so a broker
    // outage makes workers unready, not restarted.
    let path = |p: Option<k8s_openapi::api::core::v1::Probe>| p.unwrap().http_get.unwrap().path;
    assert_eq!(path(w.readiness_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(w.liveness_probe).as_deref(), Some("/livez"));
    let grace = c
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .termination_grace_period_seconds
        .unwrap();
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "WEIR_SHUTDOWN_TIMEOUT", "value": format!("{}s", grace - 5)})));
    assert_eq!(w.ports.unwrap()[0].container_port, 8080);
    let mount = &w.volume_mounts.unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/weir", Some(true))
    );
    assert!(
        w.resources.unwrap().requests.is_some(),
        "safe default resources"
    );
}

#[test]
fn service_is_headless_and_pdb_allows_one_disruption() {
    let c = build(fixtures::spec());
    let svc = c.service.spec.unwrap();
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    let port = &svc.ports.unwrap()[0];
    assert_eq!((port.port, port.name.as_deref()), (8080, Some("http")));
    let pdb = c.pdb.spec.unwrap();
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

#[test]
fn spec_change_changes_the_pod_template_hash_and_nothing_else_does() {
    let a = build(fixtures::spec());
    let again = build(fixtures::spec());
    assert_eq!(a, again, "building is deterministic");
    let mut changed = fixtures::spec();
    changed["pipeline"][0]["flatMap"] = json!("value.split(',')");
    let b = build(changed);
    let hash = |c: &Children| {
        c.stateful_set
            .spec
            .clone()
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&a), hash(&b));
}

#[test]
fn job_settings_reach_the_pods() {
    let mut spec = fixtures::spec();
    spec["image"] = json!("registry.example/weir-worker:dev");
    spec["imagePullPolicy"] = json!("Always");
    spec["batchInterval"] = json!("1m");
    spec["workers"]["replicas"] = json!(4);
    spec["resources"] = json!({"limits": {"memory": "2Gi"}});
    spec["podTemplate"] = json!({
        "nodeSelector": {"pool": "streaming"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "labels": {"team": "data", "weir.dev/job": "hijack"},
        "serviceAccountName": "kafka-reader"
    });
    let c = build(spec);
    let sts = c.stateful_set.spec.clone().unwrap();
    assert_eq!(sts.replicas, Some(4));
    let meta = sts.template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["team"], "data");
    assert_eq!(
        labels["weir.dev/job"], "wc",
        "selector labels cannot be overridden"
    );
    let pod = sts.template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["pool"], "streaming");
    assert_eq!(pod.tolerations.unwrap().len(), 1);
    assert_eq!(pod.service_account_name.as_deref(), Some("kafka-reader"));
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(195),
        "3 batches of 1m + 15s"
    );
    let w = &pod.containers[0];
    assert_eq!(w.image.as_deref(), Some("registry.example/weir-worker:dev"));
    assert_eq!(w.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(
        w.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "2Gi"
    );
}

#[test]
fn suspended_job_scales_to_zero() {
    let mut spec = fixtures::spec();
    spec["suspend"] = json!(true);
    let c = build(spec);
    assert_eq!(c.stateful_set.spec.unwrap().replicas, Some(0));
    assert_eq!(c.workers.1, "suspended");
}

#[test]
fn a_job_without_uid_is_refused() {
    let mut j = job(fixtures::spec());
    j.metadata.uid = None;
    assert!(children(&j, &Defaults::default(), None).is_err());
}

#[test]
fn a_job_with_snapshots_keeps_them_in_the_pods_writable_scratch_volume() {
    let state_dir = |c: &Container| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == "WEIR_STATE_DIR")
            .and_then(|e| e.value.clone())
    };
    assert_eq!(state_dir(&worker(&build(fixtures::spec()))), None);
    let mut spec = fixtures::spec();
    spec["checkpoint"] = serde_json::json!({"snapshotInterval": "1m"});
    let c = worker(&build(spec));
    let dir = state_dir(&c).expect("WEIR_STATE_DIR");
    // Under a writable mount: the root filesystem is read-only.
    assert!(c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| dir.starts_with(&m.mount_path) && m.read_only != Some(true)));
}

#[test]
fn a_config_map_table_is_mounted_where_the_worker_reads_it() {
    let mut spec = fixtures::spec();
    spec["source"]["format"] = json!("json");
    let table = json!({"configMap": {"name": "blocked.users", "key": "list.txt"}});
    spec["pipeline"] = json!([
        {"id": "blocked", "join": {"table": table, "on": "value.user", "kind": "left"}},
        {"id": "again", "join": {"table": table}},
        {"id": "allowed", "filter": "table == null"}
    ]);
    let c = build(spec.clone());
    let pod = c.stateful_set.spec.clone().unwrap().template.spec.unwrap();
    let volumes: Vec<_> = pod
        .volumes
        .unwrap()
        .into_iter()
        .filter(|v| v.name.starts_with("table-"))
        .collect();
    assert_eq!(volumes.len(), 1, "one volume per ConfigMap");
    assert_eq!(
        volumes[0].config_map.as_ref().unwrap().name,
        "blocked.users"
    );
    let mount = worker(&c)
        .volume_mounts
        .unwrap()
        .into_iter()
        .find(|m| m.name == volumes[0].name)
        .expect("mounted");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees a change"
    );
    // The worker reads the key under the mount.
    let parsed: JobSpec = serde_json::from_value(spec).unwrap();
    let path = parsed.pipeline[0]
        .join
        .as_ref()
        .unwrap()
        .table
        .file_path()
        .unwrap();
    assert_eq!(
        path,
        std::path::Path::new(&mount.mount_path).join("list.txt")
    );
    // An Avro key schema from a ConfigMap is mounted the same way.
    let mut spec = fixtures::spec();
    spec["source"]["format"] = json!("avro");
    spec["source"]["avro"] = json!({
        "registry": {"url": "http://registry:8081"},
        "key": {"schema": {"configMap": {"name": "key-schemas", "key": "k.avsc"}}}
    });
    let c = build(spec);
    let pod = c.stateful_set.spec.clone().unwrap().template.spec.unwrap();
    assert!(
        pod.volumes.unwrap().iter().any(|v| v
            .config_map
            .as_ref()
            .is_some_and(|m| m.name == "key-schemas")),
        "the key schema's ConfigMap is mounted"
    );
}
