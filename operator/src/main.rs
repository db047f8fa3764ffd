//! `weir-operator`: wiring only. `crd` prints the CRD; `run` runs the controller behind a
//! leader lease, with `/metrics` and `/healthz`, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use weir_operator::context::{Context, Scope, Settings};
use weir_operator::controller;
use weir_operator::desired::{Defaults, LogFormat};
use weir_operator::leader::{self, LeaseConfig};
use weir_operator::metrics::Metrics;
use weir_operator::{crd_yaml, http, telemetry};

#[derive(Parser)]
#[command(version, about = "Weir's Kubernetes operator for StreamingJobs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StreamingJob CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "WEIR_WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /loglevel.
    #[arg(long, env = "WEIR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Log filter, e.g. "info" or "weir_operator=debug,kube=info".
    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    log_level: String,
    /// Log as JSON lines (for collectors) instead of text.
    #[arg(long, env = "WEIR_LOG_JSON", default_value_t = false)]
    log_json: bool,
    /// Turn leader election off (only safe with one replica).
    #[arg(long, env = "WEIR_NO_LEADER_ELECTION", default_value_t = false)]
    no_leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "WEIR_LEADER_ELECTION_NAME",
        default_value = "weir-operator"
    )]
    leader_election_name: String,
    /// Namespace of the lease. Default: the pod's namespace (POD_NAMESPACE), else the client's.
    #[arg(long, env = "WEIR_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// This replica's identity in the lease. Default: POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pod_namespace: Option<String>,
    /// Worker image for jobs that do not set spec.image.
    #[arg(long, env = "WEIR_WORKER_IMAGE")]
    worker_image: Option<String>,
    /// How the workers log: text or json.
    #[arg(long, env = "WEIR_WORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    worker_log_format: LogFormat,
    /// Reconcile every job at least this often, e.g. "5m".
    #[arg(long, env = "WEIR_RESYNC", default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Read each job's credentials Secret to observe a Kafka that needs them (the operator's
    /// role must allow `get` on Secrets: the chart's rbac.readCredentialsSecrets).
    #[arg(long, env = "WEIR_READ_CREDENTIALS_SECRETS")]
    read_credentials_secrets: bool,
    /// How often each job's Kafka offsets are read, e.g. "15s".
    #[arg(long, env = "WEIR_OBSERVE_EVERY", default_value = "15s", value_parser = parse_duration)]
    observe_every: Duration,
    /// How long a worker's /progress may take before it is reported unreachable, e.g. "2s".
    #[arg(long, env = "WEIR_PROGRESS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    progress_timeout: Duration,
    /// Per-partition offset rows in a job's status, laggiest first (at most 200).
    #[arg(long, env = "WEIR_STATUS_OFFSET_ROWS", default_value_t = weir_operator::lag::DEFAULT_ROWS)]
    status_offset_rows: usize,
    /// Batch intervals a worker may go with records waiting and no commit before it is
    /// reported Stalled and restarted.
    #[arg(long, env = "WEIR_STALL_BATCHES", default_value_t = 5)]
    stall_batches: u32,
    /// Reconciles that may run at once (at least 1); the others wait their turn, so many jobs
    /// do not reach the API server in one burst.
    #[arg(long, env = "WEIR_MAX_CONCURRENT_RECONCILES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weir_contract::spec::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_level = telemetry::init(&args.log_level, args.log_json).map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new().context("setting up metrics")?;
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or kubeconfig)")?;

    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let server = tokio::spawn(http::serve(
        args.metrics_addr,
        http::router(metrics.clone(), Some(log_level)),
        shutdown.clone().cancelled_owned(),
    ));

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "weir-operator".into()));
    let settings = Settings {
        scope: if args.namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(args.namespaces.clone())
        },
        defaults: Defaults {
            image: args
                .worker_image
                .clone()
                .unwrap_or_else(|| Defaults::default().image),
            log_format: args.worker_log_format,
        },
        resync: args.resync,
        instance: Some(identity.clone()),
        observe_every: args.observe_every,
        progress_timeout: args.progress_timeout,
        offset_rows: args.status_offset_rows,
        read_credentials: args.read_credentials_secrets,
        stall_batches: args.stall_batches,
        concurrency: args.max_concurrent_reconciles,
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics));

    let work = |stop| controller::run(ctx, stop);
    let led = if args.no_leader_election {
        work(shutdown.clone()).await;
        Ok(())
    } else {
        let namespace = args
            .leader_election_namespace
            .or(args.pod_namespace)
            .unwrap_or_else(|| client.default_namespace().to_string());
        let cfg = LeaseConfig {
            name: args.leader_election_name,
            namespace: namespace.clone(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        info!(lease = %cfg.name, %namespace, "waiting to lead");
        leader::while_leading(
            Api::namespaced(client, &namespace),
            cfg,
            shutdown.clone(),
            work,
        )
        .await
    };
    shutdown.cancel();
    server.await.ok().transpose().context("serving /metrics")?;
    signals.abort();
    // Exiting non-zero on a lost lease restarts the pod, which rejoins the election afresh.
    led.context("exiting")?;
    info!("stopped");
    Ok(())
}

/// Kubernetes stops pods with SIGTERM; a terminal sends SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    token.cancel();
}
