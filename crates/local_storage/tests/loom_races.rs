//! The design races of `kernel-semantics.md` §7 (R1–R4, R8; check C8) as loom models over the
//! real `LocalStorage` operations. Each model: main sets up one or two owners and one or two
//! maps of 8-byte values on a 2-CPU storage type (`loom_common::World`), spawns two threads
//! (CPU 0 and CPU 1), joins them, checks the outcome, and ends quiescent
//! (`World::finish`: destroy, `map_free`, teardown, nothing leaked, nothing charged, no
//! violation reported). [`Tally`] asserts that the interesting outcomes were explored.
//!
//! - **R1** `r1_first_storage_*`: two CPUs create the owner's first storage (`BPF_ANY`): the
//!   loser of the owner-pointer compare-and-swap gets `-EAGAIN`, or the second thread saw the
//!   first's storage and replaced its element; exactly one element stays visible.
//! - **R2** `r2_update_vs_delete_*`: replacing update (`BPF_ANY`) vs delete of the owner's only
//!   element: update returns the new element or `-EAGAIN` (the storage emptied under it);
//!   whatever is left is consistent.
//! - **R3 / C8** `r3_cached_lookup_vs_delete`: a caching lookup (reading the value inside its
//!   own RCU section) vs delete followed by `barrier_all()`: the read is legal, and afterwards
//!   the cache does not name the deleted element (a later caching lookup misses while the
//!   storage lives on through a second map's element).
//! - **R4** `r4_map_free_vs_destroy_*`: `map_free` vs the owner's destroy: each selem is freed
//!   once, the storage once, nothing leaks.
//! - **R8** `r8_flock_update_vs_delete`: the lockless `BPF_F_LOCK` in-place update vs delete +
//!   `barrier_all()`: a lost update is allowed, a use after free never.
//!
//! Models that need the deferred frees to run while a reader is inside its section use
//! `trace_implies_rcu = false` (the chained Tasks-Trace-then-RCU policy) or `true` (the
//! implied RCU grace period made explicit by `Domains::defer`).
//!
//! - `map_free_storage_reuse_vs_update_other_map`: map_free of the map that created an
//!   owner's storage vs an update of that owner through another map (and a third task creating
//!   another owner's storage on map_free's CPU).
//!
//! Three defects these models found, all fixed (the models failed before the fixes):
//!
//! 1. `map_free`'s bucket loop spun on a stale head without yielding when a concurrent destroy
//!    had already unlinked the first selem (R4: "Model exceeded maximum number of branches").
//!    It now calls `spin_wait()` when it made no progress.
//! 2. With `trace_implies_rcu = true`, a free "after Tasks-Trace" did not wait for normal RCU
//!    readers, because a `bpfls-rcu` Tasks-Trace grace period does not wait for them (the
//!    kernel's does, by implication). `Domains::defer` now makes the implied RCU grace period
//!    explicit (R3 with `trace_implies_rcu`).
//! 3. map_free's unlinks freed a storage for immediate reuse into the shared per-type pool
//!    while an update through another map still held it, so another owner's new storage could
//!    take the slot and the update landed in the wrong owner. Immediate storage reuse is now
//!    limited to destroy and never-published storages; map_free's goes through RCU.

#![cfg(loom)]

mod loom_common;

use bpfls_local_storage::flags::{BPF_ANY, BPF_F_LOCK};
use bpfls_local_storage::{Errno, Mutations, ValueLayout};
use bpfls_mem_alloc::Handle;
use bpfls_rcu::Config;
use bpfls_sync::atomic::{AtomicUsize, Ordering};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict, WaitVerdict};
use bpfls_sync::{Arc, Condvar, Mutex, thread};
use loom_common::{Kind, Tally, World, check, expect_failure, owner, val};

// ----- R1 -------------------------------------------------------------------------------------

