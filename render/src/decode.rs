//! Decoding masters with symphonia: the one place where untrusted bytes become PCM.
//!
//! A master is decoded once per task and shared by every renderer, so this module is also where
//! hostile or broken input is turned into a clear, permanent error instead of a crash or a retry
//! loop: not audio, corrupt, truncated, empty, silent, too large, too long. Every error names the
//! numbers involved (what the header promised, what the file held, which limit was hit).

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{self, CodecParameters, CodecType, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::{Audio, Error};

/// Refusal thresholds for one master. Defaults suit full-length tracks and DJ mixes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeLimits {
    /// Largest master accepted, checked before any parsing.
    pub max_bytes: u64,
    /// Longest master accepted, checked from the header when it states a length and while
    /// decoding otherwise (so a headerless stream cannot grow the PCM without bound).
    pub max_duration_secs: f64,
    /// Most bytes of decoded PCM (4 per sample per channel), checked from the header when it
    /// states a length and while decoding: a small compressed file (a FLAC of constant
    /// subframes, say) can otherwise expand to more memory than the machine has long before it
    /// reaches the duration limit.
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // One hour of stereo at 96 kHz is 2.8 GB of PCM.
        Self { max_bytes: 2 << 30, max_duration_secs: 3600.0, max_decoded_bytes: 3 << 30 }
    }
}

/// Bytes one decoded sample takes (f32).
const SAMPLE_BYTES: u64 = 4;

/// Samples below this magnitude everywhere (about -90 dBFS) mean a silent master: nothing to
/// measure, and almost always a broken export rather than intended content.
const SILENCE: f32 = 3.2e-5;

/// A compressed file whose decoded length falls short of its header by more than this is
/// truncated. The slack absorbs encoder delay and padding that container headers count
/// differently (MP3 Xing/LAME frames, FLAC's last block). PCM has no such excuse: a PCM file
/// missing a single frame is truncated.
const TRUNCATION_SLACK_FRAMES: u64 = 4_096;

/// Decoding stops after this many consecutive corrupt packets: a damaged file, not a glitch.
const MAX_DECODE_ERRORS: usize = 16;

/// Highest sample rate and channel count accepted. Masters are stereo at 44.1–192 kHz; the caps
/// keep the decoded PCM (rate × channels × duration limit) within reach of a worker's memory.
const MAX_SAMPLE_RATE: u32 = 384_000;
const MAX_CHANNELS: usize = 16;

fn undecodable(what: impl std::fmt::Display) -> Error {
    Error::Undecodable(what.to_string())
}

/// Decodes `bytes` (WAV, AIFF, FLAC or MP3; `hint` is the file extension, if known) into
/// interleaved f32 PCM in [-1, 1], enforcing `limits`.
///
/// Every failure is a permanent [`Error`]: not audio or corrupt ([`Error::Undecodable`]),
/// truncated ([`Error::Undecodable`] naming the promised and the actual frame counts), no frames
/// or silent ([`Error::Empty`]), too large or too long ([`Error::TooLarge`]).
pub fn decode(bytes: &[u8], hint: Option<&str>, limits: &DecodeLimits) -> Result<Audio, Error> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(Error::TooLarge {
            what: "master size",
            actual: format!("{} bytes", bytes.len()),
            limit: format!("{} bytes", limits.max_bytes),
        });
    }
    if bytes.is_empty() {
        return Err(Error::Empty("the master is a zero-byte file".into()));
    }
    // symphonia is hardened but not fuzz-proof; a panic inside a demuxer on hostile bytes must
    // become a dead letter for this master, not a dead render thread.
    match catch_unwind(AssertUnwindSafe(|| decode_unchecked(bytes, hint, limits))) {
        Ok(result) => result,
        Err(_) => Err(undecodable("corrupt audio data: the decoder gave up on this file (internal panic)")),
    }
}

