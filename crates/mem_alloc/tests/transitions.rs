//! Unit tests of every list transition of the `bpf_mem_alloc` model (kernel-semantics §5,
//! invariants I1/I3/I14), driven by hand: a manual-work allocator (`without_work_thread()`) on
//! stepped RCU domains, so each refill, trim and grace period happens exactly when the test
//! says. Covers prefill, LIFO alloc and the low-watermark refill, cross-CPU free and immediate
//! reuse, the high-watermark trim through the Tasks-Trace (+RCU) path to the slab, the
//! `free_rcu` path and its recycling by `alloc_bulk`, the watermark table, the size-class
//! mapping, charge accounting, destroy, and re-entrancy (`active`, `free_llist_extra`).
#![cfg(not(any(loom, shuttle)))]

use bpfls_mem_alloc::{
    Account, AllocError, Bytes, CacheStats, HEADER, Handle, MemAlloc, MemAllocConfig, MemError,
    SIZE_CLASSES, UnitSize, Violations, Watermarks, size_class, watermarks,
};
use bpfls_rcu::{Config, Domains, Step};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// `Fixed(56)`: 64-byte units (≤ 256: low 32, high 96, batch 48, prefill 4).
const SMALL: usize = 56;
const SMALL_UNIT: u64 = 64;

struct Env {
    domains: Arc<Domains>,
    ma: MemAlloc<Bytes>,
    acct: Account,
    v: Violations,
    classes: u8,
}

fn env(cpus: u32, unit: UnitSize, trace_implies_rcu: bool) -> Env {
    env_cfg(MemAllocConfig::new("trans", cpus, unit), trace_implies_rcu)
}

fn env_cfg(cfg: MemAllocConfig, trace_implies_rcu: bool) -> Env {
    let domains = Arc::new(Domains::new(cfg.cpus, Config::stepped(), trace_implies_rcu));
    let acct = Account::unlimited("memcg");
    let v = Violations::new();
    let classes = if cfg.unit == UnitSize::Classes { SIZE_CLASSES.len() as u8 } else { 1 };
    let ma =
        MemAlloc::new(cfg.without_work_thread(), domains.clone(), acct.clone(), v.clone()).unwrap();
    Env { domains, ma, acct, v, classes }
}

impl Env {
    fn stats(&self, cpu: u32) -> CacheStats {
        self.ma.cache_stats(0, cpu)
    }

    fn outstanding(&self) -> u64 {
        self.ma.slab(0).stats().outstanding
    }

    fn slab_allocs(&self) -> u64 {
        self.ma.slab(0).stats().slab_allocs
    }

    /// I14 and charge balance at a quiescent point, plus no violation so far.
    fn check(&self) {
        assert_eq!(self.ma.check_lists(), Vec::<String>::new());
        let mut want = 0;
        for c in 0..self.classes {
            want += self.ma.unit_size(c) as u64 * self.ma.slab(c).stats().outstanding;
            for cpu in 0..self.ma.cpus() {
                let s = self.ma.cache_stats(c, cpu);
                assert_eq!(s.free_cnt, s.free_llist, "class {c} cpu {cpu}");
            }
        }
        assert_eq!(self.acct.charged(), want);
        assert_eq!(self.v.snapshot(), vec![]);
    }

    /// Allocates `n` objects on `cpu`, running queued work whenever the list runs dry.
    fn alloc_n(&self, cpu: u32, n: usize) -> Vec<Handle> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.ma.alloc(cpu) {
                Ok(h) => out.push(h),
                Err(MemError::Alloc(AllocError::Empty)) => {
                    assert!(self.ma.run_all_work() > 0, "empty list and no work queued");
                }
                Err(e) => panic!("alloc failed: {e}"),
            }
        }
        out
    }
}

