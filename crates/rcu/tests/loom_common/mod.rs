//! Shared driver and fixtures for the loom models in `crates/rcu/tests/loom_*.rs`.
//!
//! The driver ([`check`] / [`expect_failure`] and their `_capped` variants, [`Tally`], the
//! preemption bound read from `LOOM_MAX_PREEMPTIONS`, and the
//! `<name>: completed in N iterations (bound B)` line that `cargo xtask loom` compares with
//! `xtask/loom-baseline.txt`) is shared by every crate's models and lives in
//! `bpfls_testkit::loom`; it is re-exported here, so the models call it as before.

#![allow(dead_code)] // each test file uses only part of this module

use bpfls_rcu::{Config, Domain, Rcu, TasksTrace};
use bpfls_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use bpfls_sync::{Arc, UnsafeCell, thread};

// ----- driver ---------------------------------------------------------------------------------

pub use bpfls_testkit::loom::*;

// ----- objects --------------------------------------------------------------------------------

/// The value a live object holds.
pub const LIVE: u64 = 0x11fe;
/// The value a freed object is overwritten with.
pub const POISON: u64 = 0xdead;

/// A reclaimable object: a value that loom checks for data races, a `freed` flag set before
/// the value is poisoned, and a `using` flag a reader holds while it looks at the object.
#[derive(Debug)]
pub struct Obj {
    val: UnsafeCell<u64>,
    freed: AtomicBool,
    using: AtomicBool,
}

// SAFETY: `val` is only accessed through loom's `UnsafeCell::with` / `with_mut`, which run one
// model thread at a time and report any pair of accesses not ordered by happens-before as a
// failure ("Causality violation") before performing it; that report is what these models
// check for.
unsafe impl Sync for Obj {}

impl Default for Obj {
    fn default() -> Self {
        Obj {
            val: UnsafeCell::new(LIVE),
            freed: AtomicBool::new(false),
            using: AtomicBool::new(false),
        }
    }
}

impl Obj {
    /// A reader's dereference: asserts the object is live, marking it in use meanwhile.
    pub fn read(&self, what: &str) {
        self.using.store(true, Ordering::Relaxed);
        // SAFETY: see `impl Sync for Obj`; loom checks this read against the poisoning write.
        let v = self.val.with(|p| unsafe { *p });
        assert!(!self.freed.load(Ordering::Relaxed), "{what}: use after free (freed flag)");
        assert_eq!(v, LIVE, "{what}: use after free (read a poisoned value)");
        self.using.store(false, Ordering::Relaxed);
    }

    /// The reclaimer: asserts no reader uses the object, then frees (poisons) it.
    pub fn free(&self, what: &str) {
        assert!(!self.using.load(Ordering::Relaxed), "{what}: freed while a reader uses it");
        assert!(!self.freed.swap(true, Ordering::Relaxed), "{what}: double free");
        // SAFETY: see `impl Sync for Obj`; loom checks this write against every reader's read.
        self.val.with_mut(|p| unsafe { *p = POISON });
    }

    /// Whether [`Obj::free`] has run (as seen by the caller).
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Relaxed)
    }
}

/// Two objects and a published index (`rcu_assign_pointer` target): object 0 is published
/// first, the updater replaces it with object 1 and reclaims object 0.
#[derive(Debug, Default)]
pub struct Pair {
    ptr: AtomicUsize,
    objs: [Obj; 2],
}

impl Pair {
    /// A reader's `rcu_dereference()` and use of the published object; returns its index.
    pub fn read(&self, what: &str) -> usize {
        // ORDERING: Acquire = rcu_dereference (pairs with the Release half of `replace`).
        let i = self.ptr.load(Ordering::Acquire);
        self.objs[i].read(what);
        i
    }

    /// `rcu_replace_pointer()`: publishes object 1, returns the index of the old object.
    pub fn replace(&self) -> usize {
        self.ptr.swap(1, Ordering::AcqRel)
    }

