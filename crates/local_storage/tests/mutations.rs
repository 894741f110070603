//! The bug zoo as mutations: each re-introduced kernel bug is caught by the invariant checker
//! or the checked handles, and the same scenario without the mutation is clean.
#![cfg(not(any(loom, shuttle)))]

use bpfls_local_storage::flags::BPF_ANY;
use bpfls_local_storage::{BasicOwner, LocalStorage, MapAttr, Mutations, Owner, TypeConfig};
use bpfls_mem_alloc::{ViolationKind, Violations};
use bpfls_rcu::{Config, Domains};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict};
use std::sync::{Arc, Mutex};

struct Env {
    ls: Arc<LocalStorage>,
    d: Arc<Domains>,
    v: Violations,
}

/// Stepped grace periods and inline allocator work: every run is the same run.
fn env(cfg: TypeConfig) -> Env {
    let cfg = cfg.with_inline_refill();
    let d = Arc::new(Domains::new(cfg.cpus, Config::stepped(), true));
    let v = Violations::new();
    let ls = Arc::new(LocalStorage::new(cfg, d.clone(), v.clone()).unwrap());
    Env { ls, d, v }
}

fn owner(id: u64) -> Arc<dyn Owner> {
    BasicOwner::task_like(id)
}

/// Runs an action when `lookup_cache_insert` is passed (a program racing the lookup).
#[derive(Default)]
struct OnCacheInsert(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl ProbeHook for OnCacheInsert {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        if e.site == "lookup_cache_insert"
            && let Some(f) = self.0.lock().unwrap().take()
        {
            f();
        }
        Verdict::Continue
    }
}

/// C8: a delete that lands between the lookup's walk and its cache insertion. With the
/// still-linked recheck the cache stays clean; without it the cache names a dead selem.
fn cache_publish_race(mutations: Mutations) -> (Vec<String>, Violations) {
    let hook = Arc::new(OnCacheInsert::default());
    let cfg = TypeConfig {
        probes: Probes::with_hook(hook.clone()),
        ..TypeConfig::task_like(1).with_mutations(mutations)
    };
    let e = env(cfg);
    let (a, b) =
        (e.ls.map_create(MapAttr::new(8)).unwrap(), e.ls.map_create(MapAttr::new(8)).unwrap());
    let o = owner(1);
    e.ls.update(0, &o, &a, None, BPF_ANY, false).unwrap();
    e.ls.update(0, &o, &b, None, BPF_ANY, false).unwrap();
    let (ls, o2, a2) = (e.ls.clone(), o.clone(), a.clone());
    *hook.0.lock().unwrap() = Some(Box::new(move || ls.delete(0, o2.as_ref(), &a2).unwrap()));
    let _ = e.ls.lookup(0, o.as_ref(), &a, true);
    let problems = e.ls.check_invariants(&[o.as_ref()]);
    // Let the deleted selem's grace periods pass (Tasks-Trace and the RCU one it implies),
    // then look it up through the cache.
    e.d.tasks_trace.advance_until_quiet();
    e.d.rcu.advance_until_quiet();
    {
        let _g = e.d.rcu.read_lock(0);
        if let Some(s) = e.ls.lookup(0, o.as_ref(), &a, true) {
            let _ = s.read("lookup after the race");
        }
    }
    (problems, e.v)
}

