//! Stepped mode: seeded schedules are deterministic, lock waits are not deadlocks, and a real
//! deadlock (a CPU waiting for a grace period its own read-side section blocks) is reported.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{
    Action, CpuBody, GRACE_PERIODS, GpDomain, Kernel, MapType, ResultExt, RunReport, Schedule,
    Stepper,
};
use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE};
use bpfls_local_storage::{Errno, MapAttr, Mutations};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
use std::sync::{Arc, Mutex, OnceLock};

/// What one contended run did: the report, each CPU's syscall results, and what was left.
type Outcome = (RunReport, Vec<Vec<Result<(), Errno>>>, Vec<Vec<u8>>);

/// One CPU's syscall results, shared with its body.
type CpuLog = Arc<Mutex<Vec<Result<(), Errno>>>>;

/// Two CPUs updating, reading and deleting the same task's storage in two maps. The kernel's
/// races show as errors, not failures: the loser of the storage-allocation race and an update
/// that meets the last delete get `-EAGAIN`, a lookup after the other CPU's delete `-ENOENT`.
fn contended_run(schedule: Schedule) -> Outcome {
    let stepper = Stepper::new(schedule);
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let maps: Vec<i32> =
        (0..2).map(|_| k.map_create(MapType::Task, MapAttr::new(8)).unwrap()).collect();
    let (_, pidfd) = k.task_spawn();
    let results: Vec<CpuLog> = (0..2).map(|_| Arc::default()).collect();
    let bodies: Vec<CpuBody> = (0..2u32)
        .map(|cpu| {
            let k = k.clone();
            let maps = maps.clone();
            let out = results[cpu as usize].clone();
            Box::new(move || {
                let mut out = out.lock().unwrap();
                for round in 0..3u8 {
                    for &m in &maps {
                        let v = [cpu as u8 * 10 + round; 8];
                        let r = k.map_update_elem(cpu, m, pidfd, &v, BPF_ANY).errno();
                        assert!(matches!(r, Ok(()) | Err(Errno::EAGAIN)), "update: {r:?}");
                        out.push(r);
                        let r = k.map_lookup_elem(cpu, m, pidfd).map(drop).errno();
                        assert!(matches!(r, Ok(()) | Err(Errno::ENOENT)), "lookup: {r:?}");
                        out.push(r);
                    }
                }
                let r = k.map_delete_elem(cpu, maps[cpu as usize], pidfd).errno();
                assert!(matches!(r, Ok(()) | Err(Errno::ENOENT)), "delete: {r:?}");
                out.push(r);
            }) as CpuBody
        })
        .collect();
    let report = stepper.run(bodies);
    let results = results.iter().map(|r| r.lock().unwrap().clone()).collect();
    let mut left = Vec::new();
    for &m in &maps {
        if let Ok(v) = k.map_lookup_elem(0, m, pidfd) {
            left.push(v);
        }
    }
    k.task_exit(0, pidfd).unwrap();
    for m in maps {
        k.close(0, m).unwrap();
    }
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
    (report, results, left)
}

#[test]
fn a_seed_replays_the_same_interleaving() {
    let mut distinct = std::collections::BTreeSet::new();
    let (mut eagain, mut waits) = (0, 0);
    for seed in 0..16 {
        let a = contended_run(Schedule::Random(seed));
        let b = contended_run(Schedule::Random(seed));
        assert_eq!(a, b, "seed {seed} replays");
        assert!(!a.0.deadlock, "seed {seed}: {:?}", a.0.results);
        assert!(a.0.results.iter().all(Result::is_ok), "seed {seed}: {:?}", a.0.results);
        eagain += a.1.iter().flatten().filter(|r| **r == Err(Errno::EAGAIN)).count();
        waits += a.0.events.iter().filter(|e| e.1 == "lock_wait").count();
        distinct.insert(a.0.events);
    }
    assert!(waits > 0, "some seed makes a CPU wait for the storage lock held by the other");
    assert!(distinct.len() > 1, "different seeds explore different interleavings");
    assert!(eagain > 0, "some seed reaches the storage-allocation race");
}

