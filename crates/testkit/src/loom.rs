//! The loom driver shared by the models in `crates/*/tests/loom_*.rs`.
//!
//! Every model runs through [`check`] (must pass) or [`expect_failure`] (a sanity mutation,
//! i.e. a known-bad model, that loom must catch). Both build a `loom::model::Builder` whose
//! preemption bound comes from `LOOM_MAX_PREEMPTIONS` (default [`DEFAULT_BOUND`]; the other
//! `LOOM_*` variables are read by the builder itself), count executions with a plain `std`
//! atomic (loom must not explore the counter) and print
//! `<name>: completed in N iterations (bound B)` (or `(bound B, capped from C)`), which
//! `cargo xtask loom` compares with `xtask/loom-baseline.txt` (C14: a count that drops 10x
//! means a model stopped exploring). [`Tally`] records which outcomes the explored executions
//! reached, so a test can also assert that the interesting interleavings were explored at all.
//!
//! The printed line is parsed by `xtask` (`parse_iterations`): keep its format.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

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
/// time, e.g. two concurrent `synchronize()` / `barrier()` callers, or a `barrier()` caller
/// waiting for a grace period while another thread spins on a cache's `SpinLock`. From bound 3
/// on, loom 0.7.3 explores a schedule that alternates between the two yielding waiters forever
/// while the thread they wait for never runs, and fails with "Model exceeded maximum number of
/// branches". This is loom's, not the engine's: a 20-line model with plain atomics (one thread
/// stores 1 then 0, two threads `while load() != 0 { yield_now() }`) passes at bounds 1 and 2
/// and fails the same way at bound 3. Such models therefore run at most at bound 2.
pub const TWO_SPINNERS_CAP: usize = 2;

/// loom's own failure when an execution never ends: not a finding of the model.
const BRANCH_LIMIT: &str = "Model exceeded maximum number of branches";

/// Runs `f` under loom at preemption bound `bound`; `count` counts the executions started
/// (also when loom unwinds).
fn run<F>(f: F, bound: usize, count: &std::sync::Arc<StdAtomicUsize>) -> std::thread::Result<()>
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = ::loom::model::Builder::new();
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
