//! The checks of Avro settings: a source's format and its schema or registry, a sink's schema.

use super::Checker;
use crate::spec::{AvroSpec, Format, JobSpec};

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
            settings(c, "source.avro", a);
        }
        (None, false) => {}
    }
    if let Some(a) = spec.sink.kafka.as_ref().and_then(|k| k.avro.as_ref()) {
        if a.schema.is_none() {
            c.err(
                "sink.kafka.avro.schema",
                "is missing: a sink writes its values with a schema it is given",
            );
        }
        settings(c, "sink.kafka.avro", a);
    }
}

fn settings(c: &mut Checker, at: &str, a: &AvroSpec) {
    if let Some(s) = &a.schema {
        match (&s.file, &s.config_map) {
            (Some(f), None) if f.trim().is_empty() => {
                c.err(format!("{at}.schema.file"), "is empty; name the .avsc file")
            }
            (Some(_), None) => {}
            (None, Some(cm)) => c.config_map(&format!("{at}.schema.configMap"), cm),
            _ => c.err(
                format!("{at}.schema"),
                "sets exactly one of file and configMap",
            ),
        }
    }
    if let Some(r) = &a.registry {
        let u = r.url.trim();
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
            c.err(
                format!("{at}.registry.url"),
                format!("{u:?} is not an http:// or https:// URL of a Schema Registry"),
            );
        }
    }
}
