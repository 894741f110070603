//! Stepped (deterministic) execution: logical CPUs run one at a time and switch only at probe
//! points, as a seeded, scripted, planned or PCT scheduler decides ([`Schedule`]). Grace periods
//! move when the plan says, as one of the random scheduler's choices, or when every CPU waits. A
//! CPU that cannot make progress (a held lock, an unfinished grace period, an owner still used by
//! a program) waits through the scheduler; when every CPU waits and the grace-period machinery
//! cannot move either, the run reports a deadlock, with its wait-for cycle, instead of hanging.
//!
//! Why threads and a baton rather than coroutines: the storage code is ordinary blocking Rust,
//! and the probe points are the only places it yields, so each logical CPU is an OS thread that
//! runs only while it holds the baton. The executor is a [`ProbeHook`] on the kernel's probe
//! points: build the kernel with [`KernelBuilder::stepped`](crate::KernelBuilder::stepped), which
//! attaches it. The same schedule and the same workload always give the same events.
//!
//! A waiting CPU becomes a candidate again, at the next decision point, once something it may be
//! waiting for has happened since it started waiting (a lock released, a reader leaving, a
//! callback queued, a body ending, grace-period work), so a lock released by a finished holder is
//! never mistaken for a deadlock and a finished `synchronize` does not wait for the other CPUs to
//! block.
//!
//! # Contexts
//!
//! [`Stepper::run`] gives each body a CPU of its own. [`Stepper::run_placed`] places bodies on
//! kernel CPUs in a [`Context`], several per CPU, and keeps the kernel's nesting rules: code
//! that interrupts (or preempts) a CPU runs to its end before what it interrupted resumes, so
//! per-CPU state (the busy counter, the RCU reader nesting) sees strictly nested sections. A
//! body may start on a CPU busy with another only if its context may interrupt the other's:
//! an NMI interrupts anything but an NMI; otherwise interrupts must be enabled there (no
//! storage or bucket lock held or being taken: the kernel takes them with
//! `raw_spin_lock_irqsave`) and the context must be higher, or both task (preemption).
//!
//! # Deadlock reports
//!
//! The executor follows the storage and bucket locks through their probe points (each names
//! its lock: the storage object's id, or the map and bucket index), so when every body is
//! blocked the report says who waits for what, and the cycle: a body waiting for a lock it
//! holds itself (AA recursion, bug zoo B3), for a lock held by a body it interrupted, or for a
//! body that cannot resume until it finishes.

use crate::Context;
use bpfls_rcu::{Domains, Step};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict, WaitVerdict};
use bpfls_sync::thread::{self, ThreadId};
use bpfls_sync::untracked::{Arc, Condvar, Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// How the next CPU is chosen at each probe point.
///
/// ```
/// # use bpfls_kernel::{CpuBody, Kernel, MapType, Schedule, Stepper};
/// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
/// # use std::sync::Arc;
/// // The same seed gives the same interleaving, event for event.
/// let run = |seed| {
///     let stepper = Stepper::new(Schedule::Random(seed));
///     let k = Arc::new(Kernel::builder().stepped(&stepper).build());
///     let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
///     let (_, t) = k.task_spawn();
///     let bodies: Vec<CpuBody> = (0..2u32).map(|cpu| {
///         let k = k.clone();
///         Box::new(move || { let _ = k.map_update_elem(cpu, map, t, &[cpu as u8; 8], BPF_ANY); })
///             as CpuBody
///     }).collect();
///     stepper.run(bodies).events
/// };
/// assert_eq!(run(7), run(7));
/// ```
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Uniformly among the runnable CPUs, from a seeded generator.
    Random(u64),
    /// The CPUs to run at successive decision points; when the script runs out (or names a CPU
    /// that cannot run), the current CPU continues.
    Script(Vec<usize>),
    /// PCT (probabilistic concurrency testing, Burckhardt et al. 2010): each CPU gets a random
    /// priority and the highest-priority runnable CPU runs; at `depth - 1` random decision
    /// points among the first `steps`, the running CPU drops below every other. A bug that
    /// needs `depth` ordering constraints is found with probability at least
    /// 1 / (cpus · steps^(depth-1)) per seed.
    Pct {
        /// Seeds the priorities and the change points.
        seed: u64,
        /// The bug depth aimed at (1: no priority changes).
        depth: u32,
        /// The expected number of decision points in a run (where change points fall).
        steps: u64,
    },
    /// An explicit plan, action by action ("run body 0 until `selem_link`, then body 1 to its
    /// end, then end the RCU grace period"). An action that cannot go on (its body waits, or
    /// may not interrupt what runs on its CPU) lets the current body, else the first ready
    /// one, run meanwhile; once the plan is done, the current body continues.
    Plan(Vec<Action>),
}

/// Probe points where the seeded schedulers do not switch bodies: the slab's steps inside a
/// per-CPU cache refill or drain, dozens per refill, with nothing another CPU could interleave
/// with that the refill's `mem_cache_active` point does not already offer.
const QUIET: &[&str] = &["slab_alloc", "slab_free"];

/// Bodies with a condition variable of their own; more share one.
const WAKE_SLOTS: usize = 64;

