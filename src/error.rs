//! One error type for the whole engine (it depends on nothing else in the
//! crate, so every module can use it). Every variant renders as a message a
//! person can act on: what went wrong, with what, and what to do next.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No usable GPU adapter was found for the requested backends.
    NoAdapter { backends: String, hint: String },
    /// `--adapter` named something that does not exist.
    AdapterNotFound {
        wanted: String,
        available: Vec<String>,
    },
    /// A backend name that boomgpu does not know.
    UnknownBackend(String),
    /// A buffer would exceed a device limit or the memory budget.
    OverLimit {
        tensor: String,
        requested: u64,
        limit: u64,
        what: &'static str,
        hint: &'static str,
    },
    /// The device was lost (driver reset, GPU hang, out of memory).
    DeviceLost(String),
    /// The device could not be created.
    RequestDevice(String),
    /// A validation or runtime error reported by wgpu.
    Gpu(String),
    /// A shader failed to parse, validate or translate.
    Shader { name: String, message: String },
    /// Shapes or dtypes that do not fit an operation.
    Shape(String),
    /// Anything wrong with user input (files, arguments).
    Invalid(String),
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "1.50 GiB", "12.0 MiB", "512 B".
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter { backends, hint } => write!(
                f,
                "no GPU adapter found (backends tried: {backends}).\n{hint}"
            ),
            Error::AdapterNotFound { wanted, available } => {
                write!(f, "no adapter matches '{wanted}'. Available adapters:")?;
                if available.is_empty() {
                    write!(f, " none")?;
                }
                for (i, a) in available.iter().enumerate() {
                    write!(f, "\n  [{i}] {a}")?;
                }
                write!(f, "\nPass --adapter with an index or part of a name.")
            }
            Error::UnknownBackend(b) => write!(
                f,
                "unknown backend '{b}'; use one of: vulkan, metal, dx12, gl (or 'all')"
            ),
            Error::OverLimit {
                tensor,
                requested,
                limit,
                what,
                hint,
            } => write!(
                f,
                "tensor '{tensor}' needs {} ({requested} bytes) but the {what} is {} ({limit} bytes). {hint}",
                format_bytes(*requested),
                format_bytes(*limit)
            ),
            Error::DeviceLost(m) => write!(
                f,
                "the GPU device was lost: {m}. This usually means a driver reset, a hang or running out of GPU memory; restart the command (with a smaller batch or model if it repeats)"
            ),
            Error::RequestDevice(m) => write!(f, "could not open the GPU device: {m}"),
            Error::Gpu(m) => write!(f, "GPU error: {m}"),
            Error::Shader { name, message } => write!(f, "shader '{name}': {message}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::Invalid(m) => write!(f, "{m}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Return early with a shape error built from a format string.
#[macro_export]
macro_rules! shape_bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Shape(format!($($arg)*)))
    };
}
