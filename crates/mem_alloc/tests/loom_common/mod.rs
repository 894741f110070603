//! Shared driver and fixtures for the loom models in `crates/mem_alloc/tests/loom_*.rs`.
//!
//! The driver ([`check`] / [`expect_failure`] and their `_capped` variants, [`Tally`], the
//! preemption bound read from `LOOM_MAX_PREEMPTIONS`, and the
//! `<name>: completed in N iterations (bound B)` line that `cargo xtask loom` compares with
//! `xtask/loom-baseline.txt`) is shared by every crate's models and lives in
//! `bpfls_testkit::loom`; it is re-exported here, so the models call it as before.
//!
//! [`World`] builds the small allocator every model uses: a `Bytes` allocator of
//! [`UNIT`]-byte units over a shared [`Domains`] (threaded backend; under loom it has no
//! callback worker, so callbacks run inside `barrier()`) and a [`Violations`] collector, with
//! no refill thread (work runs only in `run_work()`).

#![allow(dead_code)] // each test file uses only part of this module

use bpfls_mem_alloc::{
    Account, Bytes, Handle, MemAlloc, MemAllocConfig, MemError, Mutation, UnitSize, Violations,
};
use bpfls_rcu::{Config, Domains};
use bpfls_sync::Arc;

// ----- driver ---------------------------------------------------------------------------------

pub use bpfls_testkit::loom::*;

// ----- the allocator under test ---------------------------------------------------------------

/// Payload bytes of one unit (16 with the header: two 64-bit words).
pub const UNIT: usize = 8;

/// Prefilled objects per CPU at creation (the kernel's 4 for units of at most 256 bytes).
pub const PREFILL: u32 = 4;

/// One model's allocator, its grace-period domains and its violation collector.
pub struct World {
    /// The grace-period domains (2 RCU CPUs).
    pub domains: Arc<Domains>,
    /// The collector every report goes to.
    pub violations: Violations,
    /// The allocator.
    pub ma: MemAlloc<Bytes>,
}

impl World {
    /// An allocator of `cpus` CPUs with `capacity` slots (prefill takes [`PREFILL`] per CPU,
    /// so `capacity - cpus * PREFILL` are left for refills), over RCU domains built from `rcu`
    /// in which a Tasks-Trace grace period implies an RCU one.
    pub fn new(cpus: u32, capacity: u32, rcu: Config, mutation: Option<Mutation>) -> Self {
        Self::build(cpus, capacity, rcu, true, mutation)
    }

    /// [`World::new`] with the `rcu_trace_implies_rcu_gp()` knob: when it is `false`, objects
    /// reach the slab through the chained Tasks-Trace-then-RCU callback.
    pub fn build(
        cpus: u32,
        capacity: u32,
        rcu: Config,
        trace_implies_rcu: bool,
        mutation: Option<Mutation>,
    ) -> Self {
        let domains = Arc::new(Domains::new(2, rcu, trace_implies_rcu));
        let violations = Violations::new();
        let mut cfg = MemAllocConfig::new("loom", cpus, UnitSize::Fixed(UNIT))
            .with_capacity(capacity)
            .without_work_thread();
        if let Some(m) = mutation {
            cfg = cfg.with_mutation(m);
        }
        let ma = MemAlloc::new(
            cfg,
            domains.clone(),
            Account::unlimited("loom-memcg"),
            violations.clone(),
        )
        .expect("a valid configuration");
        World { domains, violations, ma }
    }

    /// Asserts that no violation has been reported so far.
    pub fn assert_no_violation(&self, what: &str) {
        let v = self.violations.snapshot();
        assert!(v.is_empty(), "{what}: no violation expected, got {v:?}");
    }

    /// The quiescent teardown every model ends with: runs the queued work, waits for every
    /// callback of both domains, checks the lists (I14), destroys the allocator and asserts
    /// that nothing leaked and nothing was reported. Returns whether `destroy` had to wait.
    pub fn teardown(&self, what: &str) -> bool {
        self.ma.run_all_work();
        self.domains.barrier_all();
        let problems = self.ma.check_lists();
        assert!(problems.is_empty(), "{what}: list invariants broken: {problems:?}");
        self.assert_no_violation(what);
        let report = self.ma.destroy().expect("destroy once");
        assert_eq!(report.leaked, 0, "{what}: leaked objects: {:?}", self.violations.snapshot());
        self.assert_no_violation(what);
        assert_eq!(self.ma.slab(0).stats().outstanding, 0, "{what}: objects out of the slab");
        report.waited_for_callbacks
    }
}

/// A handle packed into a `u64` for publication through an atomic (0 = nothing published;
/// generation 0 is never handed out, so no real handle packs to 0). Fixed-size allocators
/// only have class 0.
pub fn pack(h: Handle) -> u64 {
    assert_eq!(h.class(), 0, "fixed-size allocators have one class");
    (u64::from(h.slot()) << 32) | u64::from(h.generation())
}

/// The inverse of [`pack`]; `None` for 0.
pub fn unpack(v: u64) -> Option<Handle> {
    (v != 0).then(|| Handle::new(0, (v >> 32) as u32, v as u32))
}

/// Whether an allocation failed only because the per-CPU cache was busy (a concurrent
/// refill or another thread on the same logical CPU: the kernel's NMI case) or empty. Both
/// are legal `NULL` returns of `bpf_mem_cache_alloc`.
pub fn is_benign_alloc_failure(e: &MemError) -> bool {
    matches!(
        e,
        MemError::Alloc(
            bpfls_mem_alloc::AllocError::Reentered | bpfls_mem_alloc::AllocError::Empty
        )
    )
}
