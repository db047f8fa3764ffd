//! Kafka refusing a client's credentials or permissions: which way, and what to check. The
//! worker stops on it, the operator reports it in the job's status, in the same words.

use rdkafka::error::KafkaError;

/// Which way Kafka refused a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    /// The login failed: wrong username or password, unknown user, a mechanism or TLS
    /// setting the brokers do not accept.
    Authentication,
    /// The login worked but the principal may not do this (ACLs).
    Authorization,
}

/// Whether `e` is Kafka refusing the client's credentials or permissions.
pub fn auth_kind(e: &KafkaError) -> Option<AuthKind> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState => Some(AuthKind::Authentication),
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed => Some(AuthKind::Authorization),
        _ => None,
    }
}

/// What to check after Kafka refused the client, for every message that reports it.
pub fn auth_advice(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Authentication => {
            "Kafka authentication failed: check the credentials in the Secret named by \
             source.kafka.credentialsSecret (security.protocol, sasl.mechanism, sasl.username, \
             sasl.password, ca.crt)"
        }
        AuthKind::Authorization => {
            "Kafka authorization failed: the principal lacks the ACLs for this; grant them, or \
             check that the Secret named by source.kafka.credentialsSecret holds the intended user"
        }
    }
}
