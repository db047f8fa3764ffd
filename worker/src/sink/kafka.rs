//! Writing records to Kafka with an idempotent producer, and waiting for every ack.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;

use super::{BatchOutput, Sink};
use crate::changelog::codec;
use crate::client::{self, Identity};
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::spec::KafkaSource;

/// How long a batch may wait for its acks before the batch is replayed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Counts failed deliveries, keeping the first error to report.
#[derive(Default)]
pub struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// An idempotent producer that knows whether everything it sent was acknowledged.
pub struct KafkaWriter {
    producer: BaseProducer<Deliveries>,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Empty unless the producer is transactional.
    txn_id: String,
}

impl KafkaWriter {
    /// # Errors
    /// When the client cannot be created.
    pub fn new(bootstrap: &str, source: &KafkaSource, id: &Identity, role: &str) -> Result<Self> {
        let producer = client::producer(bootstrap, source, id, role)
            .create_with_context(Deliveries::default())
            .map_err(Error::kafka("creating a producer"))?;
        Ok(Self {
            producer,
            key: Vec::new(),
            value: Vec::new(),
            txn_id: String::new(),
        })
    }

    /// Queues a result record: strings and bytes as they are, other values as JSON.
    ///
    /// # Errors
    /// When the record is refused (for example, too large).
    pub fn send(&mut self, topic: &str, key: &Val, value: &Val) -> Result<()> {
        self.key.clear();
        self.value.clear();
        key.write_payload(&mut self.key);
        value.write_payload(&mut self.value);
        let key = (!matches!(key, Val::Null)).then_some(self.key.as_slice());
        produce(&self.producer, topic, None, key, Some(&self.value), None)
    }

    /// Queues a record as raw bytes (dead letters keep the original bytes).
    ///
    /// # Errors
    /// When the record is refused.
    pub fn send_raw(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<()> {
        produce(&self.producer, topic, None, key, payload, Some(headers))
    }

    /// Queues a record in the worker's own encoding (lossless for every CEL type); `None` is a
    /// tombstone. The changelog names the partition (its input's); without one, the key's hash
    /// picks it, so equal keys meet in one partition.
    ///
    /// # Errors
    /// When the record is refused.
    pub fn send_encoded(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &Val,
        value: Option<&Val>,
    ) -> Result<()> {
        self.key.clear();
        self.value.clear();
        codec::encode(key, &mut self.key);
        if let Some(v) = value {
            codec::encode(v, &mut self.value);
        }
        let payload = value.map(|_| self.value.as_slice());
        produce(
            &self.producer,
            topic,
            partition,
            Some(&self.key),
            payload,
            None,
        )
    }

    /// The end offset of a partition, as the brokers say now.
    ///
    /// # Errors
    /// When the brokers do not answer.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Result<i64> {
        self.producer
            .client()
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map(|(_, high)| high)
            .map_err(Error::kafka("watermarks"))
    }

    /// Waits until everything sent so far is acknowledged.
    ///
    /// # Errors
    /// When a delivery failed or the acks did not arrive in time.
    pub fn flush(&mut self) -> Result<()> {
        // Serve delivery reports until none is outstanding. (rdkafka's flush waits in 100 ms
        // steps before it serves them, which added 100 ms to every batch.)
        let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() > deadline {
                return Err(Error::Sink(format!(
                    "{} records not acknowledged after {FLUSH_TIMEOUT:?}",
                    self.producer.in_flight_count()
                )));
            }
            self.producer.poll(Duration::from_millis(5));
        }
        let deliveries = self.producer.context();
        let failed = deliveries.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let first = deliveries
                .first_error
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_default();
            return Err(Error::Sink(format!(
                "{failed} records were not acknowledged; first error: {first}"
            )));
        }
        Ok(())
    }
}

