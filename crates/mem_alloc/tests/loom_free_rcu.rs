//! `free_rcu` against an RCU reader: an object freed with `MemAlloc::free_rcu` is not handed
//! out again while a reader that saw it is still inside its read-side section.
//!
//! The reader (a spawned thread on RCU CPU 1) enters a section, `rcu_dereference`s the
//! published handle and, if there was one, reads the object through the checked `get`, which
//! must succeed and show the value. The updater (main, allocator CPU 0) unpublishes the
//! handle, `free_rcu`s the object, runs the queued work (`check_free_by_rcu` queues the RCU
//! callback), waits with `rcu.barrier()` (under loom there is no callback worker: the barrier
//! runs the grace period, waiting for the reader, then `rcu_done`), runs work again and then
//! allocates on CPU 0 until it gets the same slot back, with a new generation, and writes
//! it. No violation may be recorded. The sanity mutation `Mutation::FreeRcuReusesNow` makes
//! `free_rcu` a plain `free`: loom must find an execution in which the reader's access is
//! reported (use after free, or an access to the reused object) within 100 executions (C3).
//!
//! The allocator has one CPU and 4 slots, all taken by the prefill, so the refill's
//! `alloc_bulk` finds nothing new in the slab and the freed slot is the only one that can come
//! back: first through `rcu_done` → `free_by_rcu_ttrace` → the next refill (correct), or
//! straight from `free_llist` (mutation).
//!
//! A second model, `free_rcu_cross_cpu`, frees an object of CPU 0 with `free_rcu` on CPU 1
//! (its `tgt` is CPU 0, so `rcu_done` of CPU 1's batch moves it to CPU 0's lists) while the
//! main thread runs CPU 0's refill and `rcu.barrier()`.
//!
//! Main + 1 spawned thread per model. Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2).

#![cfg(loom)]

mod loom_common;

use bpfls_mem_alloc::{Handle, Mutation};
use bpfls_rcu::Config;
use bpfls_sync::atomic::{AtomicU64, Ordering};
use bpfls_sync::{Arc, thread};
use loom_common::{Tally, World, check, expect_failure, is_benign_alloc_failure, pack, unpack};

/// What the first owner writes.
const VALUE: u64 = 0x5e1e;
/// What the owner of the reused slot writes.
const NEXT_VALUE: u64 = 0x0b1e;

/// The C3 budget: a checker that needs more executions than this to catch the mutation is
/// too weak to trust.
const MUTATION_BUDGET: usize = 100;

/// Allocates on CPU `cpu`, running the queued work after each try, until the slot of `old`
/// comes back; returns it and the other objects it got on the way.
fn alloc_until_reused(w: &World, cpu: u32, old: Handle) -> (Handle, Vec<Handle>) {
    let mut others = Vec::new();
    for _ in 0..8 {
        match w.ma.alloc(cpu) {
            Ok(h) if h.slot() == old.slot() => return (h, others),
            Ok(h) => others.push(h),
            Err(e) => assert!(is_benign_alloc_failure(&e), "alloc: {e}"),
        }
        w.ma.run_work();
    }
    panic!("slot {} never came back ({} other objects)", old.slot(), others.len());
}

