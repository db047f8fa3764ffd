//! PURE: what an observation of Kafka is for a job: where it reads (its target), what was
//! found (partitions with their offsets, per topic and per later stage), and why a read
//! failed. The I/O that fills them is [`crate::observe`]; everything that decides from them
//! (lag, conditions, restarts, rewinds) reads these types without depending on it.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use weir_contract::spec::KafkaSource;

use crate::crd::StreamingJob;
use crate::scaling::PartitionCounts;

/// Which Kafka data a job reads and where its offsets live.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaTarget {
    pub source: KafkaSource,
    pub group: String,
    /// The job's later stages, as the workers split it (`weir_contract::stages::split`).
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
        let file = weir_contract::spec::JobFile {
            name: name.to_string(),
            namespace: namespace.to_string(),
            // A spec whose SQL does not compile has no stages to observe; reconcile reports why.
            spec: job
                .spec
                .job
                .expand_sql()
                .unwrap_or_else(|_| job.spec.job.clone()),
        };
        let stages = weir_contract::stages::split(&file)
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
        move |source| match weir_contract::auth::auth_kind(&source) {
            Some(kind) => Self::Auth {
                op,
                advice: weir_contract::auth::auth_advice(kind),
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
        move |source| match weir_contract::client::auth_failure(consumer) {
            Some(reason) => Self::Auth {
                op,
                advice: weir_contract::auth::auth_advice(
                    weir_contract::auth::AuthKind::Authentication,
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
pub(crate) type ObserveConsumer = BaseConsumer<weir_contract::client::SourceContext>;
