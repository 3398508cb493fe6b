//! The only place Kiln calls into the Fraunhofer FDK AAC encoder (C, built from the source vendored
//! by `fdk-aac-sys`). The safe `fdk-aac` wrapper does not expose afterburner or flush control, so
//! this module wraps the raw `aacEnc*` API in a small safe type: an owned handle that is closed on
//! drop, configuration through `aacEncoder_SetParam`, and per-call encode/flush on borrowed slices.
//!
//! Every `unsafe` block below states the invariant it relies on. The encoder is configured for
//! AAC-LC in raw transport (one access unit per output, no ADTS headers): the container carries the
//! AudioSpecificConfig read from `aacEncInfo`.

use std::ffi::c_void;
use std::fmt;
use std::ptr;

use fdk_aac_sys as sys;

/// A failed fdk-aac call: which call and the library's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FdkError {
    pub call: &'static str,
    pub code: u32,
}

impl fmt::Display for FdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.code {
            sys::AACENC_ERROR_AACENC_INVALID_HANDLE => "invalid handle",
            sys::AACENC_ERROR_AACENC_MEMORY_ERROR => "memory error",
            sys::AACENC_ERROR_AACENC_UNSUPPORTED_PARAMETER => "unsupported parameter",
            sys::AACENC_ERROR_AACENC_INVALID_CONFIG => "invalid configuration",
            sys::AACENC_ERROR_AACENC_INIT_ERROR => "initialisation error",
            sys::AACENC_ERROR_AACENC_INIT_AAC_ERROR => "AAC initialisation error",
            sys::AACENC_ERROR_AACENC_INIT_TP_ERROR => "transport initialisation error",
            sys::AACENC_ERROR_AACENC_ENCODE_ERROR => "encode error",
            sys::AACENC_ERROR_AACENC_ENCODE_EOF => "end of stream",
            _ => "error",
        };
        write!(f, "fdk-aac {} failed: {} (0x{:02x})", self.call, name, self.code)
    }
}

fn check(call: &'static str, code: sys::AACENC_ERROR) -> Result<(), FdkError> {
    if code == sys::AACENC_ERROR_AACENC_OK {
        Ok(())
    } else {
        Err(FdkError { call, code })
    }
}

/// Encoder settings. `channels` is 1 or 2 (callers downmix wider input first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub sample_rate: u32,
    pub channels: u16,
    pub bitrate: u32,
}

/// What the configured encoder reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Info {
    /// PCM samples per channel in one access unit (1024 for AAC-LC).
    pub frame_length: usize,
    /// Priming samples per channel the decoder outputs before the first source sample; without the
    /// SBR decoder's delay, i.e. what an edit list must skip (2048 for fdk AAC-LC).
    pub delay: u32,
    /// Upper bound of one access unit in bytes.
    pub max_out_bytes: usize,
    /// AudioSpecificConfig (ISO/IEC 14496-3) for the `esds` box.
    pub audio_specific_config: Vec<u8>,
    /// The bitrate the encoder actually uses (fdk lowers it where the rate/channels cannot carry it).
    pub bitrate: u32,
}

/// Result of one `aacEncEncode` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// Interleaved input samples the encoder took (a multiple of the channel count).
    pub consumed: usize,
    /// Bytes of one access unit written to the output slice (0 while the encoder fills its buffer).
    pub written: usize,
}

/// An open, configured AAC-LC encoder. Not `Sync`/`Send` by construction (raw pointer), which
/// matches its use: one encoder per render call, on one thread.
pub(crate) struct Encoder {
    handle: sys::HANDLE_AACENCODER,
    channels: usize,
    info: Info,
}

