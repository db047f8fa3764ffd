//! The `weir-worker` binary: wiring only; everything lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weir_worker::app::{self, RunConfig};

#[derive(Parser)]
#[command(
    name = "weir-worker",
    version,
    about = "Runs one worker of a Weir streaming job"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    /// Log filter, e.g. "info" or "weir_worker=debug".
    #[arg(long, env = "WEIR_LOG", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job: a StreamingJob manifest or a bare job spec in YAML.
    Run(Box<RunArgs>),
    /// Check a job file (and, when given, the Kafka credentials) and exit: 0 when `run`
    /// can start it, 2 with the reason when not.
    Validate {
        file: PathBuf,
        /// Also check these credentials, as `run --kafka-credentials` reads them.
        #[arg(long, env = "WEIR_KAFKA_CREDENTIALS")]
        kafka_credentials: Option<PathBuf>,
    },
    /// Print the steps a job file runs, as the worker runs them: SQL steps compiled, the
    /// shuffles inserted, each stage's input, group and output. Exit 2 when the job is refused.
    Explain { file: PathBuf },
    /// Print the JSON schema of the job spec.
    Schema,
    /// Host librdkafka's mock cluster on a loopback port until stdin closes (for tests and
    /// benchmarks). Prints `bootstrap.servers=HOST:PORT`.
    MockKafka {
        /// A topic to create, as NAME:PARTITIONS; repeatable.
        #[arg(long = "topic")]
        topics: Vec<String>,
        #[arg(long, default_value_t = 1)]
        brokers: i32,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    file: PathBuf,
    /// Start an in-process Kafka (librdkafka's mock cluster) with sample records.
    #[arg(long)]
    embedded: bool,
    /// Stop after this many batches.
    #[arg(long)]
    max_batches: Option<u64>,
    /// This worker's ordinal, 0-based.
    #[arg(long, env = "WEIR_WORKER_ORDINAL", default_value_t = 0)]
    worker: u32,
    /// Number of workers of the job.
    #[arg(long, env = "WEIR_WORKERS", default_value_t = 1)]
    workers: u32,
    /// Job name (default: the manifest's name or the file name).
    #[arg(long, env = "WEIR_JOB_NAME")]
    name: Option<String>,
    #[arg(long, env = "WEIR_NAMESPACE")]
    namespace: Option<String>,
    /// Overrides source.kafka.bootstrapServers.
    #[arg(long, env = "WEIR_BOOTSTRAP_SERVERS")]
    bootstrap_servers: Option<String>,
    /// Address of the job page (/), /progress, /healthz and /metrics.
    #[arg(long, env = "WEIR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Also print the first N results of every batch.
    #[arg(long)]
    print: Option<u32>,
    /// Where a fatal error's message goes (Kubernetes' termination message).
    #[arg(long, env = "WEIR_TERMINATION_LOG")]
    termination_log: Option<PathBuf>,
    /// Kafka SASL/TLS settings: a directory with one file per key (a mounted Secret) or an
    /// env file of KEY=VALUE lines. Keys: security.protocol, sasl.mechanism, sasl.username,
    /// sasl.password, ssl.ca.pem (ca.crt), ssl.certificate.pem (tls.crt), ssl.key.pem
    /// (tls.key), ssl.key.password, ssl.{ca,certificate,key}.location.
    #[arg(long, env = "WEIR_KAFKA_CREDENTIALS")]
    kafka_credentials: Option<PathBuf>,
    /// After SIGTERM, the longest the worker takes to finish its batch before it exits
    /// without committing it (e.g. 25s); keep it below the pod's grace period.
    #[arg(long, env = "WEIR_SHUTDOWN_TIMEOUT", default_value = "25s")]
    shutdown_timeout: weir_worker::spec::Duration,
    /// Bytes of records (keys and values) one batch may hold, all of the job's stages
    /// together, as a size: 64Mi, 1Gi, or bytes. Default: derived from the pod's memory limit
    /// (the cgroup's; 512Mi when there is none), so a large backlog is read in batches that
    /// fit it.
    #[arg(long, env = "WEIR_BATCH_BYTES")]
    batch_bytes: Option<String>,
    /// Records one batch may hold, all stages together. Default: derived from the memory
    /// limit, as --batch-bytes.
    #[arg(long, env = "WEIR_BATCH_RECORDS")]
    batch_records: Option<u64>,
}

