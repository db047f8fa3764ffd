//! Observing Kafka for a job: input partitions, end and log-start offsets, and the job's
//! committed group offsets; and the same for each later stage of the job (after a repartition
//! step, inserted or explicit): its repartition topic and its own group.
//!
//! The [`Observer`] trait is the seam: the controller gets the real [`KafkaObserver`], tests
//! may feed the broker's answers as data (e.g. a topic that grew, which no test broker can do).
//! librdkafka's calls block, so the controller runs an observer on the blocking pool, and
//! every call here has a finite timeout.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use weir_worker::spec::{KafkaSource, StartingOffsets};

use crate::crd::StreamingJob;
use crate::scaling::PartitionCounts;

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
    let source = &target.source;
    weir_worker::client::base(&source.bootstrap_servers, source)
        .set("group.id", &target.group)
        .set("client.id", format!("weir-operator-{role}"))
        .set("enable.auto.commit", "false")
        .create_with_context(weir_worker::client::SourceContext::default())
        .map_err(ObserveError::Client)
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

/// The real observer: a short-lived librdkafka consumer per observation (no group membership:
/// it only reads offsets, so it never disturbs the workers' partition assignment).
#[derive(Clone, Debug)]
pub struct KafkaObserver {
    /// The whole observation's budget; each request gets what is left of it.
    pub timeout: Duration,
}

impl Default for KafkaObserver {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

impl Observer for KafkaObserver {
    fn kafka(&self, target: &KafkaTarget) -> Result<KafkaObservation, ObserveError> {
        let left = time_left(self.timeout);
        let source = &target.source;
        let consumer = consumer(target, "observer")?;

        let mut obs = KafkaObservation::default();
        for topic in &source.topics {
            let md = consumer
                .fetch_metadata(Some(topic), left()?)
                .map_err(ObserveError::request(&consumer, "topic metadata"))?;
            let n = match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    t.partitions().len()
                }
                t => return Err(ObserveError::topic(topic, t.and_then(|t| t.error()))),
            };
            // Kafka numbers a topic's partitions 0..n with i32 ids.
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            obs.topics.push((topic.clone(), n.unsigned_abs()));
            obs.partitions
                .extend((0..n).map(|partition| PartitionOffsets {
                    topic: topic.clone(),
                    partition,
                    log_start: 0,
                    end: 0,
                    committed: None,
                    offset_for_time: None,
                }));
        }
        // One ListOffsets request per broker for all partitions (not one per partition, as
        // per-partition watermark queries would be): thousands of partitions stay cheap.
        let starts = list_offsets(&consumer, &obs.partitions, Offset::Beginning, left()?)?;
        let ends = list_offsets(&consumer, &obs.partitions, Offset::End, left()?)?;
        let times = match &source.starting_offsets {
            StartingOffsets::Timestamp(t) => {
                let at = Offset::Offset(t.timestamp_millis());
                Some(list_offsets(&consumer, &obs.partitions, at, left()?)?)
            }
            _ => None,
        };
        let committed = consumer
            .committed_offsets(partition_list(&obs.partitions, Offset::Invalid)?, left()?)
            .map_err(ObserveError::request(&consumer, "committed offsets"))?;
        for p in &mut obs.partitions {
            p.log_start = offset_of(&starts, p).ok_or(ObserveError::NoOffsets("log start"))?;
            p.end = offset_of(&ends, p).ok_or(ObserveError::NoOffsets("end"))?;
            p.committed = offset_of(&committed, p);
            p.offset_for_time = times.as_ref().and_then(|t| offset_of(t, p));
        }
        for stage in &target.stages {
            obs.stages.push(observe_stage(source, stage, left()?)?);
        }
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
    source: &KafkaSource,
    stage: &StageTarget,
    timeout: Duration,
) -> Result<StageOffsets, ObserveError> {
    let left = time_left(timeout);
    let consumer: ObserveConsumer = weir_worker::client::base(&source.bootstrap_servers, source)
        .set("group.id", &stage.group)
        .set("client.id", "weir-operator-observer")
        .set("enable.auto.commit", "false")
        .create_with_context(weir_worker::client::SourceContext::default())
        .map_err(ObserveError::Client)?;
    let md = consumer
        .fetch_metadata(Some(&stage.topic), left()?)
        .map_err(ObserveError::request(&consumer, "topic metadata"))?;
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
        })
        .collect();
    if !partitions.is_empty() {
        let starts = list_offsets(&consumer, &partitions, Offset::Beginning, left()?)?;
        let ends = list_offsets(&consumer, &partitions, Offset::End, left()?)?;
        let committed = consumer
            .committed_offsets(partition_list(&partitions, Offset::Invalid)?, left()?)
            .map_err(ObserveError::request(&consumer, "committed offsets"))?;
        for p in &mut partitions {
            p.log_start = offset_of(&starts, p).ok_or(ObserveError::NoOffsets("log start"))?;
            p.end = offset_of(&ends, p).ok_or(ObserveError::NoOffsets("end"))?;
            p.committed = offset_of(&committed, p);
        }
    }
    Ok(StageOffsets {
        stage: stage.stage.clone(),
        group: stage.group.clone(),
        partitions,
    })
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
