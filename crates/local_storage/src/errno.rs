//! The kernel's error numbers, as the operations return them.

use std::fmt;

/// An errno, with the kernel's number. Operations return `Err(Errno)`; the syscall layer
/// negates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    EPERM = 1,
    /// No such element (or owner).
    ENOENT = 2,
    /// Value too large.
    E2BIG = 7,
    /// Bad file descriptor.
    EBADF = 9,
    /// Try again: a race was lost (first storage, or the storage went away under update).
    EAGAIN = 11,
    /// Out of memory, or a charge refused.
    ENOMEM = 12,
    /// Busy: the per-CPU recursion guard is held.
    EBUSY = 16,
    /// The element exists (`BPF_NOEXIST`).
    EEXIST = 17,
    /// Invalid argument.
    EINVAL = 22,
    /// Deadlock detected (rqspinlock era).
    EDEADLK = 35,
    /// Not supported (uapi).
    EOPNOTSUPP = 95,
    /// Lock timeout (rqspinlock era).
    ETIMEDOUT = 110,
    /// Not supported (kernel-internal; `get_next_key`).
    ENOTSUPP = 524,
}

impl Errno {
    /// The positive errno number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The value a syscall returns (`-code`).
    pub fn negated(self) -> i32 {
        -(self as i32)
    }

    /// The symbolic name, e.g. `"EINVAL"`.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::E2BIG => "E2BIG",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::EDEADLK => "EDEADLK",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
            Errno::ETIMEDOUT => "ETIMEDOUT",
            Errno::ENOTSUPP => "ENOTSUPP",
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for Errno {}
