//! Benchmarks of the threaded RCU engine, each held against a control measured in the same
//! process.
//!
//! # Method
//!
//! The project's machine is a shared 2-vCPU VM whose speed drifts by tens of percent from
//! one second to the next, so no figure here is an absolute pass/fail. Every benchmark pairs a
//! *subject* (the engine operation) with a *control* (a well-known operation of similar shape)
//! and runs them in interleaved rounds: one untimed warm-up of each, then `ROUNDS` rounds that
//! measure subject and control back to back, alternating which goes first. Each round gives a
//! per-operation time for both and their ratio; the tables print the median subject time, the
//! median control time, the median of the per-round ratios and its spread (min–max), so drift
//! between rounds cancels out of the ratio.
//!
//! 1. **Read side**: a `read_lock` + unlock pair against a `crossbeam_epoch` pin + drop on a
//!    local `Collector`'s handle (goal ≤ 0.4×), for the membarrier-expedited reader (the
//!    default), the symmetric `fence(SeqCst)` reader, a nested section (control: a nested
//!    pin) and a Tasks-Trace section. The global `crossbeam_epoch::pin()` and a
//!    `std::sync::RwLock` read lock are measured as references against the same control.
//! 2. **`synchronize` latency**, with no readers and with one thread on the other vCPU that
//!    loops short read-side sections; control: `Box::new` + drop of a 64-byte value. The
//!    ratio only says "how many allocations is a grace period"; the absolute µs are the
//!    comparable figure (liburcu memb on this machine kind: 0.5–0.6 µs, 3.1–9.4 µs).
//! 3. **`call` flood**: 10^6 `call`s of a closure that drops a `Box<[u8; 32]>`, then
//!    `barrier()`, with and without the callback worker; control: 10^6 × `Box::new([0; 32])`
//!    pushed into a `Vec`, then dropping them all. The engine's counters must show exactly
//!    10^6 more callbacks invoked and none pending; anything else is reported as an engine
//!    error.
//!
//! Run with `cargo bench -p bpfls-rcu --bench rcu` (about 7–17 s here) or add `-- --quick`
//! (fewer iterations, well under 20 s). Other arguments (cargo passes `--bench`) are
//! ignored. The exit status is 0 whatever the ratios are; it is non-zero only when the engine
//! misbehaves (wrong callback count: 1; a phase running past the watchdog limit: 3).

use bpfls_rcu::{Config, Rcu, TasksTrace};
use bpfls_testkit::bench::*;
use std::hint::black_box;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The read-side goal: subject / control.
const READ_GOAL: f64 = 0.4;
/// A phase running longer than this is taken for an engine hang.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Iteration counts.
#[derive(Debug, Clone, Copy)]
struct Settings {
    quick: bool,
    /// Read-side pairs per measurement.
    read_iters: u64,
    /// `synchronize` calls per measurement.
    sync_iters: u64,
    /// Control operations per `synchronize` measurement.
    sync_control_iters: u64,
    /// Callbacks per flood.
    flood: u64,
}

impl Settings {
    fn from_args() -> Self {
        let quick = quick();
        if quick {
            Settings {
                quick,
                read_iters: 1_000_000,
                sync_iters: 500,
                sync_control_iters: 50_000,
                flood: 1_000_000,
            }
        } else {
            Settings {
                quick,
                read_iters: 10_000_000,
                sync_iters: 4_000,
                sync_control_iters: 400_000,
                flood: 1_000_000,
            }
        }
    }
}

/// The tables' layout.
const TABLE: Layout = Layout {
    subject: 44,
    control: 30,
    ratio: 8,
    spread: 15,
    rule: 134,
    kernel: false,
    verdicts: Verdicts::ItsControl,
};

// ----- 1. read side -----------------------------------------------------------------------

