//! `bpf_mem_alloc`: per-CPU object caches over the checked slab.
//!
//! # Why per-CPU caches, and why they are dangerous
//!
//! BPF programs allocate in any context (NMI included), where `kmalloc` may not be called.
//! `bpf_mem_alloc` keeps a per-CPU free list, refilled and trimmed by a per-CPU `irq_work`
//! between the low and high watermarks. A free puts the object straight back on the current
//! CPU's list, so the next allocation there may return it at once: **immediate reuse**. Memory
//! goes back to the slab only after a Tasks-Trace grace period (chained through an RCU one
//! when `rcu_trace_implies_rcu_gp()` is false), so a stale reader always sees *some* object of
//! the same cache, never foreign memory. Whether a stale reader may exist at all is the
//! caller's decision, made by choosing the free: [`MemAlloc::free`] (no reader can hold it),
//! [`MemAlloc::free_rcu`] (RCU readers may, until a grace period), [`MemAlloc::raw_free`] (the
//! caller already waited).
//!
//! # The lists of one per-CPU cache (kernel names)
//!
//! ```text
//!  alloc ◄── free_llist ◄── free ──────────────────── (free_cnt, low/high/batch)
//!               │   ▲ refill (alloc_bulk): free_by_rcu_ttrace, then waiting_for_gp_ttrace,
//!               │   │                      then the slab
//!               │   └───────────────────────────────────────────────┐
//!     trim (free_bulk, > high)                                       │
//!               ▼                                                    │
//!  free_rcu ─► free_by_rcu ─► waiting_for_gp ─(RCU GP)─► tgt's free_by_rcu_ttrace
//!                                                          │
//!                                  waiting_for_gp_ttrace ◄─┘ (do_call_rcu_ttrace)
//!                                          │
//!                             (Tasks-Trace GP [+ RCU GP]) ─► slab
//! ```
//!
//! `free_llist_extra` / `free_llist_extra_rcu` take frees that arrive while the cache is active
//! on this CPU (the NMI case). The "IRQs off" of the kernel is a per-cache spin lock here, and
//! `active` is the same re-entrancy counter: an allocation that finds the cache active fails,
//! as in the kernel. No probe point is passed while a cache lock is held, so a stepped
//! executor never switches CPUs inside one.

use crate::slab::{FreeKind, Slab, SlabObject, State, alloc_event};
use crate::{
    Account, AllocError, HEADER, Handle, MemError, SIZE_CLASSES, Violations, Watermarks,
    size_class, watermarks,
};
use bpfls_rcu::Domains;
use bpfls_sync::atomic::{AtomicBool, AtomicU32, Ordering};
use bpfls_sync::probe::Probes;
use bpfls_sync::thread::{self, JoinHandle};
use bpfls_sync::{Arc, CachePadded, Condvar, Mutex, SpinLock};
use std::collections::VecDeque;
use std::fmt;

/// Largest fixed unit size accepted (header included). Local storage's largest selem is
/// about 64 KiB; anything above this is a configuration error, not a request to honour.
pub const MAX_FIXED_UNIT: usize = 1 << 20;

/// Slots per class when the configuration does not say: 4096, or 1 MiB of objects.
fn default_capacity(unit_size: usize) -> u32 {
    (DEFAULT_CLASS_BYTES / unit_size).clamp(64, 4096) as u32
}

const DEFAULT_CLASS_BYTES: usize = 1 << 20;

/// How big the objects are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitSize {
    /// One unit size (`bpf_mem_alloc_init(ma, size, false)`): each unit is `size + 8` bytes.
    Fixed(usize),
    /// The 11 size classes (`size == 0`): 96, 192, 16, 32, ..., 4096 bytes.
    Classes,
}

/// A deliberate bug, for proving that the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// `free_rcu` behaves like `free`: the object is reusable before the grace period.
    FreeRcuReusesNow,
}

/// How a [`MemAlloc`] is built.
#[derive(Debug, Clone)]
pub struct MemAllocConfig {
    /// Cache name (reports, traces).
    pub name: &'static str,
    /// Logical CPUs.
    pub cpus: u32,
    /// Object size(s).
    pub unit: UnitSize,
    /// Slots per size class (the slab's capacity). `None`: 4096 slots, or fewer for big units
    /// (1 MiB of objects per class at most), since every slot's object is built up front.
    pub capacity: Option<u32>,
    /// Run refill/trim work on a worker thread (threaded mode). Without one, work waits for
    /// [`MemAlloc::run_work`] (stepped mode, loom models).
    pub work_thread: bool,
    /// A deliberate bug, if any.
    pub mutation: Option<Mutation>,
    /// Probe points: `mem_cache_active` (inside the re-entrancy window), `slab_alloc` (fault
    /// injection: `Fail` makes it `-ENOMEM`), `slab_free`.
    pub probes: Probes,
}

