//! Render errors, classified by what the caller should do next.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The master is not something we can decode (wrong format, corrupt, truncated).
    #[error("undecodable master: {0}")]
    Undecodable(String),
    /// The master decodes to nothing usable.
    #[error("empty master: {0}")]
    Empty(String),
    /// The master exceeds a configured limit.
    #[error("master too large: {what} is {actual}, the limit is {limit}")]
    TooLarge { what: &'static str, actual: String, limit: String },
    /// A renderer name this build does not know.
    #[error("unknown renderer `{0}`")]
    UnknownRenderer(String),
    /// A renderer refused the input (e.g. artwork asked of an audio master).
    #[error("{renderer}: {reason}")]
    Unsupported { renderer: String, reason: String },
    /// A bug or resource failure inside a renderer: worth a retry elsewhere.
    #[error("internal error in {renderer}: {reason}")]
    Internal { renderer: String, reason: String },
}

impl Error {
    /// Permanent errors dead-letter the task at once; retrying the same bytes cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Error::Internal { .. })
    }
}
