//! Callback floods with bounded memory (reliability check C6).
//!
//! With grace periods flowing, callbacks queued during one grace period are invoked after the
//! next, so at any moment at most the callbacks of two grace-period intervals are pending:
//! `peak_pending <= 2 * max_queued_per_gp` (both counted exactly by the engine). After
//! `barrier`, nothing is pending. The negative test holds a reader forever: pending grows with
//! every call and the stall report fires, the "one reader pins all garbage" effect.
// Far too slow under Miri (millions of sections on real threads); Miri runs `api.rs`.
#![cfg(not(any(loom, shuttle, miri)))]

use bpfls_rcu::{Config, Domain, Rcu, ReaderId, TasksTrace};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn flood(domain: &Domain, n: u64) {
    let invoked = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        // Four times during the flood, wait for a grace period to end, so that "grace periods
        // flowed during the flood" holds on a loaded machine too, where the grace-period
        // thread may not otherwise run before the flood ends.
        if i > 0 && i % (n / 4).max(1) == 0 {
            let seen = domain.stats().gp_completed;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while domain.stats().gp_completed == seen {
                assert!(std::time::Instant::now() < deadline, "no grace period ended in 60 s");
                std::thread::yield_now();
            }
        }
        let c = invoked.clone();
        domain.call_tagged(i, 32, move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
    }
    domain.barrier();
    let s = domain.stats();
    eprintln!("{} flood of {n}: {s:?}", domain.name());
    assert_eq!(invoked.load(Ordering::Relaxed), n);
    assert_eq!((s.cbs_queued, s.cbs_invoked, s.cbs_pending, s.bytes_pending), (n, n, 0, 0));
    assert!(s.gp_completed >= 3, "grace periods did not flow during the flood");
    assert!(
        s.peak_pending <= 2 * s.max_queued_per_gp,
        "peak pending {} exceeds the callbacks of two grace periods ({})",
        s.peak_pending,
        2 * s.max_queued_per_gp
    );
}

#[test]
fn rcu_flood_of_a_million_callbacks_drains() {
    flood(&Rcu::new(2, Config::threaded()), 1_000_000);
}

#[test]
fn tasks_trace_flood_drains() {
    flood(&TasksTrace::new(Config::threaded()), 50_000);
}

fn pinned(domain: &Domain, reader: ReaderId, hold: impl FnOnce(&dyn Fn())) {
    hold(&|| {
        for i in 0..10_000u64 {
            domain.call_tagged(i, 32, || {});
        }
        while domain.stall_reports().is_empty() {
            std::thread::yield_now();
        }
        let s = domain.stats();
        assert_eq!(s.cbs_invoked, 0, "a callback ran under a reader that never left");
        assert_eq!((s.cbs_pending, s.bytes_pending), (10_000, 320_000));
        assert_eq!(domain.stall_reports()[0].reader, reader);
    });
    domain.barrier();
    assert_eq!(domain.stats().cbs_pending, 0);
}

#[test]
fn reader_that_never_leaves_pins_every_callback_and_stalls() {
    let rcu = Rcu::new(2, Config::threaded().with_stall_polls(200));
    pinned(&rcu, ReaderId::Cpu(1), |check| {
        let _g = rcu.read_lock(1);
        check();
    });
    let tt = TasksTrace::new(Config::threaded().with_stall_polls(200));
    let task = tt.register_task(5);
    pinned(&tt, ReaderId::Task(5), |check| {
        let _g = tt.read_lock(&task);
        check();
    });
}
