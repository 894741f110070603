//! `bpfls`: run, check, replay and explore BPF local storage scenarios.
//!
//! Exit codes: 0 the scenario behaved as declared (or the replay was identical, or the explorer
//! found nothing); 1 an expectation failed, a violation was found, or a replay diverged; 2 bad
//! input (a file that does not exist or does not parse, a malformed trace, bad arguments).

use bpfls_scenario::bundled::{self, BUNDLED};
use bpfls_scenario::narrate::{Detail, narrate};
use bpfls_scenario::{Outcome, Scenario, ScheduleSpec, explore, parse, replay, run};
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Instant;

/// `println!` that does not panic when stdout is closed early (`bpfls run x | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const EXAMPLES: &str = "\
Examples:
  bpfls                                   run the default scenario, narrated
  bpfls list                              the bundled scenarios
  bpfls run r1-first-storage-race         a bundled scenario, by name
  bpfls run my.toml --trace-out t.ndjson  a file, recording its trace
  bpfls replay t.ndjson                   re-run a trace and compare it event by event
  bpfls explore mutation-skip-cache-recheck --seeds 0..100
  RUST_LOG=bpfls=debug bpfls run task-lifecycle   the core's tracing events on stderr";

/// Simulated BPF local storage: scenarios, traces and schedule exploration.
#[derive(Parser, Debug)]
#[command(name = "bpfls", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// Narrated in plain language.
    Text,
    /// The trace, one JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario (a file, or a bundled scenario's name) and check its expectations.
    #[command(
        after_help = "Examples:\n  bpfls run task-lifecycle\n  bpfls run scenarios/r1-first-storage-race.toml --format json\n  bpfls run my.toml --trace-out my.ndjson --verbose\n  bpfls run r2-update-vs-last-delete --seed 7   (a seeded schedule instead of the steps' order)"
    )]
    Run {
        /// The scenario file, or the name of a bundled scenario (`bpfls list`).
        scenario: String,
        /// Write the run's trace (NDJSON) to this file.
        #[arg(long, value_name = "FILE")]
        trace_out: Option<String>,
        /// Output: narration (text) or the trace itself (json).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Narrate every probe point, read-side sections and allocator internals included.
        #[arg(long)]
        verbose: bool,
        /// Run under the seeded random scheduler instead of the steps' order.
        #[arg(long)]
        seed: Option<u64>,
        /// With --seed: the PCT scheduler with this depth.
        #[arg(long, requires = "seed")]
        pct: Option<u32>,
    },
    /// Re-execute a recorded trace and compare the new run with it, event by event.
    #[command(
        after_help = "Examples:\n  bpfls replay failure.ndjson\n\nExit code 0 when the replay is identical, 1 at the first difference (shown with its context)."
    )]
    Replay {
        /// The trace file.
        trace: String,
    },
    /// Run a scenario under many seeded schedules; stop at the first violation or deadlock and
    /// write its trace.
    #[command(
        after_help = "Examples:\n  bpfls explore mutation-skip-cache-recheck --seeds 0..100\n  bpfls explore r1-first-storage-race --seeds 0..1000 --pct 2"
    )]
    Explore {
        /// The scenario file or bundled name.
        scenario: String,
        /// Seeds to try, `A..B` (B excluded).
        #[arg(long, default_value = "0..100", value_parser = parse_range)]
        seeds: std::ops::Range<u64>,
        /// Use the PCT scheduler with this bug depth instead of the random one.
        #[arg(long)]
        pct: Option<u32>,
        /// Where to write the failing trace (default: bpfls-NAME-seedN.ndjson).
        #[arg(long, value_name = "FILE")]
        trace_out: Option<String>,
    },
    /// The bundled scenarios, with one-line descriptions.
    #[command(
        after_help = "Examples:\n  bpfls list\n  bpfls run $(bpfls list | grep r1 | cut -d' ' -f1)"
    )]
    List,
    /// Parse and validate a scenario file without running it.
    #[command(after_help = "Examples:\n  bpfls check my.toml")]
    Check {
        /// The scenario file or bundled name.
        scenario: String,
    },
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}` is not a range like 0..100"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("`{a}` is not a number"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("`{b}` is not a number"))?;
    if a >= b {
        return Err(format!("the range {a}..{b} is empty"));
    }
    Ok(a..b)
}

/// Bad input: printed, exit 2.
struct BadInput(String);

/// The scenario's path and text: a file, else a bundled scenario of that name.
fn load(arg: &str) -> Result<(String, String), BadInput> {
    if let Ok(text) = std::fs::read_to_string(arg) {
        return Ok((arg.to_string(), text));
    }
    if let Some(b) = bundled::find(arg.trim_end_matches(".toml")) {
        return Ok((b.path(), b.text.to_string()));
    }
    Err(BadInput(format!(
        "`{arg}` is neither a readable file nor a bundled scenario (see `bpfls list`)"
    )))
}

fn load_scenario(arg: &str) -> Result<(String, String, Scenario), BadInput> {
    let (path, text) = load(arg)?;
    let scenario = parse(&path, &text).map_err(|e| BadInput(e.render()))?;
    Ok((path, text, scenario))
}

fn print_outcome(outcome: &Outcome, format: Format, detail: Detail) {
    match format {
        Format::Json => {
            use std::io::Write;
            let _ = write!(std::io::stdout(), "{}", outcome.trace.to_ndjson());
        }
        Format::Text => {
            for line in narrate(&outcome.trace, detail) {
                out!("{line}");
            }
        }
    }
}

fn verdict(outcome: &Outcome) -> ExitCode {
    if outcome.passed() {
        eprintln!("ok: the scenario behaved as declared");
        ExitCode::SUCCESS
    } else {
        for f in &outcome.failures {
            eprintln!("FAILED: {f}");
        }
        ExitCode::from(1)
    }
}

fn write_file(path: &str, text: &str) -> Result<(), BadInput> {
    std::fs::write(path, text).map_err(|e| BadInput(format!("cannot write {path}: {e}")))
}

fn main() -> ExitCode {
    // A logical CPU's panic (a deadlock report, a checker's) is caught by the stepped executor
    // and reported with the run; printing it again, with a backtrace, would only be noise.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !std::thread::current().name().is_some_and(|n| n.starts_with("bpfls-cpu")) {
            default_hook(info);
        }
    }));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time() // logical sequence numbers (`seq`) order the events
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match execute(cli.command) {
        Ok(code) => code,
        Err(BadInput(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Option<Command>) -> Result<ExitCode, BadInput> {
    let command = command.unwrap_or(Command::Run {
        scenario: bundled::DEFAULT.to_string(),
        trace_out: None,
        format: Format::Text,
        verbose: false,
        seed: None,
        pct: None,
    });
    match command {
        Command::Run { scenario, trace_out, format, verbose, seed, pct } => {
            let (path, text, sc) = load_scenario(&scenario)?;
            let schedule = match (seed, pct) {
                (None, _) => ScheduleSpec::Steps,
                (Some(seed), None) => ScheduleSpec::Random { seed },
                (Some(seed), Some(depth)) => ScheduleSpec::Pct { seed, depth },
            };
            if matches!(format, Format::Text) {
                out!("{}: {}\n", sc.name, sc.description);
            }
            let mut outcome = run(&sc, schedule);
            outcome.trace = outcome.trace.with_source(&path, &text);
            if let Some(out) = trace_out {
                write_file(&out, &outcome.trace.to_ndjson())?;
            }
            let detail = if verbose { Detail::Everything } else { Detail::Lifecycle };
            print_outcome(&outcome, format, detail);
            if schedule != ScheduleSpec::Steps {
                // Under another schedule only what the checkers report counts.
                return Ok(if outcome.found_problem() {
                    eprintln!("found: {:?}", outcome.found);
                    ExitCode::from(1)
                } else {
                    eprintln!("ok: no violation under {schedule:?}");
                    ExitCode::SUCCESS
                });
            }
            Ok(verdict(&outcome))
        }
        Command::Replay { trace } => {
            let text = std::fs::read_to_string(&trace)
                .map_err(|e| BadInput(format!("cannot read {trace}: {e}")))?;
            let (replayed, divergence) = replay(&text).map_err(|e| BadInput(e.to_string()))?;
            match divergence {
                None => {
                    let n = replayed.lines.len();
                    out!("identical: {n} lines replayed from {trace}");
                    if let Some(bpfls_scenario::Line::End { violations, deadlock, .. }) =
                        replayed.lines.last()
                    {
                        if !violations.is_empty() {
                            out!("reproduced: {}", violations.join(", "));
                        }
                        if let Some(d) = deadlock {
                            out!("reproduced a deadlock: {}", d.join("; "));
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(d) => {
                    out!("DIVERGED at line {} of {trace}", d.line);
                    for c in &d.context {
                        out!("    {c}");
                    }
                    out!("  recorded: {}", d.recorded.as_deref().unwrap_or("(end of trace)"));
                    out!("  replayed: {}", d.replayed.as_deref().unwrap_or("(end of run)"));
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Explore { scenario, seeds, pct, trace_out } => {
            let (path, text, sc) = load_scenario(&scenario)?;
            let total = seeds.end - seeds.start;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} schedules [{elapsed_precise}] {per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let start = Instant::now();
            let result = explore(&sc, seeds, pct, |_| bar.inc(1));
            bar.finish_and_clear();
            let secs = start.elapsed().as_secs_f64();
            let rate = result.runs as f64 / secs.max(1e-9);
            out!("{} schedules in {secs:.2} s ({rate:.0} schedules/s)", result.runs);
            match result.found {
                None => {
                    out!("no violation or deadlock found");
                    Ok(ExitCode::SUCCESS)
                }
                Some(found) => {
                    let seed = match found.schedule {
                        ScheduleSpec::Random { seed } | ScheduleSpec::Pct { seed, .. } => seed,
                        ScheduleSpec::Steps => 0,
                    };
                    let out =
                        trace_out.unwrap_or_else(|| format!("bpfls-{}-seed{seed}.ndjson", sc.name));
                    let trace = found.outcome.trace.clone().with_source(&path, &text);
                    write_file(&out, &trace.to_ndjson())?;
                    out!("found under {:?}: {:?}", found.schedule, found.outcome.found);
                    if let Some(d) = &found.outcome.deadlock {
                        out!("deadlock: {}", d.join("; "));
                    }
                    for d in found.outcome.details.iter().take(5) {
                        out!("  {d}");
                    }
                    out!("trace written to {out}; reproduce it with:\n  bpfls replay {out}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::List => {
            for b in BUNDLED {
                let description = parse(&b.path(), b.text)
                    .map(|s| s.description)
                    .unwrap_or_else(|e| format!("(does not parse: {})", e.message()));
                out!("{:<40} {description}", b.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { scenario } => {
            let (path, _, sc) = load_scenario(&scenario)?;
            out!(
                "{path}: ok ({} maps, {} owners, {} programs, {} steps)",
                sc.maps.len(),
                sc.owners.len(),
                sc.programs.len(),
                sc.steps.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
