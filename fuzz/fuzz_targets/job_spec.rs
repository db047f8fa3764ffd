//! A job file as a user (or a hostile manifest) writes it: YAML parse, shape, validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader takes text; a file that is not UTF-8 is refused before parsing.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = weir_worker::spec::parse_job(text, "fuzz");
    }
});
