//! The thin PyO3 layer: argument conversion, errors -> `ValueError`, one crossing per frame.

use crate::error::Error;
use crate::jitter::{InsertResult, JitterBuffer as CoreJitter, JitterConfig, JitterStats, Playout};
use crate::legs::{self, Codec};
use crate::opus::{self as core_opus, Application, EncoderConfig};
use crate::resample::Resampler as CoreResampler;
use crate::{frame, g711, rtp};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyList};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Run `f` on the bytes of any C-contiguous buffer-protocol object (bytes, bytearray, memoryview,
/// numpy array) without copying.
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    let buf = PyUntypedBuffer::get(obj)
        .map_err(|e| PyValueError::new_err(format!("expected bytes or a buffer-protocol object: {e}")))?;
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("buffer must be C-contiguous"));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return f(&[]);
    }
    // SAFETY: `buf` holds a buffer view (PyObject_GetBuffer) for the whole call, so the exporter
    // keeps the memory alive and unresized; it is C-contiguous and `len_bytes` long, and `u8` has
    // no alignment requirement. We hold the GIL and never release it inside `f`, so no Python code
    // can write to it meanwhile (writes from foreign native threads without the GIL would break
    // the buffer protocol's contract, as for every consumer of it).
    let s = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) };
    f(s)
}

fn pcm16_in(obj: &Bound<'_, PyAny>, out: &mut Vec<i16>) -> PyResult<()> {
    with_bytes(obj, |b| frame::le_bytes_to_i16(b, out).map_err(Into::into))
}

fn bytes_from_i16<'py>(py: Python<'py>, s: &[i16]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, s.len() * 2, |b| {
        for (d, v) in b.chunks_exact_mut(2).zip(s) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    })
}

fn bytes_from_f32<'py>(py: Python<'py>, s: &[f32]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, s.len() * 4, |b| {
        for (d, v) in b.chunks_exact_mut(4).zip(s) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- G.711 and frame helpers

/// Encode PCM16 (little-endian) to G.711 μ-law.
#[pyfunction]
fn ulaw_encode<'py>(py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(pcm, |b| {
        if b.len() % 2 != 0 {
            return Err(PyValueError::new_err(format!("PCM16 buffer has odd length {}", b.len())));
        }
        PyBytes::new_with(py, b.len() / 2, |o| {
            for (d, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                *d = g711::ulaw_encode_sample(i16::from_le_bytes([c[0], c[1]]));
            }
            Ok(())
        })
    })
}

/// Encode PCM16 (little-endian) to G.711 A-law.
#[pyfunction]
fn alaw_encode<'py>(py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(pcm, |b| {
        if b.len() % 2 != 0 {
            return Err(PyValueError::new_err(format!("PCM16 buffer has odd length {}", b.len())));
        }
        PyBytes::new_with(py, b.len() / 2, |o| {
            for (d, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                *d = g711::alaw_encode_sample(i16::from_le_bytes([c[0], c[1]]));
            }
            Ok(())
        })
    })
}

/// Decode G.711 μ-law to PCM16 little-endian.
#[pyfunction]
fn ulaw_decode<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(data, |b| {
        PyBytes::new_with(py, b.len() * 2, |o| {
            for (d, &c) in o.chunks_exact_mut(2).zip(b) {
                d.copy_from_slice(&g711::ulaw_decode_sample(c).to_le_bytes());
            }
            Ok(())
        })
    })
}

/// Decode G.711 A-law to PCM16 little-endian.
#[pyfunction]
fn alaw_decode<'py>(py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(data, |b| {
        PyBytes::new_with(py, b.len() * 2, |o| {
            for (d, &c) in o.chunks_exact_mut(2).zip(b) {
                d.copy_from_slice(&g711::alaw_decode_sample(c).to_le_bytes());
            }
            Ok(())
        })
    })
}

/// PCM16 -> float32 little-endian bytes in [-1, 1).
#[pyfunction]
fn pcm16_to_float32<'py>(py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut v = Vec::new();
    pcm16_in(pcm, &mut v)?;
    let f: Vec<f32> = v.iter().map(|&s| frame::i16_to_f32(s)).collect();
    bytes_from_f32(py, &f)
}

