//! The worker's errors, classified by what the engine does about them.

use rdkafka::error::KafkaError;

/// What the engine does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Try the same call again after a backoff.
    Retriable,
    /// Give up the batch: rewind to the committed offsets and run it again.
    Abortable,
    /// Stop the worker with a clear message and a non-zero exit.
    Fatal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kafka {op} failed: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: KafkaError,
    },
    /// A request the brokers did not answer, with what the client last heard from them (a
    /// refused connection, an unresolvable host), which a timeout alone does not say.
    #[error("Kafka {op} failed: {source}; the client reports: {why}")]
    Unreachable {
        op: &'static str,
        why: Box<str>,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("reading the batch timed out: {0}")]
    ReadTimeout(String),
    #[error("sink failed: {0}")]
    Sink(String),
    #[error("{0}")]
    Load(#[from] crate::spec::LoadError),
    #[error("{0}")]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("{0}")]
    Fatal(String),
    /// A newer producer with the same transactional id took over (a newer worker owns the
    /// partition): this one must stop writing.
    #[error("{0}")]
    Fenced(String),
    /// The worker was asked to stop while waiting to retry.
    #[error("stopped while retrying")]
    Cancelled,
}

impl Error {
    pub fn kafka(op: &'static str) -> impl FnOnce(KafkaError) -> Error {
        move |source| Error::Kafka { op, source }
    }

    pub fn class(&self) -> Class {
        match self {
            Error::Kafka { source, .. } if is_fatal_kafka(source) => Class::Fatal,
            Error::Kafka { .. } | Error::Unreachable { .. } => Class::Retriable,
            Error::ReadTimeout(_) | Error::Sink(_) => Class::Abortable,
            Error::Load(_)
            | Error::Pipeline(_)
            | Error::Fatal(_)
            | Error::Fenced(_)
            | Error::Cancelled => Class::Fatal,
        }
    }
}

fn is_fatal_kafka(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
        )
    )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
