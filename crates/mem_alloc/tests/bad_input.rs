//! Bad input and resource exhaustion: configurations that cannot be built (`BadSize`,
//! `BadConfig`), out-of-range CPUs (`BadCpu`), wrong-mode and out-of-range allocation sizes,
//! every operation after `destroy` (`Destroyed`), an account limit, injected `slab_alloc`
//! failures and slab capacity exhaustion (`NoMemory` / short refills) — each with its exact
//! error value and Display text, no violation, and nothing charged beyond the limit or leaked.
#![cfg(not(any(loom, shuttle)))]

use bpfls_mem_alloc::{
    Account, AllocError, Bytes, Handle, MemAlloc, MemAllocConfig, MemError, UnitSize, Violations,
};
use bpfls_rcu::{Config, Domains};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn domains() -> Arc<Domains> {
    Arc::new(Domains::new(2, Config::stepped(), true))
}

fn build(cfg: MemAllocConfig) -> Result<MemAlloc<Bytes>, MemError> {
    MemAlloc::new(cfg.without_work_thread(), domains(), Account::unlimited("m"), Violations::new())
}

fn fixed(cpus: u32) -> (MemAlloc<Bytes>, Account, Violations) {
    let acct = Account::unlimited("m");
    let v = Violations::new();
    let cfg = MemAllocConfig::new("bad", cpus, UnitSize::Fixed(56)).without_work_thread();
    (MemAlloc::new(cfg, domains(), acct.clone(), v.clone()).unwrap(), acct, v)
}

#[test]
fn zero_unit_size() {
    let err = build(MemAllocConfig::new("bad", 2, UnitSize::Fixed(0))).unwrap_err();
    assert_eq!(err, MemError::BadSize { size: 0, reason: "a unit size of 0 bytes" });
    assert_eq!(err.to_string(), "size 0 rejected: a unit size of 0 bytes");
}

#[test]
fn oversize_unit() {
    let n = (1 << 20) - 7; // 1 MiB + 1 with the header
    let err = build(MemAllocConfig::new("bad", 2, UnitSize::Fixed(n))).unwrap_err();
    assert_eq!(err, MemError::BadSize { size: n, reason: "larger than the 1 MiB unit cap" });
    assert_eq!(err.to_string(), "size 1048569 rejected: larger than the 1 MiB unit cap");
    // Exactly 1 MiB with the header is accepted (a tiny slab keeps the test cheap).
    let ma = build(MemAllocConfig::new("big", 1, UnitSize::Fixed(n - 1)).with_capacity(2)).unwrap();
    assert_eq!(ma.unit_size(0), 1 << 20);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 1);
}

#[test]
fn huge_unit_size_is_bad_size_not_a_panic() {
    let r = std::panic::catch_unwind(|| {
        build(MemAllocConfig::new("bad", 1, UnitSize::Fixed(usize::MAX))).map(|_| ())
    });
    assert_eq!(
        r.expect("must not panic"),
        Err(MemError::BadSize { size: usize::MAX, reason: "larger than the 1 MiB unit cap" })
    );
}

#[test]
fn zero_cpus() {
    let err = build(MemAllocConfig::new("bad", 0, UnitSize::Fixed(56))).unwrap_err();
    assert_eq!(err, MemError::BadConfig("`bad`: at least one CPU is needed".to_owned()));
    assert_eq!(err.to_string(), "bad allocator configuration: `bad`: at least one CPU is needed");
    // Checked before the unit size.
    let err = build(MemAllocConfig::new("bad", 0, UnitSize::Fixed(0))).unwrap_err();
    assert!(matches!(err, MemError::BadConfig(_)), "{err}");
}

#[test]
fn zero_capacity() {
    let cfg = MemAllocConfig::new("bad", 2, UnitSize::Classes).with_capacity(0);
    let err = build(cfg).unwrap_err();
    assert_eq!(err, MemError::BadConfig("`bad`: capacity must be at least 1".to_owned()));
    assert_eq!(err.to_string(), "bad allocator configuration: `bad`: capacity must be at least 1");
}

