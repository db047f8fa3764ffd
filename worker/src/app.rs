//! `weir-worker run`: wires the job file, the engine, the HTTP endpoints and signals.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::client::Identity;
use crate::credentials::Credentials;
use crate::embedded::Embedded;
use crate::engine::Options;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::spec::{load_job_file, JobFile, KafkaSource};

/// What `run` needs besides the job file.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub file: PathBuf,
    pub embedded: bool,
    pub max_batches: Option<u64>,
    pub ordinal: u32,
    pub workers: u32,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub bootstrap_servers: Option<String>,
    pub http_addr: String,
    pub print: Option<u32>,
    /// Kafka credentials: a directory of key files (a mounted Secret) or an env file.
    pub credentials: Option<PathBuf>,
    /// How long after SIGTERM the worker may take to finish its batch; past it, it exits
    /// without committing that batch (which runs again on restart). Below the pod's grace
    /// period, which the operator sets with it.
    pub shutdown_timeout: std::time::Duration,
    /// `--batch-bytes`: what one batch may hold, as a size (`64Mi`); `None` derives it from
    /// the memory limit.
    pub batch_bytes: Option<String>,
    /// `--batch-records`: records one batch may hold; `None` derives it from the memory limit.
    pub batch_records: Option<u64>,
}

/// Loads a job file and checks everything `run` checks before it connects: the spec and its
/// pipeline. `validate` and `run` share it, so whatever `run` would refuse before reading a
/// record, `validate` refuses too (both exit 2).
///
/// # Errors
/// [`Error::Load`] or [`Error::Pipeline`]: the job itself is wrong.
pub fn check_job(file: &std::path::Path) -> Result<crate::spec::JobFile> {
    let job = load_job_file(file)?;
    // Each stage as it runs: a repartition step ends one stage's pipeline and starts the next.
    for stage in crate::stages::split(&job) {
        crate::pipeline::Pipeline::compile(&stage.job.spec)?;
    }
    // Schemas, read and parsed (nothing is contacted: a sink registers its schema at start).
    let spec = &job.spec;
    let sink = spec.sink.kafka.as_ref();
    let settings =
        |field: &'static str| move |why: String| Error::Settings(format!("{field}: {why}"));
    for (field, avro) in [
        ("source.avro", spec.source.avro.as_ref()),
        ("sink.kafka.avro", sink.and_then(|k| k.avro.as_ref())),
    ] {
        if let Some(a) = avro {
            crate::avro::check(a).map_err(settings(field))?;
            if let Some(keys) = a.keys() {
                crate::avro::check(&keys).map_err(settings(field))?;
            }
        }
    }
    for (field, proto) in [
        ("source.protobuf", spec.source.protobuf.as_ref()),
        (
            "sink.kafka.protobuf",
            sink.and_then(|k| k.protobuf.as_ref()),
        ),
    ] {
        if let Some(p) = proto {
            crate::protobuf::ProtobufCodec::load_with_key(p).map_err(settings(field))?;
        }
    }
    Ok(job)
}

/// Whether an error is a refusal of the job or its flags (exit 2, as `validate`), rather than a
/// failure while running it (exit 1).
pub fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Load(_) | Error::Pipeline(_) | Error::Settings(_) | Error::Budget(_)
    )
}

