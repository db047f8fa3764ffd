//! Observing Kafka for a job: input partitions, end and log-start offsets, and the job's
//! committed group offsets; and the same for each later stage of the job (after a repartition
//! step, inserted or explicit): its repartition topic and its own group.
//!
//! The [`Observer`] trait is the seam: the controller gets the real [`KafkaObserver`], tests
//! may feed the broker's answers as data (e.g. a topic that grew, which no test broker can do).
//! librdkafka's calls block, so the controller runs an observer on the blocking pool, and
//! every call here has a finite timeout. Its clients stay open between observations
//! ([`crate::clients`]), so a dead broker is logged at most once per kind of error per 30 s,
//! not once per observation.
//!
//! Besides offsets, an observation reads record timestamps for the lag in seconds and
//! OffsetsAtRisk ([`crate::lag`]): the next unread record of each partition with records
//! waiting and, for a partition at risk, the record at its log start. One record per
//! partition, with small fetches and a short wait ([`RECORD_WAIT`]); a timestamp not read in
//! time is unknown (the figures that need it are null), never a failed observation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::debug;
use weir_worker::spec::{KafkaSource, StartingOffsets};

use crate::clients::{ClientCache, Kept};
use crate::crd::StreamingJob;
use crate::scaling::PartitionCounts;
use crate::topic_reads::{Bounds, TopicReads};

/// Which Kafka data a job reads and where its offsets live.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaTarget {
    pub source: KafkaSource,
    pub group: String,
    /// The job's later stages, as the workers split it (`weir_worker::stages::split`).
    pub stages: Vec<StageTarget>,
}

/// A later stage of a job: the repartition topic it reads and the group its offsets are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageTarget {
    /// The repartition step's id.
    pub stage: String,
    pub topic: String,
    pub group: String,
}

impl KafkaTarget {
    pub fn of(job: &StreamingJob, namespace: &str, name: &str) -> Self {
        let file = weir_worker::spec::JobFile {
            name: name.to_string(),
            namespace: namespace.to_string(),
            spec: job.spec.job.clone(),
        };
        let stages = weir_worker::stages::split(&file)
            .into_iter()
            .skip(1)
            .filter_map(|s| {
                let k = &s.job.spec.source.kafka;
                Some(StageTarget {
                    topic: k.topics.first()?.clone(),
                    group: s.job.spec.group_id(namespace, name),
                    stage: s.name,
                })
            })
            .collect();
        Self {
            source: job.spec.job.source.kafka.clone(),
            group: job.spec.job.group_id(namespace, name),
            stages,
        }
    }
}

/// One partition as the brokers reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    /// The first offset still in the log (retention moves it).
    pub log_start: i64,
    /// The high watermark: the offset the next record will get. Read as the workers read
    /// (read_committed), so behind an open transaction it is the last stable offset.
    pub end: i64,
    /// The job's committed offset; `None` before the job's first commit.
    pub committed: Option<i64>,
    /// For a timestamp startingOffsets: the first offset at or after that time, if any.
    pub offset_for_time: Option<i64>,
    /// Milliseconds since the epoch: the timestamp of the next record the job has not read,
    /// read only when records wait; `None` when it was not read.
    pub next_timestamp: Option<i64>,
    /// Milliseconds since the epoch: the timestamp of the record at the log start, read only
    /// for a partition at risk ([`crate::lag::at_risk`]).
    pub log_start_timestamp: Option<i64>,
}

/// What one observation of Kafka found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaObservation {
    /// Each input topic with its partition count, in spec order.
    pub topics: Vec<(String, u32)>,
    pub partitions: Vec<PartitionOffsets>,
    /// The job's later stages, in data-flow order; a stage whose repartition topic the
    /// workers have not created yet has no partitions.
    pub stages: Vec<StageOffsets>,
    /// Milliseconds since the epoch when the record timestamps were read: the "now" of the
    /// lag in seconds. `None` when none were read.
    pub read_at_millis: Option<i64>,
}

/// A later stage's partitions: its repartition topic, with its group's committed offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageOffsets {
    pub stage: String,
    pub group: String,
    pub partitions: Vec<PartitionOffsets>,
}

