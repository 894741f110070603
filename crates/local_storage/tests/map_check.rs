#![cfg(not(any(loom, shuttle)))]
//! Map creation (§2.1 of the kernel semantics): every `map_alloc_check` rule in the kernel's
//! order with its exact errno, both through `map_alloc_check` and through
//! `LocalStorage::map_create`; `nbuckets`; the per-type cache-index allocator (§1.5: least
//! used, the first unused slot wins early, ties to the lowest index, reuse after `map_free`);
//! and the `Errno` numbers, names, `Display` and `negated()` (§1.7).

use bpfls_local_storage::flags::MapFlags;
use bpfls_local_storage::map::{CACHE_SIZE, MAX_VALUE_SIZE, nbuckets};
use bpfls_local_storage::{
    Errno, LocalStorage, MapAttr, Smap, TypeConfig, ValueLayout, map_alloc_check,
};
use bpfls_mem_alloc::Violations;
use bpfls_rcu::{Config, Domains};
use std::sync::Arc;

/// A small type (few slots per allocator) so that map creation is cheap.
fn small(cfg: TypeConfig) -> TypeConfig {
    TypeConfig { capacity: 8, ..cfg }
}

fn setup(cfg: TypeConfig) -> (LocalStorage, Violations) {
    let d = Arc::new(Domains::new(cfg.cpus, Config::stepped(), true));
    let v = Violations::new();
    (LocalStorage::new(cfg, d, v.clone()).unwrap(), v)
}

/// Checks `attr` both directly and through `map_create` on both type kinds (a refused create
/// must not take a cache index).
fn check(attr: MapAttr, want: Result<(), Errno>) {
    assert_eq!(map_alloc_check(&attr), want, "{attr:?}");
    if attr.value_size > 4096 {
        // Too big to build cheaply below (the slab keeps every value).
        return;
    }
    for cfg in [small(TypeConfig::task_like(1)), small(TypeConfig::socket_like(1))] {
        let (ls, v) = setup(cfg);
        let got = ls.map_create(attr);
        assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "{attr:?}");
        let live = u64::from(got.is_ok());
        assert_eq!(ls.cache_idx_counts().iter().sum::<u64>(), live);
        if let Ok(m) = got {
            ls.map_free(0, m);
        }
        assert_eq!(ls.cache_idx_counts(), [0; CACHE_SIZE]);
        assert_eq!(ls.teardown().unwrap(), 0);
        assert!(v.is_empty(), "{:?}", v.snapshot());
    }
}

#[test]
fn constants() {
    assert_eq!(MapFlags::NO_PREALLOC.bits(), 1);
    assert_eq!(MapFlags::CLONE.bits(), 1 << 9);
    assert_eq!(MAX_VALUE_SIZE, 65407);
    assert_eq!(CACHE_SIZE, 16);
    let a = MapAttr::new(8);
    assert_eq!(
        (a.key_size, a.value_size, a.max_entries, a.map_flags),
        (4, 8, 0, MapFlags::NO_PREALLOC.bits())
    );
    assert!(a.btf_key_type_id != 0 && a.btf_value_type_id != 0);
    assert_eq!(a.layout, ValueLayout::default());
}

#[test]
fn valid_attrs_pass() {
    check(MapAttr::new(8), Ok(()));
    check(MapAttr::new(1), Ok(()));
    // BPF_F_CLONE is allowed (acted on by sockets only, accepted by every type).
    check(MapAttr::new(8).with_flags((MapFlags::NO_PREALLOC | MapFlags::CLONE).bits()), Ok(()));
    check(
        MapAttr::new(16).with_layout(ValueLayout { spin_lock: true, kptrs: 1, uptrs: 0 }),
        Ok(()),
    );
}

