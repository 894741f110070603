//! A grace-period engine shaped like the kernel's RCU API.
//!
//! BPF local storage frees its objects through two RCU flavours: normal RCU, whose readers
//! (non-sleepable programs, syscalls) run with preemption disabled and are tracked **per CPU**,
//! and RCU Tasks-Trace, whose readers (sleepable programs) are tracked **per task** and may
//! block inside their section. This crate models both as independent [domains](Domain), each a
//! value owned by its caller (never a `static`: loom cannot model statics, and two simulated
//! kernels must coexist in one test process):
//!
//! | kernel | here |
//! |---|---|
//! | `rcu_read_lock()` / `rcu_read_unlock()` | [`Rcu::read_lock`] → [`RcuReadGuard`] (drop, or [`RcuReadGuard::unlock_on`]) |
//! | `rcu_read_lock_trace()` / `_unlock_trace()` | [`TasksTrace::read_lock`] → [`TraceReadGuard`] |
//! | `call_rcu()` / `call_rcu_tasks_trace()` | [`Domain::call`], [`Domain::call_tagged`] |
//! | `synchronize_rcu()` / `synchronize_rcu_tasks_trace()` | [`Domain::synchronize`] |
//! | `rcu_barrier()` / `rcu_barrier_tasks_trace()` | [`Domain::barrier`] (each waits for its own domain only) |
//! | `get_state_synchronize_rcu()` / `poll_state_synchronize_rcu()` | [`Domain::get_state`] / [`Domain::poll_state`] |
//! | `rcu_trace_implies_rcu_gp()` | [`Domains::trace_implies_rcu`] |
//!
//! Reclamation choices are data ([`ReclaimPolicy`]): `Now` (`reuse_now`), after an RCU grace
//! period, after a Tasks-Trace grace period, or the chained Tasks-Trace-then-RCU form the kernel
//! uses when `rcu_trace_implies_rcu_gp()` is false. [`Domains::defer`] carries a policy out.
//!
//! Three [backends](Backend): *threaded* (real OS threads, a callback worker, fences at every
//! `smp_mb()`), *stepped* (deterministic: a grace period advances only in [`Domain::advance`])
//! and *busted* (grace periods that do not wait, rcutorture's `rcu_busted`, to prove that the
//! checkers catch a broken engine).
//!
//! The engine knows nothing about BPF, maps or owners. The design, with its memory-ordering
//! argument, is in [`implementation`].
//!
//! ```
//! use bpfls_rcu::{Config, Rcu};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! let rcu = Rcu::new(2, Config::threaded());
//! let freed = Arc::new(AtomicBool::new(false));
//! {
//!     let _guard = rcu.read_lock(0);
//!     let f = freed.clone();
//!     rcu.call(move || f.store(true, Ordering::SeqCst));
//!     // The callback cannot run while a reader that predates it is inside.
//!     assert!(!freed.load(Ordering::SeqCst));
//! }
//! rcu.barrier();
//! assert!(freed.load(Ordering::SeqCst));
//! ```

pub mod implementation;

mod domain;
mod read;
mod stats;

pub use read::{RcuReadGuard, TaskReader, TraceReadGuard};
pub use stats::Stats;

use bpfls_sync::Arc;
use bpfls_sync::probe::Probes;
use bpfls_sync::thread::{self, JoinHandle};
use domain::{Inner, Kind, rcu_event};
use std::fmt;

/// Which engine drives a domain's grace periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Real concurrency: `synchronize` runs its own grace period, a worker thread (if
    /// configured) runs callback grace periods and invokes callbacks off the caller's path.
    Threaded,
    /// Deterministic: grace periods start, end and callbacks run only in
    /// [`Domain::advance`], one step at a time.
    Stepped,
    /// Threaded, but grace periods never wait for readers. For checker mutation tests only.
    Busted,
}

impl Backend {
    /// Stable name, as used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Threaded => "threaded",
            Backend::Stepped => "stepped",
            Backend::Busted => "busted",
        }
    }

    /// Parses a name produced by [`Backend::name`].
    pub fn from_name(name: &str) -> Result<Self, UnknownBackend> {
        match name {
            "threaded" => Ok(Backend::Threaded),
            "stepped" => Ok(Backend::Stepped),
            "busted" => Ok(Backend::Busted),
            _ => Err(UnknownBackend(name.to_owned())),
        }
    }
}

