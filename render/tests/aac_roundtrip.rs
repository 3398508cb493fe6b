//! `aac128` round trip: render, check the M4A's structure and gapless metadata, decode it back
//! with symphonia and compare with the source.

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../src/aac/mod.rs"]
mod aac;
mod aac_support;

use aac_support::*;
use kiln_render::{Audio, Error, OutputFile, Rendered};

const FRAME: u64 = 1024;

fn audio(sample_rate: u32, channels: u16, samples: Vec<f32>) -> Audio {
    Audio { sample_rate, channels, samples }
}

fn m4a(rendered: &Rendered) -> &[u8] {
    assert_eq!(rendered.files.len(), 1);
    let file = &rendered.files[0];
    assert_eq!(file.name, "aac128.m4a");
    assert_eq!(file.content_type, "audio/mp4");
    &file.bytes
}

/// Everything a well-formed, gapless `aac128` file must satisfy, for a source of `frames` samples
/// per channel. Returns the encoder delay.
fn check_structure(bytes: &[u8], rendered: &Rendered, sample_rate: u32, channels: u16, frames: u64) -> u64 {
    let top = atoms(bytes, 0);
    let kinds: Vec<&[u8; 4]> = top.iter().map(|a| &a.kind).collect();
    assert_eq!(kinds, [b"ftyp", b"moov", b"mdat"], "ftyp, moov, mdat in this order");
    assert_eq!(&top[0].body[..4], b"M4A ");
    let (moov, mdat) = (top[1], top[2]);
    assert!(moov.offset < mdat.offset, "moov before mdat for progressive playback");

    let meta = &rendered.metadata;
    assert_eq!(meta["codec"], "aac-lc");
    assert_eq!(meta["sample_rate"], sample_rate);
    assert_eq!(meta["channels"], channels);
    assert_eq!(meta["bytes"], bytes.len());
    let delay = meta["encoder_delay"].as_u64().expect("encoder_delay");
    let units = meta["frames"].as_u64().expect("frames");
    let duration = meta["duration_secs"].as_f64().expect("duration_secs");
    assert!((duration - frames as f64 / f64::from(sample_rate)).abs() < 1e-9);

    // Edit list: skip exactly the priming, present exactly the source.
    let (segment, media_time) = edit(bytes);
    assert_eq!(media_time, delay, "elst media_time is the encoder delay");
    assert_eq!(segment, frames, "elst duration is the source length (movie timescale = rate)");
    let (movie_scale, movie_duration) = timescale_duration(find(bytes, &["moov", "mvhd"]).expect("mvhd").body);
    assert_eq!((movie_scale, movie_duration), (sample_rate, frames));
    let (media_scale, media_duration) =
        timescale_duration(find(bytes, &["moov", "trak", "mdia", "mdhd"]).expect("mdhd").body);
    assert_eq!((media_scale, media_duration), (sample_rate, units * FRAME));
    // Every source sample is in the media, and less than one frame of padding follows it.
    let padding = media_duration - delay - frames;
    assert!(padding < FRAME, "padding {padding} is a whole frame or more");

    let smpb = itunsmpb(bytes);
    let fields: Vec<&str> = smpb.split_whitespace().collect();
    assert_eq!(fields.len(), 12, "{smpb:?}");
    assert!(smpb.starts_with(' '));
    assert_eq!(u64::from_str_radix(fields[1], 16).expect("hex"), delay);
    assert_eq!(u64::from_str_radix(fields[2], 16).expect("hex"), padding);
    assert_eq!(u64::from_str_radix(fields[3], 16).expect("hex"), frames);
    assert_eq!(fields[3].len(), 16);

    // Sample table: sizes add up to mdat, the first chunk starts at mdat's payload.
    let stbl = ["moov", "trak", "mdia", "minf", "stbl"];
    let stsz = find(bytes, &[&stbl[..], &["stsz"]].concat()).expect("stsz").body;
    assert_eq!(u64::from(be32(stsz, 8)), units);
    let total: u64 = (0..units as usize).map(|i| u64::from(be32(stsz, 12 + 4 * i))).sum();
    assert_eq!(total, mdat.body.len() as u64);
    let stco = find(bytes, &[&stbl[..], &["stco"]].concat()).expect("stco").body;
    assert_eq!(be32(stco, 8) as usize, mdat.offset + 8);
    let stts = find(bytes, &[&stbl[..], &["stts"]].concat()).expect("stts").body;
    assert_eq!((be32(stts, 4), u64::from(be32(stts, 8)), u64::from(be32(stts, 12))), (1, units, FRAME));
    let stsd = find(bytes, &[&stbl[..], &["stsd"]].concat()).expect("stsd").body;
    assert_eq!(&stsd[12..16], b"mp4a");
    assert_eq!(u16::from_be_bytes([stsd[32], stsd[33]]), channels, "mp4a channel count");
    check_asc(&audio_specific_config(stsd), sample_rate, channels);
    delay
}

