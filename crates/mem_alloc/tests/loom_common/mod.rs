//! Shared driver and fixtures for the loom models in `crates/mem_alloc/tests/loom_*.rs`.
//!
//! Every model runs through [`check`] (must pass) or [`expect_failure`] (a sanity mutation
//! that loom must catch). Both build a `loom::model::Builder` whose preemption bound comes
//! from `LOOM_MAX_PREEMPTIONS` (default [`DEFAULT_BOUND`]; the other `LOOM_*` variables are
//! read by the builder itself), count executions with a plain `std` atomic (loom must not
//! explore the counter) and print `<name>: completed in N iterations (bound B)`, which CI
//! compares across runs (C14: a count that drops 10x means a model stopped exploring).
//! [`Tally`] records which outcomes the explored executions reached, so a test can also
//! assert that the interesting interleavings were explored at all.
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
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

// ----- driver ---------------------------------------------------------------------------------

/// The preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set.
pub const DEFAULT_BOUND: usize = 2;

/// The preemption bound of this run.
pub fn bound() -> usize {
    match std::env::var("LOOM_MAX_PREEMPTIONS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("LOOM_MAX_PREEMPTIONS={v:?} is not a number")),
        Err(_) => DEFAULT_BOUND,
    }
}

std::thread_local! {
    /// Set while this test thread runs a model that is expected to fail: its panics are the
    /// expected outcome and are reported in one line instead of a backtrace. loom runs model
    /// threads as coroutines on the test's own OS thread, so this flag covers them too.
    static EXPECTING_FAILURE: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !EXPECTING_FAILURE.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// The bound a model runs at: the run's [`bound`], lowered to `cap` for models that declare
/// one. Returns the bound and a note for the report line.
fn effective_bound(cap: Option<usize>) -> (usize, String) {
    let asked = bound();
    match cap {
        Some(cap) if cap < asked => (cap, format!("bound {cap}, capped from {asked}")),
        _ => (asked, format!("bound {asked}")),
    }
}

/// Preemption cap for models in which two threads spin-wait (yield in a loop) at the same
/// time, e.g. a `barrier()` caller waiting for a grace period while another thread spins on a
/// cache's `SpinLock`. From bound 3 on, loom 0.7.3 explores schedules that alternate between
/// two yielding waiters forever and fails with "Model exceeded maximum number of branches"
/// (see `crates/rcu/tests/loom_common/mod.rs`, `TWO_SPINNERS_CAP`).
pub const TWO_SPINNERS_CAP: usize = 2;

/// loom's own failure when an execution never ends: not a finding of the model.
const BRANCH_LIMIT: &str = "Model exceeded maximum number of branches";

/// Runs `f` under loom at preemption bound `bound`; `count` counts the executions started
/// (also when loom unwinds).
fn run<F>(f: F, bound: usize, count: &std::sync::Arc<StdAtomicUsize>) -> std::thread::Result<()>
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(bound);
    let counter = count.clone();
    panic::catch_unwind(AssertUnwindSafe(move || {
        builder.check(move || {
            counter.fetch_add(1, StdOrdering::Relaxed);
            f();
        })
    }))
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> &str {
    e.downcast_ref::<&str>()
        .copied()
        .or_else(|| e.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic>")
}

/// Explores `f` (within the bound); fails on the first failing execution. Returns the number
/// of executions.
pub fn check<F>(name: &str, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    check_capped(name, None, f)
}

/// [`check`] at a preemption bound of at most `cap` (e.g. [`TWO_SPINNERS_CAP`]).
pub fn check_capped<F>(name: &str, cap: Option<usize>, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    let (bound, note) = effective_bound(cap);
    let count = std::sync::Arc::new(StdAtomicUsize::new(0));
    let start = Instant::now();
    let result = run(f, bound, &count);
    let n = count.load(StdOrdering::Relaxed);
    if let Err(e) = result {
        eprintln!("{name}: FAILED at iteration {n} ({note})");
        panic::resume_unwind(e);
    }
    println!("{name}: completed in {n} iterations ({note}) [{:.2?}]", start.elapsed());
    n
}

/// Runs a sanity mutation: `f` is a model with a known bug, and loom must find an execution
/// in which it fails (an assertion of the model, or a loom causality / leak report; hitting
/// loom's branch limit does not count). Fails if every execution passes. Returns the number
/// of executions up to and including the failing one.
pub fn expect_failure<F>(name: &str, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    expect_failure_capped(name, None, f)
}

/// [`expect_failure`] at a preemption bound of at most `cap`.
pub fn expect_failure_capped<F>(name: &str, cap: Option<usize>, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    install_quiet_hook();
    let (bound, note) = effective_bound(cap);
    let count = std::sync::Arc::new(StdAtomicUsize::new(0));
    let start = Instant::now();
    EXPECTING_FAILURE.with(|q| q.set(true));
    let result = run(f, bound, &count);
    EXPECTING_FAILURE.with(|q| q.set(false));
    let n = count.load(StdOrdering::Relaxed);
    match result {
        Err(e) => {
            let msg = panic_message(&*e);
            assert!(
                !msg.contains(BRANCH_LIMIT),
                "{name}: loom hit its branch limit at iteration {n} ({note}) before finding the \
                 mutation's failure: {msg}"
            );
            println!(
                "{name}: completed in {n} iterations ({note}) [{:.2?}]: mutation caught as \
                 expected: {msg}",
                start.elapsed(),
            );
            n
        }
        Ok(()) => panic!(
            "{name}: the mutation was NOT caught in {n} iterations ({note}): the model or the \
             checker is broken"
        ),
    }
}

/// Outcome counters across all executions of a model (plain `std`, not explored by loom).
#[derive(Debug, Clone, Default)]
pub struct Tally(std::sync::Arc<std::sync::Mutex<BTreeMap<&'static str, usize>>>);

impl Tally {
    /// Counts one execution that reached `outcome`.
    pub fn hit(&self, outcome: &'static str) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }

    /// Prints the counters and asserts that every outcome in `required` was reached.
    pub fn require(&self, name: &str, required: &[&'static str]) {
        let map = self.0.lock().unwrap();
        println!("{name}: outcomes {map:?}");
        for r in required {
            assert!(
                map.get(r).copied().unwrap_or(0) > 0,
                "{name}: no explored execution reached `{r}`: the model no longer explores \
                 what it was written for ({map:?})"
            );
        }
    }
}

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