/// symphonia's uncompressed PCM codecs: their headers state the exact sample count.
const PCM_CODECS: &[CodecType] = &[
    codecs::CODEC_TYPE_PCM_S32LE,
    codecs::CODEC_TYPE_PCM_S32LE_PLANAR,
    codecs::CODEC_TYPE_PCM_S32BE,
    codecs::CODEC_TYPE_PCM_S32BE_PLANAR,
    codecs::CODEC_TYPE_PCM_S24LE,
    codecs::CODEC_TYPE_PCM_S24LE_PLANAR,
    codecs::CODEC_TYPE_PCM_S24BE,
    codecs::CODEC_TYPE_PCM_S24BE_PLANAR,
    codecs::CODEC_TYPE_PCM_S16LE,
    codecs::CODEC_TYPE_PCM_S16LE_PLANAR,
    codecs::CODEC_TYPE_PCM_S16BE,
    codecs::CODEC_TYPE_PCM_S16BE_PLANAR,
    codecs::CODEC_TYPE_PCM_S8,
    codecs::CODEC_TYPE_PCM_S8_PLANAR,
    codecs::CODEC_TYPE_PCM_U32LE,
    codecs::CODEC_TYPE_PCM_U32LE_PLANAR,
    codecs::CODEC_TYPE_PCM_U32BE,
    codecs::CODEC_TYPE_PCM_U32BE_PLANAR,
    codecs::CODEC_TYPE_PCM_U24LE,
    codecs::CODEC_TYPE_PCM_U24LE_PLANAR,
    codecs::CODEC_TYPE_PCM_U24BE,
    codecs::CODEC_TYPE_PCM_U24BE_PLANAR,
    codecs::CODEC_TYPE_PCM_U16LE,
    codecs::CODEC_TYPE_PCM_U16LE_PLANAR,
    codecs::CODEC_TYPE_PCM_U16BE,
    codecs::CODEC_TYPE_PCM_U16BE_PLANAR,
    codecs::CODEC_TYPE_PCM_U8,
    codecs::CODEC_TYPE_PCM_U8_PLANAR,
    codecs::CODEC_TYPE_PCM_F32LE,
    codecs::CODEC_TYPE_PCM_F32LE_PLANAR,
    codecs::CODEC_TYPE_PCM_F32BE,
    codecs::CODEC_TYPE_PCM_F32BE_PLANAR,
    codecs::CODEC_TYPE_PCM_F64LE,
    codecs::CODEC_TYPE_PCM_F64LE_PLANAR,
    codecs::CODEC_TYPE_PCM_F64BE,
    codecs::CODEC_TYPE_PCM_F64BE_PLANAR,
    codecs::CODEC_TYPE_PCM_ALAW,
    codecs::CODEC_TYPE_PCM_MULAW,
];

fn is_pcm(codec: CodecType) -> bool {
    PCM_CODECS.contains(&codec)
}

/// Bytes of sample data a PCM header promises, when the header says enough to know.
fn pcm_bytes_promised(params: &CodecParameters, frames: u64, channels: Option<u64>) -> Option<u64> {
    if !is_pcm(params.codec) {
        return None;
    }
    let bytes_per_sample = u64::from(params.bits_per_coded_sample.or(params.bits_per_sample)?).div_ceil(8);
    frames.checked_mul(channels?)?.checked_mul(bytes_per_sample)
}

