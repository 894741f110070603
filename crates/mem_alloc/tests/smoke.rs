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
