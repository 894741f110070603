//! The read side: entering and leaving sections, nesting, and the misuse checks.
//!
//! A reader's whole state is one word in its slot (`snap << DEPTH_BITS | depth`), written only
//! by the reader itself, so the fast path is a load, a store and a barrier: no read-modify-write
//! and no shared cache line with other readers.
//!
//! Every store to a slot is `Release` (a plain `mov` on x86): a grace-period scan decides from
//! whatever slot value it reads, and that value must carry the reader's earlier accesses with
//! it, whichever store wrote it.

use crate::ReaderId;
use crate::domain::{DEPTH_BITS, DEPTH_MASK, Inner, Kind, Slot, rcu_event};
use bpfls_sync::Arc;
use bpfls_sync::atomic::{AtomicUsize, Ordering};
use bpfls_sync::{CachePadded, thread};
use std::fmt;
use std::marker::PhantomData;

impl Inner {
    /// Whether anyone watches the read side (a probe hook or a TRACE subscriber). Two plain
    /// loads; the work of reporting lives in cold functions so the fast path stays inlinable.
    #[inline(always)]
    fn read_side_observed(&self) -> bool {
        self.probes.is_attached() || tracing::level_enabled!(tracing::Level::TRACE)
    }

    /// Enters a section on `slot`; returns the new nesting depth.
    #[inline(always)]
    fn enter(&self, slot: &AtomicUsize, reader: ReaderId) -> usize {
        // Only this reader writes its slot, so a plain load sees its own last store.
        let cur = slot.load(Ordering::Relaxed);
        let depth = cur & DEPTH_MASK;
        if depth != 0 {
            if depth == DEPTH_MASK {
                self.nesting_overflow(reader);
            }
            // ORDERING: Release, like every slot store (see the module doc):
            // a scan that reads this value must also see everything before it.
            slot.store(cur + 1, Ordering::Release);
            return depth + 1;
        }
        // ORDERING: Acquire pairs with the AcqRel RMW on `gp_seq` in `start_gp` (and the
        // release sequence it continues from `get_state` / the callback-queue lock): if we see
        // a grace period's target, and so will not be waited for by it, we also see every
        // store the updater made before starting it (the unpublished pointer).
        let snap = self.gp_seq.load(Ordering::Acquire);
        // ORDERING: Release, although this store only *announces* a section: a scan that reads
        // it (and so skips us, when `snap` is new enough) must also see the accesses of our
        // previous section, which the earlier Release store of 0 no longer guarantees once a
        // later plain store overwrote it (C++20 release sequences contain only RMWs). Found by
        // a loom model of a reader that leaves and re-enters (`loom_reentry.rs`).
        slot.store(snap << DEPTH_BITS | 1, Ordering::Release);
        // ORDERING: the reader's smp_mb() between "store slot" and "load protected data";
        // pairs with `heavy()` in `start_gp` (store-buffering: one side sees the other).
        self.fence.light();
        if self.read_side_observed() {
            self.observe_enter(reader, snap);
        }
        1
    }

    /// Leaves a section entered at nesting depth `depth`.
    #[inline(always)]
    fn exit(&self, slot: &AtomicUsize, depth: usize, reader: ReaderId) {
        let cur = slot.load(Ordering::Relaxed);
        if cur & DEPTH_MASK != depth {
            return self.unbalanced(slot, reader, depth, cur);
        }
        if depth > 1 {
            // ORDERING: Release, as in `enter`.
            slot.store(cur - 1, Ordering::Release);
            return;
        }
        if self.read_side_observed() {
            self.observe_exit(reader);
        }
        // ORDERING: Release pairs with the Acquire slot load in `first_blocker_id`: a grace
        // period that sees us gone also sees (happens-after) every access of our section.
        slot.store(0, Ordering::Release);
    }

