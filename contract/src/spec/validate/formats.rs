//! The checks of schema'd value formats: a source's format and its settings (Avro's schema or
//! registry, Protobuf's schema and message type), a sink's.

use super::Checker;
use crate::spec::{AvroSpec, Format, JobSpec, ProtobufSpec, RegistrySpec, SchemaFile};

pub(super) fn check(c: &mut Checker, spec: &JobSpec) {
    let source = &spec.source;
    match (&source.avro, source.format == Format::Avro) {
        (None, true) => c.err(
            "source.avro",
            "format avro needs the schema (source.avro.schema) or the registry (source.avro.registry) to read values with",
        ),
        (Some(_), false) => c.err("source.avro", "is set but format is not avro; set format: avro"),
        (Some(a), true) => {
            if a.schema.is_none() && a.registry.is_none() {
                c.err(
                    "source.avro",
                    "sets neither schema nor registry; set the schema the values were written with, or the registry that has it",
                );
            }
            if a.key.as_ref().is_some_and(|k| k.schema.is_none()) && a.registry.is_none() {
                c.err(
                    "source.avro.key",
                    "sets no schema and there is no registry; set key.schema to the schema the keys were written with",
                );
            }
            settings(c, "source.avro", a);
        }
        (None, false) => {}
    }
    match (&source.protobuf, source.format == Format::Protobuf) {
        (None, true) => c.err(
            "source.protobuf",
            "format protobuf needs the schema and the message type: source.protobuf: {schema: {file: view.proto}, message: pkg.View}",
        ),
        (Some(_), false) => c.err(
            "source.protobuf",
            "is set but format is not protobuf; set format: protobuf",
        ),
        (Some(p), true) => protobuf(c, "source.protobuf", p),
        (None, false) => {}
    }
    if let Some(k) = &spec.sink.kafka {
        if let Some(p) = &k.protobuf {
            protobuf(c, "sink.kafka.protobuf", p);
            if k.avro.is_some() {
                c.err(
                    "sink.kafka",
                    "sets both avro and protobuf; a sink writes one format",
                );
            }
        }
    }
    if let Some(a) = spec.sink.kafka.as_ref().and_then(|k| k.avro.as_ref()) {
        if a.schema.is_none() {
            c.err(
                "sink.kafka.avro.schema",
                "is missing: a sink writes its values with a schema it is given",
            );
        }
        if a.key.as_ref().is_some_and(|k| k.schema.is_none()) {
            c.err(
                "sink.kafka.avro.key.schema",
                "is missing: a sink writes its keys with a schema it is given",
            );
        }
        settings(c, "sink.kafka.avro", a);
    }
}

fn protobuf(c: &mut Checker, at: &str, p: &ProtobufSpec) {
    schema_file(c, at, &p.schema);
    if let Some(r) = &p.registry {
        registry_url(c, at, r);
    }
    let named = std::iter::once(("message", &p.message))
        .chain(p.key_message.iter().map(|k| ("keyMessage", k)));
    for (field, name) in named {
        let ok = !name.is_empty()
            && name.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !ok {
            c.err(
                format!("{at}.{field}"),
                format!(
                    "{name:?} is not a message type name; write it with its package, e.g. shop.v1.View"
                ),
            );
        }
    }
}

fn schema_file(c: &mut Checker, at: &str, s: &SchemaFile) {
    match (&s.file, &s.config_map) {
        (Some(f), None) if f.trim().is_empty() => c.err(
            format!("{at}.schema.file"),
            "is empty; name the schema file",
        ),
        (Some(_), None) => {}
        (None, Some(cm)) => c.config_map(&format!("{at}.schema.configMap"), cm),
        _ => c.err(
            format!("{at}.schema"),
            "sets exactly one of file and configMap",
        ),
    }
}

fn settings(c: &mut Checker, at: &str, a: &AvroSpec) {
    if let Some(s) = &a.schema {
        schema_file(c, at, s);
    }
    if let Some(s) = a.key.as_ref().and_then(|k| k.schema.as_ref()) {
        schema_file(c, &format!("{at}.key"), s);
    }
    if let Some(r) = &a.registry {
        registry_url(c, at, r);
    }
}

fn registry_url(c: &mut Checker, at: &str, r: &RegistrySpec) {
    let u = r.url.trim();
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
        c.err(
            format!("{at}.registry.url"),
            format!("{u:?} is not an http:// or https:// URL of a Schema Registry"),
        );
    }
}
