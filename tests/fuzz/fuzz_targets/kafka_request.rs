#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate::fuzzing::kafka_request(data));