/// float32 little-endian -> PCM16 (rounded, saturated; NaN -> 0).
#[pyfunction]
fn float32_to_pcm16<'py>(py: Python<'py>, samples: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut v = Vec::new();
    with_bytes(samples, |b| frame::le_bytes_to_f32(b, &mut v).map_err(Into::into))?;
    let s: Vec<i16> = v.iter().map(|&x| frame::f32_to_i16(x)).collect();
    bytes_from_i16(py, &s)
}

/// Multiply PCM16 by a linear gain (saturating).
#[pyfunction]
fn apply_gain<'py>(py: Python<'py>, pcm: &Bound<'py, PyAny>, gain: f32) -> PyResult<Bound<'py, PyBytes>> {
    if !gain.is_finite() {
        return Err(PyValueError::new_err("gain must be finite"));
    }
    let mut v = Vec::new();
    pcm16_in(pcm, &mut v)?;
    frame::gain(&mut v, gain);
    bytes_from_i16(py, &v)
}

/// Saturating mix of two equally long PCM16 streams.
#[pyfunction]
fn mix<'py>(py: Python<'py>, a: &Bound<'py, PyAny>, b: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut va = Vec::new();
    let mut vb = Vec::new();
    pcm16_in(a, &mut va)?;
    pcm16_in(b, &mut vb)?;
    frame::mix_into(&mut va, &vb)?;
    bytes_from_i16(py, &va)
}

/// RMS level of PCM16 in dBFS (-120 for silence or empty input).
#[pyfunction]
fn rms_dbfs(pcm: &Bound<'_, PyAny>) -> PyResult<f64> {
    let mut v = Vec::new();
    pcm16_in(pcm, &mut v)?;
    Ok(frame::rms_dbfs(&v))
}

// ---------------------------------------------------------------- RTP

/// A parsed RTP packet.
#[pyclass(frozen, get_all, module = "audio_core._native")]
struct RtpPacket {
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    extension_profile: Option<u16>,
    extension: Option<Py<PyBytes>>,
    payload: Py<PyBytes>,
}

#[pymethods]
impl RtpPacket {
    fn __repr__(&self) -> String {
        format!(
            "RtpPacket(pt={}, seq={}, ts={}, ssrc={:#x}, marker={}, payload_len={})",
            self.payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            self.marker,
            Python::attach(|py| self.payload.bind(py).as_bytes().len())
        )
    }
}

/// Parse an RTP packet (RFC 3550) with strict bounds checks.
#[pyfunction]
fn parse_rtp(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<RtpPacket> {
    with_bytes(data, |b| {
        let p = rtp::parse(b)?;
        Ok(RtpPacket {
            marker: p.marker,
            payload_type: p.payload_type,
            sequence: p.sequence,
            timestamp: p.timestamp,
            ssrc: p.ssrc,
            csrcs: p.csrcs,
            extension_profile: p.extension.map(|e| e.0),
            extension: p.extension.map(|e| PyBytes::new(py, e.1).unbind()),
            payload: PyBytes::new(py, p.payload).unbind(),
        })
    })
}

/// Build an RTP packet.
#[pyfunction]
#[pyo3(signature = (payload_type, sequence, timestamp, ssrc, payload, marker=false, csrcs=Vec::new(), extension=None))]
#[allow(clippy::too_many_arguments)]
fn build_rtp<'py>(
    py: Python<'py>,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &Bound<'py, PyAny>,
    marker: bool,
    csrcs: Vec<u32>,
    extension: Option<(u16, Vec<u8>)>,
) -> PyResult<Bound<'py, PyBytes>> {
    with_bytes(payload, |pl| {
        let mut out = Vec::with_capacity(12 + pl.len());
        let h = rtp::RtpHeader {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrcs: &csrcs,
            extension: extension.as_ref().map(|(p, d)| (*p, d.as_slice())),
        };
        rtp::build(&h, pl, &mut out)?;
        Ok(PyBytes::new(py, &out))
    })
}

/// An RFC 4733 telephone event.
#[pyclass(frozen, get_all, module = "audio_core._native")]
struct DtmfEvent {
    event: u8,
    digit: Option<char>,
    end: bool,
    volume: u8,
    duration: u16,
}

