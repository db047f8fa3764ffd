//! The operator's view of real workers: two worker processes (ordinals 0 and 1 of 2, as the
//! StatefulSet runs them) drain a backlog from a broker in a third process, and the operator's
//! own Kafka observer and `/progress` reader see the lag fall to zero.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir_contract::spec::{parse_job, StartingOffsets};
use weir_operator::lag;
use weir_operator::observation::KafkaTarget;
use weir_operator::observe::{KafkaObserver, Observer};
use weir_operator::progress;
use weir_testkit::{free_port, Broker, Killed};

const PARTITIONS: i32 = 4;
const RECORDS: u64 = 4_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_falls_to_zero_as_real_workers_drain_a_backlog() {
    let bin = weir_testkit::tools::workspace_binary("weir-worker");
    let mock = Broker::mock_process(&bin, &[("in", PARTITIONS), ("out", 4)]).expect("mock-kafka");
    let bootstrap = mock.bootstrap();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for i in 0..RECORDS {
        let v = format!(r#"{{"n":{i}}}"#);
        producer
            .send(
                BaseRecord::<str, str>::to("in")
                    .payload(&v)
                    .partition((i % PARTITIONS as u64) as i32),
            )
            .expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");

    let yaml = format!(
        "batchInterval: 300ms\nsource: {{kafka: {{bootstrapServers: '{bootstrap}', topics: [in], startingOffsets: earliest, maxRatePerPartition: 1000, backpressure: {{enabled: false}}}}}}\npipeline:\n  - {{id: even, filter: 'value.n % 2 == 0'}}\nsink: {{kafka: {{topic: out}}}}\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("drain.yaml");
    std::fs::write(&file, &yaml).expect("job file");
    let job = parse_job(&yaml, "drain").expect("job");
    let target = KafkaTarget {
        source: job.spec.source.kafka.clone(),
        group: job.spec.group_id("e2e", "drain"),
        // A filter only: one stage.
        stages: Vec::new(),
    };

    let ports = [free_port(), free_port()];
    let _workers: Vec<Killed> = (0..2)
        .map(|ordinal| {
            Killed::new(
                Command::new(&bin)
                    .arg("run")
                    .arg(&file)
                    .env("WEIR_WORKER_ORDINAL", ordinal.to_string())
                    .env("WEIR_WORKERS", "2")
                    .env("WEIR_JOB_NAME", "drain")
                    .env("WEIR_NAMESPACE", "e2e")
                    .env("WEIR_HTTP_ADDR", format!("127.0.0.1:{}", ports[ordinal]))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start worker"),
            )
        })
        .collect();

    let observer = KafkaObserver::default();
    let mut lags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "lag did not reach zero: {lags:?}"
        );
        let t = target.clone();
        let o = observer.clone();
        let obs = tokio::task::spawn_blocking(move || o.kafka(&t))
            .await
            .expect("join")
            .expect("observe");
        let summary = lag::summarize(&obs, &StartingOffsets::Earliest, 20);
        lags.push(summary.lag.records);
        if summary.lag.records == 0 && obs.partitions.iter().all(|p| p.committed == Some(p.end)) {
            assert_eq!(
                obs.partitions.iter().map(|p| p.end).sum::<i64>(),
                RECORDS as i64
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Lag started at the backlog (or below, once batches had run) and fell to zero.
    assert!(lags.first().is_some_and(|l| *l > 0), "{lags:?}");
    assert!(
        lags.windows(2).all(|w| w[1] <= w[0]),
        "lag never grows while draining: {lags:?}"
    );

    // The operator's reader of the workers' /progress sees both workers' batches.
    let mut answers = Vec::new();
    for (ordinal, port) in ports.iter().enumerate() {
        answers.push((
            ordinal as u32,
            progress::fetch(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).await,
        ));
    }
    let summary = progress::fold(&answers);
    assert!(summary.unreachable.is_empty(), "{:?}", summary.unreachable);
    assert_eq!(summary.batch_lag, Some(0));
    assert!(summary.last_batch.is_some());
}
