//! Shared driver and fixtures for the loom models in `crates/rcu/tests/loom_*.rs`.
//!
//! Every model runs through [`check`] (must pass) or [`expect_failure`] (a sanity mutation
//! that loom must catch). Both build a `loom::model::Builder` whose preemption bound comes
//! from `LOOM_MAX_PREEMPTIONS` (default [`DEFAULT_BOUND`]; the other `LOOM_*` variables are
//! read by the builder itself), count executions with a plain `std` atomic (loom must not
//! explore the counter) and print `<name>: completed in N iterations (bound B)`, which CI
//! compares across runs (C14: a count that drops 10x means a model stopped exploring).
//! [`Tally`] records which outcomes the explored executions reached, so a test can also
//! assert that the interesting interleavings were explored at all.

#![allow(dead_code)] // each test file uses only part of this module

use bpfls_rcu::{Config, Domain, Rcu, TasksTrace};
use bpfls_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use bpfls_sync::{Arc, UnsafeCell, thread};
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
/// one (see [`TWO_SPINNERS_CAP`]). Returns the bound and a note for the report line.
fn effective_bound(cap: Option<usize>) -> (usize, String) {
    let asked = bound();
    match cap {
        Some(cap) if cap < asked => (cap, format!("bound {cap}, capped from {asked}")),
        _ => (asked, format!("bound {asked}")),
    }
}

/// Preemption cap for models in which two threads spin-wait (yield in a loop) at the same
/// time, e.g. two concurrent `synchronize()` / `barrier()` callers. From bound 3 on, loom
/// 0.7.3 explores a schedule that alternates between the two yielding waiters forever while
/// the thread they wait for never runs, and fails with "Model exceeded maximum number of
/// branches". This is loom's, not the engine's: a 20-line model with plain atomics (one
/// thread stores 1 then 0, two threads `while load() != 0 { yield_now() }`) passes at bounds
/// 1 and 2 and fails the same way at bound 3. Such models therefore run at most at bound 2.
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
                "{name}: loom hit its branch limit at iteration {n} ({note}) before finding the                  mutation's failure: {msg}"
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
