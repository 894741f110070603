//! The checker fires, with exact fields, for every violation kind: use after free, access to a
//! reused object, double free (free/free, free/free_rcu, raw_free/raw_free, a stale handle),
//! forged handles (wrong generation, slot or class out of range, generation 0), a leak at
//! destroy, and a free while linked. Also: a reader inside an RCU section is protected by
//! `free_rcu` (and is not under `Mutation::FreeRcuReusesNow`), `read()` catches a free that
//! races with its closure, violations never panic, the collector keeps them in order, and the
//! Display text is what a KASAN-style report should say.
#![cfg(not(any(loom, shuttle)))]

use bpfls_mem_alloc::{
    Account, Bytes, Handle, MemAlloc, MemAllocConfig, MemError, Mutation, UnitSize, Violation,
    ViolationKind, Violations,
};
use bpfls_rcu::{Config, Domains, ReaderId, Step};
use std::sync::Arc;

const NAME: &str = "det";
const CAP: u32 = 64;

struct Env {
    domains: Arc<Domains>,
    ma: MemAlloc<Bytes>,
    v: Violations,
}

fn env_with(cfg: MemAllocConfig) -> Env {
    let domains = Arc::new(Domains::new(cfg.cpus, Config::stepped(), true));
    let v = Violations::new();
    let ma = MemAlloc::new(cfg, domains.clone(), Account::unlimited("memcg"), v.clone()).unwrap();
    Env { domains, ma, v }
}

fn env() -> Env {
    env_with(
        MemAllocConfig::new(NAME, 2, UnitSize::Fixed(56)).with_capacity(CAP).without_work_thread(),
    )
}

/// The violation an erroring call returned, which must also be the only new one collected.
fn reported(e: &Env, r: Result<impl std::fmt::Debug, MemError>) -> Violation {
    let v = match r {
        Err(MemError::Violation(v)) => v,
        other => panic!("expected a violation, got {other:?}"),
    };
    assert_eq!(e.v.take(), vec![v.clone()]);
    v
}

fn expect(
    kind: ViolationKind,
    obj: Handle,
    site: &'static str,
    alloc_site: Option<&'static str>,
    free_site: Option<&'static str>,
    seq: u64,
) -> Violation {
    Violation { kind, obj, cache: NAME, site, alloc_site, free_site, seq }
}

#[test]
fn use_after_free() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    assert_eq!(h, Handle::new(0, 3, 1));
    e.ma.get(h, "write").unwrap().store(0, 7);
    e.ma.free(0, h).unwrap();
    assert!(e.v.is_empty());
    let v = reported(&e, e.ma.get(h, "lookup"));
    assert_eq!(
        v,
        expect(
            ViolationKind::UseAfterFree,
            h,
            "lookup",
            Some("mem_alloc"),
            Some("mem_free"),
            v.seq
        )
    );
    // is_live asks without reporting.
    assert!(!e.ma.is_live(h));
    assert!(e.v.is_empty());
    // After raw_free (straight to the slab) an access is a use after free too.
    let h2 = e.ma.alloc(0).unwrap();
    e.ma.raw_free(h2).unwrap();
    let v = reported(&e, e.ma.get(h2, "peek"));
    assert_eq!(
        v,
        expect(
            ViolationKind::UseAfterFree,
            h2,
            "peek",
            Some("mem_alloc"),
            Some("mem_raw_free"),
            v.seq
        )
    );
}

#[test]
fn access_after_reuse() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(0, h).unwrap();
    let h2 = e.ma.alloc(0).unwrap();
    assert_eq!(h2, Handle::new(0, h.slot(), h.generation() + 1));
    let v = reported(&e, e.ma.get(h, "stale_lookup"));
    // The ledger describes the new lifetime, so no sites are attributed to the old one.
    assert_eq!(v, expect(ViolationKind::ReusedAccess, h, "stale_lookup", None, None, v.seq));
    let v = reported(&e, e.ma.read(h, "stale_read", |o| o.load(0)));
    assert_eq!(v.kind, ViolationKind::ReusedAccess);
    assert_eq!(v.site, "stale_read");
    assert!(e.ma.get(h2, "new_owner").is_ok());
    assert!(e.v.is_empty());
}

#[test]
fn double_free_free_then_free() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(0, h).unwrap();
    let before = e.ma.cache_stats(0, 0);
    let v = reported(&e, e.ma.free(0, h));
    assert_eq!(
        v,
        expect(
            ViolationKind::DoubleFree,
            h,
            "mem_free",
            Some("mem_alloc"),
            Some("mem_free"),
            v.seq
        )
    );
    assert_eq!(e.ma.cache_stats(0, 0), before, "the second free changed no list");
    assert!(e.ma.check_lists().is_empty());
}