impl MemAllocConfig {
    /// Defaults: automatic capacity, a work thread outside the model checkers, no mutation.
    pub fn new(name: &'static str, cpus: u32, unit: UnitSize) -> Self {
        MemAllocConfig {
            name,
            cpus,
            unit,
            capacity: None,
            work_thread: !bpfls_sync::MODEL,
            mutation: None,
            probes: Probes::new(),
        }
    }

    /// Another capacity per class.
    pub fn with_capacity(self, capacity: u32) -> Self {
        MemAllocConfig { capacity: Some(capacity), ..self }
    }

    /// Without a work thread: work runs in [`MemAlloc::run_work`].
    pub fn without_work_thread(self) -> Self {
        MemAllocConfig { work_thread: false, ..self }
    }

    /// With a deliberate bug.
    pub fn with_mutation(self, m: Mutation) -> Self {
        MemAllocConfig { mutation: Some(m), ..self }
    }

    /// With probe points.
    pub fn with_probes(self, probes: Probes) -> Self {
        MemAllocConfig { probes, ..self }
    }
}

/// The lists of one per-CPU cache (slot indices into the class's slab).
#[derive(Debug, Default)]
struct Lists {
    free_llist: Vec<u32>,
    free_cnt: usize,
    free_llist_extra: Vec<u32>,
    free_by_rcu: Vec<u32>,
    free_llist_extra_rcu: Vec<u32>,
    waiting_for_gp: Vec<u32>,
    call_rcu_in_progress: bool,
    free_by_rcu_ttrace: Vec<u32>,
    waiting_for_gp_ttrace: Vec<u32>,
    call_rcu_ttrace_in_progress: bool,
    /// CPU whose cache bulk-freed objects go to (from the last freed object's hint).
    tgt: u32,
    draining: bool,
    /// Work for this cache is queued and has not started.
    refill_pending: bool,
}

/// One CPU's `bpf_mem_cache`.
#[derive(Debug)]
struct Cache {
    /// `active`: re-entrancy counter. Relaxed: it only detects nesting; exclusion between
    /// threads is the `lists` lock.
    active: AtomicU32,
    lists: SpinLock<Lists>,
}

/// A snapshot of one per-CPU cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// `free_cnt`.
    pub free_cnt: usize,
    /// Length of `free_llist` (equals `free_cnt`: I14).
    pub free_llist: usize,
    /// Length of `free_llist_extra`.
    pub free_llist_extra: usize,
    /// Length of `free_by_rcu`.
    pub free_by_rcu: usize,
    /// Length of `free_llist_extra_rcu`.
    pub free_llist_extra_rcu: usize,
    /// Length of `waiting_for_gp`.
    pub waiting_for_gp: usize,
    /// An RCU callback of this cache is in flight.
    pub call_rcu_in_progress: bool,
    /// Length of `free_by_rcu_ttrace`.
    pub free_by_rcu_ttrace: usize,
    /// Length of `waiting_for_gp_ttrace`.
    pub waiting_for_gp_ttrace: usize,
    /// A Tasks-Trace callback of this cache is in flight.
    pub call_rcu_ttrace_in_progress: bool,
    /// The thresholds.
    pub watermarks: Watermarks,
}

struct Class<T> {
    unit_size: usize,
    wm: Watermarks,
    slab: Slab<T>,
    caches: Box<[CachePadded<Cache>]>,
}

#[derive(Debug, Default)]
struct WorkQueue {
    pending: VecDeque<(u8, u32)>,
    shutdown: bool,
    idle: bool,
}

struct Inner<T> {
    name: &'static str,
    cpus: u32,
    fixed: bool,
    classes: Box<[Class<T>]>,
    domains: Arc<Domains>,
    work: Mutex<WorkQueue>,
    work_cv: Condvar,
    destroyed: AtomicBool,
    mutation: Option<Mutation>,
    probes: Probes,
}

