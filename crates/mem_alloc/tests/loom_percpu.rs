//! Per-CPU caches under concurrency: two logical CPUs (two threads) allocate, write, read back
//! and free while a refill work item runs on the main thread (the stepped allocator has no
//! work thread: work runs only in `run_work()`, so "refill in flight" means the main thread
//! is inside `refill` while the others use the caches).
//!
//! Each model ends, after the joins, with the quiescent teardown of `World::teardown`: no
//! violation, `check_lists()` empty (I14: `free_cnt` matches the list, no object on two
//! lists, every listed object in the state its list implies), `destroy` leaks nothing and the
//! slab has every object back.
//!
//! The allocator is tiny: one 16-byte unit class, 2 CPUs, 10 slots (8 taken by the prefill,
//! so the refill's `alloc_bulk` gets the last 2 and then fails on capacity). The first
//! allocation on a CPU drops `free_cnt` below the low watermark and queues that CPU's refill.
//!
//! Main + 2 spawned threads per model. Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2;
//! CI runs 2, the deep run 3); `percpu_alloc_free` is capped at 2 (see there).

#![cfg(loom)]

mod loom_common;

use bpfls_mem_alloc::{Bytes, Handle, MemAlloc};
use bpfls_rcu::Config;
use bpfls_sync::atomic::{AtomicU64, Ordering};
use bpfls_sync::{Arc, thread};
use loom_common::{
    TWO_SPINNERS_CAP, Tally, World, check, check_capped, is_benign_alloc_failure, pack, unpack,
};

/// Slots: the prefill's 2 × 4 plus 2 for the refill.
const CAPACITY: u32 = 10;

fn world() -> Arc<World> {
    Arc::new(World::new(2, CAPACITY, Config::threaded(), None))
}

/// Allocates on `cpu`; `None` (tallied) when the cache is busy or empty, which
/// `bpf_mem_cache_alloc` may legally answer with `NULL`.
fn alloc(ma: &MemAlloc<Bytes>, cpu: u32, tally: &Tally) -> Option<Handle> {
    match ma.alloc(cpu) {
        Ok(h) => Some(h),
        Err(e) => {
            assert!(is_benign_alloc_failure(&e), "alloc on CPU {cpu}: {e}");
            tally.hit("alloc_returned_null");
            None
        }
    }
}

/// The owner's use of a fresh object: write `val`, read it back through a new checked access
/// (nobody else may have written it in between: no other owner, no poisoning).
fn write_and_check(ma: &MemAlloc<Bytes>, h: Handle, val: u64) {
    ma.get(h, "owner write").unwrap().store(0, val);
    ma.get(h, "owner write").unwrap().store(1, !val);
    let got = ma.read(h, "owner read", |o| (o.load(0), o.load(1))).unwrap();
    assert_eq!(got, (val, !val), "{h}: the owner's value changed under it");
}

/// Runs one queued work item (a refill, since nothing goes above the high watermark) and
/// tallies whether there was one yet.
fn refill_in_flight(w: &World, tally: &Tally) {
    match w.ma.run_work() {
        Some((_, cpu)) => tally.hit(if cpu == 0 { "refill_cpu0_ran" } else { "refill_cpu1_ran" }),
        None => tally.hit("refill_not_queued_yet"),
    }
}

/// Tallies what the concurrent phase left behind.
fn tally_caches(w: &World, tally: &Tally) {
    for cpu in 0..2 {
        let s = w.ma.cache_stats(0, cpu);
        if s.free_llist_extra > 0 {
            tally.hit("free_went_to_free_llist_extra");
        }
    }
}

/// Two CPUs each allocate, write, read back and free; CPU 1 frees its object on CPU 0
/// (cross-CPU free, so CPU 0's cache sees a second user: the nested path), while the main
/// thread runs a refill.
fn alloc_free_model(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = world();
        let threads: Vec<_> = [(0u32, 0u32, 0xa0), (1, 0, 0xb1)]
            .into_iter()
            .map(|(cpu, free_cpu, val)| {
                let (w, tally) = (w.clone(), tally.clone());
                thread::spawn(move || {
                    if let Some(h) = alloc(&w.ma, cpu, &tally) {
                        write_and_check(&w.ma, h, val);
                        w.ma.free(free_cpu, h).unwrap();
                        tally.hit(if cpu == free_cpu {
                            "freed_locally"
                        } else {
                            "freed_cross_cpu"
                        });
                        // The freed handle is dead for good, whoever gets the slot next.
                        assert!(!w.ma.is_live(h), "{h} still live after its free");
                    }
                })
            })
            .collect();
        refill_in_flight(&w, &tally);
        for t in threads {
            t.join().unwrap();
        }
        tally_caches(&w, &tally);
        w.teardown("percpu alloc/free");
    }
}

