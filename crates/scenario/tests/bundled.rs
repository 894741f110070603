//! Every bundled scenario behaves as it declares: it parses, its steps' schedule passes every
//! expectation, the same run always writes the same trace bytes (C12), and replaying its
//! trace finds no divergence. The mutation scenarios (those expecting violations or a
//! deadlock) are also found by the explorer within 100 seeds, and the trace it finds replays
//! identically. `scenarios/` and [`BUNDLED`] list the same files.

use bpfls_scenario::bundled::{BUNDLED, Bundled, DEFAULT};
use bpfls_scenario::trace::Line;
use bpfls_scenario::{Scenario, ScheduleSpec, Trace, explore, parse, replay, run};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::thread;

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

fn parsed(b: &Bundled) -> Scenario {
    parse(&b.path(), b.text).unwrap_or_else(|e| panic!("{}: does not parse: {e}", b.path()))
}

/// The violations and deadlock report of a trace's `end` line.
fn end_line(trace: &Trace) -> (Vec<String>, Option<Vec<String>>) {
    match trace.lines.last() {
        Some(Line::End { violations, deadlock, .. }) => (violations.clone(), deadlock.clone()),
        other => panic!("a trace ends with its end line, not {other:?}"),
    }
}

/// Whether the scenario declares a bug: violations or a deadlock.
fn is_mutation(s: &Scenario) -> bool {
    !s.expect.violations.is_empty() || s.expect.deadlock
}

/// Runs `check` on every bundled scenario, one thread each, and reports every failure at once.
fn for_each_bundled(what: &str, check: fn(&Bundled) -> Result<(), String>) {
    let handles: Vec<_> =
        BUNDLED.iter().map(|b| (b.name, thread::spawn(move || check(b)))).collect();
    let mut failures = Vec::new();
    for (name, h) in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    assert!(failures.is_empty(), "{what}:\n{}", failures.join("\n"));
}

#[test]
fn scenarios_dir_and_bundled_list_agree() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(scenarios_dir())
        .expect("scenarios/ exists")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    let bundled: BTreeSet<String> = BUNDLED.iter().map(|b| format!("{}.toml", b.name)).collect();
    assert_eq!(on_disk, bundled, "every file of scenarios/ is in BUNDLED, and only those");
    assert_eq!(BUNDLED.len(), bundled.len(), "no scenario is bundled twice");
    assert_eq!(BUNDLED[0].name, DEFAULT, "the default scenario comes first");
    for b in BUNDLED {
        let text = std::fs::read_to_string(scenarios_dir().join(format!("{}.toml", b.name)))
            .expect("readable");
        assert_eq!(text, b.text, "{}: the embedded text is the file's", b.name);
        assert_eq!(parsed(b).name, b.name, "{}: its `name` is its file name", b.name);
    }
}

/// Parses, passes under its own steps, writes the same bytes twice, replays identically.
fn behaves_as_declared(b: &Bundled) -> Result<(), String> {
    let s = parse(&b.path(), b.text).map_err(|e| format!("does not parse: {e}"))?;
    let first = run(&s, ScheduleSpec::Steps);
    if !first.passed() {
        return Err(format!(
            "does not behave as declared:\n  {}\n  details: {:?}",
            first.failures.join("\n  "),
            first.details
        ));
    }
    let second = run(&s, ScheduleSpec::Steps);
    let (a, c) = (first.trace.to_ndjson(), second.trace.to_ndjson());
    if a != c {
        let at = a.lines().zip(c.lines()).position(|(x, y)| x != y);
        return Err(format!(
            "two runs wrote different traces (C12), first difference at line {at:?}"
        ));
    }
    let recorded = first.trace.with_source(&b.path(), b.text).to_ndjson();
    match replay(&recorded) {
        Ok((_, None)) => Ok(()),
        Ok((_, Some(d))) => Err(format!("replay diverges: {d:?}")),
        Err(e) => Err(format!("replay fails: {e}")),
    }
}

#[test]
fn every_bundled_scenario_behaves_as_declared() {
    for_each_bundled("bundled scenarios that misbehave", behaves_as_declared);
}

/// A mutation scenario: the explorer finds a problem within 100 seeds, and its trace replays
/// identically, with the same violations on its end line.
fn explorer_finds_the_bug(b: &Bundled) -> Result<(), String> {
    let s = parsed(b);
    if !is_mutation(&s) {
        return Ok(());
    }
    let found = explore(&s, 0..100, None, |_| {})
        .found
        .ok_or("the explorer found nothing in seeds 0..100")?;
    let recorded = found.outcome.trace.clone().with_source(&b.path(), b.text);
    let (replayed, divergence) =
        replay(&recorded.to_ndjson()).map_err(|e| format!("replay fails: {e}"))?;
    if let Some(d) = divergence {
        return Err(format!("the found trace ({:?}) diverges on replay: {d:?}", found.schedule));
    }
    let (want, got) = (end_line(&recorded), end_line(&replayed));
    if want != got {
        return Err(format!("the replay's end line reports {got:?}, the found trace {want:?}"));
    }
    if want.0 != found.outcome.found {
        return Err(format!(
            "the end line {:?} is not what the run found {:?}",
            want.0, found.outcome.found
        ));
    }
    Ok(())
}

#[test]
fn the_explorer_finds_every_mutation() {
    let mutations = BUNDLED.iter().filter(|b| is_mutation(&parsed(b))).count();
    assert_eq!(mutations, 12, "one scenario per mutation, and one for the busted RCU engine");
    for_each_bundled("mutation scenarios the explorer misses", explorer_finds_the_bug);
}
