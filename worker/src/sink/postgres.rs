//! PostgreSQL, exactly once: a batch's rows, its keyed-state changes and its source offsets
//! commit in one database transaction, so the database is the record of where each partition
//! stands and what its state is (seed 003's transactional output under a batch-time +
//! partition identifier).
//!
//! Tables (created if missing): the job's table (`key text`, `value jsonb`), `weir_state` (job,
//! topic, partition, step, key bytea, value bytea: the changelog codec's bytes, lossless for
//! every CEL value) and `weir_offsets` (job, topic, partition, until_offset, batch_time).
//! `job` is the job's consumer group, the same name its Kafka offsets go under.
//!
//! A batch that `weir_offsets` already holds is skipped inside the same transaction: after a
//! lost commit acknowledgement the engine replays the batch, and that replay must add nothing.
//! Per-partition advisory locks serialize two workers that (wrongly) own the same partition; a
//! batch that overlaps what another worker stored is refused rather than half repeated.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, Config, NoTls, Statement, Transaction};
use tracing::{info, warn};

use super::{Recovery, Sink};
use crate::batch::{BatchOutput, PartitionOutput};
use crate::client::Identity;
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::pipeline::StateChange;
use crate::plan::TopicPartition;
use crate::spec::{JobSpec, PostgresMode, PostgresSink as PostgresSpec};
use crate::value::codec;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the connection settings came from, for error messages that never show a password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{port}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

