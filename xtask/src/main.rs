//! See <https://github.com/matklad/cargo-xtask/>.
//!
//! This binary defines various auxiliary build commands, which are not expressible with just
//! `cargo`: the CI pipeline, the loom and Miri runs with their special flags, and benchmarks.
//! Run it as `cargo xtask <subcommand>` (the alias lives in `.cargo/config.toml`).
//!
//! The binary is integrated into the `cargo` command line by using an alias in
//! `.cargo/config.toml`. It has no dependencies on purpose: it is compiled on every
//! `cargo xtask` call, so it must stay quick to build. Flags are parsed by hand.
//!
//! The repository's style rules ("tidy" tests) live in `tidy.rs` and run with
//! `cargo test -p xtask`, which `cargo xtask ci` does as one of its steps.

#[cfg(test)]
mod tidy;

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const USAGE: &str = "\
cargo xtask <SUBCOMMAND>

SUBCOMMANDS:
    ci                    fmt check, clippy, workspace tests, doc tests, examples, tidy tests,
                          the loom models at preemption bound 2, then the shuttle models;
                          stops at the first failure
    loom [--deep] [--bless] [FILTER]
                          run every crates/*/tests/loom_*.rs under --cfg loom
                          (LOOM_MAX_PREEMPTIONS=2, or 3 with --deep; an exported value wins);
                          FILTER is passed to the test binaries as a test-name filter; each
                          model's iteration count must stay within 10x of
                          xtask/loom-baseline.txt (check C14); --bless records the counts
    shuttle               run every crates/*/tests/shuttle_*.rs under --cfg shuttle
    miri                  run the sync and rcu tests under nightly Miri (skipped when
                          nightly Miri is not installed)
    bench [--quick]       run the workspace benchmarks (--quick is passed to the bench binaries)
    help                  print this text
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask: error: {}", failure.message);
            if failure.usage {
                eprintln!();
                eprint!("{USAGE}");
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Why a subcommand stopped: a usage error (exit 2) or a failed step (exit 1).
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
    usage: bool,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2, usage: true }
    }

    fn step(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1, usage: false }
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

fn run(args: &[String]) -> Result<()> {
    let (subcommand, rest) = match args.split_first() {
        Some((first, rest)) => (first.as_str(), rest),
        None => ("help", &[][..]),
    };
    match subcommand {
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        "ci" => {
            no_args("ci", rest)?;
            ci()
        }
        "loom" => {
            let flags = LoomFlags::parse(rest)?;
            loom(&flags)
        }
        "miri" => {
            no_args("miri", rest)?;
            miri()
        }
        "shuttle" => {
            no_args("shuttle", rest)?;
            shuttle()
        }
        "bench" => {
            let quick = BenchFlags::parse(rest)?.quick;
            bench(quick)
        }
        other => Err(Failure::usage(format!("unknown subcommand {other}"))),
    }
}

fn no_args(subcommand: &str, rest: &[String]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(Failure::usage(format!("`{subcommand}` takes no arguments, got `{arg}`"))),
    }
}

/// Flags of `cargo xtask loom`.
#[derive(Debug, Default, PartialEq, Eq)]
struct LoomFlags {
    deep: bool,
    bless: bool,
    filter: Option<String>,
}

impl LoomFlags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut flags = Self::default();
        for arg in args {
            match arg.as_str() {
                "--deep" => flags.deep = true,
                "--bless" => flags.bless = true,
                flag if flag.starts_with('-') => {
                    return Err(Failure::usage(format!("`loom`: unknown flag `{flag}`")));
                }
                filter => {
                    if let Some(previous) = &flags.filter {
                        return Err(Failure::usage(format!(
                            "`loom` takes one FILTER, got `{previous}` and `{filter}`"
                        )));
                    }
                    flags.filter = Some(filter.to_string());
                }
            }
        }
        Ok(flags)
    }
}

/// Flags of `cargo xtask bench`.
#[derive(Debug, Default, PartialEq, Eq)]
struct BenchFlags {
    quick: bool,
}

