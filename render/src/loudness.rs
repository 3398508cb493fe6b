//! `loudness`: EBU R128 integrated loudness, loudness range and true peak.
//!
//! Streaming services normalise to an integrated loudness, and mastering engineers read the range
//! and true peak; all three come from one pass of the `ebur128` crate (a port of libebur128, the
//! implementation ffmpeg and most broadcast tools agree with).
//!
//! Channels map the BS.1770 way, with one deliberate choice for mono: a mono master is measured
//! as *dual mono* (played over both speakers, as EBU Tech 3344 recommends), so a mono file reads
//! the same LUFS as the same audio in stereo. Stereo is left and right; 5.1 (L R C LFE Ls Rs, the
//! WAV/FLAC order) weights the surrounds by +1.5 dB and ignores the LFE; 7.1 adds the side pair.
//! Other layouts take libebur128's defaults (first six channels as 5.1, the rest ignored).

use ebur128::{Channel, EbuR128, Mode};
use serde_json::json;

use crate::{Audio, Error, Rendered};

fn internal(reason: impl std::fmt::Display) -> Error {
    Error::Internal { renderer: "loudness".into(), reason: reason.to_string() }
}

/// Rounds to 0.01 so manifests stay readable; R128 itself is specified to 0.1 LU.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// dBFS / dBTP of a linear peak; -inf (digital silence) is written as null in JSON.
fn db(linear: f64) -> Option<f64> {
    (linear > 0.0).then(|| round2(20.0 * linear.log10()))
}

/// The BS.1770 channel map Kiln uses for `channels`, or `None` for libebur128's default.
fn channel_map(channels: u16) -> Option<Vec<Channel>> {
    use Channel::*;
    match channels {
        1 => Some(vec![DualMono]),
        3 => Some(vec![Left, Right, Center]),
        // WAVE_FORMAT_EXTENSIBLE 7.1: FL FR FC LFE BL BR SL SR.
        8 => Some(vec![Left, Right, Center, Unused, Mp135, Mm135, Mp090, Mm090]),
        _ => None,
    }
}

/// Frames fed to the meter per call, so its internal buffers stay small on hour-long masters.
const BLOCK_FRAMES: usize = 65_536;

