//! Avro values, read and written with the `apache-avro` crate: a record is decoded with the
//! schema it was written with (the spec's, or the registry's by the id in its Confluent
//! framing) and resolved to the spec's schema, so a field added with a default reads as its
//! default from records written before it. A sink encodes its values with its schema.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;

use crate::credentials::Credentials;
use crate::expr::Val;
use crate::spec::AvroSpec;

/// The Confluent wire format's first byte.
const MAGIC: u8 = 0;
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest registry answer read: a schema is small.
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// Why a value could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AvroError {
    /// This record is not readable (a dead letter).
    #[error("{0}")]
    Record(String),
    /// The registry did not answer: the batch is tried again, nothing is dead-lettered.
    #[error("the schema registry did not answer: {0}")]
    Unavailable(String),
}

/// A source's or a sink's Avro settings, loaded.
pub struct AvroCodec {
    /// The spec's schema: what records are resolved to, and the writer's schema without a
    /// registry; a sink's values are written with it.
    schema: Option<Schema>,
    registry: Option<Registry>,
    /// A sink's schema id in the registry, written in each value's framing.
    sink_id: Option<u32>,
}

impl AvroCodec {
    /// Loads the schema file and connects nothing yet: a source fetches writer schemas as
    /// records name them.
    ///
    /// # Errors
    /// A schema file that cannot be read or is not an Avro schema.
    pub fn for_source(spec: &AvroSpec, credentials: &Credentials) -> Result<AvroCodec, String> {
        // A length in hostile bytes must not make the decoder allocate more than a record can
        // hold (the crate's default is 512 MiB; the first call sets it for the process).
        apache_avro::util::max_allocation_bytes(crate::limits::MAX_RECORD_BYTES);
        Ok(AvroCodec {
            schema: load_schema(spec)?,
            registry: spec
                .registry
                .as_ref()
                .map(|r| Registry::new(&r.url, credentials)),
            sink_id: None,
        })
    }

    /// Loads the schema and, with a registry, registers it under `<topic>-value`.
    ///
    /// # Errors
    /// A schema that cannot be read, or a registry that refuses it or does not answer.
    pub fn for_sink(
        spec: &AvroSpec,
        topic: &str,
        credentials: &Credentials,
    ) -> Result<AvroCodec, String> {
        let schema = load_schema(spec)?.ok_or("sink.kafka.avro.schema is missing")?;
        let registry = spec
            .registry
            .as_ref()
            .map(|r| Registry::new(&r.url, credentials));
        let sink_id = match &registry {
            Some(r) => Some(r.register(&format!("{topic}-value"), &schema)?),
            None => None,
        };
        Ok(AvroCodec {
            schema: Some(schema),
            registry,
            sink_id,
        })
    }

    /// A record's value.
    ///
    /// # Errors
    /// [`AvroError::Record`] for bytes that are not a value of the schema (or not framed, or
    /// of a schema the registry does not have); [`AvroError::Unavailable`] when the registry
    /// does not answer.
    pub fn decode(&self, bytes: &[u8]) -> Result<Val, AvroError> {
        let bad = |e: apache_avro::Error| {
            AvroError::Record(format!("not an Avro value of its schema: {e}"))
        };
        let value = match &self.registry {
            Some(r) => {
                let (id, mut datum) = framed(bytes)?;
                let writer = r.schema(id)?;
                let v = apache_avro::from_avro_datum(&writer, &mut datum, self.schema.as_ref())
                    .map_err(bad)?;
                ensure_consumed(datum)?;
                v
            }
            None => {
                let schema = self
                    .schema
                    .as_ref()
                    .ok_or_else(|| AvroError::Record("no schema to read with".into()))?;
                let mut datum = bytes;
                let v = apache_avro::from_avro_datum(schema, &mut datum, None).map_err(bad)?;
                ensure_consumed(datum)?;
                v
            }
        };
        Ok(to_val(value))
    }

    /// A value in the sink's schema (framed with its id when there is a registry).
    ///
    /// # Errors
    /// A value that does not fit the schema, with the reason.
    pub fn encode(&self, v: &Val) -> Result<Vec<u8>, String> {
        let schema = self.schema.as_ref().ok_or("no schema to write with")?;
        let value = from_val(v)
            .resolve(schema)
            .map_err(|e| format!("the value does not fit the sink's Avro schema: {e}"))?;
        let datum = apache_avro::to_avro_datum(schema, value)
            .map_err(|e| format!("the value does not fit the sink's Avro schema: {e}"))?;
        Ok(match self.sink_id {
            Some(id) => {
                let mut out = Vec::with_capacity(datum.len() + 5);
                out.push(MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&datum);
                out
            }
            None => datum,
        })
    }
}