impl BenchFlags {
    fn parse(args: &[String]) -> Result<Self> {
        let mut flags = Self::default();
        for arg in args {
            match arg.as_str() {
                "--quick" => flags.quick = true,
                other => {
                    return Err(Failure::usage(format!("`bench`: unknown argument `{other}`")));
                }
            }
        }
        Ok(flags)
    }
}

/// The repository root: the parent of this crate's directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the project root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Spawning commands

/// A command line to spawn from the project root, with the extra environment it needs.
#[derive(Debug, Clone)]
struct Cmd {
    program: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Cmd {
    fn new(program: &str) -> Self {
        Self { program: program.to_string(), args: Vec::new(), envs: Vec::new() }
    }

    fn cargo() -> Self {
        // The rustup proxy, not `$CARGO`: `cargo +nightly` must work, and the proxy picks the
        // toolchain pinned in rust-toolchain.toml for everything else.
        Self::new("cargo")
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.envs.push((key.to_string(), value.as_ref().to_string()));
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).current_dir(project_root());
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        command
    }

    /// Echoes the command line, runs it with inherited stdio, and fails naming `step` if it
    /// does not exit successfully.
    fn run(&self, step: &str) -> Result<()> {
        eprintln!("$ {self}");
        let status = self
            .command()
            .status()
            .map_err(|e| Failure::step(format!("step `{step}`: could not spawn `{self}`: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Failure::step(format!("step `{step}` failed: `{self}` exited with {status}")))
        }
    }

    /// Like [`Cmd::run`], but also returns what the command printed on stdout (echoed line by
    /// line as it comes, so a long run still shows progress).
    fn run_tee(&self, step: &str) -> Result<String> {
        use std::io::{BufRead, BufReader};
        eprintln!("$ {self}");
        let mut child =
            self.command().stdout(std::process::Stdio::piped()).spawn().map_err(|e| {
                Failure::step(format!("step `{step}`: could not spawn `{self}`: {e}"))
            })?;
        let mut out = String::new();
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(std::io::Result::ok) {
                println!("{line}");
                out.push_str(&line);
                out.push('\n');
            }
        }
        let status = child
            .wait()
            .map_err(|e| Failure::step(format!("step `{step}`: waiting for `{self}`: {e}")))?;
        if status.success() {
            Ok(out)
        } else {
            Err(Failure::step(format!("step `{step}` failed: `{self}` exited with {status}")))
        }
    }

    /// Runs the command with captured output; `None` if it cannot be spawned or fails.
    fn probe(&self) -> Option<String> {
        eprintln!("$ {self}");
        let output = self.command().output().ok()?;
        if !output.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in &self.envs {
            write!(f, "{key}={} ", shell_quote(value))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(arg))?;
        }
        Ok(())
    }
}

/// Quotes `s` for a POSIX shell when it contains anything but plainly safe characters, so an
/// echoed command line can be pasted back into a terminal.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// ci