#[test]
fn a_script_switches_where_it_says() {
    // Decision points alternate CPUs; the events show CPU 1 running before CPU 0 finished.
    let (report, _, _) = contended_run(Schedule::Script(vec![1, 0, 1, 0, 1, 0]));
    assert!(report.results.iter().all(Result::is_ok), "{:?}", report.results);
    let first_cpu1 = report.events.iter().position(|e| e.0 == 1).expect("cpu 1 ran");
    let last_cpu0 = report.events.iter().rposition(|e| e.0 == 0).expect("cpu 0 ran");
    assert!(first_cpu1 < last_cpu0, "interleaved: {:?}", report.events);
}

#[test]
fn waiting_for_your_own_grace_period_is_reported_as_a_deadlock() {
    let stepper = Stepper::new(Schedule::Random(7));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let bodies: Vec<CpuBody> = vec![
        {
            let k = k.clone();
            Box::new(move || {
                let _reader = k.domains().rcu.read_lock(0);
                k.domains().rcu.synchronize(); // B-class bug: synchronize_rcu() under rcu_read_lock()
            })
        },
        Box::new(|| {}),
    ];
    let report = stepper.run(bodies);
    assert!(report.deadlock, "{report:?}");
    let msg = report.results[0].as_ref().unwrap_err();
    assert!(msg.contains("can never"), "{msg}");
    assert!(report.results[1].is_ok());
    assert_eq!(
        report.wait_for,
        ["body 0 (CPU 0, Task) waits for a grace period that cannot end"],
        "nothing else is blocked, and a grace period is not a body: no cycle"
    );
}

/// A tracing program on the `selem_link` probe point (inside update, with the storage lock
/// held) that deletes the same task's element on the same CPU: bug zoo B3's shape.
#[derive(Default)]
struct Reenter {
    kernel: OnceLock<Arc<Kernel>>,
    target: OnceLock<(i32, i32)>,
    /// `Some(None)`: the nested delete started and has not returned.
    result: Mutex<Option<Option<Result<(), Errno>>>>,
}

impl ProbeHook for Reenter {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        let (Some(k), Some(&(map, task))) = (self.kernel.get(), self.target.get()) else {
            return Verdict::Continue;
        };
        if e.site != "selem_link" || self.result.lock().unwrap().is_some() {
            return Verdict::Continue;
        }
        *self.result.lock().unwrap() = Some(None);
        let r =
            k.run_prog_as(e.cpu.unwrap_or(0), false, true, |p| p.storage_delete(map, task).errno());
        *self.result.lock().unwrap() = Some(Some(r));
        Verdict::Continue
    }
}

fn reentrant_update(guard: bool) -> (RunReport, Option<Option<Result<(), Errno>>>) {
    let tracer = Arc::new(Reenter::default());
    let stepper = Stepper::with_tracer(Schedule::Random(1), tracer.clone());
    let builder = Kernel::builder().cpus(2).stepped(&stepper);
    let builder = if guard { builder } else { builder.without_busy_counter() };
    let k = Arc::new(builder.build());
    let _ = tracer.kernel.set(k.clone());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    let _ = tracer.target.set((map, task));
    let kk = k.clone();
    let bodies: Vec<CpuBody> = vec![
        Box::new(move || kk.map_update_elem(0, map, task, &[2; 8], BPF_ANY).unwrap()),
        Box::new(|| {}),
    ];
    let report = stepper.run(bodies);
    let result = *tracer.result.lock().unwrap();
    (report, result)
}

#[test]
fn the_busy_counter_turns_a_reentrant_delete_into_ebusy() {
    let (report, nested) = reentrant_update(true);
    assert!(!report.deadlock, "{report:?}");
    assert!(report.results.iter().all(Result::is_ok), "{:?}", report.results);
    assert_eq!(nested, Some(Some(Err(Errno::EBUSY))), "the element exists: -EBUSY, not a deadlock");
}

