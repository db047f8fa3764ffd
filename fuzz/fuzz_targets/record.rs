//! A Kafka record as a producer writes it: the value in each format, with each read pattern
//! (and as an Avro datum and a Protobuf message of a schema with records, arrays, maps,
//! unions and enums), and the key.
#![no_main]

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir_worker::avro::AvroCodec;
use weir_worker::credentials::Credentials;
use weir_worker::expr::ValueNeeds;
use weir_worker::protobuf::ProtobufCodec;
use weir_worker::record::{decode_key, decode_value, SchemaCodec};
use weir_worker::spec::{AvroSpec, Format, ProtobufSpec, SchemaFile};

const AVSC: &str = r#"{"type": "record", "name": "E", "fields": [
  {"name": "id", "type": "long"}, {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "attrs", "type": {"type": "map", "values": "double"}},
  {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
  {"name": "note", "type": ["null", "string", "bytes"]}]}"#;
const PROTO: &str = "syntax = \"proto3\";\nmessage E { int64 id = 1; repeated string tags = 2; map<string, double> attrs = 3; enum K { A = 0; B = 1; } K kind = 4; E inner = 5; bytes note = 6; }\n";

/// A source reading `format` with the schemas above, written once to a temporary directory.
fn codec(format: Format) -> &'static Option<SchemaCodec> {
    static AVRO: OnceLock<Option<SchemaCodec>> = OnceLock::new();
    static PROTOBUF: OnceLock<Option<SchemaCodec>> = OnceLock::new();
    let cell = if format == Format::Avro {
        &AVRO
    } else {
        &PROTOBUF
    };
    cell.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("weir-fuzz-schemas-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("e.avsc"), AVSC).ok()?;
        std::fs::write(dir.join("e.proto"), PROTO).ok()?;
        let file = |name: &str| SchemaFile {
            file: Some(dir.join(name).display().to_string()),
            config_map: None,
        };
        Some(if format == Format::Avro {
            let spec = AvroSpec {
                schema: Some(file("e.avsc")),
                registry: None,
                key: None,
            };
            SchemaCodec::Avro(Box::new(
                AvroCodec::for_source(&spec, &Credentials::default()).ok()?,
            ))
        } else {
            let spec = ProtobufSpec {
                schema: file("e.proto"),
                message: "E".into(),
                key_message: None,
                registry: None,
            };
            SchemaCodec::Protobuf(ProtobufCodec::load(&spec).ok()?)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let fields = ValueNeeds::Fields(BTreeSet::from([Arc::from("a"), Arc::from("page")]));
    for needs in [ValueNeeds::Whole, fields, ValueNeeds::Nothing] {
        for format in [Format::Json, Format::Text, Format::Bytes] {
            let _ = decode_value(format, Some(data), &needs);
        }
    }
    // A decoded value goes back out to sinks and dead-letter topics as JSON.
    if let Ok(v) = decode_value(Format::Json, Some(data), &ValueNeeds::Whole) {
        let mut out = Vec::new();
        v.write_payload(&mut out);
    }
    for format in [Format::Avro, Format::Protobuf] {
        if let Some(c) = codec(format) {
            if let Ok(v) = c.decode(Some(data)) {
                // What was read goes back out the same way (a sink of the same schema).
                let _ = c.encode(&v);
            }
        }
    }
    let _ = decode_key(Some(data));
});