#[test]
fn flags_rules_einval() {
    let np = MapFlags::NO_PREALLOC.bits();
    let clone = MapFlags::CLONE.bits();
    // Every unknown bit, alone with NO_PREALLOC.
    for bit in 0..32 {
        let b = 1u32 << bit;
        if b == np || b == clone {
            continue;
        }
        check(MapAttr::new(8).with_flags(np | b), Err(Errno::EINVAL));
    }
    // NO_PREALLOC is mandatory.
    check(MapAttr::new(8).with_flags(0), Err(Errno::EINVAL));
    check(MapAttr::new(8).with_flags(clone), Err(Errno::EINVAL));
    check(MapAttr::new(8).with_flags(u32::MAX), Err(Errno::EINVAL));
}

#[test]
fn attr_rules_einval() {
    check(MapAttr { max_entries: 1, ..MapAttr::new(8) }, Err(Errno::EINVAL));
    check(MapAttr { max_entries: u32::MAX, ..MapAttr::new(8) }, Err(Errno::EINVAL));
    for ks in [0, 1, 2, 3, 5, 8, u32::MAX] {
        check(MapAttr { key_size: ks, ..MapAttr::new(8) }, Err(Errno::EINVAL));
    }
    check(MapAttr::new(0), Err(Errno::EINVAL));
    check(MapAttr { btf_key_type_id: 0, ..MapAttr::new(8) }, Err(Errno::EINVAL));
    check(MapAttr { btf_value_type_id: 0, ..MapAttr::new(8) }, Err(Errno::EINVAL));
}

#[test]
fn value_size_limit() {
    assert_eq!(map_alloc_check(&MapAttr::new(MAX_VALUE_SIZE)), Ok(()));
    assert_eq!(map_alloc_check(&MapAttr::new(MAX_VALUE_SIZE + 1)), Err(Errno::E2BIG));
    assert_eq!(map_alloc_check(&MapAttr::new(u32::MAX)), Err(Errno::E2BIG));
    // The biggest value is creatable (a 2-slot socket-like type keeps this cheap), and its
    // elem_size is 72 + value_size.
    for cfg in [TypeConfig::socket_like(1), TypeConfig::task_like(1)] {
        let (ls, v) = setup(TypeConfig { capacity: 2, ..cfg });
        let m = ls.map_create(MapAttr::new(MAX_VALUE_SIZE)).unwrap();
        assert_eq!(m.elem_size(), 72 + MAX_VALUE_SIZE as usize);
        assert_eq!(ls.map_create(MapAttr::new(MAX_VALUE_SIZE + 1)).unwrap_err(), Errno::E2BIG);
        ls.map_free(0, m);
        assert_eq!(ls.teardown().unwrap(), 0);
        assert!(v.is_empty(), "{:?}", v.snapshot());
    }
}

#[test]
fn einval_wins_over_e2big() {
    let big = MAX_VALUE_SIZE + 1;
    let np = MapFlags::NO_PREALLOC.bits();
    for attr in [
        MapAttr::new(big).with_flags(np | 2),
        MapAttr::new(big).with_flags(0),
        MapAttr { max_entries: 1, ..MapAttr::new(big) },
        MapAttr { key_size: 8, ..MapAttr::new(big) },
        MapAttr { btf_key_type_id: 0, ..MapAttr::new(big) },
        MapAttr { btf_value_type_id: 0, ..MapAttr::new(u32::MAX) },
    ] {
        assert_eq!(map_alloc_check(&attr), Err(Errno::EINVAL), "{attr:?}");
        let (ls, _v) = setup(small(TypeConfig::socket_like(1)));
        assert_eq!(ls.map_create(attr).unwrap_err(), Errno::EINVAL);
        assert_eq!(ls.cache_idx_counts(), [0; CACHE_SIZE]);
    }
}