#[test]
fn prefill_is_four_objects_per_cpu_for_small_units() {
    let e = env(3, UnitSize::Fixed(SMALL), true);
    for cpu in 0..3 {
        let s = e.stats(cpu);
        assert_eq!(s.free_cnt, 4, "cpu {cpu}");
        assert_eq!(s.free_llist, 4, "cpu {cpu}");
        assert_eq!(s.free_llist_extra + s.free_by_rcu + s.waiting_for_gp, 0);
        assert_eq!(s.free_by_rcu_ttrace + s.waiting_for_gp_ttrace, 0);
        assert!(!s.call_rcu_in_progress && !s.call_rcu_ttrace_in_progress);
        assert_eq!(s.watermarks, Watermarks { low: 32, high: 96, batch: 48, prefill: 4 });
    }
    assert_eq!(e.ma.unit_size(0), 64);
    assert_eq!(e.outstanding(), 12);
    assert_eq!(e.acct.charged(), 12 * SMALL_UNIT);
    assert_eq!(e.ma.pending_work(), 0, "prefill queues no work");
    e.check();
}

#[test]
fn prefill_is_one_object_per_cpu_above_256_bytes() {
    for (payload, unit, wm) in [
        (249, 257, watermarks(257)),
        (1016, 1024, Watermarks { low: 8, high: 24, batch: 12, prefill: 1 }),
    ] {
        let e = env(2, UnitSize::Fixed(payload), true);
        assert_eq!(e.ma.unit_size(0), unit);
        for cpu in 0..2 {
            assert_eq!(e.stats(cpu).free_cnt, 1);
            assert_eq!(e.stats(cpu).watermarks, wm);
        }
        assert_eq!(e.outstanding(), 2);
        assert_eq!(e.acct.charged(), 2 * unit as u64);
        e.check();
    }
    // 256 exactly is still "small".
    let e = env(1, UnitSize::Fixed(248), true);
    assert_eq!(e.stats(0).free_cnt, 4);
}

#[test]
fn prefill_in_size_class_mode() {
    let e = env(2, UnitSize::Classes, true);
    let mut charged = 0;
    for (c, &unit) in SIZE_CLASSES.iter().enumerate() {
        let want = if unit <= 256 { 4 } else { 1 };
        assert_eq!(e.ma.unit_size(c as u8), unit);
        for cpu in 0..2 {
            let s = e.ma.cache_stats(c as u8, cpu);
            assert_eq!(s.free_cnt, want, "class {c} cpu {cpu}");
            assert_eq!(s.watermarks, watermarks(unit));
        }
        assert_eq!(e.ma.slab(c as u8).stats().outstanding, 2 * want as u64);
        charged += 2 * want as u64 * unit as u64;
    }
    assert_eq!(e.acct.charged(), charged);
    e.check();
}

#[test]
fn alloc_pops_lifo_and_queues_exactly_one_refill() {
    let e = env(2, UnitSize::Fixed(SMALL), true);
    // Prefill took slots 0..=3 for CPU 0 and 4..=7 for CPU 1, in order; LIFO pops the last.
    let a = e.ma.alloc(0).unwrap();
    assert_eq!(a, Handle::new(0, 3, 1));
    assert_eq!(e.stats(0).free_cnt, 3);
    assert_eq!(e.ma.pending_work(), 1, "3 < low queues the refill");
    let b = e.ma.alloc(0).unwrap();
    assert_eq!(b, Handle::new(0, 2, 1));
    assert_eq!(e.stats(0).free_cnt, 2);
    assert_eq!(e.ma.pending_work(), 1, "no second work item while one is pending");
    assert_eq!(e.stats(1).free_cnt, 4, "CPU 1 untouched");
    e.check();

    assert_eq!(e.ma.run_work(), Some((0, 0)));
    assert_eq!(e.ma.run_work(), None);
    assert_eq!(e.stats(0).free_cnt, 2 + 48, "refill adds one batch");
    assert_eq!(e.outstanding(), 8 + 48);
    assert_eq!(e.slab_allocs(), 8 + 48);
    e.check();

    // The batch came from slots 8..=55, pushed in order: the newest is popped first.
    assert_eq!(e.ma.alloc(0).unwrap(), Handle::new(0, 55, 1));
    // 49 on the list now; allocating down to exactly `low` (32) queues nothing...
    let mut held = e.alloc_n(0, 17);
    assert_eq!(e.stats(0).free_cnt, 32);
    assert_eq!(e.ma.pending_work(), 0);
    // ...and one below it queues exactly one item.
    held.extend(e.alloc_n(0, 1));
    assert_eq!(e.stats(0).free_cnt, 31);
    assert_eq!(e.ma.pending_work(), 1);
    held.extend(e.alloc_n(0, 5));
    assert_eq!(e.ma.pending_work(), 1);
    assert_eq!(e.ma.run_all_work(), 1);
    assert_eq!(e.stats(0).free_cnt, 26 + 48);
    for h in [a, b].into_iter().chain(held) {
        assert!(e.ma.is_live(h));
    }
    e.check();
}