/// # Errors
/// A log filter that does not parse: refused rather than replaced, so a typo cannot silence
/// the logs a user asked for.
fn init_tracing(format: &str, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(level)
        .map_err(|e| {
            format!("invalid --log-level (WEIR_LOG) {level:?}: {e}; write a level such as \"info\" or directives such as \"info,weir_worker=debug\"")
        })?;
    // Colour codes only for a person at a terminal; in a file or a log collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Warns now, not at the failure, when the termination message could not be written.
fn check_termination_log(path: &std::path::Path) {
    if let Err(e) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        tracing::warn!(path = %path.display(), error = %e, "the termination log is not writable; a fatal error's message will be in this log only");
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and
/// hands little of what the arenas free back to the system: with the same batch budget, the
/// worker's peak RSS grew with the number of batches it ran (453 MiB after a backlog of 1 M
/// records, 666 MiB after 4 M, in bench/drain.sh), not with what a batch holds. Two arenas per
/// core keep it with the budget (321 and 346 MiB). A `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    use std::ffi::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    /// glibc's `M_ARENA_MAX` (malloc.h).
    const M_ARENA_MAX: c_int = -8;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let arenas = c_int::try_from(cores.saturating_mul(2)).unwrap_or(c_int::MAX);
    // SAFETY: mallopt only sets one of glibc's malloc tunables, and is called before the
    // process starts any thread.
    unsafe {
        mallopt(M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log_format, &cli.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Schema => {
            let schema = schemars::schema_for!(weir_worker::spec::JobSpec);
            match serde_json::to_string_pretty(&schema) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MockKafka { topics, brokers } => {
            match weir_worker::embedded::host_mock_cluster(brokers, &topics) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate {
            file,
            kafka_credentials,
        } => match app::validate(&file, kafka_credentials.as_deref()) {
            Ok(job) => {
                println!(
                    "{}: job {:?} is valid ({} pipeline steps)",
                    file.display(),
                    job.name,
                    job.spec.pipeline.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Explain { file } => match app::check_job(&file) {
            Ok(job) => {
                print!("{}", weir_worker::explain::explain(&job));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Run(a) => {
            let termination_log = a.termination_log.clone().or_else(|| {
                std::env::var_os("KUBERNETES_SERVICE_HOST")
                    .map(|_| PathBuf::from("/dev/termination-log"))
            });
            if let Some(path) = &termination_log {
                check_termination_log(path);
            }
            let cfg = RunConfig {
                file: a.file,
                embedded: a.embedded,
                max_batches: a.max_batches,
                ordinal: a.worker,
                workers: a.workers,
                name: a.name,
                namespace: a.namespace,
                bootstrap_servers: a.bootstrap_servers,
                http_addr: a.http_addr,
                print: a.print,
                credentials: a.kafka_credentials,
                shutdown_timeout: a.shutdown_timeout.as_std(),
                batch_bytes: a.batch_bytes,
                batch_records: a.batch_records,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(app::run(cfg));
            // Past the shutdown deadline the engine's thread may still wait on a broker:
            // it is left behind, and ends with the process.
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    let msg = format!("weir-worker: {e}");
                    eprintln!("error: {msg}");
                    if let Some(path) = termination_log {
                        if let Err(w) = std::fs::write(&path, &msg) {
                            eprintln!(
                                "warning: cannot write the termination log {}: {w}",
                                path.display()
                            );
                        }
                    }
                    ExitCode::from(if app::is_refusal(&e) { 2 } else { 1 })
                }
            }
        }
    }
}