#[test]
fn cache_insert_recheck_keeps_the_cache_clean() {
    let (problems, v) = cache_publish_race(Mutations::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

#[test]
fn mutation_skipping_the_cache_recheck_is_caught() {
    let (problems, v) =
        cache_publish_race(Mutations { skip_cache_recheck: true, ..Default::default() });
    assert!(problems.iter().any(|p| p.starts_with("I6:")), "{problems:?}");
    assert!(
        v.kinds()
            .iter()
            .any(|k| matches!(k, ViolationKind::UseAfterFree | ViolationKind::ReusedAccess)),
        "the stale cache slot must lead to a checked use after free: {:?}",
        v.snapshot()
    );
}

/// I15: a storage recycled by the per-CPU cache keeps its cache slots; unlink must have
/// cleared them.
fn recycled_storage(mutations: Mutations) -> (Vec<String>, Violations, bool) {
    let e = env(TypeConfig::task_like(1).with_mutations(mutations));
    let (a, b) =
        (e.ls.map_create(MapAttr::new(8)).unwrap(), e.ls.map_create(MapAttr::new(8)).unwrap());
    let o1 = owner(1);
    e.ls.update(0, &o1, &a, Some(&[1; 8]), BPF_ANY, false).unwrap();
    assert!(e.ls.lookup(0, o1.as_ref(), &a, true).is_some());
    e.ls.destroy(0, o1.as_ref()); // task: past an RCU GP, so immediate reuse
    let o2 = owner(2);
    e.ls.update(0, &o2, &b, None, BPF_ANY, false).unwrap();
    let problems = e.ls.check_invariants(&[o2.as_ref()]);
    let _g = e.d.rcu.read_lock(0);
    let hit = match e.ls.lookup(0, o2.as_ref(), &a, false) {
        Some(s) => {
            let _ = s.read("stale cache slot");
            true
        }
        None => false,
    };
    (problems, e.v, hit)
}

#[test]
fn recycled_storage_has_a_clean_cache() {
    let (problems, v, hit) = recycled_storage(Mutations::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!hit, "owner 2 has no element of map a");
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

#[test]
fn mutation_skipping_the_cache_clear_is_caught() {
    let (problems, v, hit) =
        recycled_storage(Mutations { skip_cache_clear: true, ..Default::default() });
    assert!(problems.iter().any(|p| p.starts_with("I15:")), "{problems:?}");
    assert!(hit, "the stale slot must answer the lookup");
    assert!(!v.is_empty(), "reading through the stale slot must be a violation");
}

/// B8a: the delete path must not reuse at once: a sleepable program may still hold the value.
fn sleepable_reader_vs_delete(mutations: Mutations) -> Violations {
    let e = env(TypeConfig::task_like(1).with_mutations(mutations));
    let a = e.ls.map_create(MapAttr::new(8)).unwrap();
    let (o1, o2) = (owner(1), owner(2));
    e.ls.update(0, &o1, &a, Some(&[1; 8]), BPF_ANY, false).unwrap();
    let task = e.d.tasks_trace.register_task(100);
    let section = e.d.tasks_trace.read_lock(&task);
    let held = e.ls.lookup(0, o1.as_ref(), &a, false).unwrap();
    e.ls.delete(0, o1.as_ref(), &a).unwrap();
    e.ls.update(0, &o2, &a, Some(&[2; 8]), BPF_ANY, false).unwrap();
    let _ = held.read("sleepable program after its element was deleted");
    drop(section);
    e.v
}

#[test]
fn delete_waits_for_sleepable_readers() {
    let v = sleepable_reader_vs_delete(Mutations::default());
    assert!(v.is_empty(), "{:?}", v.snapshot());
}

#[test]
fn mutation_delete_with_reuse_now_is_caught() {
    let v = sleepable_reader_vs_delete(Mutations { delete_reuse_now: true, ..Default::default() });
    assert_eq!(v.kinds(), [ViolationKind::ReusedAccess], "{:?}", v.snapshot());
}

/// B11 / C5: map_free must wait for the Tasks-Trace callbacks that still use the map.
fn map_free_with_pending_callback(mutations: Mutations) -> Vec<String> {
    let e = env(TypeConfig::task_like(1).with_mutations(mutations));
    let a = e.ls.map_create(MapAttr::new(8)).unwrap();
    let o = owner(1);
    e.ls.update(0, &o, &a, None, BPF_ANY, false).unwrap();
    e.ls.update(0, &o, &a, None, BPF_ANY, false).unwrap(); // the old selem: a TT callback
    e.ls.map_free(0, a);
    e.d.tasks_trace.advance_until_quiet();
    e.d.rcu.advance_until_quiet();
    e.ls.check_invariants(&[o.as_ref()])
}

#[test]
fn map_free_barriers_cover_pending_frees() {
    let problems = map_free_with_pending_callback(Mutations::default());
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn mutation_dropping_the_tasks_trace_barrier_is_caught() {
    let problems = map_free_with_pending_callback(Mutations {
        map_free_skip_tasks_trace_barrier: true,
        ..Default::default()
    });
    assert!(problems.iter().any(|p| p.starts_with("I9:")), "{problems:?}");
}

/// B6: destroy must uncharge the socket.
fn socket_destroy(mutations: Mutations) -> Vec<String> {
    let e = env(TypeConfig::socket_like(1).with_mutations(mutations));
    let a = e.ls.map_create(MapAttr::new(8)).unwrap();
    let o: Arc<dyn Owner> = BasicOwner::socket_like(1, 1 << 20);
    e.ls.update(0, &o, &a, None, BPF_ANY, false).unwrap();
    assert!(e.ls.check_invariants(&[o.as_ref()]).is_empty());
    e.ls.destroy(0, o.as_ref());
    e.ls.check_invariants(&[o.as_ref()])
}

#[test]
fn destroy_uncharges() {
    assert!(socket_destroy(Mutations::default()).is_empty());
}

#[test]
fn mutation_destroy_without_uncharge_is_caught() {
    let problems = socket_destroy(Mutations { destroy_skips_uncharge: true, ..Default::default() });
    assert!(problems.iter().any(|p| p.starts_with("I7:")), "{problems:?}");
}

/// I11 / B11: special fields are released exactly once, and on the delete path only after the
/// Tasks-Trace grace period (a sleepable program may still use a uptr page).
fn fields_under_sleepable_reader(mutations: Mutations) -> (Result<(), String>, Vec<String>) {
    let e = env(TypeConfig::task_like(1).with_mutations(mutations));
    let layout = bpfls_local_storage::ValueLayout { kptrs: 1, uptrs: 1, ..Default::default() };
    let a = e.ls.map_create(MapAttr::new(16).with_layout(layout)).unwrap();
    let (o1, o2) = (owner(1), owner(2));
    e.ls.update(0, &o1, &a, None, BPF_ANY, false).unwrap();
    e.ls.update(0, &o2, &a, None, BPF_ANY, false).unwrap();
    let task = e.d.tasks_trace.register_task(100);
    let section = e.d.tasks_trace.read_lock(&task);
    let held = e.ls.lookup(0, o1.as_ref(), &a, false).unwrap();
    e.ls.delete(0, o1.as_ref(), &a).unwrap();
    let used = held.use_fields("sleepable program after delete");
    drop(section);
    e.ls.destroy(0, o1.as_ref());
    e.ls.destroy(0, o2.as_ref());
    e.ls.map_free(0, a);
    assert_eq!(e.ls.teardown().unwrap(), 0);
    (used, e.ls.check_invariants(&[]))
}

#[test]
fn special_fields_are_released_once_and_after_the_grace_period() {
    let (used, problems) = fields_under_sleepable_reader(Mutations::default());
    assert_eq!(used, Ok(()));
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn mutation_releasing_special_fields_before_the_grace_period_is_caught() {
    let (used, _) =
        fields_under_sleepable_reader(Mutations { free_fields_early: true, ..Default::default() });
    let err = used.unwrap_err();
    assert!(
        err.starts_with("I11: special fields of") && err.ends_with("used after release"),
        "{err}"
    );
}