/// The DecoderSpecificInfo inside `stsd/mp4a/esds`, walking the descriptors.
fn audio_specific_config(stsd: &[u8]) -> Vec<u8> {
    let mp4a = &atoms(&stsd[8..], 0)[0];
    let esds = atoms(&mp4a.body[28..], 0).into_iter().find(|a| &a.kind == b"esds").expect("esds");
    let mut d = &esds.body[4..];
    // Descriptor header: tag, then size in 7-bit groups.
    let header = |d: &[u8]| {
        let mut len = 0usize;
        let mut i = 1;
        loop {
            len = (len << 7) | usize::from(d[i] & 0x7f);
            i += 1;
            if d[i - 1] & 0x80 == 0 {
                return (d[0], i, len);
            }
        }
    };
    let (tag, h, len) = header(d);
    assert_eq!((tag, h + len), (0x03, d.len()), "ES_Descriptor spans the esds");
    d = &d[h + 3..]; // ES_ID, flags
    let (tag, h, _) = header(d);
    assert_eq!(tag, 0x04);
    assert_eq!((d[h], d[h + 1]), (0x40, 0x15), "MPEG-4 audio stream");
    d = &d[h + 13..];
    let (tag, h, len) = header(d);
    assert_eq!(tag, 0x05);
    let asc = d[h..h + len].to_vec();
    let (tag, _, len) = header(&d[h + len..]);
    assert_eq!((tag, len), (0x06, 1), "SLConfigDescriptor");
    asc
}

/// AudioSpecificConfig: object type 2 (LC), the rate's index, the channel configuration.
fn check_asc(asc: &[u8], sample_rate: u32, channels: u16) {
    const RATES: [u32; 12] =
        [96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8000];
    let bits = u16::from_be_bytes([asc[0], asc[1]]);
    assert_eq!(bits >> 11, 2, "AAC-LC object type in {asc:02x?}");
    let index = usize::from((bits >> 7) & 0xf);
    assert_eq!(RATES.get(index), Some(&sample_rate), "sampling frequency index in {asc:02x?}");
    assert_eq!((bits >> 3) & 0xf, channels, "channel configuration in {asc:02x?}");
}

/// Decodes, checks the decoded length against the container, and returns the decoded audio.
fn decode_checked(bytes: &[u8], sample_rate: u32, channels: u16, frames: u64, delay: u64) -> Decoded {
    let decoded = decode_m4a(bytes.to_vec());
    assert_eq!(decoded.sample_rate, sample_rate);
    assert_eq!(decoded.channels, usize::from(channels));
    let decoded_frames = (decoded.samples.len() / decoded.channels) as u64;
    // Trimmed as the edit list says, the decoded length is the source length within one frame.
    let presented = decoded_frames.saturating_sub(delay);
    assert!(presented >= frames && presented - frames < FRAME, "decoded {decoded_frames}, source {frames}");
    decoded
}

fn check_similar(source: &Audio, decoded: &Decoded, delay: u64) {
    let channels = usize::from(source.channels);
    for c in 0..channels {
        let src = channel(&source.samples, channels, c);
        let dec = channel(&decoded.samples, channels, c);
        let lag = best_lag(&src, &dec, 4096, source.sample_rate);
        assert_eq!(lag as u64, delay, "channel {c}: the audio starts exactly `delay` samples in");
        let corr = correlation(&src, &dec, lag, src.len());
        assert!(corr > 0.9, "channel {c}: correlation {corr:.4} after delay compensation");
        eprintln!("channel {c}: lag {lag}, correlation {corr:.5}");
    }
}

#[test]
fn stereo_44k1_round_trip() {
    let source = audio(44_100, 2, tone_and_chord(44_100, 2, 3.0));
    let frames = source.frames() as u64;
    let rendered = aac::render(&source).expect("renders");
    let bytes = m4a(&rendered);
    let delay = check_structure(bytes, &rendered, 44_100, 2, frames);
    // fdk-aac 2.x reports 1024 (MDCT) + 576 (block-switching look-ahead) for AAC-LC, not the 2048
    // of older encoders; the decoded audio below confirms it sample-exactly.
    assert_eq!(delay, 1600, "fdk AAC-LC priming");
    assert_eq!(rendered.metadata["bitrate"], 128_000);
    // CBR 128 kb/s: the payload is within a few percent of 16 kB per second of media.
    let secs = frames as f64 / 44_100.0;
    let kbps = bytes.len() as f64 * 8.0 / secs / 1000.0;
    assert!((120.0..150.0).contains(&kbps), "{kbps:.1} kb/s");
    let decoded = decode_checked(bytes, 44_100, 2, frames, delay);
    check_similar(&source, &decoded, delay);
}