#[test]
fn double_free_free_then_free_rcu() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(1, h).unwrap();
    let v = reported(&e, e.ma.free_rcu(0, h));
    assert_eq!(
        v,
        expect(
            ViolationKind::DoubleFree,
            h,
            "mem_free_rcu",
            Some("mem_alloc"),
            Some("mem_free"),
            v.seq
        )
    );
    assert_eq!(e.ma.cache_stats(0, 0).free_by_rcu, 0);
    // And the other way round: free_rcu, then free before the grace period.
    let h = e.ma.alloc(1).unwrap();
    assert_eq!(h.slot(), 3, "the slot freed above, reused on CPU 1");
    e.ma.free_rcu(1, h).unwrap();
    let v = reported(&e, e.ma.free(1, h));
    assert_eq!(
        v,
        expect(
            ViolationKind::DoubleFree,
            h,
            "mem_free",
            Some("mem_alloc"),
            Some("mem_free_rcu"),
            v.seq
        )
    );
    assert_eq!(e.ma.cache_stats(0, 1).free_by_rcu, 1);
    assert!(e.ma.check_lists().is_empty());
}

#[test]
fn double_raw_free() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.raw_free(h).unwrap();
    let out = e.ma.slab(0).stats().outstanding;
    let v = reported(&e, e.ma.raw_free(h));
    assert_eq!(
        v,
        expect(
            ViolationKind::DoubleFree,
            h,
            "mem_raw_free",
            Some("mem_alloc"),
            Some("mem_raw_free"),
            v.seq
        )
    );
    assert_eq!(e.ma.slab(0).stats().outstanding, out, "not returned to the slab twice");
}

#[test]
fn free_through_a_stale_handle_is_a_double_free_and_spares_the_new_owner() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(0, h).unwrap();
    let h2 = e.ma.alloc(0).unwrap();
    let v = reported(&e, e.ma.free(0, h));
    assert_eq!(v, expect(ViolationKind::DoubleFree, h, "mem_free", None, None, v.seq));
    assert!(e.ma.is_live(h2));
    e.ma.free(0, h2).unwrap();
    assert!(e.v.is_empty());
}

#[test]
fn forged_handles_are_unknown_objects() {
    let e = env();
    let live = e.ma.alloc(0).unwrap();
    assert_eq!(live, Handle::new(0, 3, 1));
    let cases = [
        // A generation this slot never had.
        Handle::new(0, 3, 5),
        // A slot past the slab's capacity.
        Handle::new(0, CAP, 1),
        Handle::new(0, u32::MAX, 1),
        // Generation 0 is never handed out.
        Handle::new(0, 3, 0),
        // A slot still in the slab (never allocated).
        Handle::new(0, 40, 1),
    ];
    for forged in cases {
        let v = reported(&e, e.ma.free(0, forged));
        assert_eq!(v, expect(ViolationKind::UnknownObject, forged, "mem_free", None, None, v.seq));
        let v = reported(&e, e.ma.free_rcu(1, forged));
        assert_eq!(v.kind, ViolationKind::UnknownObject);
        assert_eq!(v.site, "mem_free_rcu");
        let v = reported(&e, e.ma.raw_free(forged));
        assert_eq!(v.kind, ViolationKind::UnknownObject);
        assert_eq!(v.site, "mem_raw_free");
        let v = reported(&e, e.ma.get(forged, "lookup"));
        assert_eq!(v, expect(ViolationKind::UnknownObject, forged, "lookup", None, None, v.seq));
        assert!(!e.ma.is_live(forged));
    }
    assert!(e.ma.is_live(live), "no forged free touched the real object");
    assert_eq!(e.ma.cache_stats(0, 0).free_cnt, 3);
    assert_eq!(e.ma.slab(0).stats().outstanding, 8);
    assert!(e.ma.check_lists().is_empty());
}

#[test]
fn forged_class_is_an_unknown_object() {
    let e = env();
    let _live = e.ma.alloc(0).unwrap();
    for forged in [Handle::new(1, 3, 1), Handle::new(255, 0, 1)] {
        let v = reported(&e, e.ma.free(0, forged));
        assert_eq!((v.kind, v.obj, v.cache), (ViolationKind::UnknownObject, forged, NAME));
        let v = reported(&e, e.ma.raw_free(forged));
        assert_eq!((v.kind, v.obj), (ViolationKind::UnknownObject, forged));
        let v = reported(&e, e.ma.get(forged, "lookup"));
        assert_eq!((v.kind, v.obj), (ViolationKind::UnknownObject, forged));
    }
}

