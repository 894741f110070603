//! A model of the kernel's `bpf_mem_alloc` (kernel/bpf/memalloc.c) over a checked slab.
//!
//! This crate owns memory: every selem and storage of the simulator lives in a [`Slab`], is
//! named by a [`Handle`] `(class, slot, generation)`, and is reached only through checked
//! accesses. A use after free, an access to a reused object, a double free, a forged handle,
//! a leak at teardown or a free of a still-linked object becomes a [`Violation`] in a
//! collector the caller owns, never undefined behaviour (see [`slab`] for how).
//!
//! On top of the slab, [`MemAlloc`] is `bpf_mem_alloc`: per-CPU caches with the kernel's
//! watermarks, prefill, refill and trim through a deferred per-CPU work item, immediate reuse
//! on [`MemAlloc::free`], RCU-deferred reuse on [`MemAlloc::free_rcu`], objects that reach the
//! slab only after a Tasks-Trace grace period (chained through an RCU one when
//! `trace_implies_rcu` is false), and [`MemAlloc::destroy`].
//!
//! **Architecture invariant:** this crate never decides *when* an object may be reused. The
//! caller picks the free ([`free`](MemAlloc::free), [`free_rcu`](MemAlloc::free_rcu),
//! [`raw_free`](MemAlloc::raw_free)); the crate carries it out through `bpfls-rcu`.
//!
//! ```
//! use bpfls_mem_alloc::{Account, Bytes, MemAlloc, MemAllocConfig, UnitSize, Violations};
//! use bpfls_rcu::{Config, Domains};
//! use std::sync::Arc;
//!
//! let domains = Arc::new(Domains::new(2, Config::threaded(), true));
//! let violations = Violations::new();
//! let ma: MemAlloc<Bytes> = MemAlloc::new(
//!     MemAllocConfig::new("selem", 2, UnitSize::Fixed(64)),
//!     domains,
//!     Account::unlimited("memcg"),
//!     violations.clone(),
//! )
//! .unwrap();
//! let h = ma.alloc(0).unwrap();
//! ma.get(h, "lookup").unwrap().store(0, 42);
//! ma.free(0, h).unwrap();           // immediate reuse...
//! let h2 = ma.alloc(0).unwrap();    // ...the same slot, a new generation
//! assert_eq!(h2.slot(), h.slot());
//! assert!(ma.get(h, "stale reader").is_err()); // reported, not undefined behaviour
//! assert_eq!(violations.len(), 1);
//! ma.free(0, h2).unwrap();
//! let report = ma.destroy().unwrap();
//! assert_eq!(report.leaked, 0);
//! ```

mod cache;
pub mod slab;
mod violation;

pub use cache::{CacheStats, DestroyReport, MemAlloc, MemAllocConfig, Mutation, UnitSize};
pub use slab::{Account, Bytes, FreeKind, Ledger, Slab, SlabObject, SlabStats};
pub use violation::{Violation, ViolationKind, Violations};

use std::fmt;

/// A checked reference to an object: size class, slot, generation (the kernel's pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    class: u8,
    slot: u32,
    generation: u32,
}

impl Handle {
    /// Builds a handle from its parts (tests use this to forge one).
    pub const fn new(class: u8, slot: u32, generation: u32) -> Self {
        Handle { class, slot, generation }
    }

    /// Size-class index (0 in fixed-size mode).
    pub fn class(self) -> u8 {
        self.class
    }

    /// Slot index in its slab.
    pub fn slot(self) -> u32 {
        self.slot
    }

    /// Generation: which lifetime of the slot this handle names (0 is never handed out).
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// A stable numeric id for traces: class, slot and generation packed.
    pub fn id(self) -> u64 {
        (u64::from(self.class) << 48) | self.pack()
    }

    /// Slot and generation in 48 bits (`slot << 24 | generation`), never 0 for a handle the
    /// slab handed out: what a lockless list link stores (the class is implied by the list).
    pub fn pack(self) -> u64 {
        (u64::from(self.slot & 0xff_ffff) << 24) | u64::from(self.generation & 0xff_ffff)
    }

    /// The handle of class `class` that [`pack`](Self::pack) produced `packed` from.
    pub fn unpack(class: u8, packed: u64) -> Self {
        Handle::new(class, ((packed >> 24) & 0xff_ffff) as u32, (packed & 0xff_ffff) as u32)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obj c{}/s{}/g{}", self.class, self.slot, self.generation)
    }
}

