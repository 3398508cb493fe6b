//! `artwork`: release artwork resized to the configured sizes, safely.
//!
//! Stores show cover art at a few fixed sizes (by default 1400, 500 and 250 px on the longest
//! side). Masters arrive as JPEG or PNG from labels and distributors, so this module is also a
//! gate for untrusted images: the dimensions are read from the header and checked *before* any
//! pixel is decoded, so a 60,000 × 60,000 "decompression bomb" of a few kilobytes is refused
//! instead of allocating 14 GB; the decoder then runs under `image::Limits` as a second fence.
//!
//! ```text
//!  bytes ─▶ sniff (JPEG/PNG) ─▶ header: w × h ≤ MAX_PIXELS? ─▶ decode (Limits) ─▶ EXIF orientation
//!        ─▶ for each size: Lanczos3 resize (fast_image_resize) ─▶ JPEG q90, or PNG if it has alpha
//! ```
//!
//! Rules of the outputs:
//! - the longest side becomes the configured size and the aspect ratio is kept (the short side
//!   is rounded to the nearest pixel, at least 1);
//! - never upscale: a master smaller than a size is written at its own dimensions under that
//!   size's name (`artwork-1400.jpg` from a 1000 px master is 1000 px), so consumers always find
//!   every configured file and the metadata says which ones were not reduced (`"resized": false`);
//! - masters with a real alpha channel (some pixel not opaque) become PNG, everything else JPEG at
//!   quality 90 (an opaque RGBA PNG becomes a JPEG: the alpha carries nothing);
//! - resizing happens in the stored (sRGB) values, like most image services.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader, Limits,
};
use serde_json::json;

use crate::{Error, OutputFile, Rendered};

/// Largest master accepted, in pixels (100 MP, e.g. 10,000 × 10,000): far above any real cover
/// (3000 × 3000 is the usual store requirement), far below what would exhaust a worker.
pub const MAX_PIXELS: u64 = 100_000_000;
/// Longest side accepted, so a 1 × 100,000,000 strip is refused too.
pub const MAX_SIDE: u32 = 30_000;
/// What the decoder may allocate in all (an RGBA16 image of `MAX_PIXELS` is 800 MB).
const MAX_DECODER_ALLOC: u64 = 8 * MAX_PIXELS;
/// JPEG quality of the resizes: visually lossless for artwork at these sizes.
pub const JPEG_QUALITY: u8 = 90;

fn undecodable(what: impl std::fmt::Display) -> Error {
    Error::Undecodable(format!("artwork: {what}"))
}

fn internal(what: impl std::fmt::Display) -> Error {
    Error::Internal { renderer: "artwork".into(), reason: what.to_string() }
}

fn image_error(e: ImageError) -> Error {
    match e {
        ImageError::Limits(l) => Error::TooLarge {
            what: "artwork decoding",
            actual: l.to_string(),
            limit: format!("{MAX_DECODER_ALLOC} bytes"),
        },
        other => undecodable(format!("corrupt image: {other}")),
    }
}

/// The pixels of a decoded master, in the one of two layouts the resizer and encoders share.
struct Pixels {
    width: u32,
    height: u32,
    /// RGBA8 if the master has a real alpha channel, RGB8 otherwise.
    alpha: bool,
    data: Vec<u8>,
}

/// Reads the header only: format and dimensions.
fn inspect(bytes: &[u8]) -> Result<(ImageFormat, u32, u32), Error> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        Ok(other) => return Err(undecodable(format!("{other:?} images are not supported, only JPEG and PNG"))),
        Err(_) => return Err(undecodable("not a JPEG or PNG image")),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (width, height) = reader.into_dimensions().map_err(image_error)?;
    Ok((format, width, height))
}

fn check_dimensions(width: u32, height: u32) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(undecodable(format!("the header gives an empty image ({width} × {height})")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS || width.max(height) > MAX_SIDE {
        return Err(Error::TooLarge {
            what: "artwork",
            actual: format!("{width} × {height} px ({:.1} MP)", pixels as f64 / 1e6),
            limit: format!("{} MP and {MAX_SIDE} px a side", MAX_PIXELS / 1_000_000),
        });
    }
    Ok(())
}

fn decode(bytes: &[u8], format: ImageFormat) -> Result<Pixels, Error> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height)?;
    // A broken EXIF block is no reason to refuse the picture: keep it as stored.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let has_alpha = decoder.color_type().has_alpha();
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    if has_alpha {
        let rgba = img.into_rgba8().into_raw();
        if rgba.chunks_exact(4).any(|p| p[3] != u8::MAX) {
            return Ok(Pixels { width, height, alpha: true, data: rgba });
        }
        let rgb = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        return Ok(Pixels { width, height, alpha: false, data: rgb });
    }
    Ok(Pixels { width, height, alpha: false, data: img.into_rgb8().into_raw() })
}

/// Output dimensions for a `size` on the longest side, never larger than the source.
pub fn fit(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if size >= longest || longest == 0 {
        return (width, height);
    }
    let scale = |side: u32| ((f64::from(side) * f64::from(size) / f64::from(longest)).round() as u32).clamp(1, size);
    if width >= height {
        (size, scale(height))
    } else {
        (scale(width), size)
    }
}

