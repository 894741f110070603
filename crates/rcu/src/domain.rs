//! The grace-period state machine shared by both domains and all backends.
//!
//! See [`crate::implementation`] for the design essay; this file keeps the comments local to
//! the code they explain.

use crate::stats::{Stats, StatsCell};
use crate::{Backend, Config, Cookie, ReaderId, StallReport, Step};
use bpfls_sync::atomic::{AtomicUsize, Ordering};
use bpfls_sync::probe::{Probes, WaitVerdict};
use bpfls_sync::{Arc, AsymmetricFence, Backoff, CachePadded, Condvar, Mutex, thread, untracked};
use std::collections::VecDeque;
use std::fmt;

/// The worker starts a grace period once this many callbacks wait for one...
const GATHER_BATCH: u64 = 256;
/// ...or once no new callback arrived during one backoff poll, or after this many polls (all in
/// the backoff's spinning phase: microseconds, never a yield), whichever comes first.
const GATHER_POLLS: u64 = 48;

/// Most callbacks invoked between two updates of the invoked count (the kernel's `blimit`
/// idea: barrier waiters see progress, and a flood does not hold the queue lock long).
const INVOKE_BATCH: usize = 1024;

// A reader slot packs a 48-bit grace-period snapshot above the depth: 64-bit hosts only.
const _: () = assert!(usize::BITS >= 64, "bpfls-rcu needs a 64-bit host (reader slot layout)");

/// Low bits of a reader slot: the nesting depth of the section (0 = not inside).
pub(crate) const DEPTH_BITS: u32 = 16;
pub(crate) const DEPTH_MASK: usize = (1 << DEPTH_BITS) - 1;

/// A reader slot: `snap << DEPTH_BITS | depth`, where `snap` is the `gp_seq` the outermost
/// `read_lock` observed. One per CPU (RCU) or per task (Tasks-Trace), each on its own cache
/// line so readers on different CPUs never share one.
pub(crate) type Slot = CachePadded<AtomicUsize>;

/// Whether a reader whose slot holds `value` must be waited for by the grace period `target`:
/// it is inside a section that it entered before `gp_seq` reached `target`.
#[inline]
pub(crate) fn blocks(value: usize, target: usize) -> bool {
    value & DEPTH_MASK != 0 && (value >> DEPTH_BITS) < target
}

/// Which kind of domain: decides how readers are named and how the read side behaves.
/// The discriminant is the `domain` field of the probe points (0 RCU, 1 Tasks-Trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rcu = 0,
    TasksTrace = 1,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Rcu => "rcu",
            Kind::TasksTrace => "tasks_trace",
        }
    }
}

/// A queued callback (`struct rcu_head` plus its function).
pub(crate) struct Cb {
    /// The grace period this callback waits for; `None` until a grace period is started for
    /// it (the kernel's "next" segment). Tagged callbacks always precede untagged ones.
    gp: Option<usize>,
    obj: u64,
    bytes: usize,
    f: Box<dyn FnOnce() + Send>,
}

/// Callback lists and counters, under `Inner::cbs`.
#[derive(Default)]
pub(crate) struct CbState {
    queue: VecDeque<Cb>,
    /// Number of callbacks ever queued / invoked (barrier snapshots these).
    queued: u64,
    invoked: u64,
    /// Queued count when the latest callback grace period started (for `max_queued_per_gp`).
    queued_at_gp_start: u64,
    /// Highest cookie some `synchronize` / `barrier` asked for (stepped demand).
    requested: usize,
    /// The grace period the stepped driver has in flight.
    stepped_gp: Option<usize>,
    /// `advance` calls that found `stepped_gp` blocked (reset when it ends).
    blocked_steps: u64,
    /// The worker must exit once the lists are empty.
    shutdown: bool,
    /// The worker sleeps on `work_cv` (so `call` must wake it; otherwise it need not: a
    /// condvar notify is a syscall even with no waiter).
    worker_idle: bool,
    /// Threads sleeping in `barrier` on `done_cv`.
    barrier_waiters: usize,
    /// The owning value was dropped: new callbacks run at once (no reader can exist).
    closed: bool,
}

