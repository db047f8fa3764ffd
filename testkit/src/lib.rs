//! Test support for every crate of the workspace (not published): the real parts the tests
//! run against, started one way and with their versions and quirks written down once.
//!
//! - [`tools`]: where the installed tools are (tansu, PostgreSQL, promtool, prometheus,
//!   chromium, kubectl, helm), and the rule that CI must have each of them.
//! - [`broker`]: a Kafka to talk to: librdkafka's mock cluster in this process or in its own
//!   (`weir-worker mock-kafka`), or tansu with its sqlite engine.
//! - [`kafka`]: produce to, read back from, and read the commits of such a broker.
//! - [`pg`]: a throwaway PostgreSQL server.
//! - [`net`] and [`process`]: free and refused ports, a minimal HTTP GET, waiting, and child
//!   processes killed when the test ends however it ends.

pub mod broker;
pub mod kafka;
pub mod net;
#[cfg(feature = "pg")]
pub mod pg;
pub mod process;
pub mod random;
pub mod tools;

pub use broker::Broker;
pub use net::{eventually, free_port, http_get, refused_address, refused_port};
pub use process::{signal, Killed};

/// What a support call can fail with: the outside system's own error, kept as the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, Error>;