/// A backend name that [`Backend::from_name`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBackend(pub String);

impl fmt::Display for UnknownBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown RCU backend `{}` (expected threaded, stepped or busted)", self.0)
    }
}

impl std::error::Error for UnknownBackend {}

/// How a domain is built.
#[derive(Debug, Clone)]
pub struct Config {
    /// The engine.
    pub backend: Backend,
    /// Threaded and busted backends: run callback grace periods and callbacks on a worker
    /// thread. Without one, callbacks run inside [`Domain::barrier`] (and when the domain is
    /// dropped); loom models use that form. Ignored by the stepped backend.
    pub callback_worker: bool,
    /// A reader that holds one grace period for this many wait polls (threaded) or blocked
    /// [`Domain::advance`] steps (stepped) gets a stall report.
    pub stall_polls: u64,
    /// Use `membarrier(2)` so readers pay only a compiler barrier (std builds on Linux;
    /// ignored under the model checkers, which always use `fence(SeqCst)` on both sides).
    pub asymmetric_fence: bool,
    /// Probe points: `read_lock`, `read_unlock`, `call`, `gp_start`, `gp_wait` (a waiter that
    /// cannot make progress), `gp_end`, `callback_invoke`, `barrier`, `reclaim_now`.
    pub probes: Probes,
    /// Grace periods ignore readers (rcutorture's `rcu_busted`) on any backend: the busted
    /// backend sets it; [`busted_readers`](Self::busted_readers) sets it on a stepped one, so
    /// a deterministic run can show what a broken engine lets through.
    pub ignore_readers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::threaded()
    }
}

impl Config {
    /// Threaded backend with a callback worker (no worker under loom / shuttle).
    pub fn threaded() -> Self {
        Config {
            backend: Backend::Threaded,
            callback_worker: !bpfls_sync::MODEL,
            stall_polls: 20_000,
            asymmetric_fence: true,
            probes: Probes::new(),
            ignore_readers: false,
        }
    }

    /// Stepped backend.
    pub fn stepped() -> Self {
        // One logical CPU runs at a time and hands over through a lock, so the cheap
        // symmetric fence is enough; membarrier(2) would interrupt every real CPU per grace
        // period for nothing.
        Config { backend: Backend::Stepped, asymmetric_fence: false, ..Self::threaded() }
    }

    /// Busted backend (grace periods do not wait).
    pub fn busted() -> Self {
        Config { backend: Backend::Busted, ignore_readers: true, ..Self::threaded() }
    }

    /// The same configuration with grace periods that ignore readers (a mutation for checker
    /// tests; see [`ignore_readers`](Self::ignore_readers)).
    pub fn busted_readers(self) -> Self {
        Config { ignore_readers: true, ..self }
    }

    /// The same configuration with another backend.
    pub fn with_backend(self, backend: Backend) -> Self {
        Config {
            backend,
            ignore_readers: self.ignore_readers || backend == Backend::Busted,
            ..self
        }
    }

    /// The same configuration without a callback worker.
    pub fn without_worker(self) -> Self {
        Config { callback_worker: false, ..self }
    }

    /// The same configuration with another stall threshold.
    pub fn with_stall_polls(self, stall_polls: u64) -> Self {
        Config { stall_polls, ..self }
    }

    /// The same configuration with these probe points.
    pub fn with_probes(self, probes: Probes) -> Self {
        Config { probes, ..self }
    }
}

/// A polled grace-period cookie (`get_state_synchronize_rcu()`'s return value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cookie(usize);

impl Cookie {
    /// The grace-period number that must complete for this cookie to be satisfied.
    pub fn gp_seq(self) -> u64 {
        self.0 as u64
    }
}

/// A reader of a domain: a CPU (normal RCU) or a task (Tasks-Trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReaderId {
    /// A logical CPU.
    Cpu(u32),
    /// A task, by the id its owner registered.
    Task(u64),
}

impl fmt::Display for ReaderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderId::Cpu(c) => write!(f, "CPU {c}"),
            ReaderId::Task(t) => write!(f, "task {t}"),
        }
    }
}