/// R1: two threads `update(BPF_ANY)` the same owner, which has no storage yet.
fn r1(kind: Kind, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = Arc::new(World::new(kind, 1, ValueLayout::default(), true));
        let (basic, o) = owner(1);
        let spawn_update = |cpu: u32, x: u8| {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                w.ls.update(cpu, &o, &w.maps[0], Some(&val(x)), BPF_ANY, false).map(|s| s.handle())
            })
        };
        let t1 = spawn_update(0, 1);
        let t2 = spawn_update(1, 2);
        let r = [t1.join().unwrap(), t2.join().unwrap()];
        let (h, v) = w.visible(0, o.as_ref(), "R1").expect("R1: no element after two creates");
        match r {
            [Ok(a), Ok(b)] => {
                // The second saw the first's storage and replaced its element.
                assert!(h == a || h == b, "R1: visible {h} is neither {a} nor {b}");
                let (loser, x) = if h == a { (b, 1) } else { (a, 2) };
                assert_eq!(v, val(x), "R1: the visible element has the other update's value");
                assert_eq!(w.links(0, loser), 0, "R1: the replaced element is still linked");
                tally.hit("both_ok_second_replaced_first");
            }
            [Ok(a), Err(Errno::EAGAIN)] | [Err(Errno::EAGAIN), Ok(a)] => {
                let x = if r[0].is_ok() { 1 } else { 2 };
                assert_eq!(h, a, "R1: the visible element is not the winner's");
                assert_eq!(v, val(x), "R1: the winner's value was lost");
                tally.hit(if x == 1 { "cpu1_lost_eagain" } else { "cpu0_lost_eagain" });
            }
            other => panic!("R1: unexpected results {other:?}"),
        }
        w.finish(&[&basic], &[0], "R1");
    }
}

fn r1_model(name: &str, kind: Kind) {
    let tally = Tally::default();
    check(name, r1(kind, &tally));
    tally.require(name, &["both_ok_second_replaced_first", "cpu0_lost_eagain", "cpu1_lost_eagain"]);
}

#[test]
fn r1_first_storage_task() {
    r1_model("r1_first_storage_task", Kind::Task);
}

#[test]
fn r1_first_storage_socket() {
    r1_model("r1_first_storage_socket", Kind::Socket);
}

// ----- R2 -------------------------------------------------------------------------------------

/// Checks the state after an update (`res`) raced with a delete of the original element `e`:
/// what is visible is the update's element or nothing, and nothing else is linked.
fn after_update_vs_delete(
    w: &World,
    o: &dyn bpfls_local_storage::Owner,
    e: Handle,
    res: Result<Handle, Errno>,
    x: u8,
    what: &str,
) -> &'static str {
    let visible = w.visible(0, o, what);
    match (&visible, res) {
        (Some((h, v)), Ok(n)) => {
            assert_eq!(*h, n, "{what}: the visible element is not the update's");
            assert_eq!(*v, val(x), "{what}: the visible element lost the update's value");
            if n != e {
                assert_eq!(w.links(0, e), 0, "{what}: the original element is still linked");
            }
            "update_survived"
        }
        (Some((h, _)), Err(err)) => panic!("{what}: update failed with {err:?} but {h} is visible"),
        (None, res) => {
            assert!(!World::has_storage(o), "{what}: no element, but the owner has a storage");
            assert_eq!(w.links(0, e), 0, "{what}: the original element is still linked");
            match res {
                Ok(n) => {
                    assert_eq!(w.links(0, n), 0, "{what}: the update's element is linked");
                    "update_then_deleted"
                }
                Err(_) => "update_eagain",
            }
        }
    }
}

/// R2: `update(BPF_ANY)` replacing the owner's only element vs delete of it.
fn r2(kind: Kind, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let w = Arc::new(World::new(kind, 1, ValueLayout::default(), true));
        let (basic, o) = owner(1);
        let e = w.ls.update(0, &o, &w.maps[0], Some(&val(1)), BPF_ANY, false).unwrap().handle();
        let updater = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                w.ls.update(0, &o, &w.maps[0], Some(&val(2)), BPF_ANY, false).map(|s| s.handle())
            })
        };
        let deleter = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || w.ls.delete(1, o.as_ref(), &w.maps[0]))
        };
        let up = updater.join().unwrap();
        let del = deleter.join().unwrap();
        assert!(matches!(up, Ok(_) | Err(Errno::EAGAIN)), "R2: update returned {up:?}");
        assert!(matches!(del, Ok(()) | Err(Errno::ENOENT)), "R2: delete returned {del:?}");
        if del.is_err() {
            tally.hit("delete_enoent");
        }
        tally.hit(after_update_vs_delete(&w, o.as_ref(), e, up, 2, "R2"));
        w.finish(&[&basic], &[0], "R2");
    }
}

fn r2_model(name: &str, kind: Kind) {
    let tally = Tally::default();
    check(name, r2(kind, &tally));
    tally.require(name, &["update_survived", "update_then_deleted", "update_eagain"]);
}

#[test]
fn r2_update_vs_delete_task() {
    r2_model("r2_update_vs_delete_task", Kind::Task);
}

#[test]
fn r2_update_vs_delete_socket() {
    r2_model("r2_update_vs_delete_socket", Kind::Socket);
}

// ----- R3 / C8 --------------------------------------------------------------------------------