impl KafkaObservation {
    pub fn partition_counts(&self) -> PartitionCounts {
        PartitionCounts::from_topics(self.topics.iter().map(|(_, n)| *n))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("reading {op} from Kafka failed: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("input topic {0:?} does not exist or has no partitions")]
    MissingTopic(String),
    /// A rewind Kafka cannot do (a partition it does not have): nothing was committed.
    #[error("{0}")]
    RewindRefused(String),
    #[error("the brokers gave no {0} offset for a partition")]
    NoOffsets(&'static str),
    #[error("observing Kafka took longer than {0:?}")]
    Timeout(Duration),
    #[error("the observation task did not finish: {0}")]
    Task(String),
    /// Names the Secret and a key or the API's reason, never a value.
    #[error("cannot use the credentials Secret {secret:?}: {reason}")]
    Credentials { secret: String, reason: String },
    /// Kafka refused the login or the permission: retrying will not help until someone fixes
    /// the Secret or the ACLs, so the message says which.
    #[error("reading {op} from Kafka: {advice} ({reason})")]
    Auth {
        op: &'static str,
        advice: &'static str,
        reason: String,
    },
}

impl ObserveError {
    /// The metric label: a fixed variant name, never object data.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Client(_) => "client",
            Self::Kafka { .. } => "kafka",
            Self::MissingTopic(_) => "missing_topic",
            Self::RewindRefused(_) => "rewind_refused",
            Self::Credentials { .. } => "credentials",
            Self::Auth { .. } => "auth",
            Self::NoOffsets(_) => "no_offsets",
            Self::Timeout(_) => "timeout",
            Self::Task(_) => "task",
        }
    }

    /// A Kafka error, named as an authentication or authorization failure when it is one.
    pub(crate) fn kafka(op: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| match weir_worker::error::auth_kind(&source) {
            Some(kind) => Self::Auth {
                op,
                advice: weir_worker::error::auth_advice(kind),
                reason: source.to_string(),
            },
            None => Self::Kafka { op, source },
        }
    }

    /// As [`ObserveError::kafka`] for a request of `consumer`, which also asks the client
    /// whether a refused login caused it: librdkafka reports that only as a client event, and
    /// the request as a transport failure or timeout.
    pub(crate) fn request<'a>(
        consumer: &'a ObserveConsumer,
        op: &'static str,
    ) -> impl FnOnce(KafkaError) -> Self + 'a {
        move |source| match weir_worker::client::auth_failure(consumer) {
            Some(reason) => Self::Auth {
                op,
                advice: weir_worker::error::auth_advice(
                    weir_worker::error::AuthKind::Authentication,
                ),
                reason,
            },
            None => Self::kafka(op)(source),
        }
    }

    /// A topic's error in a metadata answer: a refused topic is named as such; anything else
    /// is a topic that is missing or has no partitions.
    pub(crate) fn topic(topic: &str, error: Option<rdkafka::types::RDKafkaRespErr>) -> Self {
        match error {
            Some(e) => match Self::kafka("topic metadata")(KafkaError::MetadataFetch(e.into())) {
                auth @ Self::Auth { .. } => auth,
                _ => Self::MissingTopic(topic.to_string()),
            },
            None => Self::MissingTopic(topic.to_string()),
        }
    }
}

/// The consumer the operator reads offsets with: the worker's context, which keeps a refused
/// login for [`ObserveError::request`].
pub(crate) type ObserveConsumer = BaseConsumer<weir_worker::client::SourceContext>;

/// A short-lived consumer on the job's group that joins nothing (it only reads and sets
/// offsets), with the job's credentials.
///
/// # Errors
/// When librdkafka refuses the settings.
pub(crate) fn consumer(target: &KafkaTarget, role: &str) -> Result<ObserveConsumer, ObserveError> {
    config(&target.source, &target.group, role)
        .create_with_context(weir_worker::client::SourceContext::default())
        .map_err(ObserveError::Client)
}

