//! Runs the requested renderers over one master: decode once, analyse once, render each.
//!
//! The pipeline is the contract between the worker and the DSP: bytes and renderer names in, a
//! report with metadata, files and per-stage timings out. It owns the rule that makes Kiln cheap
//! per master: the audio is decoded exactly once, and the analysis signal shared by `bpm` and `key`
//! is built at most once, whatever the set of renderers asked for.

use std::time::Instant;

use serde::Serialize;

use crate::analysis::Analysis;
use crate::{Audio, DecodeLimits, Error};

/// Renderer names this build implements: a task asking for anything else is refused up front.
pub(crate) const AVAILABLE: &[&str] = &["loudness", "bpm", "key", "waveform", "aac128", "artwork"];

#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub limits: DecodeLimits,
    pub artwork_sizes: Vec<u32>,
}

/// A file a renderer produced, to be uploaded as `{derivatives}/{asset_guid}/{name}`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFile {
    pub name: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// One renderer's product: metadata for the ack and `manifest.json`, plus files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub metadata: serde_json::Value,
    #[serde(skip)]
    pub files: Vec<OutputFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RendererOutput {
    pub renderer: String,
    pub rendered: Rendered,
    pub micros: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenderReport {
    pub decode_micros: u64,
    pub duration_secs: f64,
    pub outputs: Vec<RendererOutput>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    config: PipelineConfig,
}

/// Renderers that read decoded audio, in the order they run (cheap metadata first, so a failure
/// in a late, expensive one still leaves the cheap results in the error's context).
const AUDIO_ORDER: &[&str] = &["loudness", "bpm", "key", "waveform", "aac128"];

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Self {
        Self { config }
    }

    /// Decodes `master` once (if any audio renderer is asked for) and runs `renderers`.
    /// `hint` is the file extension, if known.
    pub fn run(&self, master: &[u8], hint: Option<&str>, renderers: &[&str]) -> Result<RenderReport, Error> {
        if let Some(unknown) = renderers.iter().find(|r| !AVAILABLE.contains(r)) {
            return Err(Error::UnknownRenderer((*unknown).to_owned()));
        }
        let wants_artwork = renderers.contains(&"artwork");
        let audio_renderers: Vec<&str> = AUDIO_ORDER.iter().copied().filter(|r| renderers.contains(r)).collect();
        if wants_artwork && !audio_renderers.is_empty() {
            return Err(Error::Unsupported {
                renderer: "artwork".into(),
                reason: format!(
                    "artwork resizes image masters, but {} need an audio master; submit them as separate tasks",
                    audio_renderers.join(", ")
                ),
            });
        }
        if wants_artwork {
            let start = Instant::now();
            let rendered = crate::artwork::render(master, &self.config.artwork_sizes)?;
            let output = RendererOutput { renderer: "artwork".into(), rendered, micros: micros_since(start) };
            return Ok(RenderReport { decode_micros: 0, duration_secs: 0.0, outputs: vec![output] });
        }
        if audio_renderers.is_empty() {
            // Nothing asked of the audio: no reason to pay for (or fail on) a decode.
            return Ok(RenderReport { decode_micros: 0, duration_secs: 0.0, outputs: Vec::new() });
        }
        let start = Instant::now();
        let audio = crate::decode(master, hint, &self.config.limits)?;
        let decode_micros = micros_since(start);
        let mut analysis: Option<Analysis> = None;
        let mut outputs = Vec::with_capacity(audio_renderers.len());
        for name in audio_renderers {
            let start = Instant::now();
            let rendered = render_audio(name, &audio, &mut analysis)?;
            outputs.push(RendererOutput { renderer: name.to_owned(), rendered, micros: micros_since(start) });
        }
        Ok(RenderReport { decode_micros, duration_secs: audio.duration_secs(), outputs })
    }
}