impl CbState {
    fn untagged(&self) -> bool {
        self.queue.back().is_some_and(|cb| cb.gp.is_none())
    }

    fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// The task registry of a Tasks-Trace domain.
#[derive(Default)]
pub(crate) struct Tasks {
    /// `(task id, slot)`; a `None` entry is free for reuse.
    pub(crate) slots: Vec<Option<(u64, Arc<Slot>)>>,
}

/// Everything a domain shares with its worker thread and its chained callbacks.
pub(crate) struct Inner {
    pub(crate) kind: Kind,
    pub(crate) backend: Backend,
    /// [`Config::ignore_readers`](crate::Config::ignore_readers).
    pub(crate) ignore_readers: bool,
    pub(crate) fence: AsymmetricFence,
    pub(crate) probes: Probes,
    stall_polls: u64,
    /// Target of the latest grace period started (the kernel's `rcu_state.gp_seq`, counted in
    /// whole grace periods instead of with two state bits).
    pub(crate) gp_seq: CachePadded<AtomicUsize>,
    /// Highest target whose grace period has completed.
    gp_done: CachePadded<AtomicUsize>,
    /// RCU: one slot per CPU. Tasks-Trace: empty (slots live in `tasks`).
    pub(crate) cpu_slots: Box<[Slot]>,
    pub(crate) tasks: Mutex<Tasks>,
    cbs: Mutex<CbState>,
    /// Wakes the worker (work queued, shutdown).
    work_cv: Condvar,
    /// Wakes barrier waiters (callbacks invoked).
    done_cv: Condvar,
    /// Held while invoking callbacks, so they run one at a time in queue order (barrier's
    /// "invoked >= snapshot" test relies on FIFO completion).
    invoker: Mutex<()>,
    /// The thread currently invoking callbacks (misuse detection: barrier / synchronize from a
    /// callback). Bookkeeping, so untracked.
    invoking_thread: untracked::Mutex<Option<thread::ThreadId>>,
    stall_log: untracked::Mutex<Vec<StallReport>>,
    /// A callback that panicked on the worker thread: reported by the next `barrier` instead
    /// of leaving the barrier to wait forever for a dead worker.
    worker_panic: untracked::Mutex<Option<String>>,
    pub(crate) stats: StatsCell,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("kind", &self.kind.name())
            .field("backend", &self.backend)
            .field("gp_seq", &self.gp_seq.load(Ordering::Relaxed))
            .field("gp_done", &self.gp_done.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

macro_rules! rcu_event {
    ($inner:expr, $op:literal $(, $($rest:tt)*)?) => {
        tracing::event!(
            target: "bpfls::rcu",
            tracing::Level::TRACE,
            seq = $inner.probes.next_seq(),
            domain = $inner.kind.name(),
            op = $op
            $(, $($rest)*)?
        )
    };
}
pub(crate) use rcu_event;

impl Inner {
    pub(crate) fn new(kind: Kind, cpus: usize, cfg: &Config) -> Self {
        let fence = if cfg.asymmetric_fence && !bpfls_sync::MODEL {
            AsymmetricFence::new()
        } else {
            AsymmetricFence::symmetric()
        };
        Inner {
            kind,
            backend: cfg.backend,
            ignore_readers: cfg.ignore_readers || cfg.backend == Backend::Busted,
            fence,
            probes: cfg.probes.clone(),
            stall_polls: cfg.stall_polls.max(1),
            gp_seq: CachePadded::new(AtomicUsize::new(0)),
            gp_done: CachePadded::new(AtomicUsize::new(0)),
            cpu_slots: (0..cpus).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            tasks: Mutex::new(Tasks::default()),
            cbs: Mutex::new(CbState::default()),
            work_cv: Condvar::new(),
            done_cv: Condvar::new(),
            invoker: Mutex::new(()),
            invoking_thread: untracked::Mutex::new(None),
            stall_log: untracked::Mutex::new(Vec::new()),
            worker_panic: untracked::Mutex::new(None),
            stats: StatsCell::default(),
        }
    }

    fn stepped(&self) -> bool {
        self.backend == Backend::Stepped
    }

    // ----- grace periods ------------------------------------------------------------------

    /// Starts a grace period and returns its target. Every reader that entered its section
    /// before this increment (its snapshot is below the target) must leave before the grace
    /// period may complete.
    fn start_gp(&self) -> usize {
        let target = self.bump_gp_seq();
        self.gp_barrier();
        target
    }

    /// The first half of [`start_gp`](Self::start_gp): the increment. Cheap, so it may run
    /// under the callback-queue lock; [`gp_barrier`](Self::gp_barrier) must follow (outside
    /// the lock: it may be a `membarrier(2)` syscall) before the first scan.
    fn bump_gp_seq(&self) -> usize {
        // ORDERING: AcqRel: the Release half heads a release sequence that the reader's
        // Acquire load of `gp_seq` (in `enter`) synchronizes with, so everything this thread
        // (or a thread that synchronized with it, e.g. through the callback-queue lock or the
        // RMW in `get_state`) did before is visible to a reader that snapshots the new value.
        let target = self.gp_seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.stats.gp_started.fetch_add(1, untracked::Ordering::Relaxed);
        rcu_event!(self, "gp_start", gp_seq = target as u64);
        target
    }

    /// The second half of [`start_gp`](Self::start_gp).
    fn gp_barrier(&self) {
        // ORDERING: the updater half of the store-buffering pair with `enter`'s light()
        // between "store slot" and "load protected pointer": either the reader's slot store is
        // visible to our scan, or the reader's later loads see everything before the
        // increment.
        self.fence.heavy();
    }

    /// Marks `target` complete (and every older one).
    fn complete_gp(&self, target: usize) {
        // ORDERING: Release pairs with the Acquire load in `poll_state` / `ready`: whoever sees
        // the new `gp_done` also sees that every blocking reader has left.
        self.gp_done.fetch_max(target, Ordering::Release);
        self.stats.gp_completed.fetch_add(1, untracked::Ordering::Relaxed);
        rcu_event!(self, "gp_end", gp_seq = target as u64);
    }

    /// Passes the probe point `site` (`gp_start` / `gp_end`) for grace period `target`.
    /// Called with no lock held: a stepped executor may switch CPUs inside a probe.
    fn probe_gp(&self, site: &'static str, target: usize) {
        self.probes.hit(site, None, &[("domain", self.kind as u64), ("gp_seq", target as u64)]);
    }

    fn report_stall(&self, target: usize, reader: ReaderId, polls: u64) {
        self.stats.stalls.fetch_add(1, untracked::Ordering::Relaxed);
        let report = StallReport { domain: self.kind.name(), gp_seq: target as u64, reader, polls };
        tracing::event!(
            target: "bpfls::rcu",
            tracing::Level::WARN,
            seq = self.probes.next_seq(),
            domain = self.kind.name(),
            op = "stall",
            gp_seq = target as u64,
            reader = %reader,
            polls,
            "grace period stalled by a reader that does not leave its section"
        );
        let mut log = self.stall_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < 256 {
            log.push(report);
        }
    }

    /// Blocks until the grace period `target` may complete (threaded backends).
    fn wait_for_readers(&self, target: usize) {
        let mut backoff = Backoff::new();
        let mut polls = 0u64;
        let mut stalled: Option<ReaderId> = None;
        while let Some(reader) = self.first_blocker_id(target) {
            polls += 1;
            if polls >= self.stall_polls && stalled != Some(reader) {
                self.report_stall(target, reader, polls);
                stalled = Some(reader);
            }
            if self.probes.is_attached() {
                let f = [("domain", self.kind as u64), ("gp_seq", target as u64)];
                if self.probes.wait("gp_wait", None, &f) == WaitVerdict::Deadlock {
                    panic!(
                        "bpfls-rcu: grace period {target} of domain {} can never end: {reader} \
                         entered a read-side section before it started and every CPU is blocked",
                        self.kind.name()
                    );
                }
            } else {
                backoff.wait();
            }
        }
    }

    /// The first reader that blocks the grace period `target`, if any (non-blocking scan).
    fn first_blocker_id(&self, target: usize) -> Option<ReaderId> {
        if self.ignore_readers {
            return None;
        }
        match self.kind {
            Kind::Rcu => self.cpu_slots.iter().enumerate().find_map(|(cpu, slot)| {
                // ORDERING: Acquire pairs with the Release store in `exit`: once we read the
                // slot empty (or newer), the reader's section happened-before our completion.
                let v = slot.load(Ordering::Acquire);
                blocks(v, target).then_some(ReaderId::Cpu(cpu as u32))
            }),
            Kind::TasksTrace => {
                let tasks = self.tasks.lock();
                tasks.slots.iter().flatten().find_map(|(id, slot)| {
                    // ORDERING: as for the CPU slots above, pairs with `exit`'s Release.
                    let v = slot.load(Ordering::Acquire);
                    blocks(v, target).then_some(ReaderId::Task(*id))
                })
            }
        }
    }

    /// A full grace period driven by the caller: start, wait, complete.
    fn run_gp(&self) -> usize {
        let target = self.start_gp();
        self.probe_gp("gp_start", target);
        self.wait_for_readers(target);
        self.complete_gp(target);
        self.probe_gp("gp_end", target);
        target
    }

    // ----- cookies --------------------------------------------------------------------------

    pub(crate) fn get_state(&self) -> Cookie {
        // ORDERING: an RMW (not a load) with Release: it heads a release sequence that the
        // next `start_gp` RMW continues, so a reader that snapshots that grace period's target
        // also sees what this thread unpublished before asking for the cookie. AcqRel's Acquire
        // half is for the symmetric case with `poll_state`.
        let g = self.gp_seq.fetch_add(0, Ordering::AcqRel);
        // The next grace period to *start* is the first that certainly began after this call.
        Cookie(g + 1)
    }

    pub(crate) fn poll_state(&self, cookie: Cookie) -> bool {
        // ORDERING: Acquire pairs with the Release `fetch_max` in `complete_gp`.
        self.gp_done.load(Ordering::Acquire) >= cookie.0
    }

    // ----- callbacks ------------------------------------------------------------------------

    pub(crate) fn call(&self, obj: u64, bytes: usize, f: Box<dyn FnOnce() + Send>) {
        let mut cbs = self.cbs.lock();
        if cbs.closed {
            // The domain's owner is gone, so no read-side section of it can exist any more.
            drop(cbs);
            f();
            return;
        }
        cbs.queue.push_back(Cb { gp: None, obj, bytes, f });
        cbs.queued += 1;
        let pending = cbs.queued - cbs.invoked;
        let wake = std::mem::take(&mut cbs.worker_idle);
        drop(cbs);
        self.stats.cbs_queued.fetch_add(1, untracked::Ordering::Relaxed);
        self.stats.bytes_pending.fetch_add(bytes as u64, untracked::Ordering::Relaxed);
        self.stats.peak_pending.fetch_max(pending, untracked::Ordering::Relaxed);
        let f = [("domain", self.kind as u64), ("obj", obj), ("bytes", bytes as u64)];
        self.probes.hit("call", None, &f);
        rcu_event!(self, "call", obj, bytes = bytes as u64);
        if wake {
            self.work_cv.notify_one();
        }
    }

    /// Starts a grace period that covers every callback queued so far that has none yet
    /// (the kernel's "accelerate" step) and returns its target. The caller must run
    /// [`gp_barrier`](Self::gp_barrier) after releasing the lock and before scanning.
    fn start_gp_for_callbacks(&self, cbs: &mut CbState) -> usize {
        // The RMW happens under the queue lock, after every enqueue it covers: the lock makes
        // each enqueuer's prior stores happen-before the RMW, whose release sequence carries
        // them to any reader that snapshots the new target (see `start_gp`).
        let target = self.bump_gp_seq();
        for cb in cbs.queue.iter_mut().rev() {
            if cb.gp.is_some() {
                break;
            }
            cb.gp = Some(target);
        }
        let in_gp = cbs.queued - cbs.queued_at_gp_start;
        cbs.queued_at_gp_start = cbs.queued;
        self.stats.max_queued_per_gp.fetch_max(in_gp, untracked::Ordering::Relaxed);
        target
    }

    /// Pops up to `max` of the oldest callbacks whose grace period has completed.
    fn pop_ready(&self, cbs: &mut CbState, max: usize) -> Vec<Cb> {
        // ORDERING: Acquire pairs with `complete_gp`'s Release fetch_max.
        let done = self.gp_done.load(Ordering::Acquire);
        let ready = cbs.queue.iter().take(max).take_while(|cb| cb.gp.is_some_and(|g| g <= done));
        let n = ready.count();
        cbs.queue.drain(..n).collect()
    }

    /// Invokes `batch`, oldest first (the kernel's `rcu_do_batch`). A callback that panics
    /// still counts as invoked, so barriers and statistics stay consistent; the callbacks
    /// after it go back to the head of the queue and the panic continues to whoever drove the
    /// invocation.
    fn invoke_batch(&self, batch: Vec<Cb>, on_worker: bool) -> u64 {
        struct Clear<'a>(&'a Inner);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                *self.0.invoking_thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        *self.invoking_thread.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(thread::current().id());
        let clear = Clear(self);
        let (mut n, mut bytes, mut panicked) = (0u64, 0u64, None);
        let mut batch = batch.into_iter();
        for Cb { gp, obj, bytes: b, f } in batch.by_ref() {
            let gp = gp.unwrap_or(0) as u64;
            let fields = [("domain", self.kind as u64), ("obj", obj), ("gp_seq", gp)];
            self.probes.hit("callback_invoke", None, &fields);
            rcu_event!(self, "callback_invoke", obj, gp_seq = gp);
            n += 1;
            bytes += b as u64;
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                panicked = Some(payload);
                break;
            }
        }
        drop(clear);
        if on_worker && let Some(payload) = panicked.take() {
            // Recorded before `invoked` moves, so the barrier that sees this batch done also
            // sees the panic.
            self.record_worker_panic(payload);
        }
        self.stats.cbs_invoked.fetch_add(n, untracked::Ordering::Relaxed);
        self.stats.bytes_pending.fetch_sub(bytes, untracked::Ordering::Relaxed);
        let mut cbs = self.cbs.lock();
        cbs.invoked += n;
        for cb in batch.rev() {
            cbs.queue.push_front(cb);
        }
        let waiters = cbs.barrier_waiters > 0;
        drop(cbs);
        if waiters {
            self.done_cv.notify_all();
        }
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
        n
    }

