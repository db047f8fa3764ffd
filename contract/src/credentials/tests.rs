use std::collections::BTreeMap;

use super::*;
use crate::spec::parse_job;

const PASSWORD: &str = "hunter2-0b5e1c";

/// A directory laid out as the kubelet mounts a Secret: each key a symlink into `..data`.
fn mounted_secret(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_11_22_00_00_00.000000000");
    std::fs::create_dir(&data).unwrap();
    for (k, v) in files {
        std::fs::write(data.join(k), v).unwrap();
        std::os::unix::fs::symlink(format!("..data/{k}"), dir.path().join(k)).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
    dir
}

fn settings(c: &Credentials) -> BTreeMap<String, String> {
    let mut cfg = ClientConfig::new();
    c.apply(&mut cfg);
    // config_map() shows sensitive values as "[sanitized for safety]"; get() does not.
    cfg.config_map()
        .keys()
        .map(|k| (k.to_string(), cfg.get(k).unwrap_or_default().to_string()))
        .collect()
}

#[test]
fn a_mounted_secret_becomes_librdkafka_settings() {
    let dir = mounted_secret(&[
        ("security.protocol", "sasl_ssl\n"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "weir"),
        ("sasl.password", &format!("{PASSWORD}\n")),
        (
            "ca.crt",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ),
    ]);
    let c = Credentials::load(dir.path()).unwrap();
    let s = settings(&c);
    assert_eq!(s["security.protocol"], "SASL_SSL");
    assert_eq!(s["sasl.mechanism"], "SCRAM-SHA-512");
    assert_eq!(s["sasl.username"], "weir");
    assert_eq!(
        s["sasl.password"], PASSWORD,
        "the file's trailing newline is not part of it"
    );
    assert!(s["ssl.ca.pem"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(s.len(), 5);
}

#[test]
fn an_env_file_works_the_same_outside_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kafka.env");
    std::fs::write(
        &path,
        format!(
            "# laptop settings\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n\
             sasl.username = weir\nsasl.password={PASSWORD}\nssl.ca.location=/etc/kafka/ca.pem\n"
        ),
    )
    .unwrap();
    let s = settings(&Credentials::load(&path).unwrap());
    assert_eq!(s["sasl.mechanism"], "PLAIN");
    assert_eq!(s["sasl.username"], "weir");
    assert_eq!(s["sasl.password"], PASSWORD);
    assert_eq!(s["ssl.ca.location"], "/etc/kafka/ca.pem");
}

#[test]
fn the_worker_clients_get_the_credentials_and_user_properties_cannot_override_them() {
    let dir = mounted_secret(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "weir"),
        ("sasl.password", PASSWORD),
    ]);
    let mut job = parse_job(
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [t], \
         credentialsSecret: kafka-client, properties: {security.protocol: PLAINTEXT}}}\n\
         sink: {stdout: {}}\n",
        "j",
    )
    .unwrap();
    job.spec.source.kafka.credentials = Credentials::load(dir.path()).unwrap();
    let id = crate::client::Identity {
        namespace: "ns".into(),
        job: "j".into(),
        ordinal: 0,
        workers: 1,
    };
    let consumer = crate::client::consumer(&job.spec.source.kafka, &id, "g");
    assert_eq!(consumer.get("sasl.password"), Some(PASSWORD));
    assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
    let producer = crate::client::producer("k:9092", &job.spec.source.kafka, &id, "sink");
    assert_eq!(producer.get("sasl.username"), Some("weir"));

    // Nothing that prints or serializes the spec or a client's settings carries the password
    // (rdkafka sanitizes sensitive settings in ClientConfig's Debug).
    for shown in [
        format!("{consumer:?}"),
        format!("{producer:?}"),
        format!("{job:?}"),
        format!("{:#?}", job.spec),
        format!("{:?}", job.spec.source.kafka.credentials),
        serde_json::to_string(&job.spec).unwrap(),
        serde_yaml::to_string(&job.spec).unwrap(),
    ] {
        assert!(!shown.contains(PASSWORD), "password in {shown}");
    }
    assert!(format!("{:?}", job.spec.source.kafka.credentials).contains("sasl.password"));
}

#[test]
fn bad_credentials_are_refused_naming_the_key_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kafka.env");
    let refuse = |text: String| {
        std::fs::write(&path, text).unwrap();
        let e = Credentials::load(&path).unwrap_err().to_string();
        assert!(!e.contains(PASSWORD), "password in the error: {e}");
        e
    };
    let e = refuse(format!("sasl.pasword={PASSWORD}\n"));
    assert!(e.contains("unknown key \"sasl.pasword\""), "{e}");
    assert!(e.contains("sasl.password"), "lists the keys: {e}");
    let e = refuse(format!(
        "security.protocol=SASL_SSL\nsasl.mechanism=GSSAPI\nsasl.username=u\nsasl.password={PASSWORD}\n"
    ));
    assert!(e.contains("PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"), "{e}");
    let e = refuse(format!(
        "security.protocol=SASL_SSL\nsasl.password={PASSWORD}\n"
    ));
    assert!(e.contains("set both"), "{e}");
    let e = refuse(format!("sasl.username=u\nsasl.password={PASSWORD}\n"));
    assert!(e.contains("set security.protocol"), "{e}");
    let e = refuse(format!("{PASSWORD}\n"));
    assert!(e.contains("line 1: expected KEY=VALUE"), "{e}");
    let e = refuse(format!("ssl.key.pem={PASSWORD}\ntls.key={PASSWORD}\n"));
    assert!(e.contains("given twice"), "{e}");
    let e = Credentials::load(&dir.path().join("missing")).unwrap_err();
    assert!(
        e.to_string().contains("cannot read Kafka credentials"),
        "{e}"
    );
}

#[test]
fn credentials_in_properties_are_refused_with_the_way_to_fix_it() {
    let e = parse_job(
        &format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [t], \
             properties: {{sasl.password: {PASSWORD}}}}}}}\nsink: {{stdout: {{}}}}\n"
        ),
        "j",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("source.kafka.properties[\"sasl.password\"]"),
        "{e}"
    );
    assert!(e.contains("credentialsSecret"), "{e}");
    assert!(!e.contains(PASSWORD), "password in the error: {e}");
    // The spec has no place for the values themselves.
    let e = parse_job(
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [t], \
         credentials: {sasl.password: x}}}\nsink: {stdout: {}}\n",
        "j",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field"), "{e}");

    let e = parse_job(
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [t], \
         credentialsSecret: Kafka_Client}}\nsink: {stdout: {}}\n",
        "j",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("source.kafka.credentialsSecret: \"Kafka_Client\" is not a Secret name"),
        "{e}"
    );
}
