//! Reading a job from YAML: a bare job spec, or a whole `StreamingJob` manifest.
//!
//! The worker runs the same manifest a user applies with kubectl, so examples work both ways.
//! Unknown fields are errors with their path (a typo must not silently fall back to a default),
//! except the Kubernetes-only fields of a manifest, which the operator acts on.

use std::path::Path;

use super::{JobSpec, ValidationErrors};

/// `StreamingJob` spec fields that only the operator uses; the worker ignores them.
pub const KUBERNETES_ONLY_FIELDS: &[&str] = &[
    "image",
    "imagePullPolicy",
    "resources",
    "podTemplate",
    "workers",
    "restartPolicy",
    "suspend",
    "rewind",
];

/// Largest job file accepted: a job spec is small, and this bounds what the parser reads.
pub const MAX_JOB_FILE_BYTES: usize = 1 << 20;

const API_VERSION: &str = "weir.dev/v1alpha1";

/// A loaded job: its identity and its validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub name: String,
    pub namespace: String,
    pub spec: JobSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("job file is {0} bytes; the limit is {MAX_JOB_FILE_BYTES}")]
    TooLarge(usize),
    #[error("job file is not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Shape(String),
    #[error("unknown field{} {}; check the spelling against `weir-worker schema`", if .0.len() > 1 { "s" } else { "" }, .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error("invalid job spec: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// Reads, parses and validates a job file. The job name defaults to the file's stem.
///
/// # Errors
/// When the file cannot be read, is not a job, has unknown fields or fails validation.
pub fn load_job_file(path: &Path) -> Result<JobFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("job")
        .to_string();
    parse_job(&text, &stem)
}

/// Parses and validates a job from YAML text; SQL steps come back compiled to the steps they
/// stand for.
///
/// # Errors
/// As [`load_job_file`].
pub fn parse_job(text: &str, default_name: &str) -> Result<JobFile, LoadError> {
    if text.len() > MAX_JOB_FILE_BYTES {
        return Err(LoadError::TooLarge(text.len()));
    }
    // Editors on Windows start UTF-8 files with a byte-order mark; the YAML parser would read
    // it as content before the first document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| LoadError::Yaml(e.to_string()))?;
    let serde_yaml::Value::Mapping(mut top) = doc else {
        return Err(LoadError::Shape(
            "a job file is a YAML mapping: a StreamingJob manifest or a job spec".into(),
        ));
    };
    let (name, namespace, spec_value, prefix) = if top.contains_key("kind") {
        let kind = top.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        let api = top
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if kind != "StreamingJob" || api != API_VERSION {
            return Err(LoadError::Shape(format!(
                "this is a {kind} of {api:?}; expected kind StreamingJob of apiVersion {API_VERSION}"
            )));
        }
        let meta = top.get("metadata");
        let field = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let name = field("name")
            .ok_or_else(|| LoadError::Shape("metadata.name is missing; name the job".into()))?;
        let namespace = field("namespace").unwrap_or_else(|| "default".into());
        let mut spec = top
            .remove("spec")
            .ok_or_else(|| LoadError::Shape("spec is missing".into()))?;
        if let serde_yaml::Value::Mapping(m) = &mut spec {
            for k in KUBERNETES_ONLY_FIELDS {
                m.remove(*k);
            }
        }
        (name, namespace, spec, "spec.")
    } else {
        (
            default_name.to_string(),
            "default".to_string(),
            serde_yaml::Value::Mapping(top),
            "",
        )
    };

    let mut unknown = Vec::new();
    let mut on_unknown =
        |path: serde_ignored::Path| unknown.push(format!("{prefix}{}", field_path(&path)));
    let de = serde_ignored::Deserializer::new(spec_value, &mut on_unknown);
    let parsed: Result<JobSpec, _> = serde_path_to_error::deserialize(de);
    let spec = match parsed {
        Ok(spec) if unknown.is_empty() => spec,
        // A misspelled field is unknown, and often also the reason a required one is missing:
        // name it first, since it is the fix.
        Ok(_) => return Err(LoadError::UnknownFields(with_suggestions(unknown))),
        Err(e) => {
            let path = e.path().to_string();
            let at = if path == "." {
                prefix.trim_end_matches('.').to_string()
            } else {
                format!("{prefix}{path}")
            };
            let shape = format!("{at}: {}", e.into_inner());
            if unknown.is_empty() {
                return Err(LoadError::Shape(shape));
            }
            let fields = with_suggestions(unknown);
            return Err(LoadError::Shape(format!(
                "unknown field{} {} (then {shape}); check the spelling against `weir-worker schema`",
                if fields.len() > 1 { "s" } else { "" },
                fields.join(", ")
            )));
        }
    };
    let spec = spec.validated()?;
    Ok(JobFile {
        name,
        namespace,
        spec,
    })
}