/// What [`MemAlloc::destroy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestroyReport {
    /// Objects drained from the per-CPU lists back to the slab.
    pub drained: usize,
    /// Whether callbacks were in flight, so the final free waited for the barriers.
    pub waited_for_callbacks: bool,
    /// Objects still out of the slab afterwards (each also reported as a leak).
    pub leaked: usize,
}

/// The `bpf_mem_alloc` model. See the module documentation.
pub struct MemAlloc<T: SlabObject> {
    inner: Arc<Inner<T>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<T: SlabObject> fmt::Debug for MemAlloc<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemAlloc")
            .field("name", &self.inner.name)
            .field("cpus", &self.inner.cpus)
            .field("classes", &self.inner.classes.len())
            .finish_non_exhaustive()
    }
}

impl<T: SlabObject> MemAlloc<T> {
    /// Builds the allocator and prefills every per-CPU cache (`bpf_mem_alloc_init`).
    pub fn new(
        cfg: MemAllocConfig,
        domains: Arc<Domains>,
        account: Account,
        violations: Violations,
    ) -> Result<Self, MemError> {
        if cfg.cpus == 0 {
            return Err(MemError::BadConfig(format!("`{}`: at least one CPU is needed", cfg.name)));
        }
        if cfg.capacity == Some(0) {
            return Err(MemError::BadConfig(format!(
                "`{}`: capacity must be at least 1",
                cfg.name
            )));
        }
        let units: Vec<usize> = match cfg.unit {
            UnitSize::Fixed(0) => {
                return Err(MemError::BadSize { size: 0, reason: "a unit size of 0 bytes" });
            }
            UnitSize::Fixed(n) if n > MAX_FIXED_UNIT - HEADER => {
                return Err(MemError::BadSize {
                    size: n,
                    reason: "larger than the 1 MiB unit cap",
                });
            }
            UnitSize::Fixed(n) => vec![n + HEADER],
            UnitSize::Classes => SIZE_CLASSES.to_vec(),
        };
        let classes = units
            .iter()
            .enumerate()
            .map(|(i, &unit_size)| Class {
                unit_size,
                wm: watermarks(unit_size),
                slab: Slab::new(
                    cfg.name,
                    i as u8,
                    unit_size,
                    cfg.capacity.unwrap_or_else(|| default_capacity(unit_size)),
                    account.clone(),
                    violations.clone(),
                    cfg.probes.clone(),
                ),
                caches: (0..cfg.cpus)
                    .map(|_| {
                        CachePadded::new(Cache {
                            active: AtomicU32::new(0),
                            lists: SpinLock::new(Lists::default()),
                        })
                    })
                    .collect(),
            })
            .collect();
        let inner = Arc::new(Inner {
            name: cfg.name,
            cpus: cfg.cpus,
            fixed: matches!(cfg.unit, UnitSize::Fixed(_)),
            classes,
            domains,
            work: Mutex::new(WorkQueue::default()),
            work_cv: Condvar::new(),
            destroyed: AtomicBool::new(false),
            mutation: cfg.mutation,
            probes: cfg.probes,
        });
        for class in 0..inner.classes.len() {
            for cpu in 0..cfg.cpus {
                let n = inner.classes[class].wm.prefill;
                inner.alloc_bulk(class, cpu, n, "prefill");
            }
        }
        let worker = cfg.work_thread.then(|| {
            let inner = inner.clone();
            thread::spawn_named(format!("bpfls-{}-refill", cfg.name), move || {
                Inner::work_loop(inner)
            })
        });
        Ok(MemAlloc { inner, worker: Mutex::new(worker) })
    }

    /// The allocator's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Logical CPUs.
    pub fn cpus(&self) -> u32 {
        self.inner.cpus
    }

    /// The slab of size class `class` (0 in fixed-size mode).
    pub fn slab(&self, class: u8) -> &Slab<T> {
        &self.inner.classes[class as usize].slab
    }

    /// Unit size of class `class`, header included.
    pub fn unit_size(&self, class: u8) -> usize {
        self.inner.classes[class as usize].unit_size
    }

    fn live(&self) -> Result<&Arc<Inner<T>>, MemError> {
        // ORDERING: Acquire pairs with the Release store in `destroy`: an operation that sees
        // the allocator alive started before the teardown's drain.
        if self.inner.destroyed.load(Ordering::Acquire) {
            return Err(MemError::Destroyed { name: self.inner.name });
        }
        Ok(&self.inner)
    }

