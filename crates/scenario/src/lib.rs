//! Scenario files, stepped runs, traces and the schedule explorer.
//!
//! A scenario is a TOML file a person new to BPF can read and write (see
//! `docs/scenario-format.md`): the kernel's configuration, maps, owners, programs built from a
//! few named behaviours, and an ordered list of steps. [`parse()`] turns it into a validated
//! [`Scenario`] (or an error with file, line, column and what was expected); [`run()`] executes
//! it on the `Kernel`'s stepped mode, where the steps' order is the schedule, and produces a
//! [`Trace`]: every probe point passed and every step's outcome, in order, with no addresses
//! and no wall time, so the same scenario always gives the same trace. [`replay()`] re-executes a
//! trace and compares it event by event; [`explore()`] runs the same scenario under many seeded
//! schedules looking for violations.

pub mod model;
pub mod parse;
pub mod run;
pub mod trace;

pub use model::Scenario;
pub use parse::{ScenarioError, parse};
pub use run::{Outcome, ScheduleSpec, Summary, run};
pub use trace::{Divergence, Line, Trace, TraceError, compare};
pub mod explore;

pub use explore::{Exploration, Found, explore};

/// Why a trace could not be replayed.
#[derive(Debug)]
pub enum ReplayError {
    /// The trace file is malformed.
    Trace(TraceError),
    /// The scenario in its header no longer parses.
    Scenario(Box<ScenarioError>),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Trace(e) => write!(f, "{e}"),
            ReplayError::Scenario(e) => write!(f, "the trace's scenario: {e}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Re-executes a recorded trace (its scenario, under its schedule) and compares the new trace
/// with it line by line: `Ok(None)` when identical, else where they part.
pub fn replay(trace_text: &str) -> Result<(Trace, Option<Divergence>), ReplayError> {
    let recorded = Trace::from_ndjson(trace_text).map_err(ReplayError::Trace)?;
    let (path, text, schedule) = recorded.source().expect("from_ndjson checked the header");
    let scenario = parse(path, text).map_err(|e| ReplayError::Scenario(Box::new(e)))?;
    let replayed = run(&scenario, schedule).trace.with_source(path, text);
    let divergence = compare(&recorded, &replayed);
    Ok((replayed, divergence))
}
pub mod bundled;
pub mod narrate;