/// A field's path as a user writes it: serde_ignored marks the inside of an optional field
/// with a `?` segment (`sink.stdout.?.limt`), which is not part of the YAML.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    path.to_string()
        .split('.')
        .filter(|s| *s != "?")
        .collect::<Vec<_>>()
        .join(".")
}

/// Each unknown field with the nearest field name of the spec, when one is close enough to be
/// a misspelling of it.
fn with_suggestions(unknown: Vec<String>) -> Vec<String> {
    let names = spec_field_names();
    unknown
        .into_iter()
        .map(|path| {
            let last = path.rsplit('.').next().unwrap_or(&path);
            let best = names
                .iter()
                .map(|n| (edit_distance(&last.to_lowercase(), &n.to_lowercase()), n))
                .min();
            match best {
                Some((d, n)) if d > 0 && d <= (last.chars().count() / 3).max(1) => {
                    format!("{path} (did you mean {n}?)")
                }
                _ => path,
            }
        })
        .collect()
}

/// Every property name in the job spec's schema: the candidates for a misspelled field.
fn spec_field_names() -> Vec<String> {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                m.values().for_each(|v| collect(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let schema = serde_json::to_value(schemars::schema_for!(JobSpec)).unwrap_or_default();
    let mut out = Vec::new();
    collect(&schema, &mut out);
    out.sort();
    out.dedup();
    out
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "batchInterval: 1s\nsource: {kafka: {bootstrapServers: k:9092, topics: [in]}}\nsink: {stdout: {}}\n";

    #[test]
    fn a_misspelled_required_field_is_named_with_the_field_it_resembles() {
        let e = parse_job(&GOOD.replace("batchInterval", "batchIntervall"), "j")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field batchIntervall (did you mean batchInterval?)"),
            "{e}"
        );
        assert!(e.contains("missing field `batchInterval`"), "{e}");
    }

    #[test]
    fn an_unknown_field_inside_an_optional_one_has_its_yaml_path() {
        let e = parse_job(&GOOD.replace("stdout: {}", "stdout: {limt: 3}"), "j")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field sink.stdout.limt (did you mean limit?)"),
            "{e}"
        );
        assert!(!e.contains('?') || !e.contains(".?."), "{e}");
    }

    #[test]
    fn a_utf8_byte_order_mark_is_not_content() {
        let job = parse_job(&format!("\u{feff}{GOOD}"), "j").expect("job with a BOM");
        assert_eq!(job.spec.batch_interval.as_millis(), 1000);
    }

    #[test]
    fn hostile_yaml_is_refused_quickly_with_a_reason() {
        // Nine levels of aliases, each repeating the previous nine times: a billion nodes if
        // expanded.
        let mut laughs = String::from("a0: &a0 [lol]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            laughs.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        laughs.push_str("batchInterval: 1s\n");
        let e = parse_job(&laughs, "j").unwrap_err().to_string();
        assert!(e.contains("not valid YAML"), "{e}");
        assert!(e.contains("repetition limit"), "{e}");

        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_job(&deep, "j").unwrap_err().to_string();
        assert!(e.contains("recursion limit"), "{e}");

        let big = format!("batchInterval: 1s\n#{}\n", "x".repeat(MAX_JOB_FILE_BYTES));
        let e = parse_job(&big, "j").unwrap_err().to_string();
        assert!(e.contains("the limit is 1048576"), "{e}");
    }
}
