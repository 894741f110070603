//! rcutorture-style stress tests on the threaded backend (reliability checks C1, C2, C3).
//!
//! C1, the pipe histogram: an updater publishes a fresh object, retires the old one, and after
//! every grace period bumps the `pipe` count of every retired object; at `PIPE_LEN` the object
//! is poisoned and recycled. A reader that holds an object across more than one grace period
//! after its retirement records a pipe count of 2 or more: that is an RCU bug. The updater
//! alternates `synchronize`, `call` + wait and polled cookies, and a fake updater runs grace
//! periods of its own, as in liburcu's `rcutorture.h`.
//!
//! C2, poison before free: objects are retired in batches through `call`; the callback
//! poisons (`a = 0`) and recycles them (bumping a generation, since a recycled object is
//! valid again). Readers check `a == 8` and an unchanged generation. Batch sizes sweep
//! 1, 2, 4, ..., 262144.
//!
//! C3: both run against the busted engine too, and must fail there.
//!
//! CI size: 10^6 read sections per domain. `cargo test -p bpfls-rcu --test stress --
//! --ignored` runs the large size (10^8).
// Far too slow under Miri (millions of sections on real threads); Miri runs `api.rs`.
#![cfg(not(any(loom, shuttle, miri)))]

use bpfls_rcu::{Config, Domain, Domains, Rcu};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

const PIPE_LEN: usize = 10;
const LIVE: u64 = 8;

#[derive(Default)]
struct Obj {
    /// 8 while the object may be read, 0 once poisoned.
    a: AtomicU64,
    /// Bumped at each recycle (the C2 generation tag).
    generation: AtomicU64,
    /// Grace periods completed since retirement (the C1 pipe count).
    pipe: AtomicUsize,
}

/// What the readers saw.
#[derive(Debug, Default, Clone)]
struct Report {
    sections: u64,
    /// `hist[k]`: sections that saw pipe count k (k = PIPE_LEN also counts larger ones).
    hist: [u64; PIPE_LEN + 1],
    /// Sections that saw a poisoned or recycled object (rcutorture's `n_mberror`).
    mberror: u64,
    grace_periods: u64,
    recycled: u64,
    /// Times the updater found no free object (rcutorture's `n_rcu_torture_alloc_fail`).
    alloc_fail: u64,
}

impl Report {
    fn beyond_one(&self) -> u64 {
        self.hist[2..].iter().sum()
    }
}

/// The reader side of one flavour.
trait Flavour: Sync {
    fn domain(&self) -> &Domain;
    /// Runs `body(n)` inside read-side section number `n` of reader `id`, for `n` in
    /// `0..sections`.
    fn read_sections(&self, id: usize, sections: u64, body: &mut dyn FnMut(u64));
}

struct RcuFlavour<'a>(&'a Rcu);

impl Flavour for RcuFlavour<'_> {
    fn domain(&self) -> &Domain {
        self.0
    }
    fn read_sections(&self, id: usize, sections: u64, body: &mut dyn FnMut(u64)) {
        for n in 0..sections {
            let _g = self.0.read_lock(id as u32);
            body(n);
        }
    }
}

struct TraceFlavour<'a>(&'a bpfls_rcu::TasksTrace);

impl Flavour for TraceFlavour<'_> {
    fn domain(&self) -> &Domain {
        self.0
    }
    fn read_sections(&self, id: usize, sections: u64, body: &mut dyn FnMut(u64)) {
        let task = self.0.register_task(id as u64);
        for n in 0..sections {
            let _g = self.0.read_lock(&task);
            body(n);
        }
    }
}

/// A reader's section body: dereference, dawdle, check. Every 128th section dawdles long
/// and yields, like a preempted reader, so a broken grace period has time to bite.
fn read_once(pool: &[Obj], current: &AtomicUsize, n: u64, report: &mut Report) {
    let obj = &pool[current.load(Ordering::Acquire)];
    let generation = obj.generation.load(Ordering::Acquire);
    let spins = if n.is_multiple_of(128) { 2000 } else { 8 };
    for _ in 0..spins {
        std::hint::spin_loop();
    }
    if n.is_multiple_of(128) {
        thread::yield_now();
    }
    let pipe = obj.pipe.load(Ordering::Acquire).min(PIPE_LEN);
    let ok = obj.a.load(Ordering::Acquire) == LIVE
        && obj.generation.load(Ordering::Acquire) == generation;
    report.hist[pipe] += 1;
    report.mberror += u64::from(!ok);
    report.sections += 1;
}

