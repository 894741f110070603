//! Locks: a poison-free `Mutex` / `Condvar` pair over the active backend, and a spin lock.
//!
//! Poisoning is dropped on purpose: a misuse test that panics inside a callback must not turn
//! every later test assertion into a `PoisonError`; the simulator reports the original panic.

use crate::UnsafeCell;
use crate::atomic::{AtomicBool, Ordering};
use core::fmt;
use core::ops::{Deref, DerefMut};

#[cfg(loom)]
use loom::sync as backend;
#[cfg(shuttle)]
use shuttle::sync as backend;
#[cfg(not(any(loom, shuttle)))]
use std::sync as backend;

/// A mutual-exclusion lock of the active backend, without poisoning.
#[derive(Debug, Default)]
pub struct Mutex<T>(backend::Mutex<T>);

/// Guard of a [`Mutex`].
#[derive(Debug)]
pub struct MutexGuard<'a, T>(backend::MutexGuard<'a, T>);

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub fn new(value: T) -> Self {
        Self(backend::Mutex::new(value))
    }

    /// Locks, waiting (and, under a model checker, yielding) while another thread holds it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Consumes the mutex.
    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// A condition variable paired with [`Mutex`].
#[derive(Debug, Default)]
pub struct Condvar(backend::Condvar);

impl Condvar {
    /// A new condition variable.
    pub fn new() -> Self {
        Self(backend::Condvar::new())
    }

    /// Releases `guard`, waits for a notification, re-acquires. Spurious wake-ups happen:
    /// always wait in a loop that re-checks the condition.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        MutexGuard(self.0.wait(guard.0).unwrap_or_else(|e| e.into_inner()))
    }

    /// Wakes one waiter.
    pub fn notify_one(&self) {
        self.0.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// A test-and-test-and-set spin lock (the kernel's `raw_spinlock_t` analogue).
///
/// It spins through [`crate::spin_wait`], so under loom a waiter yields instead of exhausting
/// the branch budget.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (acquire/release on
// `locked`), so sharing the lock is as safe as sending the value.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; no thread-affine state is kept.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Guard of a [`SpinLock`]; unlocks on drop.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> fmt::Debug for SpinLockGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpinLockGuard")
    }
}

impl<T> SpinLock<T> {
    /// A new unlocked spin lock.
    pub fn new(value: T) -> Self {
        Self { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Acquires the lock, spinning while it is held.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            while self.locked.load(Ordering::Relaxed) {
                crate::spin_wait();
            }
        }
    }

    /// Acquires the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        // ORDERING: Acquire pairs with the Release store in `SpinLockGuard::drop`, so the
        // previous holder's writes to `value` are visible to us.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }

    /// Whether some thread holds the lock right now (a racy hint).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Runs `f` on the value under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut g = self.lock();
        f(&mut g)
    }
}

impl<T> SpinLockGuard<'_, T> {
    fn with_value<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.lock.value.with_mut(f)
    }
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves we hold the lock, so no other thread accesses the value;
        // the reference lives no longer than the guard.
        self.with_value(|p| unsafe { &*p })
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        self.with_value(|p| unsafe { &mut *p })
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // ORDERING: Release pairs with the Acquire CAS in `SpinLock::try_lock`.
        self.lock.locked.store(false, Ordering::Release);
    }
}
