//! The CRD's CEL rules, evaluated with Kubernetes' CEL libraries (kube-cel, the library behind
//! kube's client-side validation) the way the API server evaluates them at admission.

use kube::core::cel::{compile_schema, estimate_rule_cost, Validator};
use serde_json::{json, Value};

use crate::fixtures;

fn schema() -> Value {
    serde_json::to_value(crate::crd::definition()).unwrap()["spec"]["versions"][0]["schema"]
        ["openAPIV3Schema"]
        .clone()
}

/// The messages of the rules `spec` breaks.
fn broken(spec: Value) -> Vec<String> {
    let doc = fixtures::job("wc", 1, spec);
    match Validator::new().validate(&schema(), &doc, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| e.to_string())
            .collect(),
    }
}

#[test]
fn rules_compile_and_stay_within_the_cost_budget() {
    let schema = schema();
    let compiled = compile_schema(&schema);
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let spec = &schema["properties"]["spec"];
    let spec_compiled = compile_schema(spec);
    for rule in spec["x-kubernetes-validations"].as_array().unwrap() {
        let warnings = estimate_rule_cost(rule["rule"].as_str().unwrap(), &spec_compiled);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

#[test]
fn valid_jobs_and_the_examples_pass_every_rule() {
    assert_eq!(broken(fixtures::spec()), Vec::<String>::new());
    let mut windowed = fixtures::spec();
    windowed["pipeline"][2]["window"] = json!({"length": "1m", "slide": "10s"});
    assert_eq!(broken(windowed), Vec::<String>::new());
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let doc: Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let result = Validator::new().validate(&schema(), &doc, None);
            assert!(result.is_ok(), "{}: {result:?}", path.display());
        }
    }
}

#[test]
fn window_length_and_slide_must_be_multiples_of_the_batch_interval() {
    let mut spec = fixtures::spec();
    spec["pipeline"][2]["window"] = json!({"length": "7s"});
    let errors = broken(spec.clone());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .contains("window.length of a batch-time window must be a multiple of batchInterval"),
        "{errors:?}"
    );
    spec["pipeline"][2]["window"] = json!({"length": "10s", "slide": "3s"});
    let errors = broken(spec);
    assert!(
        errors.len() == 1
            && errors[0].contains("window.slide of a batch-time window must be a multiple"),
        "{errors:?}"
    );
}

#[test]
fn an_event_time_window_needs_a_watermark_and_one_of_length_and_gap() {
    let mut spec = fixtures::spec();
    // Event-time lengths are the records' time, not batches: 7 s is fine with a watermark.
    spec["pipeline"][2]["window"] = json!({"time": "event", "length": "7s"});
    let errors = broken(spec.clone());
    assert!(
        errors.len() == 1 && errors[0].contains("needs source.watermark"),
        "{errors:?}"
    );
    spec["source"]["watermark"] = json!({"delay": "10s"});
    assert_eq!(broken(spec.clone()), Vec::<String>::new());
    spec["pipeline"][2]["window"] = json!({"time": "event", "length": "1m", "gap": "5m"});
    let errors = broken(spec);
    assert!(
        errors.len() == 1 && errors[0].contains("exactly one of length"),
        "{errors:?}"
    );
}

#[test]
fn a_step_does_exactly_one_thing() {
    let mut spec = fixtures::spec();
    spec["pipeline"][0]["filter"] = json!("true");
    let errors = broken(spec.clone());
    assert!(
        errors.len() == 1 && errors[0].contains("exactly one of filter, map"),
        "{errors:?}"
    );
    spec["pipeline"][0] = json!({"id": "nothing"});
    assert_eq!(broken(spec.clone()).len(), 1);
    spec["pipeline"][0] = json!({"id": "q", "sql": "SELECT * FROM input"});
    assert_eq!(broken(spec.clone()), Vec::<String>::new());
    spec["pipeline"][0]["filter"] = json!("true");
    assert_eq!(broken(spec).len(), 1);
}

#[test]
fn sink_sets_one_member_or_more_and_one_record_of_offsets_at_most() {
    let mut spec = fixtures::spec();
    spec["sink"]["stdout"] = json!({});
    spec["sink"]["postgres"] = json!({"table": "counts"});
    assert_eq!(broken(spec.clone()), Vec::<String>::new());
    spec["sink"]["kafka"]["delivery"] = json!("exactlyOnce");
    let errors = broken(spec.clone());
    assert!(
        errors.len() == 1 && errors[0].contains("exactlyOnce cannot hold beside sink.postgres"),
        "{errors:?}"
    );
    spec["sink"].as_object_mut().unwrap().remove("postgres");
    assert_eq!(broken(spec.clone()), Vec::<String>::new());
    spec["sink"] = json!({});
    let errors = broken(spec);
    assert!(
        errors.len() == 1 && errors[0].contains("sink sets at least one of stdout, kafka, file"),
        "{errors:?}"
    );
}

#[test]
fn workers_min_must_not_exceed_max() {
    let mut spec = fixtures::spec();
    spec["workers"] = json!({"min": 5, "max": 2});
    let errors = broken(spec);
    assert!(
        errors.len() == 1 && errors[0].contains("lower min or raise max"),
        "{errors:?}"
    );
}

#[test]
fn credentials_in_properties_are_refused_at_admission() {
    for key in weir_contract::spec::SECRET_PROPERTIES {
        let mut spec = fixtures::spec();
        spec["source"]["kafka"]["properties"] = json!({ *key: "x", "linger.ms": "5" });
        let errors = broken(spec);
        assert!(
            errors.len() == 1
                && errors[0].contains("put them in the Secret named by credentialsSecret"),
            "{key}: {errors:?}"
        );
    }
    let mut spec = fixtures::spec();
    spec["source"]["kafka"]["properties"] = json!({"linger.ms": "5", "sasl.mechanism": "PLAIN"});
    assert_eq!(broken(spec), Vec::<String>::new());
}

#[test]
fn a_rewind_names_exactly_one_target() {
    let with = |rewind: Value| {
        let mut spec = fixtures::spec();
        spec["rewind"] = rewind;
        broken(spec)
    };
    assert_eq!(
        with(json!({"id": "r1", "toEarliest": true})),
        Vec::<String>::new()
    );
    assert_eq!(
        with(json!({"id": "r1", "offsets": [{"topic": "lines", "partition": 0, "offset": 5}]})),
        Vec::<String>::new()
    );
    for bad in [
        json!({"id": "r1"}),
        json!({"id": "r1", "toEarliest": true, "toTimestamp": "2026-01-01T00:00:00Z"}),
    ] {
        let errors = with(bad.clone());
        assert!(
            errors.iter().any(|e| e
                .contains("rewind sets exactly one of toTimestamp, offsets, toEarliest, toLatest")),
            "{bad}: {errors:?}"
        );
    }
}