    /// Invokes every ready callback, oldest first, one thread at a time. Returns how many ran.
    fn invoke_ready(&self, on_worker: bool) -> u64 {
        let _invoker = self.invoker.lock();
        let mut n = 0;
        loop {
            let batch = self.pop_ready(&mut self.cbs.lock(), INVOKE_BATCH);
            if batch.is_empty() {
                return n;
            }
            n += self.invoke_batch(batch, on_worker);
        }
    }

    /// One round of the threaded driver: a grace period for everything queued, then the
    /// callbacks it made ready.
    fn drive_once(&self, on_worker: bool) {
        let target = {
            let mut cbs = self.cbs.lock();
            if cbs.untagged() { Some(self.start_gp_for_callbacks(&mut cbs)) } else { None }
        };
        match target {
            Some(t) => {
                self.gp_barrier();
                self.probe_gp("gp_start", t);
                self.wait_for_readers(t);
                self.complete_gp(t);
                self.probe_gp("gp_end", t);
            }
            // Only callbacks tagged by another driver wait: run a fresh grace period, which
            // implies theirs.
            None if self.cbs.lock().has_pending() => {
                self.run_gp();
            }
            None => {}
        }
        self.invoke_ready(on_worker);
    }

    pub(crate) fn check_not_in_callback(&self, what: &str) {
        let me = thread::current().id();
        let invoking = *self.invoking_thread.lock().unwrap_or_else(|e| e.into_inner());
        if invoking == Some(me) {
            panic!(
                "bpfls-rcu: {what} called from a {} callback: callbacks run in softirq context and \
                 must not wait for a grace period or for callbacks (it would wait for itself)",
                self.kind.name()
            );
        }
    }