#[test]
fn is_live_of_a_forged_class_reports_nothing() {
    let e = env();
    assert!(!e.ma.is_live(Handle::new(1, 0, 1)));
    assert_eq!(e.v.snapshot(), vec![]);
}

#[test]
fn forged_class_report_does_not_borrow_another_objects_sites() {
    let e = env();
    let live = e.ma.alloc(0).unwrap();
    e.ma.free(0, live).unwrap();
    let live = e.ma.alloc(0).unwrap();
    assert_eq!(live, Handle::new(0, 3, 2));
    // Same slot and generation as the live object, but a class this allocator lacks.
    let forged = Handle::new(1, 3, 2);
    let v = reported(&e, e.ma.get(forged, "lookup"));
    assert_eq!((v.alloc_site, v.free_site), (None, None), "{v}");
    // The same through the slab directly (a one-slab Slab of class 0).
    let v = reported(&e, e.ma.slab(0).get(forged, "lookup").map(|_| ()).map_err(MemError::from));
    assert_eq!((v.alloc_site, v.free_site), (None, None), "{v}");
}

#[test]
fn forged_class_report_names_the_operation() {
    let e = env();
    let forged = Handle::new(1, 0, 1);
    assert_eq!(reported(&e, e.ma.free(0, forged)).site, "mem_free");
    assert_eq!(reported(&e, e.ma.free_rcu(0, forged)).site, "mem_free_rcu");
    assert_eq!(reported(&e, e.ma.raw_free(forged)).site, "mem_raw_free");
    assert_eq!(reported(&e, e.ma.get(forged, "lookup")).site, "lookup");
}

#[test]
fn leak_at_destroy() {
    let e = env();
    let kept = e.ma.alloc(1).unwrap();
    assert_eq!(kept, Handle::new(0, 7, 1));
    let freed = e.ma.alloc(0).unwrap();
    e.ma.free(0, freed).unwrap();
    let r = e.ma.destroy().unwrap();
    assert_eq!(r.leaked, 1);
    assert_eq!(r.drained, 7);
    let all = e.v.take();
    assert_eq!(all.len(), 1);
    let v = &all[0];
    assert_eq!(
        *v,
        expect(ViolationKind::Leak, kept, "mem_destroy", Some("mem_alloc"), None, v.seq)
    );
    // The leaked object is still charged: it never came back.
    assert_eq!(e.ma.slab(0).stats().outstanding, 1);
}

#[test]
fn free_while_linked() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.slab(0).note_link(h);
    e.ma.slab(0).note_link(h);
    e.ma.slab(0).note_unlink(h);
    assert_eq!(e.ma.slab(0).ledger_of(h).unwrap().links, 1);
    // The free itself succeeds (the kernel would not notice); the checker reports it.
    e.ma.free(0, h).unwrap();
    let all = e.v.take();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0],
        expect(
            ViolationKind::FreeWhileLinked,
            h,
            "mem_free",
            Some("mem_alloc"),
            Some("mem_free"),
            all[0].seq
        )
    );
    // Unlinked first: no report; the next lifetime starts with no links.
    let h2 = e.ma.alloc(0).unwrap();
    assert_eq!(h2.slot(), h.slot());
    assert_eq!(e.ma.slab(0).ledger_of(h2).unwrap().links, 0);
    e.ma.slab(0).note_link(h2);
    e.ma.slab(0).note_unlink(h2);
    e.ma.free_rcu(0, h2).unwrap();
    assert!(e.v.is_empty());
}

/// Allocates on `cpu` until the allocator hands out `slot` again (running work when empty),
/// at most `limit` objects; returns everything allocated.
fn alloc_until_slot(e: &Env, cpu: u32, slot: u32, limit: usize) -> (Vec<Handle>, Option<Handle>) {
    let mut got = Vec::new();
    while got.len() < limit {
        match e.ma.alloc(cpu) {
            Ok(h) if h.slot() == slot => return (got, Some(h)),
            Ok(h) => got.push(h),
            Err(_) => {
                if e.ma.run_all_work() == 0 {
                    break;
                }
            }
        }
    }
    (got, None)
}

