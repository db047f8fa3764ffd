//! The real `kubectl` against the scripted API over loopback HTTP, with the real Controller
//! running the job it applies: `kubectl wait --for=condition=Ready` and `--for=jsonpath` as the
//! README documents them, `kubectl get sj` with its printer columns, and `kubectl describe sj`
//! with the conditions' reasons and the Events of their transitions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Settings};
use crate::controller;
use crate::fixtures::{self, ApiServer, Caller, DataObserver};
use crate::metrics::Metrics;

const JOB: &str = "word-count";
const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
const JOBS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs";
/// How long one kubectl call may take before the test gives up on it.
const CALL: Duration = Duration::from_secs(60);

/// A kubeconfig in `dir` whose one context is the scripted server at `addr`, namespace
/// default, over plain HTTP (no credentials: the listener decides who the caller is).
pub(super) fn kubeconfig(dir: &Path, addr: std::net::SocketAddr) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", addr.port()));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: scripted, cluster: {{server: 'http://{addr}'}}}}]\n\
             users: [{{name: admin, user: {{}}}}]\n\
             contexts: [{{name: scripted, context: {{cluster: scripted, user: admin, namespace: default}}}}]\n\
             current-context: scripted\n"
        ),
    )
    .expect("write the kubeconfig");
    path
}

/// What one kubectl call said.
struct Said {
    ok: bool,
    stdout: String,
    stderr: String,
}

#[derive(Clone)]
struct Kubectl {
    bin: PathBuf,
    config: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Said {
        let out = tokio::time::timeout(
            CALL,
            tokio::process::Command::new(&self.bin)
                .args(args)
                .arg(format!("--cache-dir={}", self.home.join("cache").display()))
                .env("KUBECONFIG", &self.config)
                // Its discovery cache and config stay in the test's directory.
                .env("HOME", &self.home)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not return within {CALL:?}"))
        .expect("run kubectl");
        Said {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The README's `kubectl wait` commands for the job, split into arguments as a shell would
/// (they use single quotes only), with a shorter timeout.
fn readme_waits() -> Vec<Vec<String>> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Operating a job")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has an Operating a job section");
    section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubectl wait "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|a| {
                    let a = a.replace('\'', "");
                    if a.starts_with("--timeout=") {
                        "--timeout=30s".to_string()
                    } else {
                        a
                    }
                })
                .collect()
        })
        .collect()
}

/// Starts the controller on a scripted server served to an admin's kubectl on loopback.
async fn start(
    observer: Arc<DataObserver>,
) -> (
    ApiServer,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (client, server) = fixtures::start();
    let addr = server.listen(Caller::Admin).await;
    let settings = Settings {
        observe_every: Duration::from_millis(300),
        // The scripted offsets never move: this test is not about stalls.
        stall_batches: 1_000_000,
        ..Settings::default()
    };
    let ctx =
        Arc::new(Context::new(client, settings, Metrics::new().unwrap()).with_observer(observer));
    let token = CancellationToken::new();
    let run = tokio::spawn(controller::run(ctx, token.clone()));
    (server, addr, token, run)
}

fn manifest() -> String {
    let mut spec = fixtures::spec();
    spec["workers"] = json!({"partitionsPerWorker": 4, "min": 1, "max": 1});
    let job = json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamingJob",
                     "metadata": {"name": JOB}, "spec": spec});
    serde_yaml::to_string(&job).unwrap()
}

