#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| spate::fuzzing::metadata_archive(data));
