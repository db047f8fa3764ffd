//! Protobuf values by reflection (`prost-reflect`): messages of the type a job names, from a
//! `.proto` file (compiled by `protox` when the worker starts) or a descriptor set. Protobuf's
//! own evolution rules apply: a field the writer did not know reads as its default, a field
//! the reader does not know is skipped.

use std::sync::Arc;

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};

use crate::credentials::Credentials;
use crate::expr::Val;
use crate::registry::{framed, Registry, SchemaError};
use crate::spec::ProtobufSpec;

mod confluent;

pub use confluent::WriterFile;

/// A source's or a sink's message type, loaded.
pub struct ProtobufCodec {
    message: MessageDescriptor,
    /// The `.proto` file's text, when the schema is one: what a sink registers.
    text: Option<Arc<str>>,
    /// Messages in Confluent's framing, with a registry.
    framing: Option<Framing>,
}

struct Framing {
    registry: Arc<Registry<WriterFile>>,
    /// A sink's framing of each message: magic byte, its schema's id, the message indexes.
    prefix: Option<Vec<u8>>,
}

/// A registry of Protobuf schemas.
pub fn registry(url: &str, credentials: &Credentials) -> Arc<Registry<WriterFile>> {
    Arc::new(Registry::new(
        url,
        credentials,
        "PROTOBUF",
        WriterFile::parse,
    ))
}

impl ProtobufCodec {
    /// Reads the schema file and finds the message type.
    ///
    /// # Errors
    /// A file that cannot be read or compiled, or that has no such message.
    pub fn load(spec: &ProtobufSpec) -> Result<ProtobufCodec, String> {
        Self::load_with_key(spec).map(|(value, _)| value)
    }

    /// The values' codec and, with `keyMessage`, the keys', from one reading of the schema.
    ///
    /// # Errors
    /// As [`ProtobufCodec::load`], for either type.
    pub fn load_with_key(
        spec: &ProtobufSpec,
    ) -> Result<(ProtobufCodec, Option<ProtobufCodec>), String> {
        let path = spec
            .schema
            .path()
            .ok_or("the Protobuf schema names no file")?;
        let shown = path.display().to_string();
        let is_proto = path.extension().is_some_and(|e| e == "proto");
        let text: Option<Arc<str>> = if is_proto {
            let t = std::fs::read_to_string(&path)
                .map_err(|e| format!("the Protobuf schema {shown}: {e}"))?;
            Some(Arc::from(t))
        } else {
            None
        };
        let pool = if is_proto {
            let dir = path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let file = path
                .file_name()
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            let mut c = protox::Compiler::new([dir])
                .map_err(|e| format!("the Protobuf schema {shown}: {e}"))?;
            c.include_imports(true)
                .open_file(&file)
                .map_err(|e| format!("the Protobuf schema {shown} does not compile: {e}"))?;
            c.descriptor_pool()
        } else {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("the Protobuf schema {shown}: {e}"))?;
            DescriptorPool::decode(bytes.as_slice())
                .map_err(|e| format!("the Protobuf schema {shown} is not a descriptor set: {e}"))?
        };
        let codec = |name: &str| {
            let message = pool.get_message_by_name(name).ok_or_else(|| {
                let known: Vec<String> = pool
                    .all_messages()
                    .map(|m| m.full_name().to_string())
                    .take(20)
                    .collect();
                format!(
                    "the Protobuf schema {shown} has no message {name}; it has {}",
                    known.join(", ")
                )
            })?;
            Ok::<_, String>(ProtobufCodec {
                message,
                text: text.clone(),
                framing: None,
            })
        };
        let key = spec.key_message.as_deref().map(codec).transpose()?;
        Ok((codec(&spec.message)?, key))
    }

    /// A source's codec of messages in Confluent's framing: each record's schema, fetched by
    /// its id, says which message it is, and it must be this codec's.
    pub fn framed_by(mut self, registry: Arc<Registry<WriterFile>>) -> ProtobufCodec {
        self.framing = Some(Framing {
            registry,
            prefix: None,
        });
        self
    }

    /// A sink's codec that registers its `.proto` file under `subject` and frames each
    /// message with the id and the message's indexes in the file.
    ///
    /// # Errors
    /// A schema that is not one `.proto` file without imports, or a registry that refuses
    /// it or does not answer.
    pub fn registered(
        mut self,
        registry: Arc<Registry<WriterFile>>,
        subject: &str,
    ) -> Result<ProtobufCodec, String> {
        let text = self.text.clone().ok_or(
            "a sink that registers its Protobuf schema needs it as a .proto file (not a descriptor set)",
        )?;
        let file = WriterFile::parse(&text)?;
        if file.has_imports() {
            return Err(format!(
                "the sink's .proto file imports others; registering {subject} would need them as schema references, which Weir does not register: put the messages in one file"
            ));
        }
        let name = self.message.full_name().to_string();
        let path = file
            .index_path(&name)
            .ok_or_else(|| format!("the sink's .proto file has no message {name}"))?;
        let id = registry.register(subject, &text)?;
        let mut prefix = crate::registry::frame(id, &[]);
        confluent::write_indexes(&path, &mut prefix);
        self.framing = Some(Framing {
            registry,
            prefix: Some(prefix),
        });
        Ok(self)
    }

    /// A record's value.
    ///
    /// # Errors
    /// [`SchemaError::Record`] for bytes that are not a message of the type (or not framed,
    /// or of another message type); [`SchemaError::Unavailable`] when the registry does not
    /// answer.
    pub fn decode(&self, bytes: &[u8]) -> Result<Val, SchemaError> {
        let full = self.message.full_name();
        let bytes = match &self.framing {
            None => bytes,
            Some(f) => {
                let (id, rest) = framed(bytes, "message indexes and the Protobuf message")?;
                let (path, message) = confluent::read_indexes(rest)?;
                let writer = f.registry.schema(id)?;
                match writer.message_name(&path) {
                    Some(name) if name == full => message,
                    Some(name) => {
                        return Err(SchemaError::Record(format!(
                            "the record is a {name} (schema {id}); the job reads {full}"
                        )))
                    }
                    None => {
                        return Err(SchemaError::Record(format!(
                            "schema {id} has no message at the record's indexes {path:?}"
                        )))
                    }
                }
            }
        };
        let m = DynamicMessage::decode(self.message.clone(), bytes)
            .map_err(|e| SchemaError::Record(format!("not a Protobuf {full} message: {e}")))?;
        Ok(message_val(&m))
    }

    /// A value as a message of the type: an object's fields by name (a field it lacks is the
    /// field's default; a key the message has no field for is refused).
    ///
    /// # Errors
    /// A value that does not fit the message, with the field and the reason.
    pub fn encode(&self, v: &Val) -> Result<Vec<u8>, String> {
        let m = to_message(&self.message, v, "")?;
        Ok(
            match self.framing.as_ref().and_then(|f| f.prefix.as_ref()) {
                Some(prefix) => {
                    let mut out = Vec::with_capacity(prefix.len() + m.encoded_len());
                    out.extend_from_slice(prefix);
                    m.encode_raw(&mut out);
                    out
                }
                None => m.encode_to_vec(),
            },
        )
    }
}

