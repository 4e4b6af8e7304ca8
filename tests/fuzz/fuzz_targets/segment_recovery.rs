#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate::fuzzing::segment_recovery(data));
