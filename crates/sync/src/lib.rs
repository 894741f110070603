//! The one place where bpfls chooses between `std`, [loom] and [shuttle].
//!
//! # Why a facade
//!
//! Every shared-memory primitive the core crates use (`rcu`, `mem_alloc`, `local_storage`,
//! `kernel`) comes from here, so that one compile-time switch turns the whole simulator into a
//! model: `RUSTFLAGS="--cfg loom"` explores every interleaving (and weak-memory outcome) of a
//! small test exhaustively, `RUSTFLAGS="--cfg shuttle"` explores random schedules of larger ones.
//! The switch is a plain `cfg(loom)` / `cfg(shuttle)`, not `cfg(all(test, loom))`: the `rcu`
//! crate is compiled as a *dependency* of its own integration tests and of `local_storage`,
//! where `cfg(test)` is not set (`rust-notes.md` §2.3). The core crates never name `std::sync`,
//! `std::thread` or `core::sync::atomic`; a tidy test in `xtask` enforces it.
//!
//! # What is deliberately here
//!
//! - [`atomic`] with [`fence`](atomic::fence): every kernel `smp_mb()` is written as
//!   `fence(SeqCst)`, because loom treats `SeqCst` *accesses* as `AcqRel` and reports false
//!   use-after-free on the store-buffering pattern RCU relies on; `SeqCst` *fences* it models.
//! - [`Arc`], [`Mutex`], [`Condvar`] and our own [`SpinLock`], which spins through
//!   [`spin_wait`] so that loom sees a yield instead of an endless branch.
//! - [`UnsafeCell`] with loom's `with` / `with_mut` API on every backend, so value bytes can be
//!   checked for data races by loom.
//! - [`alloc::Track`]: loom's leak tracker, a no-op elsewhere.
//! - [`untracked`]: plain `std` atomics for the checkers' *own* bookkeeping (statistics,
//!   logical clocks). loom must not explore those, or every model explodes (DESIGN.md, "Memory").
//! - [`probe`]: the probe-point interface (tracing, stepping, fault injection, attach points);
//!   a single branch on a plain field when nothing is attached.
//! - [`AsymmetricFence`]: the `smp_mb()` pair of an RCU reader and its updater, with the
//!   `membarrier(2)` speed-up on Linux std builds and plain `fence(SeqCst)` in every model.
//!
//! [loom]: https://docs.rs/loom
//! [shuttle]: https://docs.rs/shuttle

#[cfg(all(loom, shuttle))]
compile_error!("cfg(loom) and cfg(shuttle) are mutually exclusive");

mod asym;
mod cell;
mod lock;
pub mod probe;

pub use asym::AsymmetricFence;
pub use cell::UnsafeCell;
pub use crossbeam_utils::CachePadded;
pub use lock::{Condvar, Mutex, MutexGuard, SpinLock, SpinLockGuard};

/// Atomics and `fence`, from the active backend.
pub mod atomic {
    #[cfg(loom)]
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
    #[cfg(shuttle)]
    pub use shuttle::sync::atomic::{
        AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    #[cfg(not(any(loom, shuttle)))]
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
}

#[cfg(loom)]
pub use loom::sync::Arc;
#[cfg(shuttle)]
pub use shuttle::sync::Arc;
#[cfg(not(any(loom, shuttle)))]
pub use std::sync::Arc;

/// Threads of the active backend. Under loom at most 4 may be spawned per model.
pub mod thread {
    #[cfg(loom)]
    pub use loom::thread::{JoinHandle, ThreadId, current, spawn, yield_now};
    #[cfg(shuttle)]
    pub use shuttle::thread::{JoinHandle, ThreadId, current, spawn, yield_now};
    #[cfg(not(any(loom, shuttle)))]
    pub use std::thread::{JoinHandle, ThreadId, current, spawn, yield_now};

    /// Whether the current thread is unwinding (so a `Drop` must not panic again). This asks
    /// the real thread, which is also right under the model checkers.
    #[inline]
    pub fn panicking() -> bool {
        std::thread::panicking()
    }

    /// Spawns a named thread (the name shows up in panics and debuggers). Under the model
    /// checkers the name is dropped: they number their threads themselves.
    pub fn spawn_named<F, T>(name: String, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        #[cfg(any(loom, shuttle))]
        {
            let _ = name;
            spawn(f)
        }
        #[cfg(not(any(loom, shuttle)))]
        {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .expect("bpfls: failed to spawn a thread")
        }
    }
}

/// `true` when compiled as a model (loom or shuttle): code that must not spin or block for
/// real, or must stay small, can check this.
pub const MODEL: bool = cfg!(any(loom, shuttle));

/// One iteration of a wait loop that is waiting for *another thread* to make progress.
///
/// Under loom and shuttle this yields, so the checker schedules someone else instead of
/// reporting "Model exceeded maximum number of branches" (a `crossbeam_utils::Backoff` here
/// would spin invisibly: `rust-notes.md` §2.5). Under std it is a CPU spin hint.
#[inline]
pub fn spin_wait() {
    #[cfg(any(loom, shuttle))]
    thread::yield_now();
    #[cfg(not(any(loom, shuttle)))]
    std::hint::spin_loop();
}

/// A wait loop's backoff: a few spins, then yields, then (std only) short sleeps, so a waiter
/// that waits for long does not burn a whole CPU on a 2-core machine. Counts its own polls so
/// the caller can detect a stall without reading a clock.
#[derive(Debug, Default)]
pub struct Backoff {
    polls: u64,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new() -> Self {
        Self { polls: 0 }
    }

    /// How many times [`Backoff::wait`] has been called.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// Waits once, a little longer each time.
    pub fn wait(&mut self) {
        self.polls += 1;
        #[cfg(any(loom, shuttle))]
        thread::yield_now();
        #[cfg(not(any(loom, shuttle)))]
        {
            if self.polls < 64 {
                for _ in 0..(1u32 << (self.polls.min(6) as u32)) {
                    std::hint::spin_loop();
                }
            } else if self.polls < 4096 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

/// Leak tracking: `loom::alloc::Track` under loom (an object that is never dropped makes the
/// model fail with "Allocation leaked"), a zero-cost wrapper elsewhere.
pub mod alloc {
    #[cfg(loom)]
    pub use loom::alloc::Track;

    /// Zero-cost stand-in for `loom::alloc::Track` outside loom.
    #[cfg(not(loom))]
    #[derive(Debug, Default)]
    pub struct Track<T>(T);

    #[cfg(not(loom))]
    impl<T> Track<T> {
        /// Starts tracking `value`.
        #[inline]
        pub fn new(value: T) -> Self {
            Track(value)
        }
        /// The tracked value.
        #[inline]
        pub fn get_ref(&self) -> &T {
            &self.0
        }
        /// The tracked value, mutably.
        #[inline]
        pub fn get_mut(&mut self) -> &mut T {
            &mut self.0
        }
        /// Stops tracking and returns the value.
        #[inline]
        pub fn into_inner(self) -> T {
            self.0
        }
    }
}

/// Plain `std` atomics for bookkeeping that the model checkers must *not* explore: statistics,
/// the logical event clock, checker ledgers. Never use these for the algorithm itself.
pub mod untracked {
    /// An `Arc` that loom does not track (hooks, shared configuration).
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    /// A `Mutex` that loom does not track; never hold it across a facade operation.
    pub use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock};
}
