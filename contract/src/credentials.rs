//! Kafka client credentials: read once at startup from the files of a mounted Secret (or,
//! outside Kubernetes, a directory or an env file) and handed to librdkafka.
//!
//! Values are held as [`Secret`]s, whose `Debug` prints `<redacted>` and which have no
//! `Display`, so no log line, error message or `/progress` document can carry one by accident.
//! Errors name the key and the file, never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

/// Largest credentials file read (a certificate chain is a few KiB).
pub const MAX_FILE_BYTES: u64 = 256 << 10;

/// Secret keys (file names in a directory, names in an env file) and the librdkafka setting
/// each becomes. `ca.crt`, `tls.crt` and `tls.key` are the keys of a `kubernetes.io/tls`
/// Secret and of cert-manager's, so those Secrets work as they are. An env file cannot hold a
/// multi-line PEM: it names the files with the `*.location` keys.
pub const KEYS: &[(&str, &str)] = &[
    ("security.protocol", "security.protocol"),
    ("sasl.mechanism", "sasl.mechanism"),
    ("sasl.username", "sasl.username"),
    ("sasl.password", "sasl.password"),
    ("ssl.ca.pem", "ssl.ca.pem"),
    ("ca.crt", "ssl.ca.pem"),
    ("ssl.certificate.pem", "ssl.certificate.pem"),
    ("tls.crt", "ssl.certificate.pem"),
    ("ssl.key.pem", "ssl.key.pem"),
    ("tls.key", "ssl.key.pem"),
    ("ssl.key.password", "ssl.key.password"),
    ("ssl.ca.location", "ssl.ca.location"),
    ("ssl.certificate.location", "ssl.certificate.location"),
    ("ssl.key.location", "ssl.key.location"),
    // Not librdkafka's: the Schema Registry's basic auth, `user:password`.
    (REGISTRY_USER_INFO, REGISTRY_USER_INFO),
];

/// The credentials key of a Schema Registry's basic auth (Confluent's client property name).
pub const REGISTRY_USER_INFO: &str = "schema.registry.basic.auth.user.info";

/// The `security.protocol` values Weir accepts; the build serves each (a test creates a client
/// with every one).
pub const PROTOCOLS: &[&str] = &["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
/// The `sasl.mechanism` values Weir accepts. GSSAPI (Kerberos) would need librdkafka built
/// with Cyrus SASL, which Weir's build leaves out; OAUTHBEARER needs a token provider.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A credential value. Nothing prints it: `Debug` is redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for librdkafka only.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// librdkafka security settings; empty when the job uses none.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    settings: BTreeMap<&'static str, Secret>,
}

impl fmt::Debug for Credentials {
    /// The setting names only: which credentials are set is useful, their values are not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.settings.keys().map(|k| (k, "<redacted>")))
            .finish()
    }
}

/// Why credentials could not be read. Names keys and paths, never values.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read Kafka credentials from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Kafka credentials file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("Kafka credentials key {key:?} in {path} is not UTF-8 text")]
    NotText { path: PathBuf, key: String },
    #[error(
        "Kafka credentials in {path}: unknown key {key:?}; the keys are {}",
        key_names()
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("Kafka credentials in {path}, line {line}: expected KEY=VALUE")]
    Syntax { path: PathBuf, line: usize },
    #[error("Kafka credentials in {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn key_names() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