#[test]
fn without_the_busy_counter_a_reentrant_delete_is_an_aa_deadlock() {
    // B3 before bc235cdb423a: the nested delete spins on the storage lock its own CPU holds.
    let (report, nested) = reentrant_update(false);
    assert!(report.deadlock, "{report:?}");
    let msg = report.results[0].as_ref().unwrap_err();
    assert!(msg.contains("deadlock") && msg.contains("storage_lock"), "{msg}");
    assert_eq!(nested, Some(None), "the nested delete never returned");
    // The wait-for cycle: CPU 0 waits for the storage lock it holds itself (AA).
    assert_eq!(report.wait_for.len(), 2, "{:?}", report.wait_for);
    assert!(
        report.wait_for[0].starts_with("body 0 (CPU 0, Task) waits for the storage lock of")
            && report.wait_for[0].ends_with("which it holds"),
        "{:?}",
        report.wait_for
    );
    assert_eq!(report.wait_for[1], "cycle: body 0 -> body 0");
}

/// Runs `a` on CPU 0 and `b` on CPU 1 under `script`; the two syscall results.
fn two_cpus(
    k: &Arc<Kernel>,
    stepper: &Arc<Stepper>,
    a: impl FnOnce(&Kernel) -> Result<(), Errno> + Send + 'static,
    b: impl FnOnce(&Kernel) -> Result<(), Errno> + Send + 'static,
) -> (RunReport, [Result<(), Errno>; 2]) {
    let (o0, o1): (CpuLog, CpuLog) = (Arc::default(), Arc::default());
    let (k0, k1, w0, w1) = (k.clone(), k.clone(), o0.clone(), o1.clone());
    let bodies: Vec<CpuBody> = vec![
        Box::new(move || {
            let r = a(&k0);
            w0.lock().unwrap().push(r);
        }),
        Box::new(move || {
            let r = b(&k1);
            w1.lock().unwrap().push(r);
        }),
    ];
    let report = stepper.run(bodies);
    assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
    let r = [o0.lock().unwrap()[0], o1.lock().unwrap()[0]];
    (report, r)
}

#[test]
fn script_reproduces_r1_the_storage_allocation_race() {
    // CPU 0 runs until it allocates its selem (it has seen no storage, and its own is not yet
    // published); CPU 1 creates the task's storage; CPU 0's compare-and-swap then loses.
    let stepper = Stepper::new(Schedule::Plan(vec![
        Action::Until(0, "selem_alloc".into()),
        Action::ToEnd(1),
        Action::ToEnd(0),
    ]));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    let (report, r) = two_cpus(
        &k,
        &stepper,
        move |k| k.map_update_elem(0, map, task, &[0; 8], BPF_ANY).errno(),
        move |k| k.map_update_elem(1, map, task, &[1; 8], BPF_ANY).errno(),
    );
    assert_eq!(r, [Err(Errno::EAGAIN), Ok(())], "{:?}", report.events);
    assert_eq!(k.map_lookup_elem(0, map, task).unwrap(), vec![1; 8]);
    k.task_exit(0, task).unwrap();
    k.close(0, map).unwrap();
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

#[test]
fn script_reproduces_r2_update_meets_the_last_delete() {
    // The task's storage holds one element (map A). CPU 0 adds an element of map B and stops
    // when it allocates (after finding the storage, before taking S); CPU 1 deletes the last
    // element, which frees the storage; CPU 0 then finds the list empty under S: -EAGAIN.
    let stepper = Stepper::new(Schedule::Plan(vec![
        Action::Until(0, "selem_alloc".into()),
        Action::ToEnd(1),
        Action::ToEnd(0),
    ]));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let (ma, mb) = (
        k.map_create(MapType::Task, MapAttr::new(8)).unwrap(),
        k.map_create(MapType::Task, MapAttr::new(8)).unwrap(),
    );
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, ma, task, &[7; 8], BPF_ANY).unwrap();
    let (report, r) = two_cpus(
        &k,
        &stepper,
        move |k| k.map_update_elem(0, mb, task, &[0; 8], BPF_ANY).errno(),
        move |k| k.map_delete_elem(1, ma, task).errno(),
    );
    assert_eq!(r, [Err(Errno::EAGAIN), Ok(())], "{:?}", report.events);
    assert_eq!(k.map_lookup_elem(0, mb, task).errno(), Err(Errno::ENOENT), "nothing half-linked");
    k.map_update_elem(0, mb, task, &[3; 8], BPF_ANY).unwrap(); // a retry succeeds
    k.task_exit(0, task).unwrap();
    k.close(0, ma).unwrap();
    k.close(0, mb).unwrap();
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

/// What the seeded explorer found in one run: invariant problems and checker violations.
fn explore_once(seed: u64, mutations: Mutations) -> Vec<String> {
    let stepper = Stepper::new(Schedule::Random(seed));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).mutations(mutations).build());
    let (ma, mb) = (
        k.map_create(MapType::Task, MapAttr::new(8)).unwrap(),
        k.map_create(MapType::Task, MapAttr::new(8)).unwrap(),
    );
    let (_, t1) = k.task_spawn();
    let (_, t2) = k.task_spawn();
    for (m, t) in [(ma, t1), (mb, t1), (ma, t2)] {
        k.map_update_elem(0, m, t, &[1; 8], BPF_ANY).unwrap();
    }
    let (k0, k1) = (k.clone(), k.clone());
    let bodies: Vec<CpuBody> = vec![
        // Programs on CPU 0: read through the lookup cache, create, read again.
        Box::new(move || {
            k0.run_prog(0, false, |p| {
                if let Some(v) = p.storage_get(ma, t1, None, 0) {
                    let _ = v.read("explore: first read");
                }
            });
            k0.run_prog(0, false, |p| {
                if let Some(v) = p.storage_get(mb, t2, None, F_CREATE) {
                    let _ = v.write("explore: create", &[2; 8]);
                }
            });
            k0.run_prog(0, false, |p| {
                if let Some(v) = p.storage_get(ma, t1, None, 0) {
                    let _ = v.read("explore: second read");
                }
            });
        }),
        // Syscalls on CPU 1: delete, exit a task, free a map.
        Box::new(move || {
            let _ = k1.map_delete_elem(1, ma, t1);
            k1.task_exit(1, t2).unwrap();
            k1.close(1, mb).unwrap();
        }),
    ];
    let report = stepper.run(bodies);
    let mut found = k.check_invariants();
    found.extend(report.results.iter().filter_map(|r| r.clone().err()));
    found.extend(k.violations().snapshot().iter().map(|v| format!("{v:?}")));
    found
}