/// The pseudo-body that grace-period steps are attributed to in [`RunReport::events`].
///
/// ```
/// # use bpfls_kernel::{Action, CpuBody, GRACE_PERIODS, GpDomain, Kernel, Schedule, Stepper};
/// # use std::sync::Arc;
/// let stepper = Stepper::new(Schedule::Plan(vec![
///     Action::ToEnd(0),
///     Action::Quiesce(GpDomain::Rcu),
/// ]));
/// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
/// let k0 = k.clone();
/// let body: CpuBody = Box::new(move || k0.domains().rcu.call(|| ()));
/// let report = stepper.run(vec![body]);
/// assert!(report.events.contains(&(GRACE_PERIODS, "callback_invoke")));
/// ```
pub const GRACE_PERIODS: usize = usize::MAX;

/// A grace-period domain, for [`Action`].
///
/// ```
/// use bpfls_kernel::{Action, GpDomain};
/// // "End every Tasks-Trace grace period the readers allow, then every RCU one."
/// let tail = [Action::Quiesce(GpDomain::TasksTrace), Action::Quiesce(GpDomain::Rcu)];
/// assert_ne!(tail[0], tail[1]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpDomain {
    /// Normal RCU.
    Rcu,
    /// RCU Tasks-Trace.
    TasksTrace,
}

/// One action of a [`Schedule::Plan`].
///
/// Race R1, scripted: CPU 0 stops once it has allocated its element (it saw no storage),
/// CPU 1 creates the task's storage, and CPU 0's publication then loses with `-EAGAIN`.
///
/// ```
/// # use bpfls_kernel::{Action, CpuBody, Kernel, MapType, ResultExt, Schedule, Stepper};
/// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
/// # use std::sync::{Arc, Mutex};
/// let stepper = Stepper::new(Schedule::Plan(vec![
///     Action::Until(0, "selem_alloc".into()),
///     Action::ToEnd(1),
///     Action::ToEnd(0),
/// ]));
/// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
/// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// let (_, t) = k.task_spawn();
/// let out = Arc::new(Mutex::new(vec![Ok(()); 2]));
/// let bodies: Vec<CpuBody> = (0..2u32).map(|cpu| {
///     let (k, out) = (k.clone(), out.clone());
///     Box::new(move || {
///         out.lock().unwrap()[cpu as usize] =
///             k.map_update_elem(cpu, map, t, &[1; 8], BPF_ANY).errno();
///     }) as CpuBody
/// }).collect();
/// stepper.run(bodies);
/// assert_eq!(*out.lock().unwrap(), [Err(Errno::EAGAIN), Ok(())]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Run this body until it passes the probe point named (it stops there), or ends.
    Until(usize, String),
    /// Run this body to its end.
    ToEnd(usize),
    /// One step of the domain's machinery (start or end a grace period, or invoke one
    /// callback), at the next point where no body is inside an interrupts-off section or a
    /// per-CPU cache's critical section; or when every body is done.
    Advance(GpDomain),
    /// Steps of the domain until it is quiet: every grace period the readers allow ends and
    /// every ready callback runs (same timing as `Advance`).
    Quiesce(GpDomain),
}

/// PCT's per-run state: priorities by CPU and the decision points that lower them.
#[derive(Debug, Default)]
struct Pct {
    prio: Vec<u64>,
    change_points: Vec<u64>,
    step: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuState {
    Ready,
    /// Waiting since this progress epoch.
    Waiting(u64),
    Done,
}

/// A storage lock (`("storage", id)`) or a bucket lock (`("bucket", map, index)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct LockId(&'static str, u64, u64);

impl LockId {
    fn of(e: &ProbeEvent<'_>) -> Option<LockId> {
        let field = |name| e.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        if e.site.starts_with("storage_lock") {
            Some(LockId("storage", field("storage")?, 0))
        } else if e.site.starts_with("bucket_lock") {
            Some(LockId("bucket", field("map")?, field("bucket")?))
        } else if e.site == "lock_wait" {
            match field("storage") {
                Some(id) if field("bucket") == Some(u64::MAX) => Some(LockId("storage", id, 0)),
                _ => Some(LockId("bucket", field("map")?, field("bucket")?)),
            }
        } else {
            None
        }
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockId("storage", id, _) => write!(f, "the storage lock of storage {id:#x}"),
            LockId(_, map, bucket) => write!(f, "bucket {bucket}'s lock of map {map}"),
        }
    }
}

/// Where a body runs and what it holds.
#[derive(Debug, Clone)]
struct Body {
    cpu: u32,
    ctx: Context,
    started: bool,
    /// Storage and bucket locks held or being taken (interrupts are off while > 0).
    irqoff: u32,
    /// A lock whose acquire probe passed: held once the body passes another probe point.
    taking: Option<LockId>,
    /// The lock it waits for (`lock_wait`), or `None` with `waiting_gp` for a grace period.
    waits_for: Option<LockId>,
    waiting_gp: bool,
    /// The probe point it last passed.
    at: &'static str,
}

