//! A Kafka record as the pipeline sees it, decoded per the job's format.

use std::borrow::Cow;
use std::sync::Arc;

use crate::expr::{Val, ValueNeeds, Var, Vars};
use crate::spec::Format;

// Expressions are bounded by the record size at load (in the contract), so the limits live there.
pub use weir_contract::limits::{MAX_JSON_DEPTH, MAX_RECORD_BYTES};

/// One record flowing through a partition's pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, when the broker or producer set one.
    pub timestamp: Option<i64>,
    pub key: Val,
    pub value: Val,
    pub headers: Val,
    /// The element a `flatMap` produced; null before any.
    pub item: Val,
    /// Whether the record's result is `item` (after a flatMap) rather than `value` (after a
    /// map or select, or with no flatMap).
    pub item_is_output: bool,
    /// The table row a join step found for the record; null before any (and after a left
    /// join that found none).
    pub table: Val,
    /// The record's event time (ms since the epoch), when the job has a watermark.
    pub event_time: Option<i64>,
    /// The watermark the record is judged late against: its partition's before it was read,
    /// or the one windows were closed at when that is further. `i64::MIN` without one.
    pub late_against: i64,
}

impl Record {
    /// A record as read, before any step: no headers, no item, no table row, no event time.
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Val,
        value: Val,
    ) -> Record {
        Record {
            topic,
            partition,
            offset,
            timestamp,
            key,
            value,
            headers: Val::Null,
            item: Val::Null,
            item_is_output: false,
            table: Val::Null,
            event_time: None,
            late_against: i64::MIN,
        }
    }

    /// The record's result: what an aggregate or a sink takes.
    pub fn output(&self) -> &Val {
        if self.item_is_output {
            &self.item
        } else {
            &self.value
        }
    }
}

impl Vars for Record {
    fn var(&self, v: Var) -> Option<Cow<'_, Val>> {
        Some(match v {
            Var::Key => Cow::Borrowed(&self.key),
            Var::Value => Cow::Borrowed(&self.value),
            Var::Item => Cow::Borrowed(&self.item),
            Var::Table => Cow::Borrowed(&self.table),
            Var::Headers => Cow::Borrowed(&self.headers),
            Var::Partition => Cow::Owned(Val::Int(i64::from(self.partition))),
            Var::Offset => Cow::Owned(Val::Int(self.offset)),
            Var::Timestamp => Cow::Owned(self.timestamp.map_or(Val::Null, Val::Int)),
            Var::Topic => Cow::Owned(Val::Str(self.topic.clone())),
            Var::Values | Var::State | Var::TimingOut | Var::Removing | Var::A | Var::B => {
                return None
            }
        })
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record value is {0} bytes; the limit is {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error(
        "record value nests JSON deeper than {MAX_JSON_DEPTH} levels; producers must flatten it \
         (or the job can read it with format: text)"
    )]
    TooDeep,
    #[error("value is not valid JSON: {0}")]
    Json(String),
    #[error("value is not valid UTF-8 text: {0}")]
    Utf8(String),
    #[error("record of a repartition topic is not in the worker's encoding: {0}")]
    Shuffle(String),
    /// Not a value of its schema (Avro, Protobuf).
    #[error("{0}")]
    Schema(String),
    /// The value's schema could not be fetched: no fault of the record's.
    #[error("{0}")]
    Unavailable(String),
}

/// The values (or keys) of a schema'd format (Avro, Protobuf) with their schemas loaded: a
/// source decodes with it, a Kafka sink encodes with it.
pub enum SchemaCodec {
    Avro(Box<crate::avro::AvroCodec>),
    Protobuf(crate::protobuf::ProtobufCodec),
}

/// A source's or a Kafka sink's codecs of keys and values; `None` where they are plain (text
/// keys; values per the source's format, a sink's as JSON).
#[derive(Clone, Default)]
pub struct Codecs {
    pub key: Option<Arc<SchemaCodec>>,
    pub value: Option<Arc<SchemaCodec>>,
}

impl Codecs {
    /// The source's codecs, for `format: avro` or `protobuf`.
    ///
    /// # Errors
    /// A schema that cannot be read.
    pub fn for_source(source: &crate::spec::SourceSpec) -> Result<Codecs, String> {
        let credentials = &source.kafka.credentials;
        let avro = |a: &crate::spec::AvroSpec| {
            crate::avro::AvroCodec::for_source(a, credentials)
                .map(|c| Arc::new(SchemaCodec::Avro(Box::new(c))))
        };
        Ok(match (source.format, &source.avro, &source.protobuf) {
            (Format::Avro, Some(a), _) => Codecs {
                key: a.keys().as_ref().map(avro).transpose()?,
                value: Some(avro(a)?),
            },
            (Format::Protobuf, _, Some(p)) => Codecs::protobuf(p, credentials, None)?,
            _ => Codecs::default(),
        })
    }

