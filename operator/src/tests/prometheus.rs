//! The shipped dashboard against a real Prometheus: Debian's `prometheus` scrapes a live
//! worker process (the embedded word count) and a live operator process (the operator binary
//! reconciling that job against the scripted API, served on loopback, and reading the
//! worker's Kafka: the mock cluster the embedded worker hosts), and every PromQL expression of
//! `charts/weir/dashboards/weir.json` must return series with plausible values. The
//! expressions are read out of the JSON, so a new panel is checked as soon as it exists.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_testkit::Killed;

use super::kubectl::kubeconfig;
use crate::fixtures::{self, Caller};
use crate::tests::wc::{free_port, operator_binary, worker_binary, PODS};

/// What the dashboard's `$namespace` and `$job` select, and what the scrape config gives the
/// worker's series: the labels the chart's PodMonitor adds (`job` from the pod's
/// `weir.dev/job` label through `jobLabel`, `namespace` and `pod` from the pod).
const NAMESPACE: &str = "default";
const JOB: &str = "word-count";
const POD: &str = "word-count-0";
/// How long the test waits for every expression to have series.
const DEADLINE: Duration = Duration::from_secs(90);

/// One HTTP/1.0 GET; `None` while nothing answers yet. The body of any status.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// `s` as a URL query value.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every target's `expr` of every panel (rows' panels too), with the panel's title.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"].as_array().map_or(&[], Vec::as_slice),
        &mut out,
    );
    out
}

/// `expr` with the dashboard's template variables replaced as Grafana would with this test's
/// job selected; Grafana's own interval variables as for a 1 s scrape interval. A variable
/// the test does not know fails the test, so a new one is given a value here.
fn substituted(expr: &str, dashboard: &Value) -> String {
    let mut out = expr.to_string();
    let value = |name: &str| match name {
        "namespace" => NAMESPACE,
        "job" => JOB,
        "datasource" => "prometheus",
        other => panic!("the dashboard's variable ${other} has no value in this test"),
    };
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().expect("a variable's name");
        for form in [format!("${{{name}}}"), format!("${name}")] {
            out = out.replace(&form, value(name));
        }
    }
    for (grafana, value) in [
        ("$__rate_interval", "4s"),
        ("$__interval", "1s"),
        ("$__range", "5m"),
    ] {
        out = out.replace(grafana, value);
    }
    assert!(!out.contains('$'), "a variable is left in {out}");
    out
}

/// The embedded worker's bootstrap address, from the line its log says it at start.
async fn bootstrap_of(log: &Path) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(b) = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("bootstrap="))
        {
            return b.to_string();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the worker never said its bootstrap address:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The samples `expr` returns now: each series' labels and value.
async fn query(prometheus: &str, expr: &str) -> Result<Vec<(Value, f64)>, String> {
    let path = format!("/api/v1/query?query={}", percent_encoded(expr));
    let (code, body) = get(prometheus, &path)
        .await
        .ok_or_else(|| "Prometheus does not answer".to_string())?;
    let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if code != 200 || answer["status"] != "success" {
        return Err(format!("{code}: {body}"));
    }
    let data = &answer["data"];
    let samples: Vec<(Value, &Value)> = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| (s["metric"].clone(), &s["value"][1]))
            .collect(),
        Some("scalar") => vec![(json!({}), &data["result"][1])],
        other => return Err(format!("an answer of type {other:?}: {body}")),
    };
    samples
        .into_iter()
        .map(|(labels, v)| {
            // Prometheus writes values as strings: "NaN" and "+Inf" included.
            let v = v.as_str().and_then(|s| s.parse::<f64>().ok());
            v.map(|v| (labels.clone(), v))
                .ok_or_else(|| format!("a value that is no number in {body}"))
        })
        .collect()
}