/// Parse an RFC 4733 telephone-event payload.
#[pyfunction]
fn parse_dtmf(payload: &Bound<'_, PyAny>) -> PyResult<DtmfEvent> {
    with_bytes(payload, |b| {
        let e = rtp::parse_dtmf(b)?;
        Ok(DtmfEvent { event: e.event, digit: e.digit(), end: e.end, volume: e.volume, duration: e.duration })
    })
}

// ---------------------------------------------------------------- Opus

fn parse_app(s: &str) -> PyResult<Application> {
    match s {
        "voip" => Ok(Application::Voip),
        "audio" => Ok(Application::Audio),
        "lowdelay" => Ok(Application::LowDelay),
        _ => Err(PyValueError::new_err(format!("application must be voip, audio or lowdelay, got {s:?}"))),
    }
}

/// Opus encoder.
#[pyclass(module = "audio_core._native")]
struct OpusEncoder {
    inner: core_opus::Encoder,
    pcm: Vec<i16>,
    out: Vec<u8>,
}

#[pymethods]
impl OpusEncoder {
    #[new]
    #[pyo3(signature = (sample_rate=48000, channels=1, application="voip", bitrate=32000, complexity=5, fec=true, packet_loss_perc=10, dtx=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        sample_rate: u32,
        channels: u8,
        application: &str,
        bitrate: i32,
        complexity: i32,
        fec: bool,
        packet_loss_perc: i32,
        dtx: bool,
    ) -> PyResult<Self> {
        let cfg = EncoderConfig {
            sample_rate,
            channels,
            application: parse_app(application)?,
            bitrate,
            complexity,
            fec,
            packet_loss_perc,
            dtx,
        };
        Ok(Self { inner: core_opus::Encoder::new(cfg)?, pcm: Vec::new(), out: vec![0; core_opus::MAX_PACKET] })
    }

    /// Encode one frame of PCM16.
    fn encode<'py>(&mut self, py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        self.pcm.clear();
        pcm16_in(pcm, &mut self.pcm)?;
        let n = self.inner.encode(&self.pcm, &mut self.out)?;
        Ok(PyBytes::new(py, &self.out[..n]))
    }

    /// Encode consecutive frames of `frame_samples` from one PCM16 buffer with the GIL released
    /// (batch work); returns the total packet bytes produced.
    fn encode_many(&mut self, py: Python<'_>, pcm: &Bound<'_, PyAny>, frame_samples: usize) -> PyResult<usize> {
        self.pcm.clear();
        pcm16_in(pcm, &mut self.pcm)?;
        let ch = self.inner.config().channels as usize;
        if frame_samples == 0 || self.pcm.len() % (frame_samples * ch) != 0 {
            return Err(PyValueError::new_err(format!(
                "buffer of {} samples is not a whole number of {frame_samples}-sample frames",
                self.pcm.len()
            )));
        }
        let (inner, pcm, out) = (&mut self.inner, &self.pcm, &mut self.out);
        let r: Result<usize, Error> = py.detach(|| {
            let mut total = 0;
            for f in pcm.chunks_exact(frame_samples * ch) {
                total += inner.encode(f, out)?;
            }
            Ok(total)
        });
        Ok(r?)
    }

    fn set_bitrate(&mut self, bitrate: i32) -> PyResult<()> {
        Ok(self.inner.set_bitrate(bitrate)?)
    }

    fn set_packet_loss_perc(&mut self, perc: i32) -> PyResult<()> {
        Ok(self.inner.set_packet_loss_perc(perc)?)
    }

    #[getter]
    fn sample_rate(&self) -> u32 {
        self.inner.config().sample_rate
    }

    #[getter]
    fn channels(&self) -> u8 {
        self.inner.config().channels
    }

    #[getter]
    fn complexity(&self) -> i32 {
        self.inner.config().complexity
    }

    #[getter]
    fn bitrate(&self) -> i32 {
        self.inner.config().bitrate
    }
}

/// Opus decoder.
#[pyclass(module = "audio_core._native")]
struct OpusDecoder {
    inner: core_opus::Decoder,
    out: Vec<i16>,
}

#[pymethods]
impl OpusDecoder {
    #[new]
    #[pyo3(signature = (sample_rate=48000, channels=1))]
    fn new(sample_rate: u32, channels: u8) -> PyResult<Self> {
        let inner = core_opus::Decoder::new(sample_rate, channels)?;
        let out = vec![0; inner.max_frame() * channels as usize];
        Ok(Self { inner, out })
    }

