//! The scenario file parser: TOML text in, a validated [`Scenario`] out, or a
//! [`ScenarioError`] that says where (file, line, column, with a caret under the offending
//! text) and what was expected.
//!
//! Parsing has two passes:
//!
//! 1. `toml` + `serde` deserialise the text into raw structs whose fields are
//!    [`toml::Spanned`] and which refuse unknown keys (`deny_unknown_fields`), so syntax
//!    errors, wrong value types and misspelt keys are reported at their location;
//! 2. a validation pass resolves every name (map, owner, program, probe point, mutation,
//!    violation, errno) to what the [`model`](crate::model) wants, and checks what TOML
//!    cannot: each step has exactly one verb and only that verb's keys, CPUs exist, owners
//!    are of the kind the operation needs and of the map's type, a `resume` has a paused
//!    step to finish, an `expect` fits its step, ...
//!
//! The format is described for people in `docs/scenario-format.md`.
//!
//! ```
//! use bpfls_scenario::parse::parse;
//!
//! let text = r#"
//! name = "tiny"
//! description = "one update"
//!
//! [maps.m]
//! type = "task"
//!
//! [owners.t]
//! type = "task"
//!
//! [[step]]
//! cpu = 0
//! update = "m"
//! owner = "t"
//! valeu = 7
//! "#;
//! let err = parse("tiny.toml", text).unwrap_err();
//! assert_eq!((err.line(), err.column()), (15, 1));
//! assert!(err.to_string().starts_with("tiny.toml:15:1: unknown field `valeu`"));
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use bpfls_kernel::{Context, GpDomain, MapType, ProgType};
use bpfls_local_storage::Errno;
use bpfls_local_storage::flags::{BPF_ANY, BPF_EXIST, BPF_NOEXIST};
use bpfls_local_storage::map::MAX_VALUE_SIZE;
use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use toml::Spanned;

use crate::model::{
    Check, Expect, FinalExpect, KernelConfig, MUTATIONS, MapDecl, Op, OwnerDecl, PROBE_POINTS,
    ProgAction, ProgramDecl, Scenario, Step, StepKind, VIOLATION_NAMES, probe_point,
};

// ---------------------------------------------------------------------------------------------
// The error

/// A malformed or invalid scenario file: where, and what is wrong.
///
/// It is a [`miette::Diagnostic`] carrying the file (name and text) and a label on the
/// offending text, so a graphical report shows the line with a caret under it. Its `Display`
/// is `path:line:column: message`.
///
/// ```
/// use bpfls_scenario::parse::parse;
///
/// let err = parse("s.toml", "name = \"x\"\ndescription = \"y\"\n[kernel]\ncpus = 0\n").unwrap_err();
/// assert_eq!(err.to_string(), "s.toml:4:8: cpus = 0 is out of range: expected 1..=64");
/// assert_eq!((err.line(), err.column()), (4, 8));
/// ```
pub struct ScenarioError(Box<Inner>);

struct Inner {
    src: NamedSource<String>,
    path: String,
    span: SourceSpan,
    line: usize,
    column: usize,
    message: String,
    label: String,
    help: Option<String>,
}

impl ScenarioError {
    /// An error at byte range `span` of `text` (clamped to the text and to char boundaries).
    fn new(path: &str, text: &str, span: Range<usize>, message: String, label: String) -> Self {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        ScenarioError(Box::new(Inner {
            src: NamedSource::new(path, text.to_string()),
            path: path.to_string(),
            span: SourceSpan::from(start..end),
            line,
            column,
            message,
            label,
            help: None,
        }))
    }

    fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }

    fn with_suggestion(self, word: &str, candidates: &[&str]) -> Self {
        match suggest(word, candidates) {
            Some(s) => self.with_help(format!("did you mean `{s}`?")),
            None => self,
        }
    }

    /// The 1-based line of the offending text.
    pub fn line(&self) -> usize {
        self.0.line
    }

    /// The 1-based column (in characters) of the offending text.
    pub fn column(&self) -> usize {
        self.0.column
    }

    /// What is wrong and what was expected, without the location.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The file's path, as given to [`parse`].
    pub fn path(&self) -> &str {
        &self.0.path
    }

    /// The offending byte range of the file.
    pub fn span(&self) -> SourceSpan {
        self.0.span
    }

    /// A hint, when there is one (e.g. "did you mean `task_map`?").
    pub fn help_text(&self) -> Option<&str> {
        self.0.help.as_deref()
    }

    /// The report as miette's graphical handler draws it, in Unicode without colours: the
    /// message, the file name with line and column, the line with a caret, and the help.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let handler =
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
        if handler.render_report(&mut out, self).is_err() {
            out = format!("{self}\n");
        }
        out
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.0.path, self.0.line, self.0.column, self.0.message)
    }
}

impl fmt::Debug for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScenarioError")
            .field("path", &self.0.path)
            .field("line", &self.0.line)
            .field("column", &self.0.column)
            .field("message", &self.0.message)
            .field("label", &self.0.label)
            .field("help", &self.0.help)
            .finish()
    }
}

impl std::error::Error for ScenarioError {}