    /// A Kafka sink's codecs, when it writes Avro (registering its schemas) or Protobuf.
    ///
    /// # Errors
    /// A schema that cannot be read, or a registry that refuses it.
    pub fn for_sink(
        k: &crate::spec::KafkaSink,
        credentials: &crate::credentials::Credentials,
    ) -> Result<Codecs, String> {
        let avro = |a: &crate::spec::AvroSpec, part: &str| {
            crate::avro::AvroCodec::for_sink(a, &format!("{}-{part}", k.topic), credentials)
                .map(|c| Arc::new(SchemaCodec::Avro(Box::new(c))))
        };
        Ok(match (&k.avro, &k.protobuf) {
            (Some(a), _) => Codecs {
                key: a.keys().map(|keys| avro(&keys, "key")).transpose()?,
                value: Some(avro(a, "value")?),
            },
            (None, Some(p)) => Codecs::protobuf(p, credentials, Some(&k.topic))?,
            (None, None) => Codecs::default(),
        })
    }

    /// A source's Protobuf codecs (`sink` None), or a sink's, which registers its schema
    /// under `<sink>-value` (and `-key`) when there is a registry.
    fn protobuf(
        p: &crate::spec::ProtobufSpec,
        credentials: &crate::credentials::Credentials,
        sink: Option<&str>,
    ) -> Result<Codecs, String> {
        let (value, key) = crate::protobuf::ProtobufCodec::load_with_key(p)?;
        let registry = p
            .registry
            .as_ref()
            .map(|r| crate::protobuf::registry(&r.url, credentials));
        let frame = |c: crate::protobuf::ProtobufCodec, part: &str| match (&registry, sink) {
            (None, _) => Ok(c),
            (Some(r), None) => Ok(c.framed_by(r.clone())),
            (Some(r), Some(topic)) => c.registered(r.clone(), &format!("{topic}-{part}")),
        };
        let wrap = |c| Arc::new(SchemaCodec::Protobuf(c));
        Ok(Codecs {
            key: key.map(|k| frame(k, "key")).transpose()?.map(wrap),
            value: Some(wrap(frame(value, "value")?)),
        })
    }
}

impl SchemaCodec {
    /// A record's value or key; an absent one is null.
    ///
    /// # Errors
    /// A value too large or not of its schema; [`DecodeError::Unavailable`] when the schema
    /// registry did not answer.
    pub fn decode(&self, payload: Option<&[u8]>) -> Result<Val, DecodeError> {
        let Some(bytes) = payload else {
            return Ok(Val::Null);
        };
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        match self {
            SchemaCodec::Avro(c) => c.decode(bytes),
            SchemaCodec::Protobuf(c) => c.decode(bytes),
        }
        .map_err(|e| match e {
            crate::registry::SchemaError::Record(why) => DecodeError::Schema(why),
            e @ crate::registry::SchemaError::Unavailable(_) => {
                DecodeError::Unavailable(e.to_string())
            }
        })
    }

    /// A result's value in the format.
    ///
    /// # Errors
    /// A value that does not fit the schema, with the reason.
    pub fn encode(&self, v: &Val) -> Result<Vec<u8>, String> {
        match self {
            SchemaCodec::Avro(c) => c.encode(v),
            SchemaCodec::Protobuf(c) => c.encode(v),
        }
    }
}

