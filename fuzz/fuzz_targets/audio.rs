//! `cargo fuzz run audio --features libfuzzer` (nightly): the `audio` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::Audio.run(data));
