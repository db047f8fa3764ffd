use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use weir_contract::spec::{parse_job, JobSpec, KUBERNETES_ONLY_FIELDS};

use crate::crd::StreamingJob;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn crd_json() -> Value {
    serde_json::to_value(crate::crd::definition()).unwrap()
}

fn open_api_schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn generated_crd_files_match_the_rust_types() {
    let expected = crate::crd_yaml().unwrap();
    for file in [
        "crds/streamingjob.yaml",
        "charts/weir/crds/streamingjob.yaml",
    ] {
        let path = repo_root().join(file);
        let found = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            found == expected,
            "{file} is not the CRD generated from operator/src/crd.rs; regenerate it with\n  \
             cargo run -p weir-operator -- crd > crds/streamingjob.yaml && \
             cp crds/streamingjob.yaml charts/weir/crds/streamingjob.yaml"
        );
    }
}

#[test]
fn extra_spec_fields_are_exactly_the_kubernetes_only_fields() {
    let spec_props: BTreeSet<String> = open_api_schema()["properties"]["spec"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let job_schema = serde_json::to_value(schemars::schema_for!(JobSpec)).unwrap();
    let job_props: BTreeSet<String> = job_schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        job_props.is_subset(&spec_props),
        "the whole job spec is in the CRD"
    );
    let extra: BTreeSet<String> = spec_props.difference(&job_props).cloned().collect();
    let expected: BTreeSet<String> = KUBERNETES_ONLY_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(extra, expected);
}

/// Kubernetes' structural-schema rules (apiextensions/v1): every field typed, no
/// `additionalProperties: false`, no `$ref`, and `anyOf`/`oneOf`/`allOf`/`not` only around
/// pure validation.
fn structural_problems(node: &Value, at: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    if obj.contains_key("$ref") {
        out.push(format!("{at}: $ref"));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!("{at}: additionalProperties: false"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{at}: both properties and additionalProperties"));
    }
    for k in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(branches) = obj.get(k) {
            let branches = branches
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![branches.clone()]);
            for b in branches {
                for bad in [
                    "type",
                    "description",
                    "default",
                    "nullable",
                    "x-kubernetes-validations",
                ] {
                    if b.get(bad).is_some() {
                        out.push(format!("{at}: {k} branch sets {bad}"));
                    }
                }
            }
        }
    }
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        out.push(format!("{at}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_problems(v, &format!("{at}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{at}[]"), out);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        structural_problems(ap, &format!("{at}{{}}"), out);
    }
}

#[test]
fn schema_is_structural() {
    let mut problems = Vec::new();
    structural_problems(&open_api_schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn crd_names_subresources_and_columns() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], "streamingjobs.weir.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["sj"])
    );
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.workers.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in [
        "Phase",
        "Progress",
        "Workers",
        "Lag",
        "Batch Lag",
        "Last Batch",
        "Age",
    ] {
        assert!(columns.contains(&c), "{c} in {columns:?}");
    }
    // Every column path exists in the schema, or kubectl shows <none> forever.
    let schema = open_api_schema();
    for c in v["additionalPrinterColumns"].as_array().unwrap() {
        let path = c["jsonPath"].as_str().unwrap();
        if path.starts_with(".metadata") {
            continue;
        }
        // A list filter (`conditions[?(@.type=="Ready")]`) walks into the list's items.
        let path = match (path.find("[?("), path.find(")]")) {
            (Some(a), Some(b)) => format!("{}[]{}", &path[..a], &path[b + 2..]),
            _ => path.to_string(),
        };
        let mut node = &schema;
        for part in path.trim_start_matches('.').split('.') {
            node = match part.strip_suffix("[]") {
                Some(list) => &node["properties"][list]["items"],
                None => &node["properties"][part],
            };
        }
        assert!(node.is_object(), "{path} is not in the schema");
    }
}