/// The settings of the operator's consumers on `group`: they join nothing (they only read
/// and set offsets, and assign partitions to read one record's timestamp), with the job's
/// credentials. Fetches are small: the observer reads one record per partition.
fn config(source: &KafkaSource, group: &str, role: &str) -> ClientConfig {
    // librdkafka refuses a fetch.max.bytes below message.max.bytes.
    let fetch_max = source
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .max(1 << 20);
    let mut c = weir_worker::client::base(&source.bootstrap_servers, source);
    c.set("group.id", group)
        .set("client.id", format!("weir-operator-{role}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A position outside the log yields no record (its timestamp is unknown), never one
        // from elsewhere.
        .set("auto.offset.reset", "error")
        .set("max.partition.fetch.bytes", "65536")
        .set("fetch.max.bytes", fetch_max.to_string())
        .set("queued.min.messages", "1")
        .set("fetch.wait.max.ms", "10");
    c
}

/// Reads a job's Kafka offsets. Blocking: call it from the blocking pool.
pub trait Observer: Send + Sync + 'static {
    /// # Errors
    /// When the brokers cannot be reached in time or a topic is missing.
    fn kafka(&self, target: &KafkaTarget) -> Result<KafkaObservation, ObserveError>;

    /// Sets the job's group offsets for a rewind, all in one commit; returns the offsets
    /// committed.
    ///
    /// # Errors
    /// When the brokers cannot be reached in time, a topic is missing, a listed partition does
    /// not exist ([`ObserveError::RewindRefused`], nothing committed) or the commit fails.
    fn rewind(
        &self,
        target: &KafkaTarget,
        to: &crate::rewind::RewindTo,
    ) -> Result<crate::rewind::Rewound, ObserveError>;

    /// Where worker `ordinal`'s `/progress` listens: its name under the job's headless
    /// Service, so it works from any operator replica without listing pods.
    fn worker_address(&self, namespace: &str, job: &str, ordinal: u32) -> String {
        format!(
            "{job}-{ordinal}.{job}.{namespace}.svc:{}",
            crate::desired::HTTP_PORT
        )
    }
}

/// The real observer: librdkafka consumers kept open per configuration (no group membership:
/// they only read offsets, so they never disturb the workers' partition assignment).
#[derive(Clone, Debug)]
pub struct KafkaObserver {
    /// The whole observation's budget; each request gets what is left of it.
    pub timeout: Duration,
    /// The open clients, one per cluster, settings, credentials and group.
    pub clients: Arc<ClientCache>,
    /// Topic bounds read lately, shared by the jobs of a cluster.
    pub topics: Arc<TopicReads>,
}

impl Default for KafkaObserver {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            clients: Arc::default(),
            topics: Arc::default(),
        }
    }
}

/// How long an observation waits for the records whose timestamps it reads, per pass (the
/// next unread records, then the log start's of partitions at risk).
pub const RECORD_WAIT: Duration = Duration::from_secs(2);

/// How long an observation serves its client's queued events (log lines, errors) at its end.
const SERVE_EVENTS: Duration = Duration::from_millis(5);

impl KafkaObserver {
    /// Runs `read` with the open client for `config`, then serves the client's events (its
    /// log lines reach the rate-limited log here). A refused login closes the client, so the
    /// next observation logs in afresh.
    fn with_client<T>(
        &self,
        config: &ClientConfig,
        read: impl FnOnce(&Kept) -> Result<T, ObserveError>,
    ) -> Result<T, ObserveError> {
        let kept = self.clients.get(config)?;
        let result = read(&kept);
        crate::clients::serve_events(&kept, SERVE_EVENTS);
        if let Err(ObserveError::Auth { .. }) = &result {
            self.clients.forget(config);
        }
        result
    }
}

impl Observer for KafkaObserver {
    fn kafka(&self, target: &KafkaTarget) -> Result<KafkaObservation, ObserveError> {
        let left = time_left(self.timeout);
        let config = config(&target.source, &target.group, "observer");
        let mut obs = self.with_client(&config, |kept| {
            observe_input(kept, &self.topics, &config, target, &left)
        })?;
        for stage in &target.stages {
            let config = config_for_stage(&target.source, stage);
            let offsets = self.with_client(&config, |kept| observe_stage(kept, stage, &left))?;
            obs.stages.push(offsets);
        }
        obs.read_at_millis = Some(k8s_openapi::jiff::Timestamp::now().as_millisecond());
        Ok(obs)
    }

    fn rewind(
        &self,
        target: &KafkaTarget,
        to: &crate::rewind::RewindTo,
    ) -> Result<crate::rewind::Rewound, ObserveError> {
        crate::rewind::set_offsets(target, to, self.timeout)
    }
}

fn config_for_stage(source: &KafkaSource, stage: &StageTarget) -> ClientConfig {
    config(source, &stage.group, "observer")
}

