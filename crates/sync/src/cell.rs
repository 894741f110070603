//! `UnsafeCell` with loom's closure API on every backend.
//!
//! loom's `UnsafeCell` cannot hand out raw pointers directly: accesses go through
//! `with(|ptr| ..)` / `with_mut(|ptr| ..)` so that loom can check that no two threads touch the
//! cell concurrently with one of them writing (a data race). The std twin has the same API and
//! compiles to a plain pointer access, as in tokio's `loom/std/unsafe_cell.rs`.

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// Std twin of `loom::cell::UnsafeCell`.
#[cfg(not(loom))]
#[derive(Debug, Default)]
pub struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline]
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Consumes the cell.
    #[inline]
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Calls `f` with a shared pointer to the contents. The caller guarantees (in its own
    /// `// SAFETY:` comment at the dereference) that no `with_mut` runs concurrently.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with an exclusive pointer to the contents. The caller guarantees that no other
    /// access runs concurrently.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
