//! The reader / updater `smp_mb()` pair of RCU, made asymmetric where the platform allows.
//!
//! RCU's safety argument is a store-buffering (SB) pattern: the reader *stores* "I am inside"
//! and then *loads* the protected pointer; the updater *stores* the new pointer and then
//! *loads* the reader's state. Both sides need a full barrier between their store and load.
//! A `fence(SeqCst)` on the reader costs an `mfence` (or a locked instruction) on every
//! `read_lock`, which is most of the read side's cost.
//!
//! liburcu's "memb" flavour moves the cost to the rare side: readers issue only a compiler
//! barrier, and the updater calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes
//! every running thread of the process execute a full barrier before the call returns (threads
//! that are not running get one from the context switch). The pair therefore behaves as if
//! both sides had executed `smp_mb()`, which is what the SB argument needs.
//!
//! Under loom, shuttle and Miri there is no membarrier: both sides are `fence(SeqCst)`, and
//! that symmetric form is what the loom models verify. The std build uses the expedited form
//! only when registration succeeds at construction (`membarrier(2)` can be missing or
//! forbidden by a sandbox); otherwise it falls back to the symmetric form.

use crate::atomic::{Ordering, fence};

/// A pair of barriers: [`light`](Self::light) on the frequent side (RCU readers),
/// [`heavy`](Self::heavy) on the rare side (grace-period scans). Each `light` pairs with every
/// `heavy`, as `smp_mb()` pairs with `smp_mb()`.
#[derive(Debug, Clone, Copy)]
pub struct AsymmetricFence {
    expedited: bool,
}

impl Default for AsymmetricFence {
    fn default() -> Self {
        Self::new()
    }
}

impl AsymmetricFence {
    /// Uses `membarrier(2)` when it is available (std build on Linux, not Miri), else
    /// `fence(SeqCst)` on both sides.
    pub fn new() -> Self {
        Self { expedited: membarrier::register() }
    }

    /// Always `fence(SeqCst)` on both sides.
    pub const fn symmetric() -> Self {
        Self { expedited: false }
    }

    /// Whether the updater side uses `membarrier(2)`.
    pub fn is_expedited(&self) -> bool {
        self.expedited
    }

    /// The frequent side's `smp_mb()`.
    #[inline(always)]
    pub fn light(&self) {
        if self.expedited {
            // ORDERING: pairs with the membarrier in `heavy`, which supplies the hardware
            // barrier on this CPU; we only stop the compiler moving our store past our load.
            #[cfg(not(any(loom, shuttle)))]
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            // ORDERING: smp_mb(); pairs with the `fence(SeqCst)` in `heavy` (store buffering).
            fence(Ordering::SeqCst);
        }
    }

    /// The rare side's `smp_mb()`: a full barrier here *and* on every thread that may be
    /// between a `light` store and load.
    #[inline]
    pub fn heavy(&self) {
        // ORDERING: smp_mb(); pairs with `light` on the other side of the SB pattern.
        fence(Ordering::SeqCst);
        if self.expedited {
            membarrier::expedited();
            // ORDERING: orders the membarrier before our following loads, as liburcu's
            // smp_mb_master() does.
            fence(Ordering::SeqCst);
        }
    }
}

#[cfg(all(target_os = "linux", not(any(loom, shuttle, miri))))]
mod membarrier {
    const CMD_QUERY: libc::c_long = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes two integer arguments (cmd, flags) and a cpu id that is
        // ignored without MEMBARRIER_CMD_FLAG_CPU; it touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_long, 0 as libc::c_long) }
    }

    pub(super) fn register() -> bool {
        let supported = call(CMD_QUERY);
        if supported < 0 || supported & CMD_PRIVATE_EXPEDITED == 0 {
            return false;
        }
        // Registration is per process and idempotent.
        call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    pub(super) fn expedited() {
        let r = call(CMD_PRIVATE_EXPEDITED);
        // Registration succeeded, so the command cannot fail short of a kernel bug; a failure
        // would silently void the RCU guarantee, so refuse to go on.
        assert!(r == 0, "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registration");
    }
}

#[cfg(not(all(target_os = "linux", not(any(loom, shuttle, miri)))))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }
    pub(super) fn expedited() {}
}