/// The input topics' partitions, offsets and record timestamps. A topic's partitions and
/// bounds come from `shared` when another job read them lately; the committed offsets are
/// always this job's own read.
fn observe_input(
    kept: &Kept,
    shared: &TopicReads,
    config: &ClientConfig,
    target: &KafkaTarget,
    left: &impl Fn() -> Result<Duration, ObserveError>,
) -> Result<KafkaObservation, ObserveError> {
    let source = &target.source;
    let consumer = &kept.consumer;
    let mut obs = KafkaObservation::default();
    let mut unread: Vec<&str> = Vec::new();
    let blank = |topic: &str, partition: i32, (log_start, end): (i64, i64)| PartitionOffsets {
        topic: topic.to_string(),
        partition,
        log_start,
        end,
        committed: None,
        offset_for_time: None,
        next_timestamp: None,
        log_start_timestamp: None,
    };
    for topic in &source.topics {
        if let Some(b) = shared.get(config, topic, &target.group) {
            obs.topics.push((
                topic.clone(),
                u32::try_from(b.partitions.len()).unwrap_or(u32::MAX),
            ));
            obs.partitions.extend(
                (0..)
                    .zip(b.partitions)
                    .map(|(p, bounds)| blank(topic, p, bounds)),
            );
            continue;
        }
        let md = consumer
            .fetch_metadata(Some(topic), left()?)
            .map_err(ObserveError::request(consumer, "topic metadata"))?;
        let n = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
            t => return Err(ObserveError::topic(topic, t.and_then(|t| t.error()))),
        };
        // Kafka numbers a topic's partitions 0..n with i32 ids.
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        obs.topics.push((topic.clone(), n.unsigned_abs()));
        obs.partitions
            .extend((0..n).map(|partition| blank(topic, partition, (0, 0))));
        unread.push(topic);
    }
    // One ListOffsets request per broker for all partitions not shared (not one per
    // partition, as per-partition watermark queries would be): thousands of partitions stay
    // cheap.
    let fresh: Vec<PartitionOffsets> = obs
        .partitions
        .iter()
        .filter(|p| unread.contains(&p.topic.as_str()))
        .cloned()
        .collect();
    if !fresh.is_empty() {
        let starts = list_offsets(consumer, &fresh, Offset::Beginning, left()?)?;
        let ends = list_offsets(consumer, &fresh, Offset::End, left()?)?;
        for p in obs
            .partitions
            .iter_mut()
            .filter(|p| unread.contains(&p.topic.as_str()))
        {
            p.log_start = offset_of(&starts, p).ok_or(ObserveError::NoOffsets("log start"))?;
            p.end = offset_of(&ends, p).ok_or(ObserveError::NoOffsets("end"))?;
        }
        for topic in unread {
            let bounds = obs
                .partitions
                .iter()
                .filter(|p| p.topic == topic)
                .map(|p| (p.log_start, p.end))
                .collect();
            shared.put(config, topic, &target.group, Bounds { partitions: bounds });
        }
    }
    let times = match &source.starting_offsets {
        StartingOffsets::Timestamp(t) => {
            let at = Offset::Offset(t.timestamp_millis());
            Some(list_offsets(consumer, &obs.partitions, at, left()?)?)
        }
        _ => None,
    };
    let committed = consumer
        .committed_offsets(partition_list(&obs.partitions, Offset::Invalid)?, left()?)
        .map_err(ObserveError::request(consumer, "committed offsets"))?;
    for p in &mut obs.partitions {
        p.committed = offset_of(&committed, p);
        p.offset_for_time = times.as_ref().and_then(|t| offset_of(t, p));
    }
    read_timestamps(kept, &mut obs.partitions, &source.starting_offsets, left);
    Ok(obs)
}

/// What is left of `timeout` from now, asked before each request of a read that must end
/// within it; [`ObserveError::Timeout`] once it is spent.
pub(crate) fn time_left(timeout: Duration) -> impl Fn() -> Result<Duration, ObserveError> {
    let deadline = Instant::now() + timeout;
    move || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ObserveError::Timeout(timeout))
    }
}