struct Sched {
    schedule: Schedule,
    /// The next action of a [`Schedule::Plan`].
    plan_pos: usize,
    bodies: Vec<Body>,
    /// Per kernel CPU, the started bodies not yet done, innermost last.
    stacks: BTreeMap<u32, Vec<usize>>,
    holders: BTreeMap<LockId, usize>,
    wait_for: Vec<String>,
    rng: u64,
    script_pos: usize,
    pct: Pct,
    current: Option<usize>,
    cpus: Vec<CpuState>,
    threads: HashMap<ThreadId, usize>,
    events: Vec<(usize, &'static str)>,
    trace: Vec<Event>,
    /// Bumped whenever something happens that may unblock a waiter (a lock released, a reader
    /// leaving, a callback queued, a body ending, grace-period work).
    epoch: u64,
    /// The baton holder is stepping the grace periods (its probe hits only record).
    driving: bool,
    deadlock: bool,
}

/// The stepped executor. See the module documentation.
///
/// ```
/// # use bpfls_kernel::{CpuBody, Kernel, Schedule, Stepper};
/// # use std::sync::Arc;
/// // A CPU that waits for a grace period its own read-side section blocks: reported, not hung.
/// let stepper = Stepper::new(Schedule::Random(1));
/// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
/// let k0 = k.clone();
/// let body: CpuBody = Box::new(move || {
///     let _reader = k0.domains().rcu.read_lock(0);
///     k0.domains().rcu.synchronize();
/// });
/// let report = stepper.run(vec![body]);
/// assert!(report.deadlock);
/// assert_eq!(report.wait_for, ["body 0 (CPU 0, Task) waits for a grace period that cannot end"]);
/// ```
pub struct Stepper {
    sched: Mutex<Sched>,
    /// One condition variable per body (the last one shared by bodies beyond
    /// [`WAKE_SLOTS`]), so handing the baton on wakes only the body that gets it.
    cvs: Box<[Condvar]>,
    /// The kernel's domains, while the kernel lives (it detaches them when dropped: the
    /// domains' probe points hold this executor, and the cycle must not outlive the kernel).
    domains: Mutex<Option<bpfls_sync::Arc<Domains>>>,
    /// Simulated tracing programs attached to the probe points (the fentry analogue).
    tracer: Option<Arc<dyn ProbeHook>>,
}

impl fmt::Debug for Stepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stepper").finish_non_exhaustive()
    }
}

/// What a stepped run did.
///
/// ```
/// # use bpfls_kernel::{CpuBody, Kernel, Schedule, Stepper};
/// let stepper = Stepper::new(Schedule::Random(0));
/// let _k = Kernel::builder().stepped(&stepper).build();
/// let bodies: Vec<CpuBody> = vec![Box::new(|| {}), Box::new(|| panic!("oops"))];
/// let report = stepper.run(bodies);
/// assert_eq!(report.results, [Ok(()), Err("oops".to_string())]);
/// assert_eq!(report.events, [(0, "body_start"), (0, "body_end"), (1, "body_start"), (1, "body_end")]);
/// assert!(!report.deadlock && report.wait_for.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Per CPU: `Ok` or the panic message (a deadlock report is one).
    pub results: Vec<Result<(), String>>,
    /// The probe points passed, in order, with the body that passed each; `body_start` and
    /// `body_end` mark where each body began and finished.
    pub events: Vec<(usize, &'static str)>,
    /// The same probe points with everything they reported: the CPU and the fields.
    pub trace: Vec<Event>,
    /// Whether the run ended in a deadlock.
    pub deadlock: bool,
    /// For a deadlock: what each blocked body waits for, then the wait-for cycle
    /// (`cycle: body 1 -> body 1`). Empty otherwise.
    pub wait_for: Vec<String>,
}

/// A probe point passed in a stepped run, with what it reported (never an address).
///
/// ```
/// # use bpfls_kernel::{CpuBody, Event, Kernel, MapType, Schedule, Stepper};
/// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
/// # use std::sync::Arc;
/// let stepper = Stepper::new(Schedule::Random(0));
/// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
/// # let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// # let (_, t) = k.task_spawn();
/// let k0 = k.clone();
/// let body: CpuBody = Box::new(move || k0.map_update_elem(0, map, t, &[1; 8], BPF_ANY).unwrap());
/// let report = stepper.run(vec![body]);
/// let enter = report.trace.iter().find(|e| e.site == "sys_enter").unwrap();
/// assert_eq!(*enter, Event { body: 0, cpu: Some(0), site: "sys_enter", fields: vec![("cmd", 2)] });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The body that passed it ([`GRACE_PERIODS`] for grace-period work).
    pub body: usize,
    /// The CPU the code ran on, when the site knows it.
    pub cpu: Option<u32>,
    /// The probe point.
    pub site: &'static str,
    /// Its fields: object ids, sequence numbers, counts.
    pub fields: Vec<(&'static str, u64)>,
}

/// One logical CPU's work in [`Stepper::run`].
///
/// ```
/// use bpfls_kernel::CpuBody;
/// let body: CpuBody = Box::new(|| println!("runs on its logical CPU"));
/// # body();
/// ```
pub type CpuBody = Box<dyn FnOnce() + Send>;

