//! Contexts in stepped mode: bodies placed on one CPU nest like the kernel's contexts (an
//! interrupt runs to its end before the code it interrupted resumes; nothing but an NMI
//! interrupts code holding a storage or bucket lock), the per-CPU busy counter makes an
//! unrelated task on the same CPU fail (bug zoo B14), and an NMI that takes a lock its CPU
//! already holds is reported as a deadlock with its wait-for cycle.
//!
//! Era: bpf_ma (`Profile::BpfMa`, the busy-counter era, v6.4 – v6.18).
#![cfg(not(any(loom, shuttle)))]

use bpfls_kernel::{
    Action, Context, CpuBody, Kernel, MapType, ProgSpec, ProgType, ResultExt, RunReport, Schedule,
    Stepper,
};
use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE};
use bpfls_local_storage::{Errno, MapAttr};
use std::sync::{Arc, Mutex};

/// What the preempting body saw: its delete of an unrelated task's element, and whether its
/// create on a third task got an element.
type Seen = Arc<Mutex<Option<(Result<(), Errno>, bool)>>>;

/// Task A updates its storage by syscall on CPU 0; a tracing program for task B runs on
/// `b_cpu`, and `preempt` makes it start when A enters `bpf_local_storage_update` (inside the
/// syscall's busy counter window) instead of after A.
fn unrelated_tasks(b_cpu: u32, preempt: bool) -> (RunReport, Result<(), Errno>, Seen) {
    let plan = if preempt {
        vec![Action::Until(0, "local_storage_update".into()), Action::ToEnd(1), Action::ToEnd(0)]
    } else {
        vec![Action::ToEnd(0), Action::ToEnd(1)]
    };
    let stepper = Stepper::new(Schedule::Plan(plan));
    let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    let (_, a) = k.task_spawn();
    let (_, b) = k.task_spawn();
    let (_, c) = k.task_spawn();
    k.map_update_elem(1, map, b, &[2; 8], BPF_ANY).unwrap();
    let a_result = Arc::new(Mutex::new(Ok(())));
    let seen: Seen = Arc::default();
    let (ka, kb, ar, sb) = (k.clone(), k.clone(), a_result.clone(), seen.clone());
    let bodies: Vec<(u32, Context, CpuBody)> = vec![
        (
            0,
            Context::Task,
            Box::new(move || {
                *ar.lock().unwrap() = ka.map_update_elem(0, map, a, &[1; 8], BPF_ANY).errno();
            }),
        ),
        (
            b_cpu,
            Context::Task,
            Box::new(move || {
                let r = kb.run(b_cpu, ProgSpec::new(ProgType::Tracing), |p| {
                    let deleted = p.storage_delete(map, b).errno();
                    (deleted, p.storage_get(map, c, None, F_CREATE).is_some())
                });
                *sb.lock().unwrap() = Some(r.unwrap());
            }),
        ),
    ];
    let report = stepper.run_placed(bodies);
    assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
    assert!(k.check_invariants().is_empty(), "{:?}", k.check_invariants());
    assert_eq!(k.shutdown().unwrap(), 0);
    assert!(k.violations().is_empty(), "{:?}", k.violations().snapshot());
    let a_result = *a_result.lock().unwrap();
    (report, a_result, seen)
}

#[test]
fn b14_an_unrelated_task_preempting_on_the_same_cpu_gets_a_spurious_ebusy() {
    // B preempts A inside its update, while A's syscall holds CPU 0's busy counter: B's own
    // element exists, yet delete says -EBUSY, and B's create gets NULL.
    let (report, a, seen) = unrelated_tasks(0, true);
    assert_eq!(a, Ok(()), "A's update is unaffected");
    assert_eq!(*seen.lock().unwrap(), Some((Err(Errno::EBUSY), false)), "{:?}", report.events);
    // B ran inside A: every event of body 1 lies between two events of body 0.
    let first_b = report.events.iter().position(|e| e.0 == 1).unwrap();
    let last_b = report.events.iter().rposition(|e| e.0 == 1).unwrap();
    assert!(report.events[..first_b].iter().any(|e| e.0 == 0));
    assert!(report.events[first_b..=last_b].iter().all(|e| e.0 == 1), "{:?}", report.events);
    assert!(report.events[last_b..].iter().any(|e| e.0 == 0), "A resumes after B");

    // The same interleaving with B on another CPU: the counter is per CPU, so no failure.
    let (_, a, seen) = unrelated_tasks(1, true);
    assert_eq!(a, Ok(()));
    assert_eq!(*seen.lock().unwrap(), Some((Ok(()), true)));

    // And B after A on the same CPU: no failure either.
    let (_, a, seen) = unrelated_tasks(0, false);
    assert_eq!(a, Ok(()));
    assert_eq!(*seen.lock().unwrap(), Some((Ok(()), true)));
}

