//! `aac128` checked by an independent implementation: ffprobe reads the container and stream, and
//! ffmpeg (which applies MP4 edit lists) decodes exactly the source's samples back.
//!
//! Skipped, with a message, where ffprobe/ffmpeg are not on PATH (`apt-get install ffmpeg`).

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../src/aac/mod.rs"]
mod aac;
mod aac_support;

use std::path::PathBuf;
use std::process::Command;

use aac_support::{channel, correlation, tone_and_chord};
use kiln_render::{Audio, Error, OutputFile, Rendered};

fn tool_available(tool: &str) -> bool {
    Command::new(tool).arg("-version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Writes the rendered file to a fresh path under the system temp dir.
fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-aac-ffprobe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write m4a");
    path
}

fn probe(path: &PathBuf) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "warning", "-show_format", "-show_streams", "-of", "json"])
        .arg(path)
        .output()
        .expect("runs ffprobe");
    assert!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "ffprobe warns: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// Decodes with ffmpeg to interleaved f32, as ffmpeg presents it (edit list applied).
fn ffmpeg_decode(path: &PathBuf) -> Vec<f32> {
    let out = Command::new("ffmpeg")
        .args(["-v", "warning", "-i"])
        .arg(path)
        .args(["-f", "f32le", "-"])
        .output()
        .expect("runs ffmpeg");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "ffmpeg warns: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn check(sample_rate: u32, channels: u16, seconds: f32) {
    let source = Audio { sample_rate, channels, samples: tone_and_chord(sample_rate, channels, seconds) };
    let frames = source.frames();
    let rendered: Rendered = aac::render(&source).expect("renders");
    let file: &OutputFile = &rendered.files[0];
    let path = write_temp(&format!("{sample_rate}-{channels}.m4a"), &file.bytes);

    let info = probe(&path);
    let stream = &info["streams"][0];
    assert_eq!(stream["codec_name"], "aac", "{stream}");
    assert_eq!(stream["profile"], "LC", "{stream}");
    assert_eq!(stream["sample_rate"], sample_rate.to_string());
    assert_eq!(stream["channels"], channels);
    let format = &info["format"];
    assert!(format["format_name"].as_str().unwrap_or("").contains("mp4"), "{format}");
    assert_eq!(format["tags"]["major_brand"], "M4A ", "{format}");
    let bitrate: f64 = stream["bit_rate"].as_str().expect("bit_rate").parse().expect("number");
    assert!((bitrate - 128_000.0).abs() < 128_000.0 * 0.06, "stream bit_rate {bitrate}");
    // The container duration is the edited length: the source's, to ffprobe's microsecond print.
    let duration: f64 = format["duration"].as_str().expect("duration").parse().expect("number");
    let exact = frames as f64 / f64::from(sample_rate);
    assert!((duration - exact).abs() < 2e-6, "ffprobe duration {duration}, source {exact}");

    // Gapless: ffmpeg skips the priming by the edit list, sample-exactly: what it outputs lines up
    // with the source at lag 0. (ffmpeg 5.1 leaves the end padding, less than one frame, in place;
    // the container duration above is exact.)
    let decoded = ffmpeg_decode(&path);
    let decoded_frames = decoded.len() / usize::from(channels);
    assert!(
        decoded_frames >= frames && decoded_frames - frames < 1024,
        "ffmpeg decoded {decoded_frames} samples per channel, the source has {frames}"
    );
    for c in 0..usize::from(channels) {
        let src = channel(&source.samples, usize::from(channels), c);
        let dec = channel(&decoded, usize::from(channels), c);
        let corr = correlation(&src, &dec, 0, src.len());
        assert!(corr > 0.99, "channel {c}: correlation {corr:.4} at lag 0");
    }
    eprintln!("{sample_rate} Hz x{channels}: ffprobe duration {duration}, bit_rate {bitrate}, ok");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn ffprobe_and_ffmpeg_agree() {
    if !tool_available("ffprobe") || !tool_available("ffmpeg") {
        println!("skipped: ffprobe/ffmpeg not on PATH (apt-get install ffmpeg to run this suite)");
        return;
    }
    check(44_100, 2, 3.3);
    check(48_000, 1, 2.05);
    check(48_000, 2, 0.01); // shorter than one AAC frame
    check(96_000, 2, 0.5); // above 65535 Hz: the mp4a box cannot carry the rate, the ASC does
    check(22_050, 1, 0.5);
    let _: Option<Error> = None;
}