    fn decode<'py>(&mut self, py: Python<'py>, packet: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let n = with_bytes(packet, |b| Ok(self.inner.decode(b, &mut self.out)?))?;
        bytes_from_i16(py, &self.out[..n * self.inner.channels() as usize])
    }

    fn conceal<'py>(&mut self, py: Python<'py>, samples: usize) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.inner.conceal(samples, &mut self.out)?;
        bytes_from_i16(py, &self.out[..n * self.inner.channels() as usize])
    }

    fn decode_fec<'py>(&mut self, py: Python<'py>, next_packet: &Bound<'py, PyAny>, samples: usize) -> PyResult<Bound<'py, PyBytes>> {
        let n = with_bytes(next_packet, |b| Ok(self.inner.decode_fec(b, samples, &mut self.out)?))?;
        bytes_from_i16(py, &self.out[..n * self.inner.channels() as usize])
    }

    /// Decode many packets with the GIL released; returns total samples per channel.
    fn decode_many(&mut self, py: Python<'_>, packets: Vec<PyBackedBytes>) -> PyResult<usize> {
        let inner = &mut self.inner;
        let out = &mut self.out;
        let r: Result<usize, Error> = py.detach(|| {
            let mut total = 0;
            for p in &packets {
                total += inner.decode(p, out)?;
            }
            Ok(total)
        });
        Ok(r?)
    }

    #[getter]
    fn sample_rate(&self) -> u32 {
        self.inner.rate()
    }

    #[getter]
    fn channels(&self) -> u8 {
        self.inner.channels()
    }
}

/// Samples per channel an Opus packet decodes to at `sample_rate`.
#[pyfunction]
#[pyo3(signature = (packet, sample_rate=48000))]
fn opus_packet_samples(packet: &Bound<'_, PyAny>, sample_rate: u32) -> PyResult<usize> {
    with_bytes(packet, |b| Ok(core_opus::packet_samples(b, sample_rate)?))
}

/// Whether an Opus packet carries in-band FEC for its predecessor.
#[pyfunction]
fn opus_packet_has_fec(packet: &Bound<'_, PyAny>) -> PyResult<bool> {
    with_bytes(packet, |b| Ok(core_opus::packet_has_fec(b)))
}

/// The bundled libopus version string.
#[pyfunction]
fn libopus_version() -> String {
    core_opus::version()
}

// ---------------------------------------------------------------- Resampler

/// Streaming low-delay resampler.
#[pyclass(module = "audio_core._native")]
struct Resampler {
    inner: CoreResampler,
    i16buf: Vec<i16>,
    fin: Vec<f32>,
    fout: Vec<f32>,
}

#[pymethods]
impl Resampler {
    #[new]
    fn new(in_rate: u32, out_rate: u32) -> PyResult<Self> {
        Ok(Self { inner: CoreResampler::new(in_rate, out_rate)?, i16buf: Vec::new(), fin: Vec::new(), fout: Vec::new() })
    }

    fn process<'py>(&mut self, py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        self.i16buf.clear();
        let inner = &mut self.inner;
        let out = &mut self.i16buf;
        with_bytes(pcm, |b| Ok(inner.process_le_bytes(b, out)?))?;
        bytes_from_i16(py, &self.i16buf)
    }

    fn process_float<'py>(&mut self, py: Python<'py>, samples: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        self.fin.clear();
        self.fout.clear();
        with_bytes(samples, |b| frame::le_bytes_to_f32(b, &mut self.fin).map_err(Into::into))?;
        let (inner, fin, fout) = (&mut self.inner, &self.fin, &mut self.fout);
        if fin.len() >= 65536 {
            py.detach(|| inner.process_f32(fin, fout));
        } else {
            inner.process_f32(fin, fout);
        }
        bytes_from_f32(py, &self.fout)
    }

    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.i16buf.clear();
        self.inner.flush_i16(&mut self.i16buf);
        bytes_from_i16(py, &self.i16buf)
    }

    fn flush_float<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.fout.clear();
        self.inner.flush_f32(&mut self.fout);
        bytes_from_f32(py, &self.fout)
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn set_ratio_adjust(&mut self, factor: f64) -> PyResult<()> {
        Ok(self.inner.set_ratio_adjust(factor)?)
    }

    #[getter]
    fn in_rate(&self) -> u32 {
        self.inner.in_rate()
    }

    #[getter]
    fn out_rate(&self) -> u32 {
        self.inner.out_rate()
    }

    #[getter]
    fn delay_ms(&self) -> f64 {
        self.inner.delay_seconds() * 1000.0
    }

    #[getter]
    fn delay_output_samples(&self) -> f64 {
        self.inner.delay_output_samples()
    }

    #[getter]
    fn passband_hz(&self) -> f64 {
        self.inner.spec().passband_hz
    }

    #[getter]
    fn stopband_hz(&self) -> f64 {
        self.inner.spec().stopband_hz
    }
}