fn bench_read(s: Settings) {
    phase("read side");
    let n = s.read_iters;
    let exp = Rcu::new(2, Config::threaded());
    let sym = Rcu::new(2, Config { asymmetric_fence: false, ..Config::threaded() });
    let trace = TasksTrace::new(Config::threaded());
    let task = trace.register_task(1);
    let collector = crossbeam_epoch::Collector::new();
    let handle = collector.register();
    let rwlock = RwLock::new(0u64);

    println!(
        "\nreaders: default domain is_expedited() = {}, symmetric domain is_expedited() = {}, \
         tasks-trace is_expedited() = {}",
        exp.is_expedited(),
        sym.is_expedited(),
        trace.is_expedited()
    );

    let pin = || per_op(n, || drop(handle.pin()));
    let label = if exp.is_expedited() {
        "rcu read_lock pair (membarrier)"
    } else {
        "rcu read_lock pair (default; NO membarrier)"
    };
    let rows = vec![
        Row::new(
            label,
            "local pin()+drop",
            interleave(|| per_op(n, || drop(exp.read_lock(black_box(0)))), pin),
        )
        .goal(Goal::AtMost(READ_GOAL)),
        Row::new(
            "rcu read_lock pair (fence SeqCst)",
            "local pin()+drop",
            interleave(|| per_op(n, || drop(sym.read_lock(black_box(0)))), pin),
        )
        .goal(Goal::AtMost(READ_GOAL)),
        Row::new(
            "rcu nested read_lock pair",
            "nested local pin()+drop",
            interleave(
                || {
                    let _outer = exp.read_lock(0);
                    per_op(n, || drop(exp.read_lock(black_box(0))))
                },
                || {
                    let _outer = handle.pin();
                    per_op(n, || drop(handle.pin()))
                },
            ),
        )
        .goal(Goal::AtMost(READ_GOAL)),
        Row::new(
            "tasks-trace read_lock pair",
            "local pin()+drop",
            interleave(|| per_op(n, || drop(trace.read_lock(black_box(&task)))), pin),
        )
        .goal(Goal::AtMost(READ_GOAL)),
        Row::new(
            "ref: global crossbeam_epoch::pin()",
            "local pin()+drop",
            interleave(|| per_op(n, || drop(crossbeam_epoch::pin())), pin),
        ),
        Row::new(
            "ref: std RwLock read+unlock",
            "local pin()+drop",
            interleave(|| per_op(n, || drop(black_box(black_box(&rwlock).read()))), pin),
        ),
    ];
    print_table(&TABLE, "1. read side (ns per lock+unlock pair)", &rows);
    print_verdicts(&TABLE, &rows);
    drop(task);
}

// ----- 2. synchronize ---------------------------------------------------------------------

/// `synchronize` timings of one measurement; each call is timed on its own (two `Instant`
/// reads, tens of ns, are included) to keep the worst one.
fn time_synchronize(rcu: &Rcu, iters: u64, max: &mut f64) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        rcu.synchronize();
        *max = max.max(ns(t.elapsed()));
    }
    ns(start.elapsed()) / iters as f64
}

fn box64(iters: u64) -> f64 {
    per_op(iters, || drop(black_box(Box::new(black_box([0u8; 64])))))
}

/// The same, with a thread on CPU slot 1 looping short read-side sections meanwhile. Also
/// returns the reader's ns per section during subject and control phases.
fn sync_with_busy_reader(rcu: &Rcu, s: Settings, max: &mut f64) -> (Rounds, f64, f64) {
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    let g = rcu.read_lock(1);
                    // A short section: a few dependent operations the compiler cannot drop.
                    x = black_box(black_box(x).wrapping_mul(31).wrapping_add(7));
                    drop(g);
                }
                reads.fetch_add(256, Ordering::Relaxed);
            }
            black_box(x);
        });
        // Reader ns/section while each side runs: wall time of the phase / sections done.
        let mut reader_subject = Vec::new();
        let mut reader_control = Vec::new();
        let measure = |f: &mut dyn FnMut() -> f64, out: &mut Vec<f64>| {
            let r0 = reads.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let v = f();
            let dt = ns(t0.elapsed());
            let dr = reads.load(Ordering::Relaxed) - r0;
            if dr > 0 {
                out.push(dt / dr as f64);
            }
            v
        };
        let rounds = interleave(
            || measure(&mut || time_synchronize(rcu, s.sync_iters, max), &mut reader_subject),
            || measure(&mut || box64(s.sync_control_iters), &mut reader_control),
        );
        stop.store(true, Ordering::Relaxed);
        (rounds, median(&reader_subject), median(&reader_control))
    })
}