#[test]
fn nbuckets_rule() {
    for (cpus, want) in [(0, 2), (1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16)] {
        assert_eq!(nbuckets(cpus), want, "cpus {cpus}");
    }
    for (cpus, want) in [(1, 2), (3, 4), (4, 4), (5, 8)] {
        let (ls, _v) = setup(small(TypeConfig::task_like(cpus)));
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        assert_eq!(m.nbuckets(), want, "cpus {cpus}");
        ls.map_free(0, m);
        assert_eq!(ls.teardown().unwrap(), 0);
    }
}

fn counts_of(pairs: &[(usize, u64)]) -> [u64; CACHE_SIZE] {
    let mut c = [0; CACHE_SIZE];
    for &(i, n) in pairs {
        c[i] = n;
    }
    c
}

#[test]
fn cache_idx_allocation_and_reuse() {
    for cfg in [small(TypeConfig::task_like(1)), small(TypeConfig::socket_like(2))] {
        let (ls, v) = setup(cfg);
        let mut maps: Vec<Option<Arc<Smap>>> = Vec::new();
        for _ in 0..20 {
            maps.push(Some(ls.map_create(MapAttr::new(8)).unwrap()));
        }
        let idx: Vec<u16> = maps.iter().map(|m| m.as_ref().unwrap().cache_idx()).collect();
        // The first 16 each take the first unused slot; then all counts are 1 and the least
        // used slot is the lowest index with the smallest count.
        let want: Vec<u16> = (0..16).chain(0..4).collect();
        assert_eq!(idx, want);
        let mut c = [1; CACHE_SIZE];
        c[..4].copy_from_slice(&[2, 2, 2, 2]);
        assert_eq!(ls.cache_idx_counts(), c);
        // Map ids are distinct.
        let mut ids: Vec<u16> = maps.iter().map(|m| m.as_ref().unwrap().id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20);

        // Free the map of slot 5 (count 1 → 0): the next create takes slot 5 (first unused).
        ls.map_free(0, maps[5].take().unwrap());
        c[5] = 0;
        assert_eq!(ls.cache_idx_counts(), c);
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        assert_eq!(m.cache_idx(), 5);
        c[5] = 1;
        assert_eq!(ls.cache_idx_counts(), c);
        maps.push(Some(m));

        // Free one of the two maps of slot 2 (2 → 1): no slot is unused and slot 2 is the
        // lowest with the least count (1); then, all of 0..4 at 2, slot 4 is.
        ls.map_free(0, maps[18].take().unwrap());
        c[2] = 1;
        assert_eq!(ls.cache_idx_counts(), c);
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        assert_eq!(m.cache_idx(), 2);
        c[2] = 2;
        assert_eq!(ls.cache_idx_counts(), c);
        maps.push(Some(m));
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        assert_eq!(m.cache_idx(), 4);
        c[4] = 2;
        assert_eq!(ls.cache_idx_counts(), c);
        maps.push(Some(m));

        // Free both users of slot 3 and the single user of slot 9: the next creates take 3
        // (first unused, lowest), then 9, then the lowest least-used (count 1) slot: 3 again.
        ls.map_free(0, maps[3].take().unwrap());
        ls.map_free(0, maps[19].take().unwrap());
        ls.map_free(0, maps[9].take().unwrap());
        c[3] = 0;
        c[9] = 0;
        assert_eq!(ls.cache_idx_counts(), c);
        for want in [3, 9, 3] {
            let m = ls.map_create(MapAttr::new(8)).unwrap();
            assert_eq!(m.cache_idx(), want);
            c[usize::from(want)] += 1;
            maps.push(Some(m));
        }
        assert_eq!(ls.cache_idx_counts(), c);
        let live = maps.iter().filter(|m| m.is_some()).count() as u64;
        assert_eq!(ls.cache_idx_counts().iter().sum::<u64>(), live);

        for m in maps.into_iter().flatten() {
            ls.map_free(0, m);
        }
        assert_eq!(ls.cache_idx_counts(), [0; CACHE_SIZE]);
        assert_eq!(ls.teardown().unwrap(), 0);
        assert!(v.is_empty(), "{:?}", v.snapshot());
    }
}