    // ----- synchronize / barrier ------------------------------------------------------------

    pub(crate) fn synchronize(&self) {
        self.check_not_in_callback("synchronize()");
        rcu_event!(self, "sync_start");
        if self.stepped() {
            let cookie = self.get_state();
            {
                let mut cbs = self.cbs.lock();
                cbs.requested = cbs.requested.max(cookie.0);
            }
            self.stepped_wait("synchronize()", || self.poll_state(cookie));
        } else {
            // Expedited style: the caller runs its own grace period. Concurrent grace periods
            // are independent; each waits only for readers older than its own increment.
            self.run_gp();
        }
        rcu_event!(self, "sync_end");
    }

    pub(crate) fn barrier(&self, has_worker: bool) {
        self.check_not_in_callback("barrier()");
        let target = self.cbs.lock().queued;
        self.probes.hit("barrier", None, &[("domain", self.kind as u64), ("callbacks", target)]);
        rcu_event!(self, "barrier_start", callbacks = target);
        if self.stepped() {
            self.stepped_wait("barrier()", || self.cbs.lock().invoked >= target);
        } else if has_worker {
            let mut cbs = self.cbs.lock();
            cbs.barrier_waiters += 1;
            while cbs.invoked < target {
                if std::mem::take(&mut cbs.worker_idle) {
                    self.work_cv.notify_one();
                }
                cbs = self.done_cv.wait(cbs);
            }
            cbs.barrier_waiters -= 1;
            drop(cbs);
            self.check_worker_panic();
        } else {
            while self.cbs.lock().invoked < target {
                self.drive_once(false);
            }
        }
        rcu_event!(self, "barrier_end", callbacks = target);
    }

