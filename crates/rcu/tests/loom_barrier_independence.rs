//! C5, barrier independence: `rcu_barrier_tasks_trace()` does not imply `rcu_barrier()` and
//! vice versa; `barrier_all()` waits for both; and the chained policy
//! `AfterTasksTraceThenRcu` (`trace_implies_rcu == false`) protects both kinds of reader.
//!
//! The scenario is the Nov 2025 `map_free` use-after-free: elements are reclaimed through
//! callbacks on both domains, and those callbacks touch the map; `map_free` waits for
//! callbacks and then frees the map. With one barrier left out, a callback of the other
//! domain runs after the map is freed (in these worker-less models at the latest when the
//! domains are dropped), which `Obj` reports as a use after free.
//!
//! Main + at most 2 spawned threads per model. Preemption bound: `LOOM_MAX_PREEMPTIONS`
//! (default 2; CI runs 2, the deep run 3).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::{Config, Domains, ReclaimPolicy};
use bpfls_sync::atomic::{AtomicBool, Ordering};
use bpfls_sync::{Arc, thread};
use loom_common::{Obj, Tally, check, expect_failure};

/// Which barriers `map_free` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barriers {
    /// `barrier_all()`: Tasks-Trace, then RCU.
    All,
    /// `tasks_trace.barrier()` only (the Nov 2025 bug).
    TasksTraceOnly,
    /// `rcu.barrier()` only.
    RcuOnly,
}

impl Barriers {
    fn run(self, d: &Domains) {
        match self {
            Barriers::All => d.barrier_all(),
            Barriers::TasksTraceOnly => d.tasks_trace.barrier(),
            Barriers::RcuOnly => d.rcu.barrier(),
        }
    }
}

// ----- deterministic: one barrier does not run the other domain's callbacks -----------------

/// One callback on each domain, then only the barriers `barriers` names; asserts that both
/// callbacks ran. Single-threaded: with no callback worker, a domain's callbacks run only in
/// its own barrier (or at drop), so a missing barrier fails in every execution.
fn both_callbacks_ran_after(barriers: Barriers) -> impl Fn() + Sync + Send + 'static {
    move || {
        let d = Domains::new(1, Config::threaded(), true);
        let ran = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        for (i, policy) in
            [ReclaimPolicy::AfterRcu, ReclaimPolicy::AfterTasksTrace].into_iter().enumerate()
        {
            let ran = ran.clone();
            d.defer(policy, i as u64 + 1, 64, move || ran[i].store(true, Ordering::Relaxed));
        }
        barriers.run(&d);
        let (rcu_ran, tt_ran) = (ran[0].load(Ordering::Relaxed), ran[1].load(Ordering::Relaxed));
        drop(d); // runs what is left before a failed assertion unwinds
        assert!(rcu_ran, "the RCU callback had not run after the barriers");
        assert!(tt_ran, "the Tasks-Trace callback had not run after the barriers");
    }
}

#[test]
fn barrier_all_runs_both_domains_callbacks() {
    check("barrier_all_runs_both_domains_callbacks", both_callbacks_ran_after(Barriers::All));
}

#[test]
fn tasks_trace_barrier_alone_does_not_run_rcu_callback() {
    expect_failure(
        "tasks_trace_barrier_alone_does_not_run_rcu_callback",
        both_callbacks_ran_after(Barriers::TasksTraceOnly),
    );
}

#[test]
fn rcu_barrier_alone_does_not_run_tasks_trace_callback() {
    expect_failure(
        "rcu_barrier_alone_does_not_run_tasks_trace_callback",
        both_callbacks_ran_after(Barriers::RcuOnly),
    );
}

// ----- concurrent: map_free with readers of both kinds ----------------------------------------

/// The map, an element reclaimed after RCU (read by a non-sleepable program) and one
/// reclaimed after Tasks-Trace (read by a sleepable program).
#[derive(Debug, Default)]
struct MapWorld {
    map: Obj,
    rcu_elem: Obj,
    tt_elem: Obj,
    rcu_published: AtomicBool,
    tt_published: AtomicBool,
}

