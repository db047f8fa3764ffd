//! Schema'd value formats through the engine on a real broker (librdkafka's mock cluster).
//! Avro: records in the Confluent wire format read against a scripted Schema Registry (a
//! Confluent registry is a JVM service this machine cannot run), resolved to the job's schema
//! (a field added with a default), written back as Avro; bad bytes and unknown schemas
//! dead-lettered with the reason; a registry that does not answer holds the batch rather than
//! losing records. Protobuf: messages of a `.proto` file's type read, reshaped and written as
//! another type, a record written before a field was added read with its default.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use common::*;

const V1: &str = r#"{"type": "record", "name": "View", "fields": [
  {"name": "user", "type": "string"}, {"name": "ms", "type": "long"}]}"#;
/// V1 with a field added with a default: what the job reads with.
const V2: &str = r#"{"type": "record", "name": "View", "fields": [
  {"name": "user", "type": "string"}, {"name": "ms", "type": "long"},
  {"name": "country", "type": "string", "default": "unknown"}]}"#;
const OUT: &str = r#"{"type": "record", "name": "Slow", "fields": [
  {"name": "user", "type": "string"}, {"name": "country", "type": "string"},
  {"name": "seconds", "type": "double"}]}"#;

/// A Schema Registry's API as scripted answers: schemas 1 (V1) and 2 (V2) by id, anything
/// registered gets id 7. Counts the GETs of each id.
struct Registry {
    port: u16,
    gets: Arc<Mutex<BTreeMap<String, usize>>>,
    registered: Arc<AtomicUsize>,
}

impl Registry {
    fn start_on(listener: TcpListener) -> Registry {
        let port = listener.local_addr().expect("address").port();
        let gets = Arc::new(Mutex::new(BTreeMap::new()));
        let registered = Arc::new(AtomicUsize::new(0));
        let (g, r) = (gets.clone(), registered.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let (status, answer) = if line.starts_with("GET /schemas/ids/") {
                    *g.lock().expect("gets").entry(path.clone()).or_default() += 1;
                    match path.rsplit('/').next() {
                        Some("1") => (200, serde_json::json!({"schema": V1}).to_string()),
                        Some("2") => (200, serde_json::json!({"schema": V2}).to_string()),
                        _ => (
                            404,
                            r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
                        ),
                    }
                } else if line.starts_with("POST /subjects/out-value/versions") {
                    r.fetch_add(1, Ordering::SeqCst);
                    (200, r#"{"id":7}"#.to_string())
                } else {
                    (404, "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Registry {
            port,
            gets,
            registered,
        }
    }

    fn start() -> Registry {
        Registry::start_on(TcpListener::bind("127.0.0.1:0").expect("bind"))
    }
}

fn framed(id: u32, schema: &str, fields: Vec<(&str, Avro)>) -> Vec<u8> {
    let schema = Schema::parse_str(schema).expect("schema");
    let record = Avro::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, record).expect("datum"));
    out
}

fn view(id: u32, user: &str, ms: i64, country: Option<&str>) -> Vec<u8> {
    let mut fields = vec![("user", Avro::String(user.into())), ("ms", Avro::Long(ms))];
    match country {
        Some(c) => {
            fields.push(("country", Avro::String(c.into())));
            framed(id, V2, fields)
        }
        None => framed(id, V1, fields),
    }
}

/// The job, reading with the registry on port `source` and writing with the one on `sink`.
fn job(dir: &std::path::Path, source: u16, sink: u16) -> String {
    std::fs::write(dir.join("v2.avsc"), V2).expect("schema");
    std::fs::write(dir.join("out.avsc"), OUT).expect("schema");
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g, backpressure: {{enabled: false}}, retries: {{maxRetries: 1, backoff: 100ms}}}}
  format: avro
  avro: {{schema: {{file: {dir}/v2.avsc}}, registry: {{url: "http://127.0.0.1:{source}"}}}}