/// The connection settings of a sink: `urlFile`, `url`, `WEIR_PG_URL`, then libpq's `PG*`
/// variables, in that order; `PGPASSWORD` fills in a missing password. `env` reads the
/// environment (a parameter so that tests need not change the process's).
///
/// # Errors
/// No settings at all, an unreadable file, or a URL that does not parse; the message names
/// where the settings came from and never holds the password.
pub fn connection_config(
    spec: &PostgresSpec,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, String> {
    let (text, from) = if let Some(path) = &spec.url_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read sink.postgres.urlFile {path:?}: {e}"))?;
        (Some(text.trim().to_string()), format!("urlFile {path:?}"))
    } else if let Some(url) = &spec.url {
        (Some(url.clone()), "sink.postgres.url".to_string())
    } else if let Some(url) = env("WEIR_PG_URL").filter(|u| !u.is_empty()) {
        (Some(url), "WEIR_PG_URL".to_string())
    } else {
        (None, "the PG* environment variables".to_string())
    };
    let mut config = match &text {
        Some(t) => t.parse::<Config>().map_err(|e| {
            format!("the PostgreSQL connection URL from {from} does not parse: {e}")
        })?,
        None => Config::new(),
    };
    if config.get_hosts().is_empty() {
        match env("PGHOST").filter(|h| !h.is_empty()) {
            Some(h) => {
                for h in h.split(',') {
                    config.host(h);
                }
            }
            None => {
                return Err(format!(
                    "no PostgreSQL host in {from}: set WEIR_PG_URL (postgresql://user@host:port/db) or PGHOST, PGPORT, PGUSER, PGDATABASE (and PGPASSWORD) in the worker's environment, or sink.postgres.urlFile to a mounted Secret file"
                ));
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(p) = env("PGPORT").filter(|p| !p.is_empty()) {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("PGPORT {p:?} is not a port number"))?;
            config.port(port);
        }
    }
    if config.get_user().is_none() {
        match env("PGUSER").filter(|u| !u.is_empty()) {
            Some(u) => config.user(&u),
            None => {
                return Err(format!(
                    "no PostgreSQL user in {from}: add one to the URL or set PGUSER"
                ))
            }
        };
    }
    if config.get_dbname().is_none() {
        if let Some(d) = env("PGDATABASE").filter(|d| !d.is_empty()) {
            config.dbname(&d);
        }
    }
    if config.get_password().is_none() {
        if let Some(p) = env("PGPASSWORD") {
            config.password(p);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("weir-worker");
    Ok(config)
}

/// `"schema"."table"` from a validated name, quoted so its case is kept.
fn quote_table(table: &str) -> String {
    table
        .split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

struct Statements {
    lock: Statement,
    stored: Statement,
    rows: Statement,
    state_put: Statement,
    state_del: Statement,
    offsets: Statement,
    bump: Statement,
    epochs: Statement,
}

struct Conn {
    client: Client,
    st: Statements,
}

pub struct PostgresSink {
    config: Config,
    /// The job's consumer group: the `job` column of the weir tables.
    job: String,
    table: String,
    mode: PostgresMode,
    reset: Vec<String>,
    conn: Option<Conn>,
    /// The epoch this worker took each partition over at (see `weir_epochs`).
    epochs: HashMap<(String, i32), i64>,
    /// Reused per batch: the rows' text and the state's bytes, sliced by the spans below.
    text: Vec<u8>,
    bytes: Vec<u8>,
}

impl PostgresSink {
    /// The sink of `spec` (whose `sink.postgres` is set); it connects when first used.
    ///
    /// # Errors
    /// Missing or unreadable connection settings ([`Error::Fatal`], with what to set).
    pub fn new(spec: &JobSpec, id: &Identity) -> Result<Self> {
        Self::with_env(spec, id, |k| std::env::var(k).ok())
    }

    /// As [`PostgresSink::new`], reading the environment through `env`.
    ///
    /// # Errors
    /// As [`PostgresSink::new`].
    pub fn with_env(
        spec: &JobSpec,
        id: &Identity,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let Some(p) = &spec.sink.postgres else {
            return Err(Error::Fatal("the job has no sink.postgres".into()));
        };
        let config = connection_config(p, env).map_err(Error::Fatal)?;
        Ok(Self {
            config,
            job: spec.group_id(&id.namespace, &id.job),
            table: quote_table(&p.table),
            mode: p.mode,
            reset: spec
                .checkpoint
                .as_ref()
                .map_or_else(Vec::new, |c| c.reset_state.clone()),
            conn: None,
            epochs: HashMap::new(),
            text: Vec::new(),
            bytes: Vec::new(),
        })
    }

    fn connect(&mut self) -> Result<&mut Conn> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let mut client = self.config.connect(NoTls).map_err(|e| {
                Error::Sink(format!(
                    "cannot connect to PostgreSQL {}: {e}",
                    describe(&self.config)
                ))
            })?;
            create_tables(&mut client, &self.table, self.mode)?;
            let st = prepare(&mut client, &self.table, self.mode)?;
            self.conn = Some(Conn { client, st });
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Error::Sink("no PostgreSQL connection".into()))
    }
}

fn db(what: &'static str) -> impl Fn(postgres::Error) -> Error {
    move |e| {
        // The server's own message (with its detail) says more than the client's summary.
        let msg = match e.as_db_error() {
            Some(d) => match d.detail() {
                Some(detail) => format!("{}: {detail}", d.message()),
                None => d.message().to_string(),
            },
            None => e.to_string(),
        };
        Error::Sink(format!("PostgreSQL {what} failed: {msg}"))
    }
}

fn create_tables(client: &mut Client, table: &str, mode: PostgresMode) -> Result<()> {
    let key = match mode {
        PostgresMode::Upsert => "key text PRIMARY KEY",
        PostgresMode::Insert => "key text",
    };
    // Workers of one job start together; the lock keeps their CREATEs from racing on the
    // catalog (IF NOT EXISTS alone does not).
    let sql = format!(
        "SELECT pg_advisory_xact_lock(hashtext('weir tables'));
         CREATE TABLE IF NOT EXISTS weir_offsets (
             job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
             until_offset bigint NOT NULL, batch_time timestamptz NOT NULL,
             PRIMARY KEY (job, topic, partition));
         CREATE TABLE IF NOT EXISTS weir_epochs (
             job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
             epoch bigint NOT NULL,
             PRIMARY KEY (job, topic, partition));
         CREATE TABLE IF NOT EXISTS weir_state (
             job text NOT NULL, topic text NOT NULL, partition integer NOT NULL,
             step text NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
             PRIMARY KEY (job, topic, partition, step, key));
         CREATE TABLE IF NOT EXISTS {table} ({key}, value jsonb);"
    );
    let mut tx = client.transaction().map_err(db("creating tables"))?;
    tx.batch_execute(&sql).map_err(db("creating tables"))?;
    tx.commit().map_err(db("creating tables"))
}

fn prepare(client: &mut Client, table: &str, mode: PostgresMode) -> Result<Statements> {
    let rows = match mode {
        PostgresMode::Upsert => format!(
            "INSERT INTO {table} (key, value) SELECT k, v::jsonb FROM unnest($1::text[], $2::text[]) AS u(k, v)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        PostgresMode::Insert => format!(
            "INSERT INTO {table} (key, value) SELECT k, v::jsonb FROM unnest($1::text[], $2::text[]) AS u(k, v)"
        ),
    };
    let mut p = |sql: &str| client.prepare(sql).map_err(db("preparing statements"));
    Ok(Statements {
        // In a fixed order, so two workers locking overlapping sets cannot deadlock.
        lock: p("SELECT pg_advisory_xact_lock(h) FROM (
                   SELECT DISTINCT hashtextextended($1 || '/' || t || '/' || p::text, 0) AS h
                   FROM unnest($2::text[], $3::int4[]) AS u(t, p) ORDER BY h) AS locks")?,
        stored: p("SELECT o.topic, o.partition, o.until_offset,
                          (extract(epoch FROM o.batch_time) * 1000)::int8
                   FROM weir_offsets o JOIN unnest($2::text[], $3::int4[]) AS u(t, p)
                     ON o.topic = u.t AND o.partition = u.p
                   WHERE o.job = $1")?,
        rows: p(&rows)?,
        state_put: p(
            "INSERT INTO weir_state (job, topic, partition, step, key, value)
                      SELECT $1, t, p, s, k, v
                      FROM unnest($2::text[], $3::int4[], $4::text[], $5::bytea[], $6::bytea[])
                        AS u(t, p, s, k, v)
                      ON CONFLICT (job, topic, partition, step, key)
                      DO UPDATE SET value = EXCLUDED.value",
        )?,
        state_del: p("DELETE FROM weir_state w
                      USING unnest($2::text[], $3::int4[], $4::text[], $5::bytea[]) AS u(t, p, s, k)
                      WHERE w.job = $1 AND w.topic = u.t AND w.partition = u.p
                        AND w.step = u.s AND w.key = u.k")?,
        // Taking over a partition raises its epoch; every batch checks it under the
        // partition's lock, so an older worker's next transaction sees it and stops.
        bump: p("INSERT INTO weir_epochs (job, topic, partition, epoch)
                 SELECT $1, t, p, 1 FROM unnest($2::text[], $3::int4[]) AS u(t, p)
                 ON CONFLICT (job, topic, partition) DO UPDATE SET epoch = weir_epochs.epoch + 1
                 RETURNING topic, partition, epoch")?,
        epochs: p("SELECT e.topic, e.partition, e.epoch
                   FROM weir_epochs e JOIN unnest($2::text[], $3::int4[]) AS u(t, p)
                     ON e.topic = u.t AND e.partition = u.p
                   WHERE e.job = $1")?,
        offsets: p(
            "INSERT INTO weir_offsets (job, topic, partition, until_offset, batch_time)
                    SELECT $1, t, p, o, 'epoch'::timestamptz + $5::int8 * interval '1 millisecond'
                    FROM unnest($2::text[], $3::int4[], $4::int8[]) AS u(t, p, o)
                    ON CONFLICT (job, topic, partition)
                    DO UPDATE SET until_offset = EXCLUDED.until_offset,
                                  batch_time = EXCLUDED.batch_time",
        )?,
    })
}

/// What to do with a partition's batch, given what `weir_offsets` holds for it. PURE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Write,
    /// Already stored: a replay.
    Skip,
    /// Another writer stored part of this range.
    Overlap {
        stored: i64,
    },
}

/// Decides one partition's [`Decision`]. A batch with no records (state timeouts can still
/// write) is told apart from its replay by its batch time.
pub fn decide(from: i64, until: i64, batch_ms: i64, stored: Option<(i64, i64)>) -> Decision {
    match stored {
        None => Decision::Write,
        Some((at, _)) if at > from && at < until => Decision::Overlap { stored: at },
        Some((at, _)) if at > until => Decision::Skip,
        Some((at, _)) if at == until && from < until => Decision::Skip,
        Some((at, time)) if at == until && time >= batch_ms => Decision::Skip,
        Some(_) => Decision::Write,
    }
}

/// Byte spans into the reused buffers.
type Span = (usize, usize);

impl Sink for PostgresSink {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        let live: Vec<&PartitionOutput<'_>> = batch
            .partitions
            .iter()
            .filter(|p| {
                p.range.until > p.range.from || !p.outputs.is_empty() || !p.changes.is_empty()
            })
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let mut text = std::mem::take(&mut self.text);
        let mut bytes = std::mem::take(&mut self.bytes);
        let job = self.job.clone();
        let mode = self.mode;
        let epochs = std::mem::take(&mut self.epochs);
        let result = match self.connect() {
            Ok(conn) => write_batch(
                conn,
                &job,
                mode,
                &epochs,
                batch.batch_time_ms,
                &live,
                &mut text,
                &mut bytes,
            ),
            Err(e) => Err(e),
        };
        self.text = text;
        self.bytes = bytes;
        self.epochs = epochs;
        if result.is_err() {
            // The transaction is gone with the error; a fresh connection starts clean.
            self.conn = None;
        }
        result
    }

    fn logs_state(&self) -> bool {
        true
    }

    fn take_over(&mut self, owned: &[TopicPartition]) -> Result<Option<Recovery>> {
        let job = self.job.clone();
        let reset = self.reset.clone();
        let conn = self.connect()?;
        let topics: Vec<&str> = owned.iter().map(|tp| &*tp.topic).collect();
        let parts: Vec<i32> = owned.iter().map(|tp| tp.partition).collect();
        let index: HashMap<(&str, i32), usize> = owned
            .iter()
            .enumerate()
            .map(|(i, tp)| ((&*tp.topic, tp.partition), i))
            .collect();
        let mut tx = conn.client.transaction().map_err(db("recovery"))?;
        // The partitions' locks wait for an older worker's batch in flight; the raised epochs
        // then refuse its next one, so what is read below is final.
        tx.query(&conn.st.lock, &[&job, &topics, &parts])
            .map_err(db("locking partitions"))?;
        let mut epochs = HashMap::with_capacity(owned.len());
        for row in tx
            .query(&conn.st.bump, &[&job, &topics, &parts])
            .map_err(db("taking over partitions"))?
        {
            let g = db("taking over partitions");
            let (t, p, e): (String, i32, i64) = (
                row.try_get(0).map_err(&g)?,
                row.try_get(1).map_err(&g)?,
                row.try_get(2).map_err(&g)?,
            );
            epochs.insert((t, p), e);
        }
        if !reset.is_empty() {
            let n = tx
                .execute(
                    "DELETE FROM weir_state w USING unnest($2::text[], $3::int4[]) AS u(t, p)
                     WHERE w.job = $1 AND w.topic = u.t AND w.partition = u.p AND w.step = ANY($4)",
                    &[&job, &topics, &parts, &reset],
                )
                .map_err(db("dropping reset state"))?;
            if n > 0 {
                info!(
                    keys = n,
                    "dropped the state of steps listed under checkpoint.resetState"
                );
            }
        }
        let mut offsets = vec![None; owned.len()];
        for row in tx
            .query(&conn.st.stored, &[&job, &topics, &parts])
            .map_err(db("reading weir_offsets"))?
        {
            let g = db("reading weir_offsets");
            let (t, p, at): (String, i32, i64) = (
                row.try_get(0).map_err(&g)?,
                row.try_get(1).map_err(&g)?,
                row.try_get(2).map_err(&g)?,
            );
            if let Some(&i) = index.get(&(t.as_str(), p)) {
                offsets[i] = Some(at);
            }
        }
        let mut changes: Vec<Vec<StateChange>> = vec![Vec::new(); owned.len()];
        let mut steps: HashMap<String, std::sync::Arc<str>> = HashMap::new();
        for row in tx
            .query(
                "SELECT w.topic, w.partition, w.step, w.key, w.value FROM weir_state w
                 JOIN unnest($2::text[], $3::int4[]) AS u(t, p) ON w.topic = u.t AND w.partition = u.p
                 WHERE w.job = $1",
                &[&job, &topics, &parts],
            )
            .map_err(db("reading weir_state"))?
        {
            let g = db("reading weir_state");
            let (t, p, step): (String, i32, String) = (
                row.try_get(0).map_err(&g)?,
                row.try_get(1).map_err(&g)?,
                row.try_get(2).map_err(&g)?,
            );
            let (k, v): (&[u8], &[u8]) = (row.try_get(3).map_err(&g)?, row.try_get(4).map_err(&g)?);
            let Some(&i) = index.get(&(t.as_str(), p)) else {
                continue;
            };
            let bad = |e: codec::DecodeError| {
                Error::Fatal(format!(
                    "weir_state of job {job:?}, {t}/{p}, step {step:?} holds bytes this worker cannot read: {e}"
                ))
            };
            let key = codec::decode(k).map_err(bad)?;
            let value = codec::decode(v).map_err(bad)?;
            let step = steps
                .entry(step.clone())
                .or_insert_with(|| std::sync::Arc::from(step.as_str()))
                .clone();
            changes[i].push(StateChange {
                step,
                key,
                value: Some(value),
            });
        }
        tx.commit().map_err(db("recovery"))?;
        self.epochs = epochs;
        let stored = offsets.iter().filter(|o| o.is_some()).count();
        info!(
            partitions = stored,
            keys = changes.iter().map(Vec::len).sum::<usize>(),
            "read offsets and state from PostgreSQL"
        );
        Ok(Some(Recovery { offsets, changes }))
    }
}

#[allow(clippy::too_many_arguments)]
fn write_batch(
    conn: &mut Conn,
    job: &str,
    mode: PostgresMode,
    epochs: &HashMap<(String, i32), i64>,
    batch_ms: i64,
    live: &[&PartitionOutput<'_>],
    text: &mut Vec<u8>,
    bytes: &mut Vec<u8>,
) -> Result<()> {
    let st = &conn.st;
    let mut tx: Transaction<'_> = conn.client.transaction().map_err(db("BEGIN"))?;
    let topics: Vec<&str> = live.iter().map(|p| &*p.range.topic).collect();
    let parts: Vec<i32> = live.iter().map(|p| p.range.partition).collect();
    tx.query(&st.lock, &[&job, &topics, &parts])
        .map_err(db("locking partitions"))?;
    for row in tx
        .query(&st.epochs, &[&job, &topics, &parts])
        .map_err(db("reading weir_epochs"))?
    {
        let g = db("reading weir_epochs");
        let (t, p, e): (String, i32, i64) = (
            row.try_get(0).map_err(&g)?,
            row.try_get(1).map_err(&g)?,
            row.try_get(2).map_err(&g)?,
        );
        let mine = epochs.get(&(t.clone(), p)).copied();
        if mine != Some(e) {
            return Err(Error::Fenced(format!(
                "{t}/{p} was taken over by a newer worker (weir_epochs epoch {e}, this worker's {}); a newer worker owns this partition",
                mine.map_or_else(|| "none".to_string(), |m| m.to_string())
            )));
        }
    }
    let mut stored: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    for row in tx
        .query(&st.stored, &[&job, &topics, &parts])
        .map_err(db("reading weir_offsets"))?
    {
        let g = db("reading weir_offsets");
        stored.insert(
            (row.try_get(0).map_err(&g)?, row.try_get(1).map_err(&g)?),
            (row.try_get(2).map_err(&g)?, row.try_get(3).map_err(&g)?),
        );
    }
    let mut keep: Vec<&PartitionOutput<'_>> = Vec::with_capacity(live.len());
    for p in live {
        let r = p.range;
        let at = stored.get(&(r.topic.to_string(), r.partition)).copied();
        match decide(r.from, r.until, batch_ms, at) {
            Decision::Write => keep.push(p),
            Decision::Skip => {
                info!(topic = %r.topic, partition = r.partition, from = r.from, until = r.until, "batch already stored in PostgreSQL; not writing it again");
            }
            Decision::Overlap { stored } => {
                return Err(Error::Fatal(format!(
                    "weir_offsets holds {}/{} at offset {stored}, inside this batch's range [{}, {}): another worker is writing this partition; restarting from the stored offsets",
                    r.topic, r.partition, r.from, r.until
                )));
            }
        }
    }
    if keep.is_empty() {
        tx.rollback().map_err(db("ROLLBACK"))?;
        return Ok(());
    }

    // Rows: key text and value JSON text in one buffer, then slices of it.
    text.clear();
    let mut spans: Vec<(Option<Span>, Span)> = Vec::new();
    for p in &keep {
        for o in p.outputs {
            let key = match &o.key {
                Val::Null => None,
                k => {
                    let start = text.len();
                    match k {
                        Val::Str(s) => text.extend_from_slice(s.as_bytes()),
                        other => serde_json::to_writer(&mut *text, other)
                            .map_err(|e| Error::Sink(format!("encoding a key: {e}")))?,
                    }
                    Some((start, text.len()))
                }
            };
            let start = text.len();
            serde_json::to_writer(&mut *text, &o.value)
                .map_err(|e| Error::Sink(format!("encoding a value: {e}")))?;
            spans.push((key, (start, text.len())));
        }
    }
    let all = std::str::from_utf8(text)
        .map_err(|e| Error::Sink(format!("a key is not UTF-8 text: {e}")))?;
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(spans.len());
    let mut values: Vec<&str> = Vec::with_capacity(spans.len());
    if mode == PostgresMode::Upsert {
        // One statement cannot update a row twice: the batch's last value per key wins.
        let mut at: HashMap<&str, usize> = HashMap::with_capacity(spans.len());
        for (k, v) in &spans {
            let Some((ks, ke)) = k else {
                return Err(Error::Fatal(format!(
                    "sink.postgres mode upsert needs a key on every output record, and one has none (value {}); key the records (keyBy) or use mode insert",
                    &all[v.0..v.1]
                )));
            };
            let key = &all[*ks..*ke];
            let value = &all[v.0..v.1];
            match at.get(key) {
                Some(&i) => values[i] = value,
                None => {
                    at.insert(key, keys.len());
                    keys.push(Some(key));
                    values.push(value);
                }
            }
        }
    } else {
        for (k, v) in &spans {
            keys.push(k.map(|(s, e)| &all[s..e]));
            values.push(&all[v.0..v.1]);
        }
    }
    if !keys.is_empty() {
        tx.execute(&st.rows, &[&keys, &values])
            .map_err(db("writing rows"))?;
    }

    // State: the last change per (partition, step, key), as codec bytes.
    bytes.clear();
    let mut encoded: Vec<(usize, &str, Span, Option<Span>)> = Vec::new();
    for (pi, p) in keep.iter().enumerate() {
        for c in p.changes {
            let ks = bytes.len();
            codec::encode(&c.key, bytes);
            let key = (ks, bytes.len());
            let value = c.value.as_ref().map(|v| {
                let vs = bytes.len();
                codec::encode(v, bytes);
                (vs, bytes.len())
            });
            encoded.push((pi, &c.step, key, value));
        }
    }
    let bytes: &[u8] = bytes;
    let mut last: HashMap<(usize, &str, &[u8]), Option<Span>> =
        HashMap::with_capacity(encoded.len());
    for &(pi, step, (ks, ke), value) in &encoded {
        last.insert((pi, step, &bytes[ks..ke]), value);
    }
    let (mut pt, mut pp, mut ps, mut pk, mut pv) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut dt, mut dp, mut ds, mut dk) = (vec![], vec![], vec![], vec![]);
    for ((pi, step, k), v) in last {
        let r = keep[pi].range;
        match v {
            Some((vs, ve)) => {
                pt.push(&*r.topic);
                pp.push(r.partition);
                ps.push(step);
                pk.push(k);
                pv.push(&bytes[vs..ve]);
            }
            None => {
                dt.push(&*r.topic);
                dp.push(r.partition);
                ds.push(step);
                dk.push(k);
            }
        }
    }
    if !pt.is_empty() {
        tx.execute(&st.state_put, &[&job, &pt, &pp, &ps, &pk, &pv])
            .map_err(db("writing weir_state"))?;
    }
    if !dt.is_empty() {
        tx.execute(&st.state_del, &[&job, &dt, &dp, &ds, &dk])
            .map_err(db("deleting from weir_state"))?;
    }

    let ot: Vec<&str> = keep.iter().map(|p| &*p.range.topic).collect();
    let op: Vec<i32> = keep.iter().map(|p| p.range.partition).collect();
    let oo: Vec<i64> = keep.iter().map(|p| p.range.until).collect();
    tx.execute(&st.offsets, &[&job, &ot, &op, &oo, &batch_ms])
        .map_err(db("writing weir_offsets"))?;
    tx.commit().map_err(|e| {
        warn!(error = %e, "COMMIT failed; the batch runs again and is skipped if it did commit");
        db("COMMIT")(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_batch_is_skipped_and_an_overlapping_one_refused() {
        assert_eq!(decide(0, 10, 5, None), Decision::Write);
        assert_eq!(decide(10, 20, 6, Some((10, 5))), Decision::Write);
        assert_eq!(decide(10, 20, 6, Some((20, 6))), Decision::Skip);
        assert_eq!(decide(10, 20, 6, Some((30, 9))), Decision::Skip);
        assert_eq!(
            decide(10, 20, 6, Some((15, 5))),
            Decision::Overlap { stored: 15 }
        );
        // Retention moved the log start past what was stored: the batch goes on from there.
        assert_eq!(decide(40, 50, 6, Some((20, 5))), Decision::Write);
        // A batch without records is a replay only if its time is not newer.
        assert_eq!(decide(20, 20, 7, Some((20, 6))), Decision::Write);
        assert_eq!(decide(20, 20, 6, Some((20, 6))), Decision::Skip);
    }

    fn spec(yaml: &str) -> PostgresSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_come_from_the_environment_with_the_password_only_from_there() {
        let s = spec("{table: t}");
        let c = connection_config(
            &s,
            env(&[
                ("PGHOST", "db"),
                ("PGPORT", "6543"),
                ("PGUSER", "app"),
                ("PGDATABASE", "d"),
                ("PGPASSWORD", "pw"),
            ]),
        )
        .expect("config");
        assert_eq!(describe(&c), "app@db:6543/d");
        assert_eq!(c.get_password(), Some(&b"pw"[..]));

        let c = connection_config(
            &s,
            env(&[
                ("WEIR_PG_URL", "postgresql://u@h:1/x"),
                ("PGPASSWORD", "pw"),
            ]),
        )
        .expect("config");
        assert_eq!(describe(&c), "u@h:1/x");
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn missing_settings_say_what_to_set() {
        let e = connection_config(&spec("{table: t}"), env(&[])).expect_err("no host");
        assert!(e.contains("WEIR_PG_URL") && e.contains("PGHOST"), "{e}");
        let e =
            connection_config(&spec("{table: t}"), env(&[("PGHOST", "h")])).expect_err("no user");
        assert!(e.contains("PGUSER"), "{e}");
        let e = connection_config(&spec("{table: t, urlFile: /nonexistent/weir-pg}"), env(&[]))
            .expect_err("no file");
        assert!(e.contains("/nonexistent/weir-pg"), "{e}");
        let e = connection_config(
            &spec("{table: t}"),
            env(&[("PGHOST", "h"), ("PGUSER", "u"), ("PGPORT", "x")]),
        )
        .expect_err("bad port");
        assert!(e.contains("PGPORT"), "{e}");
    }

    #[test]
    fn a_url_file_holds_the_whole_url() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("url");
        std::fs::write(&f, "postgresql://w:secret@db:5433/app\n").expect("write");
        let s = spec(&format!("{{table: t, urlFile: {}}}", f.display()));
        let c = connection_config(&s, env(&[("PGPASSWORD", "other")])).expect("config");
        assert_eq!(describe(&c), "w@db:5433/app");
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
    }
}
