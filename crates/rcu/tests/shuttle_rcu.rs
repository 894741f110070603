//! Randomised and PCT schedules (shuttle) over the engine, at sizes loom cannot reach: three
//! readers doing two sections each against an updater that replaces and frees objects, on
//! both domains; and the busted engine, which a seeded random search must catch within 100
//! schedules (C3).
//!
//! shuttle models every atomic as `SeqCst`, so these runs find lifecycle races, not ordering
//! bugs (loom's job). Run with `cargo xtask shuttle`.

#![cfg(shuttle)]

use bpfls_rcu::{Config, Domain, Rcu, TasksTrace};
use bpfls_sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use bpfls_sync::{Arc, thread};
use std::panic::{AssertUnwindSafe, catch_unwind};

const OBJS: usize = 4;

/// Objects `0..OBJS`; `current` is the published one. Freed objects stay freed (no reuse),
/// so any reader that sees `freed` saw a use after free.
struct World {
    current: AtomicUsize,
    freed: Vec<AtomicBool>,
}

impl World {
    fn new() -> Self {
        World {
            current: AtomicUsize::new(0),
            freed: (0..OBJS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn read(&self) {
        let i = self.current.load(Ordering::Acquire);
        thread::yield_now();
        assert!(!self.freed[i].load(Ordering::Acquire), "use after free of object {i}");
    }
}

enum Dom {
    Rcu(Rcu),
    TasksTrace(TasksTrace),
}

impl Dom {
    fn domain(&self) -> &Domain {
        match self {
            Dom::Rcu(r) => r,
            Dom::TasksTrace(t) => t,
        }
    }

    fn reader(&self, id: u32, world: &World) {
        match self {
            Dom::Rcu(r) => {
                for _ in 0..2 {
                    let _g = r.read_lock(id);
                    world.read();
                }
            }
            Dom::TasksTrace(t) => {
                let task = t.register_task(u64::from(id));
                for _ in 0..2 {
                    let _g = t.read_lock(&task);
                    world.read();
                }
            }
        }
    }
}

/// 3 readers, 1 updater that publishes objects 1..OBJS, freeing each predecessor after
/// `synchronize` or through `call` (alternating), then `barrier`.
fn model(tasks_trace: bool, cfg: fn() -> Config) -> impl Fn() + Send + Sync + 'static {
    move || {
        let dom = Arc::new(if tasks_trace {
            Dom::TasksTrace(TasksTrace::new(cfg()))
        } else {
            Dom::Rcu(Rcu::new(3, cfg()))
        });
        let world = Arc::new(World::new());
        let readers: Vec<_> = (0..3)
            .map(|id| {
                let (dom, world) = (dom.clone(), world.clone());
                thread::spawn(move || dom.reader(id, &world))
            })
            .collect();
        for next in 1..OBJS {
            let old = world.current.swap(next, Ordering::AcqRel);
            if next % 2 == 1 {
                dom.domain().synchronize();
                world.freed[old].store(true, Ordering::Release);
            } else {
                let w = world.clone();
                dom.domain().call(move || w.freed[old].store(true, Ordering::Release));
            }
        }
        dom.domain().barrier();
        for r in readers {
            r.join().unwrap();
        }
    }
}

#[test]
fn pct_rcu() {
    shuttle::check_pct(model(false, Config::threaded), 2000, 3);
}

#[test]
fn pct_tasks_trace() {
    shuttle::check_pct(model(true, Config::threaded), 2000, 3);
}

#[test]
fn random_both_domains() {
    shuttle::check_random(model(false, Config::threaded), 2000);
    shuttle::check_random(model(true, Config::threaded), 2000);
}

#[test]
fn busted_engine_is_caught_within_100_random_schedules() {
    for tasks_trace in [false, true] {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, m) = (runs.clone(), model(tasks_trace, Config::busted));
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = catch_unwind(AssertUnwindSafe(|| {
            shuttle::check_random_with_seed(
                move || {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    m()
                },
                7,
                100,
            )
        }));
        std::panic::set_hook(prev);
        let n = runs.load(std::sync::atomic::Ordering::Relaxed);
        println!("busted (tasks_trace = {tasks_trace}): caught after {n} schedules");
        assert!(result.is_err(), "100 random schedules did not catch the busted engine");
        assert!(n <= 100);
    }
}
