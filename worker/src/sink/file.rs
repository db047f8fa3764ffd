//! Files named by partition and first offset: a replayed batch starts at the same offset, so it
//! overwrites its own file instead of adding a duplicate.

use std::io::Write;
use std::path::PathBuf;

use super::{BatchOutput, Sink};
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

    /// The file one partition's batch goes to.
    pub fn file_name(topic: &str, partition: i32, from: i64) -> String {
        format!("{topic}-{partition}-{from:020}.jsonl")
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
            let name = Self::file_name(&p.range.topic, p.range.partition, p.range.from);
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