impl Diagnostic for ScenarioError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.0.src)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.0.label.clone()),
            self.0.span,
        ))))
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest candidate to `word`, when it is close enough to be a likely typo.
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (best, dist) = candidates
        .iter()
        .map(|c| (*c, edit_distance(&word.to_lowercase(), &c.to_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    let limit = (word.chars().count() / 3).max(1);
    (dist <= limit).then_some(best)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `a`, `b` and `c`.
fn quoted_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{}`", s.as_ref())).collect();
    match quoted.len() {
        0 => "nothing".to_string(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

// ---------------------------------------------------------------------------------------------
// The raw file, as TOML gives it

type Sp<T> = Spanned<T>;

/// A table of named tables (`[maps.NAME]`, ...), in FILE order: the entries are sorted by the
/// position of their names, so no order-preserving map is needed.
struct Named<T>(Vec<(Sp<String>, Sp<T>)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of named tables, like [maps.NAME]")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Named<T>, A::Error> {
                let mut entries: Vec<(Sp<String>, Sp<T>)> = Vec::new();
                while let Some(key) = a.next_key::<Sp<String>>()? {
                    let value = a.next_value::<Sp<T>>()?;
                    entries.push((key, value));
                }
                entries.sort_by_key(|(k, _)| k.span().start);
                Ok(Named(entries))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a scenario file")]
struct RawFile {
    name: Option<Sp<String>>,
    description: Option<Sp<String>>,
    kernel: Option<RawKernel>,
    maps: Option<Named<RawMap>>,
    owners: Option<Named<RawOwner>>,
    programs: Option<Named<RawProgram>>,
    step: Option<Vec<Sp<RawStep>>>,
    expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [kernel] table")]
struct RawKernel {
    cpus: Option<Sp<u32>>,
    trace_implies_rcu: Option<bool>,
    optmem_max: Option<u64>,
    preempt_rt: Option<bool>,
    busy_counter: Option<bool>,
    rcu: Option<Sp<String>>,
    mutations: Option<Vec<Sp<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [maps.NAME] table")]
struct RawMap {
    r#type: Option<Sp<String>>,
    value_size: Option<Sp<u32>>,
    clone: Option<bool>,
    uptr: Option<Sp<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [owners.NAME] table")]
struct RawOwner {
    r#type: Option<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [programs.NAME] table")]
struct RawProgram {
    r#type: Option<Sp<String>>,
    sleepable: Option<bool>,
    context: Option<Sp<String>>,
    attach: Option<Sp<String>>,
    actions: Option<Vec<Sp<RawAction>>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an action (an inline table such as { get = \"MAP\", owner = \"OWNER\" })"
)]
struct RawAction {
    get: Option<Sp<String>>,
    read: Option<Sp<bool>>,
    hold: Option<Sp<bool>>,
    uptr: Option<Sp<bool>>,
    delete: Option<Sp<String>>,
    owner: Option<Sp<String>>,
    create: Option<Sp<bool>>,
    init: Option<Sp<u64>>,
    write: Option<Sp<u64>>,
    expect: Option<Sp<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a step (a [[step]] table)")]
struct RawStep {
    cpu: Option<Sp<u32>>,
    update: Option<Sp<String>>,
    lookup: Option<Sp<String>>,
    delete: Option<Sp<String>>,
    run: Option<Sp<String>>,
    resume: Option<Sp<bool>>,
    exit: Option<Sp<String>>,
    close: Option<Sp<String>>,
    evict: Option<Sp<String>>,
    rmdir: Option<Sp<String>>,
    accept: Option<Sp<String>>,
    close_map: Option<Sp<String>>,
    grace_period: Option<Sp<String>>,
    check: Option<Sp<String>>,
    owner: Option<Sp<String>>,
    value: Option<Sp<u64>>,
    flags: Option<Sp<String>>,
    expect: Option<Sp<toml::Value>>,
    until: Option<Sp<String>>,
    r#as: Option<Sp<String>>,
    domain: Option<Sp<String>>,
    map: Option<Sp<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [expect] table")]
struct RawExpect {
    violations: Option<Vec<Sp<String>>>,
    deadlock: Option<bool>,
}

/// The keys present in a raw table, with the spans of their values, in file order.
macro_rules! present_keys {
    ($raw:expr; $($field:ident => $name:literal),* $(,)?) => {{
        let mut keys: Vec<(&'static str, Range<usize>)> = Vec::new();
        $( if let Some(v) = &$raw.$field { keys.push(($name, v.span())); } )*
        keys.sort_by_key(|(_, s)| s.start);
        keys
    }};
}

impl RawStep {
    fn keys(&self) -> Vec<(&'static str, Range<usize>)> {
        present_keys!(self;
            cpu => "cpu", update => "update", lookup => "lookup", delete => "delete",
            run => "run", resume => "resume", exit => "exit", close => "close",
            evict => "evict", rmdir => "rmdir", accept => "accept", close_map => "close_map",
            grace_period => "grace_period", check => "check", owner => "owner",
            value => "value", flags => "flags", expect => "expect", until => "until",
            r#as => "as", domain => "domain", map => "map",
        )
    }
}

impl RawAction {
    fn keys(&self) -> Vec<(&'static str, Range<usize>)> {
        present_keys!(self;
            get => "get", read => "read", hold => "hold", uptr => "uptr", delete => "delete",
            owner => "owner", create => "create", init => "init", write => "write",
            expect => "expect",
        )
    }
}

/// The verbs of a step: the CPU operations, then the global ones.
const STEP_VERBS: &[&str] = &[
    "update",
    "lookup",
    "delete",
    "run",
    "resume",
    "exit",
    "close",
    "evict",
    "rmdir",
    "accept",
    "close_map",
    "grace_period",
    "check",
];

/// The keys each step verb takes (the verb included).
fn step_keys(verb: &str) -> &'static [&'static str] {
    match verb {
        "update" => &["cpu", "update", "owner", "value", "flags", "expect", "until"],
        "lookup" => &["cpu", "lookup", "owner", "expect", "until"],
        "delete" => &["cpu", "delete", "owner", "expect", "until"],
        "run" => &["cpu", "run", "expect", "until"],
        "resume" => &["cpu", "resume"],
        "exit" => &["cpu", "exit", "expect", "until"],
        "close" => &["cpu", "close", "expect", "until"],
        "evict" => &["cpu", "evict", "expect", "until"],
        "rmdir" => &["cpu", "rmdir", "expect", "until"],
        "accept" => &["cpu", "accept", "as", "expect", "until"],
        "close_map" => &["cpu", "close_map", "expect", "until"],
        "grace_period" => &["grace_period", "until"],
        _ => &["check", "owner", "domain", "expect"],
    }
}

const ACTION_VERBS: &[&str] = &["get", "read", "hold", "uptr", "delete"];

fn action_keys(verb: &str) -> &'static [&'static str] {
    match verb {
        "get" => &["get", "owner", "create", "init", "write", "expect"],
        "read" => &["read", "expect"],
        "hold" => &["hold"],
        "uptr" => &["uptr", "expect"],
        _ => &["delete", "owner", "expect"],
    }
}

const ERRNOS: [Errno; 13] = [
    Errno::EPERM,
    Errno::ENOENT,
    Errno::E2BIG,
    Errno::EBADF,
    Errno::EAGAIN,
    Errno::ENOMEM,
    Errno::EBUSY,
    Errno::EEXIST,
    Errno::EINVAL,
    Errno::EDEADLK,
    Errno::EOPNOTSUPP,
    Errno::ETIMEDOUT,
    Errno::ENOTSUPP,
];

fn errno_names() -> Vec<&'static str> {
    ERRNOS.iter().map(|e| e.name()).collect()
}

/// The map type names of `[maps.X] type`.
const MAP_TYPES: &[&str] = &["task", "sk", "inode", "cgroup"];
/// The owner kind names of `[owners.X] type`.
const OWNER_TYPES: &[&str] = &["task", "socket", "inode", "cgroup"];

fn owner_kind_name(kind: MapType) -> &'static str {
    match kind {
        MapType::Task => "task",
        MapType::Sk => "socket",
        MapType::Inode => "inode",
        MapType::Cgrp => "cgroup",
    }
}

fn map_type_name(ty: MapType) -> &'static str {
    match ty {
        MapType::Task => "task",
        MapType::Sk => "sk",
        MapType::Inode => "inode",
        MapType::Cgrp => "cgroup",
    }
}

/// "a `lookup`", "an `update`".
fn a_verb(verb: &str) -> String {
    let article = if verb.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} `{verb}`")
}

fn a_kind(kind: MapType) -> &'static str {
    match kind {
        MapType::Inode => "an inode",
        MapType::Task => "a task",
        MapType::Sk => "a socket",
        MapType::Cgrp => "a cgroup",
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Parses and validates a scenario file. `path` names the file in errors; `text` is its
/// content. Never panics.
///
/// ```
/// use bpfls_scenario::parse::parse;
/// use bpfls_scenario::model::{Expect, Op, StepKind};
///
/// let text = r#"
/// name = "lookup-nothing"
/// description = "a lookup on a task with no storage finds nothing"
///
/// [maps.m]
/// type = "task"
///
/// [owners.t]
/// type = "task"
///
/// [[step]]
/// cpu = 0
/// lookup = "m"
/// owner = "t"
/// expect = "ENOENT"
/// "#;
/// let s = parse("lookup.toml", text).unwrap();
/// assert_eq!(s.steps[0].line, 11);
/// assert!(matches!(
///     s.steps[0].kind,
///     StepKind::Op { cpu: 0, op: Op::Lookup { map: 0, owner: 0 }, expect: Some(Expect::Errno(_)), .. }
/// ));
/// ```
pub fn parse(path: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let cx = Cx { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
    cx.validate(raw)
}

struct Cx<'a> {
    path: &'a str,
    text: &'a str,
}

/// An owner, as validation knows it: its kind, and the step that creates it (accepts).
#[derive(Clone)]
struct OwnerInfo {
    name: String,
    kind: MapType,
    accepted_by: Option<usize>,
    /// The 1-based line of the creating `accept` step.
    accept_line: usize,
}

impl Cx<'_> {
    fn err(&self, span: Range<usize>, message: String, label: impl Into<String>) -> ScenarioError {
        ScenarioError::new(self.path, self.text, span, message, label.into())
    }

    fn line_of(&self, offset: usize) -> usize {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        self.text[..offset].matches('\n').count() + 1
    }

    fn toml_error(&self, e: &toml::de::Error) -> ScenarioError {
        let span = e.span().unwrap_or(0..0);
        let mut message = e.message().trim().replace('\n', " ");
        if message == "duplicate key" {
            let start = floor_char_boundary(self.text, span.start.min(self.text.len()));
            let end = floor_char_boundary(self.text, span.end.clamp(start, self.text.len()));
            message = format!(
                "duplicate key `{}`: a key may appear only once in a table",
                &self.text[start..end]
            );
        }
        // serde's "unknown field `x`, expected one of `a`, `b`": suggest the closest key.
        let help = message.strip_prefix("unknown field `").and_then(|rest| {
            let (word, expected) = rest.split_once('`')?;
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            suggest(word, &candidates).map(|s| format!("did you mean `{s}`?"))
        });
        let label = if message.starts_with("unknown field") {
            "unknown key"
        } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
            "wrong value"
        } else {
            "here"
        };
        let e = self.err(span, message, label);
        match help {
            Some(h) => e.with_help(h),
            None => e,
        }
    }

    fn validate(&self, raw: RawFile) -> Result<Scenario, ScenarioError> {
        let name = match raw.name {
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    return Err(self.err(
                        n.span(),
                        format!("invalid scenario name {:?}: expected [a-z0-9-]+", n.get_ref()),
                        "not [a-z0-9-]+",
                    ));
                }
                n.into_inner()
            }
            None => {
                return Err(self.err(
                    0..0,
                    "missing `name`: expected name = \"...\" ([a-z0-9-]+) at the top of the file"
                        .to_string(),
                    "no `name` in this file",
                ));
            }
        };
        let description = match raw.description {
            Some(d) => {
                if d.get_ref().contains('\n') {
                    return Err(self.err(
                        d.span(),
                        "the description spans several lines: expected one line".to_string(),
                        "several lines",
                    ));
                }
                d.into_inner()
            }
            None => {
                return Err(self.err(
                    0..0,
                    "missing `description`: expected description = \"...\" (one line) at the top of the file"
                        .to_string(),
                    "no `description` in this file",
                ));
            }
        };

        let kernel = self.kernel(raw.kernel)?;
        let maps = self.maps(raw.maps)?;
        let raw_steps = raw.step.unwrap_or_default();
        let owners = self.owners(raw.owners)?;
        // Every owner: the declared ones, then those created by `accept ... as` steps, in step
        // order. Programs may name them all (they may run after the accept); a step sees an
        // accepted owner only from its accept on.
        let mut all_owners = owners.clone();
        for (i, s) in raw_steps.iter().enumerate() {
            if let (Some(_), Some(child)) = (&s.get_ref().accept, &s.get_ref().r#as) {
                all_owners.push(OwnerInfo {
                    name: child.get_ref().clone(),
                    kind: MapType::Sk,
                    accepted_by: Some(i),
                    accept_line: self.line_of(s.span().start),
                });
            }
        }
        let raw_programs = raw.programs.map(|p| p.0).unwrap_or_default();
        let program_names: Vec<String> =
            raw_programs.iter().map(|(n, _)| n.get_ref().clone()).collect();
        let mut programs = Vec::with_capacity(raw_programs.len());
        for (name, p) in raw_programs {
            programs.push(self.program(name, p, &maps, &all_owners)?);
        }
        let mut owners = owners;
        let steps =
            self.steps(raw_steps, &kernel, &maps, &mut owners, &all_owners, &program_names)?;
        let expect = self.final_expect(raw.expect)?;

        Ok(Scenario {
            name,
            description,
            kernel,
            maps,
            owners: owners
                .into_iter()
                .map(|o| OwnerDecl { name: o.name, kind: o.kind, accepted_by: o.accepted_by })
                .collect(),
            programs,
            steps,
            expect,
        })
    }

    fn kernel(&self, raw: Option<RawKernel>) -> Result<KernelConfig, ScenarioError> {
        let mut k = KernelConfig::default();
        let Some(raw) = raw else { return Ok(k) };
        if let Some(cpus) = raw.cpus {
            let n = *cpus.get_ref();
            if !(1..=64).contains(&n) {
                return Err(self.err(
                    cpus.span(),
                    format!("cpus = {n} is out of range: expected 1..=64"),
                    "not in 1..=64",
                ));
            }
            k.cpus = n;
        }
        if let Some(v) = raw.trace_implies_rcu {
            k.trace_implies_rcu = v;
        }
        if let Some(v) = raw.optmem_max {
            k.optmem_max = v;
        }
        if let Some(v) = raw.preempt_rt {
            k.preempt_rt = v;
        }
        if let Some(v) = raw.busy_counter {
            k.busy_counter = v;
        }
        if let Some(rcu) = raw.rcu {
            match rcu.get_ref().as_str() {
                "correct" => k.busted_rcu = false,
                "busted" => k.busted_rcu = true,
                other => {
                    return Err(self.err(
                        rcu.span(),
                        format!("unknown rcu engine `{other}`: expected \"correct\" or \"busted\""),
                        "not correct or busted",
                    ));
                }
            }
        }
        k.mutations = self.known_names(raw.mutations.unwrap_or_default(), MUTATIONS, "mutation")?;
        Ok(k)
    }

    /// A list of names from `known`, each at most once (`what`: "mutation", "violation").
    fn known_names(
        &self,
        names: Vec<Sp<String>>,
        known: &[&str],
        what: &str,
    ) -> Result<Vec<String>, ScenarioError> {
        let mut out: Vec<String> = Vec::new();
        for n in names {
            let name = n.get_ref();
            if !known.contains(&name.as_str()) {
                return Err(self
                    .err(
                        n.span(),
                        format!("unknown {what} `{name}`: expected one of {}", quoted_list(known)),
                        format!("unknown {what}"),
                    )
                    .with_suggestion(name, known));
            }
            if out.contains(name) {
                return Err(self.err(
                    n.span(),
                    format!("{what} `{name}` is listed twice: expected each at most once"),
                    "listed twice",
                ));
            }
            out.push(n.into_inner());
        }
        Ok(out)
    }

    fn maps(&self, raw: Option<Named<RawMap>>) -> Result<Vec<MapDecl>, ScenarioError> {
        let mut maps = Vec::new();
        for (name, m) in raw.map(|n| n.0).unwrap_or_default() {
            let ty = match &m.get_ref().r#type {
                None => {
                    return Err(self.err(
                        name.span(),
                        format!(
                            "map `{}` has no `type`: expected type = \"task\", \"sk\", \"inode\" or \"cgroup\"",
                            name.get_ref()
                        ),
                        "no `type`",
                    ));
                }
                Some(t) => self.type_of(
                    t,
                    "map type",
                    MAP_TYPES,
                    ("socket", "a socket storage map is `sk`"),
                )?,
            };
            let value_size = match &m.get_ref().value_size {
                None => 8,
                Some(v) => {
                    let n = *v.get_ref();
                    if !(1..=MAX_VALUE_SIZE).contains(&n) {
                        return Err(self.err(
                            v.span(),
                            format!(
                                "value_size = {n} is out of range: expected 1..={MAX_VALUE_SIZE}"
                            ),
                            format!("not in 1..={MAX_VALUE_SIZE}"),
                        ));
                    }
                    n
                }
            };
            let clone = m.get_ref().clone.unwrap_or(false);
            let uptr = match &m.get_ref().uptr {
                Some(u) if *u.get_ref() && ty != MapType::Task => {
                    return Err(self.err(
                        u.span(),
                        "uptr = true on a map that is not task storage: expected it only on \
                         type = \"task\" (uptr fields are for task storage only)"
                            .to_string(),
                        "not a task map",
                    ));
                }
                Some(u) => *u.get_ref(),
                None => false,
            };
            maps.push(MapDecl { name: name.into_inner(), ty, value_size, clone, uptr });
        }
        Ok(maps)
    }

    fn owners(&self, raw: Option<Named<RawOwner>>) -> Result<Vec<OwnerInfo>, ScenarioError> {
        let mut owners = Vec::new();
        for (name, o) in raw.map(|n| n.0).unwrap_or_default() {
            let kind = match &o.get_ref().r#type {
                None => {
                    return Err(self.err(
                        name.span(),
                        format!(
                            "owner `{}` has no `type`: expected type = \"task\", \"socket\", \"inode\" or \"cgroup\"",
                            name.get_ref()
                        ),
                        "no `type`",
                    ));
                }
                Some(t) => self.type_of(
                    t,
                    "owner type",
                    OWNER_TYPES,
                    ("sk", "an owner of an `sk` map is a `socket`"),
                )?,
            };
            owners.push(OwnerInfo {
                name: name.into_inner(),
                kind,
                accepted_by: None,
                accept_line: 0,
            });
        }
        Ok(owners)
    }

    /// A map's or an owner's `type`: `names` spells the four kinds in the order task, socket,
    /// inode, cgroup; `alias` is the other table's spelling of the socket kind, with its hint.
    fn type_of(
        &self,
        t: &Sp<String>,
        what: &str,
        names: &[&str],
        (alias, hint): (&str, &str),
    ) -> Result<MapType, ScenarioError> {
        const KINDS: [MapType; 4] = [MapType::Task, MapType::Sk, MapType::Inode, MapType::Cgrp];
        let name = t.get_ref().as_str();
        if let Some(i) = names.iter().position(|n| *n == name) {
            return Ok(KINDS[i]);
        }
        let e = self.err(
            t.span(),
            format!("unknown {what} `{name}`: expected {}", quoted_list(names)),
            format!("unknown {what}"),
        );
        Err(if name == alias { e.with_help(hint) } else { e.with_suggestion(name, names) })
    }

    // --- names ---------------------------------------------------------------------------

    fn map_index(&self, maps: &[MapDecl], name: &Sp<String>) -> Result<usize, ScenarioError> {
        if let Some(i) = maps.iter().position(|m| m.name == *name.get_ref()) {
            return Ok(i);
        }
        let names: Vec<&str> = maps.iter().map(|m| m.name.as_str()).collect();
        Err(self.unknown_table_name("map", "maps", name, &names))
    }

    /// `unknown map `x`: expected one of the [maps] tables: ...` at `name`, with a suggestion.
    fn unknown_table_name(
        &self,
        what: &str,
        table: &str,
        name: &Sp<String>,
        names: &[&str],
    ) -> ScenarioError {
        let expected = if names.is_empty() {
            format!("there are no [{table}.NAME] tables")
        } else {
            format!("expected one of the [{table}] tables: {}", quoted_list(names))
        };
        self.err(
            name.span(),
            format!("unknown {what} `{}`: {expected}", name.get_ref()),
            format!("unknown {what}"),
        )
        .with_suggestion(name.get_ref(), names)
    }

    /// Resolves an owner among `owners`; `visible` is how many of them exist at this point
    /// (the others are created by later `accept` steps).
    fn owner_index(
        &self,
        owners: &[OwnerInfo],
        visible: usize,
        name: &Sp<String>,
    ) -> Result<usize, ScenarioError> {
        if let Some(i) = owners[..visible].iter().position(|o| o.name == *name.get_ref()) {
            return Ok(i);
        }
        if let Some(o) = owners[visible..].iter().find(|o| o.name == *name.get_ref()) {
            return Err(self.err(
                name.span(),
                format!(
                    "owner `{}` does not exist yet: expected an owner created before this step (the accept on line {} creates it)",
                    name.get_ref(),
                    o.accept_line
                ),
                "not created yet",
            ));
        }
        let names: Vec<&str> = owners[..visible].iter().map(|o| o.name.as_str()).collect();
        let expected = if names.is_empty() {
            "there are no owners ([owners.NAME] tables or `accept ... as` steps)".to_string()
        } else {
            format!("expected one of {}", quoted_list(&names))
        };
        Err(self
            .err(
                name.span(),
                format!("unknown owner `{}`: {expected}", name.get_ref()),
                "unknown owner",
            )
            .with_suggestion(name.get_ref(), &names))
    }

    /// An owner for a storage operation on `map`: their types must agree.
    fn owner_for_map(
        &self,
        maps: &[MapDecl],
        map: usize,
        owners: &[OwnerInfo],
        visible: usize,
        name: &Sp<String>,
    ) -> Result<usize, ScenarioError> {
        let owner = self.owner_index(owners, visible, name)?;
        let (m, o) = (&maps[map], &owners[owner]);
        if m.ty != o.kind {
            return Err(self.err(
                name.span(),
                format!(
                    "owner `{}` is {}, but map `{}` (type \"{}\") holds storage for {}: expected {} owner",
                    o.name,
                    a_kind(o.kind),
                    m.name,
                    map_type_name(m.ty),
                    owner_kind_name(m.ty).to_string() + "s",
                    a_kind(m.ty)
                ),
                format!("{} owner; the map holds {} storage", a_kind(o.kind), owner_kind_name(m.ty)),
            ));
        }
        Ok(owner)
    }

    fn probe(&self, name: &Sp<String>) -> Result<&'static str, ScenarioError> {
        probe_point(name.get_ref()).ok_or_else(|| {
            self.err(
                name.span(),
                format!(
                    "unknown probe point `{}`: expected one of {}",
                    name.get_ref(),
                    quoted_list(PROBE_POINTS)
                ),
                "unknown probe point",
            )
            .with_suggestion(name.get_ref(), PROBE_POINTS)
        })
    }

    fn domain(&self, name: &Sp<String>) -> Result<GpDomain, ScenarioError> {
        match name.get_ref().as_str() {
            "rcu" => Ok(GpDomain::Rcu),
            "tasks_trace" => Ok(GpDomain::TasksTrace),
            other => Err(self
                .err(
                    name.span(),
                    format!(
                        "unknown grace-period domain `{other}`: expected `rcu` or `tasks_trace`"
                    ),
                    "unknown domain",
                )
                .with_suggestion(other, &["rcu", "tasks_trace"])),
        }
    }

    // --- expectations ----------------------------------------------------------------------

    fn non_negative(&self, v: &Sp<toml::Value>, n: i64, what: &str) -> Result<u64, ScenarioError> {
        u64::try_from(n).map_err(|_| {
            self.err(v.span(), format!("expect = {n} is negative: expected {what}"), "negative")
        })
    }

    /// `"ok"`, an errno name, or (when `value_of` names the step) an integer.
    fn outcome(
        &self,
        v: &Sp<toml::Value>,
        verb: &str,
        value_allowed: bool,
    ) -> Result<Expect, ScenarioError> {
        let expected = if value_allowed {
            "\"ok\", an errno name such as \"ENOENT\", or an integer (the value looked up)"
        } else {
            "\"ok\" or an errno name such as \"ENOENT\""
        };
        match v.get_ref() {
            toml::Value::String(s) if s == "ok" => Ok(Expect::Ok),
            toml::Value::String(s) => match ERRNOS.iter().find(|e| e.name() == s) {
                Some(e) => Ok(Expect::Errno(*e)),
                None => {
                    let mut names = vec!["ok"];
                    names.extend(errno_names());
                    Err(self
                        .err(
                            v.span(),
                            format!(
                                "unknown outcome \"{s}\" for {}: expected {expected}; the errno names are {}",
                                a_verb(verb),
                                errno_names().join(" ")
                            ),
                            "unknown outcome",
                        )
                        .with_suggestion(s, &names))
                }
            },
            toml::Value::Integer(n) if value_allowed => {
                Ok(Expect::Value(self.non_negative(v, *n, "a value >= 0")?))
            }
            toml::Value::Integer(n) => Err(self.err(
                v.span(),
                format!(
                    "expect = {n} does not fit {}: an integer is a looked-up value (only `lookup` steps have one); expected {expected}",
                    a_verb(verb)
                ),
                "a value, on a step that has none",
            )),
            other => Err(self.err(
                v.span(),
                format!("expect = {other} does not fit {}: expected {expected}", a_verb(verb)),
                "not an outcome",
            )),
        }
    }

    fn get_expect(&self, v: &Sp<toml::Value>) -> Result<Expect, ScenarioError> {
        let expected = "\"null\", \"value\" or an integer (the value after any write)";
        match v.get_ref() {
            toml::Value::String(s) if s == "null" => Ok(Expect::Null),
            toml::Value::String(s) if s == "value" => Ok(Expect::Some),
            toml::Value::Integer(n) => {
                Ok(Expect::Value(self.non_negative(v, *n, "a value >= 0")?))
            }
            other => Err(self.err(
                v.span(),
                format!("expect = {other} does not fit a `get`: expected {expected}"),
                "not a get result",
            )),
        }
    }

    fn integer_expect(
        &self,
        v: &Sp<toml::Value>,
        what: &str,
        expected: &str,
    ) -> Result<u64, ScenarioError> {
        match v.get_ref() {
            toml::Value::Integer(n) => self.non_negative(v, *n, expected),
            other => Err(self.err(
                v.span(),
                format!("expect = {other} does not fit {what}: expected {expected}"),
                "not an integer",
            )),
        }
    }

    // --- programs --------------------------------------------------------------------------

    fn program(
        &self,
        name: Sp<String>,
        p: Sp<RawProgram>,
        maps: &[MapDecl],
        owners: &[OwnerInfo],
    ) -> Result<ProgramDecl, ScenarioError> {
        let p = p.into_inner();
        let ty = match &p.r#type {
            None => ProgType::Lsm,
            Some(t) => match t.get_ref().as_str() {
                "tracing" => ProgType::Tracing,
                "lsm" => ProgType::Lsm,
                "iter" => ProgType::Iter,
                "syscall" => ProgType::Syscall,
                other => {
                    let types = ["tracing", "lsm", "iter", "syscall"];
                    return Err(self
                        .err(
                            t.span(),
                            format!(
                                "unknown program type `{other}`: expected {}",
                                quoted_list(&types)
                            ),
                            "unknown program type",
                        )
                        .with_suggestion(other, &types));
                }
            },
        };
        let context = match &p.context {
            None => Context::Task,
            Some(c) => match c.get_ref().as_str() {
                "task" => Context::Task,
                "softirq" => Context::Softirq,
                "hardirq" => Context::Hardirq,
                "nmi" => Context::Nmi,
                other => {
                    let contexts = ["task", "softirq", "hardirq", "nmi"];
                    return Err(self
                        .err(
                            c.span(),
                            format!(
                                "unknown context `{other}`: expected {}",
                                quoted_list(&contexts)
                            ),
                            "unknown context",
                        )
                        .with_suggestion(other, &contexts));
                }
            },
        };
        let attach = p.attach.as_ref().map(|a| self.probe(a)).transpose()?;
        let mut actions = Vec::new();
        let mut got = false;
        for a in p.actions.unwrap_or_default() {
            let action = self.action(&a, maps, owners, got)?;
            got |= matches!(action, ProgAction::Get { .. });
            actions.push(action);
        }
        Ok(ProgramDecl {
            name: name.into_inner(),
            ty,
            sleepable: p.sleepable.unwrap_or(false),
            context,
            attach,
            actions,
        })
    }

    fn action(
        &self,
        a: &Sp<RawAction>,
        maps: &[MapDecl],
        owners: &[OwnerInfo],
        after_get: bool,
    ) -> Result<ProgAction, ScenarioError> {
        let keys = a.get_ref().keys();
        let verb = self.one_verb(&keys, ACTION_VERBS, a.span(), "an action")?;
        let allowed = action_keys(verb);
        for (k, span) in &keys {
            if !allowed.contains(k) {
                return Err(self.err(
                    span.clone(),
                    format!(
                        "`{k}` does not belong in {} action: expected only {}",
                        a_verb(verb),
                        quoted_list(allowed)
                    ),
                    format!("not a key of `{verb}`"),
                ));
            }
        }
        let r = a.get_ref();
        let verb_span =
            keys.iter().find(|(k, _)| *k == verb).map(|(_, s)| s.clone()).unwrap_or(a.span());
        let need_owner = |what: &str| {
            r.owner.as_ref().ok_or_else(|| {
                self.err(
                    verb_span.clone(),
                    format!("{} action needs `owner = \"NAME\"`", a_verb(what)),
                    "no `owner`",
                )
            })
        };
        Ok(match verb {
            "get" => {
                let map_name = r.get.as_ref().expect("verb present");
                let map = self.map_index(maps, map_name)?;
                let owner =
                    self.owner_for_map(maps, map, owners, owners.len(), need_owner("get")?)?;
                let create = r.create.as_ref().is_some_and(|c| *c.get_ref());
                if let Some(init) = &r.init
                    && !create
                {
                    return Err(self.err(
                        init.span(),
                        "`init` is the value of a created element: expected `create = true` with it"
                            .to_string(),
                        "init without create = true",
                    ));
                }
                ProgAction::Get {
                    map,
                    owner,
                    create,
                    init: r.init.as_ref().map(|i| *i.get_ref()),
                    write: r.write.as_ref().map(|w| *w.get_ref()),
                    expect: r.expect.as_ref().map(|e| self.get_expect(e)).transpose()?,
                }
            }
            "read" => {
                let read = r.read.as_ref().expect("verb present");
                if !*read.get_ref() {
                    return Err(self.err(
                        read.span(),
                        "read = false: expected `read = true`".to_string(),
                        "expected true",
                    ));
                }
                if !after_get {
                    return Err(self.err(
                        read.span(),
                        "a `read` re-reads the value of an earlier `get`: expected a `get` action before it"
                            .to_string(),
                        "no get before this read",
                    ));
                }
                let expect = r
                    .expect
                    .as_ref()
                    .map(|e| {
                        self.integer_expect(e, "a `read`", "an integer (the value read)")
                            .map(Expect::Value)
                    })
                    .transpose()?;
                ProgAction::Read { expect }
            }
            "uptr" => {
                let uptr = r.uptr.as_ref().expect("verb present");
                if !*uptr.get_ref() || !after_get {
                    return Err(self.err(
                        uptr.span(),
                        "a `uptr = true` action dereferences the uptr field of the value an \
                         earlier `get` returned: expected `uptr = true` after a `get`"
                            .to_string(),
                        "no get before this, or not true",
                    ));
                }
                let expect =
                    r.expect.as_ref().map(|e| self.outcome(e, "uptr", false)).transpose()?;
                ProgAction::UseUptr { expect }
            }
            "hold" => {
                let hold = r.hold.as_ref().expect("verb present");
                if !*hold.get_ref() {
                    return Err(self.err(
                        hold.span(),
                        "hold = false: expected `hold = true`".to_string(),
                        "expected true",
                    ));
                }
                ProgAction::Hold
            }
            _ => {
                let map_name = r.delete.as_ref().expect("verb present");
                let map = self.map_index(maps, map_name)?;
                let owner =
                    self.owner_for_map(maps, map, owners, owners.len(), need_owner("delete")?)?;
                ProgAction::Delete {
                    map,
                    owner,
                    expect: r
                        .expect
                        .as_ref()
                        .map(|e| self.outcome(e, "delete", false))
                        .transpose()?,
                }
            }
        })
    }

    /// The one verb among `keys`: none or two is an error.
    fn one_verb(
        &self,
        keys: &[(&'static str, Range<usize>)],
        verbs: &[&'static str],
        whole: Range<usize>,
        what: &str,
    ) -> Result<&'static str, ScenarioError> {
        let mut found = keys.iter().filter(|(k, _)| verbs.contains(k));
        let Some((first, _)) = found.next() else {
            return Err(self.err(
                whole,
                format!("{what} without a verb: expected exactly one of {}", quoted_list(verbs)),
                "no verb",
            ));
        };
        if let Some((second, span)) = found.next() {
            return Err(self.err(
                span.clone(),
                format!(
                    "{what} with two verbs, `{first}` and `{second}`: expected exactly one of {}",
                    quoted_list(verbs)
                ),
                "a second verb",
            ));
        }
        Ok(first)
    }

    // --- steps -----------------------------------------------------------------------------

    fn steps(
        &self,
        raw: Vec<Sp<RawStep>>,
        kernel: &KernelConfig,
        maps: &[MapDecl],
        owners: &mut Vec<OwnerInfo>,
        all_owners: &[OwnerInfo],
        programs: &[String],
    ) -> Result<Vec<Step>, ScenarioError> {
        // Whether each CPU is paused (by a step with `until`); a later operation on that CPU
        // finishes the paused one first, as the runner does, and so does a `resume`.
        let mut paused = vec![false; kernel.cpus as usize];
        let mut steps = Vec::with_capacity(raw.len());
        for (index, s) in raw.iter().enumerate() {
            let line = self.line_of(s.span().start);
            let kind =
                self.step(index, s, kernel, maps, owners, all_owners, programs, &mut paused)?;
            steps.push(Step { line, kind });
        }
        Ok(steps)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        index: usize,
        s: &Sp<RawStep>,
        kernel: &KernelConfig,
        maps: &[MapDecl],
        owners: &mut Vec<OwnerInfo>,
        all_owners: &[OwnerInfo],
        programs: &[String],
        paused: &mut [bool],
    ) -> Result<StepKind, ScenarioError> {
        let keys = s.get_ref().keys();
        let verb = self.one_verb(&keys, STEP_VERBS, s.span(), "a step")?;
        let r = s.get_ref();
        let verb_span =
            keys.iter().find(|(k, _)| *k == verb).map(|(_, sp)| sp.clone()).unwrap_or(s.span());

        // Which keys this verb takes.
        let allowed: &[&str] = if verb == "check" {
            match r.check.as_ref().map(|c| c.get_ref().as_str()) {
                Some("pending") => &["check", "domain", "expect"],
                Some("storage") | Some("charge") => &["check", "owner", "expect"],
                Some("elements") => &["check", "map", "expect"],
                _ => {
                    let c = r.check.as_ref().expect("verb present");
                    let kinds = ["storage", "charge", "pending", "elements"];
                    return Err(self
                        .err(
                            c.span(),
                            format!(
                                "unknown check `{}`: expected {}",
                                c.get_ref(),
                                quoted_list(&kinds)
                            ),
                            "unknown check",
                        )
                        .with_suggestion(c.get_ref(), &kinds));
                }
            }
        } else {
            step_keys(verb)
        };
        for (k, span) in &keys {
            if !allowed.contains(k) {
                let what = if verb == "check" {
                    format!("a `check = \"{}\"` step", r.check.as_ref().map_or("", |c| c.get_ref()))
                } else {
                    format!("{} step", a_verb(verb))
                };
                let mut e = self.err(
                    span.clone(),
                    format!(
                        "`{k}` does not belong in {what}: expected only {}",
                        quoted_list(allowed)
                    ),
                    format!("not a key of `{verb}`"),
                );
                if *k == "cpu" {
                    e = e.with_help("grace periods and checks are global: they run on no CPU");
                } else if *k == "until" && verb == "resume" {
                    e = e.with_help("a resume finishes the paused step; to pause again, start a new step with `until`");
                }
                return Err(e);
            }
        }
        let missing = |key: &str, example: &str| {
            self.err(
                verb_span.clone(),
                format!("{} step needs `{key}`: expected {key} = {example}", a_verb(verb)),
                format!("no `{key}`"),
            )
        };

        match verb {
            "grace_period" => {
                let d = r.grace_period.as_ref().expect("verb present");
                let domain = self.domain(d)?;
                let quiesce = match &r.until {
                    None => true,
                    Some(u) => match u.get_ref().as_str() {
                        "quiet" => true,
                        "step" => false,
                        other => {
                            return Err(self
                                .err(
                                    u.span(),
                                    format!(
                                        "unknown grace-period progress `{other}`: expected `quiet` (run every grace period and callback the readers allow) or `step` (one step)"
                                    ),
                                    "expected quiet or step",
                                )
                                .with_suggestion(other, &["quiet", "step"]));
                        }
                    },
                };
                return Ok(StepKind::GracePeriod { domain, quiesce });
            }
            "check" => {
                let c = r.check.as_ref().expect("verb present");
                let expect_v = r.expect.as_ref().ok_or_else(|| {
                    missing(
                        "expect",
                        match c.get_ref().as_str() {
                            "storage" => "\"none\" or \"present\"",
                            _ => "N (an integer)",
                        },
                    )
                })?;
                let visible = owners.len();
                return match c.get_ref().as_str() {
                    "storage" => {
                        let o = r.owner.as_ref().ok_or_else(|| missing("owner", "\"NAME\""))?;
                        let owner = self.owner_index(all_owners, visible, o)?;
                        let expect = match expect_v.get_ref() {
                            toml::Value::String(s) if s == "none" => Expect::NoStorage,
                            toml::Value::String(s) if s == "present" => Expect::HasStorage,
                            other => {
                                return Err(self.err(
                                    expect_v.span(),
                                    format!("expect = {other} does not fit a storage check: expected \"none\" or \"present\""),
                                    "expected \"none\" or \"present\"",
                                ));
                            }
                        };
                        Ok(StepKind::Check { check: Check::Storage { owner }, expect })
                    }
                    "charge" => {
                        let o = r.owner.as_ref().ok_or_else(|| missing("owner", "\"SOCKET\""))?;
                        let owner = self.owner_index(all_owners, visible, o)?;
                        self.owner_kind(all_owners, owner, o, MapType::Sk, "a charge check")?;
                        let n = self.integer_expect(
                            expect_v,
                            "a charge check",
                            "an integer (bytes charged)",
                        )?;
                        Ok(StepKind::Check {
                            check: Check::Charge { owner },
                            expect: Expect::Count(n),
                        })
                    }
                    "elements" => {
                        let m = r.map.as_ref().ok_or_else(|| missing("map", "\"NAME\""))?;
                        let map = self.map_index(maps, m)?;
                        let n = self.integer_expect(
                            expect_v,
                            "an elements check",
                            "an integer (elements in the map)",
                        )?;
                        Ok(StepKind::Check {
                            check: Check::Elements { map },
                            expect: Expect::Count(n),
                        })
                    }
                    _ => {
                        let d = r
                            .domain
                            .as_ref()
                            .ok_or_else(|| missing("domain", "\"rcu\" or \"tasks_trace\""))?;
                        let domain = self.domain(d)?;
                        let n = self.integer_expect(
                            expect_v,
                            "a pending check",
                            "an integer (callbacks pending)",
                        )?;
                        Ok(StepKind::Check {
                            check: Check::Pending { domain },
                            expect: Expect::Count(n),
                        })
                    }
                };
            }
            _ => {}
        }

        // A CPU verb.
        let cpu_v = r.cpu.as_ref().ok_or_else(|| missing("cpu", "N"))?;
        let cpu = *cpu_v.get_ref();
        if cpu >= kernel.cpus {
            return Err(self
                .err(
                    cpu_v.span(),
                    format!(
                        "cpu {cpu} does not exist: expected a CPU in 0..={} (the kernel has {} CPU{})",
                        kernel.cpus - 1,
                        kernel.cpus,
                        if kernel.cpus == 1 { "" } else { "s" }
                    ),
                    "no such CPU",
                )
                .with_help("[kernel] cpus sets the number of CPUs"));
        }
        let paused_here = &mut paused[cpu as usize];
        if verb == "resume" {
            let v = r.resume.as_ref().expect("verb present");
            if !*v.get_ref() {
                return Err(self.err(
                    v.span(),
                    "resume = false: expected `resume = true`".to_string(),
                    "expected true",
                ));
            }
            if !*paused_here {
                return Err(self
                    .err(
                        cpu_v.span(),
                        format!("CPU {cpu} has no paused step to resume: expected an earlier step on CPU {cpu} with `until = \"PROBE\"`, not yet resumed or finished by a later step on that CPU"),
                        "nothing paused on this CPU",
                    ));
            }
            *paused_here = false;
            return Ok(StepKind::Resume { cpu });
        }
        let until = r.until.as_ref().map(|u| self.probe(u)).transpose()?;
        *paused_here = until.is_some();
        let visible = owners.len();
        let verb_name = r_verb_value(r, verb);
        let op = match verb {
            "update" | "lookup" | "delete" => {
                let map = self.map_index(maps, verb_name)?;
                let o = r.owner.as_ref().ok_or_else(|| missing("owner", "\"NAME\""))?;
                let owner = self.owner_for_map(maps, map, all_owners, visible, o)?;
                match verb {
                    "update" => {
                        let flags = match &r.flags {
                            None => BPF_ANY,
                            Some(f) => match f.get_ref().as_str() {
                                "any" => BPF_ANY,
                                "noexist" => BPF_NOEXIST,
                                "exist" => BPF_EXIST,
                                other => {
                                    let names = ["any", "noexist", "exist"];
                                    return Err(self
                                        .err(
                                            f.span(),
                                            format!(
                                                "unknown update flags `{other}`: expected {}",
                                                quoted_list(&names)
                                            ),
                                            "unknown flags",
                                        )
                                        .with_suggestion(other, &names));
                                }
                            },
                        };
                        let value = r.value.as_ref().map_or(0, |v| *v.get_ref());
                        Op::Update { map, owner, value, flags }
                    }
                    "lookup" => Op::Lookup { map, owner },
                    _ => Op::Delete { map, owner },
                }
            }
            "run" => {
                let Some(program) = programs.iter().position(|p| p == verb_name.get_ref()) else {
                    let names: Vec<&str> = programs.iter().map(String::as_str).collect();
                    return Err(self.unknown_table_name("program", "programs", verb_name, &names));
                };
                Op::Run { program }
            }
            "exit" | "close" | "evict" | "rmdir" => {
                let owner = self.owner_index(all_owners, visible, verb_name)?;
                let kind = match verb {
                    "exit" => MapType::Task,
                    "close" => MapType::Sk,
                    "evict" => MapType::Inode,
                    _ => MapType::Cgrp,
                };
                self.owner_kind(all_owners, owner, verb_name, kind, &format!("`{verb}`"))?;
                match verb {
                    "exit" => Op::Exit { owner },
                    "close" => Op::Close { owner },
                    "evict" => Op::Evict { owner },
                    _ => Op::Rmdir { owner },
                }
            }
            "accept" => {
                let parent = self.owner_index(all_owners, visible, verb_name)?;
                self.owner_kind(all_owners, parent, verb_name, MapType::Sk, "`accept`")?;
                let child = r.r#as.as_ref().ok_or_else(|| missing("as", "\"NEWNAME\""))?;
                if let Some(o) = owners.iter().find(|o| o.name == *child.get_ref()) {
                    let origin = match o.accepted_by {
                        None => "an [owners] table".to_string(),
                        Some(_) => format!("the accept on line {}", o.accept_line),
                    };
                    return Err(self.err(
                        child.span(),
                        format!(
                            "owner `{}` already exists (from {origin}): expected a new name for the accepted socket",
                            child.get_ref()
                        ),
                        "name already taken",
                    ));
                }
                let child_index = owners.len();
                owners.push(OwnerInfo {
                    name: child.get_ref().clone(),
                    kind: MapType::Sk,
                    accepted_by: Some(index),
                    accept_line: self.line_of(s.span().start),
                });
                Op::Accept { parent, child: child_index }
            }
            _ => Op::CloseMap { map: self.map_index(maps, verb_name)? },
        };
        let expect =
            r.expect.as_ref().map(|e| self.outcome(e, verb, verb == "lookup")).transpose()?;
        Ok(StepKind::Op { cpu, op, until, expect })
    }

    /// Checks that owner `index` (named at `name`) is of `kind`, as `what` needs.
    fn owner_kind(
        &self,
        owners: &[OwnerInfo],
        index: usize,
        name: &Sp<String>,
        kind: MapType,
        what: &str,
    ) -> Result<(), ScenarioError> {
        let o = &owners[index];
        if o.kind == kind {
            return Ok(());
        }
        Err(self.err(
            name.span(),
            format!(
                "{what} needs {}, but `{}` is {}: expected {} owner",
                a_kind(kind),
                o.name,
                a_kind(o.kind),
                a_kind(kind)
            ),
            format!("{}, not {}", a_kind(o.kind), a_kind(kind)),
        ))
    }

    fn final_expect(&self, raw: Option<RawExpect>) -> Result<FinalExpect, ScenarioError> {
        let mut out = FinalExpect::default();
        let Some(raw) = raw else { return Ok(out) };
        out.violations =
            self.known_names(raw.violations.unwrap_or_default(), VIOLATION_NAMES, "violation")?;
        out.deadlock = raw.deadlock.unwrap_or(false);
        Ok(out)
    }
}

/// The string value of a step's name-taking verb (`update = "MAP"`, `exit = "TASK"`, ...).
fn r_verb_value<'r>(r: &'r RawStep, verb: &str) -> &'r Sp<String> {
    let v = match verb {
        "update" => &r.update,
        "lookup" => &r.lookup,
        "delete" => &r.delete,
        "run" => &r.run,
        "exit" => &r.exit,
        "close" => &r.close,
        "evict" => &r.evict,
        "rmdir" => &r.rmdir,
        "accept" => &r.accept,
        _ => &r.close_map,
    };
    v.as_ref().expect("the verb is present")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(suggest("selem_aloc", PROBE_POINTS), Some("selem_alloc"));
        assert_eq!(suggest("zzzzzz", PROBE_POINTS), None);
        assert_eq!(suggest("x", &[]), None);
    }

    #[test]
    fn locations_are_clamped_and_char_based() {
        let text = "é = 1\nab";
        // Past the end: the end of the text, just after "ab".
        let e = ScenarioError::new("p", text, 9..99, String::new(), String::new());
        assert_eq!((e.line(), e.column()), (2, 3));
        // Inside `é`: its start.
        let e = ScenarioError::new("p", text, 1..1, String::new(), String::new());
        assert_eq!((e.line(), e.column()), (1, 1));
        // After `é` (two bytes, one character): column 2.
        let e = ScenarioError::new("p", text, 2..3, String::new(), String::new());
        assert_eq!((e.line(), e.column()), (1, 2));
    }
}