fn message_val(m: &DynamicMessage) -> Val {
    let fields = m
        .descriptor()
        .fields()
        .map(|f| {
            // An unset message field is null, not its default message: a message type that
            // holds itself would otherwise have no end (found by fuzzing).
            let unset_message = matches!(f.kind(), Kind::Message(_))
                && !f.is_list()
                && !f.is_map()
                && !m.has_field(&f);
            let v = if unset_message {
                Val::Null
            } else {
                value_val(&f.kind(), &m.get_field(&f))
            };
            (Arc::from(f.name()), v)
        })
        .collect();
    Val::Map(Arc::new(fields))
}

fn value_val(kind: &Kind, v: &Value) -> Val {
    match v {
        Value::Bool(b) => Val::Bool(*b),
        Value::I32(n) => Val::Int(i64::from(*n)),
        Value::I64(n) => Val::Int(*n),
        Value::U32(n) => Val::Int(i64::from(*n)),
        Value::U64(n) => Val::UInt(*n),
        Value::F32(f) => Val::Float(f64::from(*f)),
        Value::F64(f) => Val::Float(*f),
        Value::String(s) => Val::str(s),
        Value::Bytes(b) => Val::Bytes(Arc::from(b.as_ref())),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or(Val::Int(i64::from(*n)), |ev| Val::str(ev.name())),
            _ => Val::Int(i64::from(*n)),
        },
        Value::Message(m) => message_val(m),
        Value::List(items) => {
            Val::List(Arc::new(items.iter().map(|i| value_val(kind, i)).collect()))
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(m) if m.is_map_entry() => m.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let mut fields: Vec<(Arc<str>, Val)> = entries
                .iter()
                .map(|(k, v)| {
                    (
                        Arc::from(map_key_text(k).as_str()),
                        value_val(&value_kind, v),
                    )
                })
                .collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Val::Map(Arc::new(fields))
        }
    }
}

