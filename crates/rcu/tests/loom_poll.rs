//! Polled grace periods (`get_state_synchronize_rcu()` / `poll_state_synchronize_rcu()`):
//! an updater unpublishes an object, takes a cookie, and frees the object once
//! `poll_state(cookie)` holds, driving grace periods with `synchronize()` itself only while
//! it does not; a second updater runs an unrelated `synchronize()` concurrently, so the
//! cookie may be satisfied by a grace period of another thread. A reader never sees the
//! object freed. The sanity mutation takes the cookie *before* unpublishing, so a grace
//! period that started in between may satisfy it while a reader still holds the old object.
//!
//! Main + 2 spawned threads per model. Preemption bound: `LOOM_MAX_PREEMPTIONS` (default 2),
//! capped at 2 (`TWO_SPINNERS_CAP`: two threads wait in `synchronize()` at once, which loom
//! cannot explore at bound 3; see `loom_common`).

#![cfg(loom)]

mod loom_common;

use bpfls_rcu::Config;
use bpfls_sync::{Arc, thread};
use loom_common::{
    Dom, Flavor, Pair, TWO_SPINNERS_CAP, Tally, check_capped, expect_failure_capped,
};

/// The updater and the other thread both wait in `synchronize()` at once.
const CAP: Option<usize> = Some(TWO_SPINNERS_CAP);

/// When the updater takes its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CookieAt {
    /// After unpublishing (correct).
    AfterUnpublish,
    /// Before unpublishing (the sanity mutation).
    BeforeUnpublish,
}

fn poll_free(flavor: Flavor, at: CookieAt, tally: &Tally) -> impl Fn() + Sync + Send + 'static {
    let tally = tally.clone();
    move || {
        let dom = Arc::new(Dom::new(flavor, Config::threaded()));
        let pair = Arc::new(Pair::default());
        let reader = {
            let (dom, pair) = (dom.clone(), pair.clone());
            thread::spawn(move || dom.read(|| pair.read("poll reader")))
        };
        let other = {
            let dom = dom.clone();
            thread::spawn(move || dom.domain().synchronize())
        };
        let d = dom.domain();
        let early = (at == CookieAt::BeforeUnpublish).then(|| d.get_state());
        let old = pair.replace();
        let cookie = early.unwrap_or_else(|| d.get_state());
        let mut own_gps = 0;
        while !d.poll_state(cookie) {
            d.synchronize();
            own_gps += 1;
        }
        pair.obj(old).free("poll updater");
        let seen = reader.join().unwrap();
        other.join().unwrap();
        tally.hit(if seen == old { "reader_saw_old" } else { "reader_saw_new" });
        tally.hit(if own_gps == 0 { "cookie_satisfied_by_other_gp" } else { "updater_ran_gp" });
    }
}

#[test]
fn poll_state_then_free_rcu() {
    let name = "poll_state_then_free_rcu";
    let tally = Tally::default();
    check_capped(name, CAP, poll_free(Flavor::Rcu, CookieAt::AfterUnpublish, &tally));
    tally.require(
        name,
        &["reader_saw_old", "reader_saw_new", "cookie_satisfied_by_other_gp", "updater_ran_gp"],
    );
}

#[test]
fn poll_state_then_free_tasks_trace() {
    let name = "poll_state_then_free_tasks_trace";
    let tally = Tally::default();
    check_capped(name, CAP, poll_free(Flavor::TasksTrace, CookieAt::AfterUnpublish, &tally));
    tally.require(
        name,
        &["reader_saw_old", "reader_saw_new", "cookie_satisfied_by_other_gp", "updater_ran_gp"],
    );
}

#[test]
fn cookie_before_unpublish_is_caught_rcu() {
    expect_failure_capped(
        "cookie_before_unpublish_is_caught_rcu",
        CAP,
        poll_free(Flavor::Rcu, CookieAt::BeforeUnpublish, &Tally::default()),
    );
}

#[test]
fn cookie_before_unpublish_is_caught_tasks_trace() {
    expect_failure_capped(
        "cookie_before_unpublish_is_caught_tasks_trace",
        CAP,
        poll_free(Flavor::TasksTrace, CookieAt::BeforeUnpublish, &Tally::default()),
    );
}