#[test]
fn cache_idx_first_unused_wins_early() {
    let (ls, _v) = setup(small(TypeConfig::task_like(1)));
    let a = ls.map_create(MapAttr::new(8)).unwrap();
    let b = ls.map_create(MapAttr::new(8)).unwrap();
    let c = ls.map_create(MapAttr::new(8)).unwrap();
    assert_eq!([a.cache_idx(), b.cache_idx(), c.cache_idx()], [0, 1, 2]);
    ls.map_free(0, b);
    assert_eq!(ls.cache_idx_counts(), counts_of(&[(0, 1), (2, 1)]));
    // Slot 1 is unused and comes before the (also unused) slot 3.
    let d = ls.map_create(MapAttr::new(8)).unwrap();
    assert_eq!(d.cache_idx(), 1);
    let e = ls.map_create(MapAttr::new(8)).unwrap();
    assert_eq!(e.cache_idx(), 3);
    assert_eq!(ls.cache_idx_counts(), counts_of(&[(0, 1), (1, 1), (2, 1), (3, 1)]));
    for m in [a, c, d, e] {
        ls.map_free(0, m);
    }
    assert_eq!(ls.cache_idx_counts(), [0; CACHE_SIZE]);
    assert_eq!(ls.teardown().unwrap(), 0);
}

#[test]
fn cache_idx_standalone() {
    use bpfls_local_storage::CacheIdx;
    let ci = CacheIdx::new();
    let got: Vec<u16> = (0..40).map(|_| ci.get()).collect();
    let want: Vec<u16> = (0..16).chain(0..16).chain(0..8).collect();
    assert_eq!(got, want);
    let mut c = [2; CACHE_SIZE];
    c[..8].copy_from_slice(&[3; 8]);
    assert_eq!(ci.counts(), c);
    // Lower slot 12 to 1: it is the unique least used.
    ci.put(12);
    assert_eq!(ci.get(), 12);
    // Empty slot 15 entirely: first unused wins even though it is last.
    ci.put(15);
    ci.put(15);
    assert_eq!(ci.get(), 15);
    assert_eq!(ci.get(), 15, "count 1: still the unique least used");
    assert_eq!(ci.get(), 8, "ties (count 2) resolve to the lowest index");
}

#[test]
fn errno_numbers_and_display() {
    let table = [
        (Errno::EPERM, 1, "EPERM"),
        (Errno::ENOENT, 2, "ENOENT"),
        (Errno::E2BIG, 7, "E2BIG"),
        (Errno::EBADF, 9, "EBADF"),
        (Errno::EAGAIN, 11, "EAGAIN"),
        (Errno::ENOMEM, 12, "ENOMEM"),
        (Errno::EBUSY, 16, "EBUSY"),
        (Errno::EEXIST, 17, "EEXIST"),
        (Errno::EINVAL, 22, "EINVAL"),
        (Errno::EDEADLK, 35, "EDEADLK"),
        (Errno::EOPNOTSUPP, 95, "EOPNOTSUPP"),
        (Errno::ETIMEDOUT, 110, "ETIMEDOUT"),
        (Errno::ENOTSUPP, 524, "ENOTSUPP"),
    ];
    for (e, code, name) in table {
        assert_eq!(e.code(), code);
        assert_eq!(e as i32, code);
        assert_eq!(e.negated(), -code);
        assert_eq!(e.name(), name);
        assert_eq!(e.to_string(), format!("-{name} ({code})"));
    }
    assert_eq!(Errno::EINVAL.to_string(), "-EINVAL (22)");
    assert_eq!(Errno::E2BIG.to_string(), "-E2BIG (7)");
    let boxed: Box<dyn std::error::Error> = Box::new(Errno::ENOMEM);
    assert_eq!(boxed.to_string(), "-ENOMEM (12)");
}
