//! `call` and `barrier` under loom: a callback never runs while a reader that predates it is
//! inside its section; after `barrier()` returns, every callback queued before it has run
//! (also when the callback was queued by another thread, and when two threads drive
//! callbacks concurrently); every callback runs exactly once.
//!
//! Under `cfg(loom)` the threaded backend has no callback worker: callbacks run inside
//! `barrier()` (or when the domain is dropped), driven by whichever thread calls it. Each
//! model uses main + at most 2 spawned threads. Preemption bound: `LOOM_MAX_PREEMPTIONS`
//! (default 2; CI runs 2, the deep run 3); the `concurrent_barriers` models are capped at 2
//! (`TWO_SPINNERS_CAP`: both barrier callers wait for the reader at once, which loom cannot
//! explore at bound 3; see `loom_common`).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::Config;
use bpfls_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use bpfls_sync::{Arc, thread};
use loom_common::{Dom, Flavor, Pair, TWO_SPINNERS_CAP, Tally, check, check_capped};

/// A callback's effect: how many times it ran.
#[derive(Debug, Default)]
struct Ran(AtomicUsize);

impl Ran {
    fn mark(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

// ----- a callback waits for pre-existing readers ---------------------------------------------

/// A reader dereferences the published object inside a section (marking it in use); the
/// updater replaces it and queues `call(free old)`, then `barrier()`. The callback asserts
/// that no reader uses the object and poisons it (loom also checks the poisoning write
/// against the reader's read); after `barrier()` the callback has run. Main + 1 thread.
fn call_waits_for_reader(flavor: Flavor, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(flavor, Config::threaded()));
        let pair = Arc::new(Pair::default());
        let reader = {
            let (dom, pair) = (dom.clone(), pair.clone());
            thread::spawn(move || dom.read(|| pair.read("call reader")))
        };
        let old = pair.replace();
        {
            let pair = pair.clone();
            dom.domain().call(move || pair.obj(old).free("call callback"));
        }
        dom.domain().barrier();
        assert!(pair.obj(old).is_freed(), "barrier() returned before the callback ran");
        let seen = reader.join().unwrap();
        tally.hit(if seen == old { "reader_saw_old" } else { "reader_saw_new" });
    }
}

#[test]
fn call_waits_for_preexisting_reader_rcu() {
    let name = "call_waits_for_preexisting_reader_rcu";
    let tally = Tally::default();
    check(name, call_waits_for_reader(Flavor::Rcu, &tally));
    tally.require(name, &["reader_saw_old", "reader_saw_new"]);
}

#[test]
fn call_waits_for_preexisting_reader_tasks_trace() {
    let name = "call_waits_for_preexisting_reader_tasks_trace";
    let tally = Tally::default();
    check(name, call_waits_for_reader(Flavor::TasksTrace, &tally));
    tally.require(name, &["reader_saw_old", "reader_saw_new"]);
}

// ----- barrier waits for callbacks queued before it -------------------------------------------

/// Thread A queues callback 1 and then raises `queued` (Release); main queues callback 2,
/// reads `queued` (Acquire) and calls `barrier()`. Afterwards callback 2 has run, and so has
/// callback 1 whenever main saw `queued`, since its `call` happened before the barrier. After
/// the domain is dropped each callback has run exactly once. Main + 1 thread.
fn barrier_covers_earlier_calls(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(Flavor::Rcu, Config::threaded()));
        let ran = Arc::new([Ran::default(), Ran::default()]);
        let queued = Arc::new(AtomicBool::new(false));
        let a = {
            let (dom, ran, queued) = (dom.clone(), ran.clone(), queued.clone());
            thread::spawn(move || {
                dom.domain().call(move || ran[0].mark());
                queued.store(true, Ordering::Release);
            })
        };
        {
            let ran = ran.clone();
            dom.domain().call(move || ran[1].mark());
        }
        let saw_a = queued.load(Ordering::Acquire);
        dom.domain().barrier();
        assert_eq!(ran[1].count(), 1, "barrier() returned before its own thread's callback ran");
        if saw_a {
            assert_eq!(ran[0].count(), 1, "barrier() missed a callback queued before it");
        }
        tally.hit(if saw_a { "barrier_after_a" } else { "barrier_maybe_before_a" });
        a.join().unwrap();
        drop(dom); // the last reference: runs what is left
        assert_eq!(ran[0].count(), 1, "callback 1 did not run exactly once");
        assert_eq!(ran[1].count(), 1, "callback 2 did not run exactly once");
    }
}

#[test]
fn barrier_waits_for_callbacks_queued_before_it() {
    let name = "barrier_waits_for_callbacks_queued_before_it";
    let tally = Tally::default();
    check(name, barrier_covers_earlier_calls(&tally));
    tally.require(name, &["barrier_after_a", "barrier_maybe_before_a"]);
}

// ----- call in thread A, barrier in thread B ---------------------------------------------------