    /// Waits in stepped mode: an attached executor switches CPUs (and drives `advance`);
    /// without one, the caller drives `advance` itself and reports a reader that can never
    /// leave instead of hanging.
    fn stepped_wait(&self, what: &str, done: impl Fn() -> bool) {
        while !done() {
            if self.probes.is_attached() {
                if self.probes.wait("gp_wait", None, &[("domain", self.kind as u64)])
                    == WaitVerdict::Deadlock
                {
                    panic!(
                        "bpfls-rcu: {what} on domain {} can never return: the executor reports \
                         that every CPU is blocked",
                        self.kind.name()
                    );
                }
                continue;
            }
            if let Step::Blocked { gp_seq, reader } = self.advance() {
                panic!(
                    "bpfls-rcu: {what} on stepped domain {} would wait forever: grace period \
                     {gp_seq} waits for {reader}, which entered its read-side section before the \
                     grace period started, and no executor is attached to run it; end the \
                     section first or attach a stepped executor through Probes",
                    self.kind.name()
                );
            }
        }
    }

    /// One deterministic step of the grace-period machinery (see [`Step`]).
    pub(crate) fn advance(&self) -> Step {
        self.check_not_in_callback("advance()");
        // 1. A ready callback runs first (one per step, so a trace shows each free).
        {
            let _invoker = self.invoker.lock();
            let batch = self.pop_ready(&mut self.cbs.lock(), 1);
            if let Some(obj) = batch.first().map(|cb| cb.obj) {
                self.invoke_batch(batch, false);
                return Step::Invoked { obj };
            }
        }
        let mut cbs = self.cbs.lock();
        // 2. The grace period in flight ends when no reader blocks it.
        if let Some(target) = cbs.stepped_gp {
            if let Some(reader) = self.first_blocker_id(target) {
                cbs.blocked_steps += 1;
                if cbs.blocked_steps == self.stall_polls {
                    self.report_stall(target, reader, cbs.blocked_steps);
                }
                return Step::Blocked { gp_seq: target as u64, reader };
            }
            cbs.stepped_gp = None;
            cbs.blocked_steps = 0;
            self.complete_gp(target);
            drop(cbs);
            self.probe_gp("gp_end", target);
            return Step::GpEnded { gp_seq: target as u64 };
        }
        // 3. Start one if callbacks or waiters need it.
        // ORDERING: Relaxed is enough: under the queue lock, which every writer of `gp_done`
        // in stepped mode holds; this is a demand check, not a safety check.
        let done = self.gp_done.load(Ordering::Relaxed);
        let demand = cbs.untagged()
            || cbs.queue.front().is_some_and(|cb| cb.gp.is_some_and(|g| g > done))
            || cbs.requested > done;
        if demand {
            let target = if cbs.untagged() {
                self.start_gp_for_callbacks(&mut cbs)
            } else {
                self.bump_gp_seq()
            };
            cbs.stepped_gp = Some(target);
            drop(cbs);
            self.gp_barrier();
            self.probe_gp("gp_start", target);
            return Step::GpStarted { gp_seq: target as u64 };
        }
        Step::Idle
    }

