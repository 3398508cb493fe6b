//! The codec reads bytes from disk and from other nodes: whatever they are, decoding returns a
//! value or an error, and never panics, loops or allocates what the input only claims to hold.
//! Random bytes, and valid entries and snapshots (the golden fixtures) with bytes flipped, cut
//! short or lengthened; proptest shrinks any failure to a small input.

use std::path::PathBuf;

use kiln_ledger::codec;
use proptest::prelude::*;

/// Every golden fixture: real entries and snapshots of every format this build reads (read once).
fn fixtures() -> &'static [Vec<u8>] {
    static FIXTURES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(read_fixtures)
}

fn read_fixtures() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let out: Vec<Vec<u8>> = kiln_testkit::hex_fixtures(&root).into_iter().map(|(_, bytes)| bytes).collect();
    assert!(out.len() > 20, "the golden fixtures are missing: {}", root.display());
    out
}

fn decode_both(bytes: &[u8]) {
    let _ = codec::decode_batch(bytes);
    let _ = codec::decode_snapshot(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_both(&bytes);
        // The same bytes behind a valid header reach the version-specific decoders.
        for magic in [&b"KLNE"[..], &b"KLNS"[..]] {
            for version in 0u16..4 {
                let mut framed = magic.to_vec();
                framed.extend_from_slice(&version.to_le_bytes());
                framed.extend_from_slice(&bytes);
                decode_both(&framed);
            }
        }
    }

    #[test]
    fn damaged_fixtures_are_errors_or_values_never_panics(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let all = fixtures();
        let original = &all[pick.index(all.len())];
        let mut bytes = original.clone();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        decode_both(&bytes);
        decode_both(&bytes[..cut.index(bytes.len() + 1)]);
        bytes.extend_from_slice(&tail);
        decode_both(&bytes);
    }
}
