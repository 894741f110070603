//! The benchmark method shared by `crates/*/benches/*.rs`.
//!
//! The project's machine is a shared 2-vCPU VM whose speed drifts by tens of percent from one
//! second to the next, so no figure is an absolute pass/fail. Every figure pairs a *subject*
//! with a *control* measured in the same process and the same rounds: [`interleave`] runs one
//! untimed warm-up of each, then [`ROUNDS`] rounds that measure subject and control back to
//! back, alternating which goes first. [`print_table`] prints the median subject time, the
//! median control time, the median of the per-round ratios and its spread (min–max), so drift
//! between rounds cancels out of the ratio; [`print_verdicts`] compares ratios with goals.
//!
//! [`start_watchdog`] and [`phase`] turn an engine hang into exit status 3 instead of a hung
//! `cargo xtask bench`. Each bench keeps its own benchmarks, settings and table widths
//! ([`Layout`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Measured rounds per figure.
pub const ROUNDS: usize = 7;

/// Whether the bench was started with `--quick` (fewer iterations). Other arguments (cargo
/// passes `--bench`) are ignored.
pub fn quick() -> bool {
    std::env::args().skip(1).any(|a| a == "--quick")
}

// ----- measurement ------------------------------------------------------------------------

/// Per-round times (ns per operation) of a subject and its control.
#[derive(Debug, Default, Clone)]
pub struct Rounds {
    /// The subject's time of each round.
    pub subject: Vec<f64>,
    /// The control's time of each round.
    pub control: Vec<f64>,
}

impl Rounds {
    /// Subject / control of each round.
    pub fn ratios(&self) -> Vec<f64> {
        self.subject.iter().zip(&self.control).map(|(s, c)| s / c).collect()
    }
}

/// Runs one untimed warm-up of each side, then [`ROUNDS`] rounds alternating which side goes
/// first. Each closure performs one measurement and returns its ns per operation.
pub fn interleave(mut subject: impl FnMut() -> f64, mut control: impl FnMut() -> f64) -> Rounds {
    subject();
    control();
    let mut r = Rounds::default();
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            r.subject.push(subject());
            r.control.push(control());
        } else {
            r.control.push(control());
            r.subject.push(subject());
        }
    }
    r
}

/// Times `iters` calls of `op`; returns ns per call. Not inlined, so that each measured loop
/// is a function of its own with `op` inlined into it.
#[inline(never)]
pub fn per_op(iters: u64, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        op();
    }
    ns(start.elapsed()) / iters as f64
}

/// `d` in ns.
pub fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// The median of `values` (NaN if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The smallest and the largest of `values` (`(inf, -inf)` if empty).
pub fn min_max(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// A duration in ns, printed with a readable unit.
pub fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

/// Bytes, printed with a readable unit.
pub fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.1} B")
    }
}

/// A deterministic LCG step (Knuth's MMIX constants); use the high bits.
pub fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407)
}

// ----- watchdog ---------------------------------------------------------------------------

/// The phase in progress and when it began; the watchdog thread exits the process when one
/// runs past its limit.
static PHASE: Mutex<Option<(&'static str, Instant)>> = Mutex::new(None);

/// Marks the start of phase `name` (what the watchdog reports if it hangs).
pub fn phase(name: &'static str) {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = Some((name, Instant::now()));
}

/// Marks the end of the last phase: the watchdog has nothing left to watch.
pub fn phases_done() {
    *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Starts the watchdog thread: when a [`phase`] has run longer than `limit`, it prints
/// `<who> bench: ENGINE HANG? ...` and exits the process with status 3 (an engine hang must
/// not hang `cargo xtask bench`).
pub fn start_watchdog(who: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let current = *PHASE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, since)) = current
                && since.elapsed() > limit
            {
                eprintln!(
                    "{who} bench: ENGINE HANG? phase `{name}` has run for {:.0} s (limit {} s); \
                     aborting",
                    since.elapsed().as_secs_f64(),
                    limit.as_secs()
                );
                std::process::exit(3);
            }
        }
    });
}

// ----- tables -----------------------------------------------------------------------------

/// A goal on a ratio (subject / control).
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether `ratio` meets the goal.
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(g) => ratio <= g,
            Goal::AtLeast(g) => ratio >= g,
        }
    }

    /// `≤0.40` / `≥5.00`.
    pub fn show(self) -> String {
        match self {
            Goal::AtMost(g) => format!("≤{g:.2}"),
            Goal::AtLeast(g) => format!("≥{g:.2}"),
        }
    }
}

/// One line of a table.
#[derive(Debug)]
pub struct Row {
    /// The subject.
    pub name: String,
    /// The control.
    pub control: String,
    /// The measurements.
    pub rounds: Rounds,
    /// The goal on the median ratio, if any.
    pub goal: Option<Goal>,
    /// The kernel's ratio for the same pair, where one is published.
    pub kernel: Option<f64>,
}