/// Reads and parses the spec's schema file, contacting nothing: what `validate` checks.
///
/// # Errors
/// A schema file that cannot be read or is not an Avro schema.
pub fn check(spec: &AvroSpec) -> Result<(), String> {
    load_schema(spec).map(|_| ())
}

fn load_schema(spec: &AvroSpec) -> Result<Option<Schema>, String> {
    let Some(path) = spec.schema.as_ref().and_then(|s| s.path()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("the Avro schema {}: {e}", path.display()))?;
    Schema::parse_str(&text)
        .map(Some)
        .map_err(|e| format!("the Avro schema {} is not a schema: {e}", path.display()))
}

/// A Confluent-framed value's schema id and datum.
fn framed(bytes: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(AvroError::Record(
            "not in the Confluent wire format (magic byte 0, a 4-byte schema id, the Avro datum)"
                .into(),
        )),
    }
}

/// Bytes after the value mean it was not written with this schema.
fn ensure_consumed(rest: &[u8]) -> Result<(), AvroError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(AvroError::Record(format!(
            "{} bytes follow the Avro value: it was not written with this schema",
            rest.len()
        )))
    }
}

/// An Avro value as CEL sees it: records and maps as objects (a map's keys sorted), longs,
/// dates and timestamps as integers (a timestamp-millis is milliseconds since the epoch, as
/// event time wants), enums as their symbol; what has no CEL type of its own (decimals,
/// uuids, durations) as Avro's JSON form.
pub fn to_val(v: Avro) -> Val {
    match v {
        Avro::Null => Val::Null,
        Avro::Boolean(b) => Val::Bool(b),
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => Val::Int(i64::from(n)),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => Val::Int(n),
        Avro::Float(f) => Val::Float(f64::from(f)),
        Avro::Double(f) => Val::Float(f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Val::Bytes(Arc::from(b)),
        Avro::String(s) | Avro::Enum(_, s) => Val::str(&s),
        Avro::Union(_, inner) => to_val(*inner),
        Avro::Array(items) => Val::List(Arc::new(items.into_iter().map(to_val).collect())),
        Avro::Map(m) => {
            let mut fields: Vec<(Arc<str>, Val)> = m
                .into_iter()
                .map(|(k, v)| (Arc::from(k), to_val(v)))
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Val::Map(Arc::new(fields))
        }
        Avro::Record(fields) => Val::Map(Arc::new(
            fields
                .into_iter()
                .map(|(k, v)| (Arc::from(k), to_val(v)))
                .collect(),
        )),
        other => match serde_json::Value::try_from(other) {
            Ok(j) => Val::from_json(j.to_string().as_bytes(), 64).unwrap_or(Val::Null),
            Err(_) => Val::Null,
        },
    }
}

/// A value as a generic Avro value, for resolving to the sink's schema (an object fits a
/// record; an integer fits an int, a long or a timestamp).
fn from_val(v: &Val) -> Avro {
    match v {
        Val::Null => Avro::Null,
        Val::Bool(b) => Avro::Boolean(*b),
        Val::Int(n) => Avro::Long(*n),
        Val::UInt(n) => Avro::Long(i64::try_from(*n).unwrap_or(i64::MAX)),
        Val::Float(f) => Avro::Double(*f),
        Val::Str(s) => Avro::String(s.to_string()),
        Val::Bytes(b) => Avro::Bytes(b.to_vec()),
        Val::List(items) => Avro::Array(items.iter().map(from_val).collect()),
        Val::Map(fields) => Avro::Map(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), from_val(v)))
                .collect(),
        ),
    }
}

/// A Confluent Schema Registry client: writer schemas by id, cached for the worker's life
/// (an id's schema never changes).
struct Registry {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl Registry {
    fn new(url: &str, credentials: &Credentials) -> Registry {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REGISTRY_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Registry {
            base: url.trim().trim_end_matches('/').to_string(),
            auth: credentials.registry_user_info().map(|u| {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(u)
                )
            }),
            agent,
            schemas: Mutex::new(HashMap::new()),
        }
    }

