//! Spark's `print()`: the first records of every batch.

use std::io::Write;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::{Error, Result};

pub struct StdoutSink<W: Write + Send> {
    limit: u32,
    out: W,
    /// The batch whose parts are being shown: its header is out, and the count goes on.
    open: Option<Shown>,
}

/// What was shown of a batch so far.
struct Shown {
    batch_time_ms: i64,
    shown: u32,
    more: usize,
}

impl<W: Write + Send> StdoutSink<W> {
    pub fn new(limit: u32, out: W) -> Self {
        Self {
            limit,
            out,
            open: None,
        }
    }

    /// Shows `batch` (or its next part): the header once per batch, its first `limit`
    /// records over all its parts, and at its `end` how many more there were.
    fn show(&mut self, batch: &BatchOutput<'_>, end: bool) -> Result<()> {
        let io = |e: std::io::Error| Error::Sink(format!("writing to standard output: {e}"));
        let mut s = String::new();
        let mut open = match self.open.take() {
            Some(o) if o.batch_time_ms == batch.batch_time_ms => o,
            _ => {
                s.push_str("-------------------------------------------\n");
                let time = chrono::DateTime::from_timestamp_millis(batch.batch_time_ms)
                    .map_or_else(|| batch.batch_time_ms.to_string(), |t| t.to_rfc3339());
                s.push_str(&format!(
                    "Batch: {time}\n-------------------------------------------\n"
                ));
                Shown {
                    batch_time_ms: batch.batch_time_ms,
                    shown: 0,
                    more: 0,
                }
            }
        };
        for p in &batch.partitions {
            for o in p.outputs {
                if open.shown == self.limit {
                    open.more += 1;
                    continue;
                }
                s.push_str(&format!("({}, {})\n", o.key, o.value));
                open.shown += 1;
            }
        }
        if end {
            if open.more > 0 {
                s.push_str(&format!("... {} more\n", open.more));
            }
            s.push('\n');
        } else {
            self.open = Some(open);
        }
        self.out.write_all(s.as_bytes()).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        self.show(batch, true)
    }

    // A part shows its records under the batch's one header; the batch's end says how many
    // were not shown.
    fn writes_parts(&self) -> bool {
        true
    }

    fn write_part(&mut self, part: &BatchOutput<'_>) -> Result<()> {
        self.show(part, false)
    }

    // The replay prints the batch again, under its own header.
    fn abandon(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::PartitionOutput;
    use crate::expr::Val;
    use crate::pipeline::Output;
    use crate::plan::OffsetRange;

    fn outputs(from: i64, n: i64) -> Vec<Output> {
        (from..from + n)
            .map(|i| Output {
                key: Val::str("k"),
                value: Val::Int(i),
                source_offset: Some(i),
                event: None,
            })
            .collect()
    }

    fn write(sink: &mut StdoutSink<Vec<u8>>, time: i64, outs: &[Output], end: bool) {
        let range = OffsetRange {
            topic: Arc::from("t"),
            partition: 0,
            from: 0,
            until: 10,
        };
        let batch = BatchOutput {
            batch_time_ms: time,
            dead: &[],
            partitions: vec![PartitionOutput {
                range: &range,
                outputs: outs,
                changes: &[],
                marker: None,
            }],
        };
        if end {
            sink.write(&batch).expect("write");
        } else {
            sink.write_part(&batch).expect("write part");
        }
    }

    #[test]
    fn a_batch_in_parts_prints_one_header_its_first_records_and_how_many_more_once() {
        let mut sink = StdoutSink::new(3, Vec::new());
        write(&mut sink, 1_000, &outputs(0, 2), false);
        write(&mut sink, 1_000, &outputs(2, 2), false);
        write(&mut sink, 1_000, &outputs(4, 1), true);
        write(&mut sink, 2_000, &outputs(5, 1), true);
        let text = String::from_utf8(sink.out).expect("utf-8");
        assert_eq!(text.matches("Batch: ").count(), 2, "{text}");
        assert!(
            text.contains("(k, 0)\n(k, 1)\n(k, 2)\n... 2 more\n\n"),
            "{text}"
        );
        assert!(!text.contains("(k, 3)"), "{text}");
        assert!(text.ends_with("(k, 5)\n\n"), "{text}");
    }
}