    // ----- lifecycle ------------------------------------------------------------------------

    pub(crate) fn worker_loop(&self) {
        loop {
            {
                let mut cbs = self.cbs.lock();
                while !cbs.has_pending() && !cbs.shutdown {
                    cbs.worker_idle = true;
                    cbs = self.work_cv.wait(cbs);
                    cbs.worker_idle = false;
                }
                if !cbs.has_pending() && cbs.shutdown {
                    return;
                }
            }
            self.gather();
            let round =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drive_once(true)));
            if let Err(payload) = round {
                self.record_worker_panic(payload);
            }
        }
    }

    /// Lets a few more callbacks join the next grace period before the worker starts it, the
    /// way the kernel's callbacks wait for the next tick: a grace period (a `membarrier(2)`,
    /// which interrupts every running thread) per handful of callbacks would cost the callers
    /// more than the wait. Waits a bounded number of polls, never when someone waits.
    fn gather(&self) {
        let mut backoff = Backoff::new();
        let mut last = None;
        while backoff.polls() < GATHER_POLLS {
            let cbs = self.cbs.lock();
            let fresh = cbs.queued - cbs.queued_at_gp_start;
            // Stop as soon as callers stop queueing: a lone callback does not wait for
            // company that is not coming.
            if fresh >= GATHER_BATCH
                || cbs.barrier_waiters > 0
                || cbs.shutdown
                || last == Some(fresh)
            {
                return;
            }
            last = Some(fresh);
            drop(cbs);
            backoff.wait();
        }
    }

    fn record_worker_panic(&self, payload: Box<dyn std::any::Any + Send>) {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        *self.worker_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    fn check_worker_panic(&self) {
        let msg = self.worker_panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(msg) = msg {
            panic!(
                "bpfls-rcu: a {} callback panicked on the callback worker: {msg}",
                self.kind.name()
            );
        }
    }

    pub(crate) fn stop_worker(&self) {
        self.cbs.lock().shutdown = true;
        self.work_cv.notify_all();
    }

    /// Runs every remaining callback and closes the domain. Called when the owning value is
    /// dropped, so no reader of this domain can exist any more.
    pub(crate) fn close(&self) {
        loop {
            if !self.cbs.lock().has_pending() {
                break;
            }
            self.drive_once(false);
        }
        self.cbs.lock().closed = true;
    }

    pub(crate) fn stats(&self) -> Stats {
        let cbs = self.cbs.lock();
        let mut s = self.stats.snapshot();
        s.gp_seq = self.gp_seq.load(Ordering::Relaxed) as u64;
        s.cbs_pending = cbs.queued - cbs.invoked;
        s
    }

    pub(crate) fn stall_reports(&self) -> Vec<StallReport> {
        self.stall_log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