/// A non-sleepable reader (CPU 0) reads the RCU element inside an RCU section and a
/// sleepable reader (task 1) reads the Tasks-Trace element inside a Tasks-Trace section,
/// while `map_free` unpublishes both, defers their frees (each callback also touches the
/// map, as `bpf_selem_free_rcu` reaches the map's allocator), calls `barriers` and frees the
/// map. The domains are dropped last, running whatever is still queued. Main + 2 threads.
fn map_free(barriers: Barriers, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let d = Arc::new(Domains::new(1, Config::threaded(), true));
        let w = Arc::new(MapWorld {
            rcu_published: AtomicBool::new(true),
            tt_published: AtomicBool::new(true),
            ..MapWorld::default()
        });
        let rcu_reader = {
            let (d, w) = (d.clone(), w.clone());
            thread::spawn(move || {
                let _g = d.rcu.read_lock(0);
                let seen = w.rcu_published.load(Ordering::Acquire);
                if seen {
                    w.rcu_elem.read("RCU reader");
                }
                seen
            })
        };
        let tt_reader = {
            let (d, w) = (d.clone(), w.clone());
            thread::spawn(move || {
                let task = d.tasks_trace.register_task(1);
                let _g = d.tasks_trace.read_lock(&task);
                if w.tt_published.load(Ordering::Acquire) {
                    w.tt_elem.read("Tasks-Trace reader");
                }
            })
        };
        // map_free: unlink both elements, reclaim them through their domains.
        w.rcu_published.store(false, Ordering::Release);
        w.tt_published.store(false, Ordering::Release);
        let ww = w.clone();
        d.defer(ReclaimPolicy::AfterRcu, 1, 64, move || {
            ww.map.read("RCU callback touching the map");
            ww.rcu_elem.free("RCU callback");
        });
        let ww = w.clone();
        d.defer(ReclaimPolicy::AfterTasksTrace, 2, 64, move || {
            ww.map.read("Tasks-Trace callback touching the map");
            ww.tt_elem.free("Tasks-Trace callback");
        });
        barriers.run(&d);
        w.map.free("map_free");
        let rcu_seen = rcu_reader.join().unwrap();
        tt_reader.join().unwrap();
        tally.hit(if rcu_seen { "rcu_reader_saw_elem" } else { "rcu_reader_missed_elem" });
        drop(d); // the last reference: the domains run what is still queued
    }
}

#[test]
fn map_free_with_barrier_all() {
    let name = "map_free_with_barrier_all";
    let tally = Tally::default();
    check(name, map_free(Barriers::All, &tally));
    tally.require(name, &["rcu_reader_saw_elem", "rcu_reader_missed_elem"]);
}

#[test]
fn map_free_with_tasks_trace_barrier_only_is_caught() {
    expect_failure(
        "map_free_with_tasks_trace_barrier_only_is_caught",
        map_free(Barriers::TasksTraceOnly, &Tally::default()),
    );
}

#[test]
fn map_free_with_rcu_barrier_only_is_caught() {
    expect_failure(
        "map_free_with_rcu_barrier_only_is_caught",
        map_free(Barriers::RcuOnly, &Tally::default()),
    );
}

// ----- the chained policy ---------------------------------------------------------------------

/// `trace_implies_rcu == false`: an element that both a non-sleepable reader (RCU section on
/// CPU 0) and a sleepable reader (Tasks-Trace section, task 1) may hold is unpublished and
/// reclaimed with `policy`; then `barrier_all()`, after which it must be freed. The free
/// asserts that no reader uses it, and loom checks it against both readers' reads. With
/// `AfterTasksTraceThenRcu` this holds; `AfterTasksTrace` alone (correct only when Tasks-Trace
/// implies RCU) must be caught through the RCU reader. Main + 2 threads.
fn chained(policy: ReclaimPolicy, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let d = Arc::new(Domains::new(1, Config::threaded(), false));
        let elem = Arc::new(Obj::default());
        let published = Arc::new(AtomicBool::new(true));
        let rcu_reader = {
            let (d, elem, published) = (d.clone(), elem.clone(), published.clone());
            thread::spawn(move || {
                let _g = d.rcu.read_lock(0);
                let seen = published.load(Ordering::Acquire);
                if seen {
                    elem.read("chained: RCU reader");
                }
                seen
            })
        };
        let tt_reader = {
            let (d, elem, published) = (d.clone(), elem.clone(), published.clone());
            thread::spawn(move || {
                let task = d.tasks_trace.register_task(1);
                let _g = d.tasks_trace.read_lock(&task);
                let seen = published.load(Ordering::Acquire);
                if seen {
                    elem.read("chained: Tasks-Trace reader");
                }
                seen
            })
        };
        published.store(false, Ordering::Release);
        let e = elem.clone();
        d.defer(policy, 1, 64, move || e.free("chained callback"));
        d.barrier_all();
        assert!(elem.is_freed(), "barrier_all() returned before the chained free ran");
        let rcu_seen = rcu_reader.join().unwrap();
        let tt_seen = tt_reader.join().unwrap();
        tally.hit(if rcu_seen { "rcu_reader_saw_elem" } else { "rcu_reader_missed_elem" });
        tally.hit(if tt_seen { "tt_reader_saw_elem" } else { "tt_reader_missed_elem" });
    }
}

#[test]
fn chained_policy_protects_both_readers() {
    let name = "chained_policy_protects_both_readers";
    let tally = Tally::default();
    check(name, chained(ReclaimPolicy::AfterTasksTraceThenRcu, &tally));
    tally.require(
        name,
        &[
            "rcu_reader_saw_elem",
            "rcu_reader_missed_elem",
            "tt_reader_saw_elem",
            "tt_reader_missed_elem",
        ],
    );
}

#[test]
fn tasks_trace_policy_without_implied_rcu_is_caught() {
    expect_failure(
        "tasks_trace_policy_without_implied_rcu_is_caught",
        chained(ReclaimPolicy::AfterTasksTrace, &Tally::default()),
    );
}

#[test]
fn rcu_policy_for_sleepable_reader_is_caught() {
    expect_failure(
        "rcu_policy_for_sleepable_reader_is_caught",
        chained(ReclaimPolicy::AfterRcu, &Tally::default()),
    );
}