/// C1: `readers` reader threads doing `sections` sections each against one updater and one
/// fake updater.
fn torture(flavour: &dyn Flavour, readers: usize, sections: u64) -> Report {
    let pool: Vec<Obj> = (0..64).map(|_| Obj::default()).collect();
    pool[0].a.store(LIVE, Ordering::Relaxed);
    let current = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let readers_left = AtomicUsize::new(readers);
    let total = Mutex::new(Report::default());
    let domain = flavour.domain();

    thread::scope(|s| {
        for id in 0..readers {
            let (pool, current, total, readers_left, stop) =
                (&pool, &current, &total, &readers_left, &stop);
            s.spawn(move || {
                let mut report = Report::default();
                flavour
                    .read_sections(id, sections, &mut |n| read_once(pool, current, n, &mut report));
                let mut t = total.lock().unwrap();
                t.sections += report.sections;
                t.mberror += report.mberror;
                for (a, b) in t.hist.iter_mut().zip(report.hist) {
                    *a += b;
                }
                drop(t);
                if readers_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    stop.store(true, Ordering::Release);
                }
            });
        }
        // The fake updater: grace periods of its own, so polled cookies make progress.
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                domain.synchronize();
                domain.call(|| {});
                for _ in 0..100 {
                    thread::yield_now();
                }
            }
        });
        // The updater.
        let mut free: Vec<usize> = (1..pool.len()).collect();
        let mut retired: Vec<usize> = Vec::new();
        let mut report = Report::default();
        let mut round = 0u64;
        while !stop.load(Ordering::Acquire) {
            let Some(new) = free.pop() else {
                report.alloc_fail += 1;
                domain.synchronize();
                continue;
            };
            pool[new].pipe.store(0, Ordering::Relaxed);
            pool[new].a.store(LIVE, Ordering::Release);
            let old = current.swap(new, Ordering::AcqRel);
            retired.push(old);
            match round % 3 {
                0 => domain.synchronize(),
                1 => {
                    let done = Arc::new(AtomicBool::new(false));
                    let d = done.clone();
                    domain.call(move || d.store(true, Ordering::Release));
                    domain.barrier();
                    assert!(
                        done.load(Ordering::Acquire),
                        "barrier returned before the callback ran"
                    );
                }
                _ => {
                    let cookie = domain.get_state();
                    let mut polls = 0u32;
                    while !domain.poll_state(cookie) {
                        polls += 1;
                        if polls > 10_000 {
                            domain.synchronize();
                        } else {
                            thread::yield_now();
                        }
                    }
                }
            }
            round += 1;
            report.grace_periods += 1;
            retired.retain(|&i| {
                let p = pool[i].pipe.fetch_add(1, Ordering::AcqRel) + 1;
                if p < PIPE_LEN {
                    return true;
                }
                pool[i].a.store(0, Ordering::Release);
                pool[i].generation.fetch_add(1, Ordering::AcqRel);
                free.push(i);
                report.recycled += 1;
                false
            });
        }
        let mut t = total.lock().unwrap();
        t.grace_periods = report.grace_periods;
        t.recycled = report.recycled;
        t.alloc_fail = report.alloc_fail;
    });
    total.into_inner().unwrap()
}

fn check_clean(what: &str, r: &Report, sections: u64) {
    eprintln!("{what}: {r:?}");
    assert_eq!(r.sections, sections, "{what}");
    assert_eq!(r.mberror, 0, "{what}: a reader saw a poisoned or recycled object");
    assert_eq!(r.beyond_one(), 0, "{what}: pipe histogram has entries beyond 1");
    assert_eq!(r.alloc_fail, 0, "{what}: the free list ran empty");
    assert!(r.grace_periods >= 30, "{what}: too few grace periods for a meaningful run");
    assert!(r.recycled > 0, "{what}: nothing was recycled, the test is vacuous");
}

const CI_SECTIONS: u64 = 1_000_000;

#[test]
fn torture_rcu() {
    let rcu = Rcu::new(2, Config::threaded());
    let r = torture(&RcuFlavour(&rcu), 2, CI_SECTIONS / 2);
    check_clean("rcu", &r, CI_SECTIONS);
}

#[test]
fn torture_rcu_symmetric_fences() {
    let rcu = Rcu::new(2, Config { asymmetric_fence: false, ..Config::threaded() });
    let r = torture(&RcuFlavour(&rcu), 2, CI_SECTIONS / 4);
    check_clean("rcu (fence(SeqCst) readers)", &r, CI_SECTIONS / 2);
}