#[test]
fn cel_rules_cover_the_cross_field_checks_with_messages() {
    let schema = open_api_schema();
    let spec = &schema["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(rules
        .iter()
        .any(|r| r.contains("s.window.length") && r.contains("getMilliseconds()")));
    assert!(rules.iter().any(|r| r.contains("s.window.slide")));
    assert!(rules.iter().any(|r| r.contains("has(s.repartition)")));
    assert!(rules.iter().any(|r| r.contains("has(self.sink.file)")));
    let workers = &spec["properties"]["workers"]["x-kubernetes-validations"][0];
    assert_eq!(workers["rule"], "self.min <= self.max");
    for r in spec["x-kubernetes-validations"].as_array().unwrap() {
        assert!(
            r["message"].as_str().unwrap().len() > 20,
            "a message says what to set: {r}"
        );
    }
    // CEL cost: lists the rules walk are bounded and durations are short strings.
    assert_eq!(spec["properties"]["pipeline"]["maxItems"], 64);
    assert_eq!(spec["properties"]["batchInterval"]["maxLength"], 32);
    // An expression longer than the worker accepts is refused at apply time.
    let step = &spec["properties"]["pipeline"]["items"]["properties"];
    let max = weir_contract::expr::MAX_SOURCE_BYTES;
    for field in ["filter", "map", "flatMap", "keyBy"] {
        assert_eq!(step[field]["maxLength"], max, "{field}");
    }
    assert_eq!(step["select"]["additionalProperties"]["maxLength"], max);
    assert_eq!(step["state"]["properties"]["update"]["maxLength"], max);
    assert_eq!(step["aggregate"]["properties"]["reduce"]["maxLength"], max);
    let secret =
        &spec["properties"]["source"]["properties"]["kafka"]["properties"]["credentialsSecret"];
    assert_eq!(secret["maxLength"], 253);
    assert!(secret["pattern"].is_string(), "{secret}");
}

/// The CRD schema as plain JSON Schema: OpenAPI's `nullable` becomes a null type, int-or-string
/// a type pair, and objects refuse unknown fields as `kubectl apply --validate=strict` does.
fn to_json_schema(node: &mut Value) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    if obj.remove("x-kubernetes-int-or-string") == Some(Value::Bool(true)) {
        obj.insert("type".into(), serde_json::json!(["integer", "string"]));
    }
    let preserve = obj.remove("x-kubernetes-preserve-unknown-fields") == Some(Value::Bool(true));
    obj.retain(|k, _| !k.starts_with("x-kubernetes-"));
    if obj.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(Value::String(t)) = obj.get("type").cloned() {
            obj.insert("type".into(), serde_json::json!([t, "null"]));
        }
    }
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") && !preserve {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties"] {
        if let Some(Value::Object(props)) = obj.get_mut(key) {
            for v in props.values_mut() {
                to_json_schema(v);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = obj.get_mut(key) {
            to_json_schema(v);
        }
    }
}

fn validator() -> jsonschema::Validator {
    let mut schema = open_api_schema();
    to_json_schema(&mut schema);
    // metadata is `type: object` in CRDs; the API server owns its shape.
    schema["properties"]["metadata"] = serde_json::json!({"type": "object"});
    schema["properties"]["apiVersion"] = serde_json::json!({"const": "weir.dev/v1alpha1"});
    schema["properties"]["kind"] = serde_json::json!({"const": "StreamingJob"});
    jsonschema::validator_for(&schema).unwrap()
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_example_validates_against_the_crd_and_parses_as_a_job() {
    let v = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let errs = errors(&v, &doc);
        assert!(errs.is_empty(), "{}: {errs:#?}", path.display());
        parse_job(&text, "example").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let job: StreamingJob = serde_yaml::from_str(&text).unwrap();
        assert!(
            crate::reconcile::validate(&job).is_empty(),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen > 0, "no examples found");
}

#[test]
fn schema_rejects_an_invalid_manifest() {
    let v = validator();
    let mut doc: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("examples/word-count.yaml")).unwrap(),
    )
    .unwrap();
    doc["spec"]["batchInterval"] = "5 seconds".into();
    doc["spec"]["workers"]["min"] = 0.into();
    doc["spec"]["sinkk"] = serde_json::json!({});
    doc["spec"]["pipeline"][0]["id"] = "Not_A_Label".into();
    doc["spec"].as_object_mut().unwrap().remove("source");
    let errs = errors(&v, &doc).join("\n");
    for expected in [
        "/spec/batchInterval",
        "/spec/workers/min",
        "sinkk",
        "/spec/pipeline/0/id",
        "source",
    ] {
        assert!(
            errs.contains(expected),
            "{expected} not reported in:\n{errs}"
        );
    }
}