pipeline:
  - {{id: slow, filter: "value.ms >= 100"}}
  - {{id: shape, select: {{user: value.user, country: value.country, seconds: "double(value.ms) / 1000.0"}}}}
sink:
  kafka:
    topic: out
    avro: {{schema: {{file: {dir}/out.avsc}}, registry: {{url: "http://127.0.0.1:{sink}"}}}}
deadLetter: {{topic: dlq}}
"#,
        dir = dir.display()
    )
}

fn broker() -> Broker {
    let broker = Broker::in_process();
    for t in ["in", "out", "dlq"] {
        broker.create_topic(t, 1);
    }
    broker
}

/// The output records decoded with the sink's schema, after checking their framing.
fn output(broker: &Broker) -> Vec<(String, String, f64)> {
    let schema = Schema::parse_str(OUT).expect("schema");
    read_all(broker, "out")
        .into_iter()
        .map(|r| {
            assert_eq!(
                &r.value[..5],
                &[0, 0, 0, 0, 7],
                "framed with the registered id"
            );
            let v = apache_avro::from_avro_datum(&schema, &mut &r.value[5..], None).expect("Avro");
            let Avro::Record(f) = v else {
                panic!("a record: {v:?}")
            };
            let s = |i: usize| match &f[i].1 {
                Avro::String(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            let Avro::Double(secs) = f[2].1 else {
                panic!("{:?}", f[2])
            };
            (s(0), s(1), secs)
        })
        .collect()
}

#[test]
fn confluent_framed_values_are_resolved_to_the_jobs_schema_and_written_back_as_avro() {
    let broker = broker();
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let values = [
        view(1, "old-writer", 250, None),
        view(2, "new-writer", 1500, Some("fr")),
        view(1, "fast", 20, None),
        view(1, "old-again", 400, None),
    ];
    let bad = [
        view(99, "unknown-schema", 500, None),
        b"{\"user\": \"json\"}".to_vec(),
        view(1, "cut", 500, None)[..7].to_vec(),
    ];
    let payloads: Vec<&[u8]> = values.iter().chain(&bad).map(|v| v.as_slice()).collect();
    produce_raw(&broker, "in", 0, &payloads);
    run(&broker, &job(dir.path(), registry.port, registry.port), 2);

    assert_eq!(
        output(&broker),
        vec![
            ("old-writer".into(), "unknown".into(), 0.25),
            ("new-writer".into(), "fr".into(), 1.5),
            ("old-again".into(), "unknown".into(), 0.4),
        ],
        "a V1 record reads with V2's default for the field it lacks"
    );
    let dlq = read_all(&broker, "dlq");
    let reasons: Vec<String> = dlq
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "weir.error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("the schema registry has no schema 99"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("not in the Confluent wire format"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("not an Avro value of its schema"),
        "{reasons:?}"
    );
    assert_eq!(
        dlq[1].value, bad[1],
        "a dead letter keeps the record's bytes"
    );
    // Each schema fetched once, however many records name it; the sink's schema registered.
    let gets = registry.gets.lock().expect("gets").clone();
    assert_eq!(gets.get("/schemas/ids/1"), Some(&1), "{gets:?}");
    assert_eq!(gets.get("/schemas/ids/2"), Some(&1), "{gets:?}");
    assert_eq!(registry.registered.load(Ordering::SeqCst), 1);
}

#[test]
fn a_registry_that_does_not_answer_holds_the_batch_and_dead_letters_nothing() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    // The sink's schema is registered with a registry that answers; the source's reads go to
    // one that is down, then comes up on the same port.
    let up = Registry::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let yaml = job(dir.path(), port, up.port);
    produce_raw(&broker, "in", 0, &[&view(1, "waiting", 300, None)]);
    let (mut engine, _) = connect(&broker, &yaml).expect("connect");
    let once = weir_worker::engine::Options {
        max_batches: Some(1),
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let e = engine
        .run(&once, &cancel)
        .expect_err("no batch without the schema");
    assert!(
        e.to_string().contains("the schema registry did not answer"),
        "{e}"
    );
    assert!(read_all(&broker, "dlq").is_empty(), "nothing dead-lettered");
    let at = committed(&broker, "g", "in", 1)[0];
    assert!(at <= 0, "the record's offset is not committed past: {at}");
    // The registry comes back: the same record goes through.
    let _back = Registry::start_on(TcpListener::bind(("127.0.0.1", port)).expect("rebind"));
    run(&broker, &yaml, 1);
    assert_eq!(
        output(&broker),
        vec![("waiting".into(), "unknown".into(), 0.3)]
    );
}

const VIEW_PROTO: &str = "syntax = \"proto3\";\npackage shop.v1;\nmessage View { string user = 1; int64 ms = 2; string referrer = 3; }\nmessage Slow { string user = 1; double seconds = 2; string referrer = 3; }\n";
const OLD_VIEW_PROTO: &str =
    "syntax = \"proto3\";\npackage shop.v1;\nmessage View { string user = 1; int64 ms = 2; }\n";

fn proto_codec(
    dir: &std::path::Path,
    file: &str,
    text: &str,
    message: &str,
) -> weir_worker::protobuf::ProtobufCodec {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("proto");
    weir_worker::protobuf::ProtobufCodec::load(&weir_worker::spec::ProtobufSpec {
        schema: weir_worker::spec::SchemaFile {
            file: Some(path.display().to_string()),
            config_map: None,
        },
        message: message.into(),
    })
    .expect("codec")
}

#[test]
fn protobuf_messages_are_read_reshaped_and_written_as_another_type() {
    let broker = broker();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = proto_codec(dir.path(), "old.proto", OLD_VIEW_PROTO, "shop.v1.View");
    let new = proto_codec(dir.path(), "view.proto", VIEW_PROTO, "shop.v1.View");
    let json = |s: &str| weir_worker::expr::Val::from_json(s.as_bytes(), 8).expect("json");
    let values = [
        old.encode(&json(r#"{"user": "before-the-field", "ms": 250}"#))
            .expect("encode"),
        new.encode(&json(
            r#"{"user": "with-it", "ms": 1500, "referrer": "ads"}"#,
        ))
        .expect("encode"),
        new.encode(&json(r#"{"user": "fast", "ms": 20}"#))
            .expect("encode"),
        vec![0x0a, 0xff, 0x01],
    ];
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    produce_raw(&broker, "in", 0, &refs);
    let proto = dir.path().join("view.proto").display().to_string();
    let yaml = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g, backpressure: {{enabled: false}}}}
  format: protobuf
  protobuf: {{schema: {{file: {proto}}}, message: shop.v1.View}}
pipeline:
  - {{id: slow, filter: "value.ms >= 100"}}
  - {{id: shape, select: {{user: value.user, seconds: "double(value.ms) / 1000.0", referrer: value.referrer}}}}
sink:
  kafka: {{topic: out, protobuf: {{schema: {{file: {proto}}}, message: shop.v1.Slow}}}}
deadLetter: {{topic: dlq}}
"#
    );
    run(&broker, &yaml, 2);
    let slow = proto_codec(dir.path(), "view.proto", VIEW_PROTO, "shop.v1.Slow");
    let out: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| slow.decode(&r.value).expect("a Slow message").to_string())
        .collect();
    assert_eq!(
        out,
        vec![
            r#"{"user":"before-the-field","seconds":0.25,"referrer":""}"#.to_string(),
            r#"{"user":"with-it","seconds":1.5,"referrer":"ads"}"#.to_string(),
        ]
    );
    let dlq = read_all(&broker, "dlq");
    assert_eq!(dlq.len(), 1);
    let why = dlq[0]
        .headers
        .iter()
        .find(|(k, _)| k == "weir.error")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(why.contains("not a Protobuf shop.v1.View message"), "{why}");
}
