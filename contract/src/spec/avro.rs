//! Schema'd value formats: Avro (a schema from a file or a ConfigMap, and the Confluent wire
//! format with a Schema Registry: magic byte 0, the 4-byte schema id, then the Avro datum) and
//! Protobuf (a message type of a `.proto` file or a descriptor set).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConfigMapKey;

/// How Avro values are read (a source with `format: avro`) or written (a Kafka sink).
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvroSpec {
    /// The schema (`.avsc` JSON). A source resolves every record to it (schema evolution: a
    /// field the writer lacks takes the field's default); without a registry it is also the
    /// schema records were written with. A sink writes its values with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaFile>,
    /// Values in the Confluent wire format: a source fetches each record's writer schema by
    /// its id (and caches it), and a record whose schema the registry does not have goes to
    /// the dead-letter topic; a sink registers its schema under `<topic>-value` and writes
    /// its id. Credentials, when the registry needs them: the key
    /// `schema.registry.basic.auth.user.info` (`user:password`) of the credentials Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// Keys in Avro too (otherwise text): a source reads each key with `key.schema` (with a
    /// registry, by the id in the key's framing, resolved to `key.schema` when it is given); a
    /// sink writes keys with `key.schema`, registered under `<topic>-key`. A record whose key
    /// does not decode is a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<AvroKeySpec>,
}

/// The schema of Avro keys, with the value's registry.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AvroKeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaFile>,
}

impl AvroSpec {
    /// The keys' settings as a spec of their own: their schema, the values' registry.
    pub fn keys(&self) -> Option<AvroSpec> {
        self.key.as_ref().map(|k| AvroSpec {
            schema: k.schema.clone(),
            registry: self.registry.clone(),
            key: None,
        })
    }
}

/// A schema's file: exactly one of `file` and `configMap`.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub file: Option<String>,
    /// A key of a ConfigMap the operator mounts into the workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,
}

impl SchemaFile {
    pub fn path(&self) -> Option<std::path::PathBuf> {
        match (&self.file, &self.config_map) {
            (Some(f), _) => Some(f.into()),
            (None, c) => c.as_ref().map(ConfigMapKey::path),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// The registry's base URL, `http://` or `https://`.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
}

/// How Protobuf values are read (a source with `format: protobuf`) or written (a Kafka sink):
/// messages of one type, described by a `.proto` file (compiled when the worker starts) or a
/// descriptor set (`protoc --descriptor_set_out`, `.desc` or `.binpb`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtobufSpec {
    pub schema: SchemaFile,
    /// The message type, with its package: `shop.v1.View`.
    #[schemars(length(min = 1, max = 512))]
    pub message: String,
    /// Messages in the Confluent wire format (magic byte 0, the schema id, the message
    /// indexes): a source checks by the writer's schema (fetched by id, cached) that a record
    /// is of `message` (else it is a dead letter) and reads it with its own schema; a sink
    /// registers its `.proto` file under `<topic>-value` (and `-key`) and frames each message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// Keys as Protobuf messages of this type of the same schema (otherwise text); a record
    /// whose key does not decode is a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub key_message: Option<String>,
}