    #[cold]
    #[inline(never)]
    fn observe_enter(&self, reader: ReaderId, snap: usize) {
        if self.probes.is_attached() {
            self.probes.hit("read_lock", reader_cpu(reader), &[("gp_seq", snap as u64)]);
        }
        match reader {
            ReaderId::Cpu(cpu) => rcu_event!(self, "read_lock", cpu, gp_seq = snap as u64),
            ReaderId::Task(task) => rcu_event!(self, "read_lock", task, gp_seq = snap as u64),
        }
    }

    #[cold]
    #[inline(never)]
    fn observe_exit(&self, reader: ReaderId) {
        if self.probes.is_attached() {
            self.probes.hit("read_unlock", reader_cpu(reader), &[]);
        }
        match reader {
            ReaderId::Cpu(cpu) => rcu_event!(self, "read_unlock", cpu),
            ReaderId::Task(task) => rcu_event!(self, "read_unlock", task),
        }
    }

    #[cold]
    #[inline(never)]
    fn nesting_overflow(&self, reader: ReaderId) -> ! {
        panic!(
            "bpfls-rcu: {reader} nested more than {DEPTH_MASK} {} read-side sections",
            self.kind.name()
        );
    }

    #[cold]
    #[inline(never)]
    fn unbalanced(&self, slot: &AtomicUsize, reader: ReaderId, depth: usize, cur: usize) {
        let now = cur & DEPTH_MASK;
        if depth < now {
            // Sections entered after ours are still open: leaving ours ends them too, so the
            // domain does not stay wedged by guards that will be dropped out of order.
            let value = if depth == 1 { 0 } else { cur & !DEPTH_MASK | (depth - 1) };
            // ORDERING: Release, as in `exit`.
            slot.store(value, Ordering::Release);
        }
        if thread::panicking() {
            return;
        }
        panic!(
            "bpfls-rcu: unbalanced {} read_unlock on {reader}: this guard entered at depth \
             {depth} but the section is at depth {now}; read-side sections must be left in \
             reverse order of entry",
            self.kind.name()
        );
    }
}

fn reader_cpu(r: ReaderId) -> Option<u32> {
    match r {
        ReaderId::Cpu(c) => Some(c),
        ReaderId::Task(_) => None,
    }
}

/// An RCU read-side section on one CPU (`rcu_read_lock()` … `rcu_read_unlock()`).
///
/// Dropping it leaves the section. It is neither `Send` nor `Sync`: a normal RCU reader runs
/// with preemption disabled and cannot migrate.
#[must_use = "the section ends when the guard is dropped"]
pub struct RcuReadGuard<'a> {
    inner: &'a Inner,
    slot: &'a AtomicUsize,
    cpu: u32,
    depth: usize,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for RcuReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcuReadGuard").field("cpu", &self.cpu).field("depth", &self.depth).finish()
    }
}

impl<'a> RcuReadGuard<'a> {
    #[inline(always)]
    pub(crate) fn new(inner: &'a Inner, cpu: u32) -> Self {
        let slot = cpu_slot(inner, cpu);
        let depth = inner.enter(slot, ReaderId::Cpu(cpu));
        RcuReadGuard { inner, slot, cpu, depth, _not_send: PhantomData }
    }

    /// The CPU the section runs on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Nesting depth of this section (1 = outermost).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Leaves the section, asserting that the caller runs on the CPU it was entered on.
    ///
    /// # Panics
    ///
    /// If `cpu` is not the CPU the section was entered on.
    pub fn unlock_on(self, cpu: u32) {
        if cpu != self.cpu {
            let entered = self.cpu;
            // Leave the section where it really is before reporting, so the domain stays
            // consistent for whoever catches the panic.
            drop(self);
            panic!(
                "bpfls-rcu: rcu_read_unlock() on CPU {cpu} for a section entered on CPU \
                 {entered}: a normal RCU read-side section cannot migrate (preemption is \
                 disabled inside it)"
            );
        }
    }
}

impl Drop for RcuReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.inner.exit(self.slot, self.depth, ReaderId::Cpu(self.cpu));
    }
}

#[inline(always)]
fn cpu_slot(inner: &Inner, cpu: u32) -> &AtomicUsize {
    match inner.cpu_slots.get(cpu as usize) {
        Some(s) => s,
        None => cpu_out_of_range(inner, cpu),
    }
}