    fn check_cpu(&self, cpu: u32) -> Result<(), MemError> {
        if cpu >= self.inner.cpus {
            return Err(MemError::BadCpu { cpu, cpus: self.inner.cpus });
        }
        Ok(())
    }

    /// `bpf_mem_cache_alloc` on `cpu` (fixed-size mode).
    pub fn alloc(&self, cpu: u32) -> Result<Handle, MemError> {
        let inner = self.live()?;
        self.check_cpu(cpu)?;
        if !inner.fixed {
            return Err(MemError::BadSize {
                size: 0,
                reason: "a size-class allocator needs alloc_size(cpu, size)",
            });
        }
        Ok(inner.unit_alloc(0, cpu)?)
    }

    /// `bpf_mem_cache_alloc_flags(ma, GFP_KERNEL)` on `cpu` (fixed-size mode): like
    /// [`alloc`](Self::alloc), but when the per-CPU list has nothing, a sleepable caller
    /// allocates straight from the slab (so only the slab's limits can make it fail).
    pub fn alloc_sleepable(&self, cpu: u32) -> Result<Handle, MemError> {
        match self.alloc(cpu) {
            Err(MemError::Alloc(AllocError::Empty | AllocError::Reentered)) => {
                let cl = &self.inner.classes[0];
                let h = cl.slab.alloc("mem_alloc_sleepable")?;
                cl.slab.set_hint(h.slot(), u64::from(cpu));
                Ok(h)
            }
            r => r,
        }
    }

    /// `bpf_mem_alloc(ma, size)` on `cpu` (size-class mode; `size` excludes the header). In
    /// fixed-size mode any size that fits the unit is served from the one cache.
    pub fn alloc_size(&self, cpu: u32, size: usize) -> Result<Handle, MemError> {
        let inner = self.live()?;
        self.check_cpu(cpu)?;
        let class = inner.class_for_size(size)?;
        Ok(inner.unit_alloc(class, cpu)?)
    }

    /// `bpf_mem_cache_free` on `cpu`: the object is reusable at once (on `cpu`'s list).
    pub fn free(&self, cpu: u32, h: Handle) -> Result<(), MemError> {
        let inner = self.live()?;
        self.check_cpu(cpu)?;
        Inner::unit_free(inner, cpu, h, false)
    }

    /// `bpf_mem_cache_free_rcu` on `cpu`: reusable only after an RCU grace period.
    pub fn free_rcu(&self, cpu: u32, h: Handle) -> Result<(), MemError> {
        let inner = self.live()?;
        self.check_cpu(cpu)?;
        if inner.mutation == Some(Mutation::FreeRcuReusesNow) {
            return Inner::unit_free(inner, cpu, h, false);
        }
        Inner::unit_free(inner, cpu, h, true)
    }

    /// `bpf_mem_cache_raw_free`: straight back to the slab; the caller has already waited
    /// for every grace period that protects the object.
    pub fn raw_free(&self, h: Handle) -> Result<(), MemError> {
        let inner = self.live()?;
        let slab = inner.slab_of(h, "mem_raw_free")?;
        Ok(slab.free(h, "mem_raw_free")?)
    }

    /// Checked access to `h`'s object.
    pub fn get(&self, h: Handle, site: &'static str) -> Result<&T, MemError> {
        Ok(self.inner.slab_of(h, site)?.get(h, site)?)
    }

    /// Checked access around a closure (checks before and after).
    pub fn read<R>(
        &self,
        h: Handle,
        site: &'static str,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, MemError> {
        Ok(self.inner.slab_of(h, site)?.read(h, site, f)?)
    }

    /// Whether an access through `h` would be allowed now (no report).
    pub fn is_live(&self, h: Handle) -> bool {
        self.inner.classes.get(h.class() as usize).is_some_and(|cl| cl.slab.is_live(h))
    }

    /// Runs one queued refill/trim work item (the stepped mode's schedulable step); returns
    /// the `(class, cpu)` it served, or `None` when nothing is queued.
    pub fn run_work(&self) -> Option<(u8, u32)> {
        let item = self.inner.work.lock().pending.pop_front();
        if let Some((class, cpu)) = item {
            Inner::refill(&self.inner, class as usize, cpu);
        }
        item
    }

