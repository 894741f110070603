//! The README's scenario example parses, runs and behaves as it declares: the front door's
//! example must not rot.

use bpfls_scenario::{ScheduleSpec, parse, run};

#[test]
fn the_readme_scenario_example_behaves_as_declared() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("the README has a TOML example") + 8;
    let len = readme[start..].find("```").expect("the example ends");
    let text = &readme[start..start + len];
    let scenario = parse("README.md", text).unwrap_or_else(|e| panic!("{}", e.render()));
    let outcome = run(&scenario, ScheduleSpec::Steps);
    assert!(outcome.passed(), "{:?}", outcome.failures);
}
