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

/// The keys' schema.
const KEY: &str = r#"{"type": "record", "name": "ViewKey", "fields": [
  {"name": "site", "type": "string"}, {"name": "session", "type": "long"}]}"#;

/// A Schema Registry's API as scripted answers: schemas 1 (V1), 2 (V2) and 3 (KEY) by id, and
/// 5 (VIEW_PROTO, a Protobuf schema); a value schema registered gets id 7 (9 for Protobuf), a
/// key schema 8. Counts the GETs of each id.
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
                        Some("3") => (200, serde_json::json!({"schema": KEY}).to_string()),
                        Some("5") => (
                            200,
                            serde_json::json!({"schemaType": "PROTOBUF", "schema": VIEW_PROTO})
                                .to_string(),
                        ),
                        _ => (
                            404,
                            r#"{"error_code":40403,"message":"Schema not found"}"#.into(),
                        ),
                    }
                } else if line.starts_with("POST /subjects/out-value/versions") {
                    r.fetch_add(1, Ordering::SeqCst);
                    (200, r#"{"id":7}"#.to_string())
                } else if line.starts_with("POST /subjects/out-pb-value/versions") {
                    r.fetch_add(1, Ordering::SeqCst);
                    assert!(String::from_utf8_lossy(&body).contains("\"schemaType\":\"PROTOBUF\""));
                    (200, r#"{"id":9}"#.to_string())
                } else if line.starts_with("POST /subjects/out-key/versions") {
                    r.fetch_add(1, Ordering::SeqCst);
                    (200, r#"{"id":8}"#.to_string())
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

/// Why each record of the dead-letter topic is there (its `weir.error` header), in order.
fn dead_letter_reasons(broker: &Broker) -> Vec<String> {
    read_all(broker, "dlq")
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "weir.error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect()
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
    let reasons = dead_letter_reasons(&broker);
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
        read_all(&broker, "dlq")[1].value,
        bad[1],
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
        key_message: None,
        registry: None,
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
    let why = dead_letter_reasons(&broker);
    assert!(
        why.len() == 1 && why[0].contains("not a Protobuf shop.v1.View message"),
        "{why:?}"
    );
}

#[test]
fn avro_and_protobuf_keys_are_read_typed_and_written_back_in_their_schema() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = broker();
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = |site: &str, session: i64| {
        framed(
            3,
            KEY,
            vec![
                ("site", Avro::String(site.into())),
                ("session", Avro::Long(session)),
            ],
        )
    };
    let records: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (key("shop", 11), view(1, "ann", 250, None)),
        (key("blog", 12), view(2, "bob", 400, Some("fr"))),
        (key("shop", 13), view(2, "cy", 900, Some("de"))),
        // Not a key of its schema: a dead letter, whatever its value.
        (vec![0, 0, 0, 0, 3, 0xff], view(1, "bad-key", 300, None)),
    ];
    let p: BaseProducer = broker.client().create().expect("producer");
    for (k, v) in &records {
        p.send(BaseRecord::to("in").key(k).payload(v).partition(0))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    p.flush(std::time::Duration::from_secs(10)).expect("flush");
    std::fs::write(dir.path().join("key.avsc"), KEY).expect("schema");
    // CEL sees the key's fields with their types; the sink writes keys in their schema, framed
    // with the id the registry gave `out-key`.
    let keyed = format!(
        "out.avsc}}, key: {{schema: {{file: {}/key.avsc}}}}, registry",
        dir.path().display()
    );
    let yaml = job(dir.path(), registry.port, registry.port)
        .replace("v2.avsc}, registry", "v2.avsc}, key: {}, registry")
        .replace("out.avsc}, registry", &keyed)
        .replace(
            "- {id: slow, filter: \"value.ms >= 100\"}",
            "- {id: slow, filter: \"value.ms >= 100 && key.site == 'shop' && key.session > 10\"}",
        );
    assert!(yaml.contains("key.site"), "{yaml}");
    run(&broker, &yaml, 2);
    let schema = Schema::parse_str(KEY).expect("schema");
    let keys: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| {
            let k = r.key_bytes.as_ref().expect("a key");
            assert_eq!(&k[..5], &[0, 0, 0, 0, 8], "framed with the key's id");
            let v = apache_avro::from_avro_datum(&schema, &mut &k[5..], None).expect("Avro key");
            format!("{v:?}")
        })
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].contains("\"shop\"") && keys[0].contains("Long(11)"),
        "{keys:?}"
    );
    assert!(keys[1].contains("Long(13)"), "{keys:?}");
    let why = dead_letter_reasons(&broker);
    assert!(
        why.len() == 1 && why[0].contains("the key: not an Avro value of its schema"),
        "{why:?}"
    );

    // Protobuf keys: a message type of the same schema.
    let proto_text =
        format!("{VIEW_PROTO}message ViewKey {{ string site = 1; int64 session = 2; }}\n");
    let keys = proto_codec(dir.path(), "keyed.proto", &proto_text, "shop.v1.ViewKey");
    let values = proto_codec(dir.path(), "keyed.proto", &proto_text, "shop.v1.View");
    let json = |s: &str| weir_worker::expr::Val::from_json(s.as_bytes(), 8).expect("json");
    broker.create_topic("in-proto", 1);
    broker.create_topic("out-proto", 1);
    for (site, session, user) in [("shop", 21, "dee"), ("blog", 22, "eve")] {
        let k = keys
            .encode(&json(&format!(
                r#"{{"site": "{site}", "session": {session}}}"#
            )))
            .expect("key");
        let v = values
            .encode(&json(&format!(r#"{{"user": "{user}", "ms": 500}}"#)))
            .expect("value");
        p.send(BaseRecord::to("in-proto").key(&k).payload(&v).partition(0))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    p.flush(std::time::Duration::from_secs(10)).expect("flush");
    let proto = dir.path().join("keyed.proto").display().to_string();
    let yaml = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in-proto], startingOffsets: earliest, groupId: gp, backpressure: {{enabled: false}}}}
  format: protobuf
  protobuf: {{schema: {{file: {proto}}}, message: shop.v1.View, keyMessage: shop.v1.ViewKey}}
pipeline:
  - {{id: shop, filter: "key.site == 'shop' && key.session == 21"}}
sink:
  kafka: {{topic: out-proto, protobuf: {{schema: {{file: {proto}}}, message: shop.v1.View, keyMessage: shop.v1.ViewKey}}}}
"#
    );
    run(&broker, &yaml, 2);
    let out = read_all(&broker, "out-proto");
    assert_eq!(out.len(), 1);
    let k = keys
        .decode(out[0].key_bytes.as_deref().expect("a key"))
        .expect("a ViewKey");
    assert_eq!(k.to_string(), r#"{"site":"shop","session":21}"#);
    let v = values.decode(&out[0].value).expect("a View");
    assert!(v.to_string().contains(r#""user":"dee""#), "{v}");
}

#[test]
fn confluent_framed_protobuf_is_checked_by_its_writers_message_and_written_framed() {
    let broker = broker();
    broker.create_topic("in-pb", 1);
    broker.create_topic("out-pb", 1);
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let view = proto_codec(dir.path(), "view.proto", VIEW_PROTO, "shop.v1.View");
    let json = |s: &str| weir_worker::expr::Val::from_json(s.as_bytes(), 8).expect("json");
    // Magic byte, schema id, message indexes ([0] is one 0 byte; [1] is count 1, index 1,
    // each a zigzag varint), then the message.
    let framed = |id: u32, indexes: &[u8], user: &str| {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(indexes);
        out.extend(
            view.encode(&json(&format!(r#"{{"user": "{user}", "ms": 700}}"#)))
                .expect("encode"),
        );
        out
    };
    let values = [
        framed(5, &[0], "ann"),
        framed(5, &[2, 2], "written-as-slow"),
        framed(99, &[0], "unknown-schema"),
        framed(5, &[0], "bob"),
    ];
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    produce_raw(&broker, "in-pb", 0, &refs);
    let proto = dir.path().join("view.proto").display().to_string();
    let url = format!("http://127.0.0.1:{}", registry.port);
    let yaml = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in-pb], startingOffsets: earliest, groupId: gpb, backpressure: {{enabled: false}}}}
  format: protobuf
  protobuf: {{schema: {{file: {proto}}}, message: shop.v1.View, registry: {{url: "{url}"}}}}
pipeline:
  - {{id: shape, select: {{user: value.user, seconds: "double(value.ms) / 1000.0", referrer: value.referrer}}}}
sink:
  kafka: {{topic: out-pb, protobuf: {{schema: {{file: {proto}}}, message: shop.v1.Slow, registry: {{url: "{url}"}}}}}}
deadLetter: {{topic: dlq}}
"#
    );
    run(&broker, &yaml, 2);
    let slow = proto_codec(dir.path(), "view.proto", VIEW_PROTO, "shop.v1.Slow");
    let out: Vec<String> = read_all(&broker, "out-pb")
        .iter()
        .map(|r| {
            // Framed with the id the registry gave out-pb-value and Slow's indexes, [1].
            assert_eq!(&r.value[..7], &[0, 0, 0, 0, 9, 2, 2], "{:?}", r.value);
            slow.decode(&r.value[7..])
                .expect("a Slow message")
                .to_string()
        })
        .collect();
    assert_eq!(
        out,
        vec![
            r#"{"user":"ann","seconds":0.7,"referrer":""}"#.to_string(),
            r#"{"user":"bob","seconds":0.7,"referrer":""}"#.to_string(),
        ]
    );
    let reasons = dead_letter_reasons(&broker);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("the record is a shop.v1.Slow (schema 5); the job reads shop.v1.View"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("the schema registry has no schema 99"),
        "{reasons:?}"
    );
    let gets = registry.gets.lock().expect("gets").clone();
    assert_eq!(gets.get("/schemas/ids/5"), Some(&1), "{gets:?}");
}
