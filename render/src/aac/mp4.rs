//! A minimal ISO-BMFF (MP4) writer for one AAC track: the `.m4a` layout iTunes, browsers and
//! ffmpeg expect, with `moov` ahead of `mdat` so players can start before the download ends.
//!
//! Crates on crates.io either write `moov` after `mdat` without edit lists or iTunes metadata
//! (`mp4` 0.14), target video recording (`muxide`), or need a newer toolchain than the workspace's
//! (`shiguredo_mp4`); the boxes needed here are few and fixed, so they are written directly.
//!
//! ```text
//! ftyp  M4A  (M4A , mp42, isom)
//! moov  mvhd · trak(tkhd · edts/elst · mdia(mdhd · hdlr · minf(smhd · dinf · stbl(stsd/mp4a/esds ·
//!       stts · stsc · stsz · stco|co64)))) · udta/meta(hdlr · ilst(©too · ----:iTunSMPB))
//! mdat  access units, in order
//! ```
//!
//! Gapless playback: the edit list starts the presentation `delay` samples into the media (the
//! encoder's priming) and lasts exactly the source length; iTunSMPB says the same for players that
//! read iTunes metadata instead.

/// Access units per chunk (~0.7 s at 44.1 kHz): few `stco` entries, still fine-grained reads.
const SAMPLES_PER_CHUNK: usize = 32;

/// One encoded AAC track and what the container says about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Track<'a> {
    pub sample_rate: u32,
    pub channels: u16,
    /// PCM samples per channel in one access unit.
    pub frame_length: u32,
    /// Priming samples (per channel) at the start of the decoded media.
    pub delay: u32,
    /// Source length in samples per channel: the presented duration.
    pub source_frames: u64,
    /// Byte size of each access unit, in order; `payload` is their concatenation.
    pub sizes: &'a [u32],
    pub payload: &'a [u8],
    /// AudioSpecificConfig for the `esds` box.
    pub audio_specific_config: &'a [u8],
    /// Written as the iTunes encoder tag (`©too`).
    pub encoder: &'a str,
}

impl Track<'_> {
    /// Decoded media length in samples per channel (priming and padding included).
    pub fn media_frames(&self) -> u64 {
        self.sizes.len() as u64 * u64::from(self.frame_length)
    }

    /// Samples the decoder outputs after the source's end (to the end of the last access unit).
    pub fn padding(&self) -> u64 {
        self.media_frames().saturating_sub(u64::from(self.delay) + self.source_frames)
    }
}

/// The iTunSMPB value: priming, padding and original length in hex, as iTunes writes it.
pub(crate) fn itunsmpb(delay: u32, padding: u64, source_frames: u64) -> String {
    format!(
        " 00000000 {delay:08X} {padding:08X} {source_frames:016X} 00000000 00000000 00000000 00000000 \
         00000000 00000000 00000000 00000000"
    )
}