    /// Runs queued work until none is left; returns how many items ran.
    pub fn run_all_work(&self) -> usize {
        let mut n = 0;
        while self.run_work().is_some() {
            n += 1;
        }
        n
    }

    /// Work items queued and not yet started.
    pub fn pending_work(&self) -> usize {
        self.inner.work.lock().pending.len()
    }

    /// A snapshot of one per-CPU cache.
    pub fn cache_stats(&self, class: u8, cpu: u32) -> CacheStats {
        let cl = &self.inner.classes[class as usize];
        let l = cl.caches[cpu as usize].lists.lock();
        CacheStats {
            free_cnt: l.free_cnt,
            free_llist: l.free_llist.len(),
            free_llist_extra: l.free_llist_extra.len(),
            free_by_rcu: l.free_by_rcu.len(),
            free_llist_extra_rcu: l.free_llist_extra_rcu.len(),
            waiting_for_gp: l.waiting_for_gp.len(),
            call_rcu_in_progress: l.call_rcu_in_progress,
            free_by_rcu_ttrace: l.free_by_rcu_ttrace.len(),
            waiting_for_gp_ttrace: l.waiting_for_gp_ttrace.len(),
            call_rcu_ttrace_in_progress: l.call_rcu_ttrace_in_progress,
            watermarks: cl.wm,
        }
    }

    /// I14 at a quiescent point: `free_cnt` equals the list length, no object is on two
    /// lists, and every listed object is in the state its list implies. Returns the problems.
    pub fn check_lists(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (ci, cl) in self.inner.classes.iter().enumerate() {
            let mut seen = std::collections::HashMap::new();
            for (cpu, cache) in cl.caches.iter().enumerate() {
                let l = cache.lists.lock();
                if l.free_cnt != l.free_llist.len() {
                    problems.push(format!(
                        "class {ci} cpu {cpu}: free_cnt {} but free_llist holds {}",
                        l.free_cnt,
                        l.free_llist.len()
                    ));
                }
                let lists: [(&str, &Vec<u32>, State); 7] = [
                    ("free_llist", &l.free_llist, State::Cached),
                    ("free_llist_extra", &l.free_llist_extra, State::Cached),
                    ("free_by_rcu", &l.free_by_rcu, State::RcuDeferred),
                    ("free_llist_extra_rcu", &l.free_llist_extra_rcu, State::RcuDeferred),
                    ("waiting_for_gp", &l.waiting_for_gp, State::RcuDeferred),
                    ("free_by_rcu_ttrace", &l.free_by_rcu_ttrace, State::Cached),
                    ("waiting_for_gp_ttrace", &l.waiting_for_gp_ttrace, State::Cached),
                ];
                for (name, list, want) in lists {
                    for &slot in list {
                        if let Some(prev) = seen.insert(slot, (cpu, name)) {
                            problems.push(format!(
                                "class {ci}: slot {slot} on cpu {cpu} {name} and on cpu {} {}",
                                prev.0, prev.1
                            ));
                        }
                        let s = cl.slab.state(slot);
                        if s != want {
                            problems.push(format!(
                                "class {ci}: slot {slot} on cpu {cpu} {name} is {s:?}, expected {want:?}"
                            ));
                        }
                    }
                }
            }
        }
        problems
    }

    /// `bpf_mem_alloc_destroy`: drains every list of every CPU back to the slab; if grace
    /// periods are still in flight, waits for them (`rcu_barrier`, `rcu_barrier_tasks_trace`,
    /// and `rcu_barrier` again when Tasks-Trace does not imply RCU); then reports every object
    /// still out of the slab as a leak. No alloc or free may follow (they return
    /// [`MemError::Destroyed`]).
    pub fn destroy(&self) -> Result<DestroyReport, MemError> {
        let inner = self.live()?;
        // ORDERING: Release pairs with the Acquire load in `live`.
        inner.destroyed.store(true, Ordering::Release);
        self.stop_worker();
        inner.work.lock().pending.clear();
        let mut report = DestroyReport::default();
        for cl in inner.classes.iter() {
            for cache in cl.caches.iter() {
                let mut guard = cache.lists.lock();
                let l: &mut Lists = &mut guard;
                l.draining = true;
                report.waited_for_callbacks |=
                    l.call_rcu_in_progress || l.call_rcu_ttrace_in_progress;
                let mut all = Vec::new();
                for list in [
                    &mut l.free_llist,
                    &mut l.free_llist_extra,
                    &mut l.free_by_rcu,
                    &mut l.free_llist_extra_rcu,
                    &mut l.waiting_for_gp,
                    &mut l.free_by_rcu_ttrace,
                    &mut l.waiting_for_gp_ttrace,
                ] {
                    all.append(list);
                }
                l.free_cnt = 0;
                drop(guard);
                report.drained += all.len();
                for slot in all {
                    cl.slab.release(slot, "mem_destroy");
                }
            }
        }
        if report.waited_for_callbacks {
            let d = &inner.domains;
            d.rcu.barrier();
            d.tasks_trace.barrier();
            // Needed by the kernel only when Tasks-Trace does not imply RCU; here the implied
            // RCU grace period may still hold a chained free (`Domains::defer`).
            d.rcu.barrier();
        }
        report.leaked = inner.classes.iter().map(|cl| cl.slab.check_leaks("mem_destroy")).sum();
        alloc_event!(inner, "destroy", drained = report.drained, leaked = report.leaked);
        Ok(report)
    }

