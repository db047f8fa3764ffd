//! What every reconcile shares: the settings, the clients, the watch-fed stores, and what
//! must survive from one pass of a job to the next (its last observation, and the values the
//! operator computed that a stale cached job does not show yet).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use tracing::debug;

use crate::cache::Cache;
use crate::conditions::{Health, WorkerOffsets};
use crate::crd::{AutoscaleStatus, RewindStatus, StreamingJob, StreamingJobStatus};
use crate::desired::Defaults;
use crate::lag::LagSummary;
use crate::metrics::Metrics;
use crate::observation::PartitionOffsets;
use crate::observe::{Credentials, KafkaObserver, Observer};
use crate::progress::ProgressSummary;
use crate::restarts::Record;
use crate::scaling::PartitionCounts;

/// Which namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub scope: Scope,
    pub defaults: Defaults,
    /// Reconcile every job at least this often, to repair drift nobody was told about.
    pub resync: Duration,
    /// `reportingInstance` of Events: the operator pod's name.
    pub instance: Option<String>,
    /// How often a valid job's Kafka offsets are read again, and so how soon lag and
    /// partition counts in status follow the brokers.
    pub observe_every: Duration,
    /// How long one worker's `/progress` may take to answer before it counts as unreachable.
    pub progress_timeout: Duration,
    /// Per-partition rows in status (capped at [`crate::lag::MAX_ROWS`]).
    pub offset_rows: usize,
    /// Whether the operator reads a job's credentials Secret for its own Kafka observations
    /// (it needs `get` on Secrets for that; off, it observes without credentials).
    pub read_credentials: bool,
    /// Batch intervals a worker may go with records waiting and no commit before it is
    /// Stalled and restarted.
    pub stall_batches: u32,
    /// How long a new job's reconcile waits for Kafka before it applies the children without
    /// workers, so an unreachable broker (which takes its timeout to say so) does not leave
    /// a job without a StatefulSet.
    pub create_before_kafka: Duration,
    /// Reconciles that may run at once; the rest wait their turn, so a thousand jobs do not
    /// reach the API server in one burst.
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            scope: Scope::All,
            defaults: Defaults::default(),
            resync: Duration::from_secs(300),
            instance: None,
            observe_every: Duration::from_secs(15),
            progress_timeout: Duration::from_secs(2),
            offset_rows: crate::lag::DEFAULT_ROWS,
            read_credentials: false,
            stall_batches: 5,
            create_before_kafka: Duration::from_secs(1),
            concurrency: 16,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub observer: Arc<dyn Observer>,
    /// The watch-fed stores of children and pods, set when the controller starts.
    pub(crate) cache: std::sync::OnceLock<Cache>,
    /// Until when the API server asked for no requests (a 429's `retryAfterSeconds`): every
    /// reconcile waits for it, not only the refused one, since the server is overloaded for
    /// all of them.
    quiet_until: Mutex<Option<Instant>>,
    /// Namespaces the API server said are being deleted, and since when: their jobs' children
    /// are not applied (each create would be refused) while the namespace controller removes
    /// them and the jobs' finalizers drain.
    terminating: Mutex<HashMap<String, Instant>>,
    /// When each job's children were last applied whatever the stores held: a resync that
    /// repairs what no watch event told of.
    applied: Mutex<HashMap<ObjectRef<StreamingJob>, Instant>>,
    /// Consecutive failures per job, for exponential backoff; cleared on success.
    failures: Mutex<HashMap<ObjectRef<StreamingJob>, u32>>,
    /// The last observation of each job, reused within the observation period.
    observed: Mutex<HashMap<ObjectRef<StreamingJob>, Observed>>,
    /// Each job's restart record as last computed. Ahead of the cached job's status until
    /// our status write comes back through the watch, so a restart is never counted twice
    /// from a stale cache.
    restarts: Kept<Record>,
    /// Each job's last rewind: a rewind is done once even if the cached job's status does not
    /// show it yet.
    rewinds: Kept<RewindStatus>,
    /// Each job's status as last written: a reconcile that runs before the write comes back
    /// through the watch (a child's watch event) does not write the same status again.
    written: Kept<StreamingJobStatus>,
}