impl Encoder {
    /// Opens and initialises an AAC-LC, CBR, afterburner-on, raw-transport encoder.
    pub fn new(settings: Settings) -> Result<Self, FdkError> {
        let mut handle: sys::HANDLE_AACENCODER = ptr::null_mut();
        // SAFETY: `handle` is a valid out-pointer; module flag 0x01 (AAC core only) and the channel
        // count are plain integers. On success fdk stores an owned instance in `handle`.
        let code = unsafe { sys::aacEncOpen(&mut handle, 0x01, u32::from(settings.channels)) };
        check("aacEncOpen", code)?;
        if handle.is_null() {
            return Err(FdkError { call: "aacEncOpen", code: sys::AACENC_ERROR_AACENC_INVALID_HANDLE });
        }
        // From here on `Drop` closes the handle, also on the error paths below.
        let mut encoder = Encoder { handle, channels: usize::from(settings.channels), info: empty_info() };

        let channel_mode = match settings.channels {
            1 => sys::CHANNEL_MODE_MODE_1,
            2 => sys::CHANNEL_MODE_MODE_2,
            _ => return Err(FdkError { call: "channel mode", code: sys::AACENC_ERROR_AACENC_INVALID_CONFIG }),
        };
        let params: [(sys::AACENC_PARAM, u32, &'static str); 9] = [
            (sys::AACENC_PARAM_AACENC_AOT, sys::AUDIO_OBJECT_TYPE_AOT_AAC_LC as u32, "set AOT"),
            (sys::AACENC_PARAM_AACENC_SAMPLERATE, settings.sample_rate, "set sample rate"),
            (sys::AACENC_PARAM_AACENC_CHANNELMODE, channel_mode as u32, "set channel mode"),
            // 1 = WAV channel order (L, R), which is what interleaved PCM here is.
            (sys::AACENC_PARAM_AACENC_CHANNELORDER, 1, "set channel order"),
            // 0 = constant bitrate, the value given by AACENC_BITRATE.
            (sys::AACENC_PARAM_AACENC_BITRATEMODE, 0, "set bitrate mode"),
            (sys::AACENC_PARAM_AACENC_BITRATE, settings.bitrate, "set bitrate"),
            (sys::AACENC_PARAM_AACENC_AFTERBURNER, 1, "set afterburner"),
            (sys::AACENC_PARAM_AACENC_TRANSMUX, sys::TRANSPORT_TYPE_TT_MP4_RAW as u32, "set transmux"),
            // 0 = implicit signalling: a plain AAC-LC AudioSpecificConfig.
            (sys::AACENC_PARAM_AACENC_SIGNALING_MODE, 0, "set signalling mode"),
        ];
        for (param, value, call) in params {
            // SAFETY: `encoder.handle` is a live handle from `aacEncOpen`; the call only reads
            // its integer arguments.
            check(call, unsafe { sys::aacEncoder_SetParam(encoder.handle, param, value) })?;
        }

        // SAFETY: a call with all-null buffer descriptors is fdk's documented way to apply the
        // parameters set above and initialise the encoder; the handle is live.
        let code = unsafe { sys::aacEncEncode(encoder.handle, ptr::null(), ptr::null(), ptr::null(), ptr::null_mut()) };
        check("aacEncEncode (init)", code)?;

        let mut raw = sys::AACENC_InfoStruct {
            maxOutBufBytes: 0,
            maxAncBytes: 0,
            inBufFillLevel: 0,
            inputChannels: 0,
            frameLength: 0,
            nDelay: 0,
            nDelayCore: 0,
            confBuf: [0; 64],
            confSize: 0,
        };
        // SAFETY: `raw` is a valid, writable `AACENC_InfoStruct` the library fills in.
        check("aacEncInfo", unsafe { sys::aacEncInfo(encoder.handle, &mut raw) })?;
        // SAFETY: the handle is live; GetParam only reads encoder state.
        let bitrate = unsafe { sys::aacEncoder_GetParam(encoder.handle, sys::AACENC_PARAM_AACENC_BITRATE) };

        let conf_len = (raw.confSize as usize).min(raw.confBuf.len());
        encoder.info = Info {
            frame_length: raw.frameLength as usize,
            delay: raw.nDelayCore,
            max_out_bytes: raw.maxOutBufBytes as usize,
            audio_specific_config: raw.confBuf[..conf_len].to_vec(),
            bitrate,
        };
        if encoder.info.frame_length == 0 || encoder.info.max_out_bytes == 0 || conf_len == 0 {
            return Err(FdkError { call: "aacEncInfo", code: sys::AACENC_ERROR_AACENC_INIT_ERROR });
        }
        Ok(encoder)
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Feeds interleaved PCM and writes at most one access unit into `out`, which must hold
    /// [`Info::max_out_bytes`]. The encoder may take fewer samples than offered: call again with
    /// the rest.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<Step, FdkError> {
        let samples = pcm.len() - pcm.len() % self.channels;
        let step = self.call(pcm.as_ptr(), samples, out)?;
        step.ok_or(FdkError { call: "aacEncEncode", code: sys::AACENC_ERROR_AACENC_ENCODE_EOF })
    }

    /// Drains the encoder after the last input: returns the size of the next access unit written
    /// into `out` (possibly 0), or `None` once everything has been emitted.
    pub fn flush(&mut self, out: &mut [u8]) -> Result<Option<usize>, FdkError> {
        // fdk wants a non-null input pointer even when flushing; it reads nothing from it.
        let dummy: i16 = 0;
        Ok(self.call(&dummy, usize::MAX, out)?.map(|step| step.written))
    }

    /// One `aacEncEncode` call. `samples == usize::MAX` means "flush" (numInSamples = -1).
    /// Returns `None` on the library's end-of-stream code.
    fn call(&mut self, pcm: *const i16, samples: usize, out: &mut [u8]) -> Result<Option<Step>, FdkError> {
        let flush = samples == usize::MAX;
        let too_big = || FdkError { call: "aacEncEncode (buffer size)", code: sys::AACENC_ERROR_AACENC_INVALID_CONFIG };
        let in_samples: i32 = if flush { -1 } else { i32::try_from(samples).map_err(|_| too_big())? };
        let in_bytes: i32 = if flush { 0 } else { in_samples.checked_mul(2).ok_or_else(too_big)? };
        let out_bytes = i32::try_from(out.len()).map_err(|_| too_big())?;

        let mut in_ptr = pcm as *mut c_void;
        let mut in_id = sys::AACENC_BufferIdentifier_IN_AUDIO_DATA as i32;
        let mut in_size = in_bytes;
        let mut in_el_size = 2i32;
        let in_desc = sys::AACENC_BufDesc {
            numBufs: 1,
            bufs: &mut in_ptr,
            bufferIdentifiers: &mut in_id,
            bufSizes: &mut in_size,
            bufElSizes: &mut in_el_size,
        };
        let mut out_ptr = out.as_mut_ptr() as *mut c_void;
        let mut out_id = sys::AACENC_BufferIdentifier_OUT_BITSTREAM_DATA as i32;
        let mut out_size = out_bytes;
        let mut out_el_size = 1i32;
        let out_desc = sys::AACENC_BufDesc {
            numBufs: 1,
            bufs: &mut out_ptr,
            bufferIdentifiers: &mut out_id,
            bufSizes: &mut out_size,
            bufElSizes: &mut out_el_size,
        };
        let in_args = sys::AACENC_InArgs { numInSamples: in_samples, numAncBytes: 0 };
        let mut out_args = sys::AACENC_OutArgs { numOutBytes: 0, numInSamples: 0, numAncBytes: 0, bitResState: 0 };

        // SAFETY: the handle is live and initialised. The descriptors point at locals that outlive
        // the call. The input buffer is `in_bytes` readable bytes of `pcm` (fdk only reads it; the
        // `*mut` is the C API's lack of const), or 0 bytes of a dummy when flushing. The output
        // buffer is `out.len()` writable bytes, exclusively borrowed for the call.
        let code = unsafe { sys::aacEncEncode(self.handle, &in_desc, &out_desc, &in_args, &mut out_args) };
        if code == sys::AACENC_ERROR_AACENC_ENCODE_EOF && flush {
            return Ok(None);
        }
        check("aacEncEncode", code)?;
        let consumed = usize::try_from(out_args.numInSamples).unwrap_or(0);
        let written = usize::try_from(out_args.numOutBytes).unwrap_or(0).min(out.len());
        Ok(Some(Step { consumed, written }))
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: `handle` came from a successful `aacEncOpen` and is closed exactly once here;
        // `aacEncClose` frees the instance and nulls the pointer.
        unsafe {
            sys::aacEncClose(&mut self.handle);
        }
    }
}

fn empty_info() -> Info {
    Info { frame_length: 0, delay: 0, max_out_bytes: 0, audio_specific_config: Vec::new(), bitrate: 0 }
}
