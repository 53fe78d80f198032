//! One error type for the whole core; the PyO3 layer maps it to `ValueError`.

use std::fmt;

/// Everything that can go wrong in the audio core. Never a panic: bad input becomes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller-supplied argument is out of range or malformed (rate, size, buffer length...).
    InvalidArgument(String),
    /// An RTP packet failed strict parsing.
    Rtp(String),
    /// libopus rejected the data or the request.
    Codec(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Rtp(m) => write!(f, "invalid RTP packet: {m}"),
            Error::Codec(m) => write!(f, "codec error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument(msg.into()))
}
