//! `BPF_F_CLONE` for sockets, and fault injection at every allocation (check C9): the errno
//! is the kernel's, the visible state is unchanged, and nothing leaks.
#![cfg(not(any(loom, shuttle)))]

use bpfls_local_storage::flags::{BPF_ANY, MapFlags};
use bpfls_local_storage::{BasicOwner, Errno, LocalStorage, MapAttr, Owner, TypeConfig};
use bpfls_mem_alloc::Violations;
use bpfls_rcu::{Config, Domains};
use bpfls_sync::probe::{FailNth, Probes};
use std::sync::Arc;

fn env(cfg: TypeConfig) -> (Arc<LocalStorage>, Arc<Domains>, Violations) {
    let d = Arc::new(Domains::new(cfg.cpus, Config::stepped(), true));
    let v = Violations::new();
    (Arc::new(LocalStorage::new(cfg, d.clone(), v.clone()).unwrap()), d, v)
}

#[test]
fn clone_copies_only_clone_maps_and_charges_the_child() {
    let (ls, _d, v) = env(TypeConfig::socket_like(1));
    let cloned = ls
        .map_create(MapAttr::new(8).with_flags((MapFlags::NO_PREALLOC | MapFlags::CLONE).bits()))
        .unwrap();
    let plain = ls.map_create(MapAttr::new(8)).unwrap();
    let parent_owner = BasicOwner::socket_like(1, 1 << 20);
    let parent: Arc<dyn Owner> = parent_owner.clone();
    ls.update(0, &parent, &cloned, Some(&[7; 8]), BPF_ANY, false).unwrap();
    ls.update(0, &parent, &plain, Some(&[9; 8]), BPF_ANY, false).unwrap();
    let child_owner = BasicOwner::socket_like(2, 1 << 20);
    let child: Arc<dyn Owner> = child_owner.clone();
    ls.clone_storage(0, parent.as_ref(), &child).unwrap();
    let got = ls.lookup(0, child.as_ref(), &cloned, false).expect("cloned element");
    assert_eq!(got.read("child").unwrap(), vec![7; 8]);
    assert!(ls.lookup(0, child.as_ref(), &plain, false).is_none(), "no BPF_F_CLONE: not copied");
    assert_eq!(child_owner.charged_bytes(), 176 + 80);
    assert!(ls.check_invariants(&[parent.as_ref(), child.as_ref()]).is_empty());
    ls.destroy(0, parent.as_ref());
    ls.destroy(0, child.as_ref());
    assert_eq!(child_owner.charged_bytes(), 0);
    ls.map_free(0, cloned);
    ls.map_free(0, plain);
    assert_eq!(ls.teardown().unwrap(), 0);
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

/// The state an owner shows: (element of map a, element of map b), as values.
fn state(
    ls: &LocalStorage,
    o: &dyn Owner,
    maps: &[&Arc<bpfls_local_storage::Smap>],
) -> Vec<Option<Vec<u8>>> {
    maps.iter().map(|m| ls.lookup(0, o, m, false).map(|s| s.read("state").unwrap())).collect()
}

#[test]
fn every_failed_allocation_returns_enomem_and_changes_nothing() {
    // A kmalloc (socket) type: every selem and storage allocation is a slab allocation.
    let mut failures = 0;
    for k in 1..=8 {
        let hook = Arc::new(FailNth::new("slab_alloc", k));
        let cfg =
            TypeConfig { probes: Probes::with_hook(hook.clone()), ..TypeConfig::socket_like(1) };
        let (ls, _d, v) = env(cfg);
        let (a, b) =
            (ls.map_create(MapAttr::new(8)).unwrap(), ls.map_create(MapAttr::new(8)).unwrap());
        let so = BasicOwner::socket_like(1, 1 << 20);
        let o: Arc<dyn Owner> = so.clone();
        // create a, replace a, create b, replace b: 1 + 1 + 1 + 1 selems and 1 storage.
        for (m, val) in [(&a, 1u8), (&a, 2), (&b, 3), (&b, 4)] {
            let before = state(&ls, o.as_ref(), &[&a, &b]);
            let charged = so.charged_bytes();
            match ls.update(0, &o, m, Some(&[val; 8]), BPF_ANY, false) {
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    assert_eq!(e, Errno::ENOMEM, "k = {k}");
                    assert_eq!(state(&ls, o.as_ref(), &[&a, &b]), before, "k = {k}: state changed");
                    assert_eq!(so.charged_bytes(), charged, "k = {k}: charge changed");
                }
            }
            assert!(ls.check_invariants(&[o.as_ref()]).is_empty(), "k = {k}");
        }
        ls.destroy(0, o.as_ref());
        ls.map_free(0, a);
        ls.map_free(0, b);
        assert_eq!(ls.teardown().unwrap(), 0, "k = {k}");
        assert!(v.is_empty(), "k = {k}: {:?}", v.snapshot());
        assert_eq!(so.charged_bytes(), 0, "k = {k}");
    }
    assert!(failures >= 5, "the injected failures must hit the operations ({failures})");
}