#[test]
fn cpu_out_of_range() {
    let (ma, _acct, v) = fixed(2);
    let want = MemError::BadCpu { cpu: 2, cpus: 2 };
    assert_eq!(ma.alloc(2), Err(want.clone()));
    assert_eq!(ma.alloc_size(7, 8), Err(MemError::BadCpu { cpu: 7, cpus: 2 }));
    assert_eq!(
        ma.alloc(u32::MAX).unwrap_err().to_string(),
        "CPU 4294967295 is out of range: the allocator was configured for 2 CPUs"
    );
    assert_eq!(want.to_string(), "CPU 2 is out of range: the allocator was configured for 2 CPUs");
    let h = ma.alloc(1).unwrap();
    assert_eq!(ma.free(2, h), Err(want.clone()));
    assert_eq!(ma.free_rcu(3, h), Err(MemError::BadCpu { cpu: 3, cpus: 2 }));
    assert!(ma.is_live(h), "a rejected free frees nothing");
    ma.free(1, h).unwrap();
    assert!(v.is_empty());
    assert!(ma.check_lists().is_empty());
}

#[test]
fn alloc_on_a_size_class_allocator_needs_a_size() {
    let ma = build(MemAllocConfig::new("cls", 1, UnitSize::Classes)).unwrap();
    let err = ma.alloc(0).unwrap_err();
    assert_eq!(
        err,
        MemError::BadSize { size: 0, reason: "a size-class allocator needs alloc_size(cpu, size)" }
    );
    assert_eq!(
        err.to_string(),
        "size 0 rejected: a size-class allocator needs alloc_size(cpu, size)"
    );
}

#[test]
fn alloc_size_above_the_maximum() {
    let ma = build(MemAllocConfig::new("cls", 1, UnitSize::Classes)).unwrap();
    let reason = "above BPF_MEM_ALLOC_SIZE_MAX (4096 bytes with the header)";
    for size in [4089, 4096, 1 << 20] {
        assert_eq!(ma.alloc_size(0, size), Err(MemError::BadSize { size, reason }));
    }
    assert_eq!(
        ma.alloc_size(0, 4089).unwrap_err().to_string(),
        "size 4089 rejected: above BPF_MEM_ALLOC_SIZE_MAX (4096 bytes with the header)"
    );
    let h = ma.alloc_size(0, 4088).unwrap();
    assert_eq!(h.class(), 10);
}

#[test]
fn alloc_size_zero_is_bad_size() {
    let ma = build(MemAllocConfig::new("cls", 1, UnitSize::Classes)).unwrap();
    let err = ma.alloc_size(0, 0).map(|h| h.class()).unwrap_err();
    assert_eq!(err, MemError::BadSize { size: 0, reason: "a request of 0 bytes" });
    assert_eq!(err.to_string(), "size 0 rejected: a request of 0 bytes");
}

#[test]
fn alloc_size_near_usize_max_is_bad_size_not_a_panic() {
    let cls = build(MemAllocConfig::new("cls", 1, UnitSize::Classes)).unwrap();
    let r =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cls.alloc_size(0, usize::MAX)));
    let reason = "above BPF_MEM_ALLOC_SIZE_MAX (4096 bytes with the header)";
    assert_eq!(r.expect("must not panic"), Err(MemError::BadSize { size: usize::MAX, reason }));
    let (ma, _, _) = fixed(1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ma.alloc_size(0, usize::MAX)));
    let reason = "does not fit the fixed unit size";
    assert_eq!(r.expect("must not panic"), Err(MemError::BadSize { size: usize::MAX, reason }));
}

#[test]
fn alloc_size_on_a_fixed_allocator() {
    let (ma, _, v) = fixed(1);
    let zero = "a request of 0 bytes";
    assert_eq!(ma.alloc_size(0, 0), Err(MemError::BadSize { size: 0, reason: zero }));
    let reason = "does not fit the fixed unit size";
    assert_eq!(ma.alloc_size(0, 57), Err(MemError::BadSize { size: 57, reason }));
    assert_eq!(
        ma.alloc_size(0, 57).unwrap_err().to_string(),
        "size 57 rejected: does not fit the fixed unit size"
    );
    assert_eq!(ma.alloc_size(0, 56).unwrap(), Handle::new(0, 3, 1));
    assert_eq!(ma.alloc_size(0, 1).unwrap(), Handle::new(0, 2, 1));
    assert!(v.is_empty());
}

