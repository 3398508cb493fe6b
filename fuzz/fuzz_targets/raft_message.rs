//! `cargo fuzz run raft_message --features libfuzzer` (nightly): the `raft_message` target of `kiln_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_fuzz::Target::RaftMessage.run(data));