/// Why an allocation returned nothing (the kernel returns NULL for all of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllocError {
    /// The per-CPU free list is empty (the refill work has not run yet).
    Empty,
    /// The cache is already active on this CPU (NMI-style re-entry).
    Reentered,
    /// The slab could not provide an object: the account's limit, the slab's capacity, or an
    /// injected failure (`-ENOMEM`).
    NoMemory,
}

impl AllocError {
    /// The kernel errno a caller turns this into.
    pub fn errno(self) -> i32 {
        -12 // -ENOMEM
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocError::Empty => "per-CPU free list empty",
            AllocError::Reentered => "allocator re-entered on this CPU",
            AllocError::NoMemory => "out of memory (limit, capacity or injected failure)",
        })
    }
}

impl std::error::Error for AllocError {}

/// Errors of the allocator's API: bad input, misuse, or a detected violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemError {
    /// An allocation failed.
    Alloc(AllocError),
    /// The operation committed a violation (also in the collector).
    Violation(Violation),
    /// A CPU index outside the configured range.
    BadCpu {
        /// The CPU asked for.
        cpu: u32,
        /// CPUs configured.
        cpus: u32,
    },
    /// A size the allocator cannot serve.
    BadSize {
        /// The size asked for.
        size: usize,
        /// Why.
        reason: &'static str,
    },
    /// The allocator was destroyed.
    Destroyed {
        /// Its name.
        name: &'static str,
    },
    /// A configuration that cannot be built.
    BadConfig(String),
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Alloc(e) => write!(f, "allocation failed: {e}"),
            MemError::Violation(v) => write!(f, "violation: {v}"),
            MemError::BadCpu { cpu, cpus } => {
                write!(f, "CPU {cpu} is out of range: the allocator was configured for {cpus} CPUs")
            }
            MemError::BadSize { size, reason } => write!(f, "size {size} rejected: {reason}"),
            MemError::Destroyed { name } => {
                write!(f, "allocator `{name}` was destroyed; no alloc or free may follow")
            }
            MemError::BadConfig(why) => write!(f, "bad allocator configuration: {why}"),
        }
    }
}

impl std::error::Error for MemError {}

impl From<AllocError> for MemError {
    fn from(e: AllocError) -> Self {
        MemError::Alloc(e)
    }
}

impl From<Violation> for MemError {
    fn from(v: Violation) -> Self {
        MemError::Violation(v)
    }
}

/// Unit sizes of the 11 size classes, in the kernel's index order.
pub const SIZE_CLASSES: [usize; 11] = [96, 192, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// `BPF_MEM_ALLOC_SIZE_MAX`.
pub const SIZE_MAX: usize = 4096;

/// The 8-byte object header (`LLIST_NODE_SZ`) every unit carries.
pub const HEADER: usize = 8;

/// `bpf_mem_cache_idx()`: the size class for a request of `n` bytes *including* the header,
/// or `None` for 0 and anything above 4096.
pub fn size_class(n: usize) -> Option<usize> {
    match n {
        0 => None,
        n if n > SIZE_MAX => None,
        n if n <= 192 => Some(match (n - 1) / 8 {
            0 | 1 => 2,
            2 | 3 => 3,
            4..=7 => 4,
            8..=11 => 0,
            12..=15 => 5,
            _ => 1,
        }),
        n => Some((usize::BITS - (n - 1).leading_zeros()) as usize - 2),
    }
}

/// The kernel's per-cache thresholds for a unit size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Refill when `free_cnt` drops below this.
    pub low: usize,
    /// Trim when `free_cnt` rises above this.
    pub high: usize,
    /// Objects added per refill.
    pub batch: usize,
    /// Objects allocated per CPU at init.
    pub prefill: usize,
}

/// `init_refill_work()`'s table: ≤ 256 bytes: 32 / 96 / 48; above, scaled by 256 / unit.
pub fn watermarks(unit_size: usize) -> Watermarks {
    if unit_size <= 256 {
        Watermarks { low: 32, high: 96, batch: 48, prefill: 4 }
    } else {
        let low = (32 * 256 / unit_size).max(1);
        let high = (96 * 256 / unit_size).max(3);
        Watermarks { low, high, batch: ((high - low) / 4 * 3).max(1), prefill: 1 }
    }
}