/// A stall report: a reader held a grace period past the configured threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallReport {
    /// `"rcu"` or `"tasks_trace"`.
    pub domain: &'static str,
    /// The grace period that could not end.
    pub gp_seq: u64,
    /// Who holds it.
    pub reader: ReaderId,
    /// Wait polls (threaded) or blocked steps (stepped) when reported.
    pub polls: u64,
}

/// What one [`Domain::advance`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Invoked the oldest ready callback.
    Invoked {
        /// Its object id (0 for untagged callbacks).
        obj: u64,
    },
    /// Started a grace period.
    GpStarted {
        /// Its number.
        gp_seq: u64,
    },
    /// The grace period in flight ended: every reader that predates it has left.
    GpEnded {
        /// Its number.
        gp_seq: u64,
    },
    /// The grace period in flight cannot end yet.
    Blocked {
        /// Its number.
        gp_seq: u64,
        /// A reader that entered its section before it started and is still inside.
        reader: ReaderId,
    },
    /// Nothing to do: no callback waits and nobody asked for a grace period.
    Idle,
}

/// The API common to both domains (`Rcu` and `TasksTrace` dereference to it).
pub struct Domain {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Domain {
    fn new(kind: Kind, cpus: usize, cfg: &Config) -> Self {
        let inner = Arc::new(Inner::new(kind, cpus, cfg));
        let worker = (cfg.callback_worker && cfg.backend != Backend::Stepped).then(|| {
            let inner = inner.clone();
            thread::spawn_named(format!("bpfls-{}-cb", kind.name()), move || inner.worker_loop())
        });
        Domain { inner, worker }
    }

    /// `"rcu"` or `"tasks_trace"`.
    pub fn name(&self) -> &'static str {
        self.inner.kind.name()
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Whether readers use the `membarrier(2)` fast path.
    pub fn is_expedited(&self) -> bool {
        self.inner.fence.is_expedited()
    }

    /// Queues `f` to run once every reader that is inside a section now has left it
    /// (`call_rcu`). It is guaranteed to run: by the worker, by a [`barrier`](Self::barrier),
    /// by [`advance`](Self::advance) (stepped), or at the latest when the domain is dropped.
    pub fn call(&self, f: impl FnOnce() + Send + 'static) {
        self.inner.call(0, 0, Box::new(f));
    }

    /// [`call`](Self::call) for a known object: `obj` appears in trace events, `bytes` counts
    /// towards [`Stats::bytes_pending`] until the callback has run.
    pub fn call_tagged(&self, obj: u64, bytes: usize, f: impl FnOnce() + Send + 'static) {
        self.inner.call(obj, bytes, Box::new(f));
    }

    /// Waits for a full grace period: every reader inside a section now has left it.
    ///
    /// # Panics
    ///
    /// From a callback of this domain (it would wait for itself); in stepped mode without an
    /// executor, when a reader that can never leave blocks the grace period.
    pub fn synchronize(&self) {
        self.inner.synchronize();
    }

    /// Waits until every callback queued (on any CPU) before this call has run. It waits for
    /// this domain only: `rcu_barrier_tasks_trace()` does not imply `rcu_barrier()`.
    ///
    /// # Panics
    ///
    /// From a callback of this domain, and as [`synchronize`](Self::synchronize) in stepped
    /// mode.
    pub fn barrier(&self) {
        self.inner.barrier(self.worker.is_some());
    }

    /// A cookie for [`poll_state`](Self::poll_state).
    pub fn get_state(&self) -> Cookie {
        self.inner.get_state()
    }

    /// Whether a full grace period has elapsed since `cookie` was taken.
    pub fn poll_state(&self, cookie: Cookie) -> bool {
        self.inner.poll_state(cookie)
    }

    /// Performs one step of the grace-period machinery: invoke one ready callback, or end the
    /// grace period in flight, or start one that callbacks or waiters need. This is how the
    /// stepped backend makes progress; on the other backends it is a non-blocking helper.
    pub fn advance(&self) -> Step {
        self.inner.advance()
    }