fn decode_unchecked(bytes: &[u8], hint: Option<&str>, limits: &DecodeLimits) -> Result<Audio, Error> {
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), MediaSourceStreamOptions::default());
    let mut probe_hint = Hint::new();
    if let Some(ext) = hint {
        probe_hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(&probe_hint, source, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| undecodable(format!("not a recognised audio format (WAV, AIFF, FLAC, MP3): {e}")))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| undecodable("the file has no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate = params.sample_rate.ok_or_else(|| undecodable("the header gives no sample rate"))?;
    if sample_rate == 0 || sample_rate > MAX_SAMPLE_RATE {
        return Err(undecodable(format!(
            "implausible sample rate {sample_rate} Hz (accepted: 1 to {MAX_SAMPLE_RATE} Hz)"
        )));
    }
    let header_channels = params.channels.map(|c| c.count());
    if let Some(c) = header_channels {
        if c == 0 || c > MAX_CHANNELS {
            return Err(undecodable(format!("implausible channel count {c} (accepted: 1 to {MAX_CHANNELS})")));
        }
    }
    let promised_frames = params.n_frames;
    let pcm = is_pcm(params.codec);
    if let Some(frames) = promised_frames {
        // A PCM header that promises more sample data than the whole file holds is a truncated
        // file (or a lying header), whatever duration it claims: say so before decoding.
        if let Some(promised) = pcm_bytes_promised(&params, frames, header_channels.map(|c| c as u64)) {
            // Mildly short files are decoded instead, so the error can give the exact count.
            if promised > (bytes.len() as u64).saturating_mul(2) {
                let frame_bytes = (promised / frames.max(1)).max(1);
                let held = (bytes.len() as u64) / frame_bytes;
                return Err(truncated(frames, held, sample_rate, true));
            }
        }
        let secs = frames as f64 / f64::from(sample_rate);
        if secs > limits.max_duration_secs {
            return Err(too_long(secs, limits));
        }
        if let Some(c) = header_channels {
            let decoded = frames.saturating_mul(c as u64).saturating_mul(SAMPLE_BYTES);
            if decoded > limits.max_decoded_bytes {
                return Err(too_big(decoded, limits));
            }
        }
    }
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| undecodable(format!("unsupported codec: {e}")))?;

    let mut channels = header_channels;
    let mut samples: Vec<f32> = match (promised_frames, channels) {
        // Reserve what the header promises, within the byte limit's reach.
        (Some(f), Some(c)) => Vec::with_capacity((f as usize).saturating_mul(c).min(bytes.len().saturating_mul(2))),
        _ => Vec::new(),
    };
    let max_frames = (limits.max_duration_secs * f64::from(sample_rate)) as usize;
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut errors_in_a_row = 0usize;
    let mut ended_early = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                ended_early = Some(e.to_string());
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                errors_in_a_row = 0;
                let spec = *decoded.spec();
                let count = spec.channels.count();
                match channels {
                    Some(c) if c != count => {
                        return Err(undecodable(format!("channel count changes mid-stream ({c} → {count})")));
                    }
                    _ if count == 0 || count > MAX_CHANNELS => {
                        return Err(undecodable(format!(
                            "implausible channel count {count} (accepted: 1 to {MAX_CHANNELS})"
                        )));
                    }
                    _ => channels = Some(count),
                }
                let needed = decoded.capacity() as u64;
                let buf = match &mut buffer {
                    Some(b) if b.capacity() as u64 >= needed * count as u64 => b,
                    _ => buffer.insert(SampleBuffer::new(needed, spec)),
                };
                buf.copy_interleaved_ref(decoded);
                samples.extend_from_slice(buf.samples());
                if samples.len() / count > max_frames {
                    let secs = samples.len() as f64 / count as f64 / f64::from(sample_rate);
                    return Err(too_long(secs, limits));
                }
                let decoded = (samples.len() as u64).saturating_mul(SAMPLE_BYTES);
                if decoded > limits.max_decoded_bytes {
                    return Err(too_big(decoded, limits));
                }
            }
            Err(SymphoniaError::DecodeError(e)) => {
                errors_in_a_row += 1;
                if errors_in_a_row >= MAX_DECODE_ERRORS {
                    return Err(undecodable(format!(
                        "corrupt audio data: {e} ({MAX_DECODE_ERRORS} bad packets in a row)"
                    )));
                }
            }
            Err(e) => return Err(undecodable(format!("decoding failed: {e}"))),
        }
    }
    let channels = channels.filter(|c| *c > 0).ok_or_else(|| undecodable("the header gives no channel layout"))?;
    let frames = (samples.len() / channels) as u64;
    if frames == 0 {
        return Err(match ended_early {
            Some(reason) => undecodable(format!("no audio could be decoded: {reason}")),
            None => Error::Empty("the master holds no audio frames".into()),
        });
    }
    if let Some(promised) = promised_frames {
        let slack = if pcm { 0 } else { TRUNCATION_SLACK_FRAMES };
        if promised.saturating_sub(frames) > slack {
            return Err(truncated(promised, frames, sample_rate, false));
        }
    }
    if let Some(reason) = ended_early {
        return Err(undecodable(format!("the stream breaks off after {frames} frames: {reason}")));
    }
    // Silence is judged before sanitising: NaN from damaged data is not silence.
    if samples.iter().all(|s| s.abs() < SILENCE) {
        return Err(Error::Empty(format!(
            "the master is silent ({:.1} s, every sample below -90 dBFS)",
            frames as f64 / f64::from(sample_rate)
        )));
    }
    // Decoders can emit NaN or huge values from damaged data; renderers expect [-1, 1].
    for s in &mut samples {
        *s = if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 };
    }
    let channels = u16::try_from(channels).map_err(|_| undecodable(format!("implausible channel count {channels}")))?;
    Ok(Audio { sample_rate, channels, samples })
}

