//! The explorer's speed: schedules per second on the bundled `three-cpus` scenario (3 CPUs,
//! 10 operations, 4 checks), held against a control measured in the same process.
//!
//! # Method
//!
//! As in the other benches (`bpfls_testkit::bench`): interleaved rounds of subject and
//! control, medians of the per-round ratios. The subject is one explored schedule (a fresh
//! stepped kernel, the scenario's bodies on logical-CPU threads, every probe point a possible
//! switch, the checkers, the teardown); the control is spawning and joining as many OS threads
//! as the run has bodies (four), the floor of a design that gives each logical CPU a thread.
//! The ratio says how many of those floors a schedule costs. The schedules-per-second figure
//! is printed too, with its goal (at least 1,000/s on one core): run the bench under
//! `taskset -c 0` for that figure, since a baton handoff between two cores costs more than a
//! switch on one.
//!
//! Run with `cargo bench -p bpfls-scenario --bench explore` (add `-- --quick` for fewer
//! iterations). The exit status is 1 if a schedule of this clean scenario reports a problem.

use bpfls_scenario::{ScheduleSpec, bundled, parse, run};
use bpfls_testkit::bench::*;
use std::hint::black_box;
use std::time::Duration;

/// The goal: explored schedules per second on one core.
const RATE_GOAL: f64 = 1000.0;

fn main() {
    start_watchdog("explore", Duration::from_secs(120));
    let b = bundled::find("three-cpus").expect("three-cpus is bundled");
    let scenario = parse(&b.path(), b.text).expect("three-cpus parses");
    let iters: u64 = if quick() { 30 } else { 200 };
    let mut seed = 0u64;
    phase("explore three-cpus");
    let rounds = interleave(
        || {
            per_op(iters, || {
                seed += 1;
                let outcome = run(&scenario, ScheduleSpec::Random { seed });
                if outcome.found_problem() {
                    eprintln!("seed {seed}: {:?}", outcome.details);
                    std::process::exit(1);
                }
                black_box(outcome);
            })
        },
        || {
            per_op(iters, || {
                let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(|| {})).collect();
                threads.into_iter().for_each(|t| t.join().expect("joins"));
            })
        },
    );
    phases_done();
    let layout = Layout {
        subject: 30,
        control: 26,
        ratio: 9,
        spread: 15,
        rule: 110,
        kernel: false,
        verdicts: Verdicts::ItsControl,
    };
    let rows = [Row::new("one schedule of three-cpus", "spawn + join 4 threads", rounds)];
    print_table(&layout, "Explorer", &rows);
    let rate = 1e9 / median(&rows[0].rounds.subject);
    println!(
        "\n{} goal: {rate:.0} schedules/s (goal ≥ {RATE_GOAL:.0}/s on one core; run under \
         `taskset -c 0` for that figure)",
        if rate >= RATE_GOAL { "PASS" } else { "MISS" }
    );
}