/// Thread A replaces the published object, queues `call(free old)` and raises `queued`;
/// main (thread B) waits for `queued` and calls `barrier()`, after which the object must be
/// freed; a reader thread dereferences the object concurrently. Main + 2 threads.
fn call_in_a_barrier_in_b(flavor: Flavor, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(flavor, Config::threaded()));
        let pair = Arc::new(Pair::default());
        let queued = Arc::new(AtomicBool::new(false));
        let reader = {
            let (dom, pair) = (dom.clone(), pair.clone());
            thread::spawn(move || dom.read(|| pair.read("call/barrier reader")))
        };
        let a = {
            let (dom, pair, queued) = (dom.clone(), pair.clone(), queued.clone());
            thread::spawn(move || {
                let old = pair.replace();
                let p = pair.clone();
                dom.domain().call(move || p.obj(old).free("call/barrier callback"));
                queued.store(true, Ordering::Release);
            })
        };
        while !queued.load(Ordering::Acquire) {
            thread::yield_now();
        }
        dom.domain().barrier();
        assert!(pair.obj(0).is_freed(), "barrier() in B missed the callback queued by A");
        let seen = reader.join().unwrap();
        a.join().unwrap();
        tally.hit(if seen == 0 { "reader_saw_old" } else { "reader_saw_new" });
    }
}

#[test]
fn call_in_one_thread_barrier_in_another_rcu() {
    let name = "call_in_one_thread_barrier_in_another_rcu";
    let tally = Tally::default();
    check(name, call_in_a_barrier_in_b(Flavor::Rcu, &tally));
    tally.require(name, &["reader_saw_old", "reader_saw_new"]);
}

#[test]
fn call_in_one_thread_barrier_in_another_tasks_trace() {
    let name = "call_in_one_thread_barrier_in_another_tasks_trace";
    let tally = Tally::default();
    check(name, call_in_a_barrier_in_b(Flavor::TasksTrace, &tally));
    tally.require(name, &["reader_saw_old", "reader_saw_new"]);
}

// ----- two threads drive callbacks concurrently ----------------------------------------------

/// Two threads each queue a callback and call `barrier()` at the same time, so both drive
/// grace periods and invoke callbacks concurrently (one may tag the other's callback, or run
/// a fresh grace period for callbacks the other tagged), while a reader dereferences the
/// object that thread A's callback frees. A replaces the object and queues its free; main
/// queues a plain callback. After its barrier each thread's own callback has run; whoever
/// runs the free, it never overlaps the reader's use; after the domain is dropped each
/// callback has run exactly once. Main + 2 threads.
fn concurrent_barriers(flavor: Flavor, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(flavor, Config::threaded()));
        let pair = Arc::new(Pair::default());
        let ran = Arc::new(Ran::default());
        let reader = {
            let (dom, pair) = (dom.clone(), pair.clone());
            thread::spawn(move || dom.read(|| pair.read("concurrent-barrier reader")))
        };
        let a = {
            let (dom, pair, ran) = (dom.clone(), pair.clone(), ran.clone());
            thread::spawn(move || {
                let old = pair.replace();
                let p = pair.clone();
                dom.domain().call(move || p.obj(old).free("concurrent-barrier callback"));
                dom.domain().barrier();
                assert!(pair.obj(old).is_freed(), "barrier() returned before its callback ran");
                ran.count()
            })
        };
        {
            let ran = ran.clone();
            dom.domain().call(move || ran.mark());
        }
        dom.domain().barrier();
        assert_eq!(ran.count(), 1, "barrier() returned before its callback ran");
        let main_saw_free = pair.obj(0).is_freed();
        let a_saw_mark = a.join().unwrap();
        reader.join().unwrap();
        tally.hit(if main_saw_free {
            "main_barrier_saw_a_free"
        } else {
            "main_barrier_before_a_free"
        });
        tally.hit(if a_saw_mark == 1 {
            "a_barrier_saw_main_cb"
        } else {
            "a_barrier_before_main_cb"
        });
        drop(dom);
        assert_eq!(ran.count(), 1, "main's callback did not run exactly once");
        assert!(pair.obj(0).is_freed(), "A's callback did not run");
    }
}

#[test]
fn concurrent_barriers_rcu() {
    let name = "concurrent_barriers_rcu";
    let tally = Tally::default();
    check_capped(name, Some(TWO_SPINNERS_CAP), concurrent_barriers(Flavor::Rcu, &tally));
    tally.require(
        name,
        &[
            "main_barrier_saw_a_free",
            "main_barrier_before_a_free",
            "a_barrier_saw_main_cb",
            "a_barrier_before_main_cb",
        ],
    );
}

#[test]
fn concurrent_barriers_tasks_trace() {
    let name = "concurrent_barriers_tasks_trace";
    let tally = Tally::default();
    check_capped(name, Some(TWO_SPINNERS_CAP), concurrent_barriers(Flavor::TasksTrace, &tally));
    tally.require(name, &["main_barrier_saw_a_free", "main_barrier_before_a_free"]);
}
