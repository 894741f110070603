//! Stepped (deterministic) execution: logical CPUs run one at a time and switch only at probe
//! points, as a seeded or scripted scheduler decides. A CPU that cannot make progress (a held
//! lock, an unfinished grace period) waits through the scheduler; when every CPU waits, the
//! executor steps the grace-period machinery, and when that cannot move either, the run reports
//! a deadlock instead of hanging.
//!
//! Why threads and a baton rather than coroutines: the storage code is ordinary blocking Rust,
//! and the probe points are the only places it yields, so each logical CPU is an OS thread that
//! runs only while it holds the baton. The executor is a [`ProbeHook`] on the kernel's probe
//! points: build the kernel with [`KernelBuilder::stepped`](crate::KernelBuilder::stepped), which
//! attaches it. The same schedule and the same workload always give the same events.
//!
//! A waiting CPU is woken when anything happened since it started waiting (another CPU passed a
//! probe point or finished, or a grace-period step moved), so a lock released by a finished
//! holder is never mistaken for a deadlock.

use bpfls_rcu::{Domains, Step};
use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict, WaitVerdict};
use bpfls_sync::thread::{self, ThreadId};
use bpfls_sync::untracked::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::collections::HashMap;
use std::fmt;

/// How the next CPU is chosen at each probe point.
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

struct Sched {
    schedule: Schedule,
    rng: u64,
    script_pos: usize,
    pct: Pct,
    current: Option<usize>,
    cpus: Vec<CpuState>,
    threads: HashMap<ThreadId, usize>,
    events: Vec<(usize, &'static str)>,
    /// Bumped whenever something happens that may unblock a waiter.
    epoch: u64,
    /// The baton holder is stepping the grace periods (its probe hits only record).
    driving: bool,
    deadlock: bool,
}

/// The stepped executor. See the module documentation.
pub struct Stepper {
    sched: Mutex<Sched>,
    cv: Condvar,
    domains: OnceLock<bpfls_sync::Arc<Domains>>,
    /// Simulated tracing programs attached to the probe points (the fentry analogue).
    tracer: Option<Arc<dyn ProbeHook>>,
}

impl fmt::Debug for Stepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stepper").finish_non_exhaustive()
    }
}

/// What a stepped run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Per CPU: `Ok` or the panic message (a deadlock report is one).
    pub results: Vec<Result<(), String>>,
    /// The probe points passed, in order, with the CPU that passed each.
    pub events: Vec<(usize, &'static str)>,
    /// Whether the run ended in a deadlock.
    pub deadlock: bool,
}

/// One logical CPU's work in [`Stepper::run`].
pub type CpuBody = Box<dyn FnOnce() + Send>;

impl Stepper {
    /// An executor with this schedule.
    pub fn new(schedule: Schedule) -> Arc<Self> {
        Self::build(schedule, None)
    }

    /// An executor that also runs `tracer` at every probe point, on the CPU that passes it,
    /// before scheduling: how tracing programs attach in stepped mode.
    pub fn with_tracer(schedule: Schedule, tracer: Arc<dyn ProbeHook>) -> Arc<Self> {
        Self::build(schedule, Some(tracer))
    }

    fn build(schedule: Schedule, tracer: Option<Arc<dyn ProbeHook>>) -> Arc<Self> {
        let rng = match schedule {
            Schedule::Random(seed) | Schedule::Pct { seed, .. } => {
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
            }
            Schedule::Script(_) => 1,
        };
        Arc::new(Stepper {
            sched: Mutex::new(Sched {
                schedule,
                rng,
                script_pos: 0,
                pct: Pct::default(),
                current: None,
                cpus: Vec::new(),
                threads: HashMap::new(),
                events: Vec::new(),
                epoch: 0,
                driving: false,
                deadlock: false,
            }),
            cv: Condvar::new(),
            domains: OnceLock::new(),
            tracer,
        })
    }

    /// The domains whose grace periods the executor steps when every CPU waits.
    pub(crate) fn attach(&self, domains: bpfls_sync::Arc<Domains>) {
        let _ = self.domains.set(domains);
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs each closure as a logical CPU (CPU `i` runs `cpus[i]`), one at a time, CPU 0
    /// first. Runs do not overlap: call it from one thread at a time.
    pub fn run(self: &Arc<Self>, cpus: Vec<CpuBody>) -> RunReport {
        let n = cpus.len();
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
            s.current = Some(0);
            s.events.clear();
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
        RunReport { results, events: std::mem::take(&mut s.events), deadlock: s.deadlock }
    }

    fn enter(&self, cpu: usize) {
        let mut s = self.lock();
        s.threads.insert(thread::current().id(), cpu);
        drop(self.wait_baton(s, cpu));
    }

    fn leave(&self, cpu: usize) {
        let mut s = self.lock();
        s.cpus[cpu] = CpuState::Done;
        s.epoch += 1;
        s.threads.remove(&thread::current().id());
        if s.current == Some(cpu) {
            drop(self.pick_next(s, cpu));
        }
        self.cv.notify_all();
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
        let ready: Vec<usize> =
            (0..s.cpus.len()).filter(|&i| s.cpus[i] == CpuState::Ready).collect();
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
        };
        Some(pick)
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
            // The lock is released meanwhile, because a callback passes probe points.
            s.driving = true;
            drop(s);
            let progressed = self.step_domains();
            s = self.lock();
            s.driving = false;
            if !progressed {
                s.deadlock = true;
                s.current = Some(me);
                return s;
            }
            s.epoch += 1;
        }
    }

    /// One step of each grace-period domain (Tasks-Trace first); whether either moved.
    fn step_domains(&self) -> bool {
        self.domains.get().is_some_and(|d| {
            let moved = |x: Step| !matches!(x, Step::Idle | Step::Blocked { .. });
            let tt = d.tasks_trace.advance();
            moved(tt) || moved(d.rcu.advance())
        })
    }

    fn wait_baton<'a>(&'a self, mut s: MutexGuard<'a, Sched>, me: usize) -> MutexGuard<'a, Sched> {
        self.cv.notify_all();
        while s.current != Some(me) && !s.deadlock {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
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
        s.events.push((me, e.site));
        s.epoch += 1;
        if s.deadlock || s.driving {
            return verdict;
        }
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
            let progressed = self.step_domains();
            return if progressed { WaitVerdict::Retry } else { WaitVerdict::Deadlock };
        };
        if s.deadlock {
            return WaitVerdict::Deadlock;
        }
        s.events.push((me, e.site));
        s.cpus[me] = CpuState::Waiting(s.epoch);
        let s = self.pick_next(s, me);
        let mut s = self.wait_baton(s, me);
        if s.deadlock {
            self.cv.notify_all();
            return WaitVerdict::Deadlock;
        }
        s.cpus[me] = CpuState::Ready;
        WaitVerdict::Retry
    }
}