fn ci() -> Result<()> {
    type StepFn = fn() -> Result<()>;
    let steps: [(&str, StepFn); 8] = [
        ("fmt", || Cmd::cargo().args(["fmt", "--all", "--check"]).run("fmt")),
        ("clippy", || {
            Cmd::cargo()
                .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
                .run("clippy")
        }),
        // `--tests` runs the unit tests of libs and bins plus the integration tests;
        // `--all-targets` would also *run* the `harness = false` bench binaries (unoptimised),
        // and `--lib` fails on a member without a library. `--examples` builds the examples.
        ("test", || {
            Cmd::cargo()
                .args(["test", "--workspace", "--exclude", "xtask", "--tests", "--examples"])
                .run("test")
        }),
        ("doctest", || {
            Cmd::cargo().args(["test", "--workspace", "--exclude", "xtask", "--doc"]).run("doctest")
        }),
        ("examples", examples),
        ("tidy", || Cmd::cargo().args(["test", "-p", "xtask"]).run("tidy")),
        ("loom", || loom(&LoomFlags::default())),
        ("shuttle", shuttle),
    ];

    let mut timings: Vec<(&str, Duration, bool)> = Vec::new();
    let mut result = Ok(());
    for (name, step) in steps {
        eprintln!("\n==> xtask ci: step `{name}`");
        let start = Instant::now();
        result = step();
        timings.push((name, start.elapsed(), result.is_ok()));
        if result.is_err() {
            break;
        }
    }

    eprintln!("\nxtask ci: summary");
    for (name, elapsed, ok) in &timings {
        let verdict = if *ok { "ok" } else { "FAILED" };
        eprintln!("    {name:<8} {verdict:<6} {:>8.1}s", elapsed.as_secs_f64());
    }
    let total: Duration = timings.iter().map(|(_, d, _)| *d).sum();
    eprintln!("    {:<8} {:<6} {:>8.1}s", "total", "", total.as_secs_f64());
    result?;
    eprintln!("xtask ci: all steps passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// loom

/// The loom test files of the workspace: `crates/*/tests/loom_*.rs`, grouped by package name
/// (from the `[package]` section of the crate's Cargo.toml), each with its test-target stems.
fn find_loom_tests(root: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    find_model_tests(root, "loom")
}

/// Every `crates/*/tests/<kind>_*.rs`, grouped by package (`kind` is `loom` or `shuttle`).
fn find_model_tests(root: &Path, kind: &str) -> Result<BTreeMap<String, Vec<String>>> {
    find_crate_files(root, "tests", &format!("{kind}_"), kind)
}

/// The stems of every `crates/*/<subdir>/<prefix>*.rs`, grouped by package, for step `kind`.
fn find_crate_files(
    root: &Path,
    subdir: &str,
    prefix: &str,
    kind: &str,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut by_package: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let crates_dir = root.join("crates");
    let Ok(entries) = fs::read_dir(&crates_dir) else {
        return Ok(by_package);
    };
    let mut crate_dirs: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    crate_dirs.sort();
    for crate_dir in crate_dirs {
        let Ok(tests) = fs::read_dir(crate_dir.join(subdir)) else {
            continue;
        };
        let mut stems: Vec<String> = tests
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
            .filter(|stem| stem.starts_with(prefix))
            .collect();
        if stems.is_empty() {
            continue;
        }
        stems.sort();
        let manifest_path = crate_dir.join("Cargo.toml");
        let manifest = fs::read_to_string(&manifest_path).map_err(|e| {
            Failure::step(format!("step `{kind}`: cannot read {}: {e}", manifest_path.display()))
        })?;
        let package = package_name(&manifest).ok_or_else(|| {
            Failure::step(format!(
                "step `{kind}`: no `name = \"...\"` in the [package] section of {}",
                manifest_path.display()
            ))
        })?;
        for stem in &stems {
            eprintln!(
                "xtask {kind}: found crates/{}/{subdir}/{stem}.rs ({package})",
                dir_name(&crate_dir)
            );
        }
        by_package.entry(package).or_default().extend(stems);
    }
    Ok(by_package)
}

/// Runs every `crates/*/examples/*.rs` (`cargo run --example`): an example that panics or
/// asserts fails CI.
fn examples() -> Result<()> {
    for (package, names) in find_crate_files(&project_root(), "examples", "", "examples")? {
        for name in names {
            Cmd::cargo()
                .args(["run", "-q", "-p", &package, "--example", &name])
                .run(&format!("example {name}"))?;
        }
    }
    Ok(())
}

fn dir_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The `name = "..."` of a Cargo.toml's `[package]` section.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() == "name" {
            let value = value.trim();
            let value = value.strip_prefix('"')?;
            return Some(value[..value.find('"')?].to_string());
        }
    }
    None
}

/// The value to use for a loom environment variable: the user's exported value if any, else
/// `default`.
fn env_or(key: &str, default: &str) -> String {
    match env::var(key) {
        Ok(value) if !value.trim().is_empty() => {
            eprintln!("xtask loom: honouring {key}={value} from the environment");
            value
        }
        _ => default.to_string(),
    }
}