/// Writes the whole `.m4a` file.
pub(crate) fn write_m4a(track: &Track<'_>) -> Result<Vec<u8>, String> {
    let payload_len = track.payload.len() as u64;
    if track.sizes.iter().map(|&s| u64::from(s)).sum::<u64>() != payload_len {
        return Err("access unit sizes do not add up to the payload".into());
    }
    u32::try_from(track.sizes.len()).map_err(|_| "too many access units".to_string())?;

    let mut ftyp = Writer::default();
    ftyp.boxed(b"ftyp", |w| {
        w.bytes(b"M4A ");
        w.u32(0);
        for brand in [b"M4A ", b"mp42", b"isom"] {
            w.bytes(brand);
        }
    });

    // The moov's size depends on the offset width, not on the offsets: decide the width from an
    // upper bound, write once to learn the size, then again with the real base offset.
    let moov_bound = 4096 + 12 * track.sizes.len() as u64;
    let large = ftyp.buf.len() as u64 + moov_bound + 16 + payload_len > u64::from(u32::MAX);
    let mdat_header_len: u64 = if large { 16 } else { 8 };
    let probe = moov(track, 0, large);
    let base = ftyp.buf.len() as u64 + probe.len() as u64 + mdat_header_len;
    let moov = moov(track, base, large);
    if moov.len() != probe.len() {
        return Err("moov size changed between passes".into());
    }

    let mut out = ftyp.buf;
    out.reserve(moov.len() + mdat_header_len as usize + track.payload.len());
    out.extend_from_slice(&moov);
    if large {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&(16 + payload_len).to_be_bytes());
    } else {
        out.extend_from_slice(&((8 + payload_len) as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
    }
    out.extend_from_slice(track.payload);
    Ok(out)
}

/// The `moov` box, with chunk offsets counted from `base` (the first payload byte in the file).
fn moov(t: &Track<'_>, base: u64, co64: bool) -> Vec<u8> {
    let timescale = t.sample_rate;
    let duration = t.source_frames; // movie and track duration: the edited (presented) length
    let media_duration = t.media_frames();
    let mut w = Writer::default();
    w.boxed(b"moov", |w| {
        w.full(b"mvhd", version_for(duration), 0, |w| {
            w.times_and_duration(timescale, duration, None);
            w.u32(0x0001_0000); // rate 1.0
            w.u16(0x0100); // volume 1.0
            w.zeros(10);
            w.matrix();
            w.zeros(24);
            w.u32(2); // next track id
        });
        w.boxed(b"trak", |w| {
            w.full(b"tkhd", version_for(duration), 0x3, |w| {
                w.times_and_duration(0, duration, Some(1));
                w.zeros(8);
                w.u16(0); // layer
                w.u16(1); // alternate group (audio)
                w.u16(0x0100); // volume
                w.u16(0);
                w.matrix();
                w.u32(0); // width
                w.u32(0); // height
            });
            w.boxed(b"edts", |w| {
                let version = version_for(duration.max(u64::from(t.delay)));
                w.full(b"elst", version, 0, |w| {
                    w.u32(1);
                    if version == 1 {
                        w.u64(duration);
                        w.u64(u64::from(t.delay));
                    } else {
                        w.u32(duration as u32);
                        w.u32(t.delay);
                    }
                    w.u32(0x0001_0000); // media rate 1.0
                });
            });
            w.boxed(b"mdia", |w| {
                w.full(b"mdhd", version_for(media_duration), 0, |w| {
                    w.times_and_duration(timescale, media_duration, None);
                    w.u16(0x55c4); // language "und"
                    w.u16(0);
                });
                w.handler(b"soun", b"SoundHandler\0");
                w.boxed(b"minf", |w| {
                    w.full(b"smhd", 0, 0, |w| w.u32(0));
                    w.boxed(b"dinf", |w| {
                        w.full(b"dref", 0, 0, |w| {
                            w.u32(1);
                            w.full(b"url ", 0, 1, |_| {}); // flag 1: media is in this file
                        });
                    });
                    w.boxed(b"stbl", |w| sample_table(w, t, base, co64));
                });
            });
        });
        w.boxed(b"udta", |w| {
            w.full(b"meta", 0, 0, |w| {
                w.full(b"hdlr", 0, 0, |w| {
                    w.u32(0);
                    w.bytes(b"mdir");
                    w.bytes(b"appl");
                    w.zeros(8);
                    w.u8(0);
                });
                w.boxed(b"ilst", |w| {
                    w.boxed(b"\xa9too", |w| w.data_utf8(t.encoder));
                    w.boxed(b"----", |w| {
                        w.full(b"mean", 0, 0, |w| w.bytes(b"com.apple.iTunes"));
                        w.full(b"name", 0, 0, |w| w.bytes(b"iTunSMPB"));
                        w.data_utf8(&itunsmpb(t.delay, t.padding(), t.source_frames));
                    });
                });
            });
        });
    });
    w.buf
}

fn sample_table(w: &mut Writer, t: &Track<'_>, base: u64, co64: bool) {
    let count = t.sizes.len() as u32; // checked by write_m4a
    w.full(b"stsd", 0, 0, |w| {
        w.u32(1);
        w.boxed(b"mp4a", |w| {
            w.zeros(6);
            w.u16(1); // data reference index
            w.zeros(8);
            w.u16(t.channels);
            w.u16(16); // sample size
            w.u16(0);
            w.u16(0);
            // 16.16 fixed point; rates above 65535 Hz do not fit and are left to the ASC.
            w.u32(if t.sample_rate <= 0xffff { t.sample_rate << 16 } else { 0 });
            w.full(b"esds", 0, 0, |w| esds(w, t));
        });
    });
    w.full(b"stts", 0, 0, |w| {
        if count == 0 {
            w.u32(0);
        } else {
            w.u32(1);
            w.u32(count);
            w.u32(t.frame_length);
        }
    });
    let full_chunks = t.sizes.len() / SAMPLES_PER_CHUNK;
    let rest = t.sizes.len() % SAMPLES_PER_CHUNK;
    w.full(b"stsc", 0, 0, |w| {
        let entries = u32::from(full_chunks > 0) + u32::from(rest > 0);
        w.u32(entries);
        if full_chunks > 0 {
            w.u32(1);
            w.u32(SAMPLES_PER_CHUNK as u32);
            w.u32(1);
        }
        if rest > 0 {
            w.u32(full_chunks as u32 + 1);
            w.u32(rest as u32);
            w.u32(1);
        }
    });
    w.full(b"stsz", 0, 0, |w| {
        w.u32(0); // sizes vary
        w.u32(count);
        for &size in t.sizes {
            w.u32(size);
        }
    });
    w.full(if co64 { b"co64" } else { b"stco" }, 0, 0, |w| {
        w.u32(t.sizes.chunks(SAMPLES_PER_CHUNK).len() as u32);
        let mut offset = base;
        for chunk in t.sizes.chunks(SAMPLES_PER_CHUNK) {
            if co64 {
                w.u64(offset);
            } else {
                w.u32(offset as u32);
            }
            offset += chunk.iter().map(|&s| u64::from(s)).sum::<u64>();
        }
    });
}

/// `esds`: ES_Descriptor ⊃ DecoderConfigDescriptor ⊃ DecoderSpecificInfo (the ASC), plus the
/// SLConfigDescriptor MP4 requires (ISO/IEC 14496-1 §7.2.6, 14496-14 §3.1.2).
fn esds(w: &mut Writer, t: &Track<'_>) {
    let asc = t.audio_specific_config;
    let max_au = t.sizes.iter().copied().max().unwrap_or(0).min(0x00ff_ffff);
    let media_secs = t.media_frames() as f64 / f64::from(t.sample_rate.max(1));
    let total_bits = t.payload.len() as f64 * 8.0;
    let avg_bitrate = if media_secs > 0.0 { (total_bits / media_secs).round() as u32 } else { 0 };
    let max_bitrate = peak_bitrate(t).max(avg_bitrate);

    let dsi_len = asc.len();
    let dcd_len = 13 + descriptor_header_len(dsi_len) + dsi_len;
    let es_len = 3 + descriptor_header_len(dcd_len) + dcd_len + 3;
    w.descriptor(0x03, es_len);
    w.u16(1); // ES_ID
    w.u8(0); // no dependency, URL or OCR stream
    w.descriptor(0x04, dcd_len);
    w.u8(0x40); // objectTypeIndication: MPEG-4 Audio
    w.u8((0x05 << 2) | 1); // streamType audio, upStream 0, reserved 1
    w.bytes(&max_au.to_be_bytes()[1..]); // bufferSizeDB, 24 bits
    w.u32(max_bitrate);
    w.u32(avg_bitrate);
    w.descriptor(0x05, dsi_len);
    w.bytes(asc);
    w.descriptor(0x06, 1);
    w.u8(0x02); // SLConfig predefined: MP4
}

/// Highest bitrate over any one-second window of access units.
fn peak_bitrate(t: &Track<'_>) -> u32 {
    let window = (t.sample_rate as usize).div_ceil(t.frame_length.max(1) as usize).max(1);
    let seconds = (window as f64 * f64::from(t.frame_length)) / f64::from(t.sample_rate.max(1));
    let mut sum: u64 = 0;
    let mut peak: u64 = 0;
    for (i, &size) in t.sizes.iter().enumerate() {
        sum += u64::from(size);
        if i >= window {
            sum -= u64::from(t.sizes[i - window]);
        }
        peak = peak.max(sum);
    }
    (peak as f64 * 8.0 / seconds).round() as u32
}

fn descriptor_header_len(len: usize) -> usize {
    1 + descriptor_size_bytes(len)
}

fn descriptor_size_bytes(len: usize) -> usize {
    let mut n = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        n += 1;
        rest >>= 7;
    }
    n
}