impl Stepper {
    /// An executor with this schedule.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, Schedule, Stepper};
    /// let stepper = Stepper::new(Schedule::Pct { seed: 3, depth: 2, steps: 100 });
    /// let k = Kernel::builder().stepped(&stepper).build();
    /// # let _ = k;
    /// ```
    pub fn new(schedule: Schedule) -> Arc<Self> {
        Self::build(schedule, None)
    }

    /// An executor that also runs `tracer` at every probe point, on the CPU that passes it,
    /// before scheduling: how tracing programs attach in stepped mode.
    ///
    /// ```
    /// # use bpfls_kernel::{CpuBody, Kernel, MapType, Schedule, Stepper};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// #[derive(Default)]
    /// struct CountUpdates(AtomicU64);
    /// impl ProbeHook for CountUpdates {
    ///     fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
    ///         if e.site == "local_storage_update" { self.0.fetch_add(1, Ordering::Relaxed); }
    ///         Verdict::Continue
    ///     }
    /// }
    /// let tracer = Arc::new(CountUpdates::default());
    /// let stepper = Stepper::with_tracer(Schedule::Random(0), tracer.clone());
    /// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
    /// # let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// # let (_, t) = k.task_spawn();
    /// let k0 = k.clone();
    /// let body: CpuBody = Box::new(move || k0.map_update_elem(0, map, t, &[1; 8], BPF_ANY).unwrap());
    /// stepper.run(vec![body]);
    /// assert_eq!(tracer.0.load(Ordering::Relaxed), 1);
    /// ```
    pub fn with_tracer(schedule: Schedule, tracer: Arc<dyn ProbeHook>) -> Arc<Self> {
        Self::build(schedule, Some(tracer))
    }

    fn build(schedule: Schedule, tracer: Option<Arc<dyn ProbeHook>>) -> Arc<Self> {
        let rng = match schedule {
            Schedule::Random(seed) | Schedule::Pct { seed, .. } => {
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
            }
            Schedule::Script(_) | Schedule::Plan(_) => 1,
        };
        Arc::new(Stepper {
            sched: Mutex::new(Sched {
                schedule,
                plan_pos: 0,
                bodies: Vec::new(),
                stacks: BTreeMap::new(),
                holders: BTreeMap::new(),
                wait_for: Vec::new(),
                rng,
                script_pos: 0,
                pct: Pct::default(),
                current: None,
                cpus: Vec::new(),
                threads: HashMap::new(),
                events: Vec::new(),
                trace: Vec::new(),
                epoch: 0,
                driving: false,
                deadlock: false,
            }),
            cvs: (0..=WAKE_SLOTS).map(|_| Condvar::new()).collect(),
            domains: Mutex::new(None),
            tracer,
        })
    }

    /// The domains whose grace periods the executor steps when every CPU waits.
    pub(crate) fn attach(&self, domains: bpfls_sync::Arc<Domains>) {
        *self.domains.lock().unwrap_or_else(|e| e.into_inner()) = Some(domains);
    }

