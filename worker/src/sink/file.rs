//! Files named by partition and first offset: a replayed batch starts at the same offset, so it
//! overwrites its own file instead of adding a duplicate.

use std::io::Write;
use std::path::PathBuf;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::{Error, Result};

pub struct FileSink {
    dir: PathBuf,
    buf: Vec<u8>,
}

impl FileSink {
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Fatal(format!(
                "cannot create sink directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Self {
            dir,
            buf: Vec::new(),
        })
    }

    /// The file one partition's batch goes to. A batch with records is named by its first
    /// offset; a batch that read nothing but still has output (a window sliding, a state
    /// timing out) is named by its batch time too, or every idle batch would overwrite the
    /// last one's file.
    pub fn file_name(
        topic: &str,
        partition: i32,
        from: i64,
        until: i64,
        batch_time: i64,
    ) -> String {
        if until > from {
            format!("{topic}-{partition}-{from:020}.jsonl")
        } else {
            format!("{topic}-{partition}-{from:020}-t{batch_time}.jsonl")
        }
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        for p in &batch.partitions {
            if p.outputs.is_empty() {
                continue;
            }
            self.buf.clear();
            for o in p.outputs {
                let line = serde_json::json!({"key": o.key, "value": o.value, "batchTime": batch.batch_time_ms});
                serde_json::to_writer(&mut self.buf, &line)
                    .map_err(|e| Error::Sink(e.to_string()))?;
                self.buf.push(b'\n');
            }
            let name = Self::file_name(
                &p.range.topic,
                p.range.partition,
                p.range.from,
                p.range.until,
                batch.batch_time_ms,
            );
            let path = self.dir.join(&name);
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let io = |e: std::io::Error| Error::Sink(format!("writing {}: {e}", path.display()));
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&self.buf).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(())
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

    fn out(n: i64) -> Output {
        Output {
            key: Val::str("k"),
            value: Val::Int(n),
            source_offset: Some(n),
        }
    }

    #[test]
    fn a_replayed_batch_overwrites_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf()).unwrap();
        let range = OffsetRange {
            topic: Arc::from("in"),
            partition: 2,
            from: 40,
            until: 42,
        };
        let first = [out(40)];
        sink.write(&BatchOutput {
            batch_time_ms: 1_000,
            dead: &[],
            partitions: vec![PartitionOutput {
                range: &range,
                outputs: &first,
                changes: &[],
            }],
        })
        .unwrap();
        // The replay after a crash starts at the same offset and may read further.
        let replay = [out(40), out(41)];
        let longer = OffsetRange {
            until: 43,
            ..range.clone()
        };
        sink.write(&BatchOutput {
            batch_time_ms: 9_000,
            dead: &[],
            partitions: vec![PartitionOutput {
                range: &longer,
                outputs: &replay,
                changes: &[],
            }],
        })
        .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["in-2-00000000000000000040.jsonl"]);
        let text = std::fs::read_to_string(dir.path().join(&files[0])).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(r#""value":41"#));
    }

    #[test]
    fn output_of_batches_that_read_nothing_is_kept_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf()).unwrap();
        // A window slides on while the partition is idle: every batch has output at offset 40.
        let idle = OffsetRange {
            topic: Arc::from("in"),
            partition: 0,
            from: 40,
            until: 40,
        };
        for t in [1_000, 2_000] {
            sink.write(&BatchOutput {
                batch_time_ms: t,
                dead: &[],
                partitions: vec![PartitionOutput {
                    range: &idle,
                    outputs: &[out(t)],
                    changes: &[],
                }],
            })
            .unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "in-0-00000000000000000040-t1000.jsonl",
                "in-0-00000000000000000040-t2000.jsonl"
            ]
        );
    }
}