/// R3 / C8: the owner has `e0` in map 0 and `e1` in map 1 (so its storage outlives the
/// delete). Thread 1 (CPU 0), inside its own RCU section, does a caching lookup of map 0 and
/// reads what it got; thread 2 (CPU 1) deletes `e0` and runs `barrier_all()` (the deferred
/// free may run as soon as the grace periods allow).
fn r3(
    trace_implies_rcu: bool,
    mutations: Mutations,
    tally: &Tally,
) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let layout = ValueLayout::default();
        let w = Arc::new(World::build(Kind::Task, 2, layout, trace_implies_rcu, mutations));
        let (basic, o) = owner(1);
        let e0 = w.ls.update(0, &o, &w.maps[0], Some(&val(1)), BPF_ANY, false).unwrap().handle();
        let e1 = w.ls.update(0, &o, &w.maps[1], Some(&val(7)), BPF_ANY, false).unwrap().handle();
        let reader = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                let _rcu = w.domains.rcu.read_lock(0);
                let s = w.ls.lookup(0, o.as_ref(), &w.maps[0], true)?;
                assert_eq!(s.handle(), e0, "R3: the lookup found something else");
                let v = s.read("R3: reader").unwrap_or_else(|e| {
                    panic!("R3: reading inside the RCU section that found it: {e:?}")
                });
                assert_eq!(v, val(1), "R3: the reader saw a foreign value");
                Some(())
            })
        };
        let deleter = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                w.ls.delete(1, o.as_ref(), &w.maps[0]).expect("R3: delete of a present element");
                w.domains.barrier_all();
            })
        };
        let found = reader.join().unwrap().is_some();
        deleter.join().unwrap();
        tally.hit(if found { "reader_found" } else { "reader_missed" });
        w.assert_invariants(&[o.as_ref()], "R3");
        assert!(World::has_storage(o.as_ref()), "R3: e1 keeps the storage");
        assert!(w.visible(0, o.as_ref(), "R3").is_none(), "R3: e0 still visible");
        // The cache fast path must not return the deleted element.
        let cached = w.ls.lookup(0, o.as_ref(), &w.maps[0], true);
        assert!(cached.is_none(), "R3/C8: the cache still names the deleted e0: {cached:?}");
        let (h1, v1) = w.visible(1, o.as_ref(), "R3").expect("R3: e1 vanished");
        assert_eq!((h1, v1), (e1, val(7)), "R3: e1 changed");
        // And the cached lookup of map 1 (caching e1) still works.
        let c1 = w.ls.lookup(0, o.as_ref(), &w.maps[1], true).expect("R3: e1 not found");
        assert_eq!(c1.handle(), e1);
        w.finish(&[&basic], &[0, 1], "R3");
    }
}

#[test]
fn r3_cached_lookup_vs_delete() {
    let name = "r3_cached_lookup_vs_delete";
    let tally = Tally::default();
    check(name, r3(false, Mutations::default(), &tally));
    tally.require(name, &["reader_found", "reader_missed"]);
}

/// C8 mutation: without the "still linked" recheck under S, a caching lookup that found `e0`
/// just before the delete unlinked it publishes the dead element in the cache; the model must
/// catch it (the later caching lookup returns it, or the I6 check names it).
#[test]
fn r3_cached_lookup_vs_delete_without_recheck_is_caught() {
    let mutations = Mutations { skip_cache_recheck: true, ..Mutations::default() };
    expect_failure(
        "r3_cached_lookup_vs_delete_without_recheck_is_caught",
        r3(false, mutations, &Tally::default()),
    );
}

/// Found a defect, now fixed (see the file's docs): with `trace_implies_rcu = true` the delete path frees
/// with `ReclaimPolicy::AfterTasksTrace`, which in `bpfls-rcu` waits for Tasks-Trace readers
/// only, so the legal read of a non-sleepable (RCU) reader is reported as a use after free
/// once anything drives a Tasks-Trace grace period (here the deleter's `barrier_all()`).
#[test]
fn r3_cached_lookup_vs_delete_trace_implies_rcu() {
    let name = "r3_cached_lookup_vs_delete_trace_implies_rcu";
    let tally = Tally::default();
    check(name, r3(true, Mutations::default(), &tally));
    tally.require(name, &["reader_found", "reader_missed"]);
}

// ----- R4 -------------------------------------------------------------------------------------

