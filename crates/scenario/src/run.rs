//! Running a scenario on the `Kernel`'s stepped mode.
//!
//! Each CPU of the scenario is a body of the stepped executor that performs that CPU's steps in
//! file order and passes the probe point `step_done` (field `step`) after each; state checks
//! run on an extra observer body. With [`ScheduleSpec::Steps`] the steps' order is turned into
//! a plan: "run CPU c until `step_done`" (or until the step's `until` probe point, where it
//! pauses), "quiesce RCU", "run the observer until `step_done`". The seeded schedules of the
//! explorer run the same bodies in orders of their choosing, without pauses, grace-period
//! steps or checks (they step grace periods themselves).

use crate::model::{
    Check, Expect, Op, ProgAction, ProgramDecl, Scenario, StepKind, VIOLATION_NAMES,
};
use crate::trace::{Line, Trace};
use bpfls_kernel::{
    Action, CpuBody, Error, GpDomain, Kernel, MapType, ProgSpec, RunReport, Schedule, Stepper,
};
use bpfls_local_storage::flags::{BPF_LOCAL_STORAGE_GET_F_CREATE, MapFlags};
use bpfls_local_storage::{Errno, LockDiscipline, MapAttr, ValueLayout};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

/// Slots per slab in a scenario's kernel.
pub const SLAB_CAPACITY: u32 = 256;

/// How the bodies are interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// The scenario's step order, with its pauses, grace-period steps and checks.
    Steps,
    /// The seeded random scheduler (grace periods move as one of its choices).
    Random {
        /// The seed.
        seed: u64,
    },
    /// PCT with this bug depth.
    Pct {
        /// The seed.
        seed: u64,
        /// The bug depth.
        depth: u32,
    },
}

/// What a run found and how it compares with the scenario's expectations.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The trace: every probe point passed and every step's outcome, in order.
    pub trace: Trace,
    /// Expectations that did not hold (empty: the scenario behaved as declared).
    pub failures: Vec<String>,
    /// The violation kinds and invariant codes reported (sorted, each once).
    pub found: Vec<String>,
    /// Every violation and invariant problem, in full.
    pub details: Vec<String>,
    /// Whether the run ended in a deadlock, and the wait-for report.
    pub deadlock: Option<Vec<String>>,
    /// Figures for the summary.
    pub summary: Summary,
}

impl Outcome {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether the run found a violation, an invariant problem or a deadlock (what the
    /// explorer looks for).
    pub fn found_problem(&self) -> bool {
        !self.found.is_empty() || self.deadlock.is_some()
    }
}

/// Figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// RCU grace periods completed.
    pub rcu_grace_periods: u64,
    /// Tasks-Trace grace periods completed.
    pub tasks_trace_grace_periods: u64,
    /// Callbacks invoked after an RCU grace period.
    pub rcu_callbacks: u64,
    /// Callbacks invoked after a Tasks-Trace grace period.
    pub tasks_trace_callbacks: u64,
    /// Objects reused at once (`reuse_now`: no grace period).
    pub reused_now: u64,
    /// Objects returned to the slab.
    pub slab_frees: u64,
    /// Objects leaked at teardown.
    pub leaked: u64,
    /// Violations and invariant problems reported.
    pub violations: u64,
}

/// The value bytes of `x`: little-endian, zero-padded or cut to `size`.
pub fn value_bytes(x: u64, size: u32) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (i, b) in x.to_le_bytes().iter().enumerate().take(size as usize) {
        v[i] = *b;
    }
    v
}

/// The u64 a value starts with (little-endian; shorter values zero-extended).
pub fn value_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in bytes.iter().take(8).enumerate() {
        b[i] = *x;
    }
    u64::from_le_bytes(b)
}

/// What the bodies share: the kernel, the fds, the outcomes.
struct World {
    scenario: Scenario,
    kernel: Arc<Kernel>,
    map_fds: Vec<i32>,
    owner_fds: Mutex<Vec<i32>>,
    /// Step outcomes by step index.
    outcomes: Mutex<Vec<Option<Line>>>,
    /// Attached program runs, in order.
    attached: Mutex<Vec<Line>>,
    /// Expectation failures.
    failures: Mutex<Vec<String>>,
    /// Problems the programs' checked accesses found (I11: a uptr page used after release).
    detected: Mutex<Vec<String>>,
    /// Whether steps' expectations are checked (not under the explorer's schedules).
    check_expectations: bool,
}

