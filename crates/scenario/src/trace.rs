//! Traces: what a run did, one JSON object per line (see `docs/trace-format.md`).
//!
//! The first line is a header holding the scenario's text, the schedule and the tool version;
//! then, in order, every probe point the run passed (`event`), every step's outcome right
//! after the `step_done` event that ends it (`step`), every run of an attached program
//! (`attached`), and a closing `end` line with the summary. There are no addresses and no
//! wall-clock times, so a run is a pure function of its scenario and schedule and the same run
//! always writes the same bytes.

use crate::model::Scenario;
use crate::run::{ScheduleSpec, Summary};
use bpfls_kernel::{GRACE_PERIODS, RunReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The `format` field of every trace header.
pub const FORMAT: &str = "bpfls-trace";

/// The trace format's version. It changes when a line kind, a field, or the meaning of one
/// changes; adding a probe point does not change it (it changes the events a run produces,
/// which replay reports as a divergence).
pub const VERSION: u32 = 1;

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// The first line.
    Header {
        /// [`FORMAT`].
        format: String,
        /// [`VERSION`].
        version: u32,
        /// `bpfls <version>`.
        tool: String,
        /// The scenario's name.
        scenario_name: String,
        /// Where the scenario came from (a path, or `bundled:NAME`).
        scenario_path: String,
        /// The scenario file's text.
        scenario: String,
        /// The schedule the run used.
        schedule: ScheduleSpec,
    },
    /// A probe point passed.
    Event {
        /// Position in the trace (the header is 0).
        seq: u64,
        /// The body that passed it: the CPU number for a CPU's steps, `cpus` for the
        /// observer that runs checks, absent for grace-period work.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<u64>,
        /// The CPU the code ran on, when the site knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu: Option<u32>,
        /// The probe point.
        site: String,
        /// Its fields (object ids, sequence numbers, counts).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        fields: BTreeMap<String, u64>,
    },
    /// A step's outcome.
    Step {
        /// 1-based step number.
        step: u64,
        /// The line of the scenario file it starts on.
        line: u64,
        /// The CPU (absent for checks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu: Option<u32>,
        /// What it did.
        op: String,
        /// What came of it.
        result: String,
        /// What the scenario expected, if it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<String>,
        /// Whether the expectation held (true without one).
        ok: bool,
    },
    /// A run of an attached program.
    Attached {
        /// The program.
        program: String,
        /// Its run number (0-based, over all attached runs).
        run: u64,
        /// The CPU.
        cpu: u32,
        /// The probe point it ran at.
        at: String,
        /// What each action gave.
        result: String,
    },
    /// The last line.
    End {
        /// Figures of the run.
        summary: Summary,
        /// Violation kinds and invariant codes found.
        violations: Vec<String>,
        /// The deadlock report, if the run ended in one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadlock: Option<Vec<String>>,
    },
}

/// A whole trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Every line, the header first.
    pub lines: Vec<Line>,
}

/// A trace file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "trace line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

impl Trace {
    /// The trace of a run: header (without the source, see [`with_source`](Self::with_source)),
    /// events with the step outcomes after their `step_done`, the end line.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        sc: &Scenario,
        schedule: ScheduleSpec,
        report: &RunReport,
        outcomes: &[Option<Line>],
        attached: &[Line],
        summary: &Summary,
        found: &[String],
        deadlock: &Option<Vec<String>>,
    ) -> Trace {
        let mut lines = vec![Line::Header {
            format: FORMAT.to_string(),
            version: VERSION,
            tool: format!("bpfls {}", env!("CARGO_PKG_VERSION")),
            scenario_name: sc.name.clone(),
            scenario_path: String::new(),
            scenario: String::new(),
            schedule,
        }];
        for e in &report.trace {
            let fields: BTreeMap<String, u64> =
                e.fields.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let field = |name: &str| fields.get(name).copied();
            let after = match e.site {
                "step_done" => {
                    field("step").and_then(|s| outcomes.get(s as usize - 1).cloned().flatten())
                }
                "prog_done" => field("run").and_then(|r| attached.get(r as usize).cloned()),
                _ => None,
            };
            lines.push(Line::Event {
                seq: lines.len() as u64,
                body: (e.body != GRACE_PERIODS).then_some(e.body as u64),
                cpu: e.cpu,
                site: e.site.to_string(),
                fields,
            });
            lines.extend(after);
        }
        lines.push(Line::End {
            summary: summary.clone(),
            violations: found.to_vec(),
            deadlock: deadlock.clone(),
        });
        Trace { lines }
    }

    /// The same trace with the scenario's path and text in its header (what replay runs).
    pub fn with_source(mut self, path: &str, text: &str) -> Trace {
        if let Some(Line::Header { scenario_path, scenario, .. }) = self.lines.first_mut() {
            *scenario_path = path.to_string();
            *scenario = text.to_string();
        }
        self
    }

    /// Newline-delimited JSON, one line per [`Line`].
    pub fn to_ndjson(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(&serde_json::to_string(line).expect("a trace line serializes"));
            out.push('\n');
        }
        out
    }

    /// Reads a trace written by [`to_ndjson`](Self::to_ndjson): every line must parse, the
    /// first must be a header of this format and version, the last an end line.
    pub fn from_ndjson(text: &str) -> Result<Trace, TraceError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(raw)
                .map_err(|e| TraceError { line: i + 1, message: e.to_string() })?;
            lines.push(line);
        }
        match lines.first() {
            Some(Line::Header { format, version, .. }) => {
                if format != FORMAT {
                    return Err(TraceError {
                        line: 1,
                        message: format!("format is `{format}`, expected `{FORMAT}`"),
                    });
                }
                if *version != VERSION {
                    return Err(TraceError {
                        line: 1,
                        message: format!(
                            "trace format version {version}; this bpfls reads version {VERSION}"
                        ),
                    });
                }
            }
            _ => {
                return Err(TraceError {
                    line: 1,
                    message: "the first line must be the header (`\"kind\":\"header\"`)".into(),
                });
            }
        }
        if !matches!(lines.last(), Some(Line::End { .. })) {
            return Err(TraceError {
                line: lines.len(),
                message: "the trace ends without its `end` line (truncated?)".into(),
            });
        }
        Ok(Trace { lines })
    }

    /// The header's scenario path, text and schedule.
    pub fn source(&self) -> Option<(&str, &str, ScheduleSpec)> {
        match self.lines.first() {
            Some(Line::Header { scenario_path, scenario, schedule, .. }) => {
                Some((scenario_path, scenario, *schedule))
            }
            _ => None,
        }
    }
}

/// Where two traces part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// 1-based line of the first difference.
    pub line: usize,
    /// The recorded line (`None`: the recorded trace ended first).
    pub recorded: Option<String>,
    /// The replayed line (`None`: the replay ended first).
    pub replayed: Option<String>,
    /// Up to three lines before it, as recorded.
    pub context: Vec<String>,
}

/// The first line where `replayed` differs from `recorded`, headers excluded.
pub fn compare(recorded: &Trace, replayed: &Trace) -> Option<Divergence> {
    let text = |l: &Line| serde_json::to_string(l).expect("a trace line serializes");
    let n = recorded.lines.len().max(replayed.lines.len());
    for i in 1..n {
        let (a, b) = (recorded.lines.get(i), replayed.lines.get(i));
        if a != b {
            let from = i.saturating_sub(3).max(1);
            return Some(Divergence {
                line: i + 1,
                recorded: a.map(text),
                replayed: b.map(text),
                context: recorded.lines[from..i.min(recorded.lines.len())]
                    .iter()
                    .map(text)
                    .collect(),
            });
        }
    }
    None
}