fn bench_synchronize(s: Settings) {
    phase("synchronize");
    let exp = Rcu::new(2, Config::threaded());
    let sym = Rcu::new(2, Config { asymmetric_fence: false, ..Config::threaded() });
    let ctl = "Box::new([u8; 64])+drop";
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (rcu, kind) in [(&exp, "membarrier"), (&sym, "fence SeqCst")] {
        let kind = if rcu.is_expedited() || kind != "membarrier" {
            kind
        } else {
            "default, NO membarrier"
        };
        let mut max = 0.0;
        let r = interleave(
            || time_synchronize(rcu, s.sync_iters, &mut max),
            || box64(s.sync_control_iters),
        );
        rows.push(Row::new(format!("synchronize, no readers ({kind})"), ctl, r));
        notes.push(format!("no readers ({kind}): worst single synchronize {}", human(max)));
    }
    for (rcu, kind) in [(&exp, "membarrier"), (&sym, "fence SeqCst")] {
        phase("synchronize with a busy reader");
        let kind = if rcu.is_expedited() || kind != "membarrier" {
            kind
        } else {
            "default, NO membarrier"
        };
        let mut max = 0.0;
        let (r, read_s, read_c) = sync_with_busy_reader(rcu, s, &mut max);
        rows.push(Row::new(format!("synchronize, 1 busy reader ({kind})"), ctl, r));
        notes.push(format!(
            "1 busy reader ({kind}): worst single synchronize {}; the reader took {} per \
             section while synchronize looped, {} while the control looped",
            human(max),
            human(read_s),
            human(read_c)
        ));
    }
    print_table(
        &TABLE,
        "2. synchronize latency (per call; the absolute time is the figure)",
        &rows,
    );
    println!();
    for n in notes {
        println!("{n}");
    }
    println!(
        "anchors (liburcu memb, this machine kind): 0.5–0.6 µs no readers; 3.1–9.4 µs avg \
         [1.6–12 ms max] with 1 busy reader"
    );
    let st = exp.stats();
    println!(
        "membarrier domain after the runs: {} grace periods, {} stalls",
        st.gp_completed, st.stalls
    );
}

// ----- 3. call flood ----------------------------------------------------------------------

/// One flood's figures (ns).
#[derive(Debug, Default, Clone, Copy)]
struct Flood {
    enqueue: f64,
    drain: f64,
}

/// Floods `rcu` with `n` callbacks, then waits for them; checks the counters.
fn flood(rcu: &Rcu, n: u64, errors: &mut Vec<String>, gps: &mut Vec<u64>) -> Flood {
    let before = rcu.stats();
    let t0 = Instant::now();
    for _ in 0..n {
        let obj = Box::new(black_box([0u8; 32]));
        rcu.call(move || drop(black_box(obj)));
    }
    let enqueue = ns(t0.elapsed());
    let t1 = Instant::now();
    rcu.barrier();
    let drain = ns(t1.elapsed());
    let after = rcu.stats();
    let invoked = after.cbs_invoked - before.cbs_invoked;
    if invoked != n || after.cbs_pending != 0 {
        errors.push(format!(
            "ENGINE ERROR: after {n} call() and barrier(): {invoked} callbacks invoked, {} \
             pending (stats before {before:?}, after {after:?})",
            after.cbs_pending
        ));
    }
    gps.push(after.gp_completed - before.gp_completed);
    Flood { enqueue, drain }
}

/// The control: `n` × (allocate a 32-byte box, push it) and then drop them all. The vector
/// keeps its capacity between rounds, as the engine's callback queue does.
#[expect(clippy::vec_box, reason = "one allocation per element is the point of the control")]
fn flood_control(v: &mut Vec<Box<[u8; 32]>>, n: u64) -> Flood {
    let t0 = Instant::now();
    for _ in 0..n {
        v.push(Box::new(black_box([0u8; 32])));
    }
    let enqueue = ns(t0.elapsed());
    let t1 = Instant::now();
    v.clear();
    let drain = ns(t1.elapsed());
    Flood { enqueue, drain }
}

fn bench_flood(s: Settings) -> Vec<String> {
    let n = s.flood;
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for worker in [true, false] {
        phase(if worker { "call flood (worker)" } else { "call flood (no worker)" });
        let cfg = if worker { Config::threaded() } else { Config::threaded().without_worker() };
        let rcu = Rcu::new(2, cfg);
        let mut v: Vec<Box<[u8; 32]>> = Vec::new();
        let mut subject = Vec::new();
        let mut control = Vec::new();
        let mut gps = Vec::new();
        // interleave() wants one number per side; keep both parts of each flood aside.
        interleave(
            || {
                let f = flood(&rcu, n, &mut errors, &mut gps);
                subject.push(f);
                f.enqueue
            },
            || {
                let f = flood_control(&mut v, n);
                control.push(f);
                f.enqueue
            },
        );
        // Drop the warm-up flood of each side.
        subject.remove(0);
        control.remove(0);
        gps.remove(0);
        let split = |get: fn(&Flood) -> f64, per: f64| Rounds {
            subject: subject.iter().map(|f| get(f) / per).collect(),
            control: control.iter().map(|f| get(f) / per).collect(),
        };
        let tag = if worker { "worker" } else { "no worker" };
        rows.push(Row::new(
            format!("call, per op ({tag})"),
            "alloc 32 B + Vec push, per op",
            split(|f| f.enqueue, n as f64),
        ));
        rows.push(Row::new(
            format!("barrier drain of 10^6 ({tag})"),
            "drop of the 10^6 boxes",
            split(|f| f.drain, n as f64 / 1e6),
        ));
        rows.push(Row::new(
            format!("flood total, 10^6 call+barrier ({tag})"),
            "10^6 alloc+push, then drop all",
            split(|f| f.enqueue + f.drain, n as f64 / 1e6),
        ));
        let st = rcu.stats();
        notes.push(format!(
            "{tag}: grace periods per flood of {n}: median {}; peak pending {}, most callbacks \
             in one grace period {}",
            median(&gps.iter().map(|&g| g as f64).collect::<Vec<_>>()),
            st.peak_pending,
            st.max_queued_per_gp
        ));
    }
    print_table(
        &TABLE,
        "3. call flood (10^6 callbacks dropping a Box<[u8; 32]>, then barrier)",
        &rows,
    );
    println!();
    for n in notes {
        println!("{n}");
    }
    println!("anchors (liburcu memb, this machine kind): ~94 ns per call_rcu, 27.8 ms drain");
    errors
}