/// Runs the job until SIGTERM/SIGINT (the batch in flight finishes and commits) or until
/// `max_batches`.
///
/// # Errors
/// An invalid job, or a fatal error of the engine.
pub async fn run(cfg: RunConfig) -> Result<u64> {
    if cfg.workers == 0 || cfg.ordinal >= cfg.workers {
        return Err(Error::Fatal(format!(
            "worker ordinal {} is not below the worker count {}; set WEIR_WORKER_ORDINAL to 0..WEIR_WORKERS-1",
            cfg.ordinal, cfg.workers
        )));
    }
    let mut job = check_job(&cfg.file)?;
    let limit = crate::memory::cgroup_limit();
    let (budget, budget_from) =
        crate::memory::resolve(cfg.batch_bytes.as_deref(), cfg.batch_records, limit)?;
    if let Some(n) = &cfg.name {
        job.name.clone_from(n);
    }
    if let Some(ns) = &cfg.namespace {
        job.namespace.clone_from(ns);
    }
    if let Some(b) = &cfg.bootstrap_servers {
        job.spec.source.kafka.bootstrap_servers.clone_from(b);
    }
    load_credentials(&mut job.spec.source.kafka, cfg.credentials.as_deref(), true)?;
    crate::client::check_settings(&job.spec.source.kafka)?;
    // The mock cluster lives as long as this function; it is not Send, so it stays here.
    let embedded = if cfg.embedded {
        Some(Embedded::start(&mut job)?)
    } else {
        None
    };

    let id = Identity {
        namespace: job.namespace.clone(),
        job: job.name.clone(),
        ordinal: cfg.ordinal,
        workers: cfg.workers,
    };
    let group = job.spec.group_id(&id.namespace, &id.job);
    let progress = Arc::new(Progress::new(
        id.clone(),
        group.clone(),
        job.spec.batch_interval.as_std(),
    ));
    let cancel = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let (addr, http) = crate::http::serve(&cfg.http_addr, progress.clone(), http_stop.clone())
        .await
        .map_err(|e| {
            Error::Fatal(format!(
                "cannot listen on {} ({e}); set --http-addr",
                cfg.http_addr
            ))
        })?;
    let page = format!("http://{addr}/");
    info!(job = %id.job, worker = id.ordinal, workers = id.workers, group = %group, page = %page, progress = %format!("http://{addr}/progress"), "worker starting");
    if embedded.is_some() {
        // The quick start's reader is at a terminal, not reading JSON logs; stderr keeps the
        // stdout sink's output clean.
        eprintln!("job page: {page}");
    }
    let signals = tokio::spawn(on_signal(cancel.clone()));

    info!(
        budget_bytes = budget.bytes,
        budget_records = budget.records,
        memory_limit = limit,
        from = ?budget_from,
        "what one batch may hold (all stages together)"
    );
    let print = cfg.print.or(embedded.as_ref().map(|_| 10));
    let opts = Options {
        max_batches: cfg.max_batches,
        budget,
    };
    let engine_cancel = cancel.clone();
    let engine = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut stages = crate::stages::connect(job, &id, print, progress, &engine_cancel)?;
        crate::stages::run(&mut stages, &opts, &engine_cancel)
    });
    // A batch may wait on a broker that stopped answering (a sink's flush, a commit): the
    // deadline keeps the exit within the pod's grace period whatever the broker does.
    let deadline = async {
        cancel.cancelled().await;
        tokio::time::sleep(cfg.shutdown_timeout).await;
    };
    let result = tokio::select! {
        r = engine => r.map_err(|e| Error::Fatal(format!("the engine thread failed: {e}")))?,
        () = deadline => Err(Error::Fatal(format!(
            "did not stop within {:?} of the stop signal (a broker or the sink does not answer); \
             exiting without committing the batch in flight, which runs again on restart",
            cfg.shutdown_timeout
        ))),
    };

    signals.abort();
    http_stop.cancel();
    let _ = http.await;
    drop(embedded);
    match result {
        Ok(n) => {
            info!(batches = n, "worker stopped");
            Ok(n)
        }
        // Asked to stop before the first batch: nothing is in flight, so this is a clean stop.
        Err(Error::Cancelled) => {
            info!("worker stopped while connecting");
            Ok(0)
        }
        Err(e) => {
            error!(error = %e, "worker failed");
            Err(e)
        }
    }
}

/// `weir-worker validate`: the job file as `run` loads it, the credentials when given, and the
/// Kafka client settings as this build of librdkafka takes them, so what `validate` accepts
/// `run` can start.
///
/// # Errors
/// An invalid job, unusable credentials, or client settings librdkafka refuses.
pub fn validate(file: &Path, credentials: Option<&Path>) -> Result<JobFile> {
    let mut job = check_job(file)?;
    load_credentials(&mut job.spec.source.kafka, credentials, false)?;
    crate::client::check_settings(&job.spec.source.kafka)?;
    Ok(job)
}

/// Reads the credentials into `kafka`. `required`: a job naming a credentialsSecret cannot run
/// without them (validate checks the rest of the job without).
fn load_credentials(kafka: &mut KafkaSource, path: Option<&Path>, required: bool) -> Result<()> {
    match (path, &kafka.credentials_secret) {
        (Some(path), _) => {
            kafka.credentials =
                Credentials::load(path).map_err(|e| Error::Settings(e.to_string()))?;
            info!(settings = ?kafka.credentials.setting_names().collect::<Vec<_>>(), "Kafka credentials loaded");
        }
        (None, Some(secret)) if required => {
            return Err(Error::Settings(format!(
                "source.kafka.credentialsSecret is {secret:?} but no credentials were given: \
                 in Kubernetes the operator mounts the Secret; elsewhere pass \
                 --kafka-credentials DIR_OR_ENV_FILE (or WEIR_KAFKA_CREDENTIALS)"
            )));
        }
        _ => {}
    }
    Ok(())
}

async fn on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing the batch in flight, then exiting"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: finishing the batch in flight, then exiting"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    cancel.cancel();
}