fn version_for(value: u64) -> u8 {
    u8::from(value > u64::from(u32::MAX))
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// A box: 32-bit size (patched after `body`), type, body.
    fn boxed(&mut self, kind: &[u8; 4], body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.u32(0);
        self.bytes(kind);
        body(self);
        let size = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
    }

    /// A full box: a box whose body starts with version (8 bits) and flags (24 bits).
    fn full(&mut self, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Self)) {
        self.boxed(kind, |w| {
            w.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
            body(w);
        });
    }

    /// Creation and modification times (0: output must not depend on the clock), timescale unless
    /// `track_id` is given (tkhd has the track id there instead), then the duration; 32 or 64 bits
    /// as the box version chosen by [`version_for`].
    fn times_and_duration(&mut self, timescale: u32, duration: u64, track_id: Option<u32>) {
        let v1 = version_for(duration) == 1;
        if v1 {
            self.u64(0);
            self.u64(0);
        } else {
            self.u32(0);
            self.u32(0);
        }
        match track_id {
            Some(id) => {
                self.u32(id);
                self.u32(0);
            }
            None => self.u32(timescale),
        }
        if v1 {
            self.u64(duration);
        } else {
            self.u32(duration as u32);
        }
    }

    fn matrix(&mut self) {
        for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
    }

    fn handler(&mut self, kind: &[u8; 4], name: &[u8]) {
        self.full(b"hdlr", 0, 0, |w| {
            w.u32(0);
            w.bytes(kind);
            w.zeros(12);
            w.bytes(name);
        });
    }

    /// An iTunes `data` atom holding UTF-8 text (type 1, default locale).
    fn data_utf8(&mut self, text: &str) {
        self.boxed(b"data", |w| {
            w.u32(1);
            w.u32(0);
            w.bytes(text.as_bytes());
        });
    }

    /// An MPEG-4 descriptor header: tag and size in 7-bit groups, high bit = "more follows".
    fn descriptor(&mut self, tag: u8, len: usize) {
        self.u8(tag);
        let n = descriptor_size_bytes(len);
        for i in (0..n).rev() {
            let group = ((len >> (7 * i)) & 0x7f) as u8;
            self.u8(if i > 0 { group | 0x80 } else { group });
        }
    }
}
