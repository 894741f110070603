//! End-to-end smoke test of the allocator's life cycle on the threaded and stepped paths.
#![cfg(not(any(loom, shuttle)))]

use bpfls_mem_alloc::{Account, Bytes, MemAlloc, MemAllocConfig, UnitSize, Violations};
use bpfls_rcu::{Config, Domains};
use std::sync::Arc;

#[test]
fn lifecycle_threaded_and_manual() {
    for (work_thread, trace_implies_rcu) in [(true, true), (false, false)] {
        let domains = Arc::new(Domains::new(2, Config::threaded(), trace_implies_rcu));
        let v = Violations::new();
        let acct = Account::unlimited("memcg");
        let mut cfg = MemAllocConfig::new("smoke", 2, UnitSize::Fixed(48));
        cfg.work_thread = work_thread;
        let ma: MemAlloc<Bytes> =
            MemAlloc::new(cfg, domains.clone(), acct.clone(), v.clone()).unwrap();
        let mut live = Vec::new();
        for round in 0..20u32 {
            for _ in 0..50 {
                match ma.alloc(round % 2) {
                    Ok(h) => live.push(h),
                    Err(_) => {
                        ma.run_all_work();
                    }
                }
            }
            for (i, h) in live.drain(..).enumerate() {
                match i % 3 {
                    0 => ma.free(round % 2, h).unwrap(),
                    1 => ma.free_rcu((round + 1) % 2, h).unwrap(),
                    _ => ma.raw_free(h).unwrap(),
                }
            }
            ma.run_all_work();
            domains.barrier_all();
        }
        assert!(ma.check_lists().is_empty(), "{:?}", ma.check_lists());
        let report = ma.destroy().unwrap();
        assert_eq!(report.leaked, 0, "{:?}", v.snapshot());
        assert!(v.is_empty(), "{:?}", v.snapshot());
        assert_eq!(acct.charged(), 0);
        assert_eq!(ma.slab(0).stats().outstanding, 0);
    }
}

#[test]
fn sleepable_alloc_falls_back_to_the_slab() {
    let domains = Arc::new(Domains::new(1, Config::stepped(), true));
    let v = Violations::new();
    let cfg = MemAllocConfig::new("sleepable", 1, UnitSize::Fixed(24)).without_work_thread();
    let ma: MemAlloc<Bytes> =
        MemAlloc::new(cfg, domains, Account::unlimited("m"), v.clone()).unwrap();
    // Prefill gave 4 objects and no work runs: the fifth plain alloc finds the list empty.
    let mut held: Vec<_> = (0..4).map(|_| ma.alloc(0).unwrap()).collect();
    assert!(ma.alloc(0).is_err());
    let before = ma.slab(0).stats().slab_allocs;
    let h = ma.alloc_sleepable(0).unwrap();
    assert_eq!(ma.slab(0).stats().slab_allocs, before + 1, "one object straight from the slab");
    held.push(h);
    // It frees into the per-CPU cache like any other object.
    for h in held {
        ma.free(0, h).unwrap();
    }
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 5);
    assert_eq!(ma.destroy().unwrap().leaked, 0);
    assert!(v.is_empty());
}

#[test]
fn handles_pack_into_48_bits_and_generations_wrap_at_2_pow_24() {
    let h = bpfls_mem_alloc::Handle::new(0, 0xab_cdef, 0x12_3456);
    assert_eq!(h.pack(), 0xabcd_ef12_3456);
    assert_eq!(bpfls_mem_alloc::Handle::unpack(0, h.pack()), h);
    assert!(h.pack() < 1 << 48);
    // A slot handed out again and again never gets generation 0 and stays within 24 bits.
    let slab: bpfls_mem_alloc::Slab<Bytes> = bpfls_mem_alloc::Slab::new(
        "wrap",
        0,
        8,
        1,
        Account::unlimited("m"),
        Violations::new(),
        bpfls_sync::probe::Probes::new(),
    );
    let mut last = 0;
    for _ in 0..5 {
        let h = slab.alloc("a").unwrap();
        assert!(h.generation() > last && h.generation() < 1 << 24);
        last = h.generation();
        slab.free(h, "f").unwrap();
    }
}