#[test]
fn mono_48k_round_trip() {
    let source = audio(48_000, 1, tone_and_chord(48_000, 1, 2.0));
    let frames = source.frames() as u64;
    let rendered = aac::render(&source).expect("renders");
    let bytes = m4a(&rendered);
    let delay = check_structure(bytes, &rendered, 48_000, 1, frames);
    let decoded = decode_checked(bytes, 48_000, 1, frames, delay);
    check_similar(&source, &decoded, delay);
}

#[test]
fn surround_is_downmixed_to_stereo() {
    let source = audio(48_000, 6, tone_and_chord(48_000, 6, 1.0));
    let frames = source.frames() as u64;
    let rendered = aac::render(&source).expect("renders");
    let bytes = m4a(&rendered);
    let delay = check_structure(bytes, &rendered, 48_000, 2, frames);
    let decoded = decode_checked(bytes, 48_000, 2, frames, delay);
    // The left output is a scaled mix of the left-side inputs: still correlated with the left input.
    let left_in = channel(&source.samples, 6, 0);
    let left_out = channel(&decoded.samples, 2, 0);
    assert!(correlation(&left_in, &left_out, delay as usize, left_in.len()) > 0.8);
}

#[test]
fn short_and_silent_inputs_make_valid_files() {
    for (frames, silent) in [(1usize, true), (100, true), (1023, false), (1024, false), (1025, true), (4096, false)] {
        let samples = if silent { vec![0.0; frames * 2] } else { tone_and_chord(44_100, 2, frames as f32 / 44_100.0) };
        let source = audio(44_100, 2, samples);
        assert_eq!(source.frames(), frames);
        let rendered = aac::render(&source).expect("renders");
        let bytes = m4a(&rendered);
        let delay = check_structure(bytes, &rendered, 44_100, 2, frames as u64);
        decode_checked(bytes, 44_100, 2, frames as u64, delay);
    }
}

#[test]
fn out_of_range_samples_are_clamped() {
    let mut samples = tone_and_chord(44_100, 2, 0.5);
    for (i, x) in samples.iter_mut().enumerate() {
        *x = match i % 97 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => -7.5,
            _ => *x * 3.0,
        };
    }
    let rendered = aac::render(&audio(44_100, 2, samples)).expect("renders");
    check_structure(m4a(&rendered), &rendered, 44_100, 2, 22_050);
}

#[test]
fn every_aac_lc_rate_encodes() {
    for rate in [8000u32, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 64_000, 88_200, 96_000] {
        for channels in [1u16, 2] {
            let source = audio(rate, channels, tone_and_chord(rate, channels, 0.3));
            let rendered = aac::render(&source).unwrap_or_else(|e| panic!("{rate} Hz x{channels}: {e}"));
            let bytes = m4a(&rendered);
            check_structure(bytes, &rendered, rate, channels, source.frames() as u64);
            let bitrate = rendered.metadata["bitrate"].as_u64().expect("bitrate");
            assert!(bitrate <= 128_000 && bitrate > 0, "{rate} Hz x{channels}: {bitrate}");
        }
    }
}

#[test]
fn bad_inputs_are_refused_with_permanent_errors() {
    let empty = aac::render(&audio(44_100, 2, Vec::new())).expect_err("empty");
    assert!(matches!(empty, Error::Empty(_)), "{empty}");
    let no_channels = aac::render(&audio(44_100, 0, vec![0.0; 10])).expect_err("no channels");
    assert!(matches!(no_channels, Error::Unsupported { .. }), "{no_channels}");
    let odd_rate = aac::render(&audio(192_000, 2, vec![0.0; 4096])).expect_err("192 kHz");
    assert!(matches!(odd_rate, Error::Unsupported { .. }), "{odd_rate}");
    assert!(empty.is_permanent() && no_channels.is_permanent() && odd_rate.is_permanent());
}

#[test]
fn output_is_deterministic() {
    let source = audio(44_100, 2, tone_and_chord(44_100, 2, 0.5));
    let a = aac::render(&source).expect("renders");
    let b = aac::render(&source).expect("renders");
    assert_eq!(a.files, b.files);
    assert_eq!(a.metadata, b.metadata);
    let _: &OutputFile = &a.files[0];
}