#[test]
fn free_rcu_protects_a_reader_inside_its_section() {
    let e = env_with(
        MemAllocConfig::new(NAME, 2, UnitSize::Fixed(56)).with_capacity(512).without_work_thread(),
    );
    let h = e.ma.alloc(0).unwrap();
    e.ma.get(h, "init").unwrap().store(0, 99);
    let guard = e.domains.rcu.read_lock(0);
    let obj = e.ma.get(h, "reader").unwrap();
    e.ma.free_rcu(0, h).unwrap();
    e.ma.run_all_work();
    assert!(matches!(
        e.domains.rcu.advance_until_quiet(),
        Step::Blocked { reader: ReaderId::Cpu(0), .. }
    ));
    // Plenty of allocations on both CPUs while the reader is inside: none reuses the slot.
    let (mut held, again) = alloc_until_slot(&e, 0, h.slot(), 120);
    assert_eq!(again, None);
    let (more, again) = alloc_until_slot(&e, 1, h.slot(), 60);
    assert_eq!(again, None);
    held.extend(more);
    assert_eq!(e.ma.get(h, "reader").unwrap().load(0), 99);
    assert_eq!(obj.load(0), 99, "not poisoned while readers may hold it");
    assert!(e.v.is_empty(), "{:?}", e.v.snapshot());
    drop(guard);

    // After the grace period it is reusable; once reused, a stale access is reported.
    assert_eq!(e.domains.rcu.advance_until_quiet(), Step::Idle);
    assert!(!e.ma.is_live(h));
    let (more, again) = alloc_until_slot(&e, 0, h.slot(), 200);
    held.extend(more);
    let h2 = again.expect("the slot is recycled by a refill on the allocating CPU");
    assert_eq!(h2.generation(), h.generation() + 1);
    let v = reported(&e, e.ma.get(h, "late_reader"));
    assert_eq!(v, expect(ViolationKind::ReusedAccess, h, "late_reader", None, None, v.seq));
    assert!(held.iter().chain([&h2]).all(|x| e.ma.is_live(*x)));
    assert!(e.v.is_empty());
}

#[test]
fn mutation_free_rcu_reuses_now_is_caught_inside_the_section() {
    let e = env_with(
        MemAllocConfig::new(NAME, 2, UnitSize::Fixed(56))
            .with_capacity(CAP)
            .without_work_thread()
            .with_mutation(Mutation::FreeRcuReusesNow),
    );
    let h = e.ma.alloc(0).unwrap();
    let guard = e.domains.rcu.read_lock(0);
    assert!(e.ma.get(h, "reader").is_ok());
    e.ma.free_rcu(0, h).unwrap();
    let h2 = e.ma.alloc(0).unwrap();
    assert_eq!(h2, Handle::new(0, h.slot(), h.generation() + 1));
    assert_eq!(guard.depth(), 1, "still inside the section");
    let v = reported(&e, e.ma.get(h, "reader"));
    assert_eq!(v, expect(ViolationKind::ReusedAccess, h, "reader", None, None, v.seq));
    drop(guard);
}

#[test]
fn read_detects_a_free_racing_with_the_closure() {
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.get(h, "w").unwrap().store(1, 5);
    assert_eq!(e.ma.read(h, "reader", |o| o.load(1)), Ok(5));
    let r = e.ma.read(h, "reader", |o| {
        e.ma.free(0, h).unwrap();
        o.load(1)
    });
    let v = reported(&e, r);
    assert_eq!(
        v,
        expect(
            ViolationKind::UseAfterFree,
            h,
            "reader",
            Some("mem_alloc"),
            Some("mem_free"),
            v.seq
        )
    );
    // A reuse inside the closure is a reused access.
    let h = e.ma.alloc(0).unwrap();
    let r = e.ma.read(h, "reader", |o| {
        e.ma.free(0, h).unwrap();
        let h2 = e.ma.alloc(0).unwrap();
        assert_eq!(h2.slot(), h.slot());
        o.load(1)
    });
    assert_eq!(reported(&e, r).kind, ViolationKind::ReusedAccess);
}

#[test]
fn violations_never_panic_and_keep_their_order() {
    let e = env();
    let a = e.ma.alloc(0).unwrap();
    let b = e.ma.alloc(0).unwrap();
    let c = e.ma.alloc(1).unwrap();
    e.ma.free(0, a).unwrap();
    let _ = e.ma.get(a, "uaf"); // UseAfterFree
    let _ = e.ma.free(0, a); // DoubleFree
    let _ = e.ma.free(0, Handle::new(0, 1000, 1)); // UnknownObject
    e.ma.slab(0).note_link(b);
    let _ = e.ma.free(1, b); // FreeWhileLinked
    let a2 = e.ma.alloc(0).unwrap();
    assert_eq!(a2.slot(), a.slot());
    let _ = e.ma.read(a, "stale", |_| ()); // ReusedAccess
    let r = e.ma.destroy().unwrap(); // Leak x2 (a2, c)
    assert_eq!(r.leaked, 2);
    assert_eq!(
        e.v.kinds(),
        vec![
            ViolationKind::UseAfterFree,
            ViolationKind::DoubleFree,
            ViolationKind::UnknownObject,
            ViolationKind::FreeWhileLinked,
            ViolationKind::ReusedAccess,
            ViolationKind::Leak,
            ViolationKind::Leak,
        ]
    );
    let all = e.v.snapshot();
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq increases: {all:?}");
    let mut leaked: Vec<_> = all[5..].iter().map(|v| v.obj).collect();
    leaked.sort();
    let mut want = vec![a2, c];
    want.sort();
    assert_eq!(leaked, want);
    assert_eq!(e.v.len(), 7);
    assert_eq!(e.v.take().len(), 7);
    assert!(e.v.is_empty());
    assert_eq!(format!("{:?}", e.v), "Violations(0)");
}