/// Capped at bound 2: three threads can meet on CPU 0's cache (both workers and the refill),
/// so two of them can spin on its `SpinLock` while the third holds it. Each extra preemption
/// lets a spinner take more turns: bound 2 explores 221 executions, bound 3 more than 400 000
/// (still running after 90 s), the spin-wait blow-up `TWO_SPINNERS_CAP` describes.
#[test]
fn percpu_alloc_free() {
    let name = "percpu_alloc_free";
    let tally = Tally::default();
    check_capped(name, Some(TWO_SPINNERS_CAP), alloc_free_model(&tally));
    tally.require(
        name,
        &[
            "freed_locally",
            "freed_cross_cpu",
            "refill_cpu0_ran",
            "refill_cpu1_ran",
            "refill_not_queued_yet",
            "alloc_returned_null",
            "free_went_to_free_llist_extra",
        ],
    );
}

/// CPU 0 allocates an object, fills it and publishes its handle; CPU 1 allocates and frees its
/// own object, then takes CPU 0's if it is still published and frees it on CPU 1 (an object
/// of another CPU's cache: its hint names CPU 0); otherwise CPU 0 takes it back and frees it
/// itself. Ownership passes through one `swap`, so exactly one thread frees. The main thread
/// runs a refill meanwhile.
fn remote_free_model(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = world();
        let published = Arc::new(AtomicU64::new(0));
        let cpu0 = {
            let (w, published, tally) = (w.clone(), published.clone(), tally.clone());
            thread::spawn(move || {
                let Some(h) = alloc(&w.ma, 0, &tally) else { return };
                write_and_check(&w.ma, h, 0xa0);
                // ORDERING: Release publishes the object's contents with the handle. A swap,
                // not a store: loom 0.7.3 leaves a plain store unordered (in modification
                // order) with a concurrent RMW that ran before it, so a later `swap` could read
                // past it, an outcome C11 forbids (a false leak here). With RMWs only, every
                // write of `published` reads the one before it.
                let prev = published.swap(pack(h), Ordering::Release);
                assert_eq!(prev, 0, "nothing else publishes");
                // ORDERING: AcqRel: exactly one of the two swaps gets the handle.
                if let Some(h) = unpack(published.swap(0, Ordering::AcqRel)) {
                    w.ma.free(0, h).unwrap();
                    tally.hit("owner_freed_own_object");
                }
            })
        };
        let cpu1 = {
            let (w, published, tally) = (w.clone(), published.clone(), tally.clone());
            thread::spawn(move || {
                if let Some(h) = alloc(&w.ma, 1, &tally) {
                    write_and_check(&w.ma, h, 0xb1);
                    w.ma.free(1, h).unwrap();
                }
                // ORDERING: Acquire pairs with the publishing Release store.
                if let Some(h) = unpack(published.swap(0, Ordering::AcqRel)) {
                    let got = w.ma.read(h, "remote read", |o| (o.load(0), o.load(1))).unwrap();
                    assert_eq!(got, (0xa0, !0xa0), "{h}: published contents not visible");
                    w.ma.free(1, h).unwrap();
                    tally.hit("cpu1_freed_cpu0_object");
                }
            })
        };
        refill_in_flight(&w, &tally);
        cpu0.join().unwrap();
        cpu1.join().unwrap();
        w.teardown("percpu remote free");
    }
}

#[test]
fn percpu_remote_free() {
    let name = "percpu_remote_free";
    let tally = Tally::default();
    check(name, remote_free_model(&tally));
    tally.require(
        name,
        &[
            "owner_freed_own_object",
            "cpu1_freed_cpu0_object",
            "refill_cpu0_ran",
            "refill_cpu1_ran",
            "refill_not_queued_yet",
        ],
    );
}