#[test]
fn a_thousand_seeds_find_no_violation_and_catch_the_removed_cache_recheck() {
    for seed in 0..1000 {
        let found = explore_once(seed, Mutations::default());
        assert!(found.is_empty(), "seed {seed}: {found:?}");
    }
    // C8: without the recheck under S, a lookup racing with a delete caches an unlinked selem.
    let mutated = Mutations { skip_cache_recheck: true, ..Mutations::default() };
    let caught = (0..1000).find(|&seed| !explore_once(seed, mutated).is_empty());
    let seed = caught.expect("no seed of 1000 caught the removed recheck");
    // The stale slot shows as I6 (cache points at an unlinked selem) while the storage lives,
    // or as I15 (storage freed with a slot set) once the map's free released the storage.
    let found = explore_once(seed, mutated);
    assert!(found.iter().any(|p| p.starts_with("I6:") || p.starts_with("I15:")), "{found:?}");
    eprintln!("removed recheck caught first by seed {seed}: {found:?}");
}

#[test]
fn pct_depth_one_never_preempts_and_depth_two_finds_the_allocation_race() {
    let eagain = |o: &Outcome| o.1.iter().flatten().filter(|r| **r == Err(Errno::EAGAIN)).count();
    let steps = contended_run(Schedule::Random(0)).0.events.len() as u64;
    let (mut deep, mut runs_deep) = (0, 0);
    for seed in 0..32 {
        let one = contended_run(Schedule::Pct { seed, depth: 1, steps });
        assert!(one.0.results.iter().all(Result::is_ok), "{:?}", one.0.results);
        assert_eq!(eagain(&one), 0, "depth 1 runs one CPU to its end: no race, seed {seed}");
        let two = contended_run(Schedule::Pct { seed, depth: 2, steps });
        assert_eq!(two, contended_run(Schedule::Pct { seed, depth: 2, steps }), "replays");
        assert!(two.0.results.iter().all(Result::is_ok), "{:?}", two.0.results);
        deep += eagain(&two);
        runs_deep += usize::from(eagain(&two) > 0);
    }
    assert!(deep > 0, "one priority change point reaches R1/R2 for some seed");
    eprintln!("PCT depth 2: {runs_deep} of 32 seeds lose a race ({deep} -EAGAIN)");
}