#[test]
fn the_crd_uses_only_formats_the_api_server_knows() {
    let crd = crd_json();
    assert_eq!(crate::crd::unknown_formats(&crd), Vec::<String>::new());
    // What was unsigned keeps its bounds: maxRestarts is a u32 with maximum 10000.
    let max_restarts = &open_api_schema()["properties"]["spec"]["properties"]["restartPolicy"]
        ["properties"]["maxRestarts"];
    assert_eq!(max_restarts["format"], "int64");
    assert_eq!(max_restarts["minimum"], 0.0);
    assert_eq!(max_restarts["maximum"], 10000.0);
    let text = crate::crd_yaml().unwrap();
    assert!(!text.contains("format: uint"), "{text}");
}

#[test]
fn unsigned_formats_become_signed_with_their_bounds() {
    let mut schema = serde_json::json!({"properties": {
        "a": {"type": "integer", "format": "uint32"},
        "b": {"type": "integer", "format": "uint64", "minimum": 1.0},
        "c": {"type": "array", "items": {"type": "integer", "format": "uint16", "maximum": 9.0}},
    }});
    crate::crd::kubernetes_formats(&mut schema);
    let p = &schema["properties"];
    assert_eq!(
        p["a"],
        serde_json::json!({"type": "integer", "format": "int64", "minimum": 0.0, "maximum": 4294967295.0})
    );
    assert_eq!(
        p["b"],
        serde_json::json!({"type": "integer", "format": "int64", "minimum": 1.0})
    );
    assert_eq!(
        p["c"]["items"],
        serde_json::json!({"type": "integer", "format": "int32", "minimum": 0.0, "maximum": 9.0})
    );
}

#[test]
fn the_scripted_api_refuses_a_crd_with_a_format_kubernetes_does_not_know() {
    let raw = serde_json::to_value(<StreamingJob as kube::CustomResourceExt>::crd()).unwrap();
    let refused = crate::fixtures::install_crd(&raw).unwrap_err();
    assert!(refused.contains("uint32"), "{refused}");
    assert_eq!(crate::fixtures::install_crd(&crd_json()), Ok(()));
}

#[test]
fn a_sql_step_is_checked_and_observed_as_the_steps_it_compiles_to() {
    let mut spec = crate::fixtures::spec();
    spec["source"]["format"] = "json".into();
    spec["pipeline"] = serde_json::json!([
        {"id": "views", "sql": "SELECT page, COUNT(*) AS n FROM input GROUP BY page"}
    ]);
    let job: StreamingJob =
        serde_json::from_value(crate::fixtures::job("wc", 1, spec.clone())).unwrap();
    assert!(crate::reconcile::validate(&job).is_empty());
    // The compiled keyBy changes the key: the aggregate's stage is observed like any.
    let target = crate::observation::KafkaTarget::of(&job, "default", "wc");
    let stages: Vec<(&str, &str)> = target
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.topic.as_str()))
        .collect();
    assert_eq!(stages, [("views", "wc-views-repartition")]);

    spec["pipeline"][0]["sql"] = "SELECT page FROM input LIMIT 3".into();
    let job: StreamingJob = serde_json::from_value(crate::fixtures::job("wc", 1, spec)).unwrap();
    let errors = crate::reconcile::validate(&job);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "pipeline[0].sql");
    assert!(
        errors[0]
            .message
            .contains("line 1, column 30: LIMIT is not supported"),
        "{errors:?}"
    );
}