fn prometheus_config(operator: &str, worker: &str) -> String {
    // The operator's target honours its series' own `job` and `namespace` (the chart's
    // ServiceMonitor sets honorLabels); the worker's are given what the PodMonitor adds.
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: weir-operator\n  honor_labels: true\n  static_configs:\n\
         \x20 - targets: ['{operator}']\n\
         - job_name: weir-workers\n  static_configs:\n\
         \x20 - targets: ['{worker}']\n\
         \x20   labels: {{job: {JOB}, namespace: {NAMESPACE}, pod: {POD}}}\n"
    )
}

/// Why `got` is not what a dashboard panel should show, if it is not: no series, a series
/// of another job, or a value that is not finite or is below zero (every figure the dashboard
/// shows is a count, a rate, a lag, a duration, an age or a ratio).
fn implausible(expr: &str, got: &Result<Vec<(Value, f64)>, String>) -> Option<String> {
    let samples = match got {
        Err(e) => return Some(e.clone()),
        Ok(s) if s.is_empty() => return Some("no series".into()),
        Ok(s) => s,
    };
    samples.iter().find_map(|(labels, v)| {
        let other_job = expr.contains("$job")
            && (labels.get("job").is_some_and(|j| j != JOB)
                || labels.get("namespace").is_some_and(|n| n != NAMESPACE));
        (other_job || !v.is_finite() || *v < 0.0).then(|| format!("{v} for {labels}"))
    })
}