    /// Runs [`advance`](Self::advance) until it returns [`Step::Idle`] or
    /// [`Step::Blocked`], and returns that last step.
    pub fn advance_until_quiet(&self) -> Step {
        loop {
            if let s @ (Step::Idle | Step::Blocked { .. }) = self.advance() {
                return s;
            }
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Stall reports issued so far (at most 256 are kept).
    pub fn stall_reports(&self) -> Vec<StallReport> {
        self.inner.stall_reports()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.inner.stop_worker();
            let _ = worker.join();
        }
        // Guards and task readers borrow the domain, so none exists now: every pending
        // callback may run, and the guarantee that callbacks run holds.
        self.inner.close();
    }
}

/// Normal RCU: readers are non-sleepable and tracked per CPU.
#[derive(Debug)]
pub struct Rcu {
    domain: Domain,
}

impl Rcu {
    /// A domain for `cpus` logical CPUs.
    ///
    /// # Panics
    ///
    /// If `cpus` is 0.
    pub fn new(cpus: u32, cfg: Config) -> Self {
        assert!(cpus > 0, "bpfls-rcu: an RCU domain needs at least one CPU");
        Rcu { domain: Domain::new(Kind::Rcu, cpus as usize, &cfg) }
    }

    /// Number of CPUs (reader slots).
    pub fn cpus(&self) -> u32 {
        self.domain.inner.cpu_slots.len() as u32
    }

    /// `rcu_read_lock()` on `cpu`. Sections nest; the guard must be dropped on the same CPU
    /// and in reverse order of entry.
    ///
    /// # Panics
    ///
    /// If `cpu` is out of range or the nesting depth overflows.
    #[inline]
    pub fn read_lock(&self, cpu: u32) -> RcuReadGuard<'_> {
        RcuReadGuard::new(&self.domain.inner, cpu)
    }
}

impl std::ops::Deref for Rcu {
    type Target = Domain;
    fn deref(&self) -> &Domain {
        &self.domain
    }
}

/// RCU Tasks-Trace: readers are tasks (sleepable programs) that may block in their section.
#[derive(Debug)]
pub struct TasksTrace {
    domain: Domain,
}

impl TasksTrace {
    /// A domain with no tasks yet.
    pub fn new(cfg: Config) -> Self {
        TasksTrace { domain: Domain::new(Kind::TasksTrace, 0, &cfg) }
    }

    /// Registers task `task` as a reader. The handle unregisters it on drop.
    ///
    /// # Panics
    ///
    /// If a live reader already uses this task id.
    pub fn register_task(&self, task: u64) -> TaskReader<'_> {
        TaskReader::register(&self.domain.inner, task)
    }

    /// `rcu_read_lock_trace()` for `task`. Sections nest; the task may block (and migrate)
    /// while inside.
    ///
    /// # Panics
    ///
    /// If `task` belongs to another domain or the nesting depth overflows.
    #[inline]
    pub fn read_lock<'a>(&'a self, task: &'a TaskReader<'a>) -> TraceReadGuard<'a> {
        TraceReadGuard::new(&self.domain.inner, task)
    }
}

impl std::ops::Deref for TasksTrace {
    type Target = Domain;
    fn deref(&self) -> &Domain {
        &self.domain
    }
}

/// When an object may be reused, as data handed to the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReclaimPolicy {
    /// `reuse_now`: no reader can hold the object; reuse immediately.
    Now,
    /// After a normal RCU grace period (`call_rcu`, `kfree_rcu`).
    AfterRcu,
    /// After an RCU Tasks-Trace grace period (`call_rcu_tasks_trace`), when that implies a
    /// normal grace period. [`Domains::defer`] honours the implication when the domains are
    /// built with `trace_implies_rcu`: the free also waits for an RCU grace period if none has
    /// elapsed since the call.
    AfterTasksTrace,
    /// After a Tasks-Trace grace period and then a normal one: the kernel's chained form for
    /// `rcu_trace_implies_rcu_gp() == false`.
    AfterTasksTraceThenRcu,
}

impl ReclaimPolicy {
    /// The policy that protects sleepable *and* non-sleepable readers, given the
    /// `trace_implies_rcu` knob.
    pub fn for_sleepable_readers(trace_implies_rcu: bool) -> Self {
        if trace_implies_rcu {
            ReclaimPolicy::AfterTasksTrace
        } else {
            ReclaimPolicy::AfterTasksTraceThenRcu
        }
    }

