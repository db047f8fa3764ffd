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

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::debug;
use weir_contract::spec::{KafkaSource, StartingOffsets};

use crate::clients::{ClientCache, Kept};
use crate::crd::ResumedOffset;
use crate::observation::{
    KafkaObservation, KafkaTarget, ObserveConsumer, ObserveError, PartitionOffsets, StageOffsets,
    StageTarget,
};
use crate::rewind::{check_offsets, Checked, RewindTo, Rewound};
use crate::topic_reads::{Bounds, TopicReads};

/// A short-lived consumer on the job's group that joins nothing (it only reads and sets
/// offsets), with the job's credentials.
///
/// # Errors
/// When librdkafka refuses the settings.
pub(crate) fn consumer(target: &KafkaTarget, role: &str) -> Result<ObserveConsumer, ObserveError> {
    config(&target.source, &target.group, role)
        .create_with_context(weir_contract::client::SourceContext::default())
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
    let mut c = weir_contract::client::base(&source.bootstrap_servers, source);
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
        set_offsets(target, to, self.timeout)
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
    reader: &Credentials<'_>,
    observer: std::sync::Arc<dyn Observer>,
    ns: &str,
    target: KafkaTarget,
) -> Result<KafkaObservation, ObserveError> {
    let target = with_credentials(reader, ns, target).await?;
    kafka(observer, target).await
}

/// How the operator may read a job's credentials Secret: with this client, and only when
/// `read` (`Settings::read_credentials`).
pub struct Credentials<'a> {
    pub client: &'a kube::Client,
    pub read: bool,
}

/// The target with the job's credentials read from its Secret when the operator may
/// (`Settings::read_credentials`), for every call the operator makes to the job's Kafka. The
/// values go to librdkafka only: errors name the Secret and a key or the API's reason, since a
/// client error could quote what it failed to parse.
///
/// # Errors
/// A Secret that cannot be read or holds unusable credentials.
pub async fn with_credentials(
    reader: &Credentials<'_>,
    ns: &str,
    mut target: KafkaTarget,
) -> Result<KafkaTarget, ObserveError> {
    if let (true, Some(name)) = (reader.read, target.source.credentials_secret.clone()) {
        let fail = |reason: String| ObserveError::Credentials {
            secret: name.clone(),
            reason,
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(reader.client.clone(), ns);
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
        target.source.credentials = weir_contract::credentials::Credentials::from_secret_data(
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
    to: RewindTo,
) -> Result<Rewound, ObserveError> {
    tokio::task::spawn_blocking(move || observer.rewind(&target, &to))
        .await
        .map_err(|e| ObserveError::Task(e.to_string()))?
}

/// Commits the job's group offsets per `to`, within `timeout`, in one commit. Blocking: call it
/// from the blocking pool. Returns the offsets committed.
///
/// # Errors
/// When the brokers cannot be reached, a topic is missing, a listed partition does not exist
/// ([`ObserveError::RewindRefused`]: nothing committed), or the commit is refused.
pub fn set_offsets(
    target: &KafkaTarget,
    to: &RewindTo,
    timeout: Duration,
) -> Result<Rewound, ObserveError> {
    let left = time_left(timeout);
    let source = &target.source;
    let consumer = consumer(target, "rewind")?;
    // Every partition of the topics involved, with its end.
    let topics: Vec<String> = match to {
        RewindTo::Offsets(list) => {
            let mut t: Vec<String> = list.iter().map(|(t, _, _)| t.clone()).collect();
            t.sort_unstable();
            t.dedup();
            t
        }
        _ => source.topics.clone(),
    };
    let mut all = TopicPartitionList::new();
    for topic in &topics {
        let md = consumer
            .fetch_metadata(Some(topic), left()?)
            .map_err(ObserveError::request(&consumer, "topic metadata"))?;
        let t = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => t,
            t => return Err(ObserveError::topic(topic, t.and_then(|t| t.error()))),
        };
        for p in t.partitions() {
            all.add_partition_offset(topic, p.id(), Offset::End)
                .map_err(ObserveError::kafka("partition list"))?;
        }
    }
    let list = |l: TopicPartitionList| {
        let found = consumer
            .offsets_for_times(l, left()?)
            .map_err(ObserveError::request(&consumer, "list offsets"))?;
        for e in found.elements() {
            e.error().map_err(ObserveError::kafka("list offsets"))?;
        }
        Ok::<_, ObserveError>(found)
    };
    let at = |l: &TopicPartitionList,
              e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
        l.find_partition(e.topic(), e.partition())
            .and_then(|x| match x.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    };
    let ends = list(all.clone())?;
    let mut known = Vec::with_capacity(ends.count());
    for e in ends.elements() {
        known.push(PartitionOffsets {
            topic: e.topic().to_string(),
            partition: e.partition(),
            log_start: 0,
            end: at(&ends, &e).ok_or(ObserveError::NoOffsets("end"))?,
            committed: None,
            offset_for_time: None,
            next_timestamp: None,
            log_start_timestamp: None,
        });
    }
    let checked = match to {
        RewindTo::Offsets(asked) => {
            check_offsets(asked, &known).map_err(ObserveError::RewindRefused)?
        }
        _ => {
            let start = match to {
                RewindTo::Timestamp(ms) => Some(Offset::Offset(*ms)),
                RewindTo::Earliest => Some(Offset::Beginning),
                _ => None,
            };
            let found = match start {
                Some(offset) => {
                    let mut ask = TopicPartitionList::new();
                    for p in &known {
                        ask.add_partition_offset(&p.topic, p.partition, offset)
                            .map_err(ObserveError::kafka("partition list"))?;
                    }
                    Some(list(ask)?)
                }
                None => None,
            };
            Checked {
                offsets: known
                    .iter()
                    .map(|p| {
                        // No record at or after the time: the end, so nothing older is read again.
                        let offset = found
                            .as_ref()
                            .and_then(|f| f.find_partition(&p.topic, p.partition))
                            .and_then(|x| match x.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            })
                            .unwrap_or(p.end);
                        (p.topic.clone(), p.partition, offset)
                    })
                    .collect(),
                capped: Vec::new(),
            }
        }
    };
    let mut tpl = TopicPartitionList::with_capacity(checked.offsets.len());
    for (topic, partition, offset) in &checked.offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(ObserveError::kafka("partition list"))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(ObserveError::request(&consumer, "offset commit"))?;
    Ok(Rewound {
        offsets: checked
            .offsets
            .into_iter()
            .map(|(topic, partition, offset)| ResumedOffset {
                topic,
                partition,
                offset: Some(offset),
            })
            .collect(),
        capped: checked.capped,
    })
}
