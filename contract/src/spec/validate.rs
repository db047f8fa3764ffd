//! Checks a job spec once, at load: everything that can be known before the first batch.
//!
//! Each problem names the field (a path from the spec's root) and says what to set. All problems
//! are reported together, so a user fixes a manifest in one round.

use std::collections::HashSet;
use std::fmt;

mod formats;
mod join;
mod time;

use super::{is_dns_label, JobSpec, StepSpec};
use crate::expr;

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the spec's root, e.g. `pipeline[2].window.length`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// librdkafka settings that hold secrets: they belong in the credentials secret. The CRD's
/// rule on `properties` lists the same keys (a test keeps them in step).
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.username",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Settings Weir owns: changing them would break its offset guarantees.
const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
];

/// The smallest batch interval: below it, broker round trips dominate every batch.
pub const MIN_BATCH_INTERVAL_MS: u128 = 10;

pub(super) struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    pub(super) fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub(super) fn expr(&mut self, field: String, source: &str, vars: &[&str]) {
        if let Err(e) = expr::check(source, vars) {
            self.err(field, e.to_string());
        }
    }

    /// A ConfigMap key's name and key, as Kubernetes accepts them.
    pub(super) fn config_map(&mut self, at: &str, cm: &super::ConfigMapKey) {
        if !is_dns_subdomain(&cm.name) {
            self.err(
                format!("{at}.name"),
                format!(
                    "{:?} is not a ConfigMap name (lower-case letters, digits, '-' and '.')",
                    cm.name
                ),
            );
        }
        let key_ok = !cm.key.is_empty()
            && cm.key.len() <= 253
            && cm
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !key_ok || cm.key == "." || cm.key == ".." {
            self.err(
                format!("{at}.key"),
                format!(
                    "{:?} is not a ConfigMap key (letters, digits, '-', '.' and '_')",
                    cm.key
                ),
            );
        }
    }

    fn topic(&mut self, field: String, topic: &str) {
        if let Err(why) = check_topic_name(topic) {
            self.err(field, why);
        }
    }
}

/// Whether librdkafka knows a property and accepts its value, as it would when the worker
/// creates its clients (which happens after the job started). Only the configuration is
/// built: nothing connects.
///
/// # Errors
/// librdkafka's reason, e.g. "No such configuration property" or "outside allowed range".
pub fn check_client_property(key: &str, value: &str) -> Result<(), String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(key, value);
    match c.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, desc, _, _)) => {
            Err(format!("librdkafka refuses it: {desc}"))
        }
        Err(e) => Err(format!("librdkafka refuses it: {e}")),
    }
}

