//! Confluent's wire format for Protobuf: magic byte 0, the 4-byte schema id, the message
//! indexes (which message of the schema's `.proto` file the record is: a zigzag varint count,
//! then a zigzag varint index per nesting level; `[0]`, the file's first message, is one 0
//! byte), then the message. The writer's schema (fetched by id) is only read for the name of
//! that message: the bytes are decoded with the job's own type, whose evolution rules make
//! that safe, once the names agree.

use prost_reflect::prost_types::{DescriptorProto, FileDescriptorProto};

use crate::registry::SchemaError;

/// A schema from the registry, parsed without its imports: enough to name its messages.
pub struct WriterFile(FileDescriptorProto);

impl WriterFile {
    /// # Errors
    /// Text that is not a `.proto` file.
    pub fn parse(text: &str) -> Result<WriterFile, String> {
        protox_parse::parse("registry.proto", text)
            .map(WriterFile)
            .map_err(|e| format!("not a .proto file: {e}"))
    }

    /// The full name of the message at `path` (indexes from the top level down).
    pub fn message_name(&self, path: &[i32]) -> Option<String> {
        let mut name = self.0.package.clone().unwrap_or_default();
        let mut level: &[DescriptorProto] = &self.0.message_type;
        for &i in path {
            let m = level.get(usize::try_from(i).ok()?)?;
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(m.name());
            level = &m.nested_type;
        }
        Some(name)
    }

    /// The index path of the message `full_name`, if the file has it.
    pub fn index_path(&self, full_name: &str) -> Option<Vec<i32>> {
        let package = self.0.package.as_deref().unwrap_or("");
        let local = match package {
            "" => full_name,
            p => full_name.strip_prefix(p)?.strip_prefix('.')?,
        };
        let mut path = Vec::new();
        let mut level: &[DescriptorProto] = &self.0.message_type;
        for part in local.split('.') {
            let i = level.iter().position(|m| m.name() == part)?;
            path.push(i32::try_from(i).ok()?);
            level = &level[i].nested_type;
        }
        Some(path)
    }

    /// Whether the file imports others (which a registered schema would need as references).
    pub fn has_imports(&self) -> bool {
        !self.0.dependency.is_empty()
    }
}

/// Most nesting levels read from a record's message indexes: a hostile count must not
/// allocate.
const MAX_DEPTH: u64 = 64;

/// The message indexes at the start of `bytes`, and the message after them.
///
/// # Errors
/// Indexes that are cut short or absurd.
pub fn read_indexes(bytes: &[u8]) -> Result<(Vec<i32>, &[u8]), SchemaError> {
    let bad = || SchemaError::Record("the Confluent Protobuf message indexes are malformed".into());
    let (count, mut rest) = zigzag(bytes).ok_or_else(bad)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if count < 0 || count.unsigned_abs() > MAX_DEPTH {
        return Err(bad());
    }
    let mut path = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (i, after) = zigzag(rest).ok_or_else(bad)?;
        path.push(i32::try_from(i).map_err(|_| bad())?);
        rest = after;
    }
    Ok((path, rest))
}

/// `path` as message indexes.
pub fn write_indexes(path: &[i32], out: &mut Vec<u8>) {
    if path == [0] {
        out.push(0);
        return;
    }
    put_zigzag(path.len() as i64, out);
    for &i in path {
        put_zigzag(i64::from(i), out);
    }
}

fn zigzag(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let mut v: u64 = 0;
    for (n, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * n);
        if b & 0x80 == 0 {
            let signed = (v >> 1) as i64 ^ -((v & 1) as i64);
            return Some((signed, &bytes[n + 1..]));
        }
    }
    None
}

fn put_zigzag(v: i64, out: &mut Vec<u8>) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_and_name_messages_at_any_depth() {
        for path in [vec![0], vec![1], vec![0, 2], vec![3, 0, 1]] {
            let mut out = Vec::new();
            write_indexes(&path, &mut out);
            out.push(0xaa);
            let (back, rest) = read_indexes(&out).expect("indexes");
            assert_eq!((back, rest), (path.clone(), &[0xaa][..]));
        }
        // Confluent's short form of [0].
        assert_eq!(read_indexes(&[0, 7]).unwrap(), (vec![0], &[7u8][..]));
        assert!(read_indexes(&[0x80]).is_err(), "cut short");
        assert!(
            read_indexes(&[0xfe, 0x01]).is_err(),
            "a count of 127 levels"
        );
        let f = WriterFile::parse(
            "syntax = \"proto3\";\npackage shop.v1;\nmessage A { message B { int32 x = 1; } }\nmessage C { int32 y = 1; }\n",
        )
        .expect("proto");
        assert_eq!(f.message_name(&[0]).as_deref(), Some("shop.v1.A"));
        assert_eq!(f.message_name(&[0, 0]).as_deref(), Some("shop.v1.A.B"));
        assert_eq!(f.message_name(&[1]).as_deref(), Some("shop.v1.C"));
        assert_eq!(f.message_name(&[2]), None);
        assert_eq!(f.index_path("shop.v1.A.B"), Some(vec![0, 0]));
        assert_eq!(f.index_path("shop.v1.C"), Some(vec![1]));
        assert_eq!(f.index_path("other.C"), None);
        assert!(WriterFile::parse("message {").is_err());
    }
}