fn loom(flags: &LoomFlags) -> Result<()> {
    let root = project_root();
    let by_package = find_loom_tests(&root)?;
    if by_package.is_empty() {
        eprintln!("xtask loom: no crates/*/tests/loom_*.rs files found; nothing to run");
        return Ok(());
    }
    let preemptions = env_or("LOOM_MAX_PREEMPTIONS", if flags.deep { "3" } else { "2" });
    let branches = env_or("LOOM_MAX_BRANCHES", "10000");
    let target_dir = root.join("target").join("loom");
    let mut observed: Observed = Vec::new();
    for (package, stems) in &by_package {
        let mut cmd = Cmd::cargo().args(["test", "--release", "-p", package]);
        for stem in stems {
            cmd = cmd.args(["--test", stem]);
        }
        cmd = cmd.args(["--", "--nocapture", "--test-threads=1"]);
        if let Some(filter) = &flags.filter {
            cmd = cmd.args([filter]);
        }
        let out = cmd
            .env("RUSTFLAGS", "--cfg loom -C debug-assertions")
            .env("CARGO_TARGET_DIR", target_dir.to_string_lossy())
            .env("LOOM_MAX_PREEMPTIONS", &preemptions)
            .env("LOOM_MAX_BRANCHES", &branches)
            .run_tee("loom")?;
        observed.extend(
            parse_iterations(&out)
                .into_iter()
                .map(|(name, bound, n)| (package.clone(), name, bound, n)),
        );
    }
    let baseline_path = root.join("xtask").join("loom-baseline.txt");
    if flags.bless {
        let mut blessed =
            fs::read_to_string(&baseline_path).map(|t| parse_baseline(&t)).unwrap_or_default();
        for (package, name, bound, n) in &observed {
            blessed.insert((package.clone(), name.clone(), *bound), *n);
        }
        fs::write(&baseline_path, render_baseline(&blessed)).map_err(|e| {
            Failure::step(format!("step `loom`: writing {}: {e}", baseline_path.display()))
        })?;
        eprintln!(
            "xtask loom: blessed {} iteration counts into {}",
            observed.len(),
            baseline_path.display()
        );
        return Ok(());
    }
    let baseline =
        fs::read_to_string(&baseline_path).map(|t| parse_baseline(&t)).unwrap_or_default();
    let (problems, unknown) = check_budget(&baseline, &observed);
    for (package, name, bound, n) in &unknown {
        eprintln!(
            "xtask loom: no baseline for {package} {name} at bound {bound} ({n} iterations); \
             `cargo xtask loom --bless` records it"
        );
    }
    if !problems.is_empty() {
        return Err(Failure::step(format!(
            "step `loom`: iteration budget (check C14) violated:\n  {}\n(if the change is \
             intended, run `cargo xtask loom --bless` and commit xtask/loom-baseline.txt)",
            problems.join("\n  ")
        )));
    }
    eprintln!(
        "xtask loom: {} models within 10x of their baseline iteration counts",
        observed.len() - unknown.len()
    );
    Ok(())
}

