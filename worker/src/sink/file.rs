//! Files named by partition and first offset: a replayed batch starts at the same offset, so it
//! overwrites its own file instead of adding a duplicate. A batch written in parts appends each
//! part to its partition's temporary file, renamed into place when the batch ends, so a batch
//! is still one file and a reader never sees part of one.

use std::io::Write;
use std::path::PathBuf;

use super::Sink;
use crate::batch::BatchOutput;
use crate::error::{Error, Result};

pub struct FileSink {
    dir: PathBuf,
    buf: Vec<u8>,
    /// The files of the batch being written, until it ends.
    open: Vec<Open>,
}

/// One partition's file of the batch being written: its lines so far, in a temporary file.
struct Open {
    name: String,
    tmp: PathBuf,
    file: std::fs::File,
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
            open: Vec::new(),
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

    /// Appends the outputs of `batch` (or of its next part) to their partitions' temporary
    /// files, created empty by a batch's first part; at the batch's `end`, syncs each file
    /// and renames it into place.
    fn append(&mut self, batch: &BatchOutput<'_>, end: bool) -> Result<()> {
        for p in &batch.partitions {
            if p.outputs.is_empty() {
                continue;
            }
            let name = Self::file_name(
                &p.range.topic,
                p.range.partition,
                p.range.from,
                p.range.until,
                batch.batch_time_ms,
            );
            self.buf.clear();
            for o in p.outputs {
                let line = serde_json::json!({"key": o.key, "value": o.value, "batchTime": batch.batch_time_ms});
                serde_json::to_writer(&mut self.buf, &line)
                    .map_err(|e| Error::Sink(e.to_string()))?;
                self.buf.push(b'\n');
            }
            let at = match self.open.iter().position(|o| o.name == name) {
                Some(at) => at,
                None => {
                    let tmp = self.dir.join(format!(".{name}.tmp"));
                    let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                    self.open.push(Open { name, tmp, file });
                    self.open.len() - 1
                }
            };
            let o = &mut self.open[at];
            o.file.write_all(&self.buf).map_err(|e| io(&o.tmp, e))?;
        }
        if end {
            for o in std::mem::take(&mut self.open) {
                let path = self.dir.join(&o.name);
                o.file.sync_all().map_err(|e| io(&path, e))?;
                std::fs::rename(&o.tmp, &path).map_err(|e| io(&path, e))?;
            }
        }
        Ok(())
    }
}

fn io(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Sink(format!("writing {}: {e}", path.display()))
}

impl Sink for FileSink {
    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        self.append(batch, true)
    }

    // A part goes to the batch's temporary files, which only its end renames into place.
    fn writes_parts(&self) -> bool {
        true
    }

    fn write_part(&mut self, part: &BatchOutput<'_>) -> Result<()> {
        self.append(part, false)
    }

    // The replay's first part creates its files afresh; the abandoned ones are removed (a
    // temporary file left by a crash is overwritten the same way).
    fn abandon(&mut self) {
        for o in std::mem::take(&mut self.open) {
            drop(o.file);
            let _ = std::fs::remove_file(&o.tmp);
        }
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
            event: None,
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
                marker: None,
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
                marker: None,
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

    fn part<'a>(range: &'a OffsetRange, outputs: &'a [Output]) -> BatchOutput<'a> {
        BatchOutput {
            batch_time_ms: 1_000,
            dead: &[],
            partitions: vec![PartitionOutput {
                range,
                outputs,
                changes: &[],
                marker: None,
            }],
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn values(path: &std::path::Path) -> Vec<i64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    fn range(until: i64) -> OffsetRange {
        OffsetRange {
            topic: Arc::from("in"),
            partition: 2,
            from: 40,
            until,
        }
    }

    #[test]
    fn a_batch_in_parts_is_one_file_renamed_into_place_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf()).unwrap();
        sink.write_part(&part(&range(42), &[out(40), out(41)]))
            .unwrap();
        sink.write_part(&part(&range(44), &[out(42), out(43)]))
            .unwrap();
        // Until the batch ends, no reader sees its file.
        assert_eq!(names(dir.path()), [".in-2-00000000000000000040.jsonl.tmp"]);
        sink.write(&part(&range(45), &[out(44)])).unwrap();
        assert_eq!(names(dir.path()), ["in-2-00000000000000000040.jsonl"]);
        assert_eq!(
            values(&dir.path().join("in-2-00000000000000000040.jsonl")),
            [40, 41, 42, 43, 44]
        );
    }

    #[test]
    fn an_abandoned_batch_leaves_nothing_and_its_replay_writes_its_file_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().to_path_buf()).unwrap();
        sink.write_part(&part(&range(42), &[out(40), out(41)]))
            .unwrap();
        sink.abandon();
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        // The replay reads from the same offset, in other parts.
        sink.write_part(&part(&range(41), &[out(40)])).unwrap();
        sink.write(&part(&range(43), &[out(41), out(42)])).unwrap();
        assert_eq!(
            values(&dir.path().join("in-2-00000000000000000040.jsonl")),
            [40, 41, 42],
            "each record once"
        );
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
                    marker: None,
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
