//! `waveform`: min/max peaks at fixed zoom levels, in the formats of BBC audiowaveform, plus a PNG.
//!
//! Web players (peaks.js, wavesurfer) and DJ tools already read audiowaveform's JSON and binary
//! `.dat` files, so Kiln writes exactly those instead of inventing a format. Like `audiowaveform`
//! without `--split-channels`, every frame's channels are averaged to one mono sample first, and
//! the output is 8-bit (`-b 8`: the 16-bit peak divided by 256, arithmetic shift), which is what
//! players expect and half the size of 16-bit.
//!
//! ```text
//!  frames ─▶ mono average ─▶ (min, max) per 256 frames ─┬─▶ waveform-256.json / .dat
//!                                                        ├─▶ merge 16 pixels ─▶ waveform-4096.json / .dat
//!                                                        └─▶ merge per column ─▶ waveform.png
//! ```
//!
//! The audio is read once, at the finest zoom level; coarser levels and the PNG are merged from
//! those pixels (a coarse pixel's min is the min of its fine pixels' mins), which gives exactly
//! the values a direct pass would.

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use serde_json::json;

use crate::{Audio, Error, OutputFile, Rendered};

/// Zoom levels (samples per pixel) written for every master: 256 for a zoomed-in view (about
/// 172 pixels per second at 44.1 kHz, enough to see kicks), 4096 for the overview of a whole
/// track (a 7-minute master is about 4,500 pixels). Each level is a multiple of the first.
pub const ZOOM_LEVELS: &[u32] = &[256, 4096];

/// Size of the overview PNG: a wide strip like audiowaveform's `--width/--height` images.
pub const PNG_WIDTH: u32 = 1800;
pub const PNG_HEIGHT: u32 = 280;
/// Grey levels of the PNG: audiowaveform's default colours (`FFFFFF` background, `3A3A3A` waveform).
const PNG_BACKGROUND: u8 = 0xFF;
const PNG_WAVEFORM: u8 = 0x3A;
pub const PNG_NAME: &str = "waveform.png";

/// audiowaveform's data format version 2 (version 1 plus the channel count).
const FORMAT_VERSION: i32 = 2;
/// Flag bit 0 of the `.dat` header: 0 for 16-bit, 1 for 8-bit samples.
const FLAG_8_BIT: u32 = 1;
/// Bytes of a version 2 `.dat` header.
pub const DAT_HEADER_BYTES: usize = 24;

/// Min/max peaks of one zoom level, mono, at 16-bit resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peaks {
    pub sample_rate: u32,
    pub samples_per_pixel: u32,
    /// (min, max) per pixel, in [-32768, 32767].
    pub pairs: Vec<(i16, i16)>,
}

/// The 8-bit value audiowaveform writes for a 16-bit peak.
fn to_8_bit(v: i16) -> i8 {
    (v >> 8) as i8
}

