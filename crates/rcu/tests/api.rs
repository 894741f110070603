//! Integration tests for every API item of `bpfls-rcu`, on each backend, including misuse.
//!
//! Threaded tests use real threads and never rely on timing for correctness: where they check
//! that something has *not* happened yet, a later step proves it then does happen.
#![cfg(not(any(loom, shuttle)))]

use bpfls_rcu::{Backend, Config, Domains, Rcu, ReaderId, ReclaimPolicy, Step, TasksTrace};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Probes, Verdict, WaitVerdict};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

fn flag() -> (Arc<AtomicBool>, impl FnOnce() + Send + 'static) {
    let f = Arc::new(AtomicBool::new(false));
    let g = f.clone();
    (f, move || g.store(true, SeqCst))
}

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(prev);
    let payload = r.expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Lets other threads run for a while (used only to give a wrong implementation the chance
/// to misbehave; never needed for a correct one to pass).
fn let_others_run() {
    for _ in 0..2000 {
        thread::yield_now();
    }
}

// ----- threaded backend -----------------------------------------------------------------------

#[test]
fn callback_waits_for_preexisting_reader_then_runs() {
    for cfg in [Config::threaded(), Config::threaded().without_worker()] {
        let rcu = Arc::new(Rcu::new(2, cfg));
        let (ran, cb) = flag();
        let guard = rcu.read_lock(0);
        rcu.call(cb);
        let r2 = rcu.clone();
        let barrier = thread::spawn(move || r2.barrier());
        let_others_run();
        assert!(!ran.load(SeqCst), "callback ran while a pre-existing reader was inside");
        drop(guard);
        barrier.join().unwrap();
        assert!(ran.load(SeqCst));
        let s = rcu.stats();
        assert_eq!((s.cbs_queued, s.cbs_invoked, s.cbs_pending), (1, 1, 0));
    }
}

#[test]
fn synchronize_waits_for_preexisting_reader_on_another_thread() {
    let rcu = Arc::new(Rcu::new(2, Config::threaded()));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let r = rcu.clone();
    let reader = thread::spawn(move || {
        let g = r.read_lock(1);
        entered_tx.send(()).unwrap();
        leave_rx.recv().unwrap();
        drop(g);
    });
    entered_rx.recv().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let (r, d) = (rcu.clone(), done.clone());
    let syncer = thread::spawn(move || {
        r.synchronize();
        d.store(true, SeqCst);
    });
    let_others_run();
    assert!(!done.load(SeqCst), "synchronize returned while a pre-existing reader was inside");
    leave_tx.send(()).unwrap();
    syncer.join().unwrap();
    reader.join().unwrap();
    assert!(done.load(SeqCst));
    assert!(rcu.stats().gp_completed >= 1);
}

#[test]
fn tasks_trace_reader_may_block_and_is_waited_for() {
    let tt = Arc::new(TasksTrace::new(Config::threaded()));
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let t = tt.clone();
    let reader = thread::spawn(move || {
        let task = t.register_task(42);
        let g = t.read_lock(&task);
        assert_eq!((g.task(), g.depth()), (42, 1));
        entered_tx.send(()).unwrap();
        // "Sleeps" inside its section: allowed for Tasks-Trace readers.
        leave_rx.recv().unwrap();
        drop(g);
    });
    entered_rx.recv().unwrap();
    let (ran, cb) = flag();
    tt.call(cb);
    let t = tt.clone();
    let barrier = thread::spawn(move || t.barrier());
    let_others_run();
    assert!(!ran.load(SeqCst));
    leave_tx.send(()).unwrap();
    barrier.join().unwrap();
    reader.join().unwrap();
    assert!(ran.load(SeqCst));
}

#[test]
fn rcu_and_tasks_trace_grace_periods_are_independent() {
    // An RCU reader does not hold a Tasks-Trace grace period, and vice versa.
    let d = Domains::new(1, Config::threaded(), true);
    let task = d.tasks_trace.register_task(1);
    {
        let _rcu_reader = d.rcu.read_lock(0);
        d.tasks_trace.synchronize();
    }
    {
        let _trace_reader = d.tasks_trace.read_lock(&task);
        d.rcu.synchronize();
    }
}

#[test]
fn nested_sections_end_with_the_outermost_guard() {
    let rcu = Rcu::new(1, Config::stepped());
    let outer = rcu.read_lock(0);
    let inner = rcu.read_lock(0);
    assert_eq!((outer.depth(), inner.depth()), (1, 2));
    let cookie = rcu.get_state();
    let (_ran, cb) = flag();
    rcu.call(cb);
    assert!(matches!(rcu.advance(), Step::GpStarted { .. }));
    drop(inner);
    assert!(matches!(rcu.advance(), Step::Blocked { reader: ReaderId::Cpu(0), .. }));
    drop(outer);
    assert!(matches!(rcu.advance(), Step::GpEnded { .. }));
    assert!(rcu.poll_state(cookie));
}

#[test]
fn polled_cookie_needs_a_full_grace_period() {
    let rcu = Rcu::new(2, Config::threaded());
    let c = rcu.get_state();
    assert!(!rcu.poll_state(c));
    rcu.synchronize();
    assert!(rcu.poll_state(c));
    // A cookie taken now is not satisfied by the grace period that already ended.
    let c2 = rcu.get_state();
    assert!(c2 > c);
    assert!(!rcu.poll_state(c2));
    rcu.synchronize();
    assert!(rcu.poll_state(c2));
}

#[test]
fn cookie_taken_during_a_grace_period_needs_the_next_one() {
    let rcu = Rcu::new(1, Config::stepped());
    let (_ran, cb) = flag();
    rcu.call(cb);
    let Step::GpStarted { gp_seq } = rcu.advance() else { panic!("expected a GP start") };
    // A reader entering now is not waited for by the GP in flight...
    let late = rcu.read_lock(0);
    let c = rcu.get_state();
    assert_eq!(c.gp_seq(), gp_seq + 1);
    assert_eq!(rcu.advance(), Step::GpEnded { gp_seq });
    assert!(!rcu.poll_state(c), "the GP in flight began before the cookie");
    // ...but it is waited for by the next one, which the cookie needs.
    assert_eq!(rcu.advance(), Step::Invoked { obj: 0 });
    drop(late);
    rcu.synchronize();
    assert!(rcu.poll_state(c));
}

#[test]
fn barrier_waits_for_callbacks_queued_from_every_thread() {
    for cfg in [Config::threaded(), Config::threaded().without_worker()] {
        let rcu = Arc::new(Rcu::new(4, cfg));
        let count = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|cpu| {
                let (rcu, count) = (rcu.clone(), count.clone());
                thread::spawn(move || {
                    for i in 0..500 {
                        let _g = rcu.read_lock(cpu);
                        let c = count.clone();
                        rcu.call_tagged(i, 32, move || {
                            c.fetch_add(1, SeqCst);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        rcu.barrier();
        assert_eq!(count.load(SeqCst), 2000);
        let s = rcu.stats();
        assert_eq!((s.cbs_pending, s.bytes_pending), (0, 0));
    }
}

#[test]
fn callbacks_run_in_queue_order() {
    let rcu = Rcu::new(1, Config::threaded());
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..100 {
        let o = order.clone();
        rcu.call(move || o.lock().unwrap().push(i));
        if i % 7 == 0 {
            rcu.synchronize();
        }
    }
    rcu.barrier();
    assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
}

#[test]
fn callbacks_are_guaranteed_to_run_when_the_domain_is_dropped() {
    for backend in [Backend::Threaded, Backend::Stepped, Backend::Busted] {
        let (ran, cb) = flag();
        let rcu = Rcu::new(1, Config::threaded().with_backend(backend));
        rcu.call(cb);
        drop(rcu);
        assert!(ran.load(SeqCst), "{backend:?}: pending callback lost at drop");
    }
}

#[test]
fn callback_may_queue_another_callback() {
    let rcu = Arc::new(Rcu::new(1, Config::threaded()));
    let (ran, cb) = flag();
    let r = Arc::downgrade(&rcu);
    rcu.call(move || {
        if let Some(r) = r.upgrade() {
            r.call(cb);
        }
    });
    rcu.barrier();
    rcu.barrier();
    assert!(ran.load(SeqCst));
}

#[test]
fn stats_count_grace_periods_and_bytes() {
    let rcu = Rcu::new(1, Config::stepped());
    let g = rcu.read_lock(0);
    rcu.call_tagged(7, 100, || {});
    rcu.call_tagged(8, 28, || {});
    let s = rcu.stats();
    assert_eq!((s.cbs_queued, s.cbs_pending, s.bytes_pending, s.peak_pending), (2, 2, 128, 2));
    assert_eq!(rcu.advance(), Step::GpStarted { gp_seq: 1 });
    drop(g);
    assert_eq!(rcu.advance(), Step::GpEnded { gp_seq: 1 });
    assert_eq!(rcu.advance(), Step::Invoked { obj: 7 });
    assert_eq!(rcu.stats().bytes_pending, 28);
    assert_eq!(rcu.advance(), Step::Invoked { obj: 8 });
    assert_eq!(rcu.advance(), Step::Idle);
    let s = rcu.stats();
    assert_eq!(
        (s.gp_seq, s.gp_started, s.gp_completed, s.cbs_invoked, s.cbs_pending, s.bytes_pending),
        (1, 1, 1, 2, 0, 0)
    );
    assert_eq!(s.max_queued_per_gp, 2);
}

// ----- stepped backend ------------------------------------------------------------------------

#[test]
fn stepped_grace_period_advances_only_when_driven() {
    let rcu = Rcu::new(2, Config::stepped());
    let (ran, cb) = flag();
    rcu.call(cb);
    let_others_run();
    assert_eq!(rcu.stats().gp_started, 0, "stepped GPs start only in advance()");
    let reader = rcu.read_lock(1);
    assert_eq!(rcu.advance(), Step::GpStarted { gp_seq: 1 });
    // A reader that starts after the GP began does not hold it.
    let late = rcu.read_lock(0);
    assert_eq!(rcu.advance(), Step::Blocked { gp_seq: 1, reader: ReaderId::Cpu(1) });
    assert_eq!(rcu.advance(), Step::Blocked { gp_seq: 1, reader: ReaderId::Cpu(1) });
    drop(reader);
    assert!(!ran.load(SeqCst));
    assert_eq!(rcu.advance(), Step::GpEnded { gp_seq: 1 });
    assert_eq!(rcu.advance(), Step::Invoked { obj: 0 });
    assert!(ran.load(SeqCst));
    assert_eq!(rcu.advance(), Step::Idle);
    drop(late);
}

#[test]
fn stepped_runs_are_deterministic() {
    fn run() -> Vec<Step> {
        let d = Domains::new(2, Config::stepped(), false);
        let task = d.tasks_trace.register_task(9);
        let mut steps = Vec::new();
        let g = d.tasks_trace.read_lock(&task);
        let r = d.rcu.read_lock(1);
        for obj in 0..3 {
            d.defer(ReclaimPolicy::AfterTasksTraceThenRcu, obj, 8, || {});
            d.defer(ReclaimPolicy::AfterRcu, 10 + obj, 8, || {});
        }
        for _ in 0..3 {
            steps.push(d.tasks_trace.advance());
            steps.push(d.rcu.advance());
        }
        drop(g);
        drop(r);
        for _ in 0..12 {
            steps.push(d.tasks_trace.advance());
            steps.push(d.rcu.advance());
        }
        steps
    }
    let a = run();
    assert_eq!(a, run());
    assert!(a.contains(&Step::Invoked { obj: 2 }));
}

#[test]
fn stepped_synchronize_without_executor_drives_itself() {
    let rcu = Rcu::new(1, Config::stepped());
    rcu.synchronize();
    let s = rcu.stats();
    assert_eq!((s.gp_started, s.gp_completed), (1, 1));
    let (ran, cb) = flag();
    rcu.call(cb);
    rcu.barrier();
    assert!(ran.load(SeqCst));
}

// ----- reclaim policies -----------------------------------------------------------------------

#[test]
fn policy_now_runs_immediately() {
    let d = Domains::new(1, Config::stepped(), true);
    let _g = d.rcu.read_lock(0);
    let (ran, cb) = flag();
    d.defer(ReclaimPolicy::Now, 1, 8, cb);
    assert!(ran.load(SeqCst));
}

#[test]
fn policy_after_rcu_ignores_trace_readers() {
    let d = Domains::new(1, Config::stepped(), true);
    let task = d.tasks_trace.register_task(1);
    let _trace = d.tasks_trace.read_lock(&task);
    let (ran, cb) = flag();
    d.defer(ReclaimPolicy::AfterRcu, 1, 8, cb);
    d.rcu.advance_until_quiet();
    assert!(ran.load(SeqCst));
}

#[test]
fn policy_after_tasks_trace_waits_for_trace_readers_and_the_implied_rcu_gp() {
    let d = Domains::new(1, Config::stepped(), true);
    let task = d.tasks_trace.register_task(1);
    let trace = d.tasks_trace.read_lock(&task);
    let rcu = d.rcu.read_lock(0);
    let (ran, cb) = flag();
    d.defer(ReclaimPolicy::AfterTasksTrace, 1, 8, cb);
    assert!(matches!(d.tasks_trace.advance_until_quiet(), Step::Blocked { .. }));
    drop(trace);
    // trace_implies_rcu: the Tasks-Trace grace period implies an RCU one, so the RCU reader
    // that predates the free holds it too.
    assert_eq!(d.tasks_trace.advance_until_quiet(), Step::Idle);
    assert!(!ran.load(SeqCst), "freed under a normal RCU reader");
    assert!(matches!(d.rcu.advance_until_quiet(), Step::Blocked { reader: ReaderId::Cpu(0), .. }));
    drop(rcu);
    assert_eq!(d.rcu.advance_until_quiet(), Step::Idle);
    assert!(ran.load(SeqCst));
}

#[test]
fn policy_after_tasks_trace_frees_in_the_trace_callback_once_rcu_has_moved_on() {
    let d = Domains::new(1, Config::stepped(), true);
    let (ran, cb) = flag();
    d.defer(ReclaimPolicy::AfterTasksTrace, 1, 8, cb);
    d.rcu.synchronize();
    assert_eq!(d.tasks_trace.advance_until_quiet(), Step::Idle);
    assert!(ran.load(SeqCst), "the implied RCU grace period had already elapsed");
    assert_eq!(d.rcu.stats().cbs_queued, 0, "nothing was chained");
}

#[test]
fn chained_policy_waits_for_both_domains_in_order() {
    let d = Domains::new(1, Config::stepped(), false);
    assert_eq!(d.sleepable_policy(), ReclaimPolicy::AfterTasksTraceThenRcu);
    let task = d.tasks_trace.register_task(1);
    let trace = d.tasks_trace.read_lock(&task);
    let (ran, cb) = flag();
    d.defer(d.sleepable_policy(), 5, 8, cb);
    assert!(matches!(d.tasks_trace.advance_until_quiet(), Step::Blocked { .. }));
    drop(trace);
    // An RCU reader that is inside when the chain reaches the RCU domain holds the free.
    let rcu_reader = d.rcu.read_lock(0);
    assert_eq!(d.tasks_trace.advance_until_quiet(), Step::Idle);
    assert!(!ran.load(SeqCst), "chained free ran before its RCU grace period");
    assert_eq!(d.rcu.stats().cbs_pending, 1);
    assert!(matches!(d.rcu.advance_until_quiet(), Step::Blocked { reader: ReaderId::Cpu(0), .. }));
    drop(rcu_reader);
    assert_eq!(d.rcu.advance_until_quiet(), Step::Idle);
    assert!(ran.load(SeqCst));
}

#[test]
fn trace_implies_rcu_knob_selects_the_policy() {
    assert_eq!(ReclaimPolicy::for_sleepable_readers(true), ReclaimPolicy::AfterTasksTrace);
    assert_eq!(ReclaimPolicy::for_sleepable_readers(false), ReclaimPolicy::AfterTasksTraceThenRcu);
    for implies in [true, false] {
        let d = Domains::new(2, Config::threaded(), implies);
        assert_eq!(d.trace_implies_rcu(), implies);
        let count = Arc::new(AtomicUsize::new(0));
        for i in 0..100 {
            let c = count.clone();
            d.defer(d.sleepable_policy(), i, 16, move || {
                c.fetch_add(1, SeqCst);
            });
        }
        d.barrier_all();
        assert_eq!(count.load(SeqCst), 100, "trace_implies_rcu = {implies}");
    }
}

#[test]
fn chained_callbacks_survive_dropping_the_domains() {
    let (ran, cb) = flag();
    let d = Domains::new(1, Config::threaded(), false);
    d.defer(ReclaimPolicy::AfterTasksTraceThenRcu, 1, 8, cb);
    drop(d);
    assert!(ran.load(SeqCst));
}

#[test]
fn policy_names_are_stable() {
    let names: Vec<_> = [
        ReclaimPolicy::Now,
        ReclaimPolicy::AfterRcu,
        ReclaimPolicy::AfterTasksTrace,
        ReclaimPolicy::AfterTasksTraceThenRcu,
    ]
    .iter()
    .map(|p| p.name())
    .collect();
    assert_eq!(names, ["now", "after_rcu", "after_tasks_trace", "after_tasks_trace_then_rcu"]);
    for b in [Backend::Threaded, Backend::Stepped, Backend::Busted] {
        assert_eq!(Backend::from_name(b.name()), Ok(b));
    }
    let err = Backend::from_name("tree").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown RCU backend `tree` (expected threaded, stepped or busted)"
    );
}

// ----- busted backend -------------------------------------------------------------------------

#[test]
fn busted_grace_periods_do_not_wait() {
    let rcu = Rcu::new(1, Config::busted());
    let _g = rcu.read_lock(0);
    rcu.synchronize(); // would hang on a correct engine
    let (ran, cb) = flag();
    rcu.call(cb);
    rcu.barrier();
    assert!(ran.load(SeqCst), "busted engine ran the callback under a live reader");
}

// ----- stalls ---------------------------------------------------------------------------------

#[test]
fn threaded_stall_is_reported_and_clears() {
    let rcu = Arc::new(Rcu::new(2, Config::threaded().with_stall_polls(50)));
    let g = rcu.read_lock(1);
    let r = rcu.clone();
    let syncer = thread::spawn(move || r.synchronize());
    while rcu.stall_reports().is_empty() {
        thread::yield_now();
    }
    let report = rcu.stall_reports()[0].clone();
    assert_eq!((report.domain, report.reader, report.gp_seq), ("rcu", ReaderId::Cpu(1), 1));
    assert!(report.polls >= 50);
    drop(g);
    syncer.join().unwrap();
    assert_eq!(rcu.stats().stalls, 1);
}

#[test]
fn stepped_stall_is_reported_after_the_threshold() {
    let tt = TasksTrace::new(Config::stepped().with_stall_polls(3));
    let task = tt.register_task(77);
    let g = tt.read_lock(&task);
    tt.call(|| {});
    assert!(matches!(tt.advance(), Step::GpStarted { .. }));
    for _ in 0..5 {
        assert!(matches!(tt.advance(), Step::Blocked { reader: ReaderId::Task(77), .. }));
    }
    let reports = tt.stall_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].domain, reports[0].polls), ("tasks_trace", 3));
    drop(g);
    assert_eq!(tt.advance_until_quiet(), Step::Idle);
}

// ----- probes ---------------------------------------------------------------------------------

#[derive(Default)]
struct SiteLog {
    sites: Mutex<Vec<&'static str>>,
    deadlock: AtomicBool,
}

impl ProbeHook for SiteLog {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        self.sites.lock().unwrap().push(e.site);
        Verdict::Continue
    }
    fn wait(&self, _: &ProbeEvent<'_>) -> WaitVerdict {
        if self.deadlock.load(SeqCst) { WaitVerdict::Deadlock } else { WaitVerdict::Retry }
    }
}

#[test]
fn probe_points_see_the_lifecycle_in_order() {
    let log = Arc::new(SiteLog::default());
    let rcu = Rcu::new(1, Config::stepped().with_probes(Probes::with_hook(log.clone())));
    {
        let _g = rcu.read_lock(0);
        rcu.call_tagged(3, 8, || {});
    }
    rcu.advance_until_quiet();
    assert_eq!(
        *log.sites.lock().unwrap(),
        ["read_lock", "call", "read_unlock", "gp_start", "gp_end", "callback_invoke"]
    );
}

#[test]
fn executor_reporting_deadlock_ends_synchronize_with_a_message() {
    let log = Arc::new(SiteLog::default());
    log.deadlock.store(true, SeqCst);
    let rcu = Rcu::new(1, Config::stepped().with_probes(Probes::with_hook(log)));
    let msg = panic_message(|| rcu.synchronize());
    assert!(msg.contains("every CPU is blocked"), "{msg}");
}

// ----- misuse ---------------------------------------------------------------------------------

#[test]
fn barrier_from_a_callback_is_refused() {
    let rcu = Arc::new(Rcu::new(1, Config::threaded().without_worker()));
    let r = Arc::downgrade(&rcu);
    rcu.call(move || r.upgrade().unwrap().barrier());
    let msg = panic_message(|| rcu.barrier());
    assert!(msg.contains("barrier() called from a rcu callback"), "{msg}");
    // The domain is still usable.
    let (ran, cb) = flag();
    rcu.call(cb);
    rcu.barrier();
    assert!(ran.load(SeqCst));
}

#[test]
fn synchronize_from_a_callback_on_the_worker_is_reported_by_barrier() {
    let tt = Arc::new(TasksTrace::new(Config::threaded()));
    let t = Arc::downgrade(&tt);
    tt.call(move || t.upgrade().unwrap().synchronize());
    let msg = panic_message(|| tt.barrier());
    assert!(msg.contains("panicked on the callback worker"), "{msg}");
    assert!(msg.contains("synchronize() called from a tasks_trace callback"), "{msg}");
    // The worker survived.
    let (ran, cb) = flag();
    tt.call(cb);
    tt.barrier();
    assert!(ran.load(SeqCst));
}

#[test]
fn unlock_on_the_wrong_cpu_is_refused() {
    let rcu = Rcu::new(2, Config::stepped());
    let g = rcu.read_lock(0);
    assert_eq!(g.cpu(), 0);
    let msg = panic_message(|| g.unlock_on(1));
    assert!(msg.contains("cannot migrate"), "{msg}");
    // The section was left where it was entered: grace periods still end.
    rcu.synchronize();
    rcu.read_lock(1).unlock_on(1);
}

#[test]
fn unbalanced_nesting_is_refused() {
    let rcu = Rcu::new(1, Config::stepped());
    let msg = panic_message(|| {
        let outer = rcu.read_lock(0);
        let inner = rcu.read_lock(0);
        drop(outer);
        drop(inner);
    });
    assert!(msg.contains("unbalanced rcu read_unlock on CPU 0"), "{msg}");
    assert!(msg.contains("reverse order of entry"), "{msg}");
    // Leaving the outer section ended the inner one too: the domain is not wedged.
    rcu.synchronize();
    let msg = panic_message(|| {
        let a = rcu.read_lock(0);
        let b = rcu.read_lock(0);
        let c = rcu.read_lock(0);
        drop(b);
        drop(c);
        drop(a);
    });
    assert!(msg.contains("entered at depth 2 but the section is at depth 3"), "{msg}");
    rcu.synchronize();
}

#[test]
fn advance_from_a_callback_is_refused() {
    let rcu = Arc::new(Rcu::new(1, Config::stepped()));
    let r = Arc::downgrade(&rcu);
    rcu.call(move || {
        r.upgrade().unwrap().advance();
    });
    let msg = panic_message(|| {
        rcu.advance_until_quiet();
    });
    assert!(msg.contains("advance() called from a rcu callback"), "{msg}");
}

#[test]
fn cpu_out_of_range_is_refused() {
    let rcu = Rcu::new(2, Config::stepped());
    let msg = panic_message(|| drop(rcu.read_lock(2)));
    assert!(msg.contains("CPU 2 is out of range: the rcu domain has 2 CPUs"), "{msg}");
    let msg = panic_message(|| drop(Rcu::new(0, Config::stepped())));
    assert!(msg.contains("at least one CPU"), "{msg}");
}

#[test]
fn task_misuse_is_refused() {
    let tt = TasksTrace::new(Config::stepped());
    let other = TasksTrace::new(Config::stepped());
    let t = tt.register_task(1);
    let msg = panic_message(|| drop(tt.register_task(1)));
    assert!(msg.contains("task 1 is already registered"), "{msg}");
    let msg = panic_message(|| drop(other.read_lock(&t)));
    assert!(msg.contains("registered with another tasks_trace domain"), "{msg}");
    let msg = panic_message(|| {
        let t2 = tt.register_task(2);
        std::mem::forget(tt.read_lock(&t2));
        drop(t2);
    });
    assert!(msg.contains("task 2 exited inside an RCU Tasks Trace read-side section"), "{msg}");
    // Task ids are reusable after exit.
    drop(t);
    let t = tt.register_task(1);
    drop(tt.read_lock(&t));
}

#[test]
fn stepped_synchronize_blocked_forever_is_reported_not_hung() {
    let rcu = Rcu::new(2, Config::stepped());
    let _g = rcu.read_lock(1);
    let msg = panic_message(|| rcu.synchronize());
    assert!(msg.contains("would wait forever"), "{msg}");
    assert!(msg.contains("waits for CPU 1"), "{msg}");
}

#[test]
fn accessors_report_the_configuration() {
    let d = Domains::new(3, Config::stepped(), true);
    assert_eq!((d.rcu.name(), d.tasks_trace.name()), ("rcu", "tasks_trace"));
    assert_eq!(d.rcu.backend(), Backend::Stepped);
    assert_eq!(d.rcu.cpus(), 3);
    assert!(format!("{:?}", d.rcu).contains("rcu"));
    let sym = Rcu::new(1, Config { asymmetric_fence: false, ..Config::threaded() });
    assert!(!sym.is_expedited());
    let task = d.tasks_trace.register_task(11);
    assert_eq!(task.task(), 11);
    assert!(!task.in_section());
    let g = d.tasks_trace.read_lock(&task);
    assert!(task.in_section());
    drop(g);
    assert!(!task.in_section());
    let c = d.rcu.get_state();
    assert_eq!(c.gp_seq(), 1);
    assert_eq!(ReaderId::Cpu(2).to_string(), "CPU 2");
    assert_eq!(ReaderId::Task(7).to_string(), "task 7");
}
