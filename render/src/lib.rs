//! Kiln's renderers: pure DSP and encoders. No async, no network, no clock-dependent results.
//!
//! A worker hands [`Pipeline::run`] the bytes of one master and the renderer names of one task.
//! The master is decoded once; every audio renderer reads the same PCM (and, where it can, the
//! same downmixed analysis signal); artwork renderers read the image bytes.
//!
//! ```text
//!  master bytes ──▶ decode (symphonia) ──▶ Audio ──┬─▶ loudness ─▶ metadata
//!                                                  ├─▶ waveform ─▶ .json/.dat/.png
//!                                                  ├─▶ bpm, key ─▶ metadata
//!                                                  └─▶ aac128   ─▶ .m4a
//!  image bytes ─────────────────────────────────────▶ artwork  ─▶ .jpg/.png resizes
//! ```
//!
//! Errors say whether retrying can help: every [`Error`] here is about the input (permanent), except
//! [`Error::Internal`].

mod aac;
mod analysis;
mod artwork;
mod audio;
mod bpm;
mod chroma;
mod decode;
mod error;
mod key;
mod loudness;
mod meter;
mod pipeline;
#[cfg(feature = "synth")]
pub mod synth;
mod waveform;

pub use artwork::render as render_artwork;
pub use audio::Audio;
pub use decode::{decode, DecodeLimits};
pub use error::Error;
pub use pipeline::{OutputFile, Pipeline, PipelineConfig, RenderReport, Rendered, RendererOutput};

/// Renderer names this build implements.
pub fn available_renderers() -> Vec<&'static str> {
    pipeline::AVAILABLE.to_vec()
}
