//! The values records and expressions carry: CEL's types, cheap to clone.
//!
//! JSON decodes straight into [`Val`] (no intermediate tree), strings and containers are shared
//! behind `Arc`, and objects keep their field order so output reads like input.

pub mod codec;

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// A CEL value.
#[derive(Clone, Debug, Default)]
pub enum Val {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
    List(Arc<Vec<Val>>),
    /// An object: string keys in their original order. Records' objects are small, so a scan
    /// beats hashing.
    Map(Arc<Vec<(Arc<str>, Val)>>),
}

impl Val {
    pub fn str(s: &str) -> Self {
        Val::Str(Arc::from(s))
    }

    /// CEL's type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null_type",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::UInt(_) => "uint",
            Val::Float(_) => "double",
            Val::Str(_) => "string",
            Val::Bytes(_) => "bytes",
            Val::List(_) => "list",
            Val::Map(_) => "map",
        }
    }

    pub fn field(&self, name: &str) -> Option<&Val> {
        match self {
            Val::Map(m) => m.iter().find(|(k, _)| same_name(k, name)).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Bytes for the wire: strings and bytes as they are, everything else as JSON.
    pub fn to_payload(&self) -> Vec<u8> {
        match self {
            Val::Str(s) => s.as_bytes().to_vec(),
            Val::Bytes(b) => b.to_vec(),
            Val::Null => Vec::new(),
            other => serde_json::to_vec(other).unwrap_or_default(),
        }
    }

    /// Same as [`Val::to_payload`], appending to a reused buffer.
    pub fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            Val::Str(s) => out.extend_from_slice(s.as_bytes()),
            Val::Bytes(b) => out.extend_from_slice(b),
            Val::Null => {}
            other => {
                let _ = serde_json::to_writer(&mut *out, other);
            }
        }
    }

    /// Decodes a JSON document; `max_depth` bounds nesting so hostile input cannot exhaust the
    /// stack.
    ///
    /// # Errors
    /// The JSON error, or a depth error.
    pub fn from_json(bytes: &[u8], max_depth: usize) -> Result<Val, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = DepthSeed { left: max_depth }.deserialize_val(&mut de)?;
        de.end()?;
        Ok(v)
    }
}

impl Val {
    /// Decodes only the top-level `fields` of a JSON object, checking the rest is well-formed
    /// without keeping it. A document that is not an object decodes whole.
    ///
    /// # Errors
    /// As [`Val::from_json`].
    pub fn from_json_fields(
        bytes: &[u8],
        max_depth: usize,
        fields: &std::collections::BTreeSet<Arc<str>>,
    ) -> Result<Val, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = de.deserialize_any(ValVisitor {
            left: max_depth,
            fields: Some(fields),
        })?;
        de.end()?;
        Ok(v)
    }

    /// Checks a JSON document is well-formed without keeping any of it.
    ///
    /// # Errors
    /// The JSON error (serde_json bounds the nesting it skips).
    pub fn check_json(bytes: &[u8]) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de::IgnoredAny::deserialize(&mut de)?;
        de.end()
    }
}

impl PartialEq for Val {
    /// CEL equality: numbers compare across int, uint and double.
    fn eq(&self, other: &Self) -> bool {
        use Val::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) => a == b,
            (Map(a), Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| other.field(k) == Some(v))
            }
            (a, b) => match (num(a), num(b)) {
                (Some(x), Some(y)) => x.eq_num(y),
                _ => false,
            },
        }
    }
}

impl Eq for Val {}

impl Hash for Val {
    /// Consistent with [`PartialEq`]: integral numbers hash alike whatever their type.
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Val::Null => 0u8.hash(h),
            Val::Bool(b) => b.hash(h),
            Val::Int(_) | Val::UInt(_) | Val::Float(_) => match num(self) {
                Some(Num::I(i)) => i.hash(h),
                Some(Num::U(u)) if i64::try_from(u).is_ok() => (u as i64).hash(h),
                Some(Num::U(u)) => u.hash(h),
                Some(Num::F(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => (f as i64).hash(h),
                Some(Num::F(f)) => f.to_bits().hash(h),
                None => {}
            },
            Val::Str(s) => s.hash(h),
            Val::Bytes(b) => b.hash(h),
            Val::List(l) => l.hash(h),
            Val::Map(m) => m.len().hash(h),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::U(u) => u as f64,
            Num::F(f) => f,
        }
    }