fn truncated(promised: u64, held: u64, sample_rate: u32, from_size: bool) -> Error {
    undecodable(format!(
        "truncated: the header promises {promised} frames ({:.1} s), the file holds {}{held} ({:.1} s)",
        promised as f64 / f64::from(sample_rate),
        if from_size { "at most " } else { "" },
        held as f64 / f64::from(sample_rate)
    ))
}

fn too_big(decoded: u64, limits: &DecodeLimits) -> Error {
    Error::TooLarge {
        what: "decoded audio",
        actual: format!("at least {decoded} bytes of PCM"),
        limit: format!("{} bytes (max_decoded_bytes)", limits.max_decoded_bytes),
    }
}

fn too_long(secs: f64, limits: &DecodeLimits) -> Error {
    Error::TooLarge {
        what: "duration",
        actual: format!("{secs:.0} s"),
        limit: format!("{:.0} s", limits.max_duration_secs),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 16-bit PCM WAV of `samples` (interleaved), for tests.
    pub(crate) fn wav(sample_rate: u32, channels: u16, samples: &[f32]) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + samples.len() * 2);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&sample_rate.to_le_bytes());
        out.extend_from_slice(&(sample_rate * u32::from(channels) * 2).to_le_bytes());
        out.extend_from_slice(&(channels * 2).to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
        }
        out
    }

    pub(crate) fn sine(sample_rate: u32, channels: u16, secs: f64, freq: f64, amp: f64) -> Vec<f32> {
        let n = (f64::from(sample_rate) * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let v = (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(sample_rate)).sin()) as f32;
                std::iter::repeat_n(v, usize::from(channels))
            })
            .collect()
    }

    #[test]
    fn a_wav_decodes_to_the_samples_written() {
        let src = sine(44_100, 2, 1.0, 440.0, 0.5);
        let audio = decode(&wav(44_100, 2, &src), Some("wav"), &DecodeLimits::default()).expect("decodes");
        assert_eq!((audio.sample_rate, audio.channels, audio.frames()), (44_100, 2, 44_100));
        let max_err = audio.samples.iter().zip(&src).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_err < 1.0 / 16_000.0, "16-bit quantisation only: {max_err}");
    }

    #[test]
    fn hostile_input_is_a_permanent_error_not_a_panic() {
        let limits = DecodeLimits::default();
        let mut noise = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..10_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            noise.push((x >> 16) as u8);
        }
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("text", b"this is not audio at all".to_vec()),
            ("noise", noise),
            ("riff header only", b"RIFF\x10\x00\x00\x00WAVEthis is not audio at all".to_vec()),
        ] {
            let err = decode(&bytes, Some("wav"), &limits).expect_err(name);
            assert!(err.is_permanent(), "{name}: {err}");
        }
    }

    #[test]
    fn truncation_is_reported_with_both_lengths() {
        let full = wav(22_050, 1, &sine(22_050, 1, 4.0, 220.0, 0.5));
        let cut = &full[..full.len() / 2];
        let err = decode(cut, Some("wav"), &DecodeLimits::default()).expect_err("truncated");
        let text = err.to_string();
        assert!(text.contains("truncated") && text.contains("88200"), "{text}");
    }

    /// A deterministic xorshift byte stream for hostile-input tests.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_zero_length_master_is_empty() {
        let err = decode(&[], Some("wav"), &DecodeLimits::default()).expect_err("empty");
        assert!(matches!(err, Error::Empty(_)) && err.to_string().contains("zero-byte"), "{err}");
    }

    #[test]
    fn random_bytes_are_not_audio() {
        for (seed, hint) in [(1, None), (2, Some("wav")), (3, Some("flac")), (4, Some("aiff")), (5, Some("txt"))] {
            let err = decode(&noise(64 * 1024, seed), hint, &DecodeLimits::default()).expect_err("noise");
            assert!(matches!(err, Error::Undecodable(_) | Error::Empty(_)), "{hint:?}: {err}");
        }
        let err = decode(b"hello, I am a text file", None, &DecodeLimits::default()).expect_err("text");
        assert!(err.to_string().contains("not a recognised audio format"), "{err}");
    }

    #[test]
    fn a_wav_header_with_absurd_sizes_is_truncated_not_too_long() {
        // The header claims 4 GiB of 16-bit stereo (6.8 hours), the file holds one second.
        let mut bytes = wav(44_100, 2, &sine(44_100, 2, 1.0, 440.0, 0.5));
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[40..44].copy_from_slice(&(u32::MAX - 64).to_le_bytes());
        let err = decode(&bytes, Some("wav"), &DecodeLimits::default()).expect_err("absurd");
        let text = err.to_string();
        assert!(
            matches!(err, Error::Undecodable(_)) && text.contains("truncated") && text.contains("1073741807 frames"),
            "{text}"
        );
        assert!(text.contains("at most 44111"), "{text}");

        // Absurd format fields: zero channels, an enormous sample rate, a zero block size.
        for (offset, value) in [(22usize, 0u32), (24, 4_000_000_000), (32, 0)] {
            let mut bytes = wav(8_000, 1, &sine(8_000, 1, 0.5, 440.0, 0.5));
            match offset {
                22 | 32 => bytes[offset..offset + 2].copy_from_slice(&(value as u16).to_le_bytes()),
                _ => bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes()),
            }
            let err = decode(&bytes, Some("wav"), &DecodeLimits::default()).expect_err("absurd field");
            assert!(err.is_permanent(), "offset {offset}: {err}");
        }
    }

    #[test]
    fn a_pcm_file_missing_its_last_frames_is_truncated() {
        let full = wav(8_000, 2, &sine(8_000, 2, 1.0, 440.0, 0.5));
        // Cut 100 frames (400 bytes) off the end: less than the file's header promises.
        let err = decode(&full[..full.len() - 400], Some("wav"), &DecodeLimits::default()).expect_err("cut");
        let text = err.to_string();
        assert!(text.contains("promises 8000 frames") && text.contains("holds 7900"), "{text}");
    }

    #[test]
    fn flipped_bytes_never_panic() {
        // Mutate a valid WAV (header and data) many ways: every outcome is audio or an error.
        let base = wav(8_000, 2, &sine(8_000, 2, 0.25, 440.0, 0.5));
        let flips = noise(4 * 400, 9);
        for m in flips.chunks(4) {
            let mut bytes = base.clone();
            let at = usize::from(m[0]) % 64 + if m[1] & 1 == 1 { usize::from(m[2]) * 8 } else { 0 };
            let last = bytes.len() - 1;
            bytes[at.min(last)] = m[3];
            match decode(&bytes, Some("wav"), &DecodeLimits::default()) {
                Ok(audio) => assert!(audio.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0)),
                Err(err) => assert!(!err.to_string().contains("panic"), "{err}"),
            }
        }
    }

    fn crc8(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |mut crc, b| {
            crc ^= b;
            for _ in 0..8 {
                crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x07 } else { crc << 1 };
            }
            crc
        })
    }

    fn crc16(bytes: &[u8]) -> u16 {
        bytes.iter().fold(0u16, |mut crc, b| {
            crc ^= u16::from(*b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x8005 } else { crc << 1 };
            }
            crc
        })
    }

    /// A FLAC bomb: stereo 16-bit 44.1 kHz, no length in its header, `frames` frames of 65,535
    /// samples whose subframes are CONSTANT (three bytes each). 1.5 KB expands to 52 MB of PCM.
    fn flac_of_constant_frames(frames: u8) -> Vec<u8> {
        let mut out = b"fLaC".to_vec();
        out.extend_from_slice(&[0x80, 0, 0, 34]); // the last metadata block: STREAMINFO, 34 bytes
        out.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // min and max block size: 65535
        out.extend_from_slice(&[0; 6]); // min and max frame size: unknown
                                        // 20 bits of sample rate (44100), 3 of channels - 1 (1), 5 of bits - 1 (15), 36 of total
                                        // samples (0: unknown), then the MD5 (zeros: unknown).
        let packed: u64 = (44_100u64 << 44) | (1 << 41) | (15 << 36);
        out.extend_from_slice(&packed.to_be_bytes());
        out.extend_from_slice(&[0; 16]);
        for n in 0..frames.min(127) {
            // Sync, fixed blocking; block size from the 16 bits at the end of the header; rate
            // from STREAMINFO; two independent channels; 16 bits; frame number `n`.
            let mut frame = vec![0xff, 0xf8, 0x70, 0x18, n, 0xff, 0xfe];
            frame.push(crc8(&frame));
            for value in [0x1000u16, 0xf000] {
                frame.push(0x00); // a CONSTANT subframe, no wasted bits
                frame.extend_from_slice(&value.to_be_bytes());
            }
            let crc = crc16(&frame);
            frame.extend_from_slice(&crc.to_be_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn decoded_audio_is_capped_from_the_header_and_while_decoding() {
        let limits = DecodeLimits { max_decoded_bytes: 10 << 20, ..DecodeLimits::default() };
        // The header states the length: refused before decoding.
        let long = wav(44_100, 2, &sine(44_100, 2, 40.0, 440.0, 0.5));
        let err = decode(&long, Some("wav"), &limits).expect_err("over the cap");
        assert!(matches!(err, Error::TooLarge { what: "decoded audio", .. }), "{err}");
        assert!(err.to_string().contains("14112000 bytes"), "{err}");

        // No length in the header: stopped while decoding, once past the cap.
        let bomb = flac_of_constant_frames(100);
        assert!(bomb.len() < 2_000, "{} bytes", bomb.len());
        let err = decode(&bomb, Some("flac"), &limits).expect_err("a FLAC bomb");
        assert!(matches!(err, Error::TooLarge { what: "decoded audio", .. }), "{err}");
        // The same stream, short enough, decodes: the cap is what stopped it.
        let small = decode(&flac_of_constant_frames(2), Some("flac"), &limits).expect("two frames decode");
        assert_eq!((small.channels, small.frames()), (2, 2 * 65_535));
    }

    #[test]
    fn silence_and_limits_are_refused_with_numbers() {
        let silent = wav(8_000, 1, &vec![0.0; 8_000]);
        let err = decode(&silent, None, &DecodeLimits::default()).expect_err("silent");
        assert!(matches!(err, Error::Empty(_)) && err.to_string().contains("silent"), "{err}");

        let tone = wav(8_000, 1, &sine(8_000, 1, 3.0, 440.0, 0.5));
        let err = decode(&tone, None, &DecodeLimits { max_bytes: 1_000, ..DecodeLimits::default() }).expect_err("big");
        assert!(err.to_string().contains("1000 bytes"), "{err}");
        let err =
            decode(&tone, None, &DecodeLimits { max_duration_secs: 2.0, ..DecodeLimits::default() }).expect_err("long");
        assert!(err.to_string().contains("duration is 3 s, the limit is 2 s"), "{err}");
    }
}
