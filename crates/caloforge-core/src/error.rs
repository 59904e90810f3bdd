//! Errors of the core crate: every message names the file and the problem.

/// Core error type.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A binning XML file could not be used.
    #[error("binning file {file}: {msg}")]
    Binning { file: String, msg: String },
    /// An HDF5 shower file could not be read or failed validation.
    #[error("{file}: {msg}")]
    Data { file: String, msg: String },
    /// Writing an output file failed.
    #[error("cannot write {file}: {msg}")]
    Write { file: String, msg: String },
    /// A user argument is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    pub fn data(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        CoreError::Data {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
    pub fn write(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        CoreError::Write {
            file: file.to_string(),
            msg: msg.into(),
        }
    }
}
