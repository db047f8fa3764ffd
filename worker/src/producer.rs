//! Writing records to Kafka with an idempotent producer, and waiting for every ack. The one
//! writer of the Kafka sink, the dead-letter topic, the changelog and the repartition topics;
//! transactional (one per input partition) for exactly-once delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;

use crate::client::{self, Identity};
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::record::{Codecs, SchemaCodec};
use crate::spec::KafkaSource;
use crate::value::codec;

/// How long a batch may wait for its acks before the batch is replayed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest record a Weir producer sends: Weir's own record limit plus room for a key and
/// headers. librdkafka's default (1 MB) is below what the worker reads, so a dead letter of an
/// accepted 2 MB record would be refused by the dead-letter producer itself.
pub const PRODUCER_MAX_MESSAGE_BYTES: usize = crate::limits::MAX_RECORD_BYTES + (1 << 20);

/// Bytes of a refused record's value kept in what [`KafkaWriter::take_refused`] returns.
pub const REFUSED_PREFIX_BYTES: usize = 16 << 10;

/// A record the broker (or the local size check) refused as too large, as much of it as a
/// reduced copy needs: its headers, its key, the start of its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// At most [`REFUSED_PREFIX_BYTES`] of the value.
    pub prefix: Vec<u8>,
    pub value_len: usize,
    pub error: String,
}

/// Whether Kafka refused a record for its size (librdkafka's local check or the broker).
pub fn is_size_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// Counts failed deliveries, keeping the first error to report. A writer that keeps refused
/// records (the dead-letter writer) sets them aside instead of counting them as failed.
#[derive(Default)]
pub struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    keep_refused: bool,
    refused: Mutex<Vec<Refused>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::message::{Headers, Message};
        if let Err((e, m)) = result {
            if self.keep_refused && e.rdkafka_error_code().is_some_and(is_size_refusal) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = m.payload().unwrap_or_default();
                let refused = Refused {
                    topic: m.topic().to_string(),
                    key: m.key().map(<[u8]>::to_vec),
                    headers,
                    prefix: value[..value.len().min(REFUSED_PREFIX_BYTES)].to_vec(),
                    value_len: value.len(),
                    error: e.to_string(),
                };
                if let Ok(mut r) = self.refused.lock() {
                    r.push(refused);
                    return;
                }
            }
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
    /// A sink's schema'd formats (Avro, Protobuf): keys and values are written in them, not
    /// as text and JSON.
    codecs: Codecs,
}

impl KafkaWriter {
    /// # Errors
    /// When the client cannot be created.
    pub fn new(bootstrap: &str, source: &KafkaSource, id: &Identity, role: &str) -> Result<Self> {
        Self::with_deliveries(bootstrap, source, id, role, Deliveries::default())
    }

    /// A writer that sets records refused for their size aside (see [`Self::take_refused`])
    /// instead of failing the flush: the dead-letter writer, which sends reduced copies.
    ///
    /// # Errors
    /// When the client cannot be created.
    pub fn keeping_refused(
        bootstrap: &str,
        source: &KafkaSource,
        id: &Identity,
        role: &str,
    ) -> Result<Self> {
        let deliveries = Deliveries {
            keep_refused: true,
            ..Deliveries::default()
        };
        Self::with_deliveries(bootstrap, source, id, role, deliveries)
    }

    fn with_deliveries(
        bootstrap: &str,
        source: &KafkaSource,
        id: &Identity,
        role: &str,
        deliveries: Deliveries,
    ) -> Result<Self> {
        let producer = sized(client::producer(bootstrap, source, id, role), source)
            .create_with_context(deliveries)
            .map_err(Error::kafka("creating a producer"))?;
        Ok(Self {
            producer,
            key: Vec::new(),
            value: Vec::new(),
            txn_id: String::new(),
            codecs: Codecs::default(),
        })
    }