#[test]
fn display_texts() {
    let v = Violation {
        kind: ViolationKind::DoubleFree,
        obj: Handle::new(0, 3, 2),
        cache: "selem",
        site: "mem_free",
        alloc_site: Some("mem_alloc"),
        free_site: Some("mem_free_rcu"),
        seq: 42,
    };
    assert_eq!(
        v.to_string(),
        "double_free of obj c0/s3/g2 in cache `selem` at `mem_free`, allocated at `mem_alloc`, \
         freed at `mem_free_rcu` (seq 42)"
    );
    let bare = Violation {
        kind: ViolationKind::UnknownObject,
        obj: Handle::new(2, 7, 0),
        cache: "storage",
        site: "lookup",
        alloc_site: None,
        free_site: None,
        seq: 0,
    };
    assert_eq!(
        bare.to_string(),
        "unknown_object of obj c2/s7/g0 in cache `storage` at `lookup` (seq 0)"
    );
    assert_eq!(
        MemError::Violation(bare).to_string(),
        "violation: unknown_object of obj c2/s7/g0 in cache `storage` at `lookup` (seq 0)"
    );
    let names = [
        (ViolationKind::UseAfterFree, "use_after_free"),
        (ViolationKind::ReusedAccess, "reused_access"),
        (ViolationKind::DoubleFree, "double_free"),
        (ViolationKind::UnknownObject, "unknown_object"),
        (ViolationKind::Leak, "leak"),
        (ViolationKind::FreeWhileLinked, "free_while_linked"),
    ];
    for (k, n) in names {
        assert_eq!(k.name(), n);
    }
    // A real report renders the same way.
    let e = env();
    let h = e.ma.alloc(0).unwrap();
    e.ma.free(0, h).unwrap();
    let v = reported(&e, e.ma.get(h, "lookup"));
    assert_eq!(
        v.to_string(),
        format!(
            "use_after_free of obj c0/s3/g1 in cache `det` at `lookup`, allocated at \
             `mem_alloc`, freed at `mem_free` (seq {})",
            v.seq
        )
    );
}

#[test]
fn racing_double_frees_on_threads_free_exactly_once() {
    let domains = Arc::new(Domains::new(2, Config::threaded(), true));
    let v = Violations::new();
    let acct = Account::unlimited("memcg");
    let ma = Arc::new(
        MemAlloc::<Bytes>::new(
            MemAllocConfig::new(NAME, 2, UnitSize::Fixed(56)),
            domains.clone(),
            acct.clone(),
            v.clone(),
        )
        .unwrap(),
    );
    const ROUNDS: usize = 200;
    let mut wins = 0;
    for i in 0..ROUNDS {
        let h = loop {
            match ma.alloc(0) {
                Ok(h) => break h,
                Err(_) => std::thread::yield_now(),
            }
        };
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2u32)
            .map(|cpu| {
                let (ma, barrier) = (ma.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    if (i + cpu as usize).is_multiple_of(2) {
                        ma.free(cpu, h)
                    } else {
                        ma.free_rcu(cpu, h)
                    }
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {i}: {results:?}");
        wins += ok;
        let err = results.into_iter().find(|r| r.is_err()).unwrap().unwrap_err();
        match err {
            MemError::Violation(v) => {
                assert_eq!((v.kind, v.obj), (ViolationKind::DoubleFree, h));
                assert_eq!(v.alloc_site, Some("mem_alloc"));
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(wins, ROUNDS);
    assert_eq!(v.len(), ROUNDS);
    assert!(v.kinds().iter().all(|k| *k == ViolationKind::DoubleFree));
    domains.rcu.barrier();
    domains.barrier_all();
    let r = ma.destroy().unwrap();
    assert_eq!(r.leaked, 0);
    assert_eq!(acct.charged(), 0);
}