/// Decodes a record value per the source format, keeping what the pipeline reads of a JSON
/// value (the whole value, some fields, or nothing but the check that it is well-formed). An
/// absent value (a tombstone) is null.
///
/// # Errors
/// When the value is too large or not of the format.
pub fn decode_value(
    format: Format,
    payload: Option<&[u8]>,
    needs: &ValueNeeds,
) -> Result<Val, DecodeError> {
    let Some(bytes) = payload else {
        return Ok(Val::Null);
    };
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    match format {
        Format::Json => match needs {
            ValueNeeds::Whole => Val::from_json(bytes, MAX_JSON_DEPTH),
            ValueNeeds::Fields(f) => Val::from_json_fields(bytes, MAX_JSON_DEPTH, f),
            ValueNeeds::Nothing => Val::check_json(bytes).map(|()| Val::Null),
        }
        .map_err(|e| {
            let msg = e.to_string();
            // Both our depth check and serde_json's own recursion limit (for skipped parts).
            if msg.contains("nested deeper than the limit") || msg.contains("recursion limit") {
                DecodeError::TooDeep
            } else {
                DecodeError::Json(msg)
            }
        }),
        Format::Text => std::str::from_utf8(bytes)
            .map(Val::str)
            .map_err(|e| DecodeError::Utf8(e.to_string())),
        Format::Bytes => Ok(Val::Bytes(Arc::from(bytes))),
        // The engine decodes these with the source's schemas (Codecs).
        Format::Avro | Format::Protobuf => Err(DecodeError::Schema(
            "a value of a schema'd format is read with its schema, not by its format alone".into(),
        )),
        Format::Shuffle => {
            crate::value::codec::decode(bytes).map_err(|e| DecodeError::Shuffle(e.to_string()))
        }
    }
}

/// A record's key as the source's format writes it: the worker's own encoding between
/// stages, otherwise [`decode_key`].
///
/// # Errors
/// A repartition topic's key that is not in the worker's encoding.
pub fn decode_key_as(format: Format, key: Option<&[u8]>) -> Result<Val, DecodeError> {
    match (format, key) {
        (Format::Shuffle, Some(k)) => {
            crate::value::codec::decode(k).map_err(|e| DecodeError::Shuffle(e.to_string()))
        }
        _ => Ok(decode_key(key)),
    }
}

/// Keys are text when they are UTF-8 (as almost all are), bytes otherwise.
pub fn decode_key(key: Option<&[u8]>) -> Val {
    match key {
        None => Val::Null,
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => Val::str(s),
            Err(_) => Val::Bytes(Arc::from(k)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &ValueNeeds = &ValueNeeds::Whole;

    #[test]
    fn decodes_each_format_and_refuses_bad_input_with_the_reason() {
        assert_eq!(
            decode_value(Format::Json, Some(br#"{"a":1}"#), W)
                .unwrap()
                .field("a"),
            Some(&Val::Int(1))
        );
        assert_eq!(
            decode_value(Format::Text, Some(b"hi"), W).unwrap(),
            Val::str("hi")
        );
        assert_eq!(
            decode_value(Format::Bytes, Some(&[0xff]), W).unwrap(),
            Val::Bytes(Arc::from(&[0xffu8][..]))
        );
        assert_eq!(decode_value(Format::Json, None, W).unwrap(), Val::Null);
        assert!(matches!(
            decode_value(Format::Json, Some(b"{\"a\":"), W),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_value(Format::Json, Some(b"{} trailing"), W),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_value(Format::Text, Some(&[0xc3, 0x28]), W),
            Err(DecodeError::Utf8(_))
        ));
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            decode_value(Format::Bytes, Some(&big), W),
            Err(DecodeError::TooLarge(_))
        ));
        assert_eq!(decode_key(Some(b"k")), Val::str("k"));
        assert_eq!(decode_key(None), Val::Null);
        assert!(matches!(decode_key(Some(&[0xff])), Val::Bytes(_)));
    }

    #[test]
    fn deep_json_is_refused_with_the_limit_whatever_the_pipeline_reads() {
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        let in_field = format!(r#"{{"a":{deep}}}"#);
        let fields = ValueNeeds::Fields(std::iter::once(Arc::from("a")).collect());
        for (bytes, needs) in [(deep.as_bytes(), W), (in_field.as_bytes(), &fields)] {
            let e = decode_value(Format::Json, Some(bytes), needs).unwrap_err();
            assert_eq!(e, DecodeError::TooDeep, "{needs:?}");
            assert!(e.to_string().contains("deeper than 64 levels"), "{e}");
        }
        let ok = format!(
            "{}1{}",
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert!(decode_value(Format::Json, Some(ok.as_bytes()), W).is_ok());
        // What the pipeline does not read is only checked, without recursion: any depth is
        // safe there, and the record is not refused for it.
        let skipped = format!(
            r#"{{"a":1,"b":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode_value(Format::Json, Some(skipped.as_bytes()), &fields).is_ok());
        assert!(decode_value(Format::Json, Some(skipped.as_bytes()), &ValueNeeds::Nothing).is_ok());
    }
}