impl World {
    fn owner_fd(&self, owner: usize) -> i32 {
        self.owner_fds.lock().unwrap_or_else(|e| e.into_inner())[owner]
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    }

    fn value_size(&self, map: usize) -> u32 {
        self.scenario.maps[map].value_size
    }
}

/// Runs attached programs at their probe points (the fentry analogue), never inside
/// themselves on the same CPU (the trampoline's `prog->active`), and the lock-discipline
/// checker (I8: no allocation or free under a storage or bucket lock).
struct Attach {
    /// Set for the run, cleared after it: the world holds the kernel, whose probe points hold
    /// this hook, and the cycle must not outlive the run (the explorer makes thousands).
    world: Mutex<Option<Arc<World>>>,
    /// Programs run only while the steps do (not during setup or the final teardown).
    armed: std::sync::atomic::AtomicBool,
    active: Mutex<HashSet<(usize, u32)>>,
    locks: LockDiscipline,
}

impl ProbeHook for Attach {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        let Some(w) = self.world.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Verdict::Continue;
        };
        let w = &w;
        self.locks.hit(e);
        let Some(cpu) = e.cpu else { return Verdict::Continue };
        if !self.armed.load(std::sync::atomic::Ordering::Relaxed) {
            return Verdict::Continue;
        }
        for (i, p) in w.scenario.programs.iter().enumerate() {
            if p.attach != Some(e.site) {
                continue;
            }
            if !self.active.lock().unwrap_or_else(|e| e.into_inner()).insert((i, cpu)) {
                continue; // a recursion miss
            }
            let (result, _) = run_program(w, cpu, p, None);
            let mut attached = w.attached.lock().unwrap_or_else(|e| e.into_inner());
            let n = attached.len();
            attached.push(Line::Attached {
                program: p.name.clone(),
                run: n as u64,
                cpu,
                at: e.site.to_string(),
                result,
            });
            drop(attached);
            self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&(i, cpu));
            w.kernel.mark(cpu, "prog_done", &[("run", n as u64)]);
        }
        Verdict::Continue
    }
}

fn errno_text(e: &Error) -> String {
    e.errno().name().to_string()
}

/// Compares an outcome with an expectation; `None` when there is none.
fn holds(expect: Option<Expect>, got: &Result<Option<u64>, Errno>) -> Option<bool> {
    let expect = expect?;
    Some(match (expect, got) {
        (Expect::Ok, Ok(_)) => true,
        (Expect::Errno(e), Err(g)) => e == *g,
        (Expect::Value(v), Ok(Some(g))) => v == *g,
        (Expect::Some, Ok(Some(_))) => true,
        (Expect::Null, Ok(None)) => true,
        _ => false,
    })
}

fn expect_text(e: Expect) -> String {
    match e {
        Expect::Ok => "ok".into(),
        Expect::Errno(e) => e.name().into(),
        Expect::Value(v) | Expect::Count(v) => v.to_string(),
        Expect::Null => "null".into(),
        Expect::Some => "value".into(),
        Expect::NoStorage => "none".into(),
        Expect::HasStorage => "present".into(),
    }
}

