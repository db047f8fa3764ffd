//! Kafka credentials against a real broker: what librdkafka's mock cluster can show, and that a
//! worker given a password leaves no trace of it in its logs, `/progress`, `/metrics` or its
//! termination message.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

const PASSWORD: &str = "pw-7Qx9-never-print-me";

/// The gap this probe states: librdkafka's mock cluster implements no SASL (no SaslHandshake
/// or SaslAuthenticate handler in 2.12), so a SASL client cannot even fetch metadata from it,
/// while the same client without SASL can. SASL PLAIN and SCRAM logins are therefore not
/// tested against a broker here; what is tested is that the settings reach librdkafka (unit
/// tests in `credentials`) and that the password never leaves it (below). When this probe
/// fails, the mock has learnt SASL: test a real login against it.
#[test]
fn probe_the_mock_cluster_has_no_sasl() {
    let broker = Broker::in_process();
    broker.create_topic("t", 1);
    let plain: BaseConsumer = broker.client().create().expect("consumer");
    assert!(
        plain
            .fetch_metadata(Some("t"), Duration::from_secs(10))
            .is_ok(),
        "without SASL the mock answers"
    );
    let sasl: BaseConsumer = broker
        .client()
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", "weir")
        .set("sasl.password", PASSWORD)
        .create()
        .expect("consumer");
    assert!(
        sasl.fetch_metadata(Some("t"), Duration::from_secs(5))
            .is_err(),
        "the mock cluster answered a SASL client: it supports SASL now"
    );
}

#[test]
fn a_password_leaves_no_trace_in_logs_progress_metrics_or_errors() {
    let broker = mock_process_with(&[("in", 2)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("kafka.env");
    std::fs::write(
        &creds,
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=weir\n\
             sasl.password={PASSWORD}\n"
        ),
    )
    .expect("write credentials");
    let job = job_file(
        dir.path(),
        &format!(
            r#"
batchInterval: 300ms
source:
  kafka:
    bootstrapServers: {}
    topics: [in]
    credentialsSecret: kafka-client
pipeline:
  - {{id: keep, filter: "true"}}
sink: {{stdout: {{}}}}
"#,
            broker.bootstrap()
        ),
    );
    let termination = dir.path().join("termination-log");
    let mut w = WorkerProc::spawn(
        &job,
        &[
            "--kafka-credentials",
            creds.to_str().expect("utf-8 path"),
            "--termination-log",
            termination.to_str().expect("utf-8 path"),
            "--log-level",
            "debug",
        ],
    );
    assert!(
        w.wait_log("Kafka credentials loaded", Duration::from_secs(30))
            .is_some_and(|l| l.contains("sasl.password")),
        "the worker says which settings it loaded: {}",
        w.all_logs()
    );
    // The mock broker has no SASL (see the probe above), so the worker fails to reach it: the
    // path where errors, and whatever they quote, get logged.
    eventually(
        "the worker to report that Kafka cannot be reached",
        Duration::from_secs(60),
        || {
            w.count_logs("Kafka client error") > 0
                || w.count_logs("\"level\":\"WARN\"") > 0
                || w.child.try_wait().ok().flatten().is_some()
        },
    );
    let progress = w
        .get("/progress?last=100")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let metrics = w.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    if w.child.try_wait().ok().flatten().is_none() {
        w.signal("TERM");
    }
    w.wait_exit(Duration::from_secs(30))
        .expect("the worker exits");
    let logs = w.all_logs();
    let termination = std::fs::read_to_string(&termination).unwrap_or_default();
    for (what, text) in [
        ("logs", &logs),
        ("/progress", &progress),
        ("/metrics", &metrics),
        ("the termination message", &termination),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the password is in {what}:\n{text}"
        );
    }
    assert!(
        logs.contains("weir"),
        "the logs are there to search: {logs}"
    );
}

#[test]
fn a_credentials_secret_without_credentials_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(
        dir.path(),
        r#"
batchInterval: 1s
source: {kafka: {bootstrapServers: "127.0.0.1:1", topics: [in], credentialsSecret: kafka-client}}
sink: {stdout: {}}
"#,
    );
    let out = std::process::Command::new(WORKER)
        .arg("run")
        .arg(&job)
        .env_remove("WEIR_KAFKA_CREDENTIALS")
        .output()
        .expect("run worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("credentialsSecret is \"kafka-client\" but no credentials were given")
            && err.contains("--kafka-credentials"),
        "{err}"
    );
}