    fn stop_worker(&self) {
        let worker = self.worker.lock().take();
        if let Some(w) = worker {
            self.inner.work.lock().shutdown = true;
            self.inner.work_cv.notify_all();
            let _ = w.join();
        }
    }
}

impl<T: SlabObject> Drop for MemAlloc<T> {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl<T: SlabObject> Inner<T> {
    fn slab_of(&self, h: Handle, site: &'static str) -> Result<&Slab<T>, MemError> {
        match self.classes.get(h.class() as usize) {
            Some(cl) => Ok(&cl.slab),
            // A forged class: report it against class 0's slab, which names the allocator.
            None => Err(MemError::Violation(
                self.classes[0]
                    .slab
                    .get(h, site)
                    .err()
                    .expect("a handle of a class this allocator does not have is never valid"),
            )),
        }
    }

    /// The class serving a request of `size` bytes (header excluded).
    fn class_for_size(&self, size: usize) -> Result<usize, MemError> {
        if size == 0 {
            return Err(MemError::BadSize { size, reason: "a request of 0 bytes" });
        }
        if self.fixed {
            return match size.checked_add(HEADER) {
                Some(n) if n <= self.classes[0].unit_size => Ok(0),
                _ => Err(MemError::BadSize { size, reason: "does not fit the fixed unit size" }),
            };
        }
        size.checked_add(HEADER).and_then(size_class).ok_or(MemError::BadSize {
            size,
            reason: "above BPF_MEM_ALLOC_SIZE_MAX (4096 bytes with the header)",
        })
    }

    fn raise(&self, class: usize, cpu: u32) {
        let mut w = self.work.lock();
        w.pending.push_back((class as u8, cpu));
        let wake = std::mem::take(&mut w.idle);
        drop(w);
        if wake {
            self.work_cv.notify_one();
        }
    }

    fn work_loop(this: Arc<Self>) {
        loop {
            let mut w = this.work.lock();
            while w.pending.is_empty() && !w.shutdown {
                w.idle = true;
                w = this.work_cv.wait(w);
                w.idle = false;
            }
            if w.shutdown {
                return;
            }
            let (class, cpu) = w.pending.pop_front().expect("not empty");
            drop(w);
            Inner::refill(&this, class as usize, cpu);
        }
    }

    /// Enters the cache of `cpu` (`inc_active`); `false` when it was already active (nested).
    fn enter(&self, cache: &Cache, cpu: u32) -> bool {
        let first = cache.active.fetch_add(1, Ordering::Relaxed) == 0;
        if self.probes.is_attached() {
            self.probes.hit("mem_cache_active", Some(cpu), &[("nested", u64::from(!first))]);
        }
        first
    }