/// A value per job that this operator computed and the cached job may not show yet, with
/// the job's uid (a job deleted and created again starts afresh) and when it was kept.
struct Kept<T> {
    by_job: Mutex<HashMap<ObjectRef<StreamingJob>, KeptFor<T>>>,
}

/// A kept value with its job's uid and when it was kept.
type KeptFor<T> = (Option<String>, Instant, T);

impl<T: Clone> Kept<T> {
    fn new() -> Self {
        Self {
            by_job: Mutex::default(),
        }
    }

    fn get(&self, job: &StreamingJob) -> Option<T> {
        let kept = self.by_job.lock().ok()?;
        kept.get(&ObjectRef::from_obj(job))
            .filter(|(uid, _, _)| *uid == job.metadata.uid)
            .map(|(_, _, v)| v.clone())
    }

    /// Keeps `value` for `job`; forgets what was kept longer than `keep` ago (deleted jobs).
    fn keep(&self, job: &StreamingJob, value: T, keep: Duration) {
        let Ok(mut kept) = self.by_job.lock() else {
            return;
        };
        kept.retain(|_, (_, at, _)| at.elapsed() < keep);
        kept.insert(
            ObjectRef::from_obj(job),
            (job.metadata.uid.clone(), Instant::now(), value),
        );
    }
}