fn map_key_text(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn to_message(desc: &MessageDescriptor, v: &Val, at: &str) -> Result<DynamicMessage, String> {
    let Val::Map(fields) = v else {
        return Err(format!(
            "{} must be an object for message {}, not {}",
            if at.is_empty() { "the value" } else { at },
            desc.full_name(),
            v.type_name()
        ));
    };
    let mut m = DynamicMessage::new(desc.clone());
    for (name, value) in fields.iter() {
        let path = if at.is_empty() {
            name.to_string()
        } else {
            format!("{at}.{name}")
        };
        let f = desc
            .get_field_by_name(name)
            .ok_or_else(|| format!("{path}: message {} has no such field", desc.full_name()))?;
        if matches!(value, Val::Null) {
            continue;
        }
        m.set_field(&f, field_value(&f, value, &path)?);
    }
    Ok(m)
}

fn field_value(f: &FieldDescriptor, v: &Val, at: &str) -> Result<Value, String> {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return Err(format!("{at}: a map field without an entry type"));
        };
        let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let Val::Map(items) = v else {
            return Err(format!("{at} must be an object, not {}", v.type_name()));
        };
        let mut out = std::collections::HashMap::new();
        for (k, item) in items.iter() {
            let key = match scalar(&kf.kind(), &Val::str(k), at)? {
                Value::String(s) => MapKey::String(s),
                Value::Bool(b) => MapKey::Bool(b),
                Value::I32(n) => MapKey::I32(n),
                Value::I64(n) => MapKey::I64(n),
                Value::U32(n) => MapKey::U32(n),
                Value::U64(n) => MapKey::U64(n),
                _ => return Err(format!("{at}: a map key of this type is not supported")),
            };
            out.insert(key, scalar(&vf.kind(), item, &format!("{at}.{k}"))?);
        }
        return Ok(Value::Map(out));
    }
    if f.is_list() {
        let Val::List(items) = v else {
            return Err(format!("{at} must be a list, not {}", v.type_name()));
        };
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| scalar(&f.kind(), item, &format!("{at}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    scalar(&f.kind(), v, at)
}

fn scalar(kind: &Kind, v: &Val, at: &str) -> Result<Value, String> {
    let wrong = || format!("{at}: {} does not fit a {kind:?} field", v.type_name());
    let int = || match v {
        Val::Int(n) => Ok(*n),
        Val::UInt(n) => i64::try_from(*n).map_err(|_| wrong()),
        Val::Str(s) => s.parse().map_err(|_| wrong()),
        _ => Err(wrong()),
    };
    Ok(match kind {
        Kind::Double => Value::F64(number(v).ok_or_else(wrong)?),
        Kind::Float => Value::F32(number(v).ok_or_else(wrong)? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(int()?).map_err(|_| wrong())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(int()?).map_err(|_| wrong())?),
        Kind::Uint64 | Kind::Fixed64 => match v {
            Val::UInt(n) => Value::U64(*n),
            _ => Value::U64(u64::try_from(int()?).map_err(|_| wrong())?),
        },
        Kind::Bool => match v {
            Val::Bool(b) => Value::Bool(*b),
            _ => return Err(wrong()),
        },
        Kind::String => match v {
            Val::Str(s) => Value::String(s.to_string()),
            _ => return Err(wrong()),
        },
        Kind::Bytes => match v {
            Val::Bytes(b) => Value::Bytes(b.to_vec().into()),
            Val::Str(s) => Value::Bytes(s.as_bytes().to_vec().into()),
            _ => return Err(wrong()),
        },
        Kind::Enum(e) => match v {
            Val::Str(s) => Value::EnumNumber(
                e.get_value_by_name(s)
                    .ok_or_else(|| format!("{at}: enum {} has no value {s}", e.full_name()))?
                    .number(),
            ),
            _ => Value::EnumNumber(i32::try_from(int()?).map_err(|_| wrong())?),
        },
        Kind::Message(m) => Value::Message(to_message(m, v, at)?),
    })
}

fn number(v: &Val) -> Option<f64> {
    match v {
        Val::Float(f) => Some(*f),
        Val::Int(n) => Some(*n as f64),
        Val::UInt(n) => Some(*n as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "syntax = \"proto3\";\npackage shop.v1;\nmessage View {\n  string user = 1;\n  int64 ms = 2;\n  enum Kind { PAGE = 0; API = 1; }\n  Kind kind = 3;\n  repeated string tags = 4;\n  map<string, int32> attrs = 5;\n  Where at = 6;\n}\nmessage Where { string country = 1; }\n";
    /// V1 with a field added: what a newer producer writes, and what a newer job reads with.
    const V2: &str = "syntax = \"proto3\";\npackage shop.v1;\nmessage View {\n  string user = 1;\n  int64 ms = 2;\n  enum Kind { PAGE = 0; API = 1; }\n  Kind kind = 3;\n  repeated string tags = 4;\n  map<string, int32> attrs = 5;\n  Where at = 6;\n  string referrer = 7;\n}\nmessage Where { string country = 1; }\n";

    /// The spec of message type `message` of the file at `path`.
    fn spec(path: &std::path::Path, message: &str) -> ProtobufSpec {
        ProtobufSpec {
            schema: crate::spec::SchemaFile {
                file: Some(path.display().to_string()),
                config_map: None,
            },
            message: message.into(),
            key_message: None,
            registry: None,
        }
    }

    fn codec(dir: &std::path::Path, name: &str, text: &str) -> ProtobufCodec {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        ProtobufCodec::load(&spec(&path, "shop.v1.View")).unwrap()
    }

    fn json(s: &str) -> Val {
        Val::from_json(s.as_bytes(), 16).unwrap()
    }

    #[test]
    fn a_message_round_trips_and_evolves_by_protobufs_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2) = (
            codec(dir.path(), "v1.proto", V1),
            codec(dir.path(), "v2.proto", V2),
        );
        let value = json(
            r#"{"user": "u1", "ms": 250, "kind": "API", "tags": ["a", "b"], "attrs": {"x": 1, "w": 2}, "at": {"country": "fr"}}"#,
        );
        let bytes = v1.encode(&value).unwrap();
        let back = v1.decode(&bytes).unwrap();
        assert_eq!(
            back,
            json(
                r#"{"user": "u1", "ms": 250, "kind": "API", "tags": ["a", "b"], "attrs": {"w": 2, "x": 1}, "at": {"country": "fr"}}"#
            )
        );
        // Written before the field existed: the new reader sees its default.
        let newer = v2.decode(&bytes).unwrap();
        assert_eq!(newer.field("referrer"), Some(&Val::str("")));
        // Written with it: an older reader skips it.
        let with = v2
            .encode(&json(r#"{"user": "u2", "referrer": "ads"}"#))
            .unwrap();
        let older = v1.decode(&with).unwrap();
        assert_eq!(older.field("user"), Some(&Val::str("u2")));
        assert!(older.field("referrer").is_none());
        assert_eq!(
            older.field("kind"),
            Some(&Val::str("PAGE")),
            "defaults for unset fields"
        );
    }

    #[test]
    fn a_message_type_that_holds_itself_reads_an_unset_field_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree.proto");
        std::fs::write(
            &path,
            "syntax = \"proto3\";\nmessage Node { string name = 1; Node child = 2; }\n",
        )
        .unwrap();
        let c = ProtobufCodec::load(&spec(&path, "Node")).unwrap();
        let v = json(r#"{"name": "a", "child": {"name": "b"}}"#);
        let back = c.decode(&c.encode(&v).unwrap()).unwrap();
        assert_eq!(
            back,
            json(r#"{"name": "a", "child": {"name": "b", "child": null}}"#)
        );
    }

    #[test]
    fn bad_values_and_bad_bytes_are_refused_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let c = codec(dir.path(), "v1.proto", V1);
        let e = c.encode(&json(r#"{"user": 5}"#)).unwrap_err();
        assert!(e.contains("user: int does not fit a string field"), "{e}");
        let e = c.encode(&json(r#"{"nope": 1}"#)).unwrap_err();
        assert!(
            e.contains("nope: message shop.v1.View has no such field"),
            "{e}"
        );
        let e = c.encode(&json(r#"{"kind": "BATCH"}"#)).unwrap_err();
        assert!(e.contains("has no value BATCH"), "{e}");
        let e = c.decode(&[0x0a, 0xff, 0x01]).unwrap_err().to_string();
        assert!(e.contains("not a Protobuf shop.v1.View message"), "{e}");
        let path = dir.path().join("broken.proto");
        std::fs::write(&path, "message {").unwrap();
        let e = ProtobufCodec::load(&spec(&path, "X")).err().unwrap();
        assert!(e.contains("does not compile"), "{e}");
        let e = ProtobufCodec::load(&spec(&dir.path().join("v1.proto"), "shop.v1.Nope"))
            .err()
            .unwrap();
        assert!(
            e.contains("has no message shop.v1.Nope; it has shop.v1.View"),
            "{e}"
        );
    }
}
