//! Helpers for `bench/drain.sh`: write a backlog, and drain it with a raw librdkafka consumer
//! (assign, same fetch settings as the worker, counting records and nothing else) as the
//! baseline the worker is measured against.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

fn arg(args: &[String], name: &str) -> Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .with_context(|| format!("missing {name}"))
}

fn produce(bootstrap: &str, topic: &str, records: u64) -> Result<()> {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    for i in 0..records {
        let v = weir_testkit::kafka::drain_record(i);
        let k = (i % 1000).to_string();
        loop {
            match p.send(BaseRecord::to(topic).key(&k).payload(&v)) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120))?;
    let s = started.elapsed().as_secs_f64();
    println!(
        "produced {records} records of 100 bytes in {s:.2}s ({:.0} records/s)",
        records as f64 / s
    );
    Ok(())
}

fn raw(bootstrap: &str, topic: &str) -> Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "weir-bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed");
    // The worker's own fetch settings, so both read the backlog the same way; not its smaller
    // prefetch queue (PREFETCH_RECORDS), which bounds its memory: this is the limit.
    for (key, value) in weir_contract::client::CONSUMER_FETCH_DEFAULTS {
        config.set(*key, *value);
    }
    let c: BaseConsumer = config.create()?;
    let started = Instant::now();
    let md = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    if parts == 0 {
        bail!("topic {topic} has no partitions");
    }
    let mut tpl = TopicPartitionList::new();
    let mut total = 0i64;
    for p in 0..parts {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        total += high - low;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
    }
    c.assign(&tpl)?;
    let mut n = 0i64;
    while n < total {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => bail!("consume failed: {e}"),
            None => {}
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "raw_records={n} raw_seconds={s:.3} raw_rate={:.0}",
        n as f64 / s
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("produce") => produce(
            &arg(&args, "--bootstrap")?,
            &arg(&args, "--topic")?,
            arg(&args, "--records")?.parse()?,
        ),
        Some("raw") => raw(&arg(&args, "--bootstrap")?, &arg(&args, "--topic")?),
        _ => bail!("usage: weir-bench produce|raw --bootstrap HOST:PORT --topic T [--records N]"),
    }
}
