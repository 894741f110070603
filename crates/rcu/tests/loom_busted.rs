//! C3, mutation test of the checker: the busted engine (`Config::busted()`, grace periods
//! that never wait for readers, rcutorture's `rcu_busted`) must be caught by loom within 100
//! executions, in `RCU+sync+free` (via `synchronize()`) and in its `call()` + `barrier()`
//! form, for both domains. If a busted model passes, the harness is broken.
//!
//! Main + 1 spawned thread per model. Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::Config;
use bpfls_sync::{Arc, thread};
use loom_common::{Dom, Flavor, Pair, Tally, Wait, expect_failure, rcu_sync_free};

/// C3's pass bound: executions loom may need to catch the busted engine.
const MAX_EXECUTIONS: usize = 100;

fn assert_caught_quickly(name: &str, n: usize) {
    println!("{name}: busted engine caught at execution {n} (limit {MAX_EXECUTIONS})");
    assert!(
        n <= MAX_EXECUTIONS,
        "{name}: loom needed {n} executions to catch the busted engine (limit {MAX_EXECUTIONS})"
    );
}

#[test]
fn busted_sync_free_is_caught_rcu() {
    let name = "busted_sync_free_is_caught_rcu";
    let f = rcu_sync_free(Flavor::Rcu, Config::busted, Wait::Synchronize, 1, &Tally::default());
    assert_caught_quickly(name, expect_failure(name, f));
}

#[test]
fn busted_sync_free_is_caught_tasks_trace() {
    let name = "busted_sync_free_is_caught_tasks_trace";
    let f =
        rcu_sync_free(Flavor::TasksTrace, Config::busted, Wait::Synchronize, 1, &Tally::default());
    assert_caught_quickly(name, expect_failure(name, f));
}

/// A reader dereferences the published object; the updater replaces it, queues its free with
/// `call()` and runs `barrier()`, which with the busted engine invokes the callback without
/// waiting for the reader.
fn busted_call(flavor: Flavor) -> impl Fn() + Sync + Send + 'static {
    move || {
        let dom = Arc::new(Dom::new(flavor, Config::busted()));
        let pair = Arc::new(Pair::default());
        let reader = {
            let (dom, pair) = (dom.clone(), pair.clone());
            thread::spawn(move || dom.read(|| pair.read("busted call reader")))
        };
        let old = pair.replace();
        let p = pair.clone();
        dom.domain().call(move || p.obj(old).free("busted call callback"));
        dom.domain().barrier();
        reader.join().unwrap();
    }
}

#[test]
fn busted_call_is_caught_rcu() {
    let name = "busted_call_is_caught_rcu";
    assert_caught_quickly(name, expect_failure(name, busted_call(Flavor::Rcu)));
}

#[test]
fn busted_call_is_caught_tasks_trace() {
    let name = "busted_call_is_caught_tasks_trace";
    assert_caught_quickly(name, expect_failure(name, busted_call(Flavor::TasksTrace)));
}