// ---------------------------------------------------------------- Jitter buffer and legs

fn stats_dict<'py>(py: Python<'py>, s: &JitterStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("received", s.received)?;
    d.set_item("lost", s.lost)?;
    d.set_item("late", s.late)?;
    d.set_item("duplicated", s.duplicated)?;
    d.set_item("concealed", s.concealed)?;
    d.set_item("fec_recovered", s.fec_recovered)?;
    d.set_item("underruns", s.underruns)?;
    d.set_item("played", s.played)?;
    d.set_item("accelerated", s.accelerated)?;
    d.set_item("expanded", s.expanded)?;
    d.set_item("dtx_frames", s.dtx_frames)?;
    d.set_item("resets", s.resets)?;
    d.set_item("buffered", s.buffered)?;
    d.set_item("current_delay_ms", s.current_delay_ms)?;
    d.set_item("target_delay_ms", s.target_delay_ms)?;
    d.set_item("playout_delay_ms", s.playout_delay_ms)?;
    d.set_item("reanchors", s.reanchors)?;
    d.set_item("drift_ppm", s.drift_ppm)?;
    Ok(d)
}

fn insert_str(r: InsertResult) -> &'static str {
    legs::LegInsert::Jitter(r).as_str()
}

fn check_time(t: f64) -> PyResult<()> {
    if t.is_finite() && t.abs() < 1e15 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!("time {t} ms is not a finite, sane value")))
    }
}

/// (kind, sequence, samples, payload) returned by `JitterBuffer.pop`.
type JitterEvent<'py> = (&'static str, Option<u16>, u32, Option<Bound<'py, PyBytes>>);

/// Packet-level adaptive jitter buffer (no codec): tells what to play each frame.
#[pyclass(module = "audio_core._native")]
struct JitterBuffer {
    inner: CoreJitter,
}

#[pymethods]
impl JitterBuffer {
    #[new]
    #[pyo3(signature = (clock_rate=48000, frame_ms=20, min_delay_ms=20.0, max_delay_ms=400.0, initial_delay_ms=60.0, capacity=512, time_stretch=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        clock_rate: u32,
        frame_ms: u32,
        min_delay_ms: f64,
        max_delay_ms: f64,
        initial_delay_ms: f64,
        capacity: usize,
        time_stretch: bool,
    ) -> PyResult<Self> {
        let cfg = JitterConfig { clock_rate, frame_ms, min_delay_ms, max_delay_ms, initial_delay_ms, capacity };
        let mut inner = CoreJitter::new(cfg)?;
        inner.set_time_stretch(time_stretch);
        Ok(Self { inner })
    }

    #[pyo3(signature = (sequence, timestamp, payload, arrival_ms, samples=0, has_fec=false))]
    fn insert(&mut self, sequence: u16, timestamp: u32, payload: &Bound<'_, PyAny>, arrival_ms: f64, samples: u32, has_fec: bool) -> PyResult<&'static str> {
        check_time(arrival_ms)?;
        let inner = &mut self.inner;
        with_bytes(payload, |b| Ok(insert_str(inner.insert(sequence, timestamp, b, arrival_ms, samples, has_fec)?)))
    }

    /// Returns (kind, sequence or None, samples, payload or None).
    #[pyo3(signature = (now_ms, low_energy=true))]
    fn pop<'py>(&mut self, py: Python<'py>, now_ms: f64, low_energy: bool) -> PyResult<JitterEvent<'py>> {
        check_time(now_ms)?;
        Ok(match self.inner.pop(now_ms, low_energy) {
            Playout::Buffering { samples } => ("buffering", None, samples, None),
            Playout::Silence { samples } => ("silence", None, samples, None),
            Playout::Conceal { samples, lost: true } => ("concealed", None, samples, None),
            Playout::Conceal { samples, lost: false } => ("underrun", None, samples, None),
            Playout::Fec { lost_seq, samples, slot } => ("fec", Some(lost_seq), samples, Some(PyBytes::new(py, self.inner.payload(slot)))),
            Playout::Packet { seq, samples, slot, discard, .. } => {
                (if discard { "discard" } else { "packet" }, Some(seq), samples, Some(PyBytes::new(py, self.inner.payload(slot))))
            }
        })
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.inner.stats())
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Inbound call leg: RTP -> jitter buffer -> decode/PLC/FEC -> resample -> PCM16 frames.
#[pyclass(module = "audio_core._native")]
struct InboundLeg {
    inner: legs::InboundLeg,
    frame: Vec<i16>,
}