#[test]
fn every_operation_after_destroy() {
    let (ma, acct, v) = fixed(2);
    let h = ma.alloc(0).unwrap();
    ma.free(0, h).unwrap();
    let h2 = ma.alloc(1).unwrap();
    ma.raw_free(h2).unwrap();
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 0);
    let gone = MemError::Destroyed { name: "bad" };
    assert_eq!(ma.alloc(0), Err(gone.clone()));
    assert_eq!(ma.alloc(9), Err(gone.clone()), "Destroyed is checked before the CPU");
    assert_eq!(ma.alloc_size(0, 8), Err(gone.clone()));
    assert_eq!(ma.free(0, h), Err(gone.clone()));
    assert_eq!(ma.free_rcu(0, h), Err(gone.clone()));
    assert_eq!(ma.raw_free(h2), Err(gone.clone()));
    assert_eq!(ma.destroy(), Err(gone.clone()));
    assert_eq!(gone.to_string(), "allocator `bad` was destroyed; no alloc or free may follow");
    assert_eq!(ma.run_work(), None);
    assert_eq!(ma.pending_work(), 0);
    assert_eq!(acct.charged(), 0);
    assert!(v.is_empty(), "rejected calls report nothing: {:?}", v.snapshot());
}

#[test]
fn account_limit_stops_refills_and_is_never_exceeded() {
    const UNIT: u64 = 64;
    let acct = Account::new("memcg", Some(10 * UNIT));
    let v = Violations::new();
    let cfg = MemAllocConfig::new("lim", 1, UnitSize::Fixed(56)).without_work_thread();
    let ma: MemAlloc<Bytes> = MemAlloc::new(cfg, domains(), acct.clone(), v.clone()).unwrap();
    assert_eq!(acct.charged(), 4 * UNIT);
    let mut held: Vec<_> = (0..4).map(|_| ma.alloc(0).unwrap()).collect();
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(ma.run_all_work(), 1);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 6, "the refill stopped at the limit");
    assert_eq!(acct.charged(), 10 * UNIT);
    held.extend((0..6).map(|_| ma.alloc(0).unwrap()));
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    ma.run_all_work();
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(acct.charged(), 10 * UNIT);
    assert_eq!(acct.peak(), 10 * UNIT);
    // Straight from the slab (kmalloc), the limit is -ENOMEM.
    let err = ma.slab(0).alloc("direct").unwrap_err();
    assert_eq!(err, AllocError::NoMemory);
    assert_eq!(err.errno(), -12);
    assert_eq!(
        MemError::from(err).to_string(),
        "allocation failed: out of memory (limit, capacity or injected failure)"
    );
    assert_eq!(acct.charged(), 10 * UNIT);
    assert_eq!(ma.slab(0).stats().outstanding, 10);
    // A cached free keeps the charge; a raw free returns it.
    ma.free(0, held.pop().unwrap()).unwrap();
    assert_eq!(acct.charged(), 10 * UNIT);
    ma.raw_free(held.pop().unwrap()).unwrap();
    assert_eq!(acct.charged(), 9 * UNIT);
    let direct = ma.slab(0).alloc("direct").unwrap();
    assert_eq!(acct.charged(), 10 * UNIT);
    ma.slab(0).free(direct, "direct").unwrap();
    for h in held {
        ma.free(0, h).unwrap();
    }
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 0);
    assert_eq!(acct.charged(), 0);
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

/// Fails the `fail_at`-th `slab_alloc` (1-based).
struct FailNth {
    hits: AtomicU64,
    fail_at: u64,
}

impl ProbeHook for FailNth {
    fn hit(&self, ev: &ProbeEvent<'_>) -> Verdict {
        if ev.site != "slab_alloc" {
            return Verdict::Continue;
        }
        if self.hits.fetch_add(1, Ordering::Relaxed) + 1 == self.fail_at {
            Verdict::Fail
        } else {
            Verdict::Continue
        }
    }
}

fn faulty(fail_at: u64) -> (MemAlloc<Bytes>, Arc<FailNth>, Account, Violations) {
    let hook = Arc::new(FailNth { hits: AtomicU64::new(0), fail_at });
    let acct = Account::unlimited("m");
    let v = Violations::new();
    let cfg = MemAllocConfig::new("fault", 1, UnitSize::Fixed(56))
        .without_work_thread()
        .with_probes(Probes::with_hook(hook.clone()));
    let ma = MemAlloc::new(cfg, domains(), acct.clone(), v.clone()).unwrap();
    (ma, hook, acct, v)
}

