//! The one error type that crosses plugin boundaries. Plugins keep their own `thiserror` enums and
//! convert into [`Error`] with a kind that tells the pipeline whether to retry, stop, or report a
//! configuration mistake.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the pipeline treats an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration is wrong; the message names the key and the fix.
    Config,
    /// Worth retrying with backoff (connection lost, leader change, NOSPACE, timeout).
    Transient,
    /// Retrying will not help; the pipeline stops.
    Fatal,
    /// This instance lost the pipeline's leadership (DESIGN §7): it stops writing at once and
    /// stands by (`ha.enabled`) or exits.
    Fenced,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "config",
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Fenced => "fenced",
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with a kind, a message that says what failed and what to do, and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }

    pub fn fenced(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fenced, message)
    }

    /// Wraps a plugin error; its `Display` becomes the message and it stays in the source chain.
    pub fn wrap(kind: ErrorKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind,
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }

    /// Attaches a cause to this error.
    pub fn with_source(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(error));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// Prefixes the message with context ("table public.users: …").
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// The error's message followed by each cause in its source chain that adds something: a
/// cause whose text the message already contains is skipped (libraries often repeat their
/// source's text in their own message).
pub fn display_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("error performing tls handshake")]
    struct Handshake(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to db: {0}")]
    struct Connect(#[source] Handshake);

    #[test]
    fn chain_skips_repeats_and_keeps_root_causes() {
        let root = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let error = Error::wrap(ErrorKind::Config, Connect(Handshake(root)));
        assert_eq!(
            display_chain(&error),
            "connecting to db: error performing tls handshake: invalid peer certificate: UnknownIssuer"
        );
    }
}