#[tokio::test]
async fn every_dashboard_expression_has_plausible_series_in_a_real_prometheus() {
    let Some(prometheus_bin) = weir_testkit::tools::prometheus() else {
        return;
    };
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/weir/dashboards/weir.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let expressions: Vec<(String, String, String)> = dashboard_expressions(&dashboard)
        .into_iter()
        .map(|(title, expr)| {
            let query = substituted(&expr, &dashboard);
            (title, expr, query)
        })
        .collect();
    assert!(expressions.len() >= 10, "{expressions:?}");
    assert_eq!(
        expressions.len(),
        text.matches("\"expr\"").count(),
        "every expression of the dashboard is found, wherever a panel keeps it"
    );
    let dir = tempfile::tempdir().unwrap();

    // A live worker: the embedded word count, which writes sample lines (a few malformed, for
    // the dead letters) to its own mock cluster and runs a batch every 2 s.
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let worker_log = dir.path().join("worker.log");
    let _worker = tokio::process::Command::new(worker_binary())
        .arg("run")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/word-count.yaml"
        ))
        .args(["--embedded", "--http-addr", &worker_addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&worker_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker");
    let bootstrap = bootstrap_of(&worker_log).await;

    // A live operator reconciling the same job against the scripted API, with the job's
    // brokers the worker's mock cluster, so its figures are Kafka's own. The workers'
    // `/progress` is where a pod's would be (the pod's DNS name), which does not resolve
    // here: the job is Degraded (WorkersUnreachable), which no panel reads.
    let (_client, server) = fixtures::start();
    let api = server.listen(Caller::Operator).await;
    let example: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/word-count.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut spec: Value = serde_json::to_value(&example["spec"]).unwrap();
    spec["source"]["kafka"]["bootstrapServers"] = json!(bootstrap);
    spec["workers"] = json!({"partitionsPerWorker": 4, "min": 1, "max": 1});
    server.insert(
        "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs",
        fixtures::job(JOB, 1, spec),
    );
    server.insert(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": POD, "namespace": NAMESPACE, "uid": "pod-0",
                            "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": JOB}},
               "status": {"containerStatuses": [{
                   "name": "worker", "image": "weir", "imageID": "", "ready": true,
                   "restartCount": 0}]}}),
    );
    server.insert(
        &format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets"),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": JOB, "namespace": NAMESPACE},
               "spec": {"replicas": 1}, "status": {"replicas": 1, "readyReplicas": 1}}),
    );
    let operator_addr = format!("127.0.0.1:{}", free_port());
    let operator_log = dir.path().join("operator.log");
    let operator_out = std::fs::File::create(&operator_log).unwrap();
    let _operator = tokio::process::Command::new(operator_binary())
        .args([
            "run",
            "--no-leader-election",
            "--metrics-addr",
            &operator_addr,
        ])
        .args(["--observe-every", "1s", "--progress-timeout", "500ms"])
        // The mock cluster's offsets are committed by the worker's batches; not about stalls.
        .args(["--stall-batches", "1000000"])
        .env("KUBECONFIG", kubeconfig(dir.path(), api))
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(operator_out.try_clone().unwrap())
        .stderr(operator_out)
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator");

    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&operator_addr, &worker_addr)).unwrap();
    let prometheus_addr = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("prometheus.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let _prometheus = Killed::new(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start prometheus"),
    );

    // Until every expression has a series and every value is plausible, or the deadline:
    // then name the expressions that do not. (A quantile is NaN until two scrapes span a
    // batch: the rate of every bucket is 0 before.)
    let started = Instant::now();
    let answers = loop {
        let mut answers = Vec::new();
        for (title, expr, q) in &expressions {
            let got = query(&prometheus_addr, q).await;
            answers.push((title, expr, got));
        }
        let wrong: Vec<String> = answers
            .iter()
            .filter_map(|(title, expr, got)| {
                implausible(expr, got).map(|why| format!("{title}: {expr}: {why}"))
            })
            .collect();
        if wrong.is_empty() {
            break answers;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "after {DEADLINE:?} these dashboard expressions have no series or implausible \
             values:\n{}\n\nprometheus said:\n{}\nthe operator said:\n{}\nthe worker's \
             /metrics:\n{:?}\nthe operator's /metrics:\n{:?}",
            wrong.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(&operator_log).unwrap_or_default(),
            get(&worker_addr, "/metrics").await,
            get(&operator_addr, "/metrics").await,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for (title, expr, got) in &answers {
        eprintln!("{title}: {expr}\n  -> {got:?}");
    }

    // And what the test knows: each of the worker's stages reads records, and the operator's
    // figures are Kafka's and the scripted StatefulSet's.
    let values = |needle: &str| -> Vec<f64> {
        answers
            .iter()
            .filter(|(_, expr, _)| expr.contains(needle))
            .flat_map(|(_, _, got)| got.as_ref().unwrap().iter().map(|(_, v)| *v))
            .collect()
    };
    let records_in = values("rate(weir_records_in_total");
    assert!(
        records_in.len() >= 2 && records_in.iter().all(|v| *v > 0.0),
        "the input stage and the stage after the keyBy: {records_in:?}"
    );
    // The operator process asked the API only what the chart's RBAC rules grant.
    assert_eq!(server.forbidden(), Vec::<String>::new());
    // The operator process's phase gauge: one phase at a time.
    assert_eq!(values("weir_job_phase"), [1.0]);
    let lag = values("weir_job_lag_records");
    assert!(lag.len() == 1 && lag[0] >= 0.0, "{lag:?}");
    // The operator read the committed offsets of the worker's group from the mock cluster,
    // which its batches move: some status write says how far they got.
    let committed = server.requests().iter().any(|r| {
        r.path.ends_with("/streamingjobs/word-count/status")
            && r.body["status"]["offsets"]["partitions"]
                .as_array()
                .is_some_and(|o| {
                    o.iter()
                        .any(|p| p["committed"].as_i64().is_some_and(|c| c > 0))
                })
    });
    assert!(
        committed,
        "no status with a committed offset:\n{}",
        std::fs::read_to_string(&operator_log).unwrap_or_default()
    );
    assert_eq!(
        values("sum by (namespace, job) (weir_job_workers_desired"),
        [1.0]
    );
    assert_eq!(
        values("sum by (namespace, job) (weir_job_workers_ready"),
        [1.0]
    );
    assert_eq!(
        values("min by (namespace, job, stage, pod) (weir_source_up"),
        [1.0, 1.0]
    );
}