#[test]
fn alloc_on_an_empty_list_fails_until_the_work_runs() {
    let e = env(1, UnitSize::Fixed(SMALL), true);
    let held: Vec<_> = (0..4).map(|_| e.ma.alloc(0).unwrap()).collect();
    assert_eq!(e.ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(e.ma.pending_work(), 1);
    assert_eq!(e.ma.run_all_work(), 1);
    assert_eq!(e.stats(0).free_cnt, 48);
    assert!(e.ma.alloc(0).is_ok());
    assert_eq!(held.len(), 4);
    e.check();
}

#[test]
fn free_goes_to_the_current_cpu_and_is_reused_at_once() {
    let e = env(2, UnitSize::Fixed(SMALL), true);
    let h = e.ma.alloc(0).unwrap();
    assert_eq!(h, Handle::new(0, 3, 1));
    e.ma.get(h, "write").unwrap().store(0, 0xdead);
    e.ma.free(1, h).unwrap();
    assert!(!e.ma.is_live(h));
    assert_eq!(e.stats(0).free_cnt, 3, "not back on the allocating CPU");
    assert_eq!(e.stats(1).free_cnt, 5, "on the freeing CPU");
    assert_eq!(e.ma.slab(0).ledger_of(h).unwrap().free.map(|f| f.1), Some("mem_free"));
    e.check();

    // LIFO: the next alloc on CPU 1 returns the same slot with the next generation, poisoned.
    let h2 = e.ma.alloc(1).unwrap();
    assert_eq!(h2, Handle::new(0, 3, 2));
    assert_eq!(e.ma.get(h2, "read").unwrap().load(0), bpfls_mem_alloc::slab::POISON);
    assert_eq!(e.stats(1).free_cnt, 4);
    e.ma.free(1, h2).unwrap();
    assert_eq!(e.ma.alloc(1).unwrap(), Handle::new(0, 3, 3));
    assert_eq!(e.outstanding(), 8, "immediate reuse never touches the slab");
    e.check();
}

/// Allocates `n` (≥ 93) objects on CPU 0 and frees the first 93 on CPU 1, whose list (4
/// prefilled) then holds 97 > high = 96; returns the other `n - 93`.
fn overfill_cpu1(e: &Env, n: usize) -> Vec<Handle> {
    let mut hs = e.alloc_n(0, n);
    e.ma.run_all_work();
    assert_eq!(e.ma.pending_work(), 0);
    let rest = hs.split_off(93);
    for (i, h) in hs.into_iter().enumerate() {
        e.ma.free(1, h).unwrap();
        let want = usize::from(i == 92);
        assert_eq!(e.ma.pending_work(), want, "trim queued only above high (free {i})");
    }
    assert_eq!(e.stats(1).free_cnt, 97);
    rest
}

#[test]
fn trim_above_high_goes_through_tasks_trace_to_the_slab() {
    for trace_implies_rcu in [true, false] {
        let e = env(2, UnitSize::Fixed(SMALL), trace_implies_rcu);
        let _rest = overfill_cpu1(&e, 100);
        let out = e.outstanding();
        let charged = e.acct.charged();
        e.check();

        assert_eq!(e.ma.run_work(), Some((0, 1)));
        let s1 = e.stats(1);
        assert_eq!(s1.free_cnt, (32 + 96) / 2);
        assert_eq!(s1.free_by_rcu_ttrace + s1.waiting_for_gp_ttrace, 0);
        // The excess went to the allocating CPU's cache (the hint/`tgt`), behind a GP.
        let s0 = e.stats(0);
        assert_eq!(s0.free_by_rcu_ttrace, 0);
        assert_eq!(s0.waiting_for_gp_ttrace, 97 - 64);
        assert!(s0.call_rcu_ttrace_in_progress);
        assert_eq!(e.outstanding(), out, "nothing reaches the slab before the GP");
        e.check();

        // A normal RCU grace period alone does nothing (with `trace_implies_rcu` it is the
        // one the Tasks-Trace grace period implies, so it must have elapsed too).
        e.domains.rcu.synchronize();
        assert_eq!(e.domains.rcu.advance_until_quiet(), Step::Idle);
        assert_eq!(e.stats(0).waiting_for_gp_ttrace, 33);
        assert_eq!(e.outstanding(), out);

        assert_eq!(e.domains.tasks_trace.advance_until_quiet(), Step::Idle);
        if !trace_implies_rcu {
            // Chained: the Tasks-Trace callback only queued an RCU one.
            assert_eq!(e.stats(0).waiting_for_gp_ttrace, 33);
            assert!(e.stats(0).call_rcu_ttrace_in_progress);
            assert_eq!(e.outstanding(), out);
            assert_eq!(e.domains.rcu.stats().cbs_pending, 1);
            assert_eq!(e.domains.rcu.advance_until_quiet(), Step::Idle);
        }
        let s0 = e.stats(0);
        assert_eq!(s0.waiting_for_gp_ttrace, 0);
        assert!(!s0.call_rcu_ttrace_in_progress);
        assert_eq!(e.outstanding(), out - 33);
        assert_eq!(e.acct.charged(), charged - 33 * SMALL_UNIT);
        assert_eq!(e.ma.slab(0).stats().slab_frees, 33);
        e.check();
    }
}

#[test]
fn free_rcu_waits_for_a_grace_period_then_becomes_recyclable() {
    for trace_implies_rcu in [true, false] {
        let e = env(2, UnitSize::Fixed(SMALL), trace_implies_rcu);
        let h = e.ma.alloc(0).unwrap();
        e.ma.run_all_work();
        let out = e.outstanding();
        e.ma.free_rcu(1, h).unwrap();
        assert!(e.ma.is_live(h), "readable until the grace period ends");
        let s1 = e.stats(1);
        assert_eq!((s1.free_by_rcu, s1.waiting_for_gp, s1.free_cnt), (1, 0, 4));
        assert!(!s1.call_rcu_in_progress);
        assert_eq!(e.ma.pending_work(), 1);
        e.check();

        assert_eq!(e.ma.run_work(), Some((0, 1)));
        let s1 = e.stats(1);
        assert_eq!((s1.free_by_rcu, s1.waiting_for_gp), (0, 1));
        assert!(s1.call_rcu_in_progress);
        assert!(e.ma.is_live(h));
        // The refill on CPU 1 (4 < low) also ran.
        assert_eq!(s1.free_cnt, 4 + 48);
        let out = out + 48;
        assert_eq!(e.outstanding(), out);
        e.check();

        // A Tasks-Trace GP does not end an RCU wait.
        e.domains.tasks_trace.advance_until_quiet();
        assert!(e.ma.is_live(h));
        assert_eq!(e.stats(1).waiting_for_gp, 1);

        assert_eq!(e.domains.rcu.advance_until_quiet(), Step::Idle);
        assert!(!e.ma.is_live(h), "reusable after the RCU GP");
        let s1 = e.stats(1);
        assert_eq!((s1.waiting_for_gp, s1.call_rcu_in_progress), (0, false));
        // To the allocating CPU's cache, and straight on to the Tasks-Trace wait.
        let s0 = e.stats(0);
        assert_eq!((s0.free_by_rcu_ttrace, s0.waiting_for_gp_ttrace), (0, 1));
        assert!(s0.call_rcu_ttrace_in_progress);
        assert_eq!(e.outstanding(), out);
        e.check();

        e.domains.barrier_all();
        if !trace_implies_rcu {
            e.domains.rcu.barrier();
        }
        let s0 = e.stats(0);
        assert_eq!((s0.waiting_for_gp_ttrace, s0.call_rcu_ttrace_in_progress), (0, false));
        assert_eq!(e.outstanding(), out - 1);
        assert!(e.ma.slab(0).ledger_of(h).unwrap().released);
        e.check();
    }
}

#[test]
fn refill_recycles_free_by_rcu_ttrace_then_waiting_for_gp_ttrace_before_the_slab() {
    for trace_implies_rcu in [true, false] {
        let e = env(2, UnitSize::Fixed(SMALL), trace_implies_rcu);
        // 33 trimmed objects wait for a Tasks-Trace GP on CPU 0.
        let mut rest = overfill_cpu1(&e, 130);
        e.ma.run_all_work();
        assert_eq!(e.stats(0).waiting_for_gp_ttrace, 33);
        assert!(e.stats(0).call_rcu_ttrace_in_progress);
        // 30 more objects (allocated on CPU 0) go through free_rcu on CPU 1 and an RCU GP;
        // with a Tasks-Trace callback in flight they stay on CPU 0's free_by_rcu_ttrace.
        let victims = rest.split_off(7);
        for &h in &victims {
            e.ma.free_rcu(1, h).unwrap();
        }
        assert_eq!(e.stats(1).free_by_rcu, 30);
        e.ma.run_all_work();
        assert_eq!(e.stats(1).waiting_for_gp, 30);
        assert_eq!(e.domains.rcu.advance_until_quiet(), Step::Idle);
        let s0 = e.stats(0);
        assert_eq!((s0.free_by_rcu_ttrace, s0.waiting_for_gp_ttrace), (30, 33));
        e.check();

        // Drain CPU 0's free list below low and refill: 48 = 30 + 18 recycled, none new.
        let allocs_before = e.slab_allocs();
        let out = e.outstanding();
        let fc = e.stats(0).free_cnt;
        assert!(fc >= 32, "{fc}");
        let drained = e.alloc_n(0, fc - 31);
        assert_eq!(e.ma.pending_work(), 1);
        assert_eq!(e.ma.run_all_work(), 1);
        let s0 = e.stats(0);
        assert_eq!(s0.free_cnt, 31 + 48);
        assert_eq!((s0.free_by_rcu_ttrace, s0.waiting_for_gp_ttrace), (0, 15));
        assert_eq!(e.slab_allocs(), allocs_before, "recycled objects sufficed");
        assert_eq!(e.outstanding(), out);
        e.check();

        // Their slots come out of CPU 0's list with a new generation.
        let victim_slots: std::collections::HashSet<u32> =
            victims.iter().map(|h| h.slot()).collect();
        let reused = e.alloc_n(0, 48);
        let hits = reused.iter().filter(|h| victim_slots.contains(&h.slot())).count();
        assert_eq!(hits, 30);
        for h in &reused {
            if let Some(old) = victims.iter().find(|v| v.slot() == h.slot()) {
                assert_eq!(h.generation(), old.generation() + 1);
            }
        }
        e.check();

        // The 15 still waiting reach the slab after the GP; the recycled ones never do.
        e.domains.barrier_all();
        e.domains.rcu.barrier();
        assert_eq!(e.stats(0).waiting_for_gp_ttrace, 0);
        assert_eq!(e.outstanding(), out - 15);
        e.check();

        // Teardown: everything back, nothing leaked.
        for h in rest.into_iter().chain(drained).chain(reused) {
            e.ma.free(0, h).unwrap();
        }
        let r = e.ma.destroy().unwrap();
        assert_eq!(r.leaked, 0);
        assert_eq!(e.acct.charged(), 0);
        assert_eq!(e.outstanding(), 0);
        assert!(e.v.is_empty(), "{:?}", e.v.snapshot());
    }
}

#[test]
fn free_rcu_while_an_rcu_callback_is_in_flight_waits_for_the_next_refill() {
    let e = env(1, UnitSize::Fixed(SMALL), true);
    let hs = e.alloc_n(0, 3);
    e.ma.run_all_work();
    e.ma.free_rcu(0, hs[0]).unwrap();
    e.ma.run_all_work();
    assert!(e.stats(0).call_rcu_in_progress);
    // A second free_rcu raises no work: a callback is already in flight.
    e.ma.free_rcu(0, hs[1]).unwrap();
    assert_eq!(e.ma.pending_work(), 0);
    let s = e.stats(0);
    assert_eq!((s.free_by_rcu, s.waiting_for_gp), (1, 1));
    e.domains.rcu.advance_until_quiet();
    assert!(!e.ma.is_live(hs[0]));
    assert!(e.ma.is_live(hs[1]), "its batch has not been handed to RCU yet");
    // The next free_rcu (no callback in flight) raises the work that sends both.
    e.ma.free_rcu(0, hs[2]).unwrap();
    assert_eq!(e.ma.pending_work(), 1);
    e.ma.run_all_work();
    assert_eq!(e.stats(0).waiting_for_gp, 2);
    e.domains.rcu.advance_until_quiet();
    assert!(!e.ma.is_live(hs[1]) && !e.ma.is_live(hs[2]));
    e.check();
}

#[test]
fn watermark_table() {
    let small = Watermarks { low: 32, high: 96, batch: 48, prefill: 4 };
    for unit in [1, 16, 32, 64, 96, 128, 192, 256] {
        assert_eq!(watermarks(unit), small, "unit {unit}");
    }
    let table = [
        (512, 16, 48, 24),
        (1024, 8, 24, 12),
        (2048, 4, 12, 6),
        (4096, 2, 6, 3),
        (8192, 1, 3, 1),
        (1 << 20, 1, 3, 1),
    ];
    for (unit, low, high, batch) in table {
        assert_eq!(watermarks(unit), Watermarks { low, high, batch, prefill: 1 }, "unit {unit}");
    }
    // The general formula in between.
    assert_eq!(watermarks(257), Watermarks { low: 31, high: 95, batch: 48, prefill: 1 });
    assert_eq!(watermarks(3000), Watermarks { low: 2, high: 8, batch: 3, prefill: 1 });
}

/// The kernel's `size_index[24]` table and `bpf_mem_cache_idx()`, written out independently.
fn kernel_cache_idx(size: usize) -> Option<usize> {
    const SIZE_INDEX: [u8; 24] =
        [3, 3, 4, 4, 5, 5, 5, 5, 1, 1, 1, 1, 6, 6, 6, 6, 2, 2, 2, 2, 2, 2, 2, 2];
    fn fls(x: u32) -> u32 {
        if x == 0 { 0 } else { 32 - x.leading_zeros() }
    }
    if size == 0 || size > 4096 {
        return None;
    }
    if size <= 192 {
        return Some(SIZE_INDEX[(size - 1) / 8] as usize - 1);
    }
    Some(fls((size - 1) as u32) as usize - 2)
}

#[test]
fn size_class_matches_the_kernel_table() {
    assert_eq!(size_class(0), None);
    assert_eq!(size_class(4097), None);
    assert_eq!(size_class(usize::MAX), None);
    for n in 1..=4096 {
        let c = size_class(n);
        assert_eq!(c, kernel_cache_idx(n), "n = {n}");
        let c = c.unwrap();
        assert!(n <= SIZE_CLASSES[c], "n = {n} does not fit class {c}");
        // Smallest fitting class: no smaller unit would hold it.
        assert!(SIZE_CLASSES.iter().all(|&u| u >= SIZE_CLASSES[c] || u < n), "n = {n}");
    }
    let spot = [(1, 2), (16, 2), (17, 3), (64, 4), (65, 0), (96, 0), (97, 5), (128, 5)];
    for (n, c) in spot.into_iter().chain([(129, 1), (192, 1), (193, 6), (4096, 10)]) {
        assert_eq!(size_class(n), Some(c), "n = {n}");
    }
}

#[test]
fn alloc_size_serves_each_request_from_its_class() {
    let e = env(1, UnitSize::Classes, true);
    for size in [1, 8, 9, 56, 57, 88, 89, 120, 184, 185, 248, 249, 504, 1016, 2040, 4088] {
        let h = e.ma.alloc_size(0, size).unwrap();
        let c = size_class(size + HEADER).unwrap();
        assert_eq!(h.class() as usize, c, "size {size}");
        assert!(size + HEADER <= e.ma.unit_size(h.class()));
        assert!(e.ma.get(h, "read").unwrap().words() * 8 >= size + HEADER);
        e.ma.free(0, h).unwrap();
    }
    e.ma.run_all_work();
    e.check();
}

#[test]
fn charge_matches_outstanding_through_a_mixed_workload() {
    let e = env(2, UnitSize::Fixed(SMALL), false);
    e.check();
    let hs = e.alloc_n(0, 120);
    e.check();
    for (i, h) in hs.into_iter().enumerate() {
        match i % 3 {
            0 => e.ma.free(1, h).unwrap(),
            1 => e.ma.free_rcu(0, h).unwrap(),
            _ => e.ma.raw_free(h).unwrap(),
        }
        if i % 10 == 0 {
            e.check();
        }
    }
    e.ma.run_all_work();
    e.check();
    // RCU first (free_rcu batches), then Tasks-Trace, then the chained RCU callbacks.
    e.domains.rcu.barrier();
    e.check();
    e.domains.barrier_all();
    e.check();
    assert_eq!(e.acct.charged(), e.outstanding() * SMALL_UNIT);
    // 8 prefilled + 3 refills for the 120 allocs + 1 after the frees = 200 taken; 40 raw-freed
    // at once and 40 free_rcu'd objects after RCU + Tasks-Trace (+RCU) GPs came back.
    let st = e.ma.slab(0).stats();
    assert_eq!((st.slab_allocs, st.slab_frees, st.outstanding), (200, 80, 120));
    assert_eq!(e.acct.charged(), 120 * SMALL_UNIT);
    assert_eq!(e.acct.peak(), 160 * SMALL_UNIT);
}

#[test]
fn destroy_without_callbacks_in_flight() {
    let e = env(2, UnitSize::Fixed(SMALL), true);
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(0, h).unwrap();
    assert_eq!(e.ma.pending_work(), 1);
    let r = e.ma.destroy().unwrap();
    assert_eq!(r.drained, 8);
    assert!(!r.waited_for_callbacks);
    assert_eq!(r.leaked, 0);
    assert_eq!(e.ma.pending_work(), 0, "queued work is dropped");
    assert_eq!(e.outstanding(), 0);
    assert_eq!(e.acct.charged(), 0);
    for cpu in 0..2 {
        assert_eq!(e.stats(cpu).free_cnt, 0);
    }
    assert!(e.v.is_empty());
}

#[test]
fn destroy_with_callbacks_in_flight_waits_for_them() {
    for trace_implies_rcu in [true, false] {
        let e = env(2, UnitSize::Fixed(SMALL), trace_implies_rcu);
        // An RCU callback in flight on CPU 0 ...
        let h = e.ma.alloc(0).unwrap();
        e.ma.free_rcu(0, h).unwrap();
        e.ma.run_all_work();
        assert!(e.stats(0).call_rcu_in_progress);
        // ... and a Tasks-Trace one on CPU 0 from a trim on CPU 1.
        let rest = overfill_cpu1(&e, 100);
        e.ma.run_all_work();
        assert!(e.stats(0).call_rcu_ttrace_in_progress);
        for h in rest {
            e.ma.free(0, h).unwrap();
        }
        e.ma.run_all_work();
        let listed: usize = (0..2)
            .map(|cpu| {
                let s = e.stats(cpu);
                s.free_llist
                    + s.free_llist_extra
                    + s.free_by_rcu
                    + s.free_llist_extra_rcu
                    + s.waiting_for_gp
                    + s.free_by_rcu_ttrace
                    + s.waiting_for_gp_ttrace
            })
            .sum();
        assert_eq!(listed as u64, e.outstanding());
        let r = e.ma.destroy().unwrap();
        assert!(r.waited_for_callbacks);
        assert_eq!(r.drained, listed);
        assert_eq!(r.leaked, 0);
        assert_eq!(e.domains.rcu.stats().cbs_pending, 0);
        assert_eq!(e.domains.tasks_trace.stats().cbs_pending, 0);
        for cpu in 0..2 {
            let s = e.stats(cpu);
            assert!(!s.call_rcu_in_progress && !s.call_rcu_ttrace_in_progress);
            assert_eq!(s.waiting_for_gp + s.waiting_for_gp_ttrace + s.free_cnt, 0);
        }
        assert_eq!(e.outstanding(), 0);
        assert_eq!(e.acct.charged(), 0);
        assert!(e.v.is_empty(), "{:?}", e.v.snapshot());
    }
}

// ----- re-entrancy ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Nested {
    Alloc,
    Free(Handle),
}