    fn schema(&self, id: u32) -> Result<Arc<Schema>, AvroError> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .call()
            .map_err(|e| AvroError::Unavailable(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = read_body(resp.body_mut().as_reader())
            .map_err(|e| AvroError::Unavailable(format!("GET {url}: {e}")))?;
        match status {
            200 => {}
            404 => {
                return Err(AvroError::Record(format!(
                    "the schema registry has no schema {id} (the record names it)"
                )))
            }
            s if s >= 500 || s == 429 => {
                return Err(AvroError::Unavailable(format!("GET {url}: status {s}")))
            }
            s => {
                return Err(AvroError::Record(format!(
                    "the schema registry refused schema {id}: status {s}: {}",
                    body.chars().take(200).collect::<String>()
                )))
            }
        }
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            AvroError::Record(format!(
                "the registry's answer for schema {id} is not JSON: {e}"
            ))
        })?;
        if let Some(kind) = answer["schemaType"].as_str().filter(|k| *k != "AVRO") {
            return Err(AvroError::Record(format!(
                "schema {id} is {kind}, not Avro"
            )));
        }
        let text = answer["schema"].as_str().ok_or_else(|| {
            AvroError::Record(format!(
                "the registry's answer for schema {id} has no schema"
            ))
        })?;
        let schema = Arc::new(Schema::parse_str(text).map_err(|e| {
            AvroError::Record(format!(
                "schema {id} from the registry is not an Avro schema: {e}"
            ))
        })?);
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers `schema` under `subject` (the registry answers with the existing id when it
    /// already has it).
    fn register(&self, subject: &str, schema: &Schema) -> Result<u32, String> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = serde_json::json!({"schema": schema.canonical_form()}).to_string();
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .send(body.as_str())
            .map_err(|e| format!("registering the sink's schema: POST {url}: {e}"))?;
        let status = resp.status().as_u16();
        let answer = read_body(resp.body_mut().as_reader())
            .map_err(|e| format!("registering the sink's schema: POST {url}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "the schema registry refused the sink's schema under {subject}: status {status}: {}",
                answer.chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| format!("the schema registry's answer has no schema id: {answer}"))
    }
}

fn read_body(r: impl Read) -> std::io::Result<String> {
    let mut s = String::new();
    r.take(MAX_ANSWER_BYTES).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "E", "fields": [
      {"name": "id", "type": "long"},
      {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
      {"name": "tags", "type": {"type": "array", "items": "string"}},
      {"name": "attrs", "type": {"type": "map", "values": "int"}},
      {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
      {"name": "note", "type": ["null", "string"], "default": null}]}"#;

    fn codec(dir: &std::path::Path) -> AvroCodec {
        let path = dir.join("e.avsc");
        std::fs::write(&path, SCHEMA).unwrap();
        let spec = AvroSpec {
            schema: Some(crate::spec::SchemaFile {
                file: Some(path.display().to_string()),
                config_map: None,
            }),
            registry: None,
        };
        AvroCodec::for_source(&spec, &Credentials::default()).unwrap()
    }

    #[test]
    fn a_value_round_trips_with_its_types_as_cel_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = codec(dir.path());
        let v = Val::from_json(
            br#"{"id": 7, "at": 1767225600000, "tags": ["x", "y"], "attrs": {"b": 2, "a": 1}, "kind": "B", "note": "hi"}"#,
            8,
        )
        .unwrap();
        let bytes = c.encode(&v).unwrap();
        let back = c.decode(&bytes).unwrap();
        // The map's keys come back sorted; everything else as written.
        let expected = Val::from_json(
            br#"{"id": 7, "at": 1767225600000, "tags": ["x", "y"], "attrs": {"a": 1, "b": 2}, "kind": "B", "note": "hi"}"#,
            8,
        )
        .unwrap();
        assert_eq!(back, expected);
        let no_note = Val::from_json(
            br#"{"id": 1, "at": 0, "tags": [], "attrs": {}, "kind": "A", "note": null}"#,
            8,
        )
        .unwrap();
        assert_eq!(c.decode(&c.encode(&no_note).unwrap()).unwrap(), no_note);
        let e = c
            .encode(&Val::from_json(br#"{"id": "seven"}"#, 8).unwrap())
            .unwrap_err();
        assert!(e.contains("does not fit the sink's Avro schema"), "{e}");
    }

    #[test]
    fn hostile_bytes_are_a_record_error_without_a_huge_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let c = codec(dir.path());
        // id 1, at 0, then an array claiming 2^62 items.
        let mut bytes = vec![2, 0];
        bytes.extend([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        match c.decode(&bytes) {
            Err(AvroError::Record(why)) => assert!(why.contains("not an Avro value"), "{why}"),
            other => panic!("{other:?}"),
        }
        for cut in [&b""[..], &[2u8][..], &[0xff; 20][..]] {
            assert!(
                matches!(c.decode(cut), Err(AvroError::Record(_))),
                "{cut:?}"
            );
        }
    }
}
