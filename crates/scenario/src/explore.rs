//! The explorer: many seeded schedules of one scenario, stopping at the first that finds a
//! violation, an invariant problem or a deadlock.
//!
//! Under the explorer's schedules a scenario's pauses, grace-period steps and checks do not
//! apply (the scheduler decides the interleaving and steps grace periods as one of its
//! choices) and step expectations are not checked: a different interleaving may legitimately
//! give a different errno. What must never happen under any schedule is what the checkers
//! report.

use crate::model::Scenario;
use crate::run::{Outcome, ScheduleSpec, run};
use std::ops::Range;

/// The first schedule that found a problem.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its schedule (what `bpfls replay` re-runs).
    pub schedule: ScheduleSpec,
    /// What the run found, with its trace.
    pub outcome: Outcome,
}

/// The explorer's result.
#[derive(Debug, Clone)]
pub struct Exploration {
    /// Schedules run.
    pub runs: u64,
    /// The first that found a problem, if any.
    pub found: Option<Found>,
}

/// Runs `scenario` under the random scheduler (or PCT with `pct` = depth) for each seed in
/// `seeds`, calling `progress` after each run, until a run finds a problem.
pub fn explore(
    scenario: &Scenario,
    seeds: Range<u64>,
    pct: Option<u32>,
    mut progress: impl FnMut(u64),
) -> Exploration {
    let mut runs = 0;
    for seed in seeds {
        let schedule = match pct {
            None => ScheduleSpec::Random { seed },
            Some(depth) => ScheduleSpec::Pct { seed, depth },
        };
        let outcome = run(scenario, schedule);
        runs += 1;
        progress(seed);
        if outcome.found_problem() {
            return Exploration { runs, found: Some(Found { schedule, outcome }) };
        }
    }
    Exploration { runs, found: None }
}