/// What one reconcile read from Kafka and the workers.
///
/// Reused until the observation period has passed (or the spec changes): a status write
/// is itself a watch event, so reading again on every reconcile would turn a job whose lag
/// moves into a loop of reads and writes as fast as the API server answers.
#[derive(Clone, Debug)]
pub struct Observed {
    pub at: std::time::Instant,
    /// The same moment by the wall clock, for `status.observedAt`.
    pub at_time: k8s_openapi::jiff::Timestamp,
    pub generation: Option<i64>,
    pub partitions: Option<PartitionCounts>,
    pub kafka: std::result::Result<LagSummary, String>,
    pub progress: ProgressSummary,
    /// Every input partition's offsets, for the committed offsets a restarted worker resumes
    /// from; empty when the read failed.
    pub offsets: Arc<[PartitionOffsets]>,
    /// What the restart and stall checks found: progress per worker, for how many
    /// observations each has not moved, how long silent workers have been silent.
    pub watched: Watched,
    /// The autoscaler's decision at this observation, if the job autoscales.
    pub autoscale: Option<AutoscaleStatus>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: "weir-operator".into(),
            instance: settings.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            observer: Arc::new(KafkaObserver::default()),
            cache: std::sync::OnceLock::new(),
            quiet_until: Mutex::default(),
            terminating: Mutex::default(),
            applied: Mutex::default(),
            failures: Mutex::default(),
            observed: Mutex::default(),
            restarts: Kept::new(),
            rewinds: Kept::new(),
            written: Kept::new(),
        }
    }

    /// Replaces the real Kafka observer, e.g. with one that answers from data in tests.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The stores of children and pods (empty until [`run`] starts the watches).
    pub fn cache(&self) -> &Cache {
        self.cache.get_or_init(Cache::default)
    }

    /// How the Kafka reads of this operator may get a job's credentials.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            client: &self.client,
            read: self.settings.read_credentials,
        }
    }

    pub(crate) fn forget_failures(&self, job: &StreamingJob) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(job));
        }
    }

    /// The job's last observation, if it is recent and of the job's current generation.
    pub(crate) fn recent(&self, job: &StreamingJob) -> Option<Observed> {
        let seen = self.observed.lock().ok()?;
        seen.get(&ObjectRef::from_obj(job))
            .filter(|o| {
                // Eight tenths: the requeue one period later (at least nine tenths of it, with
                // the jitter) always finds it stale.
                o.at.elapsed() < self.settings.observe_every * 8 / 10
                    && o.generation == job.metadata.generation
            })
            .cloned()
    }

    /// The job's last observation, however old: what the next one is compared with.
    pub(crate) fn last(&self, job: &StreamingJob) -> Option<Observed> {
        let seen = self.observed.lock().ok()?;
        seen.get(&ObjectRef::from_obj(job)).cloned()
    }

    /// Keeps `o` as the job's last observation; forgets those of jobs not seen for a while
    /// (deleted ones), so the map stays as small as the number of jobs.
    pub(crate) fn remember(&self, job: &StreamingJob, o: Observed) {
        let Ok(mut seen) = self.observed.lock() else {
            return;
        };
        let keep = self.settings.observe_every.max(self.settings.resync) * 2;
        seen.retain(|_, old| old.at.elapsed() < keep);
        seen.insert(ObjectRef::from_obj(job), o);
    }

    /// How long kept values outlive their job's last reconcile.
    fn keep_for(&self) -> Duration {
        self.settings.observe_every.max(self.settings.resync) * 2
    }

    /// The job's restart record as this operator last computed it, if it has one for this
    /// job (same uid: a job deleted and created again starts afresh).
    pub(crate) fn restart_record(&self, job: &StreamingJob) -> Option<Record> {
        self.restarts.get(job)
    }

    pub(crate) fn keep_restart_record(&self, job: &StreamingJob, record: Record) {
        self.restarts.keep(job, record, self.keep_for());
    }

    /// The job's last rewind as this operator did it, if any (same uid).
    pub(crate) fn rewound(&self, job: &StreamingJob) -> Option<RewindStatus> {
        self.rewinds.get(job)
    }

    pub(crate) fn keep_rewound(&self, job: &StreamingJob, done: RewindStatus) {
        self.rewinds.keep(job, done, self.keep_for());
    }

    /// The job's status as this operator last wrote it (same uid).
    pub(crate) fn written(&self, job: &StreamingJob) -> Option<StreamingJobStatus> {
        self.written.get(job)
    }

    pub(crate) fn keep_written(&self, job: &StreamingJob, status: StreamingJobStatus) {
        self.written.keep(job, status, self.keep_for());
    }

    /// Waits out a pause the API server asked for, if one is on.
    pub(crate) async fn api_pause(&self) {
        let until = self.quiet_until.lock().ok().and_then(|u| *u);
        if let Some(until) = until.filter(|u| *u > Instant::now()) {
            debug!(wait = ?until.saturating_duration_since(Instant::now()), "the API server asked for a pause");
            tokio::time::sleep_until(until.into()).await;
        }
    }

    pub(crate) fn pause_api(&self, wait: Duration) {
        if let Ok(mut u) = self.quiet_until.lock() {
            let until = Instant::now() + wait;
            *u = Some(u.map_or(until, |old| old.max(until)));
        }
    }

    /// Whether `ns` was found being deleted lately (within a resync period: a namespace that
    /// is recreated under the same name is applied to again after that).
    pub(crate) fn terminating(&self, ns: &str) -> bool {
        self.terminating
            .lock()
            .ok()
            .and_then(|t| t.get(ns).copied())
            .is_some_and(|since| since.elapsed() < self.settings.resync)
    }

    pub(crate) fn mark_terminating(&self, ns: &str) {
        if let Ok(mut t) = self.terminating.lock() {
            t.retain(|_, since| since.elapsed() < self.settings.resync);
            t.entry(ns.to_string()).or_insert_with(Instant::now);
        }
    }

    /// Whether the job's children are due an apply whatever the stores hold (none yet, or the
    /// resync period passed since the last one); marks it done.
    pub(crate) fn resync_due(&self, job: &StreamingJob) -> bool {
        let Ok(mut applied) = self.applied.lock() else {
            return true;
        };
        let keep = self.settings.resync * 2;
        applied.retain(|_, at| at.elapsed() < keep);
        let key = ObjectRef::from_obj(job);
        let due = applied
            .get(&key)
            .is_none_or(|at| at.elapsed() >= self.settings.resync);
        if due {
            applied.insert(key, Instant::now());
        }
        due
    }

    pub(crate) fn count_failure(&self, job: &StreamingJob) -> u32 {
        let Ok(mut f) = self.failures.lock() else {
            return 1;
        };
        let n = f.entry(ObjectRef::from_obj(job)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

/// What one pass decided about the job's failures.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub record: Record,
    pub progress_by_worker: Vec<WorkerOffsets>,
    pub still: Vec<u32>,
    pub health: Health,
    /// Since when each worker that says nothing of batches (no answer, or still starting)
    /// has been quiet.
    pub quiet_since: Vec<(u32, Instant)>,
    /// The retry episodes announced with an Event: (worker, the episode's start in ms).
    pub retries_told: Vec<(u32, i64)>,
    /// When each worker was last seen progressing (or with nothing to do).
    pub moving_at: Vec<Instant>,
}