#[derive(Default)]
struct Reenter {
    ma: OnceLock<Weak<MemAlloc<Bytes>>>,
    armed: Mutex<Option<Nested>>,
    hits: Mutex<Vec<(Option<u32>, u64)>>,
    nested_results: Mutex<Vec<Result<Option<Handle>, MemError>>>,
}

impl ProbeHook for Reenter {
    fn hit(&self, ev: &ProbeEvent<'_>) -> Verdict {
        if ev.site != "mem_cache_active" {
            return Verdict::Continue;
        }
        let nested = ev.fields.iter().find(|f| f.0 == "nested").map(|f| f.1).unwrap();
        self.hits.lock().unwrap().push((ev.cpu, nested));
        if nested == 0 && ev.cpu == Some(0) {
            let action = self.armed.lock().unwrap().take();
            if let Some(action) = action {
                let ma = self.ma.get().unwrap().upgrade().unwrap();
                let r = match action {
                    Nested::Alloc => ma.alloc(0).map(Some),
                    Nested::Free(h) => ma.free(0, h).map(|()| None),
                };
                self.nested_results.lock().unwrap().push(r);
            }
        }
        Verdict::Continue
    }
}

fn reentrant_env() -> (Arc<Reenter>, Arc<MemAlloc<Bytes>>, Violations) {
    let hook = Arc::new(Reenter::default());
    let domains = Arc::new(Domains::new(2, Config::stepped(), true));
    let v = Violations::new();
    let cfg = MemAllocConfig::new("reenter", 2, UnitSize::Fixed(SMALL))
        .without_work_thread()
        .with_probes(Probes::with_hook(hook.clone()));
    let ma = Arc::new(MemAlloc::new(cfg, domains, Account::unlimited("m"), v.clone()).unwrap());
    hook.ma.set(Arc::downgrade(&ma)).unwrap();
    (hook, ma, v)
}

