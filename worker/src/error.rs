//! The worker's errors, classified by what the engine does about them.

use rdkafka::error::KafkaError;

// The operator reports refused logins with the same advice, so the classification is shared.
pub use weir_contract::auth::{auth_advice, auth_kind, AuthKind};

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
    #[error("Kafka {op} failed: {source}{}", auth_hint(source))]
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
    /// Settings given besides the job file that cannot be used (credentials, client
    /// settings librdkafka refuses): like an invalid job, found before any record is read,
    /// and refused the same way by `validate` and `run` (exit 2).
    #[error("{0}")]
    Settings(String),
    /// A batch budget (`--batch-bytes`, `--batch-records`) that cannot work: refused before
    /// anything is read, like invalid settings (exit 2).
    #[error(transparent)]
    Budget(#[from] crate::memory::BudgetError),
    /// A newer producer with the same transactional id took over (a newer worker owns the
    /// partition): this one must stop writing.
    #[error("{0}")]
    Fenced(String),
    /// The brokers refused the client's login or its permissions: no retry can help, so the
    /// worker stops at once and says what to check.
    #[error("{0}")]
    Auth(String),
    /// A service a batch needs besides Kafka (the schema registry) did not answer: the batch
    /// is tried again, as after a broker outage.
    #[error("{0}")]
    Unavailable(String),
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
            Error::Kafka { source, .. } if auth_kind(source).is_some() => Class::Fatal,
            Error::Kafka { .. } | Error::Unreachable { .. } | Error::Unavailable(_) => {
                Class::Retriable
            }
            Error::ReadTimeout(_) | Error::Sink(_) => Class::Abortable,
            Error::Load(_)
            | Error::Pipeline(_)
            | Error::Fatal(_)
            | Error::Settings(_)
            | Error::Budget(_)
            | Error::Fenced(_)
            | Error::Auth(_)
            | Error::Cancelled => Class::Fatal,
        }
    }
}

fn auth_hint(e: &KafkaError) -> String {
    auth_kind(e).map_or_else(String::new, |k| format!("; {}", auth_advice(k)))
}

impl Error {
    /// A refused login, with librdkafka's reason (it names the mechanism and the broker's
    /// answer, never the password).
    pub fn authentication(reason: &str) -> Error {
        Error::Auth(format!(
            "{} ({reason})",
            auth_advice(AuthKind::Authentication)
        ))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