/// `(test name, bound, iterations)` from the models' `NAME: completed in N iterations (bound B`
/// lines.
fn parse_iterations(out: &str) -> Vec<(String, u32, u64)> {
    out.lines()
        .filter_map(|line| {
            let (head, rest) = line.split_once(": completed in ")?;
            let name = head.rsplit(' ').next()?.to_string();
            let (n, rest) = rest.split_once(" iterations (bound ")?;
            let bound: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((name, bound.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect()
}

type Baseline = BTreeMap<(String, String, u32), u64>;

/// Lines `package test bound iterations`; `#` starts a comment.
fn parse_baseline(text: &str) -> Baseline {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [package, name, bound, n] => Some((
                    (package.to_string(), name.to_string(), bound.parse().ok()?),
                    n.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

fn render_baseline(b: &Baseline) -> String {
    let mut out = String::from(
        "# Loom iteration counts per model (check C14): `cargo xtask loom` fails when a model\n\
         # explores 10x fewer (it silently stopped exploring) or 10x more (past its time budget)\n\
         # executions than recorded here. Regenerate with `cargo xtask loom --bless`.\n\
         # package test bound iterations\n",
    );
    for ((package, name, bound), n) in b {
        out.push_str(&format!("{package} {name} {bound} {n}\n"));
    }
    out
}

type Observed = Vec<(String, String, u32, u64)>;

/// Compares observed counts with the baseline: problems (10x off either way) and models with
/// no baseline entry.
fn check_budget(baseline: &Baseline, observed: &Observed) -> (Vec<String>, Observed) {
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    for (package, name, bound, n) in observed {
        match baseline.get(&(package.clone(), name.clone(), *bound)) {
            None => unknown.push((package.clone(), name.clone(), *bound, *n)),
            Some(&base) if n.saturating_mul(10) < base => problems.push(format!(
                "{package} {name} (bound {bound}): {n} iterations, baseline {base}: explores 10x \
                 fewer executions than it used to"
            )),
            Some(&base) if *n > base.saturating_mul(10) => problems.push(format!(
                "{package} {name} (bound {bound}): {n} iterations, baseline {base}: 10x past its \
                 budget"
            )),
            Some(_) => {}
        }
    }
    (problems, unknown)
}

// ---------------------------------------------------------------------------------------------
// shuttle

/// Runs every `crates/*/tests/shuttle_*.rs` under `--cfg shuttle` (randomised and PCT
/// schedules; release build, separate target dir).
fn shuttle() -> Result<()> {
    let root = project_root();
    let by_package = find_model_tests(&root, "shuttle")?;
    if by_package.is_empty() {
        eprintln!("xtask shuttle: no crates/*/tests/shuttle_*.rs files found; nothing to run");
        return Ok(());
    }
    let target_dir = root.join("target").join("shuttle");
    for (package, stems) in &by_package {
        let mut cmd = Cmd::cargo().args(["test", "--release", "-p", package]);
        for stem in stems {
            cmd = cmd.args(["--test", stem]);
        }
        cmd.args(["--", "--nocapture", "--test-threads=1"])
            .env("RUSTFLAGS", "--cfg shuttle")
            .env("CARGO_TARGET_DIR", target_dir.to_string_lossy())
            .run("shuttle")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// miri

fn miri() -> Result<()> {
    let Some(version) = Cmd::cargo().args(["+nightly", "miri", "--version"]).probe() else {
        eprintln!(
            "xtask miri: skipped: nightly Miri is not installed \
             (rustup component add --toolchain nightly miri rust-src)"
        );
        return Ok(());
    };
    eprintln!("xtask miri: using {version}");
    let target_dir = project_root().join("target").join("miri");
    Cmd::cargo()
        .args([
            "+nightly",
            "miri",
            "test",
            "-p",
            "bpfls-sync",
            "-p",
            "bpfls-rcu",
            "--lib",
            "--tests",
        ])
        .env("MIRIFLAGS", "-Zmiri-strict-provenance -Zmiri-disable-isolation")
        .env("CARGO_TARGET_DIR", target_dir.to_string_lossy())
        .run("miri")
}

// ---------------------------------------------------------------------------------------------
// bench

fn bench(quick: bool) -> Result<()> {
    // `--bench '*'` selects the bench targets only: plain `cargo bench` would also run the
    // libraries' unit tests in bench mode, whose libtest harness rejects `--quick`.
    let mut cmd = Cmd::cargo().args(["bench", "--workspace", "--exclude", "xtask", "--bench", "*"]);
    if quick {
        cmd = cmd.args(["--", "--quick"]);
    }
    cmd.run("bench")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loom_flags_parse() {
        assert_eq!(LoomFlags::parse(&[]).unwrap(), LoomFlags::default());
        assert_eq!(
            LoomFlags::parse(&strings(&["--deep", "grace"])).unwrap(),
            LoomFlags { deep: true, bless: false, filter: Some("grace".into()) }
        );
        assert!(LoomFlags::parse(&strings(&["--deeper"])).is_err());
        assert!(LoomFlags::parse(&strings(&["a", "b"])).is_err());
    }

    #[test]
    fn bench_flags_parse() {
        assert!(!BenchFlags::parse(&[]).unwrap().quick);
        assert!(BenchFlags::parse(&strings(&["--quick"])).unwrap().quick);
        assert_eq!(BenchFlags::parse(&strings(&["--slow"])).unwrap_err().code, 2);
    }

    #[test]
    fn unknown_subcommand_is_a_usage_error() {
        let err = run(&strings(&["frobnicate"])).unwrap_err();
        assert_eq!(err.code, 2);
        assert_eq!(err.message, "unknown subcommand frobnicate");
        assert_eq!(run(&strings(&["ci", "--now"])).unwrap_err().code, 2);
    }

    #[test]
    fn package_name_reads_the_package_section() {
        let manifest = "[workspace]\nname = \"no\"\n\n[package]\nversion = \"1\"\nname = \"bpfls-rcu\"\n\n[dependencies]\nname = \"x\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("bpfls-rcu"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    #[test]
    fn commands_are_echoed_with_env_and_quoting() {
        let cmd = Cmd::cargo()
            .args(["test", "--", "a b"])
            .env("RUSTFLAGS", "--cfg loom")
            .env("LOOM_MAX_PREEMPTIONS", "2");
        assert_eq!(
            cmd.to_string(),
            "RUSTFLAGS='--cfg loom' LOOM_MAX_PREEMPTIONS=2 cargo test -- 'a b'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn finds_and_groups_loom_files() {
        let root = env::temp_dir().join(format!("xtask-loom-fixture-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (krate, package, files) in [
            ("rcu", "bpfls-rcu", &["loom_gp.rs", "loom_cb.rs", "stress.rs"][..]),
            ("sync", "bpfls-sync", &["smoke.rs"][..]),
        ] {
            let dir = root.join("crates").join(krate);
            fs::create_dir_all(dir.join("tests")).unwrap();
            let manifest =
                format!("[package]\nname = \"{package}\"\n\n[lints]\nworkspace = true\n");
            fs::write(dir.join("Cargo.toml"), manifest).unwrap();
            for file in files {
                fs::write(dir.join("tests").join(file), "#![cfg(loom)]\n").unwrap();
            }
        }
        let found = find_loom_tests(&root);
        fs::remove_dir_all(&root).unwrap();
        let found: Vec<_> = found.unwrap().into_iter().collect();
        assert_eq!(
            found,
            [("bpfls-rcu".to_string(), vec!["loom_cb".to_string(), "loom_gp".to_string()])]
        );
    }

    #[test]
    fn finds_the_loom_files_of_this_repo() {
        // Whatever exists now must be found without error, and only `loom_*` stems.
        let found = find_loom_tests(&project_root()).unwrap();
        assert!(found.values().flatten().all(|stem| stem.starts_with("loom_")));
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn iteration_lines_are_parsed() {
        let out = "test a ... a: completed in 25 iterations (bound 2) [1.0ms]\n\
                   noise\n\
                   b: completed in 7 iterations (bound 2, capped from 3) [x]\n";
        assert_eq!(parse_iterations(out), vec![("a".to_string(), 2, 25), ("b".to_string(), 2, 7)]);
    }

    #[test]
    fn budget_flags_a_10x_drop_and_a_10x_growth_and_lists_unknown_models() {
        let baseline = parse_baseline("# c\np a 2 100\np b 2 100\np c 2 100\n");
        assert_eq!(render_baseline(&baseline).lines().filter(|l| !l.starts_with('#')).count(), 3);
        let observed: Observed = vec![
            ("p".into(), "a".into(), 2, 9),
            ("p".into(), "b".into(), 2, 1001),
            ("p".into(), "c".into(), 2, 150),
            ("p".into(), "d".into(), 2, 5),
            ("p".into(), "a".into(), 3, 5),
        ];
        let (problems, unknown) = check_budget(&baseline, &observed);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("p a (bound 2): 9 iterations, baseline 100"));
        assert!(problems[1].contains("10x past its budget"));
        assert_eq!(unknown.len(), 2);
    }
}