#[test]
fn nested_alloc_inside_the_active_window_is_refused() {
    let (hook, ma, v) = reentrant_env();
    *hook.armed.lock().unwrap() = Some(Nested::Alloc);
    let h = ma.alloc(0).unwrap();
    assert_eq!(h, Handle::new(0, 3, 1), "the outer alloc still succeeds");
    assert_eq!(
        *hook.nested_results.lock().unwrap(),
        vec![Err(MemError::Alloc(AllocError::Reentered))]
    );
    assert_eq!(*hook.hits.lock().unwrap(), vec![(Some(0), 0), (Some(0), 1)]);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 3, "the nested attempt took nothing");
    // The counter is balanced: the next alloc works.
    assert_eq!(ma.alloc(0).unwrap(), Handle::new(0, 2, 1));
    assert!(ma.check_lists().is_empty());
    assert!(v.is_empty());
}

#[test]
fn nested_free_lands_on_free_llist_extra() {
    let (hook, ma, v) = reentrant_env();
    let a = ma.alloc(0).unwrap();
    let b = ma.alloc(0).unwrap();
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 2);
    *hook.armed.lock().unwrap() = Some(Nested::Free(b));
    ma.free(0, a).unwrap();
    assert_eq!(*hook.nested_results.lock().unwrap(), vec![Ok(None)]);
    let s = ma.cache_stats(0, 0);
    assert_eq!(s.free_llist_extra, 1);
    assert_eq!((s.free_cnt, s.free_llist), (3, 3), "only the outer free counts");
    assert!(!ma.is_live(a) && !ma.is_live(b));
    assert!(ma.check_lists().is_empty(), "{:?}", ma.check_lists());
    // The extra object is not reused by alloc: LIFO gives `a`'s slot, then the prefilled ones.
    assert_eq!(ma.alloc(0).unwrap().slot(), a.slot());
    assert_eq!(ma.alloc(0).unwrap().slot(), 1);
    assert_eq!(ma.alloc(0).unwrap().slot(), 0);
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 3, "the three allocated above");
    assert_eq!(r.drained, 1 + 4, "the extra object and CPU 1's prefill");
    assert_eq!(v.kinds().len(), 3);
}
