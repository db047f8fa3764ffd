//! Local snapshots of keyed state, on the worker's volume: only a cache that shortens the
//! changelog replay at start. A snapshot holds, for one changelog partition, the changelog
//! offset it reflects and the state and last marker of each input partition with that number;
//! a start loads it and reads the changelog from that offset on. A missing, unreadable or
//! stale snapshot (an offset outside the changelog, as after the topic was recreated) is
//! ignored with a warning and the whole changelog is read: nothing depends on the cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Marker;
use crate::expr::Val;
use crate::pipeline::StateChange;
use crate::value::codec;

/// One input partition's part of a snapshot.
pub struct InputState {
    pub topic: Arc<str>,
    pub marker: Option<Marker>,
    pub changes: Vec<StateChange>,
}

/// A snapshot of one changelog partition.
pub struct Snapshot {
    /// The changelog offset after the last record the state reflects.
    pub offset: i64,
    pub inputs: Vec<InputState>,
}

/// Where the snapshot of a changelog partition lives under `dir`.
pub fn path(dir: &Path, changelog: &str, partition: i32) -> PathBuf {
    dir.join(changelog).join(format!("{partition}.snapshot"))
}

/// Writes a snapshot whole or not at all (a temporary file renamed over the old one).
///
/// # Errors
/// The file system's.
pub fn write(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let inputs = snap
        .inputs
        .iter()
        .map(|i| {
            Val::Map(Arc::new(vec![
                (Arc::from("topic"), Val::Str(i.topic.clone())),
                (
                    Arc::from("marker"),
                    i.marker.as_ref().map_or(Val::Null, Marker::to_val),
                ),
                (
                    Arc::from("changes"),
                    Val::List(Arc::new(
                        i.changes
                            .iter()
                            .map(|c| {
                                Val::List(Arc::new(vec![
                                    Val::Str(c.step.clone()),
                                    c.key.clone(),
                                    c.value.clone().unwrap_or(Val::Null),
                                ]))
                            })
                            .collect(),
                    )),
                ),
            ]))
        })
        .collect();
    let v = Val::Map(Arc::new(vec![
        (Arc::from("offset"), Val::Int(snap.offset)),
        (Arc::from("inputs"), Val::List(Arc::new(inputs))),
    ]));
    let mut bytes = Vec::new();
    codec::encode(&v, &mut bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a snapshot; `Ok(None)` when there is none.
///
/// # Errors
/// A file that cannot be read or is not a snapshot, with the reason.
pub fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let v = codec::decode(&bytes).map_err(|e| e.to_string())?;
    let offset = match v.field("offset") {
        Some(Val::Int(o)) => *o,
        _ => return Err("no offset".into()),
    };
    let Some(Val::List(inputs)) = v.field("inputs") else {
        return Err("no inputs".into());
    };
    let inputs = inputs
        .iter()
        .map(|i| {
            let Some(Val::Str(topic)) = i.field("topic") else {
                return Err("an input has no topic".to_string());
            };
            let marker = match i.field("marker") {
                Some(Val::Null) | None => None,
                Some(m) => Some(Marker::from_val(m)?),
            };
            let Some(Val::List(changes)) = i.field("changes") else {
                return Err("an input has no changes".to_string());
            };
            let changes = changes
                .iter()
                .map(|c| match c {
                    Val::List(parts) => match parts.as_slice() {
                        [Val::Str(step), key, value] => Ok(StateChange {
                            step: step.clone(),
                            key: key.clone(),
                            value: Some(value.clone()),
                        }),
                        _ => Err("a change is not [step, key, value]".to_string()),
                    },
                    _ => Err("a change is not a list".to_string()),
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(InputState {
                topic: topic.clone(),
                marker,
                changes,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Snapshot { offset, inputs }))
}