/// An owner whose `nth` charge is refused (C9's "owner mem-charge" site).
struct FailingCharge {
    inner: Arc<BasicOwner>,
    nth: u64,
    calls: std::sync::atomic::AtomicU64,
}

impl Owner for FailingCharge {
    fn id(&self) -> u64 {
        self.inner.id()
    }
    fn storage_ptr(&self) -> &bpfls_sync::atomic::AtomicU64 {
        self.inner.storage_ptr()
    }
    fn charge(&self, bytes: usize) -> Result<(), Errno> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n == self.nth { Err(Errno::ENOMEM) } else { self.inner.charge(bytes) }
    }
    fn uncharge(&self, bytes: usize) {
        self.inner.uncharge(bytes)
    }
    fn charged(&self) -> Option<u64> {
        self.inner.charged()
    }
    fn past_rcu_gp_at_destroy(&self) -> bool {
        false
    }
}

#[test]
fn every_refused_charge_returns_enomem_and_changes_nothing() {
    use bpfls_local_storage::flags::{BPF_EXIST, BPF_NOEXIST};
    let mut failures = 0;
    for k in 1..=8 {
        for cfg in [TypeConfig::socket_like(1), TypeConfig::task_like(1).with_inline_refill()] {
            let (ls, _d, v) = env(cfg);
            let (a, b) =
                (ls.map_create(MapAttr::new(8)).unwrap(), ls.map_create(MapAttr::new(8)).unwrap());
            let base = BasicOwner::socket_like(1, 1 << 20);
            let fo =
                Arc::new(FailingCharge { inner: base.clone(), nth: k, calls: Default::default() });
            let o: Arc<dyn Owner> = fo.clone();
            // Charges: create a (elem, storage), replace a (elem), create b (elem), exist b (elem).
            let ops: [(&Arc<bpfls_local_storage::Smap>, u64); 4] =
                [(&a, BPF_NOEXIST), (&a, BPF_ANY), (&b, BPF_NOEXIST), (&b, BPF_EXIST)];
            for (m, flags) in ops {
                let before = state(&ls, o.as_ref(), &[&a, &b]);
                let charged = base.charged_bytes();
                let calls = fo.calls.load(std::sync::atomic::Ordering::Relaxed);
                let r = ls.update(0, &o, m, Some(&[k as u8; 8]), flags, false);
                let refused = calls < k && fo.calls.load(std::sync::atomic::Ordering::Relaxed) >= k;
                match r {
                    Err(e) if refused => {
                        failures += 1;
                        assert_eq!(e, Errno::ENOMEM, "k = {k}");
                        assert_eq!(state(&ls, o.as_ref(), &[&a, &b]), before, "k = {k}");
                        assert_eq!(base.charged_bytes(), charged, "k = {k}");
                    }
                    // An earlier refusal left `b` uncreated: BPF_EXIST finds nothing.
                    Err(e) => assert_eq!((e, flags), (Errno::ENOENT, BPF_EXIST), "k = {k}"),
                    Ok(_) => assert!(!refused, "k = {k}: a refused charge must fail the update"),
                }
                assert!(ls.check_invariants(&[o.as_ref()]).is_empty(), "k = {k}");
            }
            ls.delete(0, o.as_ref(), &a).ok();
            ls.destroy(0, o.as_ref());
            ls.map_free(0, a);
            ls.map_free(0, b);
            assert_eq!(ls.teardown().unwrap(), 0);
            assert!(v.is_empty(), "k = {k}: {:?}", v.snapshot());
            assert_eq!(base.charged_bytes(), 0, "k = {k}");
        }
    }
    assert!(failures >= 8, "refused charges must hit the operations ({failures})");
}