fn to_16_bit(v: f32) -> i16 {
    (v.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Computes the peaks of `audio` at one zoom level in one pass over the samples. The last pixel
/// covers what is left of the audio (fewer than `samples_per_pixel` frames), as audiowaveform's.
pub fn peaks(audio: &Audio, samples_per_pixel: u32) -> Peaks {
    let channels = usize::from(audio.channels.max(1));
    let spp = samples_per_pixel.max(1) as usize;
    let frames = audio.samples.len() / channels;
    let mut pairs = Vec::with_capacity(frames.div_ceil(spp));
    let scale = 1.0 / channels as f32;
    for pixel in audio.samples[..frames * channels].chunks(spp * channels) {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for frame in pixel.chunks_exact(channels) {
            let s = frame.iter().sum::<f32>() * scale;
            lo = lo.min(s);
            hi = hi.max(s);
        }
        pairs.push((to_16_bit(lo), to_16_bit(hi)));
    }
    Peaks { sample_rate: audio.sample_rate, samples_per_pixel: spp as u32, pairs }
}

impl Peaks {
    /// A coarser zoom level merged from this one; `samples_per_pixel` must be a multiple of ours.
    pub fn merge(&self, samples_per_pixel: u32) -> Option<Peaks> {
        if self.samples_per_pixel == 0 || !samples_per_pixel.is_multiple_of(self.samples_per_pixel) {
            return None;
        }
        let factor = (samples_per_pixel / self.samples_per_pixel) as usize;
        let pairs = self.pairs.chunks(factor).map(merge_pairs).collect();
        Some(Peaks { sample_rate: self.sample_rate, samples_per_pixel, pairs })
    }

    /// The audiowaveform JSON document (version 2, one channel, 8 bits).
    pub fn to_json(&self) -> serde_json::Value {
        let data: Vec<i8> = self.pairs.iter().flat_map(|(lo, hi)| [to_8_bit(*lo), to_8_bit(*hi)]).collect();
        json!({
            "version": FORMAT_VERSION,
            "channels": 1,
            "sample_rate": self.sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": 8,
            "length": self.pairs.len(),
            "data": data,
        })
    }

    /// The audiowaveform binary `.dat` file (version 2, 8-bit): a 24-byte little-endian header
    /// (version, flags, sample rate, samples per pixel, length, channels), then min/max bytes.
    pub fn to_dat(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DAT_HEADER_BYTES + self.pairs.len() * 2);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&FLAG_8_BIT.to_le_bytes());
        out.extend_from_slice(&i32::try_from(self.sample_rate).unwrap_or(i32::MAX).to_le_bytes());
        out.extend_from_slice(&i32::try_from(self.samples_per_pixel).unwrap_or(i32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&1i32.to_le_bytes());
        for (lo, hi) in &self.pairs {
            out.extend_from_slice(&[to_8_bit(*lo) as u8, to_8_bit(*hi) as u8]);
        }
        out
    }

    /// A `width` × `height` greyscale overview: each column spans an equal share of the pixels of
    /// this level and is drawn from its max to its min around the centre line.
    pub fn to_png(&self, width: u32, height: u32) -> Result<Vec<u8>, Error> {
        let (w, h) = (width.max(1) as usize, height.max(2) as usize);
        let mut raster = vec![PNG_BACKGROUND; w * h];
        let n = self.pairs.len();
        if n > 0 {
            let half = (h as f32 - 1.0) / 2.0;
            let row = |v: i16| ((half - f32::from(v) / 32768.0 * half).round() as usize).min(h - 1);
            for x in 0..w {
                let start = x * n / w;
                let end = ((x + 1) * n / w).max(start + 1).min(n);
                let (lo, hi) = merge_pairs(&self.pairs[start..end]);
                for y in row(hi)..=row(lo) {
                    raster[y * w + x] = PNG_WAVEFORM;
                }
            }
        }
        let mut png = Vec::new();
        PngEncoder::new(&mut png).write_image(&raster, w as u32, h as u32, ExtendedColorType::L8).map_err(|e| {
            Error::Internal { renderer: "waveform".into(), reason: format!("PNG encoding failed: {e}") }
        })?;
        Ok(png)
    }
}

fn merge_pairs(pairs: &[(i16, i16)]) -> (i16, i16) {
    pairs.iter().fold((i16::MAX, i16::MIN), |(lo, hi), (l, h)| (lo.min(*l), hi.max(*h)))
}

/// Renders every zoom level as JSON and `.dat`, plus the PNG overview.
///
/// Metadata: `{"format", "bits", "channels", "sample_rate", "zoom_levels": [{"samples_per_pixel",
/// "length", "json", "dat"}], "png": {"name", "width", "height"}}`.
pub fn render(audio: &Audio) -> Result<Rendered, Error> {
    let internal = |reason: String| Error::Internal { renderer: "waveform".into(), reason };
    let finest = ZOOM_LEVELS.first().copied().ok_or_else(|| internal("no zoom levels".into()))?;
    let fine = peaks(audio, finest);
    let mut files = Vec::with_capacity(ZOOM_LEVELS.len() * 2 + 1);
    let mut levels = Vec::with_capacity(ZOOM_LEVELS.len());
    for &spp in ZOOM_LEVELS {
        let level = fine.merge(spp).ok_or_else(|| internal(format!("zoom {spp} is not a multiple of {finest}")))?;
        let json = serde_json::to_vec(&level.to_json()).map_err(|e| internal(e.to_string()))?;
        let (json_name, dat_name) = (format!("waveform-{spp}.json"), format!("waveform-{spp}.dat"));
        levels
            .push(json!({ "samples_per_pixel": spp, "length": level.pairs.len(), "json": json_name, "dat": dat_name }));
        files.push(OutputFile { name: json_name, content_type: "application/json", bytes: json });
        files.push(OutputFile { name: dat_name, content_type: "application/octet-stream", bytes: level.to_dat() });
    }
    files.push(OutputFile {
        name: PNG_NAME.into(),
        content_type: "image/png",
        bytes: fine.to_png(PNG_WIDTH, PNG_HEIGHT)?,
    });
    let metadata = json!({
        "format": "audiowaveform v2",
        "bits": 8,
        "channels": 1,
        "sample_rate": audio.sample_rate,
        "zoom_levels": levels,
        "png": { "name": PNG_NAME, "width": PNG_WIDTH, "height": PNG_HEIGHT },
    });
    Ok(Rendered { metadata, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::sine;

    /// The slow, obvious reference: per pixel, average each frame's channels, take min and max.
    fn reference(audio: &Audio, spp: usize) -> Vec<(i16, i16)> {
        let ch = usize::from(audio.channels);
        let mono: Vec<f32> = audio.samples.chunks_exact(ch).map(|f| f.iter().sum::<f32>() / ch as f32).collect();
        mono.chunks(spp)
            .map(|p| {
                let lo = p.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                (to_16_bit(lo), to_16_bit(hi))
            })
            .collect()
    }

    #[test]
    fn peaks_follow_a_silent_then_loud_signal() {
        // 1 s of silence, then 1 s of a half-scale sine, stereo.
        let mut samples = vec![0.0f32; 2 * 8_192];
        samples.extend(sine(8_192, 2, 1.0, 64.0, 0.5));
        let audio = Audio { sample_rate: 8_192, channels: 2, samples };
        let p = peaks(&audio, 256);
        assert_eq!(p.pairs.len(), 64, "2 s × 8192 Hz / 256");
        assert!(p.pairs[..32].iter().all(|&pair| pair == (0, 0)), "silent half: {:?}", &p.pairs[..4]);
        // Each loud block spans two periods of the 64 Hz sine, so it reaches both crests.
        let json = p.to_json();
        let data: Vec<i64> = json["data"].as_array().expect("data").iter().filter_map(|v| v.as_i64()).collect();
        assert!(data[..64].iter().all(|v| *v == 0));
        assert!(data[64..].chunks(2).all(|mm| mm == [-64, 64]), "loud half: {:?}", &data[64..72]);
    }

    #[test]
    fn channels_are_averaged_like_audiowaveform() {
        // Left at +0.5 DC, right at -0.5 DC: the mono mix is silence, not ±0.5.
        let samples: Vec<f32> = (0..4_096).flat_map(|_| [0.5, -0.5]).collect();
        let p = peaks(&Audio { sample_rate: 8_000, channels: 2, samples }, 256);
        assert!(p.pairs.iter().all(|&pair| pair == (0, 0)), "{:?}", &p.pairs[..2]);
    }

    #[test]
    fn merged_levels_equal_a_direct_pass_on_a_parameter_grid() {
        for (channels, frames) in [(1u16, 100_000usize), (2, 44_100 * 3 + 17), (6, 10_000), (2, 100)] {
            let samples: Vec<f32> = (0..frames * usize::from(channels))
                .map(|i| ((i as f32 * 0.013).sin() * (i as f32 * 0.0007).cos()) * 0.9)
                .collect();
            let audio = Audio { sample_rate: 44_100, channels, samples };
            let fine = peaks(&audio, 256);
            assert_eq!(fine.pairs, reference(&audio, 256), "{channels} ch, {frames} frames");
            for spp in [512u32, 4096] {
                let merged = fine.merge(spp).expect("multiple");
                assert_eq!(merged.pairs, peaks(&audio, spp).pairs, "{channels} ch, {frames} frames, {spp}");
                assert_eq!(merged.pairs.len(), frames.div_ceil(spp as usize));
            }
        }
        assert!(peaks(&Audio { sample_rate: 8_000, channels: 1, samples: vec![0.1; 10] }, 256).merge(1000).is_none());
    }

    #[test]
    fn json_and_dat_carry_the_audiowaveform_header() {
        let audio = Audio { sample_rate: 44_100, channels: 1, samples: sine(44_100, 1, 1.0, 441.0, 1.0) };
        let p = peaks(&audio, 4096);
        let j = p.to_json();
        assert_eq!((j["version"].as_i64(), j["bits"].as_i64(), j["length"].as_u64()), (Some(2), Some(8), Some(11)));
        assert_eq!(
            (j["channels"].as_i64(), j["sample_rate"].as_i64(), j["samples_per_pixel"].as_i64()),
            (Some(1), Some(44_100), Some(4096))
        );
        assert_eq!(j["data"].as_array().map(Vec::len), Some(22));
        let dat = p.to_dat();
        let word = |i: usize| u32::from_le_bytes([dat[i], dat[i + 1], dat[i + 2], dat[i + 3]]);
        assert_eq!([word(0), word(4), word(8), word(12), word(16), word(20)], [2, 1, 44_100, 4096, 11, 1]);
        assert_eq!(dat.len(), DAT_HEADER_BYTES + 22);
        // Full scale: +32767 → 127, -32767 → -128 (audiowaveform's 16 → 8 bit shift).
        assert_eq!((dat[24] as i8, dat[25] as i8), (-128, 127));
        let json_data: Vec<i64> = j["data"].as_array().expect("data").iter().filter_map(|v| v.as_i64()).collect();
        let dat_data: Vec<i64> = dat[DAT_HEADER_BYTES..].iter().map(|b| i64::from(*b as i8)).collect();
        assert_eq!(json_data, dat_data, "both formats carry the same values");
    }

    #[test]
    fn the_png_decodes_to_its_size_and_draws_where_the_sound_is() {
        // First half silent, second half a full-scale sine.
        let mut samples = vec![0.0f32; 22_050];
        samples.extend(sine(22_050, 1, 1.0, 200.0, 1.0));
        let png = peaks(&Audio { sample_rate: 22_050, channels: 1, samples }, 256).to_png(200, 50).expect("png");
        let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("decodes").into_luma8();
        assert_eq!(img.dimensions(), (200, 50));
        let dark = |x: u32| (0..50).filter(|&y| img.get_pixel(x, y).0[0] == PNG_WAVEFORM).count();
        assert!((0..95).all(|x| dark(x) == 1), "silence is the centre line: {}", dark(10));
        // The last column shows the last, partial pixel (70 samples, a third of a period).
        let short: Vec<(u32, usize)> = (105..199).map(|x| (x, dark(x))).filter(|&(_, d)| d != 50).collect();
        assert!(short.is_empty(), "full scale fills the column: {short:?}");
    }

    #[test]
    fn render_writes_every_zoom_level_and_the_png() {
        let audio = Audio { sample_rate: 22_050, channels: 1, samples: sine(22_050, 1, 2.0, 100.0, 0.3) };
        let r = render(&audio).expect("renders");
        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["waveform-256.json", "waveform-256.dat", "waveform-4096.json", "waveform-4096.dat", "waveform.png"]
        );
        assert_eq!(r.metadata["zoom_levels"][0]["length"].as_u64(), Some(173), "44100 / 256 rounded up");
        assert_eq!(r.metadata["zoom_levels"][1]["length"].as_u64(), Some(11));
        assert_eq!(r.metadata["png"]["name"].as_str(), Some("waveform.png"));
        // An empty signal still renders (no pixels, a blank PNG) instead of failing.
        let empty = render(&Audio { sample_rate: 44_100, channels: 2, samples: Vec::new() }).expect("renders");
        assert_eq!(empty.metadata["zoom_levels"][0]["length"].as_u64(), Some(0));
    }
}