/// Kubernetes' rule for Secret (and most object) names: a DNS-1123 subdomain.
pub(super) fn is_dns_subdomain(name: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && ok_end(name.chars().next())
        && ok_end(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Kafka's own rule for topic names.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!("topic name {topic:?} must be 1 to 249 characters"));
    }
    if topic == "." || topic == ".." {
        return Err(format!("topic name {topic:?} is not allowed by Kafka"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {topic:?} has {c:?}; Kafka allows letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl JobSpec {
    /// Checks the whole spec.
    ///
    /// # Errors
    /// Every problem found, each naming its field and what to set.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        if !self.has_sql() {
            return self.check();
        }
        self.validated().map(|_| ())
    }

    /// Checks the spec and returns the spec that runs: SQL steps compiled to theirs (problems
    /// of a compiled step are named by its SQL step).
    ///
    /// # Errors
    /// As [`JobSpec::validate`].
    pub(super) fn validated(&self) -> Result<JobSpec, ValidationErrors> {
        let (expanded, origin) = super::sql::expand(self)?;
        expanded
            .check()
            .map_err(|e| super::sql::remap(e, &origin, self, &expanded))?;
        Ok(expanded)
    }

    /// Checks a spec without SQL steps.
    fn check(&self) -> Result<(), ValidationErrors> {
        let mut c = Checker { errors: Vec::new() };
        let interval = self.batch_interval.as_millis();
        if interval < MIN_BATCH_INTERVAL_MS {
            c.err(
                "batchInterval",
                format!(
                    "{} is too short; set at least {MIN_BATCH_INTERVAL_MS}ms",
                    self.batch_interval
                ),
            );
        }

        let k = &self.source.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            c.err(
                "source.kafka.bootstrapServers",
                "is empty; set host:port of at least one broker",
            );
        }
        if k.topics.is_empty() {
            c.err(
                "source.kafka.topics",
                "is empty; list at least one input topic",
            );
        }
        let mut seen = HashSet::new();
        for (i, t) in k.topics.iter().enumerate() {
            c.topic(format!("source.kafka.topics[{i}]"), t);
            if !seen.insert(t) {
                c.err(
                    format!("source.kafka.topics[{i}]"),
                    format!("topic {t:?} is listed twice"),
                );
            }
        }
        for (i, o) in k.specific_offsets.iter().enumerate() {
            if !k.topics.contains(&o.topic) {
                c.err(
                    format!("source.kafka.specificOffsets[{i}].topic"),
                    format!("{:?} is not one of source.kafka.topics", o.topic),
                );
            }
            if o.partition < 0 || o.offset < 0 {
                c.err(
                    format!("source.kafka.specificOffsets[{i}]"),
                    "partition and offset must be >= 0",
                );
            }
        }
        if k.max_rate_per_partition == Some(0) {
            c.err(
                "source.kafka.maxRatePerPartition",
                "must be at least 1 (records per second), or left out for no limit",
            );
        }
        if k.backpressure.min_rate == 0 {
            c.err("source.kafka.backpressure.minRate", "must be at least 1");
        }
        if k.backpressure.initial_rate == Some(0) {
            c.err(
                "source.kafka.backpressure.initialRate",
                "must be at least 1",
            );
        }
        if k.retries.backoff.as_millis() == 0 {
            c.err(
                "source.kafka.retries.backoff",
                "must be longer than 0s, e.g. 500ms",
            );
        }
        if let Some(name) = &k.credentials_secret {
            if !is_dns_subdomain(name) {
                c.err(
                    "source.kafka.credentialsSecret",
                    format!(
                        "{name:?} is not a Secret name: at most 253 lowercase letters, digits, \
                         '-' and '.', starting and ending with a letter or digit"
                    ),
                );
            }
        }
        if let Some(g) = &k.group_id {
            if g.trim().is_empty() {
                c.err(
                    "source.kafka.groupId",
                    "is empty; leave it out for the default weir.<namespace>.<job>",
                );
            }
        }
        for key in k.properties.keys() {
            let field = format!("source.kafka.properties[{key:?}]");
            if SECRET_PROPERTIES.contains(&key.as_str()) {
                c.err(
                    field,
                    "holds a credential; put it in the Secret named by credentialsSecret instead",
                );
            } else if RESERVED_PROPERTIES.contains(&key.as_str()) {
                c.err(field, "is set by Weir to keep its offset guarantees; remove it (use groupId or startingOffsets)");
            } else if let Err(why) = check_client_property(key, &k.properties[key]) {
                c.err(field, why);
            }
        }

        self.validate_pipeline(&mut c, interval);
        time::source(&mut c, self);
        self.validate_sink(&mut c);
        formats::check(&mut c, self);

        if let Some(d) = &self.dead_letter {
            c.topic("deadLetter.topic".into(), &d.topic);
        }
        if let Some(cp) = &self.checkpoint {
            if cp.snapshot_interval.is_some_and(|d| d.as_millis() == 0) {
                c.err("checkpoint.snapshotInterval", "must be longer than 0s");
            }
            // A reset may name a step the pipeline no longer has: that is how a removed or
            // renamed step's state is let go.
            for (i, id) in cp.reset_state.iter().enumerate() {
                if id.is_empty() {
                    c.err(
                        format!("checkpoint.resetState[{i}]"),
                        "is empty; name the id of a pipeline step whose state should be dropped",
                    );
                }
            }
        }

        if c.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.errors))
        }
    }

    fn validate_pipeline(&self, c: &mut Checker, interval: u128) {
        let mut ids = HashSet::new();
        let mut item = false;
        let mut table = false;
        for (i, step) in self.pipeline.iter().enumerate() {
            let at = format!("pipeline[{i}]");
            if !is_dns_label(&step.id) {
                c.err(
                    format!("{at}.id"),
                    format!("{:?} must be lower-case letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit", step.id),
                );
            }
            if !ids.insert(step.id.as_str()) {
                c.err(
                    format!("{at}.id"),
                    format!(
                        "{:?} is used by an earlier step; step ids must be unique",
                        step.id
                    ),
                );
            }
            let ops = step.operations();
            match ops.as_slice() {
                [] => c.err(&at, "has no operation; set one of filter, map, select, flatMap, keyBy, aggregate, state, repartition, join, intervalJoin, sql"),
                [_] => {}
                many => c.err(&at, format!("sets {}; a step does exactly one thing, split it into several steps", many.join(" and "))),
            }
            let mut vars: Vec<&str> = expr::Var::RECORD.iter().map(|v| v.name()).collect();
            if item {
                vars.push("item");
            }
            // A join's row travels with the record to the steps after it, but not through a
            // shuffle, which a keyed step may follow.
            if step.aggregate.is_some() || step.state.is_some() || step.repartition.is_some() {
                table = false;
            }
            if table {
                vars.push("table");
            }
            if let Some(j) = &step.join {
                join::check(c, &at, j, &vars);
                table = true;
            }
            if let Some(j) = &step.interval_join {
                join::interval(c, self, &at, j);
            }
            if let Some(e) = &step.filter {
                c.expr(format!("{at}.filter"), e, &vars);
            }
            if let Some(e) = &step.map {
                c.expr(format!("{at}.map"), e, &vars);
            }
            if let Some(fields) = &step.select {
                if fields.is_empty() {
                    c.err(format!("{at}.select"), "is empty; name at least one field");
                }
                for (name, e) in fields {
                    c.expr(format!("{at}.select.{name}"), e, &vars);
                }
            }
            if let Some(e) = &step.flat_map {
                c.expr(format!("{at}.flatMap"), e, &vars);
                item = true;
            }
            if let Some(e) = &step.key_by {
                c.expr(format!("{at}.keyBy"), e, &vars);
            }
            if let Some(a) = &step.aggregate {
                let members: Vec<(&str, Option<&String>)> = vec![
                    ("sum", a.sum.as_ref()),
                    ("min", a.min.as_ref()),
                    ("max", a.max.as_ref()),
                    ("avg", a.avg.as_ref()),
                    ("collect", a.collect.as_ref()),
                ];
                let set = members.iter().filter(|(_, e)| e.is_some()).count()
                    + usize::from(a.count.is_some())
                    + usize::from(a.reduce.is_some());
                if set != 1 {
                    c.err(
                        format!("{at}.aggregate"),
                        "set exactly one of count, sum, min, max, avg, reduce, collect",
                    );
                }
                for (name, e) in members {
                    if let Some(e) = e {
                        c.expr(format!("{at}.aggregate.{name}"), e, &vars);
                    }
                }
                if let Some(e) = &a.reduce {
                    c.expr(format!("{at}.aggregate.reduce"), e, &["a", "b", "key"]);
                }
            }
            if let Some(w) = &step.window {
                time::window(c, self, &at, step, w, interval);
            }
            if let Some(s) = &step.state {
                let state_vars = ["key", "values", "state", "timingOut", "removing"];
                if let Some(e) = &s.initial {
                    c.expr(format!("{at}.state.initial"), e, &["key"]);
                }
                c.expr(format!("{at}.state.update"), &s.update, &state_vars);
                if let Some(e) = &s.remove {
                    c.expr(format!("{at}.state.remove"), e, &["key", "state"]);
                }
                if s.timeout.is_some_and(|t| t.as_millis() < interval) {
                    c.err(
                        format!("{at}.state.timeout"),
                        format!(
                            "is shorter than batchInterval {}; set at least that",
                            self.batch_interval
                        ),
                    );
                }
            }
            if step.per_partition && step.aggregate.is_none() && step.state.is_none() {
                c.err(
                    format!("{at}.perPartition"),
                    "applies to an aggregate or state step, the steps that group by key; remove it here",
                );
            }
            if let Some(on) = step.combine {
                combine_check(c, &at, step, on);
            }
            if let Some(r) = &step.repartition {
                if let Some(t) = &r.topic {
                    c.topic(format!("{at}.repartition.topic"), t);
                }
                // Records are shuffled by key: without a keyBy since the last shuffle (or the
                // input), every record would meet every other by its input key instead.
                let since = self.pipeline[..i]
                    .iter()
                    .rposition(|s| s.repartition.is_some())
                    .map_or(0, |r| r + 1);
                if !self.pipeline[since..i].iter().any(|s| s.key_by.is_some()) {
                    c.err(
                        format!("{at}.repartition"),
                        "has no keyBy step before it; records are repartitioned by their key, so add a keyBy step that says what should meet",
                    );
                }
            }
        }
    }

    fn validate_sink(&self, c: &mut Checker) {
        let s = &self.sink;
        let set = usize::from(s.stdout.is_some())
            + usize::from(s.kafka.is_some())
            + usize::from(s.file.is_some())
            + usize::from(s.postgres.is_some());
        if set == 0 {
            c.err("sink", "set at least one of stdout, kafka, file, postgres");
        }
        let exactly_once = s
            .kafka
            .as_ref()
            .is_some_and(|k| k.delivery == super::Delivery::ExactlyOnce);
        if exactly_once && s.postgres.is_some() {
            // Each commits a batch in a transaction of its own, and nothing makes the two one:
            // a crash between them leaves a batch in one and not the other.
            c.err(
                "sink.kafka.delivery",
                "exactlyOnce cannot hold beside sink.postgres: each commits a batch in its own transaction and no transaction spans both, so a crash between them would leave the batch in one only; set delivery: atLeastOnce (PostgreSQL stays exactly-once, its offsets are the job's record) or write to one of them",
            );
        }
        if let Some(p) = &s.postgres {
            if let Err(e) = check_table_name(&p.table) {
                c.err("sink.postgres.table", e);
            }
            if let Some(url) = &p.url {
                if let Err(e) = check_url_has_no_password(url) {
                    c.err("sink.postgres.url", e);
                }
            }
            if p.url.is_some() && p.url_file.is_some() {
                c.err(
                    "sink.postgres",
                    "set url or urlFile, not both (urlFile holds the whole URL)",
                );
            }
        }
        if let Some(k) = &s.kafka {
            c.topic("sink.kafka.topic".into(), &k.topic);
            if self.source.kafka.topics.contains(&k.topic) {
                c.err(
                    "sink.kafka.topic",
                    format!(
                        "{:?} is also an input topic; the job would read its own output",
                        k.topic
                    ),
                );
            }
            for (i, r) in k.routes.iter().enumerate() {
                let at = format!("sink.kafka.routes[{i}]");
                c.topic(format!("{at}.topic"), &r.topic);
                if self.source.kafka.topics.contains(&r.topic) {
                    c.err(
                        format!("{at}.topic"),
                        format!(
                            "{:?} is also an input topic; the job would read its own output",
                            r.topic
                        ),
                    );
                }
                c.expr(format!("{at}.when"), &r.when, &["key", "value"]);
            }
        }
        if let Some(f) = &s.file {
            if f.path.trim().is_empty() {
                c.err(
                    "sink.file.path",
                    "is empty; set the directory for batch files",
                );
            }
        }
    }
}

