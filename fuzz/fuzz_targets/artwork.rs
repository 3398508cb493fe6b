//! `cargo fuzz run artwork --features libfuzzer` (nightly): the `artwork` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::Artwork.run(data));
