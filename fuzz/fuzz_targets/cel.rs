//! A CEL expression compiled and evaluated against a record: the first line is the expression,
//! the rest the record's JSON value.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_worker::expr::{Program, Val, Var};
use weir_worker::record::{Record, MAX_JSON_DEPTH};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, json) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(program) = Program::compile(source, &Var::RECORD) else {
        return;
    };
    let value = Val::from_json(json.as_bytes(), MAX_JSON_DEPTH).unwrap_or(Val::Null);
    let record = Record {
        topic: Arc::from("t"),
        partition: 0,
        offset: 42,
        timestamp: Some(1_700_000_000_000),
        key: Val::str("k"),
        value,
        headers: Val::Map(Arc::new(vec![(Arc::from("h"), Val::str("v"))])),
        item: Val::Null,
        item_is_output: false,
    };
    let _ = program.eval(&record);
});