fn encode(pixels: &[u8], width: u32, height: u32, alpha: bool) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    if alpha {
        PngEncoder::new(&mut out).write_image(pixels, width, height, ExtendedColorType::Rgba8)
    } else {
        JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).write_image(
            pixels,
            width,
            height,
            ExtendedColorType::Rgb8,
        )
    }
    .map_err(|e| internal(format!("encoding {width} × {height} failed: {e}")))?;
    Ok(out)
}

/// Resizes the image master `bytes` to each of `sizes` (longest side, in pixels).
///
/// Metadata: `{"source": {"format", "width", "height"}, "outputs": [{"size", "name", "width",
/// "height", "resized"}]}`; files `artwork-{size}.jpg` (or `.png` for masters with alpha).
pub fn render(bytes: &[u8], sizes: &[u32]) -> Result<Rendered, Error> {
    if bytes.is_empty() {
        return Err(Error::Empty("artwork: the master is a zero-byte file".into()));
    }
    let (format, width, height) = inspect(bytes)?;
    check_dimensions(width, height)?;
    let src = decode(bytes, format)?;
    let pixel_type = if src.alpha { PixelType::U8x4 } else { PixelType::U8x3 };
    let (ext, content_type) = if src.alpha { ("png", "image/png") } else { ("jpg", "image/jpeg") };
    let src_image = Image::from_vec_u8(src.width, src.height, src.data, pixel_type).map_err(internal)?;
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));

    let mut wanted: Vec<u32> = Vec::with_capacity(sizes.len());
    for &size in sizes {
        if size > 0 && !wanted.contains(&size) {
            wanted.push(size);
        }
    }
    let mut files = Vec::with_capacity(wanted.len());
    let mut outputs = Vec::with_capacity(wanted.len());
    for size in wanted {
        let (w, h) = fit(src.width, src.height, size);
        let resized = (w, h) != (src.width, src.height);
        let encoded = if resized {
            let mut dst = Image::new(w, h, pixel_type);
            resizer.resize(&src_image, &mut dst, &options).map_err(internal)?;
            encode(dst.buffer(), w, h, src.alpha)?
        } else {
            encode(src_image.buffer(), w, h, src.alpha)?
        };
        let name = format!("artwork-{size}.{ext}");
        outputs.push(json!({ "size": size, "name": name, "width": w, "height": h, "resized": resized }));
        files.push(OutputFile { name, content_type, bytes: encoded });
    }
    let source_format = if format == ImageFormat::Png { "png" } else { "jpeg" };
    let metadata = json!({
        "source": { "format": source_format, "width": src.width, "height": src.height },
        "outputs": outputs,
    });
    Ok(Rendered { metadata, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    /// A test card: red left half, blue right half, a green band across the middle.
    fn card(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            if y >= height * 9 / 20 && y < height * 11 / 20 {
                Rgb([0, 200, 0])
            } else if x < width / 2 {
                Rgb([220, 20, 20])
            } else {
                Rgb([20, 20, 220])
            }
        })
    }

    fn jpeg(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95).encode_image(img).expect("jpeg");
        out
    }

    fn png(img: &RgbaImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("png");
        out
    }

    fn load(file: &OutputFile) -> DynamicImage {
        image::load_from_memory(&file.bytes).expect("output decodes")
    }

    #[test]
    fn fit_keeps_the_aspect_and_never_upscales() {
        assert_eq!(fit(1920, 1080, 1400), (1400, 788));
        assert_eq!(fit(1920, 1080, 500), (500, 281));
        assert_eq!(fit(1080, 1920, 250), (141, 250));
        assert_eq!(fit(3000, 3000, 1400), (1400, 1400));
        assert_eq!(fit(300, 200, 1400), (300, 200));
        assert_eq!(fit(300, 200, 300), (300, 200));
        assert_eq!(fit(10_000, 3, 250), (250, 1), "the short side never rounds to zero");
    }

    #[test]
    fn a_jpeg_master_resizes_to_every_size_with_its_aspect() {
        let master = jpeg(&card(1920, 1080));
        let r = render(&master, &[1400, 500, 250]).expect("renders");
        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["artwork-1400.jpg", "artwork-500.jpg", "artwork-250.jpg"]);
        assert_eq!(r.metadata["source"], json!({ "format": "jpeg", "width": 1920, "height": 1080 }));
        for (file, (w, h)) in r.files.iter().zip([(1400, 788), (500, 281), (250, 141)]) {
            assert_eq!(file.content_type, "image/jpeg");
            let img = load(file).into_rgb8();
            assert_eq!(img.dimensions(), (w, h), "{}", file.name);
            // The picture survives: red on the left, blue on the right, green in the middle.
            let near = |p: &Rgb<u8>, q: [u8; 3]| p.0.iter().zip(q).all(|(a, b)| a.abs_diff(b) < 30);
            assert!(
                near(img.get_pixel(w / 4, h / 5), [220, 20, 20]),
                "{}: {:?}",
                file.name,
                img.get_pixel(w / 4, h / 5)
            );
            assert!(near(img.get_pixel(3 * w / 4, 4 * h / 5), [20, 20, 220]), "{}", file.name);
            assert!(near(img.get_pixel(w / 2, h / 2), [0, 200, 0]), "{}", file.name);
        }
        assert_eq!(
            r.metadata["outputs"][1],
            json!({ "size": 500, "name": "artwork-500.jpg", "width": 500, "height": 281, "resized": true })
        );
    }

    #[test]
    fn a_small_master_is_not_upscaled() {
        let master = jpeg(&card(300, 200));
        let r = render(&master, &[1400, 500, 250]).expect("renders");
        let dims: Vec<(u32, u32)> = r
            .files
            .iter()
            .map(|f| {
                let i = load(f);
                (i.width(), i.height())
            })
            .collect();
        assert_eq!(dims, [(300, 200), (300, 200), (250, 167)]);
        let resized: Vec<bool> =
            (0..3).map(|i| r.metadata["outputs"][i]["resized"].as_bool().unwrap_or(true)).collect();
        assert_eq!(resized, [false, false, true]);
    }

    #[test]
    fn png_with_alpha_stays_png_and_opaque_png_becomes_jpeg() {
        let translucent = RgbaImage::from_fn(800, 400, |x, _| Rgba([255, 128, 0, if x < 400 { 255 } else { 0 }]));
        let r = render(&png(&translucent), &[200]).expect("renders");
        assert_eq!((r.files[0].name.as_str(), r.files[0].content_type), ("artwork-200.png", "image/png"));
        let img = load(&r.files[0]).into_rgba8();
        assert_eq!(img.dimensions(), (200, 100));
        assert_eq!(img.get_pixel(20, 50).0, [255, 128, 0, 255]);
        assert_eq!(img.get_pixel(180, 50).0[3], 0, "transparent stays transparent");

        let opaque = RgbaImage::from_fn(800, 400, |_, _| Rgba([10, 20, 30, 255]));
        let r = render(&png(&opaque), &[200]).expect("renders");
        assert_eq!(
            (r.files[0].name.as_str(), r.metadata["source"]["format"].as_str()),
            ("artwork-200.jpg", Some("png"))
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A portrait JPEG stored sideways with orientation 6 ("rotate 90° clockwise").
        let stored = jpeg(&card(400, 200));
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&u16::try_from(exif.len() + 2).expect("short").to_be_bytes());
        app1.append(&mut exif);
        let mut master = stored[..2].to_vec();
        master.extend_from_slice(&app1);
        master.extend_from_slice(&stored[2..]);
        let r = render(&master, &[100]).expect("renders");
        assert_eq!(r.metadata["source"], json!({ "format": "jpeg", "width": 200, "height": 400 }));
        assert_eq!(r.metadata["outputs"][0]["width"].as_u64(), Some(50));
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = u32::MAX;
        for b in bytes {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        // A valid 1 × 1 PNG whose IHDR then claims 60,000 × 60,000 (3.6 GP, 14 GB of RGBA).
        let mut bomb = png(&RgbaImage::from_pixel(1, 1, Rgba([1, 2, 3, 4])));
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = render(&bomb, &[500]).expect_err("bomb");
        assert!(matches!(err, Error::TooLarge { .. }) && err.to_string().contains("60000 × 60000"), "{err}");

        // A JPEG whose frame header claims 65,000 × 20,000 (1.3 GP).
        let mut bomb = jpeg(&card(16, 16));
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0");
        bomb[sof + 5..sof + 7].copy_from_slice(&20_000u16.to_be_bytes());
        bomb[sof + 7..sof + 9].copy_from_slice(&65_000u16.to_be_bytes());
        let err = render(&bomb, &[500]).expect_err("bomb");
        assert!(matches!(err, Error::TooLarge { .. }) && err.to_string().contains("MP"), "{err}");
        assert!(err.is_permanent());
    }

    #[test]
    fn garbage_and_truncation_are_permanent_errors() {
        let err = render(b"definitely not an image", &[500]).expect_err("garbage");
        assert!(err.to_string().contains("not a JPEG or PNG"), "{err}");
        assert!(matches!(render(&[], &[500]), Err(Error::Empty(_))));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(render(gif, &[500]).expect_err("gif").to_string().contains("only JPEG and PNG"));
        let whole = jpeg(&card(640, 480));
        let err = render(&whole[..whole.len() / 3], &[500]);
        // A truncated JPEG either fails to decode or decodes its first rows (zune pads the rest
        // with grey); a truncated PNG always fails. Neither panics.
        if let Err(e) = err {
            assert!(e.is_permanent(), "{e}");
        }
        let whole = png(&RgbaImage::from_fn(64, 64, |x, y| Rgba([x as u8, y as u8, 0, 128])));
        let err = render(&whole[..whole.len() / 2], &[32]).expect_err("truncated png");
        assert!(err.is_permanent(), "{err}");
        // An audio master handed to artwork.
        let wav = crate::decode::tests::wav(8_000, 1, &[0.1; 100]);
        assert!(render(&wav, &[500]).expect_err("wav").to_string().contains("not a JPEG or PNG"));
    }
}
