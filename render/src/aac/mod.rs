//! `aac128`: the preview/download derivative, 128 kb/s AAC-LC in an M4A (docs/architecture.md, section 5).
//!
//! Exists because the store serves every catalog track as AAC that must start playing before it is
//! fully downloaded and play gaplessly: encoded with fdk-aac (afterburner on, constant bitrate, as
//! the `fdkaac` tool uses it) and muxed with `moov` before `mdat`, an edit list that skips the
//! encoder's priming samples and lasts exactly the source length, and the equivalent iTunSMPB tag.
//!
//! Mono and stereo are encoded as they are; wider input is downmixed to stereo. Sample rates are
//! those AAC-LC defines (8–96 kHz); others are refused as unsupported (resample upstream).

#[allow(unsafe_code)]
mod fdk;
mod mp4;

use serde_json::json;

use crate::{Audio, Error, OutputFile, Rendered};

pub(crate) const NAME: &str = "aac128";
/// Requested bitrate; fdk lowers it only where a rate/channel pair cannot carry it (≤ 16 kHz).
const BITRATE: u32 = 128_000;
const FILE_NAME: &str = "aac128.m4a";
const CONTENT_TYPE: &str = "audio/mp4";
/// Sampling frequencies of the AAC-LC sampling-frequency table that fdk's encoder accepts.
const SAMPLE_RATES: [u32; 12] = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000];
/// Flush calls that may return no access unit before we call the encoder stuck.
const MAX_IDLE_CALLS: usize = 64;

/// Encodes `audio` to `aac128.m4a`.
pub fn render(audio: &Audio) -> Result<Rendered, Error> {
    if audio.channels == 0 {
        return Err(unsupported("the input has no channels".into()));
    }
    if !SAMPLE_RATES.contains(&audio.sample_rate) {
        return Err(unsupported(format!(
            "AAC-LC has no {} Hz sampling rate (supported: {SAMPLE_RATES:?})",
            audio.sample_rate
        )));
    }
    let source_frames = audio.frames();
    if source_frames == 0 {
        return Err(Error::Empty("no audio samples to encode".into()));
    }

    let in_channels = usize::from(audio.channels);
    let out_channels = audio.channels.min(2);
    let mut encoder =
        fdk::Encoder::new(fdk::Settings { sample_rate: audio.sample_rate, channels: out_channels, bitrate: BITRATE })
            .map_err(|e| internal(e.to_string()))?;
    let info = encoder.info().clone();
    let frame_length = info.frame_length;
    let delay = info.delay;

    // Every buffer is sized before the loop: the per-frame path only copies.
    let expected_units = (source_frames + delay as usize).div_ceil(frame_length) + 2;
    let mean_unit_bytes = (info.bitrate as usize / 8) * frame_length / audio.sample_rate as usize + 1;
    // CBR stays within the mean plus the bit reservoir (6144 bits per channel).
    let mut payload = Vec::with_capacity(expected_units * mean_unit_bytes + 2 * info.max_out_bytes);
    let mut sizes: Vec<u32> = Vec::with_capacity(expected_units);
    let mut pcm = vec![0i16; frame_length * usize::from(out_channels)];
    let mut unit = vec![0u8; info.max_out_bytes];
    let downmix = Downmix::new(in_channels);

    let whole = &audio.samples[..source_frames * in_channels];
    for block in whole.chunks(frame_length * in_channels) {
        let filled = downmix.convert(block, &mut pcm);
        let mut offset = 0;
        while offset < filled {
            let step = encoder.encode(&pcm[offset..filled], &mut unit).map_err(|e| internal(e.to_string()))?;
            push_unit(&unit[..step.written], &mut payload, &mut sizes)?;
            if step.consumed == 0 && step.written == 0 {
                return Err(internal("the encoder took no input and produced nothing".into()));
            }
            offset += step.consumed;
        }
    }
    let mut idle = 0;
    while let Some(written) = encoder.flush(&mut unit).map_err(|e| internal(e.to_string()))? {
        push_unit(&unit[..written], &mut payload, &mut sizes)?;
        idle = if written == 0 { idle + 1 } else { 0 };
        if idle > MAX_IDLE_CALLS {
            return Err(internal("the encoder did not finish flushing".into()));
        }
    }
    drop(encoder);

    let media_frames = sizes.len() as u64 * frame_length as u64;
    if media_frames < source_frames as u64 + u64::from(delay) {
        return Err(internal(format!(
            "the encoder emitted {media_frames} samples, fewer than the {source_frames} of the source plus {delay} of delay"
        )));
    }
    let track = mp4::Track {
        sample_rate: audio.sample_rate,
        channels: out_channels,
        frame_length: frame_length as u32,
        delay,
        source_frames: source_frames as u64,
        sizes: &sizes,
        payload: &payload,
        audio_specific_config: &info.audio_specific_config,
        encoder: "Kiln aac128 (Fraunhofer FDK AAC)",
    };
    let bytes = mp4::write_m4a(&track).map_err(internal)?;

    let metadata = json!({
        "codec": "aac-lc",
        "bitrate": info.bitrate,
        "sample_rate": audio.sample_rate,
        "channels": out_channels,
        "duration_secs": audio.duration_secs(),
        "encoder_delay": delay,
        "frames": sizes.len(),
        "bytes": bytes.len(),
    });
    Ok(Rendered { metadata, files: vec![OutputFile { name: FILE_NAME.into(), content_type: CONTENT_TYPE, bytes }] })
}

