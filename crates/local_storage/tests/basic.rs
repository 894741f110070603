//! End-to-end behaviour of the core operations on one CPU (stepped and threaded domains):
//! results, errno values, charge balance, and nothing leaked after teardown.
#![cfg(not(any(loom, shuttle)))]

use bpfls_local_storage::flags::{BPF_ANY, BPF_EXIST, BPF_F_LOCK, BPF_NOEXIST};
use bpfls_local_storage::{
    BasicOwner, Errno, LocalStorage, MapAttr, Owner, TypeConfig, ValueLayout,
};
use bpfls_mem_alloc::Violations;
use bpfls_rcu::{Config, Domains};
use std::sync::Arc;

fn setup(cfg: TypeConfig, rcu: Config, implies: bool) -> (LocalStorage, Violations) {
    let d = Arc::new(Domains::new(cfg.cpus, rcu, implies));
    let v = Violations::new();
    (LocalStorage::new(cfg, d, v.clone()).unwrap(), v)
}

fn val(x: u8) -> Vec<u8> {
    vec![x; 8]
}

#[test]
fn lifecycle_task_and_socket_types() {
    for (cfg, implies) in [
        (TypeConfig::task_like(2), true),
        (TypeConfig::task_like(2), false),
        (TypeConfig::socket_like(2), true),
    ] {
        let (ls, v) = setup(cfg.clone(), Config::threaded(), implies);
        let m1 = ls.map_create(MapAttr::new(8)).unwrap();
        let m2 = ls.map_create(MapAttr::new(8)).unwrap();
        let o: Arc<dyn Owner> = BasicOwner::socket_like(1, 1 << 20);
        assert!(ls.lookup(0, o.as_ref(), &m1, true).is_none());
        assert_eq!(
            ls.update(0, &o, &m1, Some(&val(1)), BPF_EXIST, false).unwrap_err(),
            Errno::ENOENT
        );
        let s = ls.update(0, &o, &m1, Some(&val(1)), BPF_NOEXIST, false).unwrap();
        assert_eq!(s.read("test").unwrap(), val(1));
        assert_eq!(
            ls.update(0, &o, &m1, Some(&val(2)), BPF_NOEXIST, false).unwrap_err(),
            Errno::EEXIST
        );
        let s2 = ls.update(1, &o, &m1, Some(&val(2)), BPF_ANY, false).unwrap();
        assert_ne!(s2.handle(), s.handle());
        assert_eq!(ls.lookup(0, o.as_ref(), &m1, true).unwrap().read("t").unwrap(), val(2));
        // The cached lookup hits the same element.
        assert_eq!(ls.lookup(0, o.as_ref(), &m1, true).unwrap().handle(), s2.handle());
        ls.update(0, &o, &m2, None, BPF_ANY, false).unwrap();
        assert_eq!(ls.lookup(1, o.as_ref(), &m2, false).unwrap().read("t").unwrap(), vec![0; 8]);
        ls.delete(0, o.as_ref(), &m1).unwrap();
        assert_eq!(ls.delete(0, o.as_ref(), &m1).unwrap_err(), Errno::ENOENT);
        assert!(ls.lookup(0, o.as_ref(), &m1, true).is_none());
        ls.destroy(0, o.as_ref());
        assert_eq!(o.storage_ptr().load(std::sync::atomic::Ordering::SeqCst), 0);
        ls.map_free(0, m1);
        ls.map_free(0, m2);
        assert_eq!(ls.teardown().unwrap(), 0, "{:?}", v.snapshot());
        assert!(v.is_empty(), "{:?}", v.snapshot());
        assert_eq!(ls.cache_idx_counts().iter().sum::<u64>(), 0);
    }
}

#[test]
fn flag_rules() {
    let (ls, _v) = setup(TypeConfig::task_like(1), Config::stepped(), true);
    let plain = ls.map_create(MapAttr::new(8)).unwrap();
    let locked = ls
        .map_create(
            MapAttr::new(8).with_layout(ValueLayout { spin_lock: true, ..Default::default() }),
        )
        .unwrap();
    let o: Arc<dyn Owner> = BasicOwner::task_like(7);
    for bad in [BPF_NOEXIST | BPF_EXIST, 8, 1 << 40] {
        assert_eq!(ls.update(0, &o, &plain, None, bad, false).unwrap_err(), Errno::EINVAL);
    }
    assert_eq!(ls.update(0, &o, &plain, None, BPF_F_LOCK, false).unwrap_err(), Errno::EINVAL);
    assert_eq!(ls.update(0, &o, &plain, None, BPF_ANY, true).unwrap_err(), Errno::EINVAL);
    assert_eq!(
        ls.update(0, &o, &plain, Some(&[1, 2, 3]), BPF_ANY, false).unwrap_err(),
        Errno::EINVAL
    );
    let s = ls.update(0, &o, &locked, Some(&val(3)), BPF_ANY, false).unwrap();
    // F_LOCK on an existing element updates it in place.
    let s2 = ls.update(0, &o, &locked, Some(&val(4)), BPF_F_LOCK | BPF_EXIST, false).unwrap();
    assert_eq!(s2.handle(), s.handle());
    assert_eq!(s.read("t").unwrap(), val(4));
    let s3 = ls.update(0, &o, &locked, Some(&val(5)), BPF_F_LOCK, false).unwrap();
    assert_eq!(s3.handle(), s.handle());
    ls.destroy(0, o.as_ref());
}

#[test]
fn socket_charge_rule_and_balance() {
    let (ls, v) = setup(TypeConfig::socket_like(1), Config::stepped(), true);
    let m = ls.map_create(MapAttr::new(8)).unwrap();
    // storage 176 + elem 80 = 256 must stay strictly below optmem_max.
    let tight = BasicOwner::socket_like(1, 256);
    let o: Arc<dyn Owner> = tight.clone();
    assert_eq!(ls.update(0, &o, &m, None, BPF_ANY, false).unwrap_err(), Errno::ENOMEM);
    assert_eq!(tight.charged_bytes(), 0, "a refused create leaves nothing charged");
    let roomy = BasicOwner::socket_like(2, 257);
    let o2: Arc<dyn Owner> = roomy.clone();
    ls.update(0, &o2, &m, None, BPF_ANY, false).unwrap();
    assert_eq!(roomy.charged_bytes(), 256);
    // A replace charges the new element before uncharging the old: refused near the limit.
    assert_eq!(ls.update(0, &o2, &m, None, BPF_ANY, false).unwrap_err(), Errno::ENOMEM);
    ls.destroy(0, o2.as_ref());
    assert_eq!(roomy.charged_bytes(), 0);
    ls.map_free(0, m);
    assert_eq!(ls.teardown().unwrap(), 0);
    assert!(v.is_empty(), "{:?}", v.snapshot());
}
