//! `cargo fuzz run manifest_line --features libfuzzer` (nightly): the `manifest_line` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::ManifestLine.run(data));
