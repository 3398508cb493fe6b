//! Known-answer tests of `bpm` and `key` on the seeded dance-music generator (feature `synth`).
//!
//! The tracks here are drawn with a different seed from the set in `docs/accuracy.md`, so the
//! thresholds below are not fitted to the tracks they check. Each assertion names the track, its
//! style and progression, so a regression says which kind of music it broke.

use kiln_render::synth::{self, measure, Key, Progression, TrackSpec};
use kiln_render::{DecodeLimits, Pipeline, PipelineConfig};

/// A spec whose plan has the wanted progression: the generator picks the harmony from the seed.
fn spec_with(bpm: f64, key: Key, progression: Progression) -> TrackSpec {
    (0..10_000u64)
        .map(|seed| TrackSpec { bpm, key, seconds: 30.0, seed })
        .find(|s| synth::plan(s).progression == progression)
        .expect("the generator draws every progression")
}

#[test]
fn tempo_of_a_small_annotated_set_is_within_half_a_bpm() {
    let specs = synth::annotated_set(22, 7, 30.0);
    let mut misses = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let audio = synth::track(spec);
        let tempo = measure::tempo(&measure::Analysis::new(&audio)).expect("a tempo");
        let plan = synth::plan(spec);
        // Octave errors are not allowed here: the annotated level is what a DJ expects.
        if (tempo.bpm - spec.bpm).abs() > 0.5 {
            misses.push(format!("#{i} {:?} {} BPM → {:.2}", plan.style, spec.bpm, tempo.bpm));
        }
        assert!((0.0..=1.0).contains(&tempo.confidence));
    }
    // 22 tracks over 70–180 BPM, every style: at most one miss (the set's measured rate is ~97 %).
    assert!(misses.len() <= 1, "tempo misses: {misses:#?}");
}

#[test]
fn unambiguous_cadences_name_their_key_in_every_register() {
    // i–iv–V–i with the bass on the root, and I–IV–V–I: harmony that names one tonic only.
    let mut wrong = Vec::new();
    for tonic in [0u8, 3, 6, 9, 11] {
        for (minor, progression) in [(true, Progression::Tonal(0)), (false, Progression::Tonal(1))] {
            let key = Key::new(tonic, minor);
            let spec = spec_with(124.0, key, progression);
            let estimate = measure::key(&measure::Analysis::new(&synth::track(&spec))).expect("a key");
            if Key::new(estimate.tonic, estimate.minor) != key {
                wrong.push(format!("{key} ({progression:?}) → {}", estimate.name()));
            }
            let planned = synth::plan(&spec).tuning_hz;
            assert!(
                (estimate.tuning_hz - planned).abs() < 2.5,
                "{key}: A4 {planned:.1} measured {:.1}",
                estimate.tuning_hz
            );
        }
    }
    assert!(wrong.is_empty(), "wrong keys: {wrong:#?}");
}

#[test]
fn the_pipeline_reports_bpm_and_key_with_their_notations() {
    let spec = spec_with(126.0, Key::new(9, true), Progression::Tonal(0));
    let wav = synth::track(&spec).to_wav();
    let pipeline = Pipeline::new(PipelineConfig { limits: DecodeLimits::default(), artwork_sizes: Vec::new() });
    let report = pipeline.run(&wav, Some("wav"), &["key", "bpm"]).expect("renders");
    let meta = |name: &str| {
        report.outputs.iter().find(|o| o.renderer == name).map(|o| o.rendered.metadata.clone()).expect(name)
    };
    let bpm = meta("bpm");
    assert!((bpm["bpm"].as_f64().expect("bpm") - 126.0).abs() <= 0.1, "{bpm}");
    let key = meta("key");
    assert_eq!(key["key"], "A minor", "{key}");
    assert_eq!(key["camelot"], "8A");
    assert_eq!(key["open_key"], "1m");
}