/// A program (sleepable or not) holds a value while CPU 1 deletes it and the grace periods are
/// driven by the plan: "run body 0 until it holds the value, body 1 to its end, end every RCU
/// grace period, try Tasks-Trace, then body 0 to its end, then Tasks-Trace and RCU again".
fn planned_hold(
    mutations: Mutations,
    sleepable: bool,
) -> (RunReport, Result<Vec<u8>, String>, Arc<Kernel>) {
    let plan = vec![
        Action::Until(0, "prog_hold".into()),
        Action::ToEnd(1),
        Action::Quiesce(GpDomain::Rcu),
        Action::Quiesce(GpDomain::TasksTrace),
        Action::ToEnd(0),
        Action::Quiesce(GpDomain::TasksTrace),
        Action::Quiesce(GpDomain::Rcu),
    ];
    let stepper = Stepper::new(Schedule::Plan(plan));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).mutations(mutations).build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[6; 8], BPF_ANY).unwrap();
    let read = Arc::new(Mutex::new(Err(String::new())));
    let (k0, k1, out) = (k.clone(), k.clone(), read.clone());
    let bodies: Vec<CpuBody> = vec![
        Box::new(move || {
            *out.lock().unwrap() = k0.run_prog(0, sleepable, |p| {
                let v = p.storage_get(map, task, None, 0).expect("present");
                p.hold();
                v.read("sleepable program after the delete").map_err(|e| format!("{e:?}"))
            });
        }),
        Box::new(move || k1.map_delete_elem(1, map, task).unwrap()),
    ];
    let report = stepper.run(bodies);
    let read = read.lock().unwrap().clone();
    (report, read, k)
}

#[test]
fn a_plan_pauses_at_a_probe_point_and_drives_the_grace_periods() {
    let (report, read, k) = planned_hold(Mutations::default(), true);
    assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
    assert_eq!(read, Ok(vec![6; 8]), "the deleted element lives until the reader leaves");
    let pos = |body: usize, site: &str| {
        report.events.iter().position(|e| *e == (body, site)).unwrap_or_else(|| {
            panic!("no ({body}, {site}) in {:?}", report.events);
        })
    };
    // Body 0 stopped at its hold; body 1 ran to its end meanwhile; the grace periods the plan
    // asked for ran before body 0 resumed, and the last ones after it ended.
    let (hold, end1, end0) = (pos(0, "prog_hold"), pos(1, "body_end"), pos(0, "body_end"));
    assert!(hold < end1 && end1 < end0, "{:?}", report.events);
    let gp = |range: std::ops::Range<usize>| {
        report.events[range].iter().filter(|e| e.0 == GRACE_PERIODS).count()
    };
    assert!(gp(end1..end0) > 0, "grace periods moved while body 0 held the value");
    assert!(gp(end0..report.events.len()) > 0, "the final quiesce freed the element");
    // Replays identically.
    assert_eq!(planned_hold(Mutations::default(), true).0, report);
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());

    // B8a: delete with reuse_now frees at once, and the held value is a use after free.
    let b8a = Mutations { delete_reuse_now: true, ..Mutations::default() };
    let (_, read, k) = planned_hold(b8a, true);
    let v = k.violations().snapshot();
    assert!(read.is_err(), "B8a went unnoticed: {read:?}");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].kind, bpfls_mem_alloc::ViolationKind::UseAfterFree, "{v:?}");
    assert_eq!(v[0].site, "sleepable program after the delete");
}

#[test]
fn the_random_scheduler_moves_grace_periods_while_bodies_run() {
    // Some seed runs a grace-period step between two bodies' events, before the last ends.
    let mid_run = (0..50).any(|seed| {
        let (report, ..) = contended_run(Schedule::Random(seed));
        let last_end = report.events.iter().rposition(|e| e.1 == "body_end").unwrap();
        report.events[..last_end].iter().any(|e| e.0 == GRACE_PERIODS)
    });
    assert!(mid_run, "no seed of 50 stepped a grace period mid-run");
}