/// R4: the owner holds one element of map 0; thread 1 (CPU 0) destroys the owner while
/// thread 2 (CPU 1) frees the map. Each selem and the storage must be freed exactly once
/// (no `DoubleFree` / `UseAfterFree`), nothing may leak, nothing stay charged.
fn r4(kind: Kind) -> impl Fn() + Sync + Send + 'static {
    move || {
        let w = Arc::new(World::new(kind, 1, ValueLayout::default(), true));
        let (basic, o) = owner(1);
        let e = w.ls.update(0, &o, &w.maps[0], Some(&val(1)), BPF_ANY, false).unwrap().handle();
        let destroyer = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || w.ls.destroy(0, o.as_ref()))
        };
        let freer = {
            let w = w.clone();
            thread::spawn(move || w.ls.map_free(1, w.maps[0].clone()))
        };
        destroyer.join().unwrap();
        freer.join().unwrap();
        assert!(!World::has_storage(o.as_ref()), "R4: the owner still points at a storage");
        assert_eq!(w.links(0, e), 0, "R4: the element is still linked");
        w.finish(&[&basic], &[], "R4");
    }
}

/// Found a defect, now fixed (see the file's docs): `map_free`'s bucket drain loop never yields, so
/// once a concurrent destroy has unlinked the bucket's first selem, loom may let `map_free`
/// re-read the stale bucket head forever ("Model exceeded maximum number of branches"). With a
/// `spin_wait()` in that loop (tried on a scratch copy) this model passes: 1 285 executions.
#[test]
fn r4_map_free_vs_destroy_task() {
    check("r4_map_free_vs_destroy_task", r4(Kind::Task));
}

/// As [`r4_map_free_vs_destroy_task`] on a kmalloc type (1 269 executions once fixed).
#[test]
fn r4_map_free_vs_destroy_socket() {
    check("r4_map_free_vs_destroy_socket", r4(Kind::Socket));
}

// ----- R8 -------------------------------------------------------------------------------------

/// R8: a map whose value has a `bpf_spin_lock`; the owner holds `e`. Thread 1 (CPU 0), inside
/// its own RCU section, updates with `BPF_F_LOCK` (in place, no storage lock) and reads the
/// element it got back; thread 2 (CPU 1) deletes `e` and runs `barrier_all()`.
fn r8(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let layout = ValueLayout { spin_lock: true, ..Default::default() };
        let w = Arc::new(World::new(Kind::Task, 1, layout, false));
        let (basic, o) = owner(1);
        let e = w.ls.update(0, &o, &w.maps[0], Some(&val(1)), BPF_ANY, false).unwrap().handle();
        let updater = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                let _rcu = w.domains.rcu.read_lock(0);
                let s = w.ls.update(0, &o, &w.maps[0], Some(&val(2)), BPF_F_LOCK, false)?;
                let v = s.read("R8: updater").unwrap_or_else(|e| {
                    panic!("R8: reading the updated element inside the section: {e:?}")
                });
                // A concurrent create cannot change it: only this thread writes value 2.
                assert_eq!(v, val(2), "R8: the update's value is not there");
                Ok(s.handle())
            })
        };
        let deleter = {
            let (w, o) = (w.clone(), o.clone());
            thread::spawn(move || {
                w.ls.delete(1, o.as_ref(), &w.maps[0]).expect("R8: delete of a present element");
                w.domains.barrier_all();
            })
        };
        let up: Result<Handle, Errno> = updater.join().unwrap();
        deleter.join().unwrap();
        assert!(matches!(up, Ok(_) | Err(Errno::EAGAIN)), "R8: update returned {up:?}");
        let outcome = after_update_vs_delete(&w, o.as_ref(), e, up, 2, "R8");
        tally.hit(match (outcome, up) {
            ("update_then_deleted", Ok(h)) if h == e => "lost_update_in_place",
            ("update_survived", _) => "recreated_after_delete",
            (o, _) => o,
        });
        w.finish(&[&basic], &[0], "R8");
    }
}

#[test]
fn r8_flock_update_vs_delete() {
    let name = "r8_flock_update_vs_delete";
    let tally = Tally::default();
    check(name, r8(&tally));
    tally.require(name, &["lost_update_in_place", "recreated_after_delete", "update_eagain"]);
}

// ----- map_free's immediate storage reuse vs another map's update ------------------------------

/// Watches the RCU domain: counts grace periods started and flags a grace-period waiter that
/// is blocked by a reader once the second one has started (map_free's second
/// `synchronize_rcu()`; only the map_free thread runs grace periods before the joins).
struct SecondGpBlocked {
    starts: AtomicUsize,
    /// (map_free blocked in its second grace period, map_free returned), under the lock.
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl SecondGpBlocked {
    fn set(&self, f: impl FnOnce(&mut (bool, bool))) {
        f(&mut self.state.lock());
        self.cv.notify_all();
    }

    /// Blocks (no spinning: loom would alternate two yielding waiters forever) until
    /// map_free waits in its second grace period or has returned.
    fn wait_for_cpu1(&self) {
        let mut g = self.state.lock();
        while !(g.0 || g.1) {
            g = self.cv.wait(g);
        }
    }
}

impl ProbeHook for SecondGpBlocked {
    fn hit(&self, event: &ProbeEvent<'_>) -> Verdict {
        if event.site == "gp_start" {
            self.starts.fetch_add(1, Ordering::AcqRel);
        }
        Verdict::Continue
    }