    /// Object `i`.
    pub fn obj(&self, i: usize) -> &Obj {
        &self.objs[i]
    }
}

// ----- domains --------------------------------------------------------------------------------

/// Which domain a model's readers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Normal RCU; reader `n` runs on CPU `n`.
    Rcu,
    /// RCU Tasks-Trace; reader `n` registers as task `n + 1`.
    TasksTrace,
}

/// One domain of either flavour, with a flavour-independent read-side section.
#[derive(Debug)]
pub enum Dom {
    /// Normal RCU with [`Dom::READERS`] CPUs.
    Rcu(Rcu),
    /// RCU Tasks-Trace.
    TasksTrace(TasksTrace),
}

impl Dom {
    /// Readers a model may use (CPUs of the RCU domain).
    pub const READERS: u32 = 2;

    /// A domain of `flavor` built from `cfg`.
    pub fn new(flavor: Flavor, cfg: Config) -> Self {
        match flavor {
            Flavor::Rcu => Dom::Rcu(Rcu::new(Self::READERS, cfg)),
            Flavor::TasksTrace => Dom::TasksTrace(TasksTrace::new(cfg)),
        }
    }

    /// Runs `f` inside a read-side section of reader 0.
    pub fn read<R>(&self, f: impl FnOnce() -> R) -> R {
        self.read_as(0, f)
    }

    /// Runs `f` inside a read-side section of reader `n` (RCU: on CPU `n`; Tasks-Trace: as
    /// task `n + 1`, which registers first and exits afterwards).
    pub fn read_as<R>(&self, n: u32, f: impl FnOnce() -> R) -> R {
        match self {
            Dom::Rcu(rcu) => {
                let _guard = rcu.read_lock(n);
                f()
            }
            Dom::TasksTrace(tt) => {
                let task = tt.register_task(u64::from(n) + 1);
                let _guard = tt.read_lock(&task);
                f()
            }
        }
    }

    /// The common API.
    pub fn domain(&self) -> &Domain {
        match self {
            Dom::Rcu(rcu) => rcu,
            Dom::TasksTrace(tt) => tt,
        }
    }
}

// ----- RCU+sync+free --------------------------------------------------------------------------

/// How the updater of [`rcu_sync_free`] waits before freeing the old object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `synchronize()`.
    Synchronize,
    /// Nothing (the sanity mutation).
    Nothing,
}

/// `RCU+sync+free.litmus` over the engine: a reader dereferences the published object inside
/// a section; the updater publishes a replacement, waits as `wait` says, and frees (poisons)
/// the old object. Forbidden outcome: a reader sees the old object freed (or races with
/// the poisoning write). Main + `readers` threads (1 or 2).
///
/// `tally` records whether a reader saw the old object (`reader_saw_old`) or the new one,
/// and whether the grace period had to wait for the reader (`gp_waited_for_reader`, detected
/// with a stall threshold of one poll, which only files a report).
pub fn rcu_sync_free(
    flavor: Flavor,
    cfg: fn() -> Config,
    wait: Wait,
    readers: u32,
    tally: &Tally,
) -> impl Fn() + Sync + Send + 'static {
    assert!((1..=Dom::READERS).contains(&readers));
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(flavor, cfg().with_stall_polls(1)));
        let pair = Arc::new(Pair::default());
        let handles: Vec<_> = (0..readers)
            .map(|n| {
                let (dom, pair) = (dom.clone(), pair.clone());
                thread::spawn(move || dom.read_as(n, || pair.read("RCU+sync+free reader")))
            })
            .collect();
        let old = pair.replace();
        if wait == Wait::Synchronize {
            dom.domain().synchronize();
        }
        pair.obj(old).free("RCU+sync+free updater");
        for h in handles {
            let seen = h.join().unwrap();
            tally.hit(if seen == old { "reader_saw_old" } else { "reader_saw_new" });
        }
        if dom.domain().stats().stalls > 0 {
            tally.hit("gp_waited_for_reader");
        }
    }
}
