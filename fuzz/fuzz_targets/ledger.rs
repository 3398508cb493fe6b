//! `cargo fuzz run ledger --features libfuzzer` (nightly): the `ledger` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::Ledger.run(data));