    fn eq_num(self, o: Num) -> bool {
        self.cmp_num(o) == Some(std::cmp::Ordering::Equal)
    }

    pub(crate) fn cmp_num(self, o: Num) -> Option<std::cmp::Ordering> {
        match (self, o) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            (Num::U(a), Num::U(b)) => Some(a.cmp(&b)),
            (Num::I(a), Num::U(b)) => Some(if a < 0 {
                std::cmp::Ordering::Less
            } else {
                (a as u64).cmp(&b)
            }),
            (Num::U(a), Num::I(b)) => Some(if b < 0 {
                std::cmp::Ordering::Greater
            } else {
                a.cmp(&(b as u64))
            }),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

pub fn num(v: &Val) -> Option<Num> {
    match v {
        Val::Int(i) => Some(Num::I(*i)),
        Val::UInt(u) => Some(Num::U(*u)),
        Val::Float(f) => Some(Num::F(*f)),
        _ => None,
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Str(s) => f.write_str(s),
            Val::Bytes(b) => write!(f, "{}", String::from_utf8_lossy(b)),
            other => match serde_json::to_string(other) {
                Ok(s) => f.write_str(&s),
                Err(_) => f.write_str("<unprintable>"),
            },
        }
    }
}

impl Serialize for Val {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Int(i) => s.serialize_i64(*i),
            Val::UInt(u) => s.serialize_u64(*u),
            Val::Float(x) if x.is_finite() => s.serialize_f64(*x),
            Val::Float(x) => s.collect_str(x),
            Val::Str(x) => s.serialize_str(x),
            Val::Bytes(b) => match std::str::from_utf8(b) {
                Ok(text) => s.serialize_str(text),
                Err(_) => {
                    let mut seq = s.serialize_seq(Some(b.len()))?;
                    for byte in b.iter() {
                        seq.serialize_element(byte)?;
                    }
                    seq.end()
                }
            },
            Val::List(l) => {
                let mut seq = s.serialize_seq(Some(l.len()))?;
                for v in l.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Val::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m.iter() {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Deserializes with a nesting budget.
struct DepthSeed {
    left: usize,
}

impl DepthSeed {
    fn deserialize_val<'de, D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        d.deserialize_any(ValVisitor {
            left: self.left,
            fields: None,
        })
    }
}

impl<'de> de::DeserializeSeed<'de> for DepthSeed {
    type Value = Val;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        self.deserialize_val(d)
    }
}

/// Field names compared the cheap way first: this runs for every key of every record
/// decoded and every field an expression reads, and most names that differ differ in length
/// or first byte. Short names are compared in place rather than through a `memcmp` call,
/// which profiling showed as the largest single cost of a stateless job's decoding.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || a.first() != b.first() {
        return false;
    }
    if a.len() <= 16 {
        a.iter().zip(b).all(|(x, y)| x == y)
    } else {
        a == b
    }
}

/// The pipeline's name for `key` when the pipeline reads that field: a scan of the few
/// names a pipeline reads beats the tree's ordered compares; a long list uses the tree.
#[inline]
fn kept<'f>(fields: &'f std::collections::BTreeSet<Arc<str>>, key: &str) -> Option<&'f Arc<str>> {
    if fields.len() <= 8 {
        fields.iter().find(|f| same_name(f, key))
    } else {
        fields.get(key)
    }
}

/// An object's key, read in place: the field's name when it is kept (`None` when the decode
/// skips it). Read as an owned string first (what `Cow<str>` does), every key of every record
/// cost an allocation, kept or not.
#[derive(Clone, Copy)]
struct KeySeed<'f> {
    fields: Option<&'f std::collections::BTreeSet<Arc<str>>>,
}

impl<'de> de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<Arc<str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<Arc<str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Self::Value, E> {
        Ok(match self.fields {
            None => Some(Arc::from(k)),
            // A kept field's name comes from the pipeline: keeping it allocates nothing.
            Some(fields) => kept(fields, k).cloned(),
        })
    }
}

struct ValVisitor<'f> {
    left: usize,
    /// Keep only these fields of an object (the top level of a projected decode).
    fields: Option<&'f std::collections::BTreeSet<Arc<str>>>,
}

impl ValVisitor<'_> {
    fn deeper<E: de::Error>(&self) -> Result<DepthSeed, E> {
        if self.left == 0 {
            return Err(E::custom("JSON nested deeper than the limit"));
        }
        Ok(DepthSeed {
            left: self.left - 1,
        })
    }
}