#[pymethods]
impl InboundLeg {
    #[new]
    #[pyo3(signature = (codec="opus", output_rate=16000, payload_type=None, frame_ms=20, min_delay_ms=20.0, max_delay_ms=400.0, initial_delay_ms=60.0, decode_rate=None, dtmf_payload_type=Some(101)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        codec: &str,
        output_rate: u32,
        payload_type: Option<u8>,
        frame_ms: u32,
        min_delay_ms: f64,
        max_delay_ms: f64,
        initial_delay_ms: f64,
        decode_rate: Option<u32>,
        dtmf_payload_type: Option<u8>,
    ) -> PyResult<Self> {
        let jitter = JitterConfig { frame_ms, min_delay_ms, max_delay_ms, initial_delay_ms, ..Default::default() };
        let cfg = legs::InboundConfig { codec: Codec::parse(codec)?, payload_type, dtmf_payload_type, output_rate, decode_rate, jitter };
        let inner = legs::InboundLeg::new(cfg)?;
        let frame = vec![0; inner.frame_samples()];
        Ok(Self { inner, frame })
    }

    fn insert(&mut self, packet: &Bound<'_, PyAny>, arrival_ms: f64) -> PyResult<&'static str> {
        check_time(arrival_ms)?;
        let inner = &mut self.inner;
        with_bytes(packet, |b| Ok(inner.insert(b, arrival_ms)?.as_str()))
    }

    fn pop<'py>(&mut self, py: Python<'py>, now_ms: f64) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
        check_time(now_ms)?;
        let kind = self.inner.pop(now_ms, &mut self.frame)?;
        Ok((bytes_from_i16(py, &self.frame)?, kind.as_str()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = stats_dict(py, &self.inner.stats())?;
        d.set_item("decode_errors", self.inner.decode_errors)?;
        d.set_item("ignored", self.inner.ignored)?;
        let l = self.inner.leg_stats();
        d.set_item("accelerated_ms", l.accelerated_ms)?;
        d.set_item("expanded_ms", l.expanded_ms)?;
        d.set_item("time_scale", l.time_scale)?;
        d.set_item("drift_ratio", l.drift_ratio)?;
        d.set_item("unknown_payload_type", l.unknown_payload_type)?;
        d.set_item("dtmf_packets", l.dtmf_packets)?;
        d.set_item("stray_ssrc", l.stray_ssrc)?;
        d.set_item("ssrc_changes", l.ssrc_changes)?;
        Ok(d)
    }

    /// Telephone-events received since the last call, oldest first, as (rtp_timestamp, event).
    fn dtmf_events(&mut self) -> Vec<(u32, DtmfEvent)> {
        self.inner
            .take_dtmf()
            .into_iter()
            .map(|d| {
                let e = d.event;
                (d.timestamp, DtmfEvent { event: e.event, digit: e.digit(), end: e.end, volume: e.volume, duration: e.duration })
            })
            .collect()
    }

    #[getter]
    fn frame_samples(&self) -> usize {
        self.inner.frame_samples()
    }

    #[getter]
    fn decode_rate(&self) -> u32 {
        self.inner.decode_rate()
    }

    #[getter]
    fn resampler_delay_ms(&self) -> f64 {
        self.inner.resampler_delay_seconds() * 1000.0
    }
}