#[test]
fn a_deleted_element_is_freed_only_after_its_reader_leaves_sleepable_or_not() {
    // A sleepable reader holds off the Tasks-Trace grace period the free waits for; a
    // non-sleepable one the RCU grace period (which a Tasks-Trace one implies here). Either
    // way nothing is freed while the reader is inside, and everything once it left.
    for sleepable in [true, false] {
        let (report, read, k) = planned_hold(Mutations::default(), sleepable);
        assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
        assert_eq!(read, Ok(vec![6; 8]), "sleepable {sleepable}");
        let at = |body: usize, site: &str| report.events.iter().position(|e| *e == (body, site));
        let (end1, end0) = (at(1, "body_end").unwrap(), at(0, "body_end").unwrap());
        let freed = |range: std::ops::Range<usize>| {
            // The memory goes back to the slab (a callback may run before that: the
            // Tasks-Trace stage of the chained free, which then waits for RCU).
            report.events[range].contains(&(GRACE_PERIODS, "slab_free"))
        };
        assert!(!freed(end1..end0), "sleepable {sleepable}: freed under the reader");
        assert!(freed(end0..report.events.len()), "sleepable {sleepable}: never freed");
        assert_eq!(k.shutdown().unwrap(), 0);
        assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
    }
}

#[test]
fn a_dropped_stepped_kernel_frees_its_domains() {
    // The domains' probe points hold the executor, and the executor the domains: the kernel
    // breaks that cycle when dropped, so an explorer's thousands of kernels do not pile up.
    let stepper = Stepper::new(Schedule::Random(0));
    let k = Kernel::builder().stepped(&stepper).build();
    let domains = Arc::downgrade(k.domains());
    stepper.run(vec![]);
    drop(k);
    assert!(domains.upgrade().is_none(), "the domains outlived their kernel");
}

#[test]
fn a_task_exit_waits_for_the_programs_that_use_the_task() {
    // A sleepable program holds the task's value and blocks; the task exits on CPU 1. The
    // program holds a reference on the task (as `bpf_task_acquire` or a hook argument would),
    // so the final put, and the storage's destroy with its immediate reuse, wait for it.
    let stepper = Stepper::new(Schedule::Plan(vec![
        Action::Until(0, "prog_hold".into()),
        Action::ToEnd(1),
        Action::ToEnd(0),
    ]));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[3; 8], BPF_ANY).unwrap();
    let read = Arc::new(Mutex::new(None));
    let (k0, k1, out) = (k.clone(), k.clone(), read.clone());
    let report = stepper.run(vec![
        Box::new(move || {
            *out.lock().unwrap() = Some(k0.run_prog(0, true, |p| {
                let v = p.storage_get(map, task, None, 0).expect("present");
                p.hold();
                v.read("sleepable program after the exit began")
            }));
        }),
        Box::new(move || k1.task_exit(1, task).unwrap()),
    ]);
    assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
    assert_eq!(*read.lock().unwrap(), Some(Ok(vec![3; 8])), "no use after free");
    let at = |e: (usize, &str)| report.events.iter().position(|x| *x == e).unwrap();
    assert!(at((1, "owner_wait")) < at((0, "body_end")), "the exit waited: {:?}", report.events);
    assert!(at((0, "body_end")) < at((1, "selem_free")), "and destroyed after the program");
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
}

#[test]
fn a_program_ending_its_own_task_is_a_reported_deadlock() {
    // The final put waits for the programs that use the task, this one included: nothing can
    // ever end it, and the executor says so instead of hanging.
    let stepper = Stepper::new(Schedule::Random(0));
    let k = Arc::new(Kernel::builder().cpus(1).stepped(&stepper).build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, task) = k.task_spawn();
    k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    let k0 = k.clone();
    let report = stepper.run(vec![Box::new(move || {
        k0.run_prog(0, true, |p| {
            p.storage_get(map, task, None, 0).expect("present");
            let _ = k0.task_exit(0, task);
        });
    })]);
    assert!(report.deadlock, "{report:?}");
    let msg = report.results[0].as_ref().unwrap_err();
    assert!(msg.contains("waits for the programs that use task"), "{msg}");
    assert_eq!(
        report.wait_for,
        ["body 0 (CPU 0, Task) waits for the programs that use an owner to end"],
    );
}
