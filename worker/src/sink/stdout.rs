//! Spark's `print()`: the first records of every batch.

use std::io::Write;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::{Error, Result};

pub struct StdoutSink<W: Write + Send> {
    limit: u32,
    out: W,
}

impl<W: Write + Send> StdoutSink<W> {
    pub fn new(limit: u32, out: W) -> Self {
        Self { limit, out }
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        let io = |e: std::io::Error| Error::Sink(format!("writing to standard output: {e}"));
        let mut s = String::new();
        s.push_str("-------------------------------------------\n");
        let time = chrono::DateTime::from_timestamp_millis(batch.batch_time_ms)
            .map_or_else(|| batch.batch_time_ms.to_string(), |t| t.to_rfc3339());
        s.push_str(&format!(
            "Batch: {time}\n-------------------------------------------\n"
        ));
        let mut shown = 0u32;
        for p in &batch.partitions {
            for o in p.outputs {
                if shown == self.limit {
                    break;
                }
                s.push_str(&format!("({}, {})\n", o.key, o.value));
                shown += 1;
            }
        }
        let total = batch.records();
        if total > shown as usize {
            s.push_str(&format!("... {} more\n", total - shown as usize));
        }
        s.push('\n');
        self.out.write_all(s.as_bytes()).map_err(io)?;
        self.out.flush().map_err(io)
    }
}