    fn wait(&self, event: &ProbeEvent<'_>) -> WaitVerdict {
        if event.site == "gp_wait" && self.starts.load(Ordering::Acquire) >= 2 {
            self.set(|s| s.0 = true);
        }
        bpfls_sync::spin_wait();
        WaitVerdict::Retry
    }
}

/// Owner 1 holds one element, of map 0 (which therefore created its storage S1). Thread 1
/// (CPU 0) updates owner 1's element of map 1 (`BPF_ANY`); thread 2 (CPU 1) frees map 0. Main
/// (standing for another task on CPU 1, which runs while map_free sleeps in its second
/// `synchronize_rcu()`, or after map_free) then creates owner 2's first storage with an
/// element of map 1.
///
/// The kernel frees S1 with `reuse_now = true` into map 0's `storage_ma`, which nobody can
/// allocate from any more; thread 1, still inside its RCU section with S1 in hand, finds it
/// empty under its lock (`-EAGAIN`) or never sees it emptied. Whatever happens, owner 1's
/// element of map 1 exists iff the update returned it, and owner 2's element keeps owner 2's
/// value.
fn map_free_vs_update_other_map(tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let hook = std::sync::Arc::new(SecondGpBlocked {
            starts: AtomicUsize::new(0),
            state: Mutex::new((false, false)),
            cv: Condvar::new(),
        });
        let rcu = Config::threaded().with_probes(Probes::with_hook(hook.clone()));
        let layout = ValueLayout::default();
        let w =
            Arc::new(World::build_with_rcu(Kind::Task, 2, layout, true, Mutations::default(), rcu));
        let (basic1, o1) = owner(1);
        let (basic2, o2) = owner(2);
        w.ls.update(0, &o1, &w.maps[0], Some(&val(1)), BPF_ANY, false).unwrap();
        let updater = {
            let (w, o1) = (w.clone(), o1.clone());
            thread::spawn(move || {
                w.ls.update(0, &o1, &w.maps[1], Some(&val(9)), BPF_ANY, false).map(|s| s.handle())
            })
        };
        let freer = {
            let (w, hook) = (w.clone(), hook.clone());
            thread::spawn(move || {
                w.ls.map_free(1, w.maps[0].clone());
                hook.set(|s| s.1 = true);
            })
        };
        // CPU 1 is free while map_free waits for a reader, or once it returned.
        hook.wait_for_cpu1();
        let created = w.ls.update(1, &o2, &w.maps[1], Some(&val(5)), BPF_ANY, false);
        let up = updater.join().unwrap();
        freer.join().unwrap();
        let created = created.expect("owner 2's first element").handle();
        let (h2, v2) = w.visible(1, o2.as_ref(), "storage reuse").expect("owner 2's element");
        assert_eq!(
            (h2, v2),
            (created, val(5)),
            "owner 2's element of map 1 was replaced by owner 1's update ({up:?})"
        );
        let mine = w.visible(1, o1.as_ref(), "storage reuse");
        match up {
            Ok(h) => {
                assert_eq!(mine, Some((h, val(9))), "owner 1's update returned {h} but is lost");
                tally.hit("update_ok");
            }
            Err(Errno::EAGAIN) => {
                assert_eq!(mine, None, "owner 1 has an element it did not create");
                tally.hit("update_eagain");
            }
            Err(e) => panic!("owner 1's update: {e:?}"),
        }
        w.assert_invariants(&[o1.as_ref(), o2.as_ref()], "storage reuse");
        w.finish(&[&basic1, &basic2], &[1], "storage reuse");
    }
}

/// Found a defect, now fixed (see the file's docs): the simulator's storages come from one per-type
/// pool (ADR 0002 §4), so the `reuse_now` storage free of map_free makes S1 immediately
/// reusable by *any* storage creation on that CPU, while another map's updater still holds it.
#[test]
fn map_free_storage_reuse_vs_update_other_map() {
    let name = "map_free_storage_reuse_vs_update_other_map";
    let tally = Tally::default();
    check(name, map_free_vs_update_other_map(&tally));
    tally.require(name, &["update_ok", "update_eagain"]);
}
