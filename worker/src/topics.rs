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

/// Creates `topic` with `partitions` (compacted when `compact`) if it is missing; checks an
/// existing one has at least that many partitions.
///
/// # Errors
/// When the topic is missing and cannot be created, or has too few partitions; the message
/// says how to create it by hand.
pub fn ensure(spec: &JobSpec, topic: &str, partitions: i32, compact: bool) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client::base(&spec.source.kafka.bootstrap_servers, &spec.source.kafka)
            .create()
            .map_err(Error::kafka("creating an admin client"))?;
    let policy = if compact { "compact" } else { "delete" };
    let how =
        format!("create it with at least {partitions} partitions and cleanup.policy={policy}");
    let existing = admin
        .inner()
        .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
        .map_err(Error::kafka("metadata"))?;
    if let Some(t) = existing
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    {
        let have = t.partitions().len() as i32;
        if have < partitions {
            return Err(Error::Fatal(format!(
                "topic {topic:?} has {have} partitions but the job's input has {partitions}: add partitions to it ({how})"
            )));
        }
        return Ok(());
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
