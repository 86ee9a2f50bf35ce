#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::proxy_header(data));
