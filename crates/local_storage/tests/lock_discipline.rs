//! I8 (lock discipline), B1 (one bucket), C5 (map_free without its RCU barrier) and the uptr
//! rule: the clean code passes the checkers, each re-introduced bug is caught.
#![cfg(not(any(loom, shuttle)))]

use bpfls_local_storage::flags::{BPF_ANY, BPF_F_LOCK, MapFlags};
use bpfls_local_storage::{
    BasicOwner, Errno, LocalStorage, LockDiscipline, MapAttr, Mutations, Owner, TypeConfig,
    ValueLayout,
};
use bpfls_mem_alloc::Violations;
use bpfls_rcu::{Config, Domains};
use bpfls_sync::probe::Probes;
use std::sync::Arc;

fn workload(cfg: TypeConfig, implies: bool) -> (Arc<LockDiscipline>, Vec<String>, Violations) {
    let checker = Arc::new(LockDiscipline::new());
    let cfg = TypeConfig { probes: Probes::with_hook(checker.clone()), ..cfg };
    let d = Arc::new(Domains::new(cfg.cpus, Config::stepped(), implies));
    let v = Violations::new();
    let ls = LocalStorage::new(cfg, d.clone(), v.clone()).unwrap();
    let clone_flags = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    let a = ls.map_create(MapAttr::new(8).with_flags(clone_flags)).unwrap();
    let b = ls
        .map_create(
            MapAttr::new(8).with_layout(ValueLayout { spin_lock: true, ..Default::default() }),
        )
        .unwrap();
    let owners: Vec<Arc<dyn Owner>> =
        (0..3).map(|i| BasicOwner::socket_like(i, 1 << 20) as Arc<dyn Owner>).collect();
    for (i, o) in owners.iter().enumerate() {
        let cpu = i as u32 % 2;
        ls.update(cpu, o, &a, Some(&[i as u8; 8]), BPF_ANY, false).unwrap();
        ls.update(cpu, o, &b, None, BPF_ANY, false).unwrap();
        ls.update(cpu, o, &a, None, BPF_ANY, false).unwrap();
        ls.update(cpu, o, &b, Some(&[1; 8]), BPF_F_LOCK, false).unwrap();
        assert!(ls.lookup(cpu, o.as_ref(), &a, true).is_some());
    }
    ls.delete(0, owners[0].as_ref(), &b).unwrap();
    let child: Arc<dyn Owner> = BasicOwner::socket_like(9, 1 << 20);
    ls.clone_storage(1, owners[1].as_ref(), &child).unwrap();
    ls.destroy(0, owners[2].as_ref());
    ls.map_free(1, a);
    let mut all: Vec<&dyn Owner> = owners.iter().map(|o| o.as_ref()).collect();
    all.push(child.as_ref());
    let problems = ls.check_invariants(&all);
    for o in all {
        ls.destroy(0, o);
    }
    ls.map_free(0, b);
    assert_eq!(ls.teardown().unwrap(), 0);
    (checker, problems, v)
}

#[test]
fn the_core_keeps_its_lock_discipline() {
    for (cfg, implies) in [
        (TypeConfig::task_like(2), true),
        (TypeConfig::task_like(2), false),
        (TypeConfig::socket_like(2), true),
    ] {
        let (checker, problems, v) = workload(cfg, implies);
        assert_eq!(checker.problems(), Vec::<String>::new());
        assert!(problems.is_empty(), "{problems:?}");
        assert!(v.is_empty(), "{:?}", v.snapshot());
    }
}

#[test]
fn mutation_allocating_under_the_storage_lock_is_caught() {
    let cfg = TypeConfig::socket_like(2)
        .with_mutations(Mutations { alloc_under_lock: true, ..Default::default() });
    let (checker, _, _) = workload(cfg, true);
    let problems = checker.problems();
    assert!(
        problems.iter().any(|p| p.starts_with("I8: selem_alloc with [\"S\"] held")),
        "{problems:?}"
    );
}

#[test]
fn one_bucket_on_one_cpu_is_caught() {
    for (one_bucket, expect) in [(false, false), (true, true)] {
        let cfg =
            TypeConfig::task_like(1).with_mutations(Mutations { one_bucket, ..Default::default() });
        let d = Arc::new(Domains::new(1, Config::stepped(), true));
        let ls = LocalStorage::new(cfg, d, Violations::new()).unwrap();
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        assert_eq!(m.nbuckets(), if one_bucket { 1 } else { 2 });
        let o: Arc<dyn Owner> = BasicOwner::task_like(1);
        ls.update(0, &o, &m, None, BPF_ANY, false).unwrap();
        let problems = ls.check_invariants(&[o.as_ref()]);
        assert_eq!(problems.iter().any(|p| p.starts_with("I4/B1")), expect, "{problems:?}");
        ls.destroy(0, o.as_ref());
    }
}

#[test]
fn mutation_dropping_map_free_rcu_barrier_is_caught() {
    for (skip, expect) in [(false, false), (true, true)] {
        let cfg = TypeConfig::task_like(1)
            .with_mutations(Mutations { map_free_skip_rcu_barrier: skip, ..Default::default() });
        // Tasks-Trace does not imply RCU: pending frees chain through an RCU grace period.
        let d = Arc::new(Domains::new(1, Config::stepped(), false));
        let ls = LocalStorage::new(cfg, d.clone(), Violations::new()).unwrap();
        let m = ls.map_create(MapAttr::new(8)).unwrap();
        let o: Arc<dyn Owner> = BasicOwner::task_like(1);
        ls.update(0, &o, &m, None, BPF_ANY, false).unwrap();
        ls.update(0, &o, &m, None, BPF_ANY, false).unwrap(); // old selem: TT then RCU
        ls.map_free(0, m);
        d.rcu.advance_until_quiet();
        let problems = ls.check_invariants(&[o.as_ref()]);
        assert_eq!(problems.iter().any(|p| p.starts_with("I9:")), expect, "{problems:?}");
    }
}

#[test]
fn uptr_values_are_for_task_storage_only() {
    let uptr = MapAttr::new(16).with_layout(ValueLayout { uptrs: 1, ..Default::default() });
    let d = Arc::new(Domains::new(1, Config::stepped(), true));
    let sk = LocalStorage::new(TypeConfig::socket_like(1), d.clone(), Violations::new()).unwrap();
    assert_eq!(sk.map_create(uptr).unwrap_err(), Errno::EOPNOTSUPP);
    let task = LocalStorage::new(TypeConfig::task_like(1), d, Violations::new()).unwrap();
    assert!(task.map_create(uptr).is_ok());
}
