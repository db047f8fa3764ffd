//! librdkafka client settings: the shared part (ids, base settings, the client context that
//! watches the link) is the contract's [`weir_contract::client`]; here, the check that
//! `weir-worker validate` runs with them, which reports a worker error.

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;

pub use weir_contract::client::*;
use weir_contract::spec::KafkaSource;

/// Creates a consumer and a producer from the job's settings, exactly as `run` will, and drops
/// them: librdkafka checks every setting when a client is created (a protocol or SASL
/// mechanism this build cannot serve, an unreadable CA file, a malformed PEM), without waiting
/// for a broker. So `weir-worker validate` refuses what `run` would fail on.
///
/// # Errors
/// [`crate::error::Error::Settings`] with librdkafka's reason, which names the setting (never a
/// credential's value: those take any text, so librdkafka never quotes them as invalid).
pub fn check_settings(source: &KafkaSource) -> crate::error::Result<()> {
    let id = Identity {
        namespace: "validate".into(),
        job: "validate".into(),
        ordinal: 0,
        workers: 1,
    };
    let refused = |e: KafkaError| {
        let reason = match e {
            KafkaError::ClientConfig(_, desc, key, _) => format!("{key}: {desc}"),
            KafkaError::ClientCreation(s) => s,
            e => e.to_string(),
        };
        crate::error::Error::Settings(format!(
            "the Kafka client settings (source.kafka.properties and the credentials) cannot be \
             used: {reason}; Weir's build serves security.protocol {} and sasl.mechanism {}",
            crate::credentials::PROTOCOLS.join(", "),
            crate::credentials::MECHANISMS.join(", ")
        ))
    };
    // Without brokers to talk to: a client starts connecting to its bootstrap servers as soon
    // as it exists, and a check must not (the brokers may not be reachable from where
    // `validate` runs, and `run --embedded` replaces them after this check).
    let mut c = consumer(source, &id, "weir-validate");
    c.remove("bootstrap.servers");
    let consumer: BaseConsumer = c.create().map_err(refused)?;
    drop(consumer);
    let mut p = producer(&source.bootstrap_servers, source, &id, "validate");
    p.remove("bootstrap.servers");
    let producer: BaseProducer = p.create().map_err(refused)?;
    drop(producer);
    Ok(())
}