/// A later stage's repartition topic and its group's offsets, with a client of the stage's
/// group (committed offsets are read for the client's own group).
fn observe_stage(
    kept: &Kept,
    stage: &StageTarget,
    left: &impl Fn() -> Result<Duration, ObserveError>,
) -> Result<StageOffsets, ObserveError> {
    let consumer = &kept.consumer;
    let md = consumer
        .fetch_metadata(Some(&stage.topic), left()?)
        .map_err(ObserveError::request(consumer, "topic metadata"))?;
    // Workers create the topic when they start; before that the stage has nothing to read.
    let n = match md.topics().iter().find(|t| t.name() == stage.topic) {
        Some(t) if t.error().is_none() => t.partitions().len(),
        _ => 0,
    };
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    let mut partitions: Vec<PartitionOffsets> = (0..n)
        .map(|partition| PartitionOffsets {
            topic: stage.topic.clone(),
            partition,
            log_start: 0,
            end: 0,
            committed: None,
            offset_for_time: None,
            next_timestamp: None,
            log_start_timestamp: None,
        })
        .collect();
    if !partitions.is_empty() {
        let starts = list_offsets(consumer, &partitions, Offset::Beginning, left()?)?;
        let ends = list_offsets(consumer, &partitions, Offset::End, left()?)?;
        let committed = consumer
            .committed_offsets(partition_list(&partitions, Offset::Invalid)?, left()?)
            .map_err(ObserveError::request(consumer, "committed offsets"))?;
        for p in &mut partitions {
            p.log_start = offset_of(&starts, p).ok_or(ObserveError::NoOffsets("log start"))?;
            p.end = offset_of(&ends, p).ok_or(ObserveError::NoOffsets("end"))?;
            p.committed = offset_of(&committed, p);
        }
        // A stage's group starts at the earliest offset of its repartition topic.
        read_timestamps(kept, &mut partitions, &StartingOffsets::Earliest, left);
    }
    Ok(StageOffsets {
        stage: stage.stage.clone(),
        group: stage.group.clone(),
        partitions,
    })
}

/// Reads the timestamps [`crate::lag`] needs: each waiting partition's next unread record,
/// then the log start's record of each partition at risk. What is not read in time (or has no
/// timestamp) stays `None`: a bounded read, never a reason to fail the observation.
fn read_timestamps(
    kept: &Kept,
    partitions: &mut [PartitionOffsets],
    starting: &StartingOffsets,
    left: &impl Fn() -> Result<Duration, ObserveError>,
) {
    let next: Vec<(usize, i64)> = (0..)
        .zip(partitions.iter())
        .filter_map(|(i, p)| crate::lag::next_unread(p, starting).map(|o| (i, o)))
        .collect();
    let wait = |left: &dyn Fn() -> Result<Duration, ObserveError>| {
        left().map_or(Duration::ZERO, |l| l.min(RECORD_WAIT))
    };
    for (i, ts) in record_timestamps(kept, partitions, &next, wait(left)) {
        if let Some(p) = partitions.get_mut(i) {
            p.next_timestamp = Some(ts);
        }
    }
    let starts: Vec<(usize, i64)> = (0..)
        .zip(partitions.iter())
        .filter_map(|(i, p)| crate::lag::at_risk(p, starting).map(|_| (i, p.log_start)))
        .collect();
    for (i, ts) in record_timestamps(kept, partitions, &starts, wait(left)) {
        if let Some(p) = partitions.get_mut(i) {
            p.log_start_timestamp = Some(ts);
        }
    }
}

/// The timestamp of the first record at or after each `(partition index, offset)` of
/// `wanted`, by index: the partitions are assigned at those offsets and polled until each has
/// given one record or `wait` is over, then unassigned. A record without a timestamp, and a
/// partition with no record in time (or an offset outside its log), are left out.
fn record_timestamps(
    kept: &Kept,
    partitions: &[PartitionOffsets],
    wanted: &[(usize, i64)],
    wait: Duration,
) -> HashMap<usize, i64> {
    let mut found = HashMap::new();
    if wanted.is_empty() || wait.is_zero() {
        return found;
    }
    // One read at a time per client: the assignment is the client's.
    let _assigned = kept.assign.lock().unwrap_or_else(PoisonError::into_inner);
    let consumer = &kept.consumer;
    let mut tpl = TopicPartitionList::with_capacity(wanted.len());
    let mut from: HashMap<(String, i32), (usize, i64)> = HashMap::with_capacity(wanted.len());
    for &(i, offset) in wanted {
        let Some(p) = partitions.get(i) else { continue };
        if tpl
            .add_partition_offset(&p.topic, p.partition, Offset::Offset(offset))
            .is_ok()
        {
            from.insert((p.topic.clone(), p.partition), (i, offset));
        }
    }
    if let Err(error) = consumer.assign(&tpl) {
        debug!(%error, "cannot assign partitions to read record timestamps");
        return found;
    }
    let deadline = Instant::now() + wait;
    let mut done = HashSet::with_capacity(from.len());
    while done.len() < from.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            debug!(
                read = done.len(),
                wanted = from.len(),
                "record timestamps not all read in time"
            );
            break;
        }
        match consumer.poll(left) {
            Some(Ok(m)) => {
                let Some(&(i, offset)) = from.get(&(m.topic().to_string(), m.partition())) else {
                    continue;
                };
                if m.offset() >= offset && done.insert(i) {
                    if let Some(ts) = m.timestamp().to_millis() {
                        found.insert(i, ts);
                    }
                }
            }
            // E.g. an offset outside the log (auto.offset.reset is error): that partition's
            // timestamp stays unknown.
            Some(Err(error)) => debug!(%error, "reading a record timestamp"),
            None => {}
        }
    }
    if let Err(error) = consumer.unassign() {
        debug!(%error, "cannot unassign the partitions read for timestamps");
    }
    found
}