/// Runs a program on `cpu`; returns its result line and whether every action's expectation
/// held. `step` names the step for failure messages.
fn run_program(w: &World, cpu: u32, prog: &ProgramDecl, step: Option<usize>) -> (String, bool) {
    let spec = ProgSpec { ty: prog.ty, sleepable: prog.sleepable, ctx: prog.context };
    let k = &w.kernel;
    let mut all_ok = true;
    let where_ = match step {
        Some(i) => format!("step {} (line {})", i + 1, w.scenario.steps[i].line),
        None => format!("program {} (attached)", prog.name),
    };
    let r = k.run(cpu, spec, |p| {
        let mut parts: Vec<String> = Vec::new();
        let mut last = None;
        for action in &prog.actions {
            let (text, got, expect) = match action {
                ProgAction::Get { map, owner, create, init, write, expect } => {
                    let size = w.value_size(*map);
                    let init = init.map(|x| value_bytes(x, size));
                    let flags = if *create { BPF_LOCAL_STORAGE_GET_F_CREATE } else { 0 };
                    let name = format!(
                        "get {} {}",
                        w.scenario.maps[*map].name, w.scenario.owners[*owner].name
                    );
                    match p.storage_get(w.map_fds[*map], w.owner_fd(*owner), init.as_deref(), flags)
                    {
                        None => (format!("{name}: null"), Ok(None), *expect),
                        Some(v) => {
                            if let Some(x) = write {
                                let _ = v.write("scenario program write", &value_bytes(*x, size));
                            }
                            let got = match v.read("scenario program read") {
                                Ok(bytes) => Ok(Some(value_u64(&bytes))),
                                Err(violation) => {
                                    parts.push(format!("{name}: {:?}", violation.kind));
                                    last = Some(v);
                                    continue;
                                }
                            };
                            let text = format!("{name}: {}", got.as_ref().unwrap().unwrap());
                            last = Some(v);
                            (text, got, *expect)
                        }
                    }
                }
                ProgAction::Read { expect } => match &last {
                    None => ("read: no value".to_string(), Ok(None), *expect),
                    Some(v) => match v.read("scenario program read") {
                        Ok(bytes) => {
                            let x = value_u64(&bytes);
                            (format!("read: {x}"), Ok(Some(x)), *expect)
                        }
                        Err(violation) => {
                            (format!("read: {:?}", violation.kind), Err(Errno::EINVAL), *expect)
                        }
                    },
                },
                ProgAction::Hold => {
                    p.hold();
                    ("hold".to_string(), Ok(None), None)
                }
                ProgAction::UseUptr { expect } => match &last {
                    None => ("uptr: no value".to_string(), Err(Errno::EINVAL), *expect),
                    Some(v) if v.element().map().attr().layout.uptrs == 0 => (
                        "uptr: the value has no uptr field".to_string(),
                        Err(Errno::EINVAL),
                        *expect,
                    ),
                    Some(v) => match v.element().use_fields("scenario program uptr") {
                        Ok(()) => ("uptr: ok".to_string(), Ok(None), *expect),
                        Err(problem) => {
                            w.detected
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(problem.clone());
                            (format!("uptr: {problem}"), Err(Errno::EINVAL), *expect)
                        }
                    },
                },
                ProgAction::Delete { map, owner, expect } => {
                    let name = format!(
                        "delete {} {}",
                        w.scenario.maps[*map].name, w.scenario.owners[*owner].name
                    );
                    match p.storage_delete(w.map_fds[*map], w.owner_fd(*owner)) {
                        Ok(()) => (format!("{name}: ok"), Ok(None), *expect),
                        Err(e) => (format!("{name}: {}", errno_text(&e)), Err(e.errno()), *expect),
                    }
                }
            };
            if w.check_expectations && holds(expect, &got) == Some(false) {
                all_ok = false;
                w.fail(format!(
                    "{where_}: program {}: `{text}`, expected {}",
                    prog.name,
                    expect_text(expect.expect("an expectation"))
                ));
            }
            parts.push(text);
        }
        parts.join("; ")
    });
    match r {
        Ok(text) => (text, all_ok),
        Err(e) => (format!("run: {e}"), false),
    }
}

