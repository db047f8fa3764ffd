//! The changelog's byte format for state keys and values.
//!
//! JSON would lose what CEL keeps apart (uint from int, bytes from text, NaN), and a restored
//! state of another type would fail the step's expression later. So each value is a tag byte
//! and its data, little-endian, lengths as LEB128; a record starts with a format version so a
//! later worker can read what an earlier one wrote. Decoding checks every length against the
//! bytes left and bounds nesting: the changelog is outside data like any topic.

use std::sync::Arc;

use super::Val;

/// The first byte of every changelog key and value this worker writes.
pub const VERSION: u8 = 1;

/// Nesting deeper than any state a pipeline builds from records of bounded depth.
const MAX_DEPTH: usize = 128;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
const UINT: u8 = 4;
const FLOAT: u8 = 5;
const STR: u8 = 6;
const BYTES: u8 = 7;
const LIST: u8 = 8;
const MAP: u8 = 9;

/// Why changelog bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("written in changelog format {0}, which this worker cannot read (it reads format {VERSION})")]
    Version(u8),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown value tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a string is not UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("{0} bytes left over after the value")]
    Trailing(usize),
}

/// Appends the versioned encoding of `v` to `out`.
pub fn encode(v: &Val, out: &mut Vec<u8>) {
    out.push(VERSION);
    write(v, out);
}

/// Reads a value written by [`encode`].
///
/// # Errors
/// Another format version, or bytes that are not a whole value.
pub fn decode(bytes: &[u8]) -> Result<Val, DecodeError> {
    match bytes.first() {
        Some(&VERSION) => {}
        Some(&v) => return Err(DecodeError::Version(v)),
        None => return Err(DecodeError::Truncated(0)),
    }
    let mut r = Reader { bytes, at: 1 };
    let v = r.val(0)?;
    match bytes.len() - r.at {
        0 => Ok(v),
        n => Err(DecodeError::Trailing(n)),
    }
}

fn write_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write(v: &Val, out: &mut Vec<u8>) {
    match v {
        Val::Null => out.push(NULL),
        Val::Bool(false) => out.push(FALSE),
        Val::Bool(true) => out.push(TRUE),
        Val::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Val::UInt(u) => {
            out.push(UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Val::Float(f) => {
            out.push(FLOAT);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Val::Str(s) => {
            out.push(STR);
            write_len(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Val::Bytes(b) => {
            out.push(BYTES);
            write_len(b.len(), out);
            out.extend_from_slice(b);
        }
        Val::List(l) => {
            out.push(LIST);
            write_len(l.len(), out);
            for x in l.iter() {
                write(x, out);
            }
        }
        Val::Map(m) => {
            out.push(MAP);
            write_len(m.len(), out);
            for (k, x) in m.iter() {
                write_len(k.len(), out);
                out.extend_from_slice(k.as_bytes());
                write(x, out);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn eight(&mut self) -> Result<[u8; 8], DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }

    /// A length, which can never exceed the bytes left (each element takes at least one).
    fn len(&mut self) -> Result<usize, DecodeError> {
        let mut n: usize = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return if n <= self.bytes.len() - self.at {
                    Ok(n)
                } else {
                    Err(DecodeError::Truncated(self.bytes.len()))
                };
            }
        }
        Err(DecodeError::Truncated(self.at))
    }

    fn str(&mut self) -> Result<Arc<str>, DecodeError> {
        let n = self.len()?;
        let at = self.at;
        std::str::from_utf8(self.take(n)?)
            .map(Arc::from)
            .map_err(|_| DecodeError::Utf8(at))
    }

    fn val(&mut self, depth: usize) -> Result<Val, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.at;
        Ok(match self.byte()? {
            NULL => Val::Null,
            FALSE => Val::Bool(false),
            TRUE => Val::Bool(true),
            INT => Val::Int(i64::from_le_bytes(self.eight()?)),
            UINT => Val::UInt(u64::from_le_bytes(self.eight()?)),
            FLOAT => Val::Float(f64::from_bits(u64::from_le_bytes(self.eight()?))),
            STR => Val::Str(self.str()?),
            BYTES => {
                let n = self.len()?;
                Val::Bytes(Arc::from(self.take(n)?))
            }
            LIST => {
                let n = self.len()?;
                let mut l = Vec::with_capacity(n);
                for _ in 0..n {
                    l.push(self.val(depth + 1)?);
                }
                Val::List(Arc::new(l))
            }
            MAP => {
                let n = self.len()?;
                let mut m = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.str()?;
                    m.push((k, self.val(depth + 1)?));
                }
                Val::Map(Arc::new(m))
            }
            tag => return Err(DecodeError::Tag { tag, at }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Val) -> Val {
        let mut out = Vec::new();
        encode(v, &mut out);
        decode(&out).expect("decodes")
    }

    #[test]
    fn every_cel_type_comes_back_as_itself() {
        let v = Val::List(Arc::new(vec![
            Val::Null,
            Val::Bool(true),
            Val::Int(-7),
            Val::UInt(u64::MAX),
            Val::Float(3.0),
            Val::Str(Arc::from("wörd")),
            Val::Bytes(Arc::from(&[0xff, 0x00][..])),
            Val::Map(Arc::new(vec![(Arc::from("n"), Val::Int(1))])),
            Val::Str(Arc::from("x".repeat(300))),
        ]));
        let back = round_trip(&v);
        assert_eq!(back, v);
        // Equality of Val compares numbers across types; the types must survive too.
        let Val::List(items) = back else {
            panic!("a list")
        };
        let types: Vec<&str> = items.iter().map(Val::type_name).collect();
        assert_eq!(
            types,
            [
                "null_type",
                "bool",
                "int",
                "uint",
                "double",
                "string",
                "bytes",
                "map",
                "string"
            ]
        );
        assert!(matches!(round_trip(&Val::Float(f64::NAN)), Val::Float(f) if f.is_nan()));
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let mut good = Vec::new();
        encode(
            &Val::List(Arc::new(vec![Val::str("abc"), Val::Int(5)])),
            &mut good,
        );
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&[2, 0]), Err(DecodeError::Version(2)));
        assert_eq!(decode(&[1, 42]), Err(DecodeError::Tag { tag: 42, at: 1 }));
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::Trailing(1)));
        // A list claiming more elements than there are bytes fails before allocating them.
        assert!(decode(&[1, LIST, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let deep: Vec<u8> = std::iter::once(1)
            .chain(std::iter::repeat_n([LIST, 1], 1000).flatten())
            .chain([NULL])
            .collect();
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
        assert_eq!(decode(&[1, STR, 1, 0xff]), Err(DecodeError::Utf8(3)));
    }
}