#[cold]
#[inline(never)]
fn cpu_out_of_range(inner: &Inner, cpu: u32) -> ! {
    panic!(
        "bpfls-rcu: CPU {cpu} is out of range: the {} domain has {} CPUs",
        inner.kind.name(),
        inner.cpu_slots.len()
    )
}

/// A task registered as a Tasks-Trace reader (the per-task `trc_reader_nesting` state).
///
/// Dropping it unregisters the task (task exit).
pub struct TaskReader<'d> {
    inner: &'d Inner,
    task: u64,
    index: usize,
    slot: Arc<Slot>,
}

impl fmt::Debug for TaskReader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskReader").field("task", &self.task).finish()
    }
}

impl<'d> TaskReader<'d> {
    pub(crate) fn register(inner: &'d Inner, task: u64) -> Self {
        debug_assert_eq!(inner.kind, Kind::TasksTrace);
        let slot = Arc::new(CachePadded::new(AtomicUsize::new(0)));
        let mut tasks = inner.tasks.lock();
        if tasks.slots.iter().flatten().any(|(t, _)| *t == task) {
            drop(tasks);
            panic!("bpfls-rcu: task {task} is already registered with the tasks_trace domain");
        }
        let index = match tasks.slots.iter().position(Option::is_none) {
            Some(i) => {
                tasks.slots[i] = Some((task, slot.clone()));
                i
            }
            None => {
                tasks.slots.push(Some((task, slot.clone())));
                tasks.slots.len() - 1
            }
        };
        drop(tasks);
        rcu_event!(inner, "task_register", task);
        TaskReader { inner, task, index, slot }
    }

    /// The task id.
    pub fn task(&self) -> u64 {
        self.task
    }

    /// Whether the task is inside a Tasks-Trace section now.
    pub fn in_section(&self) -> bool {
        self.slot.load(Ordering::Relaxed) & DEPTH_MASK != 0
    }
}

impl Drop for TaskReader<'_> {
    fn drop(&mut self) {
        let inside = self.in_section();
        self.inner.tasks.lock().slots[self.index] = None;
        rcu_event!(self.inner, "task_unregister", task = self.task);
        if inside && !thread::panicking() {
            panic!(
                "bpfls-rcu: task {} exited inside an RCU Tasks Trace read-side section (a guard \
                 was leaked); its grace periods would never end",
                self.task
            );
        }
    }
}

/// An RCU Tasks-Trace read-side section of one task (`rcu_read_lock_trace()` …).
///
/// The task may block while holding it; it is `Send` because a sleeping task may resume on
/// another CPU.
#[must_use = "the section ends when the guard is dropped"]
pub struct TraceReadGuard<'a> {
    inner: &'a Inner,
    slot: &'a AtomicUsize,
    task: &'a TaskReader<'a>,
    depth: usize,
}

impl fmt::Debug for TraceReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceReadGuard")
            .field("task", &self.task.task)
            .field("depth", &self.depth)
            .finish()
    }
}

impl<'a> TraceReadGuard<'a> {
    #[inline(always)]
    pub(crate) fn new(inner: &'a Inner, task: &'a TaskReader<'a>) -> Self {
        if !std::ptr::eq(inner, task.inner) {
            foreign_task(task.task);
        }
        let slot: &AtomicUsize = &task.slot;
        let depth = inner.enter(slot, ReaderId::Task(task.task));
        TraceReadGuard { inner, slot, task, depth }
    }

    /// The task.
    pub fn task(&self) -> u64 {
        self.task.task
    }

    /// Nesting depth of this section (1 = outermost).
    pub fn depth(&self) -> usize {
        self.depth
    }
}

#[cold]
#[inline(never)]
fn foreign_task(task: u64) -> ! {
    panic!("bpfls-rcu: task {task} is registered with another tasks_trace domain")
}

impl Drop for TraceReadGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.inner.exit(self.slot, self.depth, ReaderId::Task(self.task.task));
    }
}