/// Executes op step `i` on `cpu`; returns the outcome text and the comparable result.
fn exec_op(w: &World, cpu: u32, i: usize, op: &Op) -> (String, Result<Option<u64>, Errno>) {
    let k = &w.kernel;
    let sc = &w.scenario;
    let unit = |r: Result<(), Error>| match r {
        Ok(()) => ("ok".to_string(), Ok(None)),
        Err(e) => (e.to_string(), Err(e.errno())),
    };
    match op {
        Op::Update { map, owner, value, flags } => {
            let bytes = value_bytes(*value, sc.maps[*map].value_size);
            unit(k.map_update_elem(cpu, w.map_fds[*map], w.owner_fd(*owner), &bytes, *flags))
        }
        Op::Lookup { map, owner } => {
            match k.map_lookup_elem(cpu, w.map_fds[*map], w.owner_fd(*owner)) {
                Ok(v) => {
                    let x = value_u64(&v);
                    (format!("value {x}"), Ok(Some(x)))
                }
                Err(e) => (e.to_string(), Err(e.errno())),
            }
        }
        Op::Delete { map, owner } => {
            unit(k.map_delete_elem(cpu, w.map_fds[*map], w.owner_fd(*owner)))
        }
        Op::Run { program } => {
            let (text, _) = run_program(w, cpu, &sc.programs[*program], Some(i));
            (text, Ok(None))
        }
        Op::Exit { owner } => unit(k.task_exit(cpu, w.owner_fd(*owner))),
        Op::Close { owner } => unit(k.socket_close(cpu, w.owner_fd(*owner))),
        Op::Evict { owner } => unit(k.inode_evict(cpu, w.owner_fd(*owner))),
        Op::Rmdir { owner } => unit(k.cgroup_rmdir(cpu, w.owner_fd(*owner))),
        Op::Accept { parent, child } => match k.socket_accept(cpu, w.owner_fd(*parent)) {
            Ok((_, fd)) => {
                w.owner_fds.lock().unwrap_or_else(|e| e.into_inner())[*child] = fd;
                ("ok".to_string(), Ok(None))
            }
            Err(e) => (e.to_string(), Err(e.errno())),
        },
        Op::CloseMap { map } => unit(k.close(cpu, w.map_fds[*map])),
    }
}

/// Evaluates a check; the outcome text and whether it holds.
fn exec_check(w: &World, check: &Check, expect: Expect) -> (String, bool) {
    let k = &w.kernel;
    match check {
        Check::Storage { owner } => {
            let name = &w.scenario.owners[*owner].name;
            match k.has_storage(w.owner_fd(*owner)) {
                Ok(has) => {
                    let text =
                        format!("{name} has {}", if has { "a storage" } else { "no storage" });
                    (text, (expect == Expect::HasStorage) == has)
                }
                Err(e) => (format!("{name}: {e}"), expect == Expect::NoStorage),
            }
        }
        Check::Charge { owner } => {
            let name = &w.scenario.owners[*owner].name;
            match k.socket_charge(w.owner_fd(*owner)) {
                Ok(bytes) => {
                    (format!("{name} is charged {bytes} bytes"), expect == Expect::Count(bytes))
                }
                Err(e) => (format!("{name}: {e}"), false),
            }
        }
        Check::Elements { map } => {
            let name = &w.scenario.maps[*map].name;
            match k.map_elements(w.map_fds[*map]) {
                Ok(n) => {
                    (format!("map {name} has {n} elements"), expect == Expect::Count(n as u64))
                }
                Err(e) => (format!("map {name}: {e}"), false),
            }
        }
        Check::Pending { domain } => {
            let stats = match domain {
                GpDomain::Rcu => k.domains().rcu.stats(),
                GpDomain::TasksTrace => k.domains().tasks_trace.stats(),
            };
            let n = stats.cbs_pending;
            (
                format!("{} callbacks pending on {}", n, domain_name(*domain)),
                expect == Expect::Count(n),
            )
        }
    }
}

/// The domain's name in files and traces.
pub fn domain_name(d: GpDomain) -> &'static str {
    match d {
        GpDomain::Rcu => "rcu",
        GpDomain::TasksTrace => "tasks_trace",
    }
}

/// The name of a violation or invariant problem, as `[expect] violations` spells it.
fn problem_name(text: &str) -> Option<String> {
    let head = text.split(':').next()?.trim();
    let head = head.split('/').next()?.trim();
    VIOLATION_NAMES.contains(&head).then(|| head.to_string())
}