    /// Stable name for traces.
    pub fn name(self) -> &'static str {
        match self {
            ReclaimPolicy::Now => "now",
            ReclaimPolicy::AfterRcu => "after_rcu",
            ReclaimPolicy::AfterTasksTrace => "after_tasks_trace",
            ReclaimPolicy::AfterTasksTraceThenRcu => "after_tasks_trace_then_rcu",
        }
    }
}

/// The two domains of one simulated kernel and the `rcu_trace_implies_rcu_gp()` knob.
#[derive(Debug)]
pub struct Domains {
    /// Normal RCU.
    pub rcu: Rcu,
    /// RCU Tasks-Trace.
    pub tasks_trace: TasksTrace,
    trace_implies_rcu: bool,
}

impl Domains {
    /// Both domains with the same configuration; `cpus` reader slots for RCU.
    pub fn new(cpus: u32, cfg: Config, trace_implies_rcu: bool) -> Self {
        Domains {
            rcu: Rcu::new(cpus, cfg.clone()),
            tasks_trace: TasksTrace::new(cfg),
            trace_implies_rcu,
        }
    }

    /// `rcu_trace_implies_rcu_gp()`.
    pub fn trace_implies_rcu(&self) -> bool {
        self.trace_implies_rcu
    }

    /// The policy for objects sleepable programs may still read (delete paths).
    pub fn sleepable_policy(&self) -> ReclaimPolicy {
        ReclaimPolicy::for_sleepable_readers(self.trace_implies_rcu)
    }

    /// Carries out `policy` for object `obj` of `bytes` bytes: runs `free` now, or queues it
    /// behind the grace period(s) the policy names.
    ///
    /// `AfterTasksTraceThenRcu` queues a Tasks-Trace callback that, when it runs, queues
    /// `free` on the RCU domain (the kernel's `call_rcu_tasks_trace` → `call_rcu` chain).
    pub fn defer(
        &self,
        policy: ReclaimPolicy,
        obj: u64,
        bytes: usize,
        free: impl FnOnce() + Send + 'static,
    ) {
        match policy {
            ReclaimPolicy::Now => {
                let inner = &self.rcu.domain.inner;
                inner.probes.hit("reclaim_now", None, &[("obj", obj)]);
                rcu_event!(inner, "reclaim_now", obj);
                free()
            }
            ReclaimPolicy::AfterRcu => self.rcu.call_tagged(obj, bytes, free),
            ReclaimPolicy::AfterTasksTrace if self.trace_implies_rcu => {
                // `rcu_trace_implies_rcu_gp()`: the kernel frees right after the Tasks-Trace
                // grace period because that grace period also covers normal RCU readers. Ours
                // does not wait for them, so the implied RCU grace period is made explicit: a
                // cookie taken now; if an RCU grace period has elapsed by the time the
                // Tasks-Trace callback runs (the usual case) the free happens there, as in the
                // kernel, otherwise it waits for one.
                let cookie = self.rcu.get_state();
                let rcu = self.rcu.domain.inner.clone();
                self.tasks_trace.call_tagged(obj, bytes, move || {
                    if rcu.poll_state(cookie) {
                        free();
                    } else {
                        rcu_event!(rcu, "chain", obj);
                        rcu.call(obj, bytes, Box::new(free));
                    }
                });
            }
            // Without the implication this protects Tasks-Trace readers only; the kernel never
            // uses it that way (it chains), and the checkers catch a caller that does.
            ReclaimPolicy::AfterTasksTrace => self.tasks_trace.call_tagged(obj, bytes, free),
            ReclaimPolicy::AfterTasksTraceThenRcu => {
                let rcu = self.rcu.domain.inner.clone();
                self.tasks_trace.call_tagged(obj, bytes, move || {
                    rcu_event!(rcu, "chain", obj);
                    rcu.call(obj, bytes, Box::new(free));
                });
            }
        }
    }

    /// `rcu_barrier_tasks_trace()` then `rcu_barrier()`: every callback queued before this
    /// call on either domain, including RCU callbacks chained from Tasks-Trace ones, has run.
    pub fn barrier_all(&self) {
        self.tasks_trace.barrier();
        self.rcu.barrier();
    }
}
