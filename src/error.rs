//! Errors: [`HubError`], what a hub method reports to its caller, and [`Error`], what the
//! library reports to the program embedding it.
//!
//! A `HubError` decides what a client may see. `HubError::new` is ASP.NET's `HubException`: its
//! message always reaches the client. Every other failure (any `std::error::Error` turned into a
//! `HubError` by `?`) is "unexpected": the client sees only the generic text unless the hub has
//! detailed errors enabled, so internal details never leak by default.

use std::borrow::Cow;
use std::fmt;

/// A failure of a hub method, as the client will see it.
///
/// ```
/// use tidings::HubError;
/// // Always shown to the client: "... HubException: name is empty"
/// let shown = HubError::new("name is empty");
/// // Shown only with detailed errors: "... InvalidOperationException: boom"
/// let hidden = HubError::unexpected("InvalidOperationException", "boom");
/// # let _ = (shown, hidden);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct HubError {
    kind: Cow<'static, str>,
    message: String,
    always_shown: bool,
}

impl HubError {
    /// A hub error whose message is always sent to the client (ASP.NET `HubException`).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: Cow::Borrowed("HubException"),
            message: message.into(),
            always_shown: true,
        }
    }

    /// An unexpected failure of kind `kind` (an exception type name in .NET terms); its message
    /// reaches the client only when detailed errors are enabled.
    pub fn unexpected(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            always_shown: false,
        }
    }

    /// The error's message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind (`HubException` for [`HubError::new`]).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The text sent to the client in a Completion for method `method`.
    pub(crate) fn client_text(&self, method: &str, detailed: bool) -> String {
        if self.always_shown || detailed {
            format!(
                "An unexpected error occurred invoking '{method}' on the server. {}: {}",
                self.kind, self.message
            )
        } else {
            format!("An unexpected error occurred invoking '{method}' on the server.")
        }
    }
}

impl fmt::Debug for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HubError({}: {})", self.kind, self.message)
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Any error can be returned from a hub method with `?`; it is treated as unexpected, so its
/// text stays on the server unless detailed errors are on.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for HubError {
    fn from(err: E) -> Self {
        let full = std::any::type_name::<E>();
        let short = full.rsplit("::").next().unwrap_or(full);
        Self::unexpected(short.to_owned(), err.to_string())
    }
}

/// An error of the library itself (sending to a closed connection, a client result that
/// never came, …).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The target connection is gone (or never existed).
    ConnectionNotFound,
    /// The client answered an invocation with an error.
    ClientError(String),
    /// No answer came in time.
    Timeout,
    /// A value could not be encoded or decoded.
    Serialization(String),
    /// The connection closed before the operation finished.
    ConnectionClosed,
    /// The backplane failed.
    Backplane(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectionNotFound => f.write_str("connection not found"),
            Self::ClientError(e) => write!(f, "client returned an error: {e}"),
            Self::Timeout => f.write_str("timed out waiting for the client"),
            Self::Serialization(e) => write!(f, "serialization failed: {e}"),
            Self::ConnectionClosed => f.write_str("connection closed"),
            Self::Backplane(e) => write!(f, "backplane failure: {e}"),
        }
    }
}

impl std::error::Error for Error {}