fn reader_vs_free_rcu(
    mutation: Option<Mutation>,
    tally: &Tally,
) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        // A stall threshold of one poll: a grace period that had to wait for the reader files
        // a stall report, which the tally reads (it changes nothing else).
        let w = Arc::new(World::new(1, 4, Config::threaded().with_stall_polls(1), mutation));
        let h = w.ma.alloc(0).unwrap();
        w.ma.get(h, "init").unwrap().store(0, VALUE);
        // rcu_assign_pointer before the reader exists (spawn orders it).
        let published = Arc::new(AtomicU64::new(pack(h)));

        let reader = {
            let (w, published, tally) = (w.clone(), published.clone(), tally.clone());
            thread::spawn(move || {
                let _guard = w.domains.rcu.read_lock(1);
                // ORDERING: Acquire = rcu_dereference.
                match unpack(published.load(Ordering::Acquire)) {
                    Some(h) => {
                        // `get`, then `read` (which checks again after the load): a free or
                        // reuse before or during the access is a reported violation.
                        w.ma.get(h, "rcu reader").unwrap_or_else(|e| panic!("no violation: {e}"));
                        let v =
                            w.ma.read(h, "rcu reader", |o| o.load(0))
                                .unwrap_or_else(|e| panic!("no violation: {e}"));
                        assert_eq!(v, VALUE, "{h}: the value changed inside the reader's section");
                        tally.hit("reader_saw_object");
                    }
                    None => tally.hit("reader_saw_unpublished"),
                }
            })
        };

        // Unpublish (a swap rather than a store: see `loom_percpu.rs`).
        assert_eq!(published.swap(0, Ordering::AcqRel), pack(h));
        w.ma.free_rcu(0, h).unwrap();
        w.ma.run_work();
        w.domains.rcu.barrier();
        w.ma.run_work();
        let (h2, others) = alloc_until_reused(&w, 0, h);
        assert!(h2.generation() > h.generation(), "{h2} reuses {h}");
        w.ma.get(h2, "next owner").unwrap().store(0, NEXT_VALUE);
        tally.hit("slot_reused");

        reader.join().unwrap();
        w.assert_no_violation("free_rcu vs reader");
        if w.domains.rcu.stats().stalls > 0 {
            tally.hit("gp_waited_for_reader");
        }
        for o in others.into_iter().chain([h2]) {
            w.ma.free(0, o).unwrap();
        }
        w.teardown("free_rcu vs reader");
    }
}

#[test]
fn free_rcu_reader() {
    let name = "free_rcu_reader";
    let tally = Tally::default();
    check(name, reader_vs_free_rcu(None, &tally));
    tally.require(
        name,
        &["reader_saw_object", "reader_saw_unpublished", "slot_reused", "gp_waited_for_reader"],
    );
}

/// C3: with `free_rcu` reusing at once, loom must report the reader's access.
#[test]
fn free_rcu_reuses_now_is_caught() {
    let name = "free_rcu_reuses_now_is_caught";
    let n = expect_failure(
        name,
        reader_vs_free_rcu(Some(Mutation::FreeRcuReusesNow), &Tally::default()),
    );
    assert!(
        n <= MUTATION_BUDGET,
        "{name}: caught only after {n} executions (budget {MUTATION_BUDGET})"
    );
}

/// CPU 1 frees an object allocated on CPU 0 with `free_rcu` and runs its work; the main
/// thread concurrently runs the queued refill of CPU 0 and `rcu.barrier()`.
fn cross_cpu_model(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = Arc::new(World::new(2, 8, Config::threaded(), None));
        let h = w.ma.alloc(0).unwrap();
        w.ma.get(h, "init").unwrap().store(0, VALUE);
        let cpu1 = {
            let (w, tally) = (w.clone(), tally.clone());
            thread::spawn(move || {
                w.ma.free_rcu(1, h).unwrap();
                if w.ma.run_work().is_some() {
                    tally.hit("cpu1_ran_work");
                }
            })
        };
        let ran = w.ma.run_work();
        w.domains.rcu.barrier();
        cpu1.join().unwrap();
        if ran == Some((0, 1)) {
            tally.hit("main_ran_cpu1_work");
        }
        if w.domains.rcu.stats().cbs_invoked > 0 {
            tally.hit("rcu_done_before_join");
        }
        w.teardown("free_rcu cross CPU");
        let s = w.ma.slab(0).stats();
        assert_eq!(s.outstanding, 0);
    }
}

#[test]
fn free_rcu_cross_cpu() {
    let name = "free_rcu_cross_cpu";
    let tally = Tally::default();
    check(name, cross_cpu_model(&tally));
    tally.require(name, &["cpu1_ran_work", "main_ran_cpu1_work", "rcu_done_before_join"]);
}