/// How long a transactional call may take before the batch fails.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaWriter {
    /// A transactional producer, with every earlier producer of `transactional_id` fenced and
    /// its open transaction aborted.
    ///
    /// # Errors
    /// When the client cannot be created or the broker refuses transactions.
    pub fn transactional(
        bootstrap: &str,
        source: &KafkaSource,
        id: &Identity,
        role: &str,
        transactional_id: &str,
        transaction_timeout: Duration,
    ) -> Result<Self> {
        let producer: BaseProducer<Deliveries> = client::producer(bootstrap, source, id, role)
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                transaction_timeout.as_millis().to_string(),
            )
            .create_with_context(Deliveries::default())
            .map_err(Error::kafka("creating a transactional producer"))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| txn_error("starting transactions", transactional_id, e))?;
        Ok(Self {
            producer,
            key: Vec::new(),
            value: Vec::new(),
            txn_id: transactional_id.to_string(),
        })
    }

    /// # Errors
    /// When the producer was fenced or is in a failed state.
    pub fn begin(&mut self) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| txn_error("beginning a transaction", &self.txn_id, e))
    }

    /// Waits for every record's ack, adds `offsets` of `group` to the transaction and
    /// commits it.
    ///
    /// # Errors
    /// [`Error::Fenced`] when a newer producer took over; otherwise the transaction must be
    /// aborted.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        self.flush()?;
        self.producer
            .send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)
            .map_err(|e| txn_error("adding offsets to a transaction", &self.txn_id, e))?;
        self.producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| txn_error("committing a transaction", &self.txn_id, e))
    }

    /// # Errors
    /// When the abort itself fails (the producer is then unusable).
    pub fn abort(&mut self) -> Result<()> {
        self.producer
            .abort_transaction(TXN_TIMEOUT)
            .map_err(|e| txn_error("aborting a transaction", &self.txn_id, e))
    }
}

/// Fencing and other fatal producer states stop the worker; anything else fails the batch.
fn txn_error(what: &str, txn_id: &str, e: KafkaError) -> Error {
    let fenced = match &e {
        KafkaError::Transaction(t) => {
            t.is_fatal()
                || matches!(
                    t.code(),
                    RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
                )
        }
        _ => false,
    };
    if fenced {
        Error::Fenced(format!(
            "{what} for transactional id {txn_id:?}: {e}; a newer worker owns this partition (or this producer can no longer write), so this worker stops; the partition resumes from its committed offsets"
        ))
    } else {
        Error::Sink(format!("{what} for transactional id {txn_id:?}: {e}"))
    }
}

/// Queues a record, waiting for room when the local queue is full.
fn produce(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    let mut headers = headers;
    loop {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if let Some(h) = headers.take() {
            rec = rec.headers(h);
        }
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                headers = rec.headers;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(Error::Sink(format!("producing to {topic}: {e}"))),
        }
    }
}

/// The Kafka sink (at-least-once): results are produced, then acked, then offsets commit.
pub struct KafkaSink {
    writer: KafkaWriter,
    topic: Arc<str>,
    /// Records for the job's next stage, in the worker's own encoding.
    shuffle: bool,
}

impl KafkaSink {
    pub fn new(writer: KafkaWriter, topic: Arc<str>, shuffle: bool) -> Self {
        Self {
            writer,
            topic,
            shuffle,
        }
    }
}

/// Queues one output record, as a sink's readers expect it or for the next stage.
pub(super) fn send_output(
    w: &mut KafkaWriter,
    topic: &str,
    shuffle: bool,
    key: &Val,
    value: &Val,
) -> Result<()> {
    if shuffle {
        w.send_encoded(topic, None, key, Some(value))
    } else {
        w.send(topic, key, value)
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        for p in &batch.partitions {
            for o in p.outputs {
                send_output(
                    &mut self.writer,
                    &self.topic,
                    self.shuffle,
                    &o.key,
                    &o.value,
                )?;
            }
        }
        self.writer.flush()
    }
}
