//! Errors the facade returns: the kernel's errno, plus what it was about.
//!
//! The kernel returns a bare `-ENOENT`; a person replaying a scenario wants to know *which*
//! element was missing. [`Error`] carries both: [`Error::errno`] for comparing with the
//! kernel's behaviour, and a detail that [`Display`](fmt::Display) prints after it, in the
//! kernel's spelling (`ENOENT (2): no element for task 1 in map fd 3`).

use bpfls_local_storage::Errno;
use std::fmt;

/// A syscall's or helper's error: an [`Errno`] and what it refers to.
///
/// ```
/// use bpfls_kernel::{Kernel, MapType};
/// use bpfls_local_storage::{Errno, MapAttr};
///
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// let (pid, pidfd) = k.task_spawn();
/// let e = k.map_lookup_elem(0, map, pidfd).unwrap_err();
/// assert_eq!(e, Errno::ENOENT);
/// assert_eq!(e.to_string(), format!("ENOENT (2): no element for task {pid} in map fd {map}"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: Errno,
    detail: String,
}

impl Error {
    /// An error with `errno` about `detail` (a phrase: "fd 9 is not open").
    ///
    /// ```
    /// use bpfls_kernel::Error;
    /// use bpfls_local_storage::Errno;
    /// let e = Error::new(Errno::EBUSY, "the recursion guard is held on CPU 0");
    /// assert_eq!(e, Errno::EBUSY);
    /// assert_eq!(e.to_string(), "EBUSY (16): the recursion guard is held on CPU 0");
    /// ```
    pub fn new(errno: Errno, detail: impl Into<String>) -> Self {
        Error { errno, detail: detail.into() }
    }

    /// The errno the kernel returns.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// # use bpfls_local_storage::Errno;
    /// let k = Kernel::builder().build();
    /// assert_eq!(k.close(0, 99).unwrap_err().errno(), Errno::EBADF);
    /// ```
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// What the error is about.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().build();
    /// assert_eq!(k.close(0, 99).unwrap_err().detail(), "fd 99 is not open");
    /// ```
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.errno.name(), self.errno.code(), self.detail)
    }
}

impl std::error::Error for Error {}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        e.errno
    }
}

impl PartialEq<Errno> for Error {
    fn eq(&self, other: &Errno) -> bool {
        self.errno == *other
    }
}

/// Drops the detail of a facade result, for comparing with the errno alone.
///
/// ```
/// use bpfls_kernel::{Kernel, ResultExt};
/// use bpfls_local_storage::Errno;
///
/// let k = Kernel::builder().build();
/// assert_eq!(k.close(0, 99).errno(), Err(Errno::EBADF));
/// ```
pub trait ResultExt<T> {
    /// The result with the error reduced to its errno.
    fn errno(self) -> Result<T, Errno>;
}

impl<T> ResultExt<T> for Result<T, Error> {
    fn errno(self) -> Result<T, Errno> {
        self.map_err(|e| e.errno)
    }
}