impl Credentials {
    /// Reads credentials from a directory (one file per key, as Kubernetes mounts a Secret) or
    /// from an env file (`KEY=VALUE` lines; `#` comments).
    ///
    /// # Errors
    /// An unreadable path, an unknown key, a protocol or mechanism Weir does not support, or
    /// a password without a username.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let read_err = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut pairs = Vec::new();
        if std::fs::metadata(path).map_err(read_err)?.is_dir() {
            for entry in std::fs::read_dir(path).map_err(read_err)? {
                let entry = entry.map_err(read_err)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Kubernetes keeps its atomic-update bookkeeping in dot-entries (`..data`).
                if name.starts_with('.') {
                    continue;
                }
                let file = entry.path();
                let text = read_small(&file)?.ok_or_else(|| CredentialsError::NotText {
                    path: path.to_path_buf(),
                    key: name.clone(),
                })?;
                pairs.push((name, text));
            }
        } else {
            let text = read_small(path)?.ok_or_else(|| CredentialsError::NotText {
                path: path.to_path_buf(),
                key: "(the file)".into(),
            })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, v) = line.split_once('=').ok_or(CredentialsError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                })?;
                pairs.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Credentials::from_pairs(path, pairs)
    }

    /// Reads credentials from the data of a Secret (as the Kubernetes API returns it);
    /// `source` names it in errors, e.g. `Secret team-a/kafka-client`.
    ///
    /// # Errors
    /// As [`Credentials::load`].
    pub fn from_secret_data(
        source: &str,
        data: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Result<Credentials, CredentialsError> {
        let path = Path::new(source);
        let mut pairs = Vec::new();
        for (key, bytes) in data {
            let text = String::from_utf8(bytes).map_err(|_| CredentialsError::NotText {
                path: path.to_path_buf(),
                key: key.clone(),
            })?;
            pairs.push((key, text));
        }
        Credentials::from_pairs(path, pairs)
    }

    fn from_pairs(
        path: &Path,
        pairs: Vec<(String, String)>,
    ) -> Result<Credentials, CredentialsError> {
        let invalid = |message: String| CredentialsError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut settings = BTreeMap::new();
        for (key, value) in pairs {
            let Some((_, setting)) = KEYS.iter().find(|(k, _)| *k == key) else {
                return Err(CredentialsError::UnknownKey {
                    path: path.to_path_buf(),
                    key,
                });
            };
            // A file written with `echo` ends in a newline that is not part of a password;
            // PEM is whitespace-tolerant.
            let value = value.trim_end_matches(['\n', '\r']).to_string();
            if settings.insert(*setting, Secret(value)).is_some() {
                return Err(invalid(format!(
                    "{setting} is given twice (under two key names); keep one"
                )));
            }
        }
        let upper = |k: &str, settings: &mut BTreeMap<&'static str, Secret>| {
            if let Some(v) = settings.get_mut(k) {
                v.0 = v.0.trim().to_ascii_uppercase();
            }
        };
        upper("security.protocol", &mut settings);
        upper("sasl.mechanism", &mut settings);
        let get = |k: &str| settings.get(k).map(|s| s.0.as_str());
        if let Some(p) = get("security.protocol") {
            if !PROTOCOLS.contains(&p) {
                return Err(invalid(format!(
                    "security.protocol {p:?} is not one of {}",
                    PROTOCOLS.join(", ")
                )));
            }
        }
        if let Some(m) = get("sasl.mechanism") {
            if !MECHANISMS.contains(&m) {
                return Err(invalid(format!(
                    "sasl.mechanism {m:?} is not one of {}",
                    MECHANISMS.join(", ")
                )));
            }
        }
        let sasl = get("sasl.username").is_some() || get("sasl.password").is_some();
        if sasl && (get("sasl.username").is_none() || get("sasl.password").is_none()) {
            return Err(invalid(
                "sasl.username and sasl.password go together; set both".into(),
            ));
        }
        if sasl && !get("security.protocol").is_some_and(|p| p.starts_with("SASL_")) {
            return Err(invalid(
                "a SASL username is set but security.protocol is not SASL_SSL or SASL_PLAINTEXT; \
                 set security.protocol"
                    .into(),
            ));
        }
        Ok(Credentials { settings })
    }

    /// Whether any setting is present.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
    }

    /// The librdkafka settings that are set, by name.
    pub fn setting_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.settings.keys().copied()
    }

    /// Sets these credentials on a client configuration, over anything set before (all but
    /// the registry's, which are not the Kafka client's).
    pub fn apply(&self, c: &mut ClientConfig) {
        for (k, v) in &self.settings {
            if *k != REGISTRY_USER_INFO {
                c.set(*k, v.expose());
            }
        }
    }

    /// The Schema Registry's `user:password`, when given.
    pub fn registry_user_info(&self) -> Option<&str> {
        self.settings.get(REGISTRY_USER_INFO).map(Secret::expose)
    }
}

/// Reads a small file; `None` when it is not UTF-8.
fn read_small(path: &Path) -> Result<Option<String>, CredentialsError> {
    let read_err = |source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(CredentialsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    Ok(String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests;