// ----- 4. scaling over threads -------------------------------------------------------------

/// Runs `op(state, thread)` `iters` times on each of `threads` threads, started together,
/// where `state = setup(thread)` is made on the thread before the start; returns the
/// wall-clock ns per operation per thread (equal to the single-thread cost when the operation
/// scales perfectly).
fn per_op_threads<S>(
    threads: usize,
    iters: u64,
    setup: impl Fn(usize) -> S + Sync,
    op: impl Fn(&mut S, usize) + Sync,
) -> f64 {
    let start = std::sync::Barrier::new(threads + 1);
    let (setup, op, start_ref) = (&setup, &op, &start);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                sc.spawn(move || {
                    let mut state = setup(t);
                    start_ref.wait();
                    for _ in 0..iters {
                        op(&mut state, t);
                    }
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().unwrap();
        }
        ns(t0.elapsed()) / iters as f64
    })
}

/// Read side and `call` with 1, 2, 4, ... threads, up to the machine's parallelism (each
/// reader on its own CPU slot; each crossbeam thread with its own handle).
fn bench_scaling(s: Settings) {
    phase("scaling");
    let max = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counts: Vec<usize> = [1, 2, 4, 8, 16].into_iter().filter(|&t| t <= max).collect();
    let rcu = Rcu::new(counts.last().copied().unwrap_or(1) as u32, Config::threaded());
    let collector = crossbeam_epoch::Collector::new();
    let n = s.read_iters / 2;
    let mut rows = Vec::new();
    for &t in &counts {
        rows.push(Row::new(
            format!("rcu read_lock pair, {t} thread(s)"),
            "local pin()+drop, same threads",
            interleave(
                || per_op_threads(t, n, |_| (), |_, i| drop(rcu.read_lock(black_box(i as u32)))),
                || per_op_threads(t, n, |_| collector.register(), |h, _| drop(h.pin())),
            ),
        ));
    }
    let calls = s.flood / 10;
    for &t in &counts {
        rows.push(Row::new(
            format!("call (then barrier), {t} thread(s)"),
            "Box<[u8; 32]> alloc+drop",
            interleave(
                || {
                    let per = per_op_threads(
                        t,
                        calls / t as u64,
                        |_| (),
                        |_, _| {
                            let obj = Box::new(black_box([0u8; 32]));
                            rcu.call(move || drop(black_box(obj)));
                        },
                    );
                    rcu.barrier();
                    per
                },
                || {
                    per_op_threads(
                        t,
                        calls / t as u64,
                        |_| (),
                        |_, _| drop(black_box(Box::new([0u8; 32]))),
                    )
                },
            ),
        ));
    }
    print_table(&TABLE, "4. scaling over threads (ns per op per thread; flat = scales)", &rows);
    println!("threads measured: {counts:?} (available parallelism {max})");
}

fn main() {
    let s = Settings::from_args();
    let started = Instant::now();
    start_watchdog("bpfls-rcu", WATCHDOG);
    println!(
        "bpfls-rcu bench ({} mode): {ROUNDS} interleaved rounds per figure; ratio = median of \
         per-round subject/control",
        if s.quick { "quick" } else { "full" }
    );
    bench_read(s);
    bench_synchronize(s);
    let errors = bench_flood(s);
    bench_scaling(s);
    phases_done();
    println!("\ntotal run time {:.1} s", started.elapsed().as_secs_f64());
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        std::process::exit(1);
    }
}
