//! Shared by the `aac_*` tests: test signals, a small MP4 box reader and a symphonia decoder.
//!
//! The `aac` module is private to `kiln-render` (the pipeline routes `aac128` to it), so each test
//! crate compiles the module's source itself; see the `#[path]` include at the top of each test.

#![allow(dead_code)]

use std::f32::consts::TAU;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// 440 Hz plus a C-major chord with a slow tremolo; the right channel is a different voicing so
/// a channel swap would show. Peak below 0.8.
pub fn tone_and_chord(sample_rate: u32, channels: u16, seconds: f32) -> Vec<f32> {
    let frames = (sample_rate as f32 * seconds) as usize;
    let mut out = Vec::with_capacity(frames * usize::from(channels));
    for i in 0..frames {
        let t = i as f32 / sample_rate as f32;
        let tremolo = 0.75 + 0.25 * (TAU * 0.5 * t).sin();
        let a = (TAU * 440.0 * t).sin();
        let chord = [261.63f32, 329.63, 392.0].iter().map(|f| (TAU * f * t).sin()).sum::<f32>() / 3.0;
        let low = (TAU * 110.0 * t).sin();
        for c in 0..channels {
            let x = match c % 3 {
                0 => 0.4 * a + 0.4 * chord,
                1 => 0.3 * a + 0.3 * chord + 0.2 * low,
                _ => 0.5 * chord,
            };
            out.push(x * tremolo);
        }
    }
    out
}

/// One box: type, absolute offset of its header, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Atom<'a> {
    pub kind: [u8; 4],
    pub offset: usize,
    pub body: &'a [u8],
}

/// The boxes directly inside `data`, whose first byte is at absolute offset `base`.
pub fn atoms(data: &[u8], base: usize) -> Vec<Atom<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let size32 = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = data[pos + 4..pos + 8].try_into().expect("4 bytes");
        let (header, size) = match size32 {
            1 => (16, u64::from_be_bytes(data[pos + 8..pos + 16].try_into().expect("8 bytes")) as usize),
            0 => (8, data.len() - pos),
            n => (8, n),
        };
        assert!(
            size >= header && pos + size <= data.len(),
            "box {:?} overruns its parent",
            String::from_utf8_lossy(&kind)
        );
        out.push(Atom { kind, offset: base + pos, body: &data[pos + header..pos + size] });
        pos += size;
    }
    assert_eq!(pos, data.len(), "trailing bytes after the last box");
    out
}

/// Follows `path` (box types; `meta` is a full box, skipped over) from the top level.
pub fn find<'a>(file: &'a [u8], path: &[&str]) -> Option<Atom<'a>> {
    let mut current = Atom { kind: *b"file", offset: 0, body: file };
    let mut header = 0;
    for name in path {
        let next = atoms(current.body, current.offset + header).into_iter().find(|a| a.kind == name.as_bytes())?;
        // Children of `meta` start after its version/flags.
        if *name == "meta" {
            current = Atom { body: &next.body[4..], ..next };
            header = 12;
        } else {
            current = next;
            header = 8;
        }
    }
    Some(current)
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// (segment duration, media time) of the single edit.
pub fn edit(file: &[u8]) -> (u64, u64) {
    let elst = find(file, &["moov", "trak", "edts", "elst"]).expect("elst").body;
    assert_eq!(be32(elst, 4), 1, "one edit");
    if elst[0] == 1 {
        (be64(elst, 8), be64(elst, 16))
    } else {
        (u64::from(be32(elst, 8)), u64::from(be32(elst, 12)))
    }
}

/// (timescale, duration) of a v0/v1 `mvhd` or `mdhd` body.
pub fn timescale_duration(body: &[u8]) -> (u32, u64) {
    if body[0] == 1 {
        (be32(body, 20), be64(body, 24))
    } else {
        (be32(body, 12), u64::from(be32(body, 16)))
    }
}

/// The iTunSMPB text from `udta/meta/ilst/----`.
pub fn itunsmpb(file: &[u8]) -> String {
    let freeform = find(file, &["moov", "udta", "meta", "ilst", "----"]).expect("---- atom");
    let children = atoms(freeform.body, 0);
    let text = |kind: &[u8; 4], skip: usize| {
        let a = children.iter().find(|a| &a.kind == kind).expect("mean/name/data");
        String::from_utf8(a.body[skip..].to_vec()).expect("utf-8")
    };
    assert_eq!(text(b"mean", 4), "com.apple.iTunes");
    assert_eq!(text(b"name", 4), "iTunSMPB");
    text(b"data", 8)
}

pub struct Decoded {
    pub sample_rate: u32,
    pub channels: usize,
    /// Interleaved, priming and padding included (symphonia 0.5 does not apply MP4 edit lists).
    pub samples: Vec<f32>,
}

/// Demuxes and decodes an M4A with symphonia.
pub fn decode_m4a(bytes: Vec<u8>) -> Decoded {
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("m4a");
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &FormatOptions::default(), &MetadataOptions::default())
        .expect("symphonia recognises the M4A");
    let mut format = probed.format;
    let track = format.default_track().expect("an audio track").clone();
    let mut decoder =
        symphonia::default::get_codecs().make(&track.codec_params, &DecoderOptions::default()).expect("an AAC decoder");
    let mut samples = Vec::new();
    let mut spec = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("demux error: {e}"),
        };
        let decoded = decoder.decode(&packet).expect("decodes");
        spec = Some(*decoded.spec());
        let mut buf = SampleBuffer::<f32>::new(decoded.capacity() as u64, *decoded.spec());
        buf.copy_interleaved_ref(decoded);
        samples.extend_from_slice(buf.samples());
    }
    let spec = spec.expect("at least one packet");
    Decoded { sample_rate: spec.rate, channels: spec.channels.count(), samples }
}

/// Channel `c` of interleaved `samples`.
pub fn channel(samples: &[f32], channels: usize, c: usize) -> Vec<f32> {
    samples.iter().skip(c).step_by(channels).copied().collect()
}

/// Normalised correlation of `source` with `decoded` shifted by `lag` (decoded[i + lag] ~ source[i]),
/// over the first `len` source samples.
pub fn correlation(source: &[f32], decoded: &[f32], lag: usize, len: usize) -> f64 {
    let n = len.min(source.len()).min(decoded.len().saturating_sub(lag));
    let (mut sd, mut ss, mut dd) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let s = f64::from(source[i]);
        let d = f64::from(decoded[i + lag]);
        sd += s * d;
        ss += s * s;
        dd += d * d;
    }
    if ss == 0.0 || dd == 0.0 {
        0.0
    } else {
        sd / (ss * dd).sqrt()
    }
}

/// The lag in `0..=max_lag` maximising the correlation over a window after the first half second.
pub fn best_lag(source: &[f32], decoded: &[f32], max_lag: usize, sample_rate: u32) -> usize {
    let start = sample_rate as usize / 2;
    let window = (sample_rate as usize / 4).min(source.len().saturating_sub(start));
    let src = &source[start..start + window];
    (0..=max_lag)
        .max_by(|&a, &b| {
            let ca = correlation(src, &decoded[start..], a, window);
            let cb = correlation(src, &decoded[start..], b, window);
            ca.total_cmp(&cb)
        })
        .expect("non-empty range")
}