impl<'de> Visitor<'de> for ValVisitor<'_> {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Val, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
        // JSON has one number type; CEL sees integers as int, as Kubernetes' CEL does.
        Ok(i64::try_from(v).map_or(Val::UInt(v), Val::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
        Ok(Val::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val, E> {
        Ok(Val::str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        let seed = self.deeper()?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(DepthSeed { left: seed.left })? {
            out.push(v);
        }
        Ok(Val::List(Arc::new(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        let seed = self.deeper()?;
        let mut out: Vec<(Arc<str>, Val)> = Vec::with_capacity(self.fields.map_or(0, |f| f.len()));
        let key = KeySeed {
            fields: self.fields,
        };
        while let Some(k) = map.next_key_seed(key)? {
            let Some(name) = k else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            let v = map.next_value_seed(DepthSeed { left: seed.left })?;
            // JSON allows repeated keys; the last one wins, as in most decoders.
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = v,
                None => out.push((name, v)),
            }
        }
        Ok(Val::Map(Arc::new(out)))
    }
}

impl<'de> Deserialize<'de> for Val {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Val, D::Error> {
        DepthSeed { left: 128 }.deserialize_val(d)
    }
}

/// Converts to the interpreter's value type, for the expressions it evaluates.
pub(crate) fn to_cel(v: &Val) -> cel::Value {
    match v {
        Val::Null => cel::Value::Null,
        Val::Bool(b) => cel::Value::Bool(*b),
        Val::Int(i) => cel::Value::Int(*i),
        Val::UInt(u) => cel::Value::UInt(*u),
        Val::Float(f) => cel::Value::Float(*f),
        Val::Str(s) => cel::Value::String(Arc::new(s.to_string())),
        Val::Bytes(b) => cel::Value::Bytes(Arc::new(b.to_vec())),
        Val::List(l) => cel::Value::List(Arc::new(l.iter().map(to_cel).collect())),
        Val::Map(m) => {
            let map: HashMap<cel::objects::Key, cel::Value> = m
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.to_string()), to_cel(v)))
                .collect();
            cel::Value::from(map)
        }
    }
}

/// Converts the interpreter's result back.
///
/// # Errors
/// For results a record cannot carry (functions, opaque values, types).
pub(crate) fn from_cel(v: &cel::Value) -> Result<Val, String> {
    Ok(match v {
        cel::Value::Null => Val::Null,
        cel::Value::Bool(b) => Val::Bool(*b),
        cel::Value::Int(i) => Val::Int(*i),
        cel::Value::UInt(u) => Val::UInt(*u),
        cel::Value::Float(f) => Val::Float(*f),
        cel::Value::String(s) => Val::str(s),
        cel::Value::Bytes(b) => Val::Bytes(Arc::from(b.as_slice())),
        cel::Value::List(l) => {
            Val::List(Arc::new(l.iter().map(from_cel).collect::<Result<_, _>>()?))
        }
        cel::Value::Map(m) => {
            let mut out: Vec<(Arc<str>, Val)> = Vec::with_capacity(m.map.len());
            for (k, v) in m.map.iter() {
                let key: Arc<str> = match k {
                    cel::objects::Key::String(s) => Arc::from(s.as_str()),
                    cel::objects::Key::Int(i) => Arc::from(i.to_string()),
                    cel::objects::Key::Uint(u) => Arc::from(u.to_string()),
                    cel::objects::Key::Bool(b) => Arc::from(b.to_string()),
                };
                out.push((key, from_cel(v)?));
            }
            // The interpreter's maps are unordered; sort so output is deterministic.
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Val::Map(Arc::new(out))
        }
        // A record holds times as RFC 3339 text, as JSON does; `source.eventTime` reads it back.
        cel::Value::Timestamp(t) => {
            Val::str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        // As CEL's string(duration) writes it: seconds, with a fraction when there is one.
        cel::Value::Duration(d) => {
            let ms = d.num_milliseconds();
            if ms % 1000 == 0 {
                Val::str(&format!("{}s", ms / 1000))
            } else {
                Val::str(&format!("{:.3}s", ms as f64 / 1000.0))
            }
        }
        other => {
            return Err(format!(
                "a result of type {:?} cannot be stored in a record",
                other.type_of()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_whatever_their_length_or_first_byte() {
        for (a, b, same) in [
            ("page", "page", true),
            ("page", "pagf", false),
            ("page", "user", false),
            ("page", "pag", false),
            ("", "", true),
            ("a_rather_long_field_name", "a_rather_long_field_name", true),
            (
                "a_rather_long_field_name",
                "a_rather_long_field_namf",
                false,
            ),
            ("\u{e9}t\u{e9}", "\u{e9}t\u{e9}", true),
        ] {
            assert_eq!(same_name(a, b), same, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn a_projected_decode_keeps_the_same_fields_through_the_scan_and_the_tree() {
        let json = br#"{"user":"u1","page":"/a","n":3,"pad":"xx","f9":9}"#;
        let few: std::collections::BTreeSet<Arc<str>> =
            ["page", "n"].into_iter().map(Arc::from).collect();
        let many: std::collections::BTreeSet<Arc<str>> =
            ["page", "n", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"]
                .into_iter()
                .map(Arc::from)
                .collect();
        assert!(many.len() > 8, "the tree's path");
        for fields in [&few, &many] {
            let v = Val::from_json_fields(json, 32, fields).unwrap();
            assert_eq!(v.field("page"), Some(&Val::str("/a")));
            assert_eq!(v.field("n"), Some(&Val::Int(3)));
            assert_eq!(v.field("user"), None, "not read by the pipeline");
            assert_eq!(v.field("f9"), None);
        }
    }

    #[test]
    fn json_round_trips_with_order_and_numbers() {
        let v = Val::from_json(
            br#"{"b":1,"a":[true,null,2.5,"x"],"c":{"d":18446744073709551615}}"#,
            32,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"b":1,"a":[true,null,2.5,"x"],"c":{"d":18446744073709551615}}"#
        );
        assert_eq!(v.field("b"), Some(&Val::Int(1)));
    }

    #[test]
    fn projected_decode_keeps_only_the_named_fields_and_still_rejects_bad_json() {
        let fields = ["page", "n"].iter().map(|s| Arc::from(*s)).collect();
        let v = Val::from_json_fields(
            br#"{"user":{"deep":[1,2]},"page":"/a","n":3,"x":"y"}"#,
            32,
            &fields,
        )
        .unwrap();
        assert_eq!(v.to_string(), r#"{"page":"/a","n":3}"#);
        // A key written with escapes is the same name, kept or skipped alike.
        let escaped = Val::from_json_fields(br#"{"pa\u0067e":"/b","\u0078":1}"#, 32, &fields);
        assert_eq!(escaped.unwrap().to_string(), r#"{"page":"/b"}"#);
        let whole = Val::from_json(br#"{"pa\u0067e":"/b","n\"":1}"#, 32).unwrap();
        assert_eq!(whole.to_string(), r#"{"page":"/b","n\"":1}"#);
        assert!(Val::from_json_fields(br#"{"page":"/a","x":[1,}"#, 32, &fields).is_err());
        assert!(Val::from_json_fields(br#"{"page":"/a"} x"#, 32, &fields).is_err());
        assert_eq!(
            Val::from_json_fields(b"[1]", 32, &fields)
                .unwrap()
                .to_string(),
            "[1]"
        );
        assert!(Val::check_json(br#"{"a":[1,2,{"b":null}]}"#).is_ok());
        assert!(Val::check_json(br#"{"a":"#).is_err());
        // Skipped JSON is walked without recursion, so depth is only limited where it is kept.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(Val::check_json(deep.as_bytes()).is_ok());
        let nested = format!(r#"{{"page":"/a","skip":{deep}}}"#);
        assert!(Val::from_json_fields(nested.as_bytes(), 32, &fields).is_ok());
    }

    #[test]
    fn depth_limit_is_an_error_not_a_crash() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let e = Val::from_json(deep.as_bytes(), 64).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        assert!(Val::from_json(b"[[[1]]]", 3).is_ok());
    }

    #[test]
    fn numbers_compare_and_hash_across_types() {
        use std::collections::hash_map::DefaultHasher;
        let h = |v: &Val| {
            let mut s = DefaultHasher::new();
            v.hash(&mut s);
            s.finish()
        };
        assert_eq!(Val::Int(3), Val::Float(3.0));
        assert_eq!(h(&Val::Int(3)), h(&Val::Float(3.0)));
        assert_eq!(h(&Val::Int(3)), h(&Val::UInt(3)));
        assert_ne!(Val::Int(-1), Val::UInt(u64::MAX));
    }
}
