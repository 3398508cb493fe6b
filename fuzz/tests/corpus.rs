//! The stable fuzz driver: every target gets its committed hostile corpus (`fuzz/corpus/<name>/`),
//! the large cases built here rather than committed (a 10 MB manifest line, a FLAC that decodes to
//! tens of GB), then seeded mutations of all of them.
//!
//! `KILN_FUZZ_SECONDS` gives each target that many seconds of mutations (`.ci/run` does); without
//! it each target gets `KILN_FUZZ_ROUNDS` rounds (default 300), a few seconds in all. A failing
//! input is written to `$CARGO_TARGET_TMPDIR` and named in the panic, with its round and seed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_fuzz::mutate::{mutate, Rng};
use kiln_fuzz::Target;

fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target.name())
}

fn corpus(target: Target) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus of {}: {e}", target.name()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), bytes)
        })
        .collect();
    out.sort();
    out.extend(generated(target));
    assert!(out.len() >= 3, "the corpus of {} is too small", target.name());
    out
}

/// Cases too large to commit, built from the committed ones.
fn generated(target: Target) -> Vec<(String, Vec<u8>)> {
    match target {
        Target::ManifestLine => {
            let line = format!(
                "{{\"request_id\":\"{}\",\"release_id\":1,\"asset_id\":1,\"asset_guid\":\"a.wav\",\"derivative_assets\":[]}}",
                "x".repeat(10 << 20)
            );
            vec![("10-MB-line (generated)".into(), line.into_bytes())]
        }
        Target::Audio => {
            // The committed bomb's frames repeated: 350 KB that would decode to ~22 GB of PCM.
            let bomb = std::fs::read(corpus_dir(target).join("flac-constant-subframes-bomb.flac")).expect("bomb");
            let (header, frames) = bomb.split_at(42);
            let mut big = header.to_vec();
            while big.len() < 350_000 {
                big.extend_from_slice(frames);
            }
            vec![("flac-bomb-tens-of-GB (generated)".into(), big)]
        }
        Target::Ledger => golden_ledger_fixtures(),
        _ => Vec::new(),
    }
}

/// The ledger's golden fixtures (real entries and snapshots of every format), as mutation seeds.
fn golden_ledger_fixtures() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ledger/tests/golden");
    kiln_testkit::hex_fixtures(&root).into_iter().map(|(path, bytes)| (path.display().to_string(), bytes)).collect()
}

/// Runs one input, turning a panic into a failure that names a saved copy of the input.
fn run_one(target: Target, what: &str, input: &[u8]) {
    if std::panic::catch_unwind(|| target.run(input)).is_err() {
        let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{}-failure.bin", target.name()));
        let _ = std::fs::write(&saved, input);
        panic!("{} panicked on {what} ({} bytes, saved to {})", target.name(), input.len(), saved.display());
    }
}

fn budget() -> (Option<Duration>, u64) {
    let seconds = std::env::var("KILN_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
    let rounds = std::env::var("KILN_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    (seconds.map(Duration::from_secs), rounds)
}

fn fuzz(target: Target) {
    let corpus = corpus(target);
    for (name, bytes) in &corpus {
        run_one(target, name, bytes);
    }
    let (seconds, rounds) = budget();
    let seed = 0x6b69_6c6e ^ target as u64;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut round = 0u64;
    while match seconds {
        Some(limit) => started.elapsed() < limit,
        None => round < rounds,
    } {
        let (name, input) = &corpus[rng.below(corpus.len())];
        let (_, other) = &corpus[rng.below(corpus.len())];
        // The generated giants are replayed, not mutated: each round must stay cheap.
        if input.len() > 1 << 20 {
            round += 1;
            continue;
        }
        let mutated = mutate(input, other, &mut rng);
        run_one(target, &format!("round {round} (seed {seed:#x}) from {name}"), &mutated);
        round += 1;
    }
}

#[test]
fn audio_decoders_survive_hostile_masters() {
    fuzz(Target::Audio);
}

#[test]
fn artwork_survives_hostile_images() {
    fuzz(Target::Artwork);
}

#[test]
fn manifest_lines_survive_hostile_text() {
    fuzz(Target::ManifestLine);
}

#[test]
fn config_survives_hostile_files() {
    fuzz(Target::Config);
}

#[test]
fn ledger_codec_survives_hostile_entries_and_snapshots() {
    fuzz(Target::Ledger);
}

#[test]
fn peer_port_survives_hostile_raft_messages() {
    fuzz(Target::RaftMessage);
}

/// The corpus's named cases are refused with the error their names promise, not merely survived.
#[test]
fn the_named_hostile_cases_are_refused_for_the_right_reason() {
    let bomb = std::fs::read(corpus_dir(Target::Audio).join("flac-constant-subframes-bomb.flac")).expect("bomb");
    let limits = kiln_render::DecodeLimits { max_decoded_bytes: 16 << 20, ..Default::default() };
    let err = kiln_render::decode(&bomb, Some("flac"), &limits).expect_err("the bomb decodes");
    assert!(err.to_string().contains("decoded audio"), "{err}");

    let png = std::fs::read(corpus_dir(Target::Artwork).join("png-claims-60000x60000.png")).expect("png");
    let err = kiln_render::render_artwork(&png, &[250]).expect_err("the giant png decodes");
    assert!(err.to_string().contains("60000"), "{err}");

    let groups = std::fs::read(corpus_dir(Target::RaftMessage).join("nested-groups-64k.bin")).expect("groups");
    let err = kiln_scheduler::check_peer_message(&groups).expect_err("nested groups pass");
    assert!(err.contains("group"), "{err}");
    let stranger =
        std::fs::read(corpus_dir(Target::RaftMessage).join("heartbeat-from-a-stranger.bin")).expect("stranger");
    assert!(kiln_scheduler::check_peer_message(&stranger).is_err(), "a non-member's heartbeat was admitted");

    let line = "x".repeat(10 << 20);
    let err = kiln_proto::manifest::parse_jsonl_line(&line).expect_err("a 10 MB line parses");
    assert!(err.contains("longest read"), "{err}");
}
