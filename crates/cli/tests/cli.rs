//! The `bpfls` binary: exit codes (0 ok, 1 expectation or violation, 2 bad input), the default
//! run, check, list, JSON traces that replay identically, a tampered trace that diverges, and
//! an explorer find whose printed replay command reproduces it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bpfls(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bpfls")).args(args).output().expect("bpfls runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bpfls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn no_arguments_narrates_the_default_scenario_and_exits_0() {
    let o = bpfls(&[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.starts_with("task-lifecycle: "), "{out}");
    for phrase in [
        "allocates element 1",
        "takes the lock of storage 1",
        "behind a Tasks-Trace grace period",
        "Tasks-Trace grace period 1 ends",
        "goes back to the slab",
        "violations: 0",
    ] {
        assert!(out.contains(phrase), "the narration lacks `{phrase}`:\n{out}");
    }
}

#[test]
fn check_and_list() {
    let o = bpfls(&["check", "task-lifecycle"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.contains("scenarios/task-lifecycle.toml: ok"));
    let o = bpfls(&["list"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).0.lines().any(|l| l.starts_with("task-lifecycle ")));
    for cmd in [&[][..], &["run"], &["check"], &["list"], &["replay"], &["explore"]] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = bpfls(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(text(&o).0.contains("Examples:"), "`bpfls {args:?}` shows examples");
    }
}

#[test]
fn bad_input_exits_2_with_a_located_message() {
    let (o, (_, err)) = {
        let o = bpfls(&["check", "/nonexistent/x.toml"]);
        let t = text(&o);
        (o, t)
    };
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("neither a readable file nor a bundled scenario"), "{err}");

    let bad = tmp("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\ndescription = \"x\"\n[maps.m]\ntype = \"tasks\"\n")
        .unwrap();
    let o = bpfls(&["check", bad.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("4:"), "file and line: {err}");
    assert!(err.contains("tasks"), "names what is wrong: {err}");

    let o = bpfls(&["explore", "task-lifecycle", "--seeds", "5..5"]);
    assert_eq!(o.status.code(), Some(2), "an empty seed range is bad input");
    let o = bpfls(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "an unknown command is bad input");
}

#[test]
fn a_failed_expectation_exits_1() {
    let path = tmp("wrong.toml");
    std::fs::write(
        &path,
        "name = \"wrong\"\ndescription = \"expects the wrong value\"\n\
         [maps.m]\ntype = \"task\"\n[owners.t]\ntype = \"task\"\n\
         [[step]]\ncpu = 0\nupdate = \"m\"\nowner = \"t\"\nvalue = 1\n\
         [[step]]\ncpu = 1\nlookup = \"m\"\nowner = \"t\"\nexpect = 2\n",
    )
    .unwrap();
    let o = bpfls(&["run", path.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("FAILED: step 2 (line 12): `value 1`, expected 2"), "{err}");
}

#[test]
fn traces_are_byte_identical_and_replay_identically_and_a_tampered_one_diverges() {
    let (a, b) = (tmp("a.ndjson"), tmp("b.ndjson"));
    for p in [&a, &b] {
        let o = bpfls(&["run", "task-lifecycle", "--trace-out", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0));
    }
    let trace = std::fs::read_to_string(&a).unwrap();
    assert_eq!(trace, std::fs::read_to_string(&b).unwrap(), "C12: same run, same bytes");
    let json = text(&bpfls(&["run", "task-lifecycle", "--format", "json"])).0;
    assert_eq!(json, trace, "--format json prints the trace itself");

    let o = bpfls(&["replay", a.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.starts_with("identical: "));

    // Change one recorded event: the replay names that line.
    let mut lines: Vec<String> = trace.lines().map(str::to_string).collect();
    let i = lines.iter().position(|l| l.contains("\"site\":\"selem_alloc\"")).unwrap();
    lines[i] = lines[i].replace("selem_alloc", "storage_alloc");
    let tampered = tmp("tampered.ndjson");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let o = bpfls(&["replay", tampered.to_str().unwrap()]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("DIVERGED at line {}", i + 1)), "{out}");
    assert!(out.contains("recorded:") && out.contains("replayed:"), "{out}");

    // A truncated trace is bad input.
    let truncated = tmp("truncated.ndjson");
    std::fs::write(&truncated, lines[..10].join("\n")).unwrap();
    assert_eq!(bpfls(&["replay", truncated.to_str().unwrap()]).status.code(), Some(2));
}

#[test]
fn the_explorer_writes_the_failing_trace_and_its_replay_command_reproduces_it() {
    // A scenario that is wrong only under some interleavings: without the recheck under the
    // storage lock, a lookup racing with a delete caches an unlinked element (C8).
    let path = tmp("race.toml");
    let step = |cpu: u32, what: &str| format!("[[step]]\ncpu = {cpu}\n{what}\n");
    let steps = [
        step(0, "update = \"a\"\nowner = \"t\""),
        step(0, "update = \"b\"\nowner = \"t\""),
        step(1, "lookup = \"b\"\nowner = \"t\""),
        step(1, "lookup = \"b\"\nowner = \"t\""),
        step(0, "run = \"reader\""),
        step(1, "delete = \"a\"\nowner = \"t\""),
        step(0, "run = \"reader\""),
    ];
    std::fs::write(
        &path,
        "name = \"race\"\ndescription = \"lookup vs delete without the recheck\"\n\
         [kernel]\nmutations = [\"skip_cache_recheck\"]\n\
         [maps.a]\ntype = \"task\"\n[maps.b]\ntype = \"task\"\n[owners.t]\ntype = \"task\"\n\
         [programs.reader]\nactions = [ { get = \"a\", owner = \"t\" } ]\n"
            .to_string()
            + &steps.concat(),
    )
    .unwrap();
    let out_trace = tmp("found.ndjson");
    let o = bpfls(&[
        "explore",
        path.to_str().unwrap(),
        "--seeds",
        "0..300",
        "--trace-out",
        out_trace.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "found something: {out}\n{err}");
    let cmd = out.lines().skip_while(|l| !l.contains("reproduce it with:")).nth(1).unwrap();
    let args: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(args[..2], ["bpfls", "replay"], "{cmd}");
    let o = bpfls(&args[1..]);
    let (rout, _) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{rout}");
    assert!(rout.contains("reproduced: "), "{rout}");
}

#[test]
fn the_readme_excerpt_is_what_the_default_run_prints() {
    let readme = include_str!("../../../README.md");
    let from = readme.find("An excerpt:").expect("the README shows an excerpt");
    let start = from + readme[from..].find("```text\n").expect("a text block") + 8;
    let excerpt = &readme[start..start + readme[start..].find("```").expect("it ends")];
    let (out, _) = text(&bpfls(&[]));
    let lines: Vec<&str> = out.lines().collect();
    for line in excerpt.lines().filter(|l| l.trim() != "...") {
        assert!(lines.contains(&line), "the README shows `{line}`, the default run does not");
    }
}
