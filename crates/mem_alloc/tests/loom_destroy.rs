//! `destroy` while an RCU callback of the allocator is in flight: `destroy` drains every list,
//! sees the in-flight flags and waits (`rcu.barrier()`, `tasks_trace.barrier()`, and
//! `rcu.barrier()` again when Tasks-Trace does not imply RCU), so that afterwards nothing
//! leaked, nothing was reported and no callback of the allocator is left in either domain.
//!
//! Setup (main, before the spawn): an object allocated on CPU 0 is freed with `free_rcu` on
//! CPU 1, and the queued work runs, so CPU 1's `check_free_by_rcu` has queued `rcu_done`
//! (`call_rcu_in_progress`), whose batch goes to the object's `tgt`, CPU 0.
//!
//! - `destroy_vs_rcu_barrier_*`: another thread calls `rcu.barrier()` (some other subsystem's
//!   `rcu_barrier()`), so `rcu_done` (and the Tasks-Trace step it queues) can run before,
//!   during or after `destroy`'s drain on the main thread. Both threads may wait in a barrier
//!   at once; unlike the rcu crate's two-waiter models this one needs no cap (bound 3: 1 736
//!   executions).
//! - `destroy_vs_reader`: a reader thread is inside an RCU section (on nothing of the
//!   allocator's) while `destroy` runs, so `destroy`'s barrier must wait for its grace period.
//!
//! Main + 1 spawned thread per model. Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::Config;
use bpfls_sync::{Arc, thread};
use loom_common::{Tally, World, check};

/// The setup both models share: `free_rcu` on CPU 1 of an object of CPU 0, and the work run,
/// so that `rcu_done` of CPU 1 is queued.
fn world_with_rcu_callback(rcu: Config, trace_implies_rcu: bool) -> Arc<World> {
    let w = Arc::new(World::build(2, 8, rcu, trace_implies_rcu, None));
    let h = w.ma.alloc(0).unwrap();
    w.ma.get(h, "init").unwrap().store(0, 1);
    w.ma.free_rcu(1, h).unwrap();
    w.ma.run_all_work();
    let s = w.ma.cache_stats(0, 1);
    assert!(s.call_rcu_in_progress && s.waiting_for_gp == 1, "setup: {s:?}");
    w
}

/// After `destroy`: nothing leaked or reported, every object back in the slab, and no
/// callback of either domain pending.
fn check_after_destroy(w: &World, report: bpfls_mem_alloc::DestroyReport, what: &str) {
    assert_eq!(report.leaked, 0, "{what}: {:?}", w.violations.snapshot());
    w.assert_no_violation(what);
    assert_eq!(w.ma.slab(0).stats().outstanding, 0, "{what}: objects out of the slab");
    assert_eq!(w.domains.rcu.stats().cbs_pending, 0, "{what}: RCU callback left behind");
    assert_eq!(w.domains.tasks_trace.stats().cbs_pending, 0, "{what}: Tasks-Trace callback left");
}

fn destroy_vs_barrier(trace_implies_rcu: bool, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = world_with_rcu_callback(Config::threaded(), trace_implies_rcu);
        let other = {
            let w = w.clone();
            thread::spawn(move || w.domains.rcu.barrier())
        };
        let report = w.ma.destroy().unwrap();
        other.join().unwrap();
        tally.hit(if report.waited_for_callbacks {
            "destroy_waited"
        } else {
            "destroy_did_not_wait"
        });
        if w.domains.tasks_trace.stats().cbs_invoked > 0 {
            tally.hit("tasks_trace_step_ran");
        }
        check_after_destroy(&w, report, "destroy vs rcu_barrier");
    }
}

#[test]
fn destroy_vs_rcu_barrier_trace_implies_rcu() {
    let name = "destroy_vs_rcu_barrier_trace_implies_rcu";
    let tally = Tally::default();
    check(name, destroy_vs_barrier(true, &tally));
    tally.require(name, &["destroy_waited", "destroy_did_not_wait", "tasks_trace_step_ran"]);
}

#[test]
fn destroy_vs_rcu_barrier_chained() {
    let name = "destroy_vs_rcu_barrier_chained";
    let tally = Tally::default();
    check(name, destroy_vs_barrier(false, &tally));
    tally.require(name, &["destroy_waited", "destroy_did_not_wait", "tasks_trace_step_ran"]);
}

fn destroy_vs_reader(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = world_with_rcu_callback(Config::threaded().with_stall_polls(1), true);
        let reader = {
            let w = w.clone();
            thread::spawn(move || drop(w.domains.rcu.read_lock(1)))
        };
        let report = w.ma.destroy().unwrap();
        assert!(report.waited_for_callbacks, "rcu_done was queued, so destroy must wait");
        reader.join().unwrap();
        if w.domains.rcu.stats().stalls > 0 {
            tally.hit("destroy_waited_for_reader");
        }
        check_after_destroy(&w, report, "destroy vs reader");
    }
}

#[test]
fn destroy_waits_for_reader() {
    let name = "destroy_waits_for_reader";
    let tally = Tally::default();
    check(name, destroy_vs_reader(&tally));
    tally.require(name, &["destroy_waited_for_reader"]);
}
