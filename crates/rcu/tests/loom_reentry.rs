//! A reader that leaves its section and immediately enters a new one, while the updater's
//! grace period scans its slot.
//!
//! The scan may read the slot value written by the *new* section's entry (`snap >= target`,
//! so the reader is rightly not waited for). That read must still order the *old* section's
//! accesses before the free: with a `Relaxed` store at entry it did not (C++20 release
//! sequences contain only read-modify-writes), and loom reported a causality violation on the
//! freed cell. Every reader-slot store is now `Release`; these models keep it that way, for a
//! plain and a nested re-entry, on both domains. Main + 1 spawned thread; preemption bound
//! `LOOM_MAX_PREEMPTIONS` (default 2).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::{Config, Rcu, TasksTrace};
use bpfls_sync::{Arc, thread};
use loom_common::{Pair, Tally, check};

const OUTCOMES: &[&str] = &["reader_saw_old", "reader_saw_new"];

/// `nested`: the second section nests one level deeper before the updater can see it.
fn reenter_rcu(nested: bool, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let rcu = Arc::new(Rcu::new(1, Config::threaded()));
        let pair = Arc::new(Pair::default());
        let (r, p) = (rcu.clone(), pair.clone());
        let reader = thread::spawn(move || {
            let seen = {
                let _g = r.read_lock(0);
                p.read("re-entry reader, first section")
            };
            let outer = r.read_lock(0);
            let inner = nested.then(|| r.read_lock(0));
            drop(inner);
            drop(outer);
            seen
        });
        let old = pair.replace();
        rcu.synchronize();
        pair.obj(old).free("re-entry updater");
        let seen = reader.join().unwrap();
        tally.hit(if seen == old { "reader_saw_old" } else { "reader_saw_new" });
    }
}

fn reenter_tasks_trace(nested: bool, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let tt = Arc::new(TasksTrace::new(Config::threaded()));
        let pair = Arc::new(Pair::default());
        let (t, p) = (tt.clone(), pair.clone());
        let reader = thread::spawn(move || {
            let task = t.register_task(1);
            let seen = {
                let _g = t.read_lock(&task);
                p.read("re-entry reader, first section")
            };
            let outer = t.read_lock(&task);
            let inner = nested.then(|| t.read_lock(&task));
            drop(inner);
            drop(outer);
            seen
        });
        let old = pair.replace();
        tt.synchronize();
        pair.obj(old).free("re-entry updater");
        let seen = reader.join().unwrap();
        tally.hit(if seen == old { "reader_saw_old" } else { "reader_saw_new" });
    }
}

#[test]
fn reentry_rcu() {
    let tally = Tally::default();
    check("reentry_rcu", reenter_rcu(false, &tally));
    tally.require("reentry_rcu", OUTCOMES);
}

#[test]
fn reentry_nested_rcu() {
    let tally = Tally::default();
    check("reentry_nested_rcu", reenter_rcu(true, &tally));
    tally.require("reentry_nested_rcu", OUTCOMES);
}

#[test]
fn reentry_tasks_trace() {
    let tally = Tally::default();
    check("reentry_tasks_trace", reenter_tasks_trace(false, &tally));
    tally.require("reentry_tasks_trace", OUTCOMES);
}

#[test]
fn reentry_nested_tasks_trace() {
    let tally = Tally::default();
    check("reentry_nested_tasks_trace", reenter_tasks_trace(true, &tally));
    tally.require("reentry_nested_tasks_trace", OUTCOMES);
}
