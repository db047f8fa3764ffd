//! A Kafka record as a producer writes it: the value in each format, with each read pattern,
//! and the key.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_worker::expr::ValueNeeds;
use weir_worker::record::{decode_key, decode_value};
use weir_worker::spec::Format;

fuzz_target!(|data: &[u8]| {
    let fields = ValueNeeds::Fields(BTreeSet::from([Arc::from("a"), Arc::from("page")]));
    for needs in [ValueNeeds::Whole, fields, ValueNeeds::Nothing] {
        for format in [Format::Json, Format::Text, Format::Bytes] {
            let _ = decode_value(format, Some(data), &needs);
        }
    }
    // A decoded value goes back out to sinks and dead-letter topics as JSON.
    if let Ok(v) = decode_value(Format::Json, Some(data), &ValueNeeds::Whole) {
        let mut out = Vec::new();
        v.write_payload(&mut out);
    }
    let _ = decode_key(Some(data));
});