/// A table name the sink can quote as is: an identifier, optionally schema-qualified.
pub fn check_table_name(table: &str) -> Result<(), String> {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && s.len() <= 63
    };
    let mut parts = table.split('.');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(t), None, _) => ident(t),
        (Some(s), Some(t), None) => ident(s) && ident(t),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{table:?} is not a table name: letters, digits and _, at most 63 each, as table or schema.table"
        ))
    }
}

/// A password in the spec would sit in clear text in the cluster (and in `kubectl get -o
/// yaml`): refuse it, whatever form the URL takes.
pub fn check_url_has_no_password(url: &str) -> Result<(), String> {
    const ADVICE: &str = "a password does not belong in the job spec; put the whole URL in a Secret and set urlFile to its mounted file, or give the password as PGPASSWORD in the worker's environment";
    let lower = url.to_ascii_lowercase();
    let has = if let Some(rest) = lower
        .strip_prefix("postgresql://")
        .or_else(|| lower.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u);
        userinfo.is_some_and(|u| u.contains(':')) || lower.contains("password=")
    } else {
        lower
            .split_whitespace()
            .any(|kv| kv.starts_with("password"))
    };
    if has {
        Err(format!("contains a password: {ADVICE}"))
    } else {
        Ok(())
    }
}

fn round_up(ms: u128, interval: u128) -> super::Duration {
    let n = ms.div_ceil(interval).max(1) * interval;
    super::Duration::from_millis(u64::try_from(n).unwrap_or(u64::MAX))
}