/// Allocates the 4 prefilled objects, hits the empty list, and runs the refill (48 asked:
/// `slab_alloc` hits 5..=52).
fn drain_and_refill(ma: &MemAlloc<Bytes>) -> Vec<Handle> {
    let held: Vec<_> = (0..4).map(|_| ma.alloc(0).unwrap()).collect();
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(ma.run_all_work(), 1);
    held
}

fn finish(ma: MemAlloc<Bytes>, held: Vec<Handle>, acct: &Account, v: &Violations) {
    for h in held {
        ma.free(0, h).unwrap();
    }
    assert!(ma.check_lists().is_empty());
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 0);
    assert_eq!(acct.charged(), 0);
    assert_eq!(ma.slab(0).stats().outstanding, 0);
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

#[test]
fn injected_failure_of_the_last_object_of_a_refill_makes_it_one_short() {
    let (ma, hook, acct, v) = faulty(52);
    let held = drain_and_refill(&ma);
    assert_eq!(hook.hits.load(Ordering::Relaxed), 52);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 47);
    assert_eq!(ma.slab(0).stats().outstanding, 4 + 47);
    assert_eq!(acct.charged(), 51 * 64, "the failed object is not charged");
    finish(ma, held, &acct, &v);
}

#[test]
fn injected_failure_mid_refill_ends_that_refill() {
    // Like the kernel's alloc_bulk, the refill stops at the first failed allocation: the 10th
    // hit fails, so this refill adds hits 5..=9 only; the next refill is whole again.
    let (ma, hook, acct, v) = faulty(10);
    let mut held = drain_and_refill(&ma);
    assert_eq!(hook.hits.load(Ordering::Relaxed), 10);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 5);
    assert_eq!(acct.charged(), 9 * 64);
    held.extend((0..5).map(|_| ma.alloc(0).unwrap()));
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(ma.run_all_work(), 1);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 48);
    assert_eq!(hook.hits.load(Ordering::Relaxed), 10 + 48);
    finish(ma, held, &acct, &v);
}

#[test]
fn injected_failure_during_prefill() {
    let (ma, hook, acct, v) = faulty(3);
    assert_eq!(hook.hits.load(Ordering::Relaxed), 3);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 2);
    assert_eq!(acct.charged(), 2 * 64);
    // Through the slab directly, an injected failure is NoMemory.
    let (ma2, _, acct2, v2) = faulty(5);
    assert_eq!(ma2.slab(0).alloc("direct"), Err(AllocError::NoMemory));
    assert_eq!(acct2.charged(), 4 * 64);
    finish(ma2, vec![], &acct2, &v2);
    finish(ma, vec![], &acct, &v);
}

#[test]
fn capacity_exhaustion() {
    let acct = Account::unlimited("m");
    let v = Violations::new();
    let cfg =
        MemAllocConfig::new("cap", 1, UnitSize::Fixed(56)).with_capacity(10).without_work_thread();
    let ma: MemAlloc<Bytes> = MemAlloc::new(cfg, domains(), acct.clone(), v.clone()).unwrap();
    let mut held = drain_and_refill(&ma);
    assert_eq!(ma.cache_stats(0, 0).free_cnt, 6, "only 6 slots were left");
    held.extend((0..6).map(|_| ma.alloc(0).unwrap()));
    assert_eq!(ma.alloc(0), Err(MemError::Alloc(AllocError::Empty)));
    assert_eq!(ma.slab(0).alloc("direct"), Err(AllocError::NoMemory));
    let st = ma.slab(0).stats();
    assert_eq!((st.outstanding, st.capacity, st.slab_allocs), (10, 10, 10));
    assert_eq!(acct.charged(), 10 * 64, "a capacity failure charges nothing");
    // The slab finds a slot before it charges: a capacity failure never shows in the peak.
    assert_eq!(acct.peak(), 10 * 64);
    let mut slots: Vec<_> = held.iter().map(|h| h.slot()).collect();
    slots.sort();
    assert_eq!(slots, (0..10).collect::<Vec<_>>());
    finish(ma, held, &acct, &v);
}
