//! audio_core: the per-frame audio path of every call (codecs, resampling, jitter buffer, RTP).
//!
//! Sans-IO: no sockets, threads or clocks; callers pass time in. The pure-Rust core is kept
//! separate from the thin PyO3 layer so it can be tested and fuzzed without Python.

pub mod error;
pub mod frame;
pub mod g711;
pub mod jitter;
pub mod legs;
pub mod opus;
mod py;
pub mod resample;
pub mod rtp;
pub mod tsm;

use pyo3::prelude::*;

/// Version of the native core, so Python can prove it loaded the extension it was built with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Returns the version of the compiled audio core.
#[pyfunction]
fn native_version() -> &'static str {
    VERSION
}

/// The `audio_core._native` extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(native_version, m)?)?;
    py::register(m)
}

#[cfg(test)]
mod tests {
    use super::VERSION;

    #[test]
    fn version_is_semver() {
        assert_eq!(VERSION.split('.').count(), 3);
    }
}
