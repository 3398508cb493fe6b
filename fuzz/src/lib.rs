//! Every reader of bytes from outside, as a fuzz target: master audio (WAV, FLAC, MP3, AIFF),
//! artwork (JPEG, PNG), manifest lines, config files, the ledger's log entries and snapshots (from
//! disk and from peers), and Raft messages as the peer port receives them.
//!
//! A target returns normally for every input — a value or an error, whatever the bytes — and
//! never panics, aborts, loops or allocates what the input only claims to hold. Two drivers run
//! them: `tests/corpus.rs` on stable in `cargo test` (the committed hostile corpus, then seeded
//! mutations of it for a bounded number of rounds or seconds), and `cargo fuzz` on nightly
//! (`fuzz_targets/`, coverage-guided, `--features libfuzzer`).

pub mod mutate;

use kiln_render::DecodeLimits;

/// One reader of untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Audio,
    Artwork,
    ManifestLine,
    Config,
    Ledger,
    RaftMessage,
}

impl Target {
    pub const ALL: [Target; 6] =
        [Target::Audio, Target::Artwork, Target::ManifestLine, Target::Config, Target::Ledger, Target::RaftMessage];

    /// The target's name: its corpus directory and its `cargo fuzz` binary.
    pub fn name(self) -> &'static str {
        match self {
            Target::Audio => "audio",
            Target::Artwork => "artwork",
            Target::ManifestLine => "manifest_line",
            Target::Config => "config",
            Target::Ledger => "ledger",
            Target::RaftMessage => "raft_message",
        }
    }

    /// Feeds `data` to the reader. Its result is dropped: only a panic, an abort or a hang is a
    /// finding.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Audio => audio(data),
            Target::Artwork => {
                let _ = kiln_render::render_artwork(data, &[250, 64]);
            }
            Target::ManifestLine => {
                // Not UTF-8 is a bad line before parsing (the CLI's and the leader's readers say
                // so); the rest of the bytes still get parsed line by line, as JSONL and, with the
                // first line as its header, as CSV.
                let mut columns = None;
                for line in data.split(|b| *b == b'\n') {
                    if let Ok(text) = std::str::from_utf8(line) {
                        let _ = kiln_proto::manifest::parse_jsonl_line(text.trim());
                        match &columns {
                            None => columns = Some(kiln_proto::manifest::CsvColumns::from_header(text.trim())),
                            Some(Ok(c)) => {
                                let _ = c.parse(text.trim());
                            }
                            Some(Err(_)) => {}
                        }
                    }
                }
            }
            Target::Config => {
                if let Ok(text) = std::str::from_utf8(data) {
                    if let Ok(options) = kiln_config::parse(text) {
                        let _ = options.validate();
                    }
                }
            }
            Target::Ledger => {
                let _ = kiln_ledger::codec::decode_batch(data);
                let _ = kiln_ledger::codec::decode_snapshot(data);
            }
            Target::RaftMessage => {
                let _ = kiln_scheduler::check_peer_message(data);
            }
        }
    }
}

/// Small limits, so a bomb is stopped after megabytes rather than gigabytes: the limit checks
/// are what is under test, not the machine's memory.
fn audio(data: &[u8]) {
    let limits = DecodeLimits { max_bytes: 64 << 20, max_duration_secs: 600.0, max_decoded_bytes: 64 << 20 };
    for hint in [None, Some("wav"), Some("flac"), Some("mp3"), Some("aiff")] {
        let _ = kiln_render::decode(data, hint, &limits);
    }
}