#[test]
fn torture_tasks_trace() {
    let d = Domains::new(1, Config::threaded(), true);
    let r = torture(&TraceFlavour(&d.tasks_trace), 2, CI_SECTIONS / 2);
    check_clean("tasks_trace", &r, CI_SECTIONS);
}

#[test]
#[ignore = "large size: 10^8 read sections per domain"]
fn torture_large() {
    let d = Domains::new(2, Config::threaded(), true);
    let r = torture(&RcuFlavour(&d.rcu), 2, 50_000_000);
    check_clean("rcu large", &r, 100_000_000);
    let r = torture(&TraceFlavour(&d.tasks_trace), 2, 50_000_000);
    check_clean("tasks_trace large", &r, 100_000_000);
}

#[test]
fn torture_catches_the_busted_engine() {
    let d = Domains::new(2, Config::busted(), true);
    for (name, flavour) in [
        ("rcu", &RcuFlavour(&d.rcu) as &dyn Flavour),
        ("tasks_trace", &TraceFlavour(&d.tasks_trace)),
    ] {
        // Caught means: some run out of at most 10 shows a reader that saw a recycled object
        // or held one across two grace periods. One run usually suffices.
        let caught = (1..=10).find(|run| {
            let r = torture(flavour, 2, CI_SECTIONS / 4);
            eprintln!("busted {name}, run {run}: {r:?}");
            r.mberror > 0 || r.beyond_one() > 0
        });
        assert!(
            caught.is_some(),
            "busted {name}: the torture test did not notice grace periods that do not wait"
        );
    }
}

// ----- C2 ---------------------------------------------------------------------------------

/// C2 for one batch size: `updates` objects published and retired through `call` in batches
/// of `batch`. Returns the number of failed reader checks.
fn gc_run(
    domain: &Domain,
    reader: &(dyn Fn(&mut dyn FnMut()) + Sync),
    batch: usize,
    updates: usize,
) -> u64 {
    let pool: Arc<Vec<Obj>> = Arc::new((0..2 * batch + 2).map(|_| Obj::default()).collect());
    pool[0].a.store(LIVE, Ordering::Relaxed);
    let free = Arc::new(Mutex::new((1..pool.len()).collect::<Vec<usize>>()));
    let current = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                reader(&mut || {
                    let obj = &pool[current.load(Ordering::Acquire)];
                    let generation = obj.generation.load(Ordering::Acquire);
                    if n.is_multiple_of(64) {
                        thread::yield_now();
                    }
                    let ok = obj.a.load(Ordering::Acquire) == LIVE
                        && obj.generation.load(Ordering::Acquire) == generation;
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                });
                n += 1;
            }
        });
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..updates {
            let next = free.lock().unwrap().pop();
            let new = match next {
                Some(i) => i,
                None => {
                    domain.barrier();
                    free.lock().unwrap().pop().expect("barrier recycles the retired batches")
                }
            };
            pool[new].a.store(LIVE, Ordering::Release);
            pending.push(current.swap(new, Ordering::AcqRel));
            if pending.len() == batch {
                let objs = std::mem::replace(&mut pending, Vec::with_capacity(batch));
                let (pool, free) = (pool.clone(), free.clone());
                domain.call_tagged(objs[0] as u64, objs.len() * 24, move || {
                    for &i in &objs {
                        pool[i].a.store(0, Ordering::Release);
                        pool[i].generation.fetch_add(1, Ordering::AcqRel);
                    }
                    free.lock().unwrap().extend(objs);
                });
            }
        }
        stop.store(true, Ordering::Release);
    });
    domain.barrier();
    failures.load(Ordering::Relaxed)
}

fn rcu_reader(rcu: &Rcu) -> impl Fn(&mut dyn FnMut()) + Sync + '_ {
    move |f| {
        let _g = rcu.read_lock(0);
        f();
    }
}

#[test]
fn poison_before_free_batch_sweep() {
    let rcu = Rcu::new(1, Config::threaded());
    let reader = rcu_reader(&rcu);
    for shift in 0..19 {
        let batch = 1usize << shift;
        let updates = (4 * batch).max(20_000);
        let failures = gc_run(&rcu, &reader, batch, updates);
        assert_eq!(failures, 0, "batch {batch}: a reader saw a poisoned object");
    }
}

#[test]
fn poison_before_free_catches_the_busted_engine() {
    let rcu = Rcu::new(1, Config::busted());
    let reader = rcu_reader(&rcu);
    let failures: u64 = [1usize, 16, 256].iter().map(|&b| gc_run(&rcu, &reader, b, 200_000)).sum();
    assert!(failures > 0, "C2 did not notice grace periods that do not wait");
}
