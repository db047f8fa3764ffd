//! A CEL expression compiled and evaluated against a record. The first byte scales two fields
//! added to the record (`value.bigS`, a string, and `value.bigL`, a list, of up to 2^20
//! elements), so that costs that grow faster than the record show up as timeouts; then the
//! expression, a newline, and the record's JSON value.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_worker::expr::{Program, Val, Var};
use weir_worker::record::{Record, MAX_JSON_DEPTH};

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (source, json) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(program) = Program::compile(source, &Var::RECORD) else {
        return;
    };
    let scale = 1usize << (control & 0x1f).min(20);
    let mut fields = match Val::from_json(json.as_bytes(), MAX_JSON_DEPTH) {
        Ok(Val::Map(m)) => (*m).clone(),
        Ok(other) => vec![(Arc::from("v"), other)],
        Err(_) => Vec::new(),
    };
    fields.push((Arc::from("bigS"), Val::str(&"ab".repeat(scale / 2 + 1))));
    fields.push((
        Arc::from("bigL"),
        Val::List(Arc::new(
            (0..scale as i64).map(|i| Val::Int(i % 7)).collect(),
        )),
    ));
    let record = Record {
        topic: Arc::from("t"),
        partition: 0,
        offset: 42,
        timestamp: Some(1_700_000_000_000),
        key: Val::str("k"),
        value: Val::Map(Arc::new(fields)),
        headers: Val::Map(Arc::new(vec![(Arc::from("h"), Val::str("v"))])),
        item: Val::Null,
        item_is_output: false,
        table: Val::Null,
        event_time: None,
        late_against: i64::MIN,
    };
    let _ = program.eval(&record);
});