/// Outbound call leg: PCM16 -> resample -> encode -> RTP packets.
#[pyclass(module = "audio_core._native")]
struct OutboundLeg {
    inner: legs::OutboundLeg,
}

fn collect<'py>(py: Python<'py>, f: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), Error>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    let mut err: Option<PyErr> = None;
    f(&mut |p: &[u8]| {
        if let Err(e) = list.append(PyBytes::new(py, p)) {
            err.get_or_insert(e);
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(list),
    }
}

#[pymethods]
impl OutboundLeg {
    #[new]
    #[pyo3(signature = (codec="opus", input_rate=24000, payload_type=None, ssrc=0, frame_ms=20, bitrate=32000, complexity=5, fec=true, packet_loss_perc=10, dtx=false, encode_rate=None, sequence=0, timestamp=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        codec: &str,
        input_rate: u32,
        payload_type: Option<u8>,
        ssrc: u32,
        frame_ms: u32,
        bitrate: i32,
        complexity: i32,
        fec: bool,
        packet_loss_perc: i32,
        dtx: bool,
        encode_rate: Option<u32>,
        sequence: u16,
        timestamp: u32,
    ) -> PyResult<Self> {
        let codec = Codec::parse(codec)?;
        let opus = EncoderConfig { bitrate, complexity, fec, packet_loss_perc, dtx, ..Default::default() };
        let cfg = legs::OutboundConfig {
            codec,
            input_rate,
            payload_type: payload_type.unwrap_or(codec.default_payload_type()),
            ssrc,
            frame_ms,
            sequence,
            timestamp,
            encode_rate,
            opus,
        };
        Ok(Self { inner: legs::OutboundLeg::new(cfg)? })
    }

    fn push<'py>(&mut self, py: Python<'py>, pcm: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let inner = &mut self.inner;
        with_bytes(pcm, |b| collect(py, |emit| inner.push_le_bytes(b, emit)))
    }

    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inner = &mut self.inner;
        collect(py, |emit| inner.flush(emit))
    }

    fn set_marker(&mut self) {
        self.inner.set_marker();
    }

    fn clear(&mut self) {
        self.inner.clear();
    }

    #[getter]
    fn sequence(&self) -> u16 {
        self.inner.sequence()
    }

    #[getter]
    fn timestamp(&self) -> u32 {
        self.inner.timestamp()
    }

    #[getter]
    fn encode_rate(&self) -> u32 {
        self.inner.encode_rate()
    }

    #[getter]
    fn resampler_delay_ms(&self) -> f64 {
        self.inner.resampler_delay_seconds() * 1000.0
    }
}

/// Register everything on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ulaw_encode, m)?)?;
    m.add_function(wrap_pyfunction!(ulaw_decode, m)?)?;
    m.add_function(wrap_pyfunction!(alaw_encode, m)?)?;
    m.add_function(wrap_pyfunction!(alaw_decode, m)?)?;
    m.add_function(wrap_pyfunction!(pcm16_to_float32, m)?)?;
    m.add_function(wrap_pyfunction!(float32_to_pcm16, m)?)?;
    m.add_function(wrap_pyfunction!(apply_gain, m)?)?;
    m.add_function(wrap_pyfunction!(mix, m)?)?;
    m.add_function(wrap_pyfunction!(rms_dbfs, m)?)?;
    m.add_function(wrap_pyfunction!(parse_rtp, m)?)?;
    m.add_function(wrap_pyfunction!(build_rtp, m)?)?;
    m.add_function(wrap_pyfunction!(parse_dtmf, m)?)?;
    m.add_function(wrap_pyfunction!(opus_packet_samples, m)?)?;
    m.add_function(wrap_pyfunction!(opus_packet_has_fec, m)?)?;
    m.add_function(wrap_pyfunction!(libopus_version, m)?)?;
    m.add_class::<RtpPacket>()?;
    m.add_class::<DtmfEvent>()?;
    m.add_class::<OpusEncoder>()?;
    m.add_class::<OpusDecoder>()?;
    m.add_class::<Resampler>()?;
    m.add_class::<JitterBuffer>()?;
    m.add_class::<InboundLeg>()?;
    m.add_class::<OutboundLeg>()?;
    Ok(())
}