/// `combine` applies to an aggregate, and `combine: true` only to one whose partials the next
/// stage can merge into the same result (see `stages::combinable`, which this mirrors).
fn combine_check(c: &mut Checker, at: &str, step: &StepSpec, on: bool) {
    let Some(a) = &step.aggregate else {
        c.err(
            format!("{at}.combine"),
            "applies to an aggregate step, the one a shuffle can combine for; remove it here",
        );
        return;
    };
    if !on {
        return;
    }
    if a.reduce.is_some() || a.collect.is_some() {
        c.err(
            format!("{at}.combine"),
            "cannot be true for a reduce (its expression need not be associative and commutative, so partials could change its result) or a collect (its result is every value); remove combine",
        );
        return;
    }
    let Some(e) = [&a.sum, &a.min, &a.max, &a.avg]
        .into_iter()
        .flatten()
        .next()
    else {
        return;
    };
    let Ok(p) = expr::Program::compile(e, &expr::Var::RECORD) else {
        return;
    };
    let elsewhere = [
        expr::Var::Partition,
        expr::Var::Offset,
        expr::Var::Timestamp,
        expr::Var::Headers,
        expr::Var::Topic,
    ];
    if let Some(v) = elsewhere.into_iter().find(|v| p.uses(*v)) {
        c.err(
            format!("{at}.combine"),
            format!(
                "cannot be true: the aggregate reads `{}`, which after the shuffle names the repartition record, so a combine before it would compute something else; use an expression of key and value, or remove combine",
                v.name()
            ),
        );
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

#[cfg(test)]
mod sink_tests {
    use super::*;

    #[test]
    fn a_password_in_any_form_of_url_is_refused() {
        for url in [
            "postgresql://app:pw@db:5432/app",
            "postgres://app:pw@db/app",
            "postgresql://app@db/app?password=pw",
            "host=db user=app password=pw",
        ] {
            let e = check_url_has_no_password(url).expect_err(url);
            assert!(e.contains("urlFile") && !e.contains("pw@"), "{e}");
        }
        for url in [
            "postgresql://app@db:5432/app",
            "postgresql://db/app",
            "postgresql://[::1]:5432/app",
            "host=db user=app",
        ] {
            assert_eq!(check_url_has_no_password(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["counts", "_t1", "analytics.word_counts"] {
            assert_eq!(check_table_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1t", "a.b.c", "t;drop", "a-b", "\"t\"", ".t"] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }
}