/// Runs `scenario` under `schedule`.
pub fn run(scenario: &Scenario, schedule: ScheduleSpec) -> Outcome {
    let sc = scenario.clone();
    let cpus = sc.kernel.cpus;
    let steps_mode = schedule == ScheduleSpec::Steps;
    let observer = cpus as usize;
    let plan = if steps_mode { build_plan(&sc, observer) } else { Vec::new() };
    let sched = match schedule {
        ScheduleSpec::Steps => Schedule::Plan(plan),
        ScheduleSpec::Random { seed } => Schedule::Random(seed),
        ScheduleSpec::Pct { seed, depth } => {
            Schedule::Pct { seed, depth, steps: 20 * (sc.steps.len() as u64 + 1) }
        }
    };
    let attach = Arc::new(Attach {
        world: Mutex::new(None),
        armed: std::sync::atomic::AtomicBool::new(false),
        active: Mutex::new(HashSet::new()),
        locks: LockDiscipline::new(),
    });
    let stepper = Stepper::with_tracer(sched, attach.clone());
    let mut builder = Kernel::builder()
        .cpus(cpus)
        .trace_implies_rcu(sc.kernel.trace_implies_rcu)
        .optmem_max(sc.kernel.optmem_max)
        .preempt_rt(sc.kernel.preempt_rt)
        // A scenario touches a handful of objects: small slabs build in a fraction of the
        // time (the default 4096 slots per slab dominate a short run).
        .capacity(SLAB_CAPACITY)
        .mutations(sc.kernel.mutations())
        .stepped(&stepper);
    if !sc.kernel.busy_counter {
        builder = builder.without_busy_counter();
    }
    if sc.kernel.busted_rcu {
        builder = builder.busted_rcu();
    }
    let kernel = Arc::new(builder.build());

    // Setup, before the first step: maps, then the owners that exist from the start.
    let mut failures = Vec::new();
    let map_fds: Vec<i32> = sc
        .maps
        .iter()
        .map(|m| {
            let flags = if m.clone {
                (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits()
            } else {
                MapFlags::NO_PREALLOC.bits()
            };
            let layout = ValueLayout { uptrs: u8::from(m.uptr), ..ValueLayout::default() };
            let attr = MapAttr::new(m.value_size).with_flags(flags).with_layout(layout);
            kernel.map_create(m.ty, attr).unwrap_or_else(|e| {
                failures.push(format!("map {}: {e}", m.name));
                -1
            })
        })
        .collect();
    let owner_fds: Vec<i32> = sc
        .owners
        .iter()
        .map(|o| match (o.accepted_by, o.kind) {
            (Some(_), _) => -1,
            (None, MapType::Task) => kernel.task_spawn().1,
            (None, MapType::Sk) => kernel.socket_create().1,
            (None, MapType::Inode) => kernel.inode_create().1,
            (None, MapType::Cgrp) => kernel.cgroup_mkdir().1,
        })
        .collect();
    let world = Arc::new(World {
        scenario: sc.clone(),
        kernel: kernel.clone(),
        map_fds,
        owner_fds: Mutex::new(owner_fds),
        outcomes: Mutex::new(vec![None; sc.steps.len()]),
        attached: Mutex::new(Vec::new()),
        failures: Mutex::new(failures),
        detected: Mutex::new(Vec::new()),
        check_expectations: steps_mode,
    });
    *attach.world.lock().unwrap_or_else(|e| e.into_inner()) = Some(world.clone());

    // One body per CPU, plus the observer for checks.
    let mut bodies: Vec<CpuBody> = Vec::new();
    for cpu in 0..cpus {
        let w = world.clone();
        bodies.push(Box::new(move || {
            for (i, step) in w.scenario.steps.iter().enumerate() {
                let StepKind::Op { cpu: c, op, expect, .. } = &step.kind else { continue };
                if *c != cpu {
                    continue;
                }
                w.kernel.mark(cpu, "step_start", &[("step", i as u64 + 1)]);
                let (text, got) = exec_op(&w, cpu, i, op);
                let ok = match holds(*expect, &got) {
                    Some(false) if w.check_expectations => {
                        w.fail(format!(
                            "step {} (line {}): `{text}`, expected {}",
                            i + 1,
                            step.line,
                            expect_text(expect.expect("an expectation"))
                        ));
                        false
                    }
                    _ => true,
                };
                let line = Line::Step {
                    step: i as u64 + 1,
                    line: step.line as u64,
                    cpu: Some(cpu),
                    op: describe_op(&w.scenario, op),
                    result: text,
                    expected: expect.map(expect_text),
                    ok,
                };
                w.outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(line);
                w.kernel.mark(cpu, "step_done", &[("step", i as u64 + 1)]);
            }
        }));
    }
    {
        let w = world.clone();
        bodies.push(Box::new(move || {
            if !w.check_expectations {
                return;
            }
            for (i, step) in w.scenario.steps.iter().enumerate() {
                let StepKind::Check { check, expect } = &step.kind else { continue };
                w.kernel.mark(0, "step_start", &[("step", i as u64 + 1)]);
                let (text, ok) = exec_check(&w, check, *expect);
                if !ok {
                    w.fail(format!(
                        "step {} (line {}): {text}, expected {}",
                        i + 1,
                        step.line,
                        expect_text(*expect)
                    ));
                }
                let line = Line::Step {
                    step: i as u64 + 1,
                    line: step.line as u64,
                    cpu: None,
                    op: describe_check(&w.scenario, check),
                    result: text,
                    expected: Some(expect_text(*expect)),
                    ok,
                };
                w.outcomes.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(line);
                w.kernel.mark(0, "step_done", &[("step", i as u64 + 1)]);
            }
        }));
    }
    let placed = bodies
        .into_iter()
        .enumerate()
        .map(|(b, body)| {
            // The observer only reads state: it sits on a CPU of its own, outside the kernel's.
            let cpu = if b == observer { u32::MAX } else { b as u32 };
            (cpu, bpfls_kernel::Context::Task, body)
        })
        .collect();
    attach.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = stepper.run_placed(placed);
    attach.armed.store(false, std::sync::atomic::Ordering::Relaxed);
    let outcome = finish(&world, &report, schedule, attach.locks.problems());
    *attach.world.lock().unwrap_or_else(|e| e.into_inner()) = None;
    outcome
}

/// The plan for [`ScheduleSpec::Steps`].
fn build_plan(sc: &Scenario, observer: usize) -> Vec<Action> {
    let mut plan = Vec::new();
    let mut paused = vec![false; sc.kernel.cpus as usize];
    for step in &sc.steps {
        match &step.kind {
            StepKind::Op { cpu, until, .. } => {
                let c = *cpu as usize;
                if paused[c] {
                    // A new operation finishes the paused one first.
                    plan.push(Action::Until(c, "step_done".into()));
                }
                match until {
                    Some(site) => plan.push(Action::Until(c, (*site).into())),
                    None => plan.push(Action::Until(c, "step_done".into())),
                }
                paused[c] = until.is_some();
            }
            StepKind::Resume { cpu } => {
                plan.push(Action::Until(*cpu as usize, "step_done".into()));
                paused[*cpu as usize] = false;
            }
            StepKind::GracePeriod { domain, quiesce: true } => plan.push(Action::Quiesce(*domain)),
            StepKind::GracePeriod { domain, quiesce: false } => plan.push(Action::Advance(*domain)),
            StepKind::Check { .. } => plan.push(Action::Until(observer, "step_done".into())),
        }
    }
    for b in 0..=observer {
        plan.push(Action::ToEnd(b));
    }
    plan
}

fn describe_op(sc: &Scenario, op: &Op) -> String {
    let m = |i: usize| sc.maps[i].name.as_str();
    let o = |i: usize| sc.owners[i].name.as_str();
    match op {
        Op::Update { map, owner, value, flags } => {
            let f = match *flags {
                0 => "any",
                1 => "noexist",
                _ => "exist",
            };
            format!("update {} {} = {value} ({f})", m(*map), o(*owner))
        }
        Op::Lookup { map, owner } => format!("lookup {} {}", m(*map), o(*owner)),
        Op::Delete { map, owner } => format!("delete {} {}", m(*map), o(*owner)),
        Op::Run { program } => format!("run {}", sc.programs[*program].name),
        Op::Exit { owner } => format!("exit {}", o(*owner)),
        Op::Close { owner } => format!("close {}", o(*owner)),
        Op::Evict { owner } => format!("evict {}", o(*owner)),
        Op::Rmdir { owner } => format!("rmdir {}", o(*owner)),
        Op::Accept { parent, child } => format!("accept {} as {}", o(*parent), o(*child)),
        Op::CloseMap { map } => format!("close_map {}", m(*map)),
    }
}

fn describe_check(sc: &Scenario, check: &Check) -> String {
    match check {
        Check::Storage { owner } => format!("check storage of {}", sc.owners[*owner].name),
        Check::Charge { owner } => format!("check charge of {}", sc.owners[*owner].name),
        Check::Pending { domain } => format!("check pending callbacks on {}", domain_name(*domain)),
        Check::Elements { map } => format!("check elements of map {}", sc.maps[*map].name),
    }
}

/// After the run: the final checks, the teardown, the trace.
fn finish(
    world: &Arc<World>,
    report: &RunReport,
    schedule: ScheduleSpec,
    lock_problems: Vec<String>,
) -> Outcome {
    let k = &world.kernel;
    let sc = &world.scenario;
    let mut details: Vec<String> = lock_problems;
    details.extend(world.detected.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    let deadlock = report.deadlock.then(|| report.wait_for.clone());
    for (b, r) in report.results.iter().enumerate() {
        if let Err(msg) = r
            && !report.deadlock
        {
            world.fail(format!("CPU {b} panicked: {msg}"));
        }
    }
    details.extend(k.check_invariants());
    let mut leaked = 0;
    if !report.deadlock {
        match k.shutdown() {
            Ok(n) => leaked = n as u64,
            Err(e) => details.push(format!("teardown: {e}")),
        }
    }
    details.extend(k.violations().snapshot().iter().map(|v| {
        format!(
            "{:?}: {:?} at {} (allocated at {:?}, freed at {:?})",
            v.kind, v.obj, v.site, v.alloc_site, v.free_site
        )
    }));
    let found: BTreeSet<String> = details.iter().filter_map(|d| problem_name(d)).collect();
    let found: Vec<String> = found.into_iter().collect();
    let mut expected = sc.expect.violations.clone();
    expected.sort();
    expected.dedup();
    if found != expected {
        world.fail(if expected.is_empty() {
            format!("violations reported: {}", details.join("; "))
        } else {
            format!(
                "expected exactly the violations {expected:?}, found {found:?}: {}",
                details.join("; ")
            )
        });
    }
    if report.deadlock != sc.expect.deadlock {
        world.fail(if report.deadlock {
            format!("deadlock: {}", report.wait_for.join("; "))
        } else {
            "expected a deadlock, the run ended normally".to_string()
        });
    }
    let summary = summarize(report, leaked, details.len() as u64, k);
    let trace = Trace::build(
        sc,
        schedule,
        report,
        world.outcomes.lock().unwrap_or_else(|e| e.into_inner()).as_slice(),
        &world.attached.lock().unwrap_or_else(|e| e.into_inner()),
        &summary,
        &found,
        &deadlock,
    );
    let failures = world.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Outcome { trace, failures, found, details, deadlock, summary }
}

fn summarize(report: &RunReport, leaked: u64, violations: u64, k: &Kernel) -> Summary {
    let mut s = Summary { leaked, violations, ..Summary::default() };
    for e in &report.trace {
        let domain = e.fields.iter().find(|(n, _)| *n == "domain").map(|(_, v)| *v);
        match (e.site, domain) {
            ("callback_invoke", Some(0)) => s.rcu_callbacks += 1,
            ("callback_invoke", Some(1)) => s.tasks_trace_callbacks += 1,
            ("reclaim_now" | "free_now", _) => s.reused_now += 1,
            ("slab_free", _) => s.slab_frees += 1,
            _ => {}
        }
    }
    s.rcu_grace_periods = k.domains().rcu.stats().gp_completed;
    s.tasks_trace_grace_periods = k.domains().tasks_trace.stats().gp_completed;
    s
}