/// The requests kubectl made, for a failure's message.
fn seen(server: &ApiServer) -> String {
    server
        .requests()
        .iter()
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn kubectl_waits_gets_and_describes_a_job_as_the_readme_says() {
    let Some(bin) = weir_testkit::tools::kubectl() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The brokers cannot be reached at first: Progressing is Unknown, with a Warning Event.
    let observer = DataObserver::new(None);
    let (server, addr, token, run) = start(observer.clone()).await;
    let kubectl = Kubectl {
        bin,
        config: kubeconfig(dir.path(), addr),
        home: dir.path().to_path_buf(),
    };

    let file = dir.path().join("job.yaml");
    std::fs::write(&file, manifest()).unwrap();
    // The scripted server has no OpenAPI documents, which kubectl's validation downloads
    // (a real server serves them); the manifest's check against the CRD's schema is
    // tests::crd's.
    let applied = kubectl
        .run(&["apply", "--validate=false", "-f", file.to_str().unwrap()])
        .await;
    assert!(
        applied.ok
            && applied
                .stdout
                .contains("streamingjob.weir.dev/word-count created"),
        "{}\n{}\nrequests:\n{}",
        applied.stdout,
        applied.stderr,
        seen(&server)
    );

    // Not Ready while no worker is: kubectl's own timeout says so, and exits non-zero.
    let waited = kubectl
        .run(&[
            "wait",
            "--for=condition=Ready",
            &format!("sj/{JOB}"),
            "--timeout=3s",
        ])
        .await;
    assert!(!waited.ok, "{}", waited.stdout);
    assert!(
        waited
            .stderr
            .contains("timed out waiting for the condition on streamingjobs/word-count"),
        "{}\nrequests:\n{}",
        waited.stderr,
        seen(&server)
    );
    let described = kubectl.run(&["describe", "sj", JOB]).await;
    assert!(described.ok, "{}", described.stderr);
    for line in [
        "Reason:                WorkersNotReady",
        "Message:               0/1 workers ready",
        "Reason:                KafkaUnreachable",
    ] {
        assert!(
            squeeze(&described.stdout).contains(&squeeze(line)),
            "{line} in\n{}",
            described.stdout
        );
    }
    assert!(
        described.stdout.contains("Warning  KafkaUnreachable"),
        "the Event of the outage in\n{}\nrequests:\n{}",
        described.stdout,
        seen(&server)
    );

    let waits = readme_waits();
    assert!(
        waits
            .iter()
            .any(|w| w.iter().any(|a| a == "--for=condition=Ready"))
            && waits
                .iter()
                .any(|w| w.iter().any(|a| a.starts_with("--for=jsonpath="))),
        "the README documents both waits: {waits:?}"
    );
    // kubectl waits for Ready from before the job is: it hears of the change through its
    // watch of the one job (a fieldSelector on the name).
    let watching = |r: &[fixtures::Recorded]| {
        r.iter()
            .filter(|x| {
                x.query.contains("watch=true")
                    && x.query.contains("fieldSelector=metadata.name%3Dword-count")
            })
            .count()
    };
    let watches_before = watching(&server.requests());
    let ready_wait = waits
        .iter()
        .find(|w| w.iter().any(|a| a == "--for=condition=Ready"))
        .cloned()
        .unwrap_or_default();
    let early = tokio::spawn({
        let kubectl = kubectl.clone();
        let args = ready_wait.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl.run(&args).await
        }
    });
    server
        .wait_for(CALL, |r| watching(r) > watches_before)
        .await;

    // The brokers answer, the worker's pod and StatefulSet are ready and its /progress
    // answers: the job runs.
    let now_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let mut kafka = fixtures::topic("lines", &[(0, 100, Some(40))]);
    kafka.partitions[0].next_timestamp = Some(now_ms - 30_000);
    kafka.read_at_millis = Some(now_ms);
    observer.set(Some(kafka));
    let p = Arc::new(weir_worker::progress::Progress::new(
        weir_worker::client::Identity {
            namespace: "default".into(),
            job: JOB.into(),
            ordinal: 0,
            workers: 1,
        },
        "weir.default.word-count".into(),
        Duration::from_secs(5),
    ));
    let mut batch = super::progress::batch(1, now_ms - 2000, 10, 40, 0);
    batch.batch_time = crate::fixtures::served_now();
    p.record(batch);
    let stop = CancellationToken::new();
    let (progress, served) = weir_worker::http::serve("127.0.0.1:0", p, stop.clone())
        .await
        .unwrap();
    observer.workers.lock().unwrap().push(progress.to_string());
    server.insert(
        "/api/v1/namespaces/default/pods",
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "word-count-0", "namespace": "default", "uid": "pod-0",
                            "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": JOB}},
               "status": {"containerStatuses": [{"name": "worker", "image": "weir", "imageID": "",
                                                 "ready": true, "restartCount": 0}]}}),
    );
    let mut sts = server
        .object(&format!("{STS}/{JOB}"))
        .expect("the controller applied the StatefulSet");
    sts["status"] = json!({"replicas": 1, "readyReplicas": 1});
    server.insert(STS, sts);

    let waited = early.await.unwrap();
    assert!(
        waited.ok
            && waited
                .stdout
                .contains("streamingjob.weir.dev/word-count condition met"),
        "kubectl {ready_wait:?}, started before the job was Ready: {}\n{}\nrequests:\n{}",
        waited.stdout,
        waited.stderr,
        seen(&server)
    );
    for args in &waits {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let waited = kubectl.run(&args).await;
        assert!(
            waited.ok
                && waited
                    .stdout
                    .contains("streamingjob.weir.dev/word-count condition met"),
            "kubectl {args:?}: {}\n{}\nstatus: {}\nrequests:\n{}",
            waited.stdout,
            waited.stderr,
            server
                .object(&format!("{JOBS}/{JOB}"))
                .unwrap_or(Value::Null)["status"],
            seen(&server)
        );
    }

    let got = kubectl.run(&["get", "sj"]).await;
    assert!(got.ok, "{}", got.stderr);
    let mut lines = got.stdout.lines();
    let header = squeeze(lines.next().unwrap_or_default());
    assert_eq!(
        header, "NAME PHASE PROGRESS WORKERS LAG LAG SECONDS BATCH LAG LAST BATCH AGE",
        "{}",
        got.stdout
    );
    // 60 records and 30 s behind; Progress is the Progressing condition's reason (whether
    // the scripted offsets advanced since the outage depends on when kubectl looks).
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        [row[0], row[1], row[3], row[4], row[5], row[6]],
        [JOB, "Running", "1", "60", "30", "0"],
        "{}",
        got.stdout
    );
    assert!(
        ["OffsetsAdvancing", "OffsetsNotAdvancing"].contains(&row[2]),
        "{}",
        got.stdout
    );
    let age = |a: &str| a.ends_with('s') && a[..a.len() - 1].parse::<u32>().is_ok();
    assert!(
        row.len() == 9 && age(row[7]) && age(row[8]),
        "{}",
        got.stdout
    );

    // -o wide adds the columns of priority 1: Desired, Watermark (empty: this job has no
    // event time) and Observed (an age).
    let wide = kubectl.run(&["get", "sj", "-o", "wide"]).await;
    assert!(wide.ok, "{}", wide.stderr);
    assert_eq!(
        squeeze(wide.stdout.lines().next().unwrap_or_default()),
        "NAME PHASE PROGRESS WORKERS DESIRED LAG LAG SECONDS BATCH LAG LAST BATCH WATERMARK OBSERVED AGE",
        "{}",
        wide.stdout
    );

    // What a real server refuses, this one refuses, in kubectl's words.
    let unknown = kubectl.run(&["get", "streamingjobz"]).await;
    assert!(
        !unknown.ok
            && unknown
                .stderr
                .contains("the server doesn't have a resource type \"streamingjobz\""),
        "{}",
        unknown.stderr
    );
    let raw = kubectl
        .run(&[
            "get",
            "--raw",
            "/apis/weir.dev/v1alpha1/namespaces/default/nope",
        ])
        .await;
    assert!(
        !raw.ok
            && raw
                .stderr
                .contains("the server could not find the requested resource"),
        "{}",
        raw.stderr
    );

    let described = kubectl.run(&["describe", "sj", JOB]).await;
    assert!(described.ok, "{}", described.stderr);
    let text = squeeze(&described.stdout);
    for line in [
        "Reason: WorkersReady",
        "Message: 1/1 workers ready",
        "Type: Ready",
        "Status: True",
        "Normal KafkaReachable",
        "Warning KafkaUnreachable",
    ] {
        assert!(text.contains(line), "{line} in\n{}", described.stdout);
    }

    token.cancel();
    run.await.unwrap();
    stop.cancel();
    served.await.unwrap();
}

/// `s` with each run of spaces as one, so column widths do not matter.
fn squeeze(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}
