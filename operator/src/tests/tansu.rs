//! The real observer against the second, independent broker: tansu with its sqlite engine, in
//! its own process, so the observer is not tuned to librdkafka's mock cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::kafka::target;
use crate::lag::{summarize, DEFAULT_ROWS};
use crate::observe::{self, KafkaObserver};

struct Tansu {
    child: Child,
    bootstrap: String,
    _dir: tempfile::TempDir,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu on a free loopback port; `None` (with a note) where it is not installed, which
/// only `scripts/install-tools.sh` guarantees (and CI must have).
fn tansu() -> Option<Tansu> {
    let bin = std::env::var("WEIR_TANSU_BIN")
        .ok()
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let p = Path::new(&home).join(".cache/weir-tools/tansu-0.6.0/bin/tansu");
            p.exists().then_some(p)
        });
    let Some(bin) = bin else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is required in CI: scripts/install-tools.sh installs it"
        );
        eprintln!("tansu not installed; run scripts/install-tools.sh. Skipping.");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // Relative to the working directory: tansu misreads absolute sqlite URLs.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bootstrap = format!("127.0.0.1:{port}");
    let t = Tansu {
        child,
        bootstrap,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&t.bootstrap).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(t)
}

#[tokio::test]
async fn the_real_observer_reads_tansu_too() {
    let Some(broker) = tansu() else { return };
    let client = |c: &mut ClientConfig| c.set("bootstrap.servers", &broker.bootstrap).clone();
    let admin: AdminClient<DefaultClientContext> =
        client(&mut ClientConfig::new()).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new("clicks", 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    created.into_iter().for_each(|r| {
        r.unwrap();
    });

    let p: BaseProducer = client(&mut ClientConfig::new()).create().unwrap();
    for (partition, n) in [(0, 4), (2, 7)] {
        for i in 0..n {
            let payload = format!("record {i}");
            p.send(
                BaseRecord::<(), str>::to("clicks")
                    .payload(&payload)
                    .partition(partition),
            )
            .unwrap();
        }
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let c: BaseConsumer = client(ClientConfig::new().set("group.id", "weir.default.wc"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("clicks", 0, Offset::Offset(1))
        .unwrap();
    tpl.add_partition_offset("clicks", 2, Offset::Offset(7))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();

    let t = target(&broker.bootstrap, &["clicks"], "earliest");
    let obs = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    let seen: Vec<(i32, i64, Option<i64>)> = obs
        .partitions
        .iter()
        .map(|p| (p.partition, p.end, p.committed))
        .collect();
    assert_eq!(seen, [(0, 4, Some(1)), (1, 0, None), (2, 7, Some(7))]);
    let s = summarize(&obs, &"earliest".parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(
        (s.partitions, s.lag.records, s.lag.max_partition),
        (3, 3, 3)
    );

    // A timestamp policy counts from the first record at or after the time: "timed" has
    // records stamped 1 s, 2 s, 3 s, 4 s after the epoch; 2.5 s finds offset 2.
    write_timed(&broker.bootstrap).await;
    let at = "1970-01-01T00:00:02.5Z";
    let t = target(&broker.bootstrap, &["timed"], at);
    let timed = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(timed.partitions[0].offset_for_time, Some(2));
    let s = summarize(&timed, &at.parse().unwrap(), DEFAULT_ROWS);
    assert_eq!(s.lag.records, 2, "offsets 2 and 3 wait");
    // The next unread record is offset 2, stamped 3 s after the epoch.
    assert_eq!(timed.partitions[0].next_timestamp, Some(3_000));
    assert_eq!(
        s.lag.seconds,
        timed.read_at_millis.map(|at| (at - 3_000) / 1000)
    );

    // Probe: for a time after every record Kafka answers no offset (start at the end); tansu
    // answers 0, the first offset, which would count the whole log. That case is tested with
    // the broker's answers as data (tests::lag::no_commit_counts_from_where_the_worker_will_start).
    let t = target(&broker.bootstrap, &["timed"], "2100-01-01T00:00:00Z");
    let future = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(
        future.partitions[0].offset_for_time,
        Some(0),
        "tansu's gap has changed"
    );
}

/// Topic "timed": one partition, records stamped 1 s, 2 s, 3 s and 4 s after the epoch.
async fn write_timed(bootstrap: &str) {
    let config = || {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .clone()
    };
    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    admin
        .create_topics(
            &[NewTopic::new("timed", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    let p: BaseProducer = config().create().unwrap();
    for ts in [1_000i64, 2_000, 3_000, 4_000] {
        p.send(
            BaseRecord::<(), str>::to("timed")
                .payload("x")
                .partition(0)
                .timestamp(ts),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test]
async fn a_rewind_to_a_time_commits_the_first_offset_at_or_after_it() {
    let Some(broker) = tansu() else { return };
    write_timed(&broker.bootstrap).await;

    let t = target(&broker.bootstrap, &["timed"], "latest");
    let set = crate::observe::set_offsets(
        &t,
        &crate::rewind::RewindTo::Timestamp(2_500),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(set.offsets[0].offset, Some(2), "the record stamped 3 s");
    let obs = observe::kafka(std::sync::Arc::new(KafkaObserver::default()), t)
        .await
        .unwrap();
    assert_eq!(
        obs.partitions[0].committed,
        Some(2),
        "read back from the group"
    );
}