    fn leave(&self, cache: &Cache) {
        cache.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// `unit_alloc`.
    fn unit_alloc(&self, class: usize, cpu: u32) -> Result<Handle, AllocError> {
        let cl = &self.classes[class];
        let cache = &cl.caches[cpu as usize];
        if !self.enter(cache, cpu) {
            self.leave(cache);
            alloc_event!(self, "alloc_fail", cpu, reason = "reentered");
            return Err(AllocError::Reentered);
        }
        let mut l = cache.lists.lock();
        let slot = l.free_llist.pop();
        if slot.is_some() {
            l.free_cnt -= 1;
        }
        let refill = l.free_cnt < cl.wm.low && !std::mem::replace(&mut l.refill_pending, true);
        drop(l);
        self.leave(cache);
        if refill {
            self.raise(class, cpu);
        }
        let Some(slot) = slot else {
            alloc_event!(self, "alloc_fail", cpu, reason = "empty");
            return Err(AllocError::Empty);
        };
        let h = cl.slab.hand_out(slot, State::Cached, "mem_alloc");
        cl.slab.set_hint(slot, u64::from(cpu));
        Ok(h)
    }

    /// `unit_free` / `unit_free_rcu`.
    fn unit_free(this: &Arc<Self>, cpu: u32, h: Handle, rcu: bool) -> Result<(), MemError> {
        let slab = this.slab_of(h, if rcu { "mem_free_rcu" } else { "mem_free" })?;
        let class = h.class() as usize;
        let cl = &this.classes[class];
        let (to, kind, site) = if rcu {
            (State::RcuDeferred, FreeKind::Rcu, "mem_free_rcu")
        } else {
            (State::Cached, FreeKind::Now, "mem_free")
        };
        slab.end_lifetime(h, to, kind, site)?;
        let hint = slab.hint(h.slot()) as u32;
        let cache = &cl.caches[cpu as usize];
        let first = this.enter(cache, cpu);
        let mut l = cache.lists.lock();
        l.tgt = hint;
        let work = if rcu {
            if first {
                l.free_by_rcu.push(h.slot())
            } else {
                l.free_llist_extra_rcu.push(h.slot())
            }
            !l.call_rcu_in_progress
        } else {
            if first {
                l.free_llist.push(h.slot());
                l.free_cnt += 1;
            } else {
                l.free_llist_extra.push(h.slot());
            }
            l.free_cnt > cl.wm.high
        };
        let raise = work && !std::mem::replace(&mut l.refill_pending, true);
        drop(l);
        this.leave(cache);
        if raise {
            this.raise(class, cpu);
        }
        Ok(())
    }

    /// `alloc_bulk`: up to `n` objects onto `cpu`'s free list, recycling Tasks-Trace-pending
    /// objects first, then from the slab. Slab allocations (a probe point) happen outside the
    /// cache lock.
    fn alloc_bulk(&self, class: usize, cpu: u32, n: usize, site: &'static str) {
        let cl = &self.classes[class];
        let cache = &cl.caches[cpu as usize];
        let mut got = Vec::with_capacity(n);
        {
            let mut l = cache.lists.lock();
            while got.len() < n {
                match l.free_by_rcu_ttrace.pop().or_else(|| l.waiting_for_gp_ttrace.pop()) {
                    Some(slot) => got.push(slot),
                    None => break,
                }
            }
        }
        let recycled = got.len();
        while got.len() < n {
            match cl.slab.alloc_cached(site) {
                Ok(slot) => got.push(slot),
                Err(_) => break,
            }
        }
        alloc_event!(self, "alloc_bulk", cpu, class, recycled, new = got.len() - recycled);
        let mut l = cache.lists.lock();
        l.free_cnt += got.len();
        l.free_llist.extend(got);
    }

    /// `bpf_mem_refill`: the per-CPU work item.
    fn refill(this: &Arc<Self>, class: usize, cpu: u32) {
        let cl = &this.classes[class];
        let cache = &cl.caches[cpu as usize];
        // The kernel runs this irq_work on the CPU itself, where it cannot overlap a normal
        // allocation; here it runs on a worker, so it excludes the CPU through the lists lock
        // alone and does not touch `active` (which would make a concurrent alloc on the CPU
        // fail as if re-entered).
        let mut l = cache.lists.lock();
        l.refill_pending = false;
        if l.draining {
            return;
        }
        let mut trimmed = Vec::new();
        let low = l.free_cnt < cl.wm.low;
        if !low && l.free_cnt > cl.wm.high {
            // free_bulk
            let keep = (cl.wm.low + cl.wm.high) / 2;
            while l.free_cnt > keep {
                trimmed.push(l.free_llist.pop().expect("free_cnt counts free_llist"));
                l.free_cnt -= 1;
            }
        }
        if !low && !trimmed.is_empty() {
            let extra = std::mem::take(&mut l.free_llist_extra);
            trimmed.extend(extra);
        }
        let tgt = l.tgt;
        drop(l);
        if low {
            this.alloc_bulk(class, cpu, cl.wm.batch, "alloc_bulk");
        }
        if !trimmed.is_empty() {
            alloc_event!(this, "free_bulk", cpu, class, objects = trimmed.len());
            cl.caches[tgt as usize].lists.lock().free_by_rcu_ttrace.extend(trimmed);
            Inner::do_call_rcu_ttrace(this, class, tgt);
        }
        Inner::check_free_by_rcu(this, class, cpu);
    }

    /// `do_call_rcu_ttrace`: sends `cpu`'s `free_by_rcu_ttrace` towards the slab behind a
    /// Tasks-Trace grace period (chained through RCU when it does not imply one).
    fn do_call_rcu_ttrace(this: &Arc<Self>, class: usize, cpu: u32) {
        let cl = &this.classes[class];
        let mut l = cl.caches[cpu as usize].lists.lock();
        if l.draining {
            let objs = std::mem::take(&mut l.free_by_rcu_ttrace);
            drop(l);
            for slot in objs {
                cl.slab.release(slot, "mem_drain");
            }
            return;
        }
        if l.call_rcu_ttrace_in_progress || l.free_by_rcu_ttrace.is_empty() {
            return;
        }
        l.call_rcu_ttrace_in_progress = true;
        let batch = std::mem::take(&mut l.free_by_rcu_ttrace);
        let n = batch.len();
        l.waiting_for_gp_ttrace.extend(batch);
        drop(l);
        let me = this.clone();
        let policy = this.domains.sleepable_policy();
        let obj = (class as u64) << 32 | u64::from(cpu);
        this.domains.defer(policy, obj, n * cl.unit_size, move || me.ttrace_done(class, cpu));
    }

    /// `__free_rcu_tasks_trace` / `__free_rcu`: what is still waiting goes to the slab.
    fn ttrace_done(&self, class: usize, cpu: u32) {
        let cl = &self.classes[class];
        let mut l = cl.caches[cpu as usize].lists.lock();
        let objs = std::mem::take(&mut l.waiting_for_gp_ttrace);
        drop(l);
        alloc_event!(self, "free_rcu_ttrace", cpu, class, objects = objs.len());
        for slot in objs {
            cl.slab.release(slot, "free_rcu_ttrace");
        }
        // Cleared last, as the kernel does: `destroy` that sees it clear knows this callback
        // has finished with the lists.
        cl.caches[cpu as usize].lists.lock().call_rcu_ttrace_in_progress = false;
    }

    /// `check_free_by_rcu`: starts an RCU grace period for the `free_rcu` objects of `cpu`,
    /// unless one is in flight.
    fn check_free_by_rcu(this: &Arc<Self>, class: usize, cpu: u32) {
        let cl = &this.classes[class];
        let mut l = cl.caches[cpu as usize].lists.lock();
        let extra = std::mem::take(&mut l.free_llist_extra_rcu);
        l.free_by_rcu.extend(extra);
        if l.call_rcu_in_progress || l.free_by_rcu.is_empty() || l.draining {
            return;
        }
        l.call_rcu_in_progress = true;
        let batch = std::mem::take(&mut l.free_by_rcu);
        let n = batch.len();
        l.waiting_for_gp.extend(batch);
        drop(l);
        let me = this.clone();
        let obj = (class as u64) << 32 | u64::from(cpu);
        this.domains
            .rcu
            .call_tagged(obj, n * cl.unit_size, move || Inner::rcu_done(&me, class, cpu));
    }

    /// `__free_by_rcu`: the RCU grace period of `cpu`'s batch ended; the objects become
    /// reusable on the target cache's `free_by_rcu_ttrace`.
    fn rcu_done(this: &Arc<Self>, class: usize, cpu: u32) {
        let cl = &this.classes[class];
        let mut l = cl.caches[cpu as usize].lists.lock();
        let batch = std::mem::take(&mut l.waiting_for_gp);
        let tgt = l.tgt;
        drop(l);
        for &slot in &batch {
            cl.slab.settle(slot);
        }
        alloc_event!(this, "free_by_rcu", cpu, class, objects = batch.len());
        cl.caches[tgt as usize].lists.lock().free_by_rcu_ttrace.extend(batch);
        Inner::do_call_rcu_ttrace(this, class, tgt);
        // Cleared last, as in `ttrace_done`.
        cl.caches[cpu as usize].lists.lock().call_rcu_in_progress = false;
    }
}