fn partition_list(
    partitions: &[PartitionOffsets],
    offset: Offset,
) -> Result<TopicPartitionList, ObserveError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for p in partitions {
        tpl.add_partition_offset(&p.topic, p.partition, offset)
            .map_err(ObserveError::kafka("partition list"))?;
    }
    Ok(tpl)
}

/// ListOffsets for every partition: `Beginning` and `End` give the log start and end, a
/// timestamp the first offset at or after it (none: `End`).
fn list_offsets(
    consumer: &ObserveConsumer,
    partitions: &[PartitionOffsets],
    at: Offset,
    timeout: Duration,
) -> Result<TopicPartitionList, ObserveError> {
    let found = consumer
        .offsets_for_times(partition_list(partitions, at)?, timeout)
        .map_err(ObserveError::request(consumer, "list offsets"))?;
    for e in found.elements() {
        e.error().map_err(ObserveError::kafka("list offsets"))?;
    }
    Ok(found)
}

fn offset_of(list: &TopicPartitionList, p: &PartitionOffsets) -> Option<i64> {
    list.find_partition(&p.topic, p.partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
}

/// Runs `observer` on the blocking pool, so a slow broker never stalls the async runtime.
///
/// # Errors
/// The observer's error, or [`ObserveError::Task`] if the task panicked or was cancelled.
pub async fn kafka(
    observer: std::sync::Arc<dyn Observer>,
    target: KafkaTarget,
) -> Result<KafkaObservation, ObserveError> {
    tokio::task::spawn_blocking(move || observer.kafka(&target))
        .await
        .map_err(|e| ObserveError::Task(e.to_string()))?
}

/// As [`kafka`], with the job's credentials (see [`with_credentials`]).
///
/// # Errors
/// A Secret that cannot be read or holds unusable credentials, or the observation's error.
pub async fn kafka_with_credentials(
    ctx: &crate::controller::Context,
    ns: &str,
    target: KafkaTarget,
) -> Result<KafkaObservation, ObserveError> {
    let target = with_credentials(ctx, ns, target).await?;
    kafka(ctx.observer.clone(), target).await
}

/// The target with the job's credentials read from its Secret when the operator may
/// (`Settings::read_credentials`), for every call the operator makes to the job's Kafka. The
/// values go to librdkafka only: errors name the Secret and a key or the API's reason, since a
/// client error could quote what it failed to parse.
///
/// # Errors
/// A Secret that cannot be read or holds unusable credentials.
pub async fn with_credentials(
    ctx: &crate::controller::Context,
    ns: &str,
    mut target: KafkaTarget,
) -> Result<KafkaTarget, ObserveError> {
    if let (true, Some(name)) = (
        ctx.settings.read_credentials,
        target.source.credentials_secret.clone(),
    ) {
        let fail = |reason: String| ObserveError::Credentials {
            secret: name.clone(),
            reason,
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(ctx.client.clone(), ns);
        let secret = match api.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(fail("it does not exist".into())),
            Err(kube::Error::Api(status)) => {
                return Err(fail(format!("{} ({})", status.reason, status.code)))
            }
            Err(_) => return Err(fail("the Kubernetes API request failed".into())),
        };
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        target.source.credentials = weir_worker::credentials::Credentials::from_secret_data(
            &format!("Secret {ns}/{name}"),
            data,
        )
        .map_err(|e| fail(e.to_string()))?;
    }
    Ok(target)
}

/// Runs `observer`'s rewind on the blocking pool.
///
/// # Errors
/// The observer's error, or [`ObserveError::Task`] if the task panicked or was cancelled.
pub async fn rewind(
    observer: std::sync::Arc<dyn Observer>,
    target: KafkaTarget,
    to: crate::rewind::RewindTo,
) -> Result<crate::rewind::Rewound, ObserveError> {
    tokio::task::spawn_blocking(move || observer.rewind(&target, &to))
        .await
        .map_err(|e| ObserveError::Task(e.to_string()))?
}