    /// Forgets the domains (the kernel is being dropped).
    pub(crate) fn detach(&self) {
        *self.domains.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn domains(&self) -> Option<bpfls_sync::Arc<Domains>> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs each closure as a logical CPU (CPU `i` runs `cpus[i]`, in task context), one at a
    /// time, CPU 0 first. Runs do not overlap: call it from one thread at a time.
    ///
    /// ```
    /// # use bpfls_kernel::{CpuBody, Kernel, MapType, Schedule, Stepper};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// # use std::sync::Arc;
    /// let stepper = Stepper::new(Schedule::Random(42));
    /// let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, t) = k.task_spawn();
    /// let (k0, k1) = (k.clone(), k.clone());
    /// let report = stepper.run(vec![
    ///     Box::new(move || { let _ = k0.map_update_elem(0, map, t, &[1; 8], BPF_ANY); }),
    ///     Box::new(move || { let _ = k1.map_delete_elem(1, map, t); }),
    /// ]);
    /// assert!(report.results.iter().all(Result::is_ok) && !report.deadlock);
    /// assert_eq!(k.shutdown().unwrap(), 0);
    /// ```
    pub fn run(self: &Arc<Self>, cpus: Vec<CpuBody>) -> RunReport {
        let placed =
            cpus.into_iter().enumerate().map(|(i, b)| (i as u32, Context::Task, b)).collect();
        self.run_placed(placed)
    }

    /// Runs each body on a kernel CPU in a context (module docs, "Contexts"), one at a time,
    /// body 0 first; the report's per-body entries follow the order of `bodies`. The body's
    /// code must pass its CPU to the kernel calls it makes.
    ///
    /// ```
    /// # use bpfls_kernel::{Context, CpuBody, Kernel, Schedule, Stepper};
    /// # use std::sync::Arc;
    /// // A task on CPU 0 and a softirq asked to interrupt it at its first probe point: the
    /// // softirq runs to its end before the task resumes.
    /// let stepper = Stepper::new(Schedule::Script(vec![1]));
    /// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
    /// let (k0, k1) = (k.clone(), k.clone());
    /// let task: CpuBody = Box::new(move || { let _r = k0.domains().rcu.read_lock(0); });
    /// let irq: CpuBody = Box::new(move || { let _r = k1.domains().rcu.read_lock(0); });
    /// let report = stepper.run_placed(vec![(0, Context::Task, task), (0, Context::Softirq, irq)]);
    /// let sites: Vec<_> = report.events.iter().map(|e| (e.0, e.1)).collect();
    /// assert_eq!(&sites[..4], [(0, "body_start"), (0, "read_lock"), (1, "body_start"), (1, "body_end")]);
    /// ```
    pub fn run_placed(self: &Arc<Self>, bodies: Vec<(u32, Context, CpuBody)>) -> RunReport {
        let n = bodies.len();
        let cpus: Vec<CpuBody> = {
            let mut s = self.lock();
            s.bodies = bodies
                .iter()
                .map(|(cpu, ctx, _)| Body {
                    cpu: *cpu,
                    ctx: *ctx,
                    started: false,
                    irqoff: 0,
                    taking: None,
                    waits_for: None,
                    waiting_gp: false,
                    at: "body_start",
                })
                .collect();
            s.stacks.clear();
            s.holders.clear();
            s.wait_for.clear();
            bodies.into_iter().map(|(_, _, b)| b).collect()
        };
        {
            let mut s = self.lock();
            s.cpus = vec![CpuState::Ready; n];
            if let Schedule::Pct { depth, steps, .. } = s.schedule {
                // Initial priorities: a random permutation of depth .. depth + n (all above the
                // change points' 1 .. depth - 1).
                let mut prio: Vec<u64> = (0..n as u64).map(|i| u64::from(depth) + i).collect();
                for i in (1..n).rev() {
                    let j = Self::next_random(&mut s) as usize % (i + 1);
                    prio.swap(i, j);
                }
                let change_points =
                    (1..depth).map(|_| 1 + Self::next_random(&mut s) % steps.max(1)).collect();
                s.pct = Pct { prio, change_points, step: 0 };
            }
            s.script_pos = 0;
            s.plan_pos = 0;
            // A plan starts with the first body it names (body 0 running up to its first
            // probe point first could already change what the plan's first step sees).
            let first = match &s.schedule {
                Schedule::Plan(plan) => plan
                    .iter()
                    .find_map(|a| match a {
                        Action::Until(b, _) | Action::ToEnd(b) => Some(*b),
                        _ => None,
                    })
                    .filter(|&b| b < n)
                    .unwrap_or(0),
                _ => 0,
            };
            s.current = Some(first);
            s.events.clear();
            s.trace.clear();
            if n > 0 {
                Self::start(&mut s, first);
            }
            s.deadlock = false;
            s.driving = false;
        }
        let handles: Vec<_> = cpus
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let me = self.clone();
                thread::spawn_named(format!("bpfls-cpu{i}"), move || {
                    me.enter(i);
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
                    me.leave(i);
                    r.map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".to_string())
                    })
                })
            })
            .collect();
        let results = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("the CPU thread panicked".into())))
            .collect();
        let mut s = self.lock();
        s.threads.clear();
        s.cpus.clear();
        s.current = None;
        RunReport {
            results,
            events: std::mem::take(&mut s.events),
            trace: std::mem::take(&mut s.trace),
            deadlock: s.deadlock,
            wait_for: std::mem::take(&mut s.wait_for),
        }
    }

    /// Records a probe point `body` passed, in both forms.
    fn record(
        s: &mut Sched,
        body: usize,
        cpu: Option<u32>,
        site: &'static str,
        fields: &[(&'static str, u64)],
    ) {
        s.events.push((body, site));
        s.trace.push(Event { body, cpu, site, fields: fields.to_vec() });
    }

    /// Body `b` starts: it becomes the innermost code on its CPU.
    fn start(s: &mut Sched, b: usize) {
        Self::record(s, b, Some(s.bodies[b].cpu), "body_start", &[]);
        s.bodies[b].started = true;
        let cpu = s.bodies[b].cpu;
        s.stacks.entry(cpu).or_default().push(b);
    }

    /// Whether body `b` may run now: it is the innermost on its CPU, or it has not started
    /// and may interrupt (or preempt) what runs there.
    fn eligible(s: &Sched, b: usize) -> bool {
        let body = &s.bodies[b];
        let top = s.stacks.get(&body.cpu).and_then(|st| st.last().copied());
        match top {
            None => true,
            Some(t) if body.started => t == b,
            Some(t) => {
                let (under, ctx) = (&s.bodies[t], body.ctx);
                if ctx == Context::Nmi {
                    under.ctx != Context::Nmi
                } else {
                    under.irqoff == 0
                        && (ctx > under.ctx || (ctx == Context::Task && under.ctx == Context::Task))
                }
            }
        }
    }

    /// Lock bookkeeping for a probe point `b` passed.
    fn track_locks(s: &mut Sched, b: usize, e: &ProbeEvent<'_>) {
        if e.site != "lock_wait"
            && let Some(l) = s.bodies[b].taking.take()
        {
            s.holders.insert(l, b);
        }
        let lock = LockId::of(e);
        let body = &mut s.bodies[b];
        body.at = e.site;
        body.waits_for = None;
        body.waiting_gp = false;
        match e.site {
            "storage_lock_acquire" | "bucket_lock_acquire" => {
                body.irqoff += 1;
                body.taking = lock;
            }
            "storage_lock_release" | "bucket_lock_release" => {
                body.irqoff = body.irqoff.saturating_sub(1);
                if let Some(l) = lock
                    && s.holders.get(&l) == Some(&b)
                {
                    s.holders.remove(&l);
                }
            }
            "lock_wait" => body.waits_for = lock,
            "gp_wait" => body.waiting_gp = true,
            _ => {}
        }
    }

    fn describe(s: &Sched, b: usize) -> String {
        let body = &s.bodies[b];
        format!("body {b} (CPU {}, {:?})", body.cpu, body.ctx)
    }

    /// What each blocked body waits for, and the wait-for cycle through `from`.
    fn wait_for_report(s: &Sched, from: usize) -> Vec<String> {
        // The body `b` waits for: a lock holder, or the body that interrupted it.
        let next = |b: usize| -> Option<usize> {
            if let Some(l) = s.bodies[b].waits_for {
                return s.holders.get(&l).copied();
            }
            let st = s.stacks.get(&s.bodies[b].cpu)?;
            let pos = st.iter().position(|&x| x == b)?;
            st.get(pos + 1).copied()
        };
        let mut out = Vec::new();
        for b in 0..s.bodies.len() {
            if s.cpus[b] == CpuState::Done || !s.bodies[b].started {
                continue;
            }
            let body = &s.bodies[b];
            let who = Self::describe(s, b);
            let line = match (body.waits_for, next(b)) {
                (Some(l), Some(h)) if h == b => format!("{who} waits for {l}, which it holds"),
                (Some(l), Some(h)) => {
                    format!("{who} waits for {l}, held by {}", Self::describe(s, h))
                }
                (Some(l), None) => format!("{who} waits for {l}, held by no body"),
                (None, Some(t)) => {
                    format!("{who} cannot resume until {} finishes", Self::describe(s, t))
                }
                (None, None) if body.waiting_gp => {
                    format!("{who} waits for a grace period that cannot end")
                }
                (None, None) if body.at == "owner_wait" => {
                    format!("{who} waits for the programs that use an owner to end")
                }
                (None, None) => format!("{who} is blocked at {}", body.at),
            };
            out.push(line);
        }
        let mut path = vec![from];
        while let Some(n) = next(*path.last().expect("non-empty")) {
            if let Some(i) = path.iter().position(|&x| x == n) {
                let cycle: Vec<String> =
                    path[i..].iter().chain([&n]).map(|b| format!("body {b}")).collect();
                out.push(format!("cycle: {}", cycle.join(" -> ")));
                break;
            }
            path.push(n);
        }
        out
    }

    fn enter(&self, cpu: usize) {
        let mut s = self.lock();
        s.threads.insert(thread::current().id(), cpu);
        drop(self.wait_baton(s, cpu));
    }

    fn leave(&self, cpu: usize) {
        let mut s = self.lock();
        s.cpus[cpu] = CpuState::Done;
        let on = s.bodies[cpu].cpu;
        Self::record(&mut s, cpu, Some(on), "body_end", &[]);
        let on = s.bodies[cpu].cpu;
        if let Some(st) = s.stacks.get_mut(&on) {
            st.retain(|&b| b != cpu);
        }
        s.epoch += 1;
        if s.current == Some(cpu) {
            // Still registered: grace-period work the schedule runs here is recorded.
            s = self.pick_next(s, cpu);
        }
        s.threads.remove(&thread::current().id());
        self.wake(&s);
    }

    /// The condition variable body `b` sleeps on.
    fn cv(&self, b: usize) -> &Condvar {
        &self.cvs[b.min(WAKE_SLOTS)]
    }

    /// Wakes the body that holds the baton (every body after a deadlock, so each can report).
    fn wake(&self, s: &Sched) {
        self.wake_to(s.current, s.deadlock);
    }

    fn wake_to(&self, current: Option<usize>, deadlock: bool) {
        if deadlock {
            self.cvs.iter().for_each(Condvar::notify_all);
        } else if let Some(c) = current {
            if c >= WAKE_SLOTS {
                self.cv(c).notify_all();
            } else {
                self.cv(c).notify_one();
            }
        }
    }

    fn next_random(s: &mut Sched) -> u64 {
        // xorshift64: small, deterministic, good enough to spread choices.
        let mut x = s.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.rng = x;
        x
    }

    /// Chooses who runs next (maybe the current CPU again); `None` when nobody is ready.
    fn choose(s: &mut Sched) -> Option<usize> {
        let ready: Vec<usize> = (0..s.cpus.len())
            .filter(|&i| s.cpus[i] == CpuState::Ready && Self::eligible(s, i))
            .collect();
        if ready.is_empty() {
            return None;
        }
        let pick = match &s.schedule {
            Schedule::Random(_) => ready[Self::next_random(s) as usize % ready.len()],
            Schedule::Pct { depth, .. } => {
                s.pct.step += 1;
                let step = s.pct.step;
                if let (Some(cur), Some(i)) =
                    (s.current, s.pct.change_points.iter().position(|&c| c == step))
                {
                    // The i-th change point: below every initial priority and earlier points.
                    s.pct.prio[cur] = u64::from(*depth) - 1 - i as u64;
                }
                let prio = &s.pct.prio;
                *ready.iter().max_by_key(|&&c| prio[c]).expect("ready is not empty")
            }
            Schedule::Script(script) => {
                let want = script.get(s.script_pos).copied();
                s.script_pos += 1;
                match want {
                    Some(c) if ready.contains(&c) => c,
                    _ => s.current.filter(|c| ready.contains(c)).unwrap_or(ready[0]),
                }
            }
            Schedule::Plan(_) => match Self::plan_action(s) {
                Some(Action::Until(b, _) | Action::ToEnd(b)) if ready.contains(&b) => b,
                _ => s.current.filter(|c| ready.contains(c)).unwrap_or(ready[0]),
            },
        };
        if !s.bodies[pick].started {
            Self::start(s, pick);
        }
        Some(pick)
    }

    /// The plan's current action, past the ones whose body is done.
    fn plan_action(s: &mut Sched) -> Option<Action> {
        let Schedule::Plan(plan) = &s.schedule else { return None };
        while let Some(a) = plan.get(s.plan_pos) {
            match a {
                Action::Until(b, _) | Action::ToEnd(b)
                    if s.cpus.get(*b).is_none_or(|c| *c == CpuState::Done) =>
                {
                    s.plan_pos += 1;
                }
                a => return Some(a.clone()),
            }
        }
        None
    }

    /// Whether grace-period work may run now: no body is inside an interrupts-off section or
    /// a per-CPU cache's critical section (the kernel runs RCU callbacks in softirq context on
    /// the CPU that queued them, which neither admits).
    fn gp_safe(s: &Sched) -> bool {
        (0..s.bodies.len()).all(|b| {
            let body = &s.bodies[b];
            s.cpus[b] == CpuState::Done
                || !body.started
                || (body.irqoff == 0 && body.at != "mem_cache_active")
        })
    }

    /// Runs the grace-period work the schedule asks for at this decision point, if it is safe
    /// (`Plan`: its `Advance` / `Quiesce` actions; `Random`: one step of a random domain with
    /// probability 1 / (ready bodies + 1)).
    fn scheduled_gp<'a>(&'a self, mut s: MutexGuard<'a, Sched>) -> MutexGuard<'a, Sched> {
        loop {
            if !Self::gp_safe(&s) {
                return s;
            }
            // A plan whose body waits (for a grace period, say) gets the grace periods moved
            // before any body it did not name runs in its place.
            if let Some(Action::Until(b, _) | Action::ToEnd(b)) = Self::plan_action(&mut s)
                && matches!(s.cpus.get(b), Some(CpuState::Waiting(_)))
            {
                let progressed;
                (s, progressed) = self.drive(s, Self::step_domains);
                if progressed {
                    Self::wake_stale(&mut s);
                    continue;
                }
                return s;
            }
            let work = match s.schedule {
                Schedule::Plan(_) => match Self::plan_action(&mut s) {
                    Some(Action::Advance(d)) => Some((d, false)),
                    Some(Action::Quiesce(d)) => Some((d, true)),
                    _ => None,
                },
                Schedule::Random(_) => {
                    let ready = (0..s.cpus.len())
                        .filter(|&i| s.cpus[i] == CpuState::Ready && Self::eligible(&s, i))
                        .count() as u64;
                    if ready == 0 {
                        return s;
                    }
                    let draw = Self::next_random(&mut s);
                    if draw % (ready + 1) != ready {
                        return s;
                    }
                    let d =
                        if draw & (1 << 40) == 0 { GpDomain::Rcu } else { GpDomain::TasksTrace };
                    Some((d, false))
                }
                _ => None,
            };
            let Some((domain, quiesce)) = work else { return s };
            let random = matches!(s.schedule, Schedule::Random(_));
            if !random {
                s.plan_pos += 1;
            }
            s = self
                .drive(s, |d| {
                    let moved = |x: Step| !matches!(x, Step::Idle | Step::Blocked { .. });
                    match (domain, quiesce) {
                        (GpDomain::Rcu, false) => moved(d.rcu.advance()),
                        (GpDomain::Rcu, true) => moved(d.rcu.advance_until_quiet()),
                        (GpDomain::TasksTrace, false) => moved(d.tasks_trace.advance()),
                        (GpDomain::TasksTrace, true) => moved(d.tasks_trace.advance_until_quiet()),
                    }
                })
                .0;
            if random {
                return s;
            }
        }
    }

    /// Runs `step` on the domains with the scheduler lock released (callbacks pass probe
    /// points, which then only record, as [`GRACE_PERIODS`]); whether it made progress.
    fn drive<'a>(
        &'a self,
        mut s: MutexGuard<'a, Sched>,
        step: impl FnOnce(&Domains) -> bool,
    ) -> (MutexGuard<'a, Sched>, bool) {
        s.driving = true;
        drop(s);
        let progressed = self.domains().is_some_and(|d| step(&d));
        let mut s = self.lock();
        s.driving = false;
        s.epoch += 1;
        (s, progressed)
    }

    /// Wakes every waiter that started waiting before the latest progress; whether any woke.
    fn wake_stale(s: &mut Sched) -> bool {
        let epoch = s.epoch;
        let mut woke = false;
        for c in s.cpus.iter_mut() {
            if matches!(*c, CpuState::Waiting(since) if since < epoch) {
                *c = CpuState::Ready;
                woke = true;
            }
        }
        woke
    }

    /// Hands the baton on after `me` stopped being runnable (done or waiting). When nobody is
    /// ready, first wakes waiters that may retry, then steps the grace periods; flags a
    /// deadlock when neither helps.
    fn pick_next<'a>(&'a self, mut s: MutexGuard<'a, Sched>, me: usize) -> MutexGuard<'a, Sched> {
        loop {
            s = self.scheduled_gp(s);
            if let Some(next) = Self::choose(&mut s) {
                s.current = Some(next);
                return s;
            }
            if s.cpus.iter().all(|c| *c == CpuState::Done) {
                s.current = None;
                return s;
            }
            if Self::wake_stale(&mut s) {
                continue;
            }
            // Every CPU left waits on something nobody has changed: step the grace periods.
            let progressed;
            (s, progressed) = self.drive(s, Self::step_domains);
            if !progressed {
                s.deadlock = true;
                s.wait_for = Self::wait_for_report(&s, me);
                s.current = Some(me);
                return s;
            }
        }
    }

    /// One step of each grace-period domain (Tasks-Trace first); whether either moved.
    fn step_domains(d: &Domains) -> bool {
        let moved = |x: Step| !matches!(x, Step::Idle | Step::Blocked { .. });
        // Both, every time: RCU must not wait for Tasks-Trace to run dry.
        let tt = moved(d.tasks_trace.advance());
        let rcu = moved(d.rcu.advance());
        tt || rcu
    }

    fn wait_baton<'a>(&'a self, mut s: MutexGuard<'a, Sched>, me: usize) -> MutexGuard<'a, Sched> {
        if s.current != Some(me) {
            // Wake the new holder with the lock released, so it does not wake only to block
            // on the lock we still hold; it cannot miss the wakeup, because it checks
            // `current` under the lock before it sleeps.
            let (current, deadlock) = (s.current, s.deadlock);
            drop(s);
            self.wake_to(current, deadlock);
            s = self.lock();
        }
        while s.current != Some(me) && !s.deadlock {
            s = self.cv(me).wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s
    }
}

impl ProbeHook for Stepper {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        // The tracer runs first, unlocked: it may call back into the kernel and pass probes.
        let verdict = self.tracer.as_ref().map_or(Verdict::Continue, |t| t.hit(e));
        let mut s = self.lock();
        let Some(&me) = s.threads.get(&thread::current().id()) else { return verdict };
        if s.driving {
            // A callback or grace-period step run by the executor on this thread's behalf.
            Self::record(&mut s, GRACE_PERIODS, e.cpu, e.site, e.fields);
            return verdict;
        }
        Self::track_locks(&mut s, me, e);
        Self::record(&mut s, me, e.cpu, e.site, e.fields);
        if matches!(e.site, "storage_lock_release" | "bucket_lock_release" | "read_unlock" | "call")
        {
            // What a waiter may be waiting for: a lock, a reader leaving, a callback queued
            // (grace periods and callbacks move in `drive`, which counts too).
            s.epoch += 1;
        }
        if s.deadlock {
            return verdict;
        }
        // Waiters whose condition may have changed become candidates again, so a finished
        // `synchronize` or a released lock lets its waiter go on while others still run.
        Self::wake_stale(&mut s);
        if let Some(Action::Until(b, site)) = Self::plan_action(&mut s)
            && b == me
            && site == e.site
        {
            s.plan_pos += 1;
        }
        if QUIET.contains(&e.site)
            && matches!(s.schedule, Schedule::Random(_) | Schedule::Pct { .. })
        {
            // The slab's own steps inside a cache refill: recorded, but not a place where the
            // seeded schedulers switch (they would spend most of their choices there).
            return verdict;
        }
        s = self.scheduled_gp(s);
        if let Some(next) = Self::choose(&mut s) {
            s.current = Some(next);
        }
        drop(self.wait_baton(s, me));
        verdict
    }

    fn wait(&self, e: &ProbeEvent<'_>) -> WaitVerdict {
        let mut s = self.lock();
        let Some(&me) = s.threads.get(&thread::current().id()) else {
            // Not one of our CPUs (setup or teardown code): step the grace periods directly.
            drop(s);
            let progressed = self.domains().is_some_and(|d| Self::step_domains(&d));
            return if progressed { WaitVerdict::Retry } else { WaitVerdict::Deadlock };
        };
        if s.deadlock {
            return WaitVerdict::Deadlock;
        }
        Self::track_locks(&mut s, me, e);
        Self::record(&mut s, me, e.cpu, e.site, e.fields);
        s.cpus[me] = CpuState::Waiting(s.epoch);
        let s = self.pick_next(s, me);
        let mut s = self.wait_baton(s, me);
        if s.deadlock {
            self.wake(&s);
            return WaitVerdict::Deadlock;
        }
        s.cpus[me] = CpuState::Ready;
        WaitVerdict::Retry
    }
}