    /// The number of partitions of `topic`.
    ///
    /// # Errors
    /// The brokers did not answer, or do not have the topic.
    pub fn partitions(&self, topic: &str) -> Result<i32> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), weir_contract::client::REQUEST_TIMEOUT)
            .map_err(Error::kafka("reading a topic's partitions"))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(Error::Fatal(format!(
                "topic {topic:?} has no partitions the worker can see; it was deleted while the job ran"
            )));
        }
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    }

    /// Queues a result record: strings and bytes as they are, other values as JSON (or in
    /// the sink's schema'd formats).
    ///
    /// # Errors
    /// When the record is refused (for example, too large).
    pub fn send(&mut self, topic: &str, key: &Val, value: &Val) -> Result<()> {
        // A key or a value that does not fit the schema is the pipeline's fault, not the
        // record's: the batch stops with the reason rather than writing something else.
        let encode = |codec: &SchemaCodec, v: &Val, what: &str| {
            codec.encode(v).map_err(|why| {
                Error::Fatal(format!(
                    "{why}; fix the pipeline's output or the schema ({what}: {})",
                    v.to_string().chars().take(300).collect::<String>()
                ))
            })
        };
        match (&self.codecs.key, key) {
            (_, Val::Null) => self.key.clear(),
            (Some(codec), k) => self.key = encode(codec, k, "key")?,
            (None, k) => {
                self.key.clear();
                k.write_payload(&mut self.key);
            }
        }
        match &self.codecs.value {
            Some(codec) => self.value = encode(codec, value, "value")?,
            None => {
                self.value.clear();
                value.write_payload(&mut self.value);
            }
        }
        let key = (!matches!(key, Val::Null)).then_some(self.key.as_slice());
        produce(&self.producer, topic, None, key, Some(&self.value), None)
    }

    /// Writes keys and values with `codecs` (a sink's schema'd formats).
    pub fn with_codecs(mut self, codecs: Codecs) -> Self {
        self.codecs = codecs;
        self
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
        let ctx = self.producer.context();
        if ctx.keep_refused {
            // librdkafka refuses a record over message.max.bytes before sending it; that is
            // the same refusal as the broker's, and gets the same reduced copy.
            let kept = headers.clone();
            return match produce_inner(&self.producer, topic, None, key, payload, Some(headers)) {
                Err(ProduceError::TooLarge(e)) => {
                    use rdkafka::message::Headers;
                    let value = payload.unwrap_or_default();
                    let refused = Refused {
                        topic: topic.to_string(),
                        key: key.map(<[u8]>::to_vec),
                        headers: kept
                            .iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect(),
                        prefix: value[..value.len().min(REFUSED_PREFIX_BYTES)].to_vec(),
                        value_len: value.len(),
                        error: e,
                    };
                    if let Ok(mut r) = ctx.refused.lock() {
                        r.push(refused);
                    }
                    Ok(())
                }
                other => other.map_err(ProduceError::into_error),
            };
        }
        produce(&self.producer, topic, None, key, payload, Some(headers))
    }

    /// The records refused for their size since the last call (only a writer made with
    /// [`Self::keeping_refused`] keeps them).
    pub fn take_refused(&mut self) -> Vec<Refused> {
        self.producer
            .context()
            .refused
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
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
        self.send_encoded_with(topic, partition, key, value, None)
    }

    /// [`KafkaWriter::send_encoded`] with one header, `(name, value)`.
    ///
    /// # Errors
    /// As [`KafkaWriter::send_encoded`].
    pub fn send_encoded_with(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &Val,
        value: Option<&Val>,
        header: Option<(&str, &str)>,
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
            header.map(|(name, v)| {
                OwnedHeaders::new().insert(rdkafka::message::Header {
                    key: name,
                    value: Some(v),
                })
            }),
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

/// Where a transaction's commit spent its time.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxnTimes {
    /// Waiting for the acks of the records produced in it.
    pub acks: Duration,
    /// Adding the source offsets to it (`send_offsets_to_transaction`: AddOffsetsToTxn and
    /// TxnOffsetCommit).
    pub offsets: Duration,
    /// Committing it (EndTxn).
    pub end_txn: Duration,
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
        let producer: BaseProducer<Deliveries> =
            sized(client::producer(bootstrap, source, id, role), source)
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
            codecs: Codecs::default(),
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
    /// commits it (EndTxn); returns how long each of the three took.
    ///
    /// # Errors
    /// [`Error::Fenced`] when a newer producer took over; otherwise the transaction must be
    /// aborted.
    pub fn commit(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<TxnTimes> {
        let started = std::time::Instant::now();
        self.flush()?;
        let acked = std::time::Instant::now();
        self.producer
            .send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)
            .map_err(|e| txn_error("adding offsets to a transaction", &self.txn_id, e))?;
        let offsets_sent = std::time::Instant::now();
        self.producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| txn_error("committing a transaction", &self.txn_id, e))?;
        Ok(TxnTimes {
            acks: acked - started,
            offsets: offsets_sent - acked,
            end_txn: offsets_sent.elapsed(),
        })
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

/// Lets the producer send every record the worker accepts (a user's larger setting stays).
fn sized(mut c: rdkafka::ClientConfig, source: &KafkaSource) -> rdkafka::ClientConfig {
    let user = source
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    c.set(
        "message.max.bytes",
        user.max(PRODUCER_MAX_MESSAGE_BYTES).to_string(),
    );
    c
}

enum ProduceError {
    TooLarge(String),
    Other(String),
}

impl ProduceError {
    fn into_error(self) -> Error {
        match self {
            ProduceError::TooLarge(e) | ProduceError::Other(e) => Error::Sink(e),
        }
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
    produce_inner(producer, topic, partition, key, payload, headers)
        .map_err(ProduceError::into_error)
}

fn produce_inner(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> std::result::Result<(), ProduceError> {
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
            Err((KafkaError::MessageProduction(code), _)) if is_size_refusal(code) => {
                return Err(ProduceError::TooLarge(format!(
                    "producing to {topic}: {}",
                    KafkaError::MessageProduction(code)
                )))
            }
            Err((e, _)) => return Err(ProduceError::Other(format!("producing to {topic}: {e}"))),
        }
    }
}