/// Measures `audio`. Metadata: `{"integrated_lufs", "range_lu", "true_peak_dbtp",
/// "sample_peak_dbfs", "standard"}`; `integrated_lufs` is null when the whole master sits below
/// the -70 LUFS absolute gate, the peaks are null for digital silence.
pub fn render(audio: &Audio) -> Result<Rendered, Error> {
    let channels = u32::from(audio.channels);
    let mut meter =
        EbuR128::new(channels, audio.sample_rate, Mode::I | Mode::LRA | Mode::TRUE_PEAK | Mode::SAMPLE_PEAK)
            .map_err(internal)?;
    if let Some(map) = channel_map(audio.channels) {
        meter.set_channel_map(&map).map_err(internal)?;
    }
    let block = BLOCK_FRAMES * usize::from(audio.channels.max(1));
    let whole = audio.samples.len() - audio.samples.len() % usize::from(audio.channels.max(1));
    for chunk in audio.samples[..whole].chunks(block) {
        meter.add_frames_f32(chunk).map_err(internal)?;
    }
    let integrated = meter.loudness_global().map_err(internal)?;
    let range = meter.loudness_range().map_err(internal)?;
    let mut true_peak = 0.0f64;
    let mut sample_peak = 0.0f64;
    for ch in 0..channels {
        true_peak = true_peak.max(meter.true_peak(ch).map_err(internal)?);
        sample_peak = sample_peak.max(meter.sample_peak(ch).map_err(internal)?);
    }
    let metadata = json!({
        // Below the absolute gate (-70 LUFS) nothing is measurable: null, not -inf.
        "integrated_lufs": integrated.is_finite().then(|| round2(integrated)),
        "range_lu": if range.is_finite() { round2(range) } else { 0.0 },
        "true_peak_dbtp": db(true_peak),
        "sample_peak_dbfs": db(sample_peak),
        "standard": "EBU R128 / ITU-R BS.1770-4",
    });
    Ok(Rendered { metadata, files: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::sine;

    fn measure(audio: &Audio) -> serde_json::Value {
        render(audio).expect("measures").metadata
    }

    fn lufs(samples: Vec<f32>, channels: u16, rate: u32) -> f64 {
        measure(&Audio { sample_rate: rate, channels, samples })["integrated_lufs"].as_f64().expect("lufs")
    }

    /// A 1 kHz stereo sine whose peak is `dbfs`, at 48 kHz (the Tech 3341 signals).
    fn stereo_sine(secs: f64, dbfs: f64) -> Vec<f32> {
        sine(48_000, 2, secs, 1000.0, 10f64.powf(dbfs / 20.0))
    }

    fn concat(parts: &[(f64, f64)]) -> Vec<f32> {
        parts.iter().flat_map(|&(secs, dbfs)| stereo_sine(secs, dbfs)).collect()
    }

    /// EBU Tech 3341 cases 1 and 2: a 1 kHz stereo sine reads its level in dBFS as LUFS.
    #[test]
    fn tech_3341_cases_1_and_2_steady_sines() {
        for level in [-23.0, -33.0] {
            let read = lufs(stereo_sine(20.0, level), 2, 48_000);
            assert!((read - level).abs() <= 0.1, "{level} dBFS sine read {read} LUFS");
        }
        // The same at 44.1 kHz: the K-weighting filter is computed for the rate.
        let read = lufs(sine(44_100, 2, 20.0, 1000.0, 10f64.powf(-23.0 / 20.0)), 2, 44_100);
        assert!((read + 23.0).abs() <= 0.1, "44.1 kHz read {read}");
    }

    /// Tech 3341 case 3: 10 s at -36, 60 s at -23, 10 s at -36 dBFS; the relative gate removes
    /// the quiet parts.
    #[test]
    fn tech_3341_case_3_relative_gate() {
        let read = lufs(concat(&[(10.0, -36.0), (60.0, -23.0), (10.0, -36.0)]), 2, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "read {read}");
    }

    /// Tech 3341 case 4: -72 / -36 / -23 / -36 / -72 dBFS; the absolute gate removes -72.
    #[test]
    fn tech_3341_case_4_absolute_and_relative_gates() {
        let read =
            lufs(concat(&[(10.0, -72.0), (10.0, -36.0), (60.0, -23.0), (10.0, -36.0), (10.0, -72.0)]), 2, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "read {read}");
    }

    /// Tech 3341 case 5: -26 / -20 / -26 dBFS for 20 / 20.1 / 20 s; nothing is gated, and the
    /// power mean is -23 LUFS.
    #[test]
    fn tech_3341_case_5_power_mean() {
        let read = lufs(concat(&[(20.0, -26.0), (20.1, -20.0), (20.0, -26.0)]), 2, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "read {read}");
    }

    /// 20 s at -36, 20 s at -23, 20 s at -36 dBFS: unlike case 3, the quiet parts are two thirds
    /// of the signal, so the relative gate (10 LU under the ungated mean of -27.4) keeps them.
    /// The integrated loudness is the power mean of all three, not -23.
    #[test]
    fn equal_thirds_are_not_gated() {
        let power = |db: f64| 10f64.powf(db / 10.0);
        let expected = 10.0 * ((2.0 * power(-36.0) + power(-23.0)) / 3.0).log10();
        let read = lufs(concat(&[(20.0, -36.0), (20.0, -23.0), (20.0, -36.0)]), 2, 48_000);
        assert!((read - expected).abs() <= 0.1, "read {read}, expected {expected:.2}");
        assert!((expected + 27.4).abs() < 0.05);
    }

    /// EBU Tech 3342 case 1 shape: 20 s at -20 then 20 s at -30 dBFS is a 10 LU range.
    #[test]
    fn tech_3342_loudness_range() {
        let m = measure(&Audio { sample_rate: 48_000, channels: 2, samples: concat(&[(20.0, -20.0), (20.0, -30.0)]) });
        let lra = m["range_lu"].as_f64().expect("lra");
        assert!((lra - 10.0).abs() <= 1.0, "range {lra}");
    }

    /// Tech 3341 case 16 shape: a 0.5-amplitude sine at fs/4 sampled at 45° of phase never puts a
    /// sample on its crest. The sample peak is 3 dB low; the true peak (4× oversampled) is not.
    #[test]
    fn true_peak_sees_between_the_samples() {
        let samples: Vec<f32> = (0..48_000 * 2)
            .map(|i| (0.5 * (std::f64::consts::FRAC_PI_2 * (i / 2) as f64 + std::f64::consts::FRAC_PI_4).sin()) as f32)
            .collect();
        let m = measure(&Audio { sample_rate: 48_000, channels: 2, samples });
        let tp = m["true_peak_dbtp"].as_f64().expect("tp");
        let sp = m["sample_peak_dbfs"].as_f64().expect("sp");
        // Tech 3341's tolerance for true peak is +0.2 / -0.4 dB.
        assert!((-6.42..=-5.82).contains(&tp), "true peak {tp}");
        assert!((sp + 9.03).abs() < 0.01, "sample peak {sp}");
    }

    #[test]
    fn mono_reads_like_the_same_audio_in_stereo() {
        let mono = sine(48_000, 1, 20.0, 1000.0, 10f64.powf(-23.0 / 20.0));
        let read = lufs(mono, 1, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "dual mono read {read}");
    }

    #[test]
    fn surround_layouts_weight_their_channels() {
        let amp = 10f64.powf(-23.0 / 20.0);
        let tone = sine(48_000, 1, 20.0, 1000.0, amp);
        let layout = |channels: u16, live: &[usize]| -> Vec<f32> {
            tone.iter()
                .flat_map(|s| (0..usize::from(channels)).map(move |c| if live.contains(&c) { *s } else { 0.0 }))
                .collect()
        };
        // 5.1, tone in L and R: exactly the stereo reading.
        let read = lufs(layout(6, &[0, 1]), 6, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "5.1 front {read}");
        // 5.1, tone in LFE only: ignored, nothing above the absolute gate.
        let m = measure(&Audio { sample_rate: 48_000, channels: 6, samples: layout(6, &[3]) });
        assert!(m["integrated_lufs"].is_null(), "{m}");
        // 5.1, tone in the surrounds: +1.5 dB each.
        let read = lufs(layout(6, &[4, 5]), 6, 48_000);
        assert!((read + 21.5).abs() <= 0.1, "5.1 surround {read}");
        // 7.1, tone in the side pair: surround-weighted too, not dropped.
        let read = lufs(layout(8, &[6, 7]), 8, 48_000);
        assert!((read + 21.5).abs() <= 0.1, "7.1 side {read}");
        // Four channels: libebur128's quad layout (L R Ls Rs).
        let read = lufs(layout(4, &[0, 1]), 4, 48_000);
        assert!((read + 23.0).abs() <= 0.1, "quad front {read}");
    }

    #[test]
    fn silence_and_short_input_give_nulls_not_errors() {
        let m = measure(&Audio { sample_rate: 44_100, channels: 2, samples: vec![0.0; 44_100 * 2] });
        assert!(m["integrated_lufs"].is_null() && m["true_peak_dbtp"].is_null(), "{m}");
        assert_eq!(m["range_lu"].as_f64(), Some(0.0));
        // Shorter than one 400 ms gating block.
        let m = measure(&Audio { sample_rate: 44_100, channels: 2, samples: sine(44_100, 2, 0.1, 1000.0, 0.5) });
        assert!(m["integrated_lufs"].is_null(), "{m}");
        assert!(m["sample_peak_dbfs"].as_f64().is_some(), "{m}");
    }
}
