//! `cargo fuzz run config --features libfuzzer` (nightly): the `config` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::Config.run(data));
