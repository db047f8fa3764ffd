//! The topics a job's workers own besides its input and output: the changelog of its keyed
//! state and the repartition topics between its stages. Workers create them when missing, so
//! a job needs no setup beyond its input topics (and the right to create topics).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tracing::info;

use crate::client;
use crate::error::{Error, Result};
use crate::spec::JobSpec;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How many partitions a topic of the job needs.
#[derive(Clone, Copy, Debug)]
pub enum Partitions<'a> {
    /// As many as the job's input, or more.
    AtLeast(i32),
    /// Exactly as many as a partitioned join table (named), whose partitioning it copies.
    Like(i32, &'a str),
}

/// Creates `topic` with the partitions it needs (compacted when `compact`) if it is missing;
/// checks an existing one has them.
///
/// # Errors
/// When the topic is missing and cannot be created, or has a partition count it cannot have;
/// the message says how to create it by hand.
pub fn ensure(spec: &JobSpec, topic: &str, needs: Partitions<'_>, compact: bool) -> Result<()> {
    let admin = admin(spec, &spec.source.kafka.bootstrap_servers)?;
    let policy = if compact { "compact" } else { "delete" };
    let (partitions, how) = match needs {
        Partitions::AtLeast(n) => (
            n,
            format!("create it with at least {n} partitions and cleanup.policy={policy}"),
        ),
        Partitions::Like(n, _) => (
            n,
            format!("create it with exactly {n} partitions and cleanup.policy={policy}"),
        ),
    };
    if let Some(have) = existing_partitions(&admin, topic)? {
        return match needs {
            Partitions::AtLeast(n) if have < n => Err(Error::Fatal(format!(
                "topic {topic:?} has {have} partitions but the job's input has {n}: add partitions to it ({how})"
            ))),
            Partitions::Like(n, table) if have != n => Err(Error::Fatal(format!(
                "topic {topic:?} has {have} partitions but the join table {table:?} has {n}: a partitioned join needs the same count on both sides; with the job stopped and the topic read to its end, delete it (the job recreates it) or {how}"
            ))),
            _ => Ok(()),
        };
    }
    let new =
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", policy);
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let result = futures::executor::block_on(admin.create_topics([&new], &opts));
    match result.as_deref() {
        Ok([Ok(_)]) => {
            info!(topic, partitions, policy, "created a topic of the job");
            Ok(())
        }
        Ok([Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))]) => Ok(()),
        Ok(other) => Err(Error::Fatal(format!(
            "could not create topic {topic:?} ({other:?}); {how}"
        ))),
        Err(e) => Err(Error::Fatal(format!(
            "could not create topic {topic:?} ({e}); {how}"
        ))),
    }
}

/// Whether `topic` exists and holds at least one record in any partition.
///
/// # Errors
/// When the brokers cannot be asked.
pub fn holds_records(spec: &JobSpec, topic: &str) -> Result<bool> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        client::base(&spec.source.kafka.bootstrap_servers, &spec.source.kafka)
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(Error::kafka("creating a client"))?;
    let md = consumer
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(Error::kafka("metadata"))?;
    let Some(t) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Ok(false);
    };
    for p in t.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), ADMIN_TIMEOUT)
            .map_err(Error::kafka("watermarks"))?;
        if high > low {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The partition count of `topic` on `bootstrap` (default: the job's brokers).
///
/// # Errors
/// When the brokers cannot be asked, or do not have the topic.
pub fn partition_count(spec: &JobSpec, topic: &str, bootstrap: Option<&str>) -> Result<i32> {
    let bootstrap = bootstrap.unwrap_or(&spec.source.kafka.bootstrap_servers);
    existing_partitions(&admin(spec, bootstrap)?, topic)?.ok_or_else(|| {
        Error::Fatal(format!(
            "topic {topic:?} does not exist on {bootstrap}; create it"
        ))
    })
}

fn admin(spec: &JobSpec, bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    client::base(bootstrap, &spec.source.kafka)
        .create()
        .map_err(Error::kafka("creating an admin client"))
}

/// The partition count of `topic`, when it exists with partitions.
fn existing_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Option<i32>> {
    let md = admin
        .inner()
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(Error::kafka("metadata"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
}
