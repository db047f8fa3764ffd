//! Avro values, read and written with the `apache-avro` crate: a record is decoded with the
//! schema it was written with (the spec's, or the registry's by the id in its Confluent
//! framing) and resolved to the spec's schema, so a field added with a default reads as its
//! default from records written before it. A sink encodes its values with its schema.

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;

use crate::credentials::Credentials;
use crate::expr::Val;
use crate::registry::{frame, framed, Registry, SchemaError};
use crate::spec::AvroSpec;

/// A source's or a sink's Avro settings, loaded.
pub struct AvroCodec {
    /// The spec's schema: what records are resolved to, and the writer's schema without a
    /// registry; a sink's values are written with it.
    schema: Option<Schema>,
    registry: Option<Registry<Schema>>,
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
                .map(|r| registry(&r.url, credentials)),
            sink_id: None,
        })
    }

    /// Loads the schema and, with a registry, registers it under `subject` (`<topic>-value`
    /// or `<topic>-key`).
    ///
    /// # Errors
    /// A schema that cannot be read, or a registry that refuses it or does not answer.
    pub fn for_sink(
        spec: &AvroSpec,
        subject: &str,
        credentials: &Credentials,
    ) -> Result<AvroCodec, String> {
        let schema = load_schema(spec)?
            .ok_or_else(|| format!("the sink's Avro schema for {subject} is missing"))?;
        let registry = spec
            .registry
            .as_ref()
            .map(|r| registry(&r.url, credentials));
        let sink_id = match &registry {
            Some(r) => Some(r.register(subject, &schema.canonical_form())?),
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
    /// [`SchemaError::Record`] for bytes that are not a value of the schema (or not framed, or
    /// of a schema the registry does not have); [`SchemaError::Unavailable`] when the registry
    /// does not answer.
    pub fn decode(&self, bytes: &[u8]) -> Result<Val, SchemaError> {
        let bad = |e: apache_avro::Error| {
            SchemaError::Record(format!("not an Avro value of its schema: {e}"))
        };
        let value = match &self.registry {
            Some(r) => {
                let (id, mut datum) = framed(bytes, "Avro datum")?;
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
                    .ok_or_else(|| SchemaError::Record("no schema to read with".into()))?;
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
            Some(id) => frame(id, &datum),
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

/// A registry of Avro schemas.
fn registry(url: &str, credentials: &Credentials) -> Registry<Schema> {
    Registry::new(url, credentials, "AVRO", |text| {
        Schema::parse_str(text).map_err(|e| format!("not an Avro schema: {e}"))
    })
}

/// Bytes after the value mean it was not written with this schema.
fn ensure_consumed(rest: &[u8]) -> Result<(), SchemaError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Record(format!(
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
            key: None,
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
            Err(SchemaError::Record(why)) => assert!(why.contains("not an Avro value"), "{why}"),
            other => panic!("{other:?}"),
        }
        for cut in [&b""[..], &[2u8][..], &[0xff; 20][..]] {
            assert!(
                matches!(c.decode(cut), Err(SchemaError::Record(_))),
                "{cut:?}"
            );
        }
    }
}