fn push_unit(unit: &[u8], payload: &mut Vec<u8>, sizes: &mut Vec<u32>) -> Result<(), Error> {
    if unit.is_empty() {
        return Ok(());
    }
    let size = u32::try_from(unit.len()).map_err(|_| internal("access unit too large".into()))?;
    payload.extend_from_slice(unit);
    sizes.push(size);
    Ok(())
}

fn internal(reason: String) -> Error {
    Error::Internal { renderer: NAME.into(), reason }
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported { renderer: NAME.into(), reason }
}

/// f32 in [-1, 1] to 16-bit PCM, rounding half away from zero; `as` saturates out-of-range values
/// and maps NaN to 0. (Branch-free: no `roundf` call on CPUs without SSE4.1.)
#[inline]
fn to_i16(x: f32) -> i16 {
    let y = x * 32768.0;
    (y + 0.5f32.copysign(y)) as i16
}

/// Interleaved input channels to the encoder's 1 or 2, as 16-bit PCM.
///
/// More than two channels are assumed to be in WAVE order for their count (3: L R C; 4: L R Ls Rs;
/// 5: L R C Ls Rs; 6: 5.1; 7: 6.1; 8: 7.1) and mixed ITU-style (centre and surrounds at −3 dB, LFE
/// dropped), then scaled so that full-scale input on every channel cannot clip.
struct Downmix {
    in_channels: usize,
    /// (left gain, right gain) per input channel, only for more than two channels.
    gains: Vec<(f32, f32)>,
}

impl Downmix {
    fn new(in_channels: usize) -> Self {
        if in_channels <= 2 {
            return Downmix { in_channels, gains: Vec::new() };
        }
        const H: f32 = std::f32::consts::FRAC_1_SQRT_2;
        let (l, r, c, lfe, ls, rs, bc) = ((1.0, 0.0), (0.0, 1.0), (H, H), (0.0, 0.0), (H, 0.0), (0.0, H), (0.5, 0.5));
        let layout: &[(f32, f32)] = match in_channels {
            3 => &[l, r, c],
            4 => &[l, r, ls, rs],
            5 => &[l, r, c, ls, rs],
            6 => &[l, r, c, lfe, ls, rs],
            7 => &[l, r, c, lfe, bc, ls, rs],
            _ => &[l, r, c, lfe, ls, rs, ls, rs],
        };
        // Channels beyond a known layout go to both sides at −6 dB.
        let mut gains: Vec<(f32, f32)> = (0..in_channels).map(|i| layout.get(i).copied().unwrap_or(bc)).collect();
        let left: f32 = gains.iter().map(|g| g.0).sum();
        let right: f32 = gains.iter().map(|g| g.1).sum();
        let norm = 1.0 / left.max(right).max(1.0);
        for g in &mut gains {
            g.0 *= norm;
            g.1 *= norm;
        }
        Downmix { in_channels, gains }
    }

    /// Converts whole input frames of `block` into `out`; returns the number of samples written.
    fn convert(&self, block: &[f32], out: &mut [i16]) -> usize {
        if self.gains.is_empty() {
            let n = block.len().min(out.len());
            for (o, &x) in out[..n].iter_mut().zip(&block[..n]) {
                *o = to_i16(x);
            }
            return n;
        }
        let mut n = 0;
        for (frame, pair) in block.chunks_exact(self.in_channels).zip(out.chunks_exact_mut(2)) {
            let (mut left, mut right) = (0.0f32, 0.0f32);
            for (&x, &(gl, gr)) in frame.iter().zip(&self.gains) {
                left += x * gl;
                right += x * gr;
            }
            pair[0] = to_i16(left);
            pair[1] = to_i16(right);
            n += 2;
        }
        n
    }
}