fn render_audio(name: &str, audio: &Audio, analysis: &mut Option<Analysis>) -> Result<Rendered, Error> {
    // The analysis signal's cost is charged to the first renderer that needs it.
    if matches!(name, "bpm" | "key") && analysis.is_none() {
        *analysis = Some(Analysis::new(audio));
    }
    let shared = || {
        analysis
            .as_ref()
            .ok_or_else(|| Error::Internal { renderer: name.to_owned(), reason: "no analysis signal".into() })
    };
    match name {
        "loudness" => crate::loudness::render(audio),
        "waveform" => crate::waveform::render(audio),
        "aac128" => crate::aac::render(audio),
        "bpm" => crate::bpm::render(shared()?),
        "key" => crate::key::render(shared()?),
        other => Err(Error::UnknownRenderer(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{sine, wav};

    fn pipeline() -> Pipeline {
        Pipeline::new(PipelineConfig { limits: DecodeLimits::default(), artwork_sizes: vec![500, 250] })
    }

    #[test]
    fn one_decode_serves_every_audio_renderer() {
        let master = wav(22_050, 2, &sine(22_050, 2, 3.0, 440.0, 0.5));
        let report = pipeline().run(&master, Some("wav"), &["waveform", "loudness"]).expect("renders");
        let names: Vec<&str> = report.outputs.iter().map(|o| o.renderer.as_str()).collect();
        assert_eq!(names, ["loudness", "waveform"], "fixed order, whatever the request order");
        assert!((report.duration_secs - 3.0).abs() < 1e-6);
        let lufs = report.outputs[0].rendered.metadata["integrated_lufs"].as_f64().expect("lufs");
        assert!((lufs + 6.6).abs() < 0.5, "a 0.5-peak stereo 440 Hz sine: {lufs}");
    }

    #[test]
    fn artwork_reads_the_image_bytes_and_skips_the_decoder() {
        let img = image::RgbImage::from_fn(1000, 600, |x, _| image::Rgb([(x % 256) as u8, 40, 90]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).expect("jpeg");
        let report = pipeline().run(&jpeg, Some("jpg"), &["artwork"]).expect("renders");
        assert_eq!(report.decode_micros, 0);
        assert_eq!(report.outputs.len(), 1);
        let names: Vec<&str> = report.outputs[0].rendered.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["artwork-500.jpg", "artwork-250.jpg"]);
        // An audio master sent to artwork is refused as not an image, permanently.
        let master = wav(8_000, 1, &sine(8_000, 1, 1.0, 440.0, 0.5));
        let err = pipeline().run(&master, Some("wav"), &["artwork"]).expect_err("audio");
        assert!(err.is_permanent() && err.to_string().contains("not a JPEG or PNG"), "{err}");
    }

    #[test]
    fn an_empty_request_renders_nothing_and_decodes_nothing() {
        let report = pipeline().run(b"not even audio", None, &[]).expect("nothing to do");
        assert!(report.outputs.is_empty());
    }

    #[test]
    fn every_available_renderer_runs_on_a_real_master() {
        let master = wav(44_100, 2, &sine(44_100, 2, 4.0, 440.0, 0.5));
        let audio: Vec<&str> = AVAILABLE.iter().copied().filter(|r| *r != "artwork").collect();
        let report = pipeline().run(&master, Some("wav"), &audio).expect("renders");
        assert_eq!(report.outputs.len(), audio.len());
        let order: Vec<&str> = report.outputs.iter().map(|o| o.renderer.as_str()).collect();
        let expected: Vec<&str> = AUDIO_ORDER.iter().copied().filter(|r| audio.contains(r)).collect();
        assert_eq!(order, expected);
        // A steady sine has no beat: the tempo is absent with a reason, the task still succeeds.
        let bpm = &report.outputs.iter().find(|o| o.renderer == "bpm").expect("bpm").rendered.metadata;
        assert!(bpm["bpm"].is_null() && bpm["reason"].as_str().is_some_and(|r| !r.is_empty()), "{bpm}");
    }

    #[test]
    fn unknown_or_mixed_requests_are_refused_with_the_reason() {
        let master = wav(8_000, 1, &sine(8_000, 1, 1.0, 440.0, 0.5));
        let err = pipeline().run(&master, None, &["loudness", "sparkle"]).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown renderer `sparkle`");
        if AVAILABLE.contains(&"artwork") {
            let err = pipeline().run(&master, None, &["artwork", "loudness"]).expect_err("mixed");
            assert!(err.to_string().contains("separate tasks"), "{err}");
        }
        let err = pipeline().run(b"not audio", None, &["loudness"]).expect_err("garbage");
        assert!(err.is_permanent());
    }
}