/// Whether body `b`'s events all lie within one contiguous run of the event list once it
/// started while body 0 was under way (strict nesting), and how many of its events fell
/// while body 0 held a storage or bucket lock.
fn nesting(events: &[(usize, &'static str)], b: usize) -> (bool, usize) {
    let mut held = 0u32;
    let mut inside = 0;
    for &(who, site) in events {
        if who == 0 {
            match site {
                "storage_lock_acquire" | "bucket_lock_acquire" => held += 1,
                "storage_lock_release" | "bucket_lock_release" => held -= 1,
                _ => {}
            }
        } else if who == b && held > 0 {
            inside += 1;
        }
    }
    let first = events.iter().position(|e| e.0 == b);
    let last = events.iter().rposition(|e| e.0 == b);
    let nested = match (first, last) {
        (Some(f), Some(l)) => events[f..=l].iter().all(|e| e.0 == b),
        _ => true,
    };
    (nested, inside)
}

/// Task A creates its first element (taking S and B) on CPU 0 while a tracing program in
/// `ctx` on CPU 0 reads and creates A's element: the program is asked to start at each of A's
/// first `points` probe points in turn. Returns in how many runs it started before A ended,
/// and in how many it started while A held a lock.
fn interrupted_update(ctx: Context, points: usize) -> (usize, usize) {
    let (mut interleaved, mut under_lock) = (0, 0);
    for point in 0..points {
        let mut script = vec![0; point];
        script.push(1);
        let stepper = Stepper::new(Schedule::Script(script));
        let k = Arc::new(Kernel::builder().cpus(1).stepped(&stepper).build());
        let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
        let (_, a) = k.task_spawn();
        let (ka, kb) = (k.clone(), k.clone());
        let bodies: Vec<(u32, Context, CpuBody)> = vec![
            (
                0,
                Context::Task,
                Box::new(move || {
                    let r = ka.map_update_elem(0, map, a, &[1; 8], BPF_ANY).errno();
                    assert!(matches!(r, Ok(()) | Err(Errno::EAGAIN)), "{r:?}");
                }),
            ),
            (
                0,
                ctx,
                Box::new(move || {
                    let spec = ProgSpec::new(ProgType::Tracing).in_context(ctx);
                    kb.run(0, spec, |p| {
                        if let Some(v) = p.storage_get(map, a, None, F_CREATE) {
                            v.read("interrupting program").unwrap();
                        }
                    })
                    .unwrap();
                }),
            ),
        ];
        let report = stepper.run_placed(bodies);
        assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
        let (nested, inside) = nesting(&report.events, 1);
        assert!(nested, "point {point}: {ctx:?} did not run to its end: {:?}", report.events);
        let b_first = report.events.iter().position(|e| e.0 == 1);
        let a_last = report.events.iter().rposition(|e| e.0 == 0);
        if b_first.zip(a_last).is_some_and(|(b, a)| b < a) {
            interleaved += 1;
        }
        under_lock += usize::from(inside > 0);
        assert!(k.check_invariants().is_empty(), "point {point}: {:?}", k.check_invariants());
        assert_eq!(k.shutdown().unwrap(), 0, "point {point}");
        assert!(k.violations().is_empty(), "point {point}: {:?}", k.violations().snapshot());
    }
    (interleaved, under_lock)
}

#[test]
fn interrupts_nest_and_only_an_nmi_enters_a_locked_section() {
    for ctx in [Context::Softirq, Context::Hardirq] {
        let (interleaved, under_lock) = interrupted_update(ctx, 120);
        assert!(interleaved > 0, "{ctx:?} never interrupted the syscall");
        assert_eq!(under_lock, 0, "{ctx:?} ran while the syscall held a lock (irqs off)");
    }
    let (interleaved, under_lock) = interrupted_update(Context::Nmi, 120);
    assert!(interleaved > 0 && under_lock > 0, "an NMI never hit a locked section");
}

#[test]
fn an_nmi_taking_the_lock_its_cpu_holds_is_a_deadlock_with_a_cycle() {
    // Socket storage has no busy counter; a (non-tracing) program in NMI that takes the
    // socket's storage lock while the interrupted syscall holds it can never get it. The
    // tracing variant refuses NMI context (NULL), which is why it exists.
    let mut found = None;
    for seed in 0..200 {
        let stepper = Stepper::new(Schedule::Random(seed));
        let k = Arc::new(Kernel::builder().cpus(1).stepped(&stepper).build());
        let (m1, m2) = (
            k.map_create(MapType::Sk, MapAttr::new(8)).unwrap(),
            k.map_create(MapType::Sk, MapAttr::new(8)).unwrap(),
        );
        let (_, sock) = k.socket_create();
        k.map_update_elem(0, m1, sock, &[1; 8], BPF_ANY).unwrap();
        let (ka, kb) = (k.clone(), k.clone());
        let bodies: Vec<(u32, Context, CpuBody)> = vec![
            (
                0,
                Context::Task,
                Box::new(move || {
                    let _ = ka.map_update_elem(0, m2, sock, &[2; 8], BPF_ANY);
                }),
            ),
            (
                0,
                Context::Nmi,
                Box::new(move || {
                    let spec = ProgSpec::new(ProgType::Lsm).in_context(Context::Nmi);
                    kb.run(0, spec, |p| p.storage_get(m1, sock, None, F_CREATE).map(drop)).unwrap();
                }),
            ),
        ];
        let report = stepper.run_placed(bodies);
        if report.deadlock {
            found = Some((seed, report));
            break;
        }
    }
    let (seed, report) = found.expect("some schedule lets the NMI meet the held lock");
    assert!(report.results[1].as_ref().is_err_and(|m| m.contains("deadlock")), "seed {seed}");
    assert_eq!(report.wait_for.len(), 3, "seed {seed}: {:?}", report.wait_for);
    assert_eq!(
        report.wait_for[0],
        "body 0 (CPU 0, Task) cannot resume until body 1 (CPU 0, Nmi) finishes"
    );
    assert!(
        report.wait_for[1].starts_with("body 1 (CPU 0, Nmi) waits for the storage lock of")
            && report.wait_for[1].ends_with("held by body 0 (CPU 0, Task)"),
        "{:?}",
        report.wait_for
    );
    assert_eq!(report.wait_for[2], "cycle: body 1 -> body 0 -> body 1");

    // The tracing variant in NMI: NULL, never a deadlock.
    for seed in 0..50 {
        let stepper = Stepper::new(Schedule::Random(seed));
        let k = Arc::new(Kernel::builder().cpus(1).stepped(&stepper).build());
        let m1 = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
        let (_, sock) = k.socket_create();
        let (ka, kb) = (k.clone(), k.clone());
        let bodies: Vec<(u32, Context, CpuBody)> = vec![
            (
                0,
                Context::Task,
                Box::new(move || ka.map_update_elem(0, m1, sock, &[2; 8], BPF_ANY).unwrap()),
            ),
            (
                0,
                Context::Nmi,
                Box::new(move || {
                    let spec = ProgSpec::new(ProgType::Tracing).in_context(Context::Nmi);
                    let got =
                        kb.run(0, spec, |p| p.storage_get(m1, sock, None, F_CREATE).is_some());
                    assert!(!got.unwrap(), "the tracing variant refuses NMI");
                }),
            ),
        ];
        let report = stepper.run_placed(bodies);
        assert!(!report.deadlock && report.results.iter().all(Result::is_ok), "{report:?}");
        assert_eq!(k.shutdown().unwrap(), 0);
    }
}
