//! A Confluent Schema Registry client and its wire format, shared by the schema'd formats:
//! a framed record is magic byte 0, the 4-byte id of the schema it was written with, then
//! the format's bytes. Writer schemas are fetched by id and cached for the worker's life (an
//! id's schema never changes); a sink registers its schema under its subject.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::credentials::Credentials;

/// The Confluent wire format's first byte.
pub const MAGIC: u8 = 0;
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest registry answer read: a schema is small.
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// Why a framed record could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// This record is not readable (a dead letter).
    #[error("{0}")]
    Record(String),
    /// The registry did not answer: the batch is tried again, nothing is dead-lettered.
    #[error("the schema registry did not answer: {0}")]
    Unavailable(String),
}

/// A registry's schemas of one type (`AVRO`, `PROTOBUF`), parsed as the format needs them.
pub struct Registry<T> {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
    kind: &'static str,
    parse: fn(&str) -> Result<T, String>,
    schemas: Mutex<HashMap<u32, Arc<T>>>,
}

impl<T> Registry<T> {
    /// A client of the registry at `url` for schemas of `kind`, each parsed by `parse`.
    pub fn new(
        url: &str,
        credentials: &Credentials,
        kind: &'static str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Registry<T> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REGISTRY_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Registry {
            base: url.trim().trim_end_matches('/').to_string(),
            auth: credentials.registry_user_info().map(|u| {
                use base64::Engine;
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(u)
                )
            }),
            agent,
            kind,
            parse,
            schemas: Mutex::new(HashMap::new()),
        }
    }

    /// The writer schema `id`, from the cache or the registry.
    ///
    /// # Errors
    /// [`SchemaError::Record`] when the registry has no such schema or it is not of this
    /// kind; [`SchemaError::Unavailable`] when the registry does not answer.
    pub fn schema(&self, id: u32) -> Result<Arc<T>, SchemaError> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(s.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .call()
            .map_err(|e| SchemaError::Unavailable(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = read_body(resp.body_mut().as_reader())
            .map_err(|e| SchemaError::Unavailable(format!("GET {url}: {e}")))?;
        match status {
            200 => {}
            404 => {
                return Err(SchemaError::Record(format!(
                    "the schema registry has no schema {id} (the record names it)"
                )))
            }
            s if s >= 500 || s == 429 => {
                return Err(SchemaError::Unavailable(format!("GET {url}: status {s}")))
            }
            s => {
                return Err(SchemaError::Record(format!(
                    "the schema registry refused schema {id}: status {s}: {}",
                    body.chars().take(200).collect::<String>()
                )))
            }
        }
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            SchemaError::Record(format!(
                "the registry's answer for schema {id} is not JSON: {e}"
            ))
        })?;
        // The registry leaves the type out for Avro, its first.
        let kind = answer["schemaType"].as_str().unwrap_or("AVRO");
        if kind != self.kind {
            return Err(SchemaError::Record(format!(
                "schema {id} is {kind}, not {}",
                self.kind
            )));
        }
        let text = answer["schema"].as_str().ok_or_else(|| {
            SchemaError::Record(format!(
                "the registry's answer for schema {id} has no schema"
            ))
        })?;
        let schema = Arc::new(
            (self.parse)(text)
                .map_err(|e| SchemaError::Record(format!("schema {id} from the registry: {e}")))?,
        );
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers the schema `text` under `subject` (the registry answers with the existing
    /// id when it already has it).
    ///
    /// # Errors
    /// A registry that refuses the schema or does not answer.
    pub fn register(&self, subject: &str, text: &str) -> Result<u32, String> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = match self.kind {
            "AVRO" => serde_json::json!({"schema": text}),
            kind => serde_json::json!({"schemaType": kind, "schema": text}),
        }
        .to_string();
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req
            .send(body.as_str())
            .map_err(|e| format!("registering the sink's schema: POST {url}: {e}"))?;
        let status = resp.status().as_u16();
        let answer = read_body(resp.body_mut().as_reader())
            .map_err(|e| format!("registering the sink's schema: POST {url}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "the schema registry refused the sink's schema under {subject}: status {status}: {}",
                answer.chars().take(300).collect::<String>()
            ));
        }
        serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["id"].as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| format!("the schema registry's answer has no schema id: {answer}"))
    }
}

/// A framed record's schema id and the bytes after it.
///
/// # Errors
/// Bytes that are not framed; `format` names what follows the id.
pub fn framed<'a>(bytes: &'a [u8], format: &str) -> Result<(u32, &'a [u8]), SchemaError> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(SchemaError::Record(format!(
            "not in the Confluent wire format (magic byte 0, a 4-byte schema id, the {format})"
        ))),
    }
}

/// `bytes` framed with schema `id`.
pub fn frame(id: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 5);
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

fn read_body(r: impl Read) -> std::io::Result<String> {
    let mut s = String::new();
    r.take(MAX_ANSWER_BYTES).read_to_string(&mut s)?;
    Ok(s)
}
