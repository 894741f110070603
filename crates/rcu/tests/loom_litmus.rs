//! C13: the LKMM litmus tests `RCU+sync+free` and `RCU+sync+read` (both "Result: Never")
//! encoded over the engine's API, for the RCU domain (reader on a CPU) and the Tasks-Trace
//! domain (reader is a registered task), each with a sanity mutation without `synchronize()`
//! that loom must catch.
//!
//! The litmus `READ_ONCE` / `WRITE_ONCE` accesses are `Relaxed`, `rcu_dereference` is
//! `Acquire`, `rcu_assign_pointer` is `Release`; the engine supplies every `smp_mb()` as
//! `fence(SeqCst)`. Main + 1 spawned thread per model. Preemption bound:
//! `LOOM_MAX_PREEMPTIONS` (default 2; CI runs 2, the deep run 3).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::Config;
use bpfls_sync::atomic::{AtomicUsize, Ordering};
use bpfls_sync::{Arc, thread};
use loom_common::{Dom, Flavor, Tally, Wait, check, expect_failure, rcu_sync_free};

// ----- RCU+sync+free --------------------------------------------------------------------------

const FREE_OUTCOMES: &[&str] = &["reader_saw_old", "reader_saw_new", "gp_waited_for_reader"];

#[test]
fn rcu_sync_free_rcu() {
    let name = "rcu_sync_free_rcu";
    let tally = Tally::default();
    check(name, rcu_sync_free(Flavor::Rcu, Config::threaded, Wait::Synchronize, 1, &tally));
    tally.require(name, FREE_OUTCOMES);
}

#[test]
fn rcu_sync_free_tasks_trace() {
    let name = "rcu_sync_free_tasks_trace";
    let tally = Tally::default();
    check(name, rcu_sync_free(Flavor::TasksTrace, Config::threaded, Wait::Synchronize, 1, &tally));
    tally.require(name, FREE_OUTCOMES);
}

/// Two readers (CPUs 0 and 1, or tasks 1 and 2) against one updater: main + 2 threads.
#[test]
fn rcu_sync_free_two_readers_rcu() {
    let name = "rcu_sync_free_two_readers_rcu";
    let tally = Tally::default();
    check(name, rcu_sync_free(Flavor::Rcu, Config::threaded, Wait::Synchronize, 2, &tally));
    tally.require(name, FREE_OUTCOMES);
}

#[test]
fn rcu_sync_free_two_readers_tasks_trace() {
    let name = "rcu_sync_free_two_readers_tasks_trace";
    let tally = Tally::default();
    check(name, rcu_sync_free(Flavor::TasksTrace, Config::threaded, Wait::Synchronize, 2, &tally));
    tally.require(name, FREE_OUTCOMES);
}

#[test]
fn rcu_sync_free_without_sync_is_caught_rcu() {
    expect_failure(
        "rcu_sync_free_without_sync_is_caught_rcu",
        rcu_sync_free(Flavor::Rcu, Config::threaded, Wait::Nothing, 1, &Tally::default()),
    );
}

#[test]
fn rcu_sync_free_without_sync_is_caught_tasks_trace() {
    expect_failure(
        "rcu_sync_free_without_sync_is_caught_tasks_trace",
        rcu_sync_free(Flavor::TasksTrace, Config::threaded, Wait::Nothing, 1, &Tally::default()),
    );
}

// ----- RCU+sync+read --------------------------------------------------------------------------

struct SyncRead {
    dom: Dom,
    x0: AtomicUsize,
    x1: AtomicUsize,
}

/// `RCU+sync+read.litmus`:
///
/// ```text
/// P0: rcu_read_lock(); r0 = READ_ONCE(*x0); r1 = READ_ONCE(*x1); rcu_read_unlock();
/// P1: WRITE_ONCE(*x1, 1); synchronize_rcu(); WRITE_ONCE(*x0, 1);
/// exists (0:r0=1 /\ 0:r1=0)   (* Never *)
/// ```
///
/// `tally` records the outcome `(r0, r1)` of every execution.
fn rcu_sync_read(flavor: Flavor, wait: Wait, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = Arc::new(SyncRead {
            dom: Dom::new(flavor, Config::threaded()),
            x0: AtomicUsize::new(0),
            x1: AtomicUsize::new(0),
        });
        let p0 = {
            let (w, tally) = (w.clone(), tally.clone());
            thread::spawn(move || {
                let (r0, r1) = w.dom.read(|| {
                    let r0 = w.x0.load(Ordering::Relaxed);
                    let r1 = w.x1.load(Ordering::Relaxed);
                    (r0, r1)
                });
                tally.hit(match (r0, r1) {
                    (0, 0) => "r0=0 r1=0",
                    (0, _) => "r0=0 r1=1",
                    (_, 0) => "r0=1 r1=0",
                    _ => "r0=1 r1=1",
                });
                assert!(
                    !(r0 == 1 && r1 == 0),
                    "RCU+sync+read: the reader saw the post-sync write but not the pre-sync one"
                );
            })
        };
        w.x1.store(1, Ordering::Relaxed);
        if wait == Wait::Synchronize {
            w.dom.domain().synchronize();
        }
        w.x0.store(1, Ordering::Relaxed);
        p0.join().unwrap();
    }
}

/// Every outcome the litmus test allows.
const READ_OUTCOMES: &[&str] = &["r0=0 r1=0", "r0=0 r1=1", "r0=1 r1=1"];

#[test]
fn rcu_sync_read_rcu() {
    let name = "rcu_sync_read_rcu";
    let tally = Tally::default();
    check(name, rcu_sync_read(Flavor::Rcu, Wait::Synchronize, &tally));
    tally.require(name, READ_OUTCOMES);
}

#[test]
fn rcu_sync_read_tasks_trace() {
    let name = "rcu_sync_read_tasks_trace";
    let tally = Tally::default();
    check(name, rcu_sync_read(Flavor::TasksTrace, Wait::Synchronize, &tally));
    tally.require(name, READ_OUTCOMES);
}

#[test]
fn rcu_sync_read_without_sync_is_caught_rcu() {
    expect_failure(
        "rcu_sync_read_without_sync_is_caught_rcu",
        rcu_sync_read(Flavor::Rcu, Wait::Nothing, &Tally::default()),
    );
}

#[test]
fn rcu_sync_read_without_sync_is_caught_tasks_trace() {
    expect_failure(
        "rcu_sync_read_without_sync_is_caught_tasks_trace",
        rcu_sync_read(Flavor::TasksTrace, Wait::Nothing, &Tally::default()),
    );
}