impl Row {
    /// A row without goal or kernel figure.
    pub fn new(name: impl Into<String>, control: impl Into<String>, rounds: Rounds) -> Self {
        Row { name: name.into(), control: control.into(), rounds, goal: None, kernel: None }
    }

    /// This row with a goal.
    pub fn goal(self, goal: Goal) -> Self {
        Row { goal: Some(goal), ..self }
    }

    /// This row with the kernel's ratio.
    pub fn kernel(self, kernel: f64) -> Self {
        Row { kernel: Some(kernel), ..self }
    }

    /// The median of the per-round ratios.
    pub fn ratio(&self) -> f64 {
        median(&self.rounds.ratios())
    }
}

/// How [`print_verdicts`] words a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdicts {
    /// After a blank line: `PASS goal: <subject> = R× its control (goal ≤ G×[, F× over])`.
    ItsControl,
    /// `PASS goal: <subject> / <control> = R× (goal ≤G×)`, as [`verdict`] prints it.
    Pair,
}

/// The column widths of a bench's tables (each bench keeps its own).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Width of the subject column.
    pub subject: usize,
    /// Width of the control column.
    pub control: usize,
    /// Width of the ratio column (including the `×`).
    pub ratio: usize,
    /// Width of the ratio min–max column.
    pub spread: usize,
    /// Length of the rule under the header.
    pub rule: usize,
    /// Whether the table has a `kernel` column ([`Row::kernel`]).
    pub kernel: bool,
    /// How [`print_verdicts`] words the verdicts.
    pub verdicts: Verdicts,
}

/// Prints `rows` as a table titled `title`.
pub fn print_table(layout: &Layout, title: &str, rows: &[Row]) {
    let Layout { subject: sw, control: cw, ratio: rw, spread: mw, rule, kernel, .. } = *layout;
    let vw = rw - 1;
    println!("\n## {title}\n");
    let kernel_head = if kernel { format!("  {:>7}", "kernel") } else { String::new() };
    println!(
        "{:<sw$} {:>11}  {:<cw$} {:>11}  {:>rw$}  {:>mw$}  {:>6}{kernel_head}",
        "subject", "median", "control", "median", "ratio", "ratio min–max", "goal"
    );
    println!("{}", "-".repeat(rule));
    for row in rows {
        let (lo, hi) = min_max(&row.rounds.ratios());
        let kernel_cell = if kernel {
            format!("  {:>7}", row.kernel.map_or_else(|| "-".to_owned(), |k| format!("{k:.2}×")))
        } else {
            String::new()
        };
        println!(
            "{:<sw$} {:>11}  {:<cw$} {:>11}  {:>vw$.3}×  {:>mw$}  {:>6}{kernel_cell}",
            row.name,
            human(median(&row.rounds.subject)),
            row.control,
            human(median(&row.rounds.control)),
            row.ratio(),
            format!("{lo:.3}–{hi:.3}"),
            row.goal.map_or_else(|| "-".to_owned(), Goal::show),
        );
    }
}

/// Prints a verdict line for every row of `rows` that has a goal, worded as `layout` says.
pub fn print_verdicts(layout: &Layout, rows: &[Row]) {
    match layout.verdicts {
        Verdicts::ItsControl => {
            println!();
            for row in rows {
                if let Some(goal) = row.goal {
                    let ratio = row.ratio();
                    let (verdict, op, by, off) = match goal {
                        Goal::AtMost(g) => (goal.met(ratio), "≤", ratio / g, "over"),
                        Goal::AtLeast(g) => (goal.met(ratio), "≥", g / ratio, "under"),
                    };
                    let g = match goal {
                        Goal::AtMost(g) | Goal::AtLeast(g) => g,
                    };
                    println!(
                        "{} goal: {} = {ratio:.3}× its control (goal {op} {g:.2}×{})",
                        if verdict { "PASS" } else { "MISS" },
                        row.name,
                        if verdict { String::new() } else { format!(", {by:.2}× {off}") }
                    );
                }
            }
        }
        Verdicts::Pair => {
            for row in rows {
                if let Some(goal) = row.goal {
                    verdict(&format!("{} / {}", row.name, row.control), row.ratio(), goal);
                }
            }
        }
    }
}

/// Prints `PASS goal: <what> = R× (goal ≤G×)` (or `MISS`).
pub fn verdict(what: &str, ratio: f64, goal: Goal) {
    println!(
        "{} goal: {what} = {ratio:.3}× (goal {}×)",
        if goal.met(ratio) { "PASS" } else { "MISS" },
        goal.show()
    );
}
