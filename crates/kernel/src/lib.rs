//! The `Kernel` facade: the one value a user builds. It owns the RCU domains, the four storage
//! types (task, socket, inode, cgroup) over `bpfls-local-storage`, the owners, the fd table,
//! the per-CPU recursion guards and the violation collector, and it is the only crate that
//! knows what a task, a socket, an inode, a cgroup or an fd is.
//!
//! What it models, for the bpf_ma profile (the busy-counter era): owners with their lifetimes
//! (§1.6), the fd table, map creation with the attribute and BTF checks and map lifetime
//! through references (fds, in-flight syscalls, running programs; §2.8), the syscalls and the
//! storage helpers with the recursion guard (§2.11), socket clone on accept (§2.12), programs
//! of a type, sleepable or not, in a CPU context ([`ProgSpec`]), errors that say what they are
//! about ([`Error`]), in threaded mode and in stepped mode ([`Stepper`]: seeded, scripted,
//! planned or PCT schedules, CPU contexts, tracing programs at probe points, deadlock reports
//! with the wait-for cycle). The rqspinlock profile (V-RQ) is not modelled.
//!
//! ```
//! use bpfls_kernel::{Kernel, MapType};
//! use bpfls_local_storage::flags::{BPF_ANY, BPF_LOCAL_STORAGE_GET_F_CREATE};
//! use bpfls_local_storage::MapAttr;
//!
//! let k = Kernel::builder().cpus(2).build();
//! let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
//! let (_pid, pidfd) = k.task_spawn();
//! k.map_update_elem(0, map, pidfd, &[7; 8], BPF_ANY).unwrap();
//! assert_eq!(k.map_lookup_elem(1, map, pidfd).unwrap(), vec![7; 8]);
//! // A program on CPU 1 sees the same value through the helper.
//! let v = k.run_prog(1, false, |p| {
//!     p.storage_get(map, pidfd, None, BPF_LOCAL_STORAGE_GET_F_CREATE).map(|s| s.read("prog").unwrap())
//! });
//! assert_eq!(v, Some(vec![7; 8]));
//! k.task_exit(0, pidfd).unwrap();
//! k.close(0, map).unwrap();
//! assert_eq!(k.shutdown().unwrap(), 0);
//! ```

pub mod btf;
mod error;
mod owners;
mod stepped;

pub use error::{Error, ResultExt};
pub use owners::OwnerObj;
pub use stepped::{Action, CpuBody, Event, GRACE_PERIODS, GpDomain, RunReport, Schedule, Stepper};

use bpfls_local_storage::flags::{BPF_LOCAL_STORAGE_GET_F_CREATE, BPF_NOEXIST};
use bpfls_local_storage::{Errno, LocalStorage, MapAttr, Mutations, SelemRef, Smap, TypeConfig};
use bpfls_mem_alloc::Violations;
use bpfls_rcu::{Backend, Config, Domains};
use bpfls_sync::atomic::{AtomicU32, Ordering};
use bpfls_sync::{Arc, CachePadded, Mutex, untracked};
use std::collections::BTreeMap;
use std::fmt;

/// `bpf(2)` command numbers, the `cmd` field of the `sys_enter` probe point.
const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;

/// The semantics era a kernel reproduces (check C15: every test states the era its
/// expectations hold for). Only the bpf_ma era is modelled.
///
/// ```
/// use bpfls_kernel::{Kernel, Profile};
/// let k = Kernel::builder().profile(Profile::BpfMa).build();
/// assert_eq!(k.profile(), Profile::BpfMa);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Profile {
    /// v6.4 – v6.18: task and cgroup storage on `bpf_mem_alloc` (immediate reuse on
    /// `reuse_now`), sk and inode storage on kmalloc, the per-CPU busy counters, PREEMPT_RT
    /// forcing `bpf_mem_alloc` everywhere (Dec 2024).
    #[default]
    BpfMa,
}

/// The four local-storage map types.
///
/// ```
/// # use bpfls_kernel::{Kernel, MapType};
/// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
/// // The map type decides which fds are keys: an sk map takes socket fds, not pidfds.
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
/// let (_, sock) = k.socket_create();
/// let (_, pidfd) = k.task_spawn();
/// assert!(k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).is_ok());
/// let e = k.map_update_elem(0, map, pidfd, &[1; 8], BPF_ANY).unwrap_err();
/// assert_eq!(e.to_string(), format!("EBADF (9): fd {pidfd} is not a socket fd"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// `BPF_MAP_TYPE_TASK_STORAGE`.
    Task,
    /// `BPF_MAP_TYPE_SK_STORAGE`.
    Sk,
    /// `BPF_MAP_TYPE_INODE_STORAGE`.
    Inode,
    /// `BPF_MAP_TYPE_CGRP_STORAGE`.
    Cgrp,
}

impl MapType {
    const ALL: [MapType; 4] = [MapType::Task, MapType::Sk, MapType::Inode, MapType::Cgrp];

    fn index(self) -> usize {
        self as usize
    }

    /// Whether this type's helpers take the per-CPU busy counter (bpf_ma era: task, cgroup).
    fn has_busy_counter(self) -> bool {
        matches!(self, MapType::Task | MapType::Cgrp)
    }

    /// The owner kind's name in messages.
    pub(crate) fn owner_name(self) -> &'static str {
        match self {
            MapType::Task => "task",
            MapType::Sk => "socket",
            MapType::Inode => "inode",
            MapType::Cgrp => "cgroup",
        }
    }

    /// What a syscall key of this type is called.
    fn key_name(self) -> &'static str {
        match self {
            MapType::Task => "a pidfd",
            MapType::Sk => "a socket fd",
            MapType::Inode => "an inode's fd",
            MapType::Cgrp => "a cgroup fd",
        }
    }
}

/// The context a program runs in on its CPU. Contexts nest: a softirq may interrupt a task, a
/// hardirq a softirq, an NMI anything; in stepped mode a body placed in a higher context on a
/// CPU runs to completion before the code it interrupted resumes ([`Stepper::run_placed`]).
///
/// ```
/// # use bpfls_kernel::{Context, Kernel, ProgSpec, ProgType};
/// assert!(Context::Task < Context::Softirq && Context::Hardirq < Context::Nmi);
/// // Only task context may sleep.
/// let k = Kernel::builder().build();
/// let spec = ProgSpec::new(ProgType::Syscall).sleepable().in_context(Context::Softirq);
/// let e = k.run(0, spec, |_| ()).unwrap_err();
/// assert_eq!(e.detail(), "a sleepable program cannot run in Softirq context");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Context {
    /// Process context (syscalls, LSM hooks, preemptible).
    #[default]
    Task,
    /// Softirq (networking receive, timers).
    Softirq,
    /// Hardirq.
    Hardirq,
    /// NMI (perf events).
    Nmi,
}

/// A program's type, as far as the storage helpers care: the verifier gives tracing programs
/// (fentry, tp_btf, raw tracepoints, kprobes — anything that may run inside the storage code
/// itself) the `_recur` / `_tracing` helper protos, and everything else the plain ones.
///
/// ```
/// # use bpfls_kernel::{Context, Kernel, MapType, ProgSpec, ProgType, ResultExt};
/// # use bpfls_local_storage::{Errno, MapAttr};
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
/// let (_, sock) = k.socket_create();
/// let delete_in_nmi = |ty| {
///     let spec = ProgSpec::new(ty).in_context(Context::Nmi);
///     k.run(0, spec, |p| p.storage_delete(map, sock).errno()).unwrap()
/// };
/// // `bpf_sk_storage_delete_tracing` refuses NMI context; the plain helper looks, finds nothing.
/// assert_eq!(delete_in_nmi(ProgType::Tracing), Err(Errno::EPERM));
/// assert_eq!(delete_in_nmi(ProgType::Lsm), Err(Errno::ENOENT));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgType {
    /// `BPF_PROG_TYPE_TRACING` and the other tracing types: `_recur` / `_tracing` helpers.
    Tracing,
    /// `BPF_PROG_TYPE_LSM`: plain helpers.
    Lsm,
    /// An iterator (`BPF_TRACE_ITER`): plain helpers.
    Iter,
    /// `BPF_PROG_TYPE_SYSCALL`: plain helpers, sleepable.
    Syscall,
}

/// How a program runs: its type, whether it is sleepable, and its context.
///
/// ```
/// use bpfls_kernel::{Context, ProgSpec, ProgType};
/// let spec = ProgSpec::new(ProgType::Tracing).in_context(Context::Nmi);
/// assert!(!spec.sleepable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProgSpec {
    /// The program type.
    pub ty: ProgType,
    /// Sleepable: runs under the Tasks-Trace read lock and may block; else under RCU.
    pub sleepable: bool,
    /// The context it runs in.
    pub ctx: Context,
}

impl ProgSpec {
    /// A non-sleepable program of type `ty` in task context.
    ///
    /// ```
    /// use bpfls_kernel::{Context, ProgSpec, ProgType};
    /// let spec = ProgSpec::new(ProgType::Lsm);
    /// assert_eq!(spec, ProgSpec { ty: ProgType::Lsm, sleepable: false, ctx: Context::Task });
    /// ```
    pub fn new(ty: ProgType) -> Self {
        ProgSpec { ty, sleepable: false, ctx: Context::Task }
    }

    /// The same, sleepable.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, ProgSpec, ProgType};
    /// // A sleepable program holds off Tasks-Trace grace periods, not RCU ones: an RCU grace
    /// // period can end while it runs.
    /// let k = Kernel::builder().build();
    /// let spec = ProgSpec::new(ProgType::Syscall).sleepable();
    /// let rcu_gp_ended = k.run(0, spec, |_| {
    ///     let cookie = k.domains().rcu.get_state();
    ///     k.domains().rcu.synchronize();
    ///     k.domains().rcu.poll_state(cookie)
    /// });
    /// assert_eq!(rcu_gp_ended, Ok(true));
    /// ```
    pub fn sleepable(self) -> Self {
        ProgSpec { sleepable: true, ..self }
    }

    /// The same, in context `ctx`.
    ///
    /// ```
    /// # use bpfls_kernel::{Context, Kernel, ProgSpec, ProgType};
    /// let k = Kernel::builder().build();
    /// let spec = ProgSpec::new(ProgType::Tracing).in_context(Context::Hardirq);
    /// assert_eq!(spec.ty, ProgType::Tracing, "the rest is kept");
    /// assert_eq!(k.run(1, spec, |p| p.spec().ctx), Ok(Context::Hardirq));
    /// ```
    pub fn in_context(self, ctx: Context) -> Self {
        ProgSpec { ctx, ..self }
    }

    fn recur(&self) -> bool {
        self.ty == ProgType::Tracing
    }
}

/// How a [`Kernel`] is built.
///
/// ```
/// use bpfls_kernel::Kernel;
/// let k = Kernel::builder().cpus(4).optmem_max(1 << 16).trace_implies_rcu(false).build();
/// assert_eq!(k.cpus(), 4);
/// assert!(!k.domains().trace_implies_rcu());
/// ```
#[derive(Debug, Clone)]
pub struct KernelBuilder {
    profile: Profile,
    cpus: u32,
    trace_implies_rcu: bool,
    optmem_max: u64,
    preempt_rt: bool,
    probes: bpfls_sync::probe::Probes,
    stepper: Option<untracked::Arc<Stepper>>,
    no_busy_counter: bool,
    busted_rcu: bool,
    capacity: Option<u32>,
    mutations: Mutations,
}

impl KernelBuilder {
    /// The era to reproduce (default and only one: [`Profile::BpfMa`]).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, Profile};
    /// let k = Kernel::builder().profile(Profile::BpfMa).cpus(4).build();
    /// assert_eq!((k.profile(), k.cpus()), (Profile::BpfMa, 4));
    /// ```
    pub fn profile(self, profile: Profile) -> Self {
        KernelBuilder { profile, ..self }
    }

    /// Logical CPUs (default 2).
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().cpus(4).build();
    /// assert_eq!(k.cpus(), 4);
    /// assert_eq!(k.close(4, 3).unwrap_err().detail(), "CPU 4 does not exist (4 CPUs)");
    /// assert_eq!(Kernel::builder().cpus(0).build().cpus(), 1, "at least one");
    /// ```
    pub fn cpus(self, cpus: u32) -> Self {
        KernelBuilder { cpus, ..self }
    }

    /// `rcu_trace_implies_rcu_gp()` (default true).
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// assert!(Kernel::builder().build().domains().trace_implies_rcu());
    /// let k = Kernel::builder().trace_implies_rcu(false).build();
    /// // Frees after a Tasks-Trace grace period now wait for an RCU one as well.
    /// assert!(!k.domains().trace_implies_rcu());
    /// ```
    pub fn trace_implies_rcu(self, trace_implies_rcu: bool) -> Self {
        KernelBuilder { trace_implies_rcu, ..self }
    }

    /// The sockets' `optmem_max` (default 20480, the kernel's usual sysctl value).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().optmem_max(64).build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// let e = k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap_err();
    /// assert_eq!(e, Errno::ENOMEM, "{e}");
    /// assert_eq!(k.socket_charge(sock), Ok(0));
    /// ```
    pub fn optmem_max(self, optmem_max: u64) -> Self {
        KernelBuilder { optmem_max, ..self }
    }

    /// PREEMPT_RT: every storage type uses the per-CPU allocator.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// let sk_storages = |k: &Kernel| k.storage(MapType::Sk).storage_slab().stats().outstanding;
    /// // Socket storage comes from kmalloc, allocated on demand...
    /// assert_eq!(sk_storages(&Kernel::builder().build()), 0);
    /// // ...except on PREEMPT_RT, where the per-CPU caches are filled ahead of use.
    /// assert!(sk_storages(&Kernel::builder().preempt_rt(true).build()) > 0);
    /// ```
    pub fn preempt_rt(self, preempt_rt: bool) -> Self {
        KernelBuilder { preempt_rt, ..self }
    }

    /// Probe points of the storage core (`lookup_cache_insert`, the lock and allocation sites):
    /// the attach point of simulated tracing programs (the fentry analogue).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// use bpfls_sync::probe::{FailNth, Probes};
    /// use std::sync::Arc;
    /// // A hook that fails nothing (nth = 0): it counts the passes of `selem_link`, where an
    /// // update links an element into an existing storage, under the storage lock.
    /// let links = Arc::new(FailNth::new("selem_link", 0));
    /// let k = Kernel::builder().probes(Probes::with_hook(links.clone())).build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap(); // a new storage with it
    /// assert_eq!(links.passes(), 0);
    /// k.map_update_elem(0, map, task, &[2; 8], BPF_ANY).unwrap(); // replaces the element
    /// assert_eq!(links.passes(), 1);
    /// ```
    pub fn probes(self, probes: bpfls_sync::probe::Probes) -> Self {
        KernelBuilder { probes, ..self }
    }

    /// Stepped mode: the grace periods move only when `stepper` steps them, the per-CPU
    /// caches refill inline, and every probe point yields to `stepper` (this replaces
    /// [`probes`](Self::probes)). Run the workload with [`Stepper::run`].
    ///
    /// ```
    /// # use bpfls_kernel::{CpuBody, Kernel, MapType, Schedule, Stepper};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// # use std::sync::Arc;
    /// let stepper = Stepper::new(Schedule::Random(7));
    /// let k = Arc::new(Kernel::builder().cpus(2).stepped(&stepper).build());
    /// # let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// # let ((_, t0), (_, t1)) = (k.task_spawn(), k.task_spawn());
    /// // CPU `cpu` updates `task`'s element; the stepper interleaves the CPUs at probe points.
    /// let body = |cpu: u32, task| -> CpuBody {
    ///     let k = k.clone();
    ///     Box::new(move || k.map_update_elem(cpu, map, task, &[1; 8], BPF_ANY).unwrap())
    /// };
    /// let report = stepper.run(vec![body(0, t0), body(1, t1)]);
    /// assert!(report.results.iter().all(Result::is_ok) && !report.deadlock);
    /// assert!(report.events.iter().any(|&(cpu, _)| cpu == 1), "CPU 1 passed probe points");
    /// ```
    pub fn stepped(self, stepper: &untracked::Arc<Stepper>) -> Self {
        let hook: untracked::Arc<dyn bpfls_sync::probe::ProbeHook> = stepper.clone();
        KernelBuilder {
            probes: bpfls_sync::probe::Probes::with_hook(hook),
            stepper: Some(stepper.clone()),
            ..self
        }
    }

    /// Mutation (bug zoo B3): remove the per-CPU busy counter, as before bc235cdb423a. A
    /// tracing program that re-enters the helpers while the storage lock is held then
    /// deadlocks; stepped mode reports it.
    ///
    /// ```
    /// # use bpfls_kernel::{CpuBody, Kernel, MapType, ProgSpec, ProgType, Schedule, Stepper};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// # use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
    /// # use std::sync::{Arc, OnceLock};
    /// # /// A tracing program on `selem_link` (inside update, storage lock held) that deletes the
    /// # /// element being updated, on the same CPU.
    /// # #[derive(Default)]
    /// # struct Reenter(OnceLock<(Arc<Kernel>, i32, i32)>, std::sync::atomic::AtomicBool);
    /// # impl ProbeHook for Reenter {
    /// #     fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
    /// #         if let Some((k, map, task)) = self.0.get()
    /// #             && e.site == "selem_link"
    /// #             && !self.1.swap(true, std::sync::atomic::Ordering::Relaxed)
    /// #         {
    /// #             let spec = ProgSpec::new(ProgType::Tracing);
    /// #             let _ = k.run(e.cpu.unwrap_or(0), spec, |p| p.storage_delete(*map, *task));
    /// #         }
    /// #         Verdict::Continue
    /// #     }
    /// # }
    /// // Bug zoo B3: a tracing program re-enters the storage helpers under the storage lock.
    /// let tracer = Arc::new(Reenter::default());
    /// let stepper = Stepper::with_tracer(Schedule::Random(1), tracer.clone());
    /// let k = Arc::new(Kernel::builder().stepped(&stepper).without_busy_counter().build());
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    /// let _ = tracer.0.set((k.clone(), map, task)); // attach
    /// let k0 = k.clone();
    /// let update = move || drop(k0.map_update_elem(0, map, task, &[2; 8], BPF_ANY));
    /// let report = stepper.run(vec![Box::new(update) as CpuBody]);
    /// assert!(report.deadlock, "the nested delete spins on the lock its own CPU holds");
    /// ```
    pub fn without_busy_counter(self) -> Self {
        KernelBuilder { no_busy_counter: true, ..self }
    }

    /// Objects per slab (default 4096): every storage type's storages and every map's
    /// elements come from slabs of this many slots, built up front. A small kernel (a
    /// scenario, an explorer run) builds much faster with a few hundred.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().capacity(2).build();
    /// let map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    /// let inodes: Vec<i32> = (0..3).map(|_| k.inode_create().1).collect();
    /// k.map_update_elem(0, map, inodes[0], &[1; 8], BPF_ANY).unwrap();
    /// k.map_update_elem(0, map, inodes[1], &[1; 8], BPF_ANY).unwrap();
    /// // The slab is full: the kernel's answer to a failed allocation.
    /// assert_eq!(k.map_update_elem(0, map, inodes[2], &[1; 8], BPF_ANY).unwrap_err(), Errno::ENOMEM);
    /// ```
    pub fn capacity(self, slots: u32) -> Self {
        KernelBuilder { capacity: Some(slots.max(1)), ..self }
    }

    /// Mutation: grace periods of both RCU domains ignore readers (rcutorture's
    /// `rcu_busted`), in threaded and stepped mode, so the checkers can be shown to catch a
    /// broken engine: an element freed after a "grace period" under a reader is a reported
    /// use after free.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().busted_rcu().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap();
    /// let read = k.run_prog(0, false, |p| {
    ///     let v = p.storage_get(map, sock, None, 0).unwrap();
    ///     k.map_delete_elem(1, map, sock).unwrap();
    ///     k.domains().rcu.synchronize(); // returns at once: it does not wait for us
    ///     k.domains().tasks_trace.barrier(); // the element's free callbacks have run
    ///     k.domains().rcu.barrier();
    ///     v.read("reader after the busted grace period")
    /// });
    /// assert!(read.is_err(), "a use after free, reported");
    /// ```
    pub fn busted_rcu(self) -> Self {
        KernelBuilder { busted_rcu: true, ..self }
    }

    /// Re-introduced bugs of the storage core (bug zoo), for every storage type: for showing
    /// that a checker or a schedule explorer catches them. Bugs that need a particular
    /// interleaving show on a [`stepped`](Self::stepped) kernel, under a [`Stepper`] schedule.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, Mutations, flags::BPF_ANY};
    /// // Bug zoo B1: one bucket per map on a one-CPU machine. The invariant checker sees it.
    /// let problems = |mutations| {
    ///     let k = Kernel::builder().cpus(1).mutations(mutations).build();
    ///     let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    ///     let (_, task) = k.task_spawn();
    ///     k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    ///     k.check_invariants()
    /// };
    /// assert!(problems(Mutations::default()).is_empty());
    /// let b1 = problems(Mutations { one_bucket: true, ..Mutations::default() });
    /// assert!(b1.iter().any(|p| p.starts_with("I4/B1")), "{b1:?}");
    /// ```
    pub fn mutations(self, mutations: Mutations) -> Self {
        KernelBuilder { mutations, ..self }
    }

    /// Builds the kernel.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().build();
    /// assert_eq!(k.cpus(), 2);
    /// assert!(k.violations().is_empty() && k.check_invariants().is_empty());
    /// assert_eq!(k.shutdown(), Ok(0), "nothing leaked");
    /// ```
    pub fn build(self) -> Kernel {
        let cpus = self.cpus.max(1);
        let rcu_config = match self.stepper {
            Some(_) => Config::stepped().with_probes(self.probes.clone()),
            None => Config::threaded().with_backend(Backend::Threaded),
        };
        let rcu_config = if self.busted_rcu { rcu_config.busted_readers() } else { rcu_config };
        let domains = Arc::new(Domains::new(cpus, rcu_config, self.trace_implies_rcu));
        if let Some(stepper) = &self.stepper {
            stepper.attach(domains.clone());
        }
        let violations = Violations::new();
        let types = MapType::ALL.map(|t| {
            let bpf_ma = matches!(t, MapType::Task | MapType::Cgrp) || self.preempt_rt;
            let base =
                if bpf_ma { TypeConfig::task_like(cpus) } else { TypeConfig::socket_like(cpus) };
            let cfg = TypeConfig {
                name: match t {
                    MapType::Task => "task",
                    MapType::Sk => "sk",
                    MapType::Inode => "inode",
                    MapType::Cgrp => "cgrp",
                },
                uptr_allowed: t == MapType::Task,
                probes: self.probes.clone(),
                capacity: self.capacity.unwrap_or(base.capacity),
                ..base
            };
            let cfg = if self.stepper.is_some() { cfg.with_inline_refill() } else { cfg };
            let cfg = cfg.with_mutations(self.mutations);
            LocalStorage::new(cfg, domains.clone(), violations.clone())
                .expect("storage type configuration is valid")
        });
        Kernel {
            cpus,
            optmem_max: self.optmem_max,
            domains,
            violations,
            types,
            state: Mutex::new(State {
                fds: BTreeMap::new(),
                owners: BTreeMap::new(),
                next_fd: 3,
                next_id: 1,
            }),
            no_busy_counter: self.no_busy_counter,
            probes: self.probes.clone(),
            profile: self.profile,
            stepper: self.stepper.clone(),
            busy: [MapType::Task, MapType::Cgrp]
                .map(|_| (0..cpus).map(|_| CachePadded::new(AtomicU32::new(0))).collect()),
        }
    }
}

/// A held map reference; see [`Kernel::hold_map`].
struct MapHold<'k> {
    k: &'k Kernel,
    cpu: u32,
    m: Arc<MapObj>,
}

impl std::ops::Deref for MapHold<'_> {
    type Target = MapObj;
    fn deref(&self) -> &MapObj {
        &self.m
    }
}

impl Drop for MapHold<'_> {
    fn drop(&mut self) {
        self.k.put_map(self.cpu, &self.m);
    }
}

/// What an fd refers to.
#[derive(Clone)]
enum FdObj {
    Map(Arc<MapObj>),
    Owner(Arc<OwnerObj>),
}

/// A map: its type, the core's smap, and its references (fds).
struct MapObj {
    ty: MapType,
    smap: Arc<Smap>,
    refs: untracked::AtomicU64,
}

struct State {
    fds: BTreeMap<i32, FdObj>,
    /// Every owner by id, ended ones included (an owner may outlive its fds, and the invariant
    /// checks cover ended owners too).
    owners: BTreeMap<u64, Arc<OwnerObj>>,
    next_fd: i32,
    next_id: u64,
}

/// The simulated kernel. See the crate documentation.
///
/// ```
/// # use bpfls_kernel::{Kernel, MapType};
/// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
/// // Logical CPUs are the caller's threads: a kernel is shared by reference.
/// let k = Kernel::builder().cpus(2).build();
/// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// std::thread::scope(|s| {
///     for cpu in 0..2u32 {
///         let (k, (_, task)) = (&k, k.task_spawn());
///         s.spawn(move || k.map_update_elem(cpu, map, task, &[1; 8], BPF_ANY).unwrap());
///     }
/// });
/// assert!(k.check_invariants().is_empty());
/// assert_eq!(k.shutdown(), Ok(0), "shutdown ends the tasks and frees the map: no leak");
/// ```
pub struct Kernel {
    cpus: u32,
    optmem_max: u64,
    domains: Arc<Domains>,
    violations: Violations,
    types: [LocalStorage; 4],
    state: Mutex<State>,
    /// `bpf_task_storage_busy` and `bpf_cgrp_storage_busy`: per-CPU recursion counters.
    busy: [Box<[CachePadded<AtomicU32>]>; 2],
    /// [`KernelBuilder::without_busy_counter`].
    no_busy_counter: bool,
    /// The probe points (shared with the storage core), for [`Prog::hold`] and `sys_enter`.
    probes: bpfls_sync::probe::Probes,
    profile: Profile,
    /// The stepped executor, detached from the domains on drop.
    stepper: Option<untracked::Arc<Stepper>>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(s) = &self.stepper {
            s.detach();
        }
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel").field("cpus", &self.cpus).finish_non_exhaustive()
    }
}

impl Kernel {
    /// A builder with the defaults: 2 CPUs, `trace_implies_rcu`, `optmem_max` 20480.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().build();
    /// assert_eq!(k.cpus(), 2);
    /// assert!(k.domains().trace_implies_rcu());
    /// ```
    pub fn builder() -> KernelBuilder {
        KernelBuilder {
            profile: Profile::BpfMa,
            cpus: 2,
            trace_implies_rcu: true,
            optmem_max: 20480,
            preempt_rt: false,
            probes: bpfls_sync::probe::Probes::new(),
            stepper: None,
            no_busy_counter: false,
            busted_rcu: false,
            capacity: None,
            mutations: Mutations::default(),
        }
    }

    /// The era this kernel reproduces.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, Profile};
    /// assert_eq!(Kernel::builder().build().profile(), Profile::BpfMa);
    /// ```
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Logical CPUs.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// let k = Kernel::builder().cpus(3).build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// assert_eq!(k.cpus(), 3);
    /// // CPUs are numbered 0 .. cpus().
    /// assert_eq!(k.map_lookup_elem(2, map, task).unwrap_err(), Errno::ENOENT);
    /// assert_eq!(k.map_lookup_elem(3, map, task).unwrap_err(), Errno::EINVAL);
    /// ```
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// The RCU domains.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().build();
    /// let rcu = &k.domains().rcu;
    /// let cookie = rcu.get_state();
    /// {
    ///     let _reader = rcu.read_lock(0);
    ///     assert!(!rcu.poll_state(cookie), "a reader holds the grace period");
    /// }
    /// rcu.synchronize();
    /// assert!(rcu.poll_state(cookie));
    /// ```
    pub fn domains(&self) -> &Arc<Domains> {
        &self.domains
    }

    /// The violation collector.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType, Schedule, Stepper};
    /// # use bpfls_local_storage::{MapAttr, Mutations, flags::BPF_ANY};
    /// # use bpfls_mem_alloc::ViolationKind;
    /// // Bug zoo B8a: the delete path frees for immediate reuse, under a sleepable reader.
    /// let b8a = Mutations { delete_reuse_now: true, ..Mutations::default() };
    /// // Stepped, so the allocator's refills run inline and reuse is deterministic.
    /// let stepper = Stepper::new(Schedule::Random(0));
    /// let k = Kernel::builder().stepped(&stepper).mutations(b8a).build();
    /// # let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// # let ((_, t1), (_, t2)) = (k.task_spawn(), k.task_spawn());
    /// # k.map_update_elem(0, map, t1, &[1; 8], BPF_ANY).unwrap();
    /// k.run_prog(0, true, |p| {
    ///     let v = p.storage_get(map, t1, None, 0).unwrap();
    ///     k.map_delete_elem(0, map, t1).unwrap();
    ///     k.map_update_elem(0, map, t2, &[2; 8], BPF_ANY).unwrap(); // takes v's memory
    ///     assert!(v.read("sleepable program").is_err());
    /// });
    /// assert_eq!(k.violations().kinds(), [ViolationKind::ReusedAccess]);
    /// ```
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    /// The storage type behind a map type.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::MapAttr;
    /// // Each map takes one of its type's cache indices, and gives it back when freed.
    /// let k = Kernel::builder().build();
    /// let used = |k: &Kernel| k.storage(MapType::Inode).cache_idx_counts().iter().sum::<u64>();
    /// let map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    /// assert_eq!(used(&k), 1);
    /// k.close(0, map).unwrap();
    /// assert_eq!(used(&k), 0);
    /// ```
    pub fn storage(&self, ty: MapType) -> &LocalStorage {
        &self.types[ty.index()]
    }

    fn new_fd(&self, obj: FdObj) -> i32 {
        let mut st = self.state.lock();
        let fd = st.next_fd;
        st.next_fd += 1;
        st.fds.insert(fd, obj);
        fd
    }

    fn new_id(&self) -> u64 {
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        id
    }

    fn fd(&self, fd: i32) -> Result<FdObj, Error> {
        self.state
            .lock()
            .fds
            .get(&fd)
            .cloned()
            .ok_or_else(|| Error::new(Errno::EBADF, format!("fd {fd} is not open")))
    }

    /// The map `fd` names, with a reference held until the returned value drops (the
    /// syscall's `fdget`, a program's `used_maps`): a concurrent last `close` cannot free the
    /// map under the operation; the operation's own drop frees it instead.
    fn hold_map(&self, cpu: u32, fd: i32) -> Result<MapHold<'_>, Error> {
        let state = self.state.lock();
        match state.fds.get(&fd) {
            Some(FdObj::Map(m)) => {
                // Under the state lock, so a `close` of this fd cannot drop the count to 0
                // between the lookup and the increment.
                m.refs.fetch_add(1, untracked::Ordering::Relaxed);
                Ok(MapHold { k: self, cpu, m: m.clone() })
            }
            Some(FdObj::Owner(o)) => {
                Err(Error::new(Errno::EINVAL, format!("fd {fd} is not a map ({o})")))
            }
            None => Err(Error::new(Errno::EBADF, format!("fd {fd} is not open"))),
        }
    }

    /// Drops one reference to `m`; the last one frees the map on `cpu` (§2.8).
    fn put_map(&self, cpu: u32, m: &MapObj) {
        // ORDERING: AcqRel, the usual reference-count pairing: the last put sees every other
        // reference holder's use of the map before it frees it.
        if m.refs.fetch_sub(1, untracked::Ordering::AcqRel) == 1 {
            // The cgroup type raises its busy counter around map_free (bug zoo B9).
            let ty = m.ty;
            self.guarded(ty, cpu, ty == MapType::Cgrp, || {
                self.storage(ty).map_free(cpu, m.smap.clone());
            });
        }
    }

    /// The owner an fd names for a map of type `ty` (pidfd, socket fd, inode fd, cgroup fd).
    fn owner_for(&self, ty: MapType, fd: i32) -> Result<Arc<OwnerObj>, Error> {
        match self.fd(fd)? {
            FdObj::Owner(o) if o.kind() == ty => Ok(o),
            _ => Err(Error::new(Errno::EBADF, format!("fd {fd} is not {}", ty.key_name()))),
        }
    }

    /// [`owner_for`](Self::owner_for), and `-ENOENT` when the owner is dead.
    fn live_owner(&self, ty: MapType, fd: i32) -> Result<Arc<OwnerObj>, Error> {
        let owner = self.owner_for(ty, fd)?;
        if !owner.alive() {
            return Err(Error::new(Errno::ENOENT, format!("{owner} is gone")));
        }
        Ok(owner)
    }

    /// The detail for an error the storage core returned for `owner` in the map of `map_fd`.
    fn core_err(e: Errno, cpu: u32, map_fd: i32, owner: &OwnerObj) -> Error {
        let detail = match e {
            Errno::ENOENT => format!("no element for {owner} in map fd {map_fd}"),
            Errno::EEXIST => format!("map fd {map_fd} already has an element for {owner}"),
            Errno::EINVAL => {
                format!("bad flags or value size for map fd {map_fd} (owner {owner})")
            }
            Errno::ENOMEM => format!(
                "no memory or no charge left for a new element of {owner} in map fd {map_fd}"
            ),
            Errno::EAGAIN => {
                format!("{owner}'s storage changed under the update of map fd {map_fd}; try again")
            }
            Errno::EBUSY => {
                format!("the recursion guard is held on CPU {cpu} ({owner} in map fd {map_fd})")
            }
            Errno::EPERM => format!("not permitted in this context on CPU {cpu}"),
            _ => format!("{owner} in map fd {map_fd}"),
        };
        Error::new(e, detail)
    }

    // ----- owners -----------------------------------------------------------------------------

    fn spawn_owner(&self, ty: MapType) -> (u64, i32) {
        let id = self.new_id();
        let optmem = (ty == MapType::Sk).then_some(self.optmem_max);
        let owner = Arc::new(OwnerObj::new(ty, id, optmem));
        self.state.lock().owners.insert(id, owner.clone());
        (id, self.new_fd(FdObj::Owner(owner)))
    }

    /// A new task; returns its pid and a pidfd.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (pid, pidfd) = k.task_spawn();
    /// let (pid2, _) = k.task_spawn();
    /// assert_ne!(pid, pid2);
    /// k.map_update_elem(0, map, pidfd, &[4; 8], BPF_ANY).unwrap();
    /// assert_eq!(k.map_lookup_elem(0, map, pidfd), Ok(vec![4; 8]));
    /// ```
    pub fn task_spawn(&self) -> (u64, i32) {
        self.spawn_owner(MapType::Task)
    }

    /// A new socket; returns its id and fd.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// assert_eq!(k.socket_charge(sock), Ok(0), "a new socket has nothing charged");
    /// k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap();
    /// assert_eq!(k.map_lookup_elem(1, map, sock), Ok(vec![1; 8]));
    /// ```
    pub fn socket_create(&self) -> (u64, i32) {
        self.spawn_owner(MapType::Sk)
    }

    /// A new inode; returns its number and an fd of it.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Inode, MapAttr::new(4)).unwrap();
    /// let (_, inode) = k.inode_create();
    /// k.map_update_elem(0, map, inode, b"ino!", BPF_ANY).unwrap();
    /// assert_eq!(k.map_lookup_elem(0, map, inode), Ok(b"ino!".to_vec()));
    /// ```
    pub fn inode_create(&self) -> (u64, i32) {
        self.spawn_owner(MapType::Inode)
    }

    /// A new cgroup (`mkdir`); returns its id and an fd of it.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    /// let (_, cg) = k.cgroup_mkdir();
    /// k.map_update_elem(0, map, cg, &[9; 8], BPF_ANY).unwrap();
    /// assert_eq!(k.map_lookup_elem(0, map, cg), Ok(vec![9; 8]));
    /// ```
    pub fn cgroup_mkdir(&self) -> (u64, i32) {
        self.spawn_owner(MapType::Cgrp)
    }

    /// Ends an owner: it is marked dead (no new storage: `-ENOENT` for syscalls, NULL for
    /// helpers), then its storage is destroyed on `cpu` — after an RCU grace period for tasks
    /// (final put) and cgroups (css free), at once for sockets (last reference) and inodes
    /// (evict). A socket's and an inode's fd is closed with it; a pidfd and a cgroup fd stay
    /// open (and name a dead owner) until closed.
    fn end_owner(&self, cpu: u32, ty: MapType, fd: i32) -> Result<(), Error> {
        self.check_cpu(cpu)?;
        let owner = self.owner_for(ty, fd)?;
        if !owner.kill() {
            return Err(Error::new(Errno::ENOENT, format!("{owner} has already ended")));
        }
        self.end_dead_owner(cpu, &owner, fd);
        Ok(())
    }

    fn end_dead_owner(&self, cpu: u32, owner: &Arc<OwnerObj>, fd: i32) {
        let ty = owner.kind();
        {
            // The owner stays in the registry, dead: check_invariants still sees it (an owner
            // that ended with bytes charged breaks I7, bug zoo B6).
            let mut st = self.state.lock();
            if !owner.past_gp() {
                st.fds.remove(&fd);
            }
        }
        // The final put: a running program that uses the owner holds a reference, so the
        // destroy waits until every such program has ended.
        while owner.users() > 0 {
            let id = bpfls_local_storage::Owner::id(owner.as_ref());
            if !self.probes.is_attached() {
                bpfls_sync::spin_wait();
            } else if self.probes.wait("owner_wait", Some(cpu), &[("owner", id)])
                == bpfls_sync::probe::WaitVerdict::Deadlock
            {
                panic!(
                    "bpfls-kernel: deadlock: CPU {cpu} waits for the programs that use {owner} \
                     to end, and none of them can run"
                );
            }
        }
        if owner.past_gp() {
            self.domains.rcu.synchronize();
        }
        self.guarded(ty, cpu, true, || self.storage(ty).destroy(cpu, owner.as_ref()));
    }

    /// Task exit and final put. The pidfd stays open: syscalls through it get `-ENOENT`.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (pid, pidfd) = k.task_spawn();
    /// k.map_update_elem(0, map, pidfd, &[1; 8], BPF_ANY).unwrap();
    /// k.task_exit(0, pidfd).unwrap();
    /// let e = k.map_lookup_elem(0, map, pidfd).unwrap_err();
    /// assert_eq!(e.to_string(), format!("ENOENT (2): task {pid} is gone"));
    /// assert_eq!(k.task_exit(0, pidfd).unwrap_err(), Errno::ENOENT, "it has already ended");
    /// ```
    pub fn task_exit(&self, cpu: u32, pidfd: i32) -> Result<(), Error> {
        self.end_owner(cpu, MapType::Task, pidfd)
    }

    /// Socket close (the last reference).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap();
    /// k.socket_close(0, sock).unwrap();
    /// // The socket's fd closes with it.
    /// assert_eq!(k.map_lookup_elem(0, map, sock).unwrap_err(), Errno::EBADF);
    /// assert_eq!(k.shutdown(), Ok(0), "its storage was freed");
    /// ```
    pub fn socket_close(&self, cpu: u32, fd: i32) -> Result<(), Error> {
        self.end_owner(cpu, MapType::Sk, fd)
    }

    /// Inode eviction.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    /// let (_, inode) = k.inode_create();
    /// k.map_update_elem(0, map, inode, &[1; 8], BPF_ANY).unwrap();
    /// k.inode_evict(0, inode).unwrap();
    /// let e = k.map_lookup_elem(0, map, inode).unwrap_err();
    /// assert_eq!(e.detail(), format!("fd {inode} is not open"), "the fd went with the inode");
    /// ```
    pub fn inode_evict(&self, cpu: u32, fd: i32) -> Result<(), Error> {
        self.end_owner(cpu, MapType::Inode, fd)
    }

    /// Cgroup `rmdir`. The cgroup fd stays open: syscalls through it get `-ENOENT`.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    /// let (id, cg) = k.cgroup_mkdir();
    /// k.map_update_elem(0, map, cg, &[1; 8], BPF_ANY).unwrap();
    /// k.cgroup_rmdir(0, cg).unwrap();
    /// let e = k.map_update_elem(0, map, cg, &[2; 8], BPF_ANY).unwrap_err();
    /// assert_eq!(e.to_string(), format!("ENOENT (2): cgroup {id} is gone"));
    /// k.close(0, cg).unwrap(); // the fd stayed open until now
    /// ```
    pub fn cgroup_rmdir(&self, cpu: u32, fd: i32) -> Result<(), Error> {
        self.end_owner(cpu, MapType::Cgrp, fd)
    }

    /// Whether the owner `fd` names has a local storage (`owner->bpf_storage != NULL`):
    /// `-EBADF` unless `fd` is an owner's.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// # use bpfls_kernel::MapType;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
    /// let (_, ino) = k.inode_create();
    /// assert!(!k.has_storage(ino).unwrap());
    /// k.map_update_elem(0, map, ino, &[1; 8], BPF_ANY).unwrap();
    /// assert!(k.has_storage(ino).unwrap());
    /// k.map_delete_elem(0, map, ino).unwrap();
    /// assert!(!k.has_storage(ino).unwrap(), "freed with its last element");
    /// ```
    pub fn has_storage(&self, fd: i32) -> Result<bool, Error> {
        match self.fd(fd)? {
            FdObj::Owner(o) => {
                let ptr = bpfls_local_storage::Owner::storage_ptr(o.as_ref());
                Ok(ptr.load(Ordering::Relaxed) != 0)
            }
            FdObj::Map(_) => {
                Err(Error::new(Errno::EBADF, format!("fd {fd} is a map, not an owner")))
            }
        }
    }

    /// The elements of the map `map_fd` names (linked into its buckets), counted at a
    /// quiescent point: `-EINVAL` unless `map_fd` is a map.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let socks: Vec<i32> = (0..3).map(|_| k.socket_create().1).collect();
    /// for s in &socks {
    ///     k.map_update_elem(0, map, *s, &[1; 8], BPF_ANY).unwrap();
    /// }
    /// k.map_delete_elem(1, map, socks[0]).unwrap();
    /// assert_eq!(k.map_elements(map).unwrap(), 2);
    /// ```
    pub fn map_elements(&self, map_fd: i32) -> Result<usize, Error> {
        match self.fd(map_fd)? {
            FdObj::Map(m) => Ok(m.smap.elements()),
            FdObj::Owner(o) => {
                Err(Error::new(Errno::EINVAL, format!("fd {map_fd} is not a map ({o})")))
            }
        }
    }

    /// Passes a probe point the caller names, on `cpu`: a decision point of a stepped run and
    /// an event of its trace (how a scenario runner marks where its steps end). Nothing
    /// happens without a hook.
    ///
    /// ```
    /// # use bpfls_kernel::{CpuBody, Kernel, Schedule, Stepper};
    /// # use std::sync::Arc;
    /// let stepper = Stepper::new(Schedule::Random(0));
    /// let k = Arc::new(Kernel::builder().stepped(&stepper).build());
    /// let k0 = k.clone();
    /// let body: CpuBody = Box::new(move || k0.mark(0, "step_done", &[("step", 3)]));
    /// let report = stepper.run(vec![body]);
    /// assert!(report.trace.iter().any(|e| e.site == "step_done" && e.fields == [("step", 3)]));
    /// ```
    pub fn mark(&self, cpu: u32, site: &'static str, fields: &[(&'static str, u64)]) {
        if self.probes.is_attached() {
            self.probes.hit(site, Some(cpu), fields);
        }
    }

    /// The bytes of local storage charged to a socket (`sk->sk_omem_alloc`'s share), which
    /// `optmem_max` limits: `-EBADF` unless `fd` is a socket.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap();
    /// assert!(k.socket_charge(sock).unwrap() > 0, "the element and the socket's storage");
    /// k.map_delete_elem(0, map, sock).unwrap();
    /// assert_eq!(k.socket_charge(sock), Ok(0));
    /// let (_, pidfd) = k.task_spawn();
    /// assert_eq!(k.socket_charge(pidfd).unwrap_err(), Errno::EBADF);
    /// ```
    pub fn socket_charge(&self, fd: i32) -> Result<u64, Error> {
        Ok(self.owner_for(MapType::Sk, fd)?.charged_bytes())
    }

    /// `accept()` on a listening socket: a new socket whose storage clones the parent's
    /// `BPF_F_CLONE` maps (§2.12). On a clone error the new socket is destroyed and the error
    /// returned.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::{BPF_ANY, MapFlags}};
    /// let k = Kernel::builder().build();
    /// let clone = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    /// let cloned = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone)).unwrap();
    /// let plain = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, listener) = k.socket_create();
    /// k.map_update_elem(0, cloned, listener, &[1; 8], BPF_ANY).unwrap();
    /// k.map_update_elem(0, plain, listener, &[2; 8], BPF_ANY).unwrap();
    /// let (_, child) = k.socket_accept(0, listener).unwrap();
    /// assert_eq!(k.map_lookup_elem(0, cloned, child), Ok(vec![1; 8]));
    /// assert_eq!(k.map_lookup_elem(0, plain, child).unwrap_err(), Errno::ENOENT);
    /// ```
    pub fn socket_accept(&self, cpu: u32, parent_fd: i32) -> Result<(u64, i32), Error> {
        self.check_cpu(cpu)?;
        let parent = self.live_owner(MapType::Sk, parent_fd)?;
        let (id, fd) = self.socket_create();
        let child = self.owner_for(MapType::Sk, fd)?;
        let dyn_child: untracked::Arc<dyn bpfls_local_storage::Owner> = child.clone();
        if let Err(e) = self.storage(MapType::Sk).clone_storage(cpu, parent.as_ref(), &dyn_child) {
            self.socket_close(cpu, fd)?;
            return Err(Error::new(e, format!("cloning {parent}'s storage into {child} failed")));
        }
        Ok((id, fd))
    }

    // ----- maps and fds -------------------------------------------------------------------

    /// `BPF_MAP_CREATE` for a local-storage map type: the attribute checks of
    /// `map_alloc_check`, then `map_check_btf` against the simulated [`btf`] (key an `int`,
    /// value type of `value_size` bytes), then a map fd.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType, btf};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// let k = Kernel::builder().build();
    /// assert!(k.map_create(MapType::Task, MapAttr::new(8)).is_ok());
    /// // The key must be a 4-byte int in the BTF.
    /// let attr = MapAttr { btf_key_type_id: btf::LONG, ..MapAttr::new(8) };
    /// let e = k.map_create(MapType::Task, attr).unwrap_err();
    /// assert_eq!(e, Errno::EINVAL);
    /// assert_eq!(e.detail(), "map_create: BTF key type id 2 (Some(Int(8))) is not a 4-byte int");
    /// ```
    pub fn map_create(&self, ty: MapType, attr: MapAttr) -> Result<i32, Error> {
        bpfls_local_storage::map::map_alloc_check_detail(&attr)
            .map_err(|(e, why)| Error::new(e, format!("map_create: {why}")))?;
        let inval = |why: String| Err(Error::new(Errno::EINVAL, format!("map_create: {why}")));
        match btf::resolve(attr.btf_key_type_id) {
            Some(btf::BtfType::Int(4)) => {}
            other => {
                return inval(format!(
                    "BTF key type id {} ({other:?}) is not a 4-byte int",
                    attr.btf_key_type_id
                ));
            }
        }
        match btf::resolve(attr.btf_value_type_id) {
            Some(t) if t.size() == attr.value_size => {}
            other => {
                return inval(format!(
                    "BTF value type id {} ({other:?}) does not have value_size {} bytes",
                    attr.btf_value_type_id, attr.value_size
                ));
            }
        }
        let smap = self.storage(ty).map_create(attr).map_err(|e| {
            let why = match e {
                Errno::EOPNOTSUPP => "uptr fields are for task storage only".to_string(),
                Errno::ENOMEM => "no memory, or too many maps of this type".to_string(),
                _ => format!("the {} storage refused the map", ty.owner_name()),
            };
            Error::new(e, format!("map_create: {why}"))
        })?;
        let map = Arc::new(MapObj { ty, smap, refs: untracked::AtomicU64::new(1) });
        Ok(self.new_fd(FdObj::Map(map)))
    }

    /// Another fd for the same object (`dup`); for a map, one more reference.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[5; 8], BPF_ANY).unwrap();
    /// let map2 = k.dup(map).unwrap();
    /// k.close(0, map).unwrap();
    /// // The map lives on through its other fd, element and all.
    /// assert_eq!(k.map_lookup_elem(0, map2, task), Ok(vec![5; 8]));
    /// assert_eq!(k.map_lookup_elem(0, map, task).unwrap_err(), Errno::EBADF);
    /// ```
    pub fn dup(&self, fd: i32) -> Result<i32, Error> {
        let obj = self.fd(fd)?;
        if let FdObj::Map(m) = &obj {
            m.refs.fetch_add(1, untracked::Ordering::Relaxed);
        }
        Ok(self.new_fd(obj))
    }

    /// `close(fd)` on `cpu`. The last reference to a map frees it (§2.8), on that CPU (the
    /// kernel defers it to a workqueue; the CPU is the one that work runs on). Closing an
    /// owner's fd does not end the owner.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// # fn maps_in_use(k: &Kernel) -> u64 {
    /// #     k.storage(MapType::Task).cache_idx_counts().iter().sum()
    /// # }
    /// // `maps_in_use`: the task maps holding a cache index, i.e. not yet freed.
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let map2 = k.dup(map).unwrap();
    /// k.close(0, map).unwrap();
    /// assert_eq!(maps_in_use(&k), 1, "map2 still holds it");
    /// k.close(1, map2).unwrap(); // the last reference: the map is freed, on CPU 1
    /// assert_eq!(maps_in_use(&k), 0);
    /// assert_eq!(k.close(0, map2).unwrap_err(), Errno::EBADF);
    /// ```
    pub fn close(&self, cpu: u32, fd: i32) -> Result<(), Error> {
        self.check_cpu(cpu)?;
        let obj = self
            .state
            .lock()
            .fds
            .remove(&fd)
            .ok_or_else(|| Error::new(Errno::EBADF, format!("fd {fd} is not open")))?;
        if let FdObj::Map(m) = obj {
            self.put_map(cpu, &m);
        }
        Ok(())
    }

    // ----- recursion guard ----------------------------------------------------------------

    fn busy(&self, ty: MapType, cpu: u32) -> Option<&AtomicU32> {
        if self.no_busy_counter {
            return None;
        }
        let i = match ty {
            MapType::Task => 0,
            MapType::Cgrp => 1,
            _ => return None,
        };
        self.busy[i].get(cpu as usize).map(|c| &**c)
    }

    /// Runs `f` with the type's busy counter raised on `cpu` (`bpf_task_storage_lock()`), when
    /// `take` and the type has one.
    fn guarded<R>(&self, ty: MapType, cpu: u32, take: bool, f: impl FnOnce() -> R) -> R {
        let counter = if take && ty.has_busy_counter() { self.busy(ty, cpu) } else { None };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let r = f();
        if let Some(c) = counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
        r
    }

    /// `trylock`: raise the counter; keep it only if it was 0.
    fn try_busy(&self, ty: MapType, cpu: u32) -> bool {
        match self.busy(ty, cpu) {
            None => true,
            Some(c) => {
                if c.fetch_add(1, Ordering::Relaxed) == 0 {
                    true
                } else {
                    c.fetch_sub(1, Ordering::Relaxed);
                    false
                }
            }
        }
    }

    fn unbusy(&self, ty: MapType, cpu: u32) {
        if let Some(c) = self.busy(ty, cpu) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The `sys_enter` tracepoint of a `bpf(2)` syscall on `cpu`: where programs attached to a
    /// syscall hook run (field `cmd`, the `BPF_*` command number).
    fn sys_enter(&self, cpu: u32, cmd: u64) -> Result<(), Error> {
        self.check_cpu(cpu)?;
        if self.probes.is_attached() {
            self.probes.hit("sys_enter", Some(cpu), &[("cmd", cmd)]);
        }
        Ok(())
    }

    fn check_cpu(&self, cpu: u32) -> Result<(), Error> {
        if cpu >= self.cpus {
            Err(Error::new(Errno::EINVAL, format!("CPU {cpu} does not exist ({} CPUs)", self.cpus)))
        } else {
            Ok(())
        }
    }

    // ----- syscalls ---------------------------------------------------------------------------

    /// `BPF_MAP_LOOKUP_ELEM` on `cpu`: the value of the owner `key_fd` names.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// assert_eq!(k.map_lookup_elem(0, map, task).unwrap_err(), Errno::ENOENT);
    /// k.map_update_elem(0, map, task, &[3; 8], BPF_ANY).unwrap();
    /// assert_eq!(k.map_lookup_elem(1, map, task), Ok(vec![3; 8]));
    /// ```
    pub fn map_lookup_elem(&self, cpu: u32, map_fd: i32, key_fd: i32) -> Result<Vec<u8>, Error> {
        self.sys_enter(cpu, BPF_MAP_LOOKUP_ELEM)?;
        let m = self.hold_map(cpu, map_fd)?;
        let owner = self.live_owner(m.ty, key_fd)?;
        let ls = self.storage(m.ty);
        self.guarded(m.ty, cpu, true, || {
            let _rcu = self.domains.rcu.read_lock(cpu);
            let s = ls.lookup(cpu, owner.as_ref(), &m.smap, true);
            s.and_then(|s| s.read("syscall_lookup").ok())
                .ok_or_else(|| Self::core_err(Errno::ENOENT, cpu, map_fd, &owner))
        })
    }

    /// `BPF_MAP_UPDATE_ELEM` on `cpu` with `flags` (`BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST`,
    /// `| BPF_F_LOCK`).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType, ResultExt};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// use bpfls_local_storage::flags::{BPF_EXIST, BPF_NOEXIST};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// let update = |v, flags| k.map_update_elem(0, map, task, &[v; 8], flags).errno();
    /// assert_eq!(update(1, BPF_EXIST), Err(Errno::ENOENT), "nothing to replace");
    /// assert_eq!(update(1, BPF_NOEXIST), Ok(()));
    /// assert_eq!(update(2, BPF_NOEXIST), Err(Errno::EEXIST), "already there");
    /// assert_eq!(update(2, BPF_EXIST), Ok(()));
    /// assert_eq!(k.map_lookup_elem(0, map, task), Ok(vec![2; 8]));
    /// ```
    pub fn map_update_elem(
        &self,
        cpu: u32,
        map_fd: i32,
        key_fd: i32,
        value: &[u8],
        flags: u64,
    ) -> Result<(), Error> {
        self.sys_enter(cpu, BPF_MAP_UPDATE_ELEM)?;
        let m = self.hold_map(cpu, map_fd)?;
        let owner = self.live_owner(m.ty, key_fd)?;
        let dyn_owner: untracked::Arc<dyn bpfls_local_storage::Owner> = owner.clone();
        self.guarded(m.ty, cpu, true, || {
            self.storage(m.ty).update(cpu, &dyn_owner, &m.smap, Some(value), flags, false)
        })
        .map(|_| ())
        .map_err(|e| Self::core_err(e, cpu, map_fd, &owner))
    }

    /// `BPF_MAP_DELETE_ELEM` on `cpu`.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    /// k.map_delete_elem(1, map, task).unwrap();
    /// assert_eq!(k.map_lookup_elem(0, map, task).unwrap_err(), Errno::ENOENT);
    /// assert_eq!(k.map_delete_elem(1, map, task).unwrap_err(), Errno::ENOENT);
    /// ```
    pub fn map_delete_elem(&self, cpu: u32, map_fd: i32, key_fd: i32) -> Result<(), Error> {
        self.sys_enter(cpu, BPF_MAP_DELETE_ELEM)?;
        let m = self.hold_map(cpu, map_fd)?;
        let owner = self.live_owner(m.ty, key_fd)?;
        self.guarded(m.ty, cpu, true, || self.storage(m.ty).delete(cpu, owner.as_ref(), &m.smap))
            .map_err(|e| Self::core_err(e, cpu, map_fd, &owner))
    }

    /// `BPF_MAP_GET_NEXT_KEY`: not supported by local-storage maps.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// assert_eq!(k.map_get_next_key(map).unwrap_err(), Errno::ENOTSUPP);
    /// assert_eq!(k.map_get_next_key(99).unwrap_err(), Errno::EBADF, "the fd is checked first");
    /// ```
    pub fn map_get_next_key(&self, map_fd: i32) -> Result<(), Error> {
        drop(self.hold_map(0, map_fd)?);
        Err(Error::new(
            Errno::ENOTSUPP,
            format!("map fd {map_fd}: local-storage maps cannot be iterated by key"),
        ))
    }

    // ----- programs and helpers -----------------------------------------------------------

    /// Runs an LSM-like program (plain helpers) on `cpu` in task context: inside an RCU read
    /// section (non-sleepable) or a Tasks-Trace one (sleepable). Values the helpers return
    /// are valid until `f` returns. Panics on a CPU that does not exist; [`run`](Self::run)
    /// returns an error instead.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::MapAttr;
    /// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// // An LSM program creates the task's element; a syscall then reads it.
    /// let created = k.run_prog(1, false, |p| {
    ///     let v = p.storage_get(map, task, None, F_CREATE).unwrap();
    ///     v.write("lsm prog", &[6; 8]).is_ok()
    /// });
    /// assert!(created);
    /// assert_eq!(k.map_lookup_elem(0, map, task), Ok(vec![6; 8]));
    /// ```
    pub fn run_prog<R>(&self, cpu: u32, sleepable: bool, f: impl FnOnce(&Prog<'_>) -> R) -> R {
        self.run_prog_as(cpu, sleepable, false, f)
    }

    /// Like [`run_prog`](Self::run_prog); `recur` makes it a tracing program (the `_recur`
    /// helpers, for a program that may run inside the storage code).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, ProgSpec, ProgType};
    /// let k = Kernel::builder().build();
    /// assert_eq!(k.run_prog_as(0, false, true, |p| p.spec()), ProgSpec::new(ProgType::Tracing));
    /// let sleepable_lsm = ProgSpec::new(ProgType::Lsm).sleepable();
    /// assert_eq!(k.run_prog_as(0, true, false, |p| p.spec()), sleepable_lsm);
    /// ```
    pub fn run_prog_as<R>(
        &self,
        cpu: u32,
        sleepable: bool,
        recur: bool,
        f: impl FnOnce(&Prog<'_>) -> R,
    ) -> R {
        let spec = ProgSpec {
            ty: if recur { ProgType::Tracing } else { ProgType::Lsm },
            sleepable,
            ctx: Context::Task,
        };
        self.run(cpu, spec, f).unwrap_or_else(|e| panic!("run_prog: {e}"))
    }

    /// Runs a program described by `spec` on `cpu`. `-EINVAL` for a CPU that does not exist
    /// or a sleepable program outside task context.
    ///
    /// ```
    /// # use bpfls_kernel::{Context, Kernel, MapType, ProgSpec, ProgType};
    /// # use bpfls_local_storage::{Errno, MapAttr};
    /// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// let tracing = ProgSpec::new(ProgType::Tracing);
    /// let get = |spec| k.run(0, spec, |p| p.storage_get(map, sock, None, F_CREATE).is_some());
    /// // In hardirq context a tracing program gets NULL from an sk map; in task context, not.
    /// assert_eq!(get(tracing.in_context(Context::Hardirq)), Ok(false));
    /// assert_eq!(get(tracing), Ok(true));
    /// assert_eq!(k.run(2, tracing, |_| ()).unwrap_err(), Errno::EINVAL, "2 CPUs: 0 and 1");
    /// ```
    pub fn run<R>(
        &self,
        cpu: u32,
        spec: ProgSpec,
        f: impl FnOnce(&Prog<'_>) -> R,
    ) -> Result<R, Error> {
        self.check_cpu(cpu)?;
        if spec.sleepable && spec.ctx != Context::Task {
            return Err(Error::new(
                Errno::EINVAL,
                format!("a sleepable program cannot run in {:?} context", spec.ctx),
            ));
        }
        // Declared before the read guard, so dropped after it: the maps the program used
        // stay referenced until its section has ended, and a free they trigger runs outside.
        let prog =
            Prog { k: self, cpu, spec, held: Default::default(), owners: Default::default() };
        Ok(if spec.sleepable {
            let task = self.domains.tasks_trace.register_task(self.new_id() | 1 << 63);
            let _g = self.domains.tasks_trace.read_lock(&task);
            f(&prog)
        } else {
            let _g = self.domains.rcu.read_lock(cpu);
            f(&prog)
        })
    }

    /// The storage core's invariants (I4–I7, I9, I11, I13, I15) over every owner, ended ones
    /// included (an ended owner has no storage and nothing charged); call it at a quiescent
    /// point (no CPU running). Empty when all hold.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let a = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let b = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, a, task, &[1; 8], BPF_ANY).unwrap();
    /// k.map_update_elem(1, b, task, &[2; 8], BPF_ANY).unwrap();
    /// k.map_delete_elem(0, a, task).unwrap();
    /// let problems = k.check_invariants();
    /// assert!(problems.is_empty(), "{problems:?}");
    /// ```
    pub fn check_invariants(&self) -> Vec<String> {
        let owners: Vec<Arc<OwnerObj>> = self.state.lock().owners.values().cloned().collect();
        let mut out = Vec::new();
        for ty in MapType::ALL {
            let of_type: Vec<&dyn bpfls_local_storage::Owner> = owners
                .iter()
                .filter(|o| o.kind() == ty)
                .map(|o| o.as_ref() as &dyn bpfls_local_storage::Owner)
                .collect();
            out.extend(self.storage(ty).check_invariants(&of_type));
        }
        out
    }

    /// Tears everything down on CPU 0: ends every live owner, closes every fd (freeing the
    /// maps), waits for every pending free, and returns the number of leaked objects (also
    /// reported as violations).
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// k.map_update_elem(0, map, sock, &[1; 8], BPF_ANY).unwrap();
    /// // The socket is still open and the map still has its fd: shutdown ends and closes both.
    /// assert_eq!(k.shutdown(), Ok(0), "nothing leaked");
    /// assert_eq!(k.map_lookup_elem(0, map, sock).unwrap_err(), Errno::EBADF);
    /// ```
    pub fn shutdown(&self) -> Result<usize, Error> {
        let owners: Vec<Arc<OwnerObj>> = self.state.lock().owners.values().cloned().collect();
        for o in owners {
            if o.kill() {
                self.end_dead_owner(0, &o, -1);
            }
        }
        let fds: Vec<i32> = self.state.lock().fds.keys().copied().collect();
        for fd in fds {
            self.close(0, fd)?;
        }
        let mut leaked = 0;
        for ty in MapType::ALL {
            leaked += self.storage(ty).teardown().map_err(|e| {
                Error::new(
                    Errno::EBUSY,
                    format!("tearing down the {} storage failed: {e}", ty.owner_name()),
                )
            })?;
        }
        Ok(leaked)
    }
}

/// A value a helper returned: the program's pointer into the element (`sdata->data`). It
/// borrows the running program, so it cannot outlive the program's read section — the
/// compiler refuses it:
///
/// ```compile_fail
/// # use bpfls_kernel::{Kernel, MapType};
/// # use bpfls_local_storage::MapAttr;
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// let (_, task) = k.task_spawn();
/// let escaped = k.run_prog(0, false, |p| p.storage_get(map, task, None, 1)); // the value escapes
/// ```
///
/// Reads and writes are checked accesses: an element freed or reused under the program is a
/// reported violation.
///
/// ```
/// # use bpfls_kernel::{Kernel, MapType};
/// # use bpfls_local_storage::MapAttr;
/// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
/// let (_, task) = k.task_spawn();
/// // Use the value inside the program, and return what you need from it.
/// let bytes = k.run_prog(0, false, |p| {
///     let v = p.storage_get(map, task, Some(&[8; 8]), F_CREATE)?;
///     v.read("prog").ok()
/// });
/// assert_eq!(bytes, Some(vec![8; 8]));
/// ```
pub struct Value<'p> {
    sref: SelemRef,
    _prog: std::marker::PhantomData<&'p Prog<'p>>,
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.sref).finish()
    }
}

impl Value<'_> {
    /// Reads the value.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[2; 8], BPF_ANY).unwrap();
    /// // `site` names the access in a violation report, should the element be gone.
    /// let r = k.run_prog(1, false, |p| p.storage_get(map, task, None, 0)?.read("my prog").ok());
    /// assert_eq!(r, Some(vec![2; 8]));
    /// ```
    pub fn read(&self, site: &'static str) -> Result<Vec<u8>, bpfls_mem_alloc::Violation> {
        self.sref.read(site)
    }

    /// Writes the value.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::MapAttr;
    /// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Cgrp, MapAttr::new(4)).unwrap();
    /// let (_, cg) = k.cgroup_mkdir();
    /// let written = k.run_prog(0, false, |p| {
    ///     p.storage_get(map, cg, None, F_CREATE).map(|v| v.write("prog", b"seen").is_ok())
    /// });
    /// assert_eq!(written, Some(true));
    /// // The program wrote the element in place: a syscall sees it.
    /// assert_eq!(k.map_lookup_elem(1, map, cg), Ok(b"seen".to_vec()));
    /// ```
    pub fn write(
        &self,
        site: &'static str,
        bytes: &[u8],
    ) -> Result<(), bpfls_mem_alloc::Violation> {
        self.sref.write(site, bytes)
    }

    /// The element behind it.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::MapAttr;
    /// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(16)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// let size = k.run_prog(0, false, |p| {
    ///     let v = p.storage_get(map, task, None, F_CREATE).unwrap();
    ///     v.element().map().attr().value_size
    /// });
    /// assert_eq!(size, 16);
    /// ```
    pub fn element(&self) -> &SelemRef {
        &self.sref
    }
}

/// A running program: the CPU it runs on, how it runs, and its helpers.
///
/// ```
/// # use bpfls_kernel::{Context, Kernel, ProgSpec, ProgType};
/// let k = Kernel::builder().build();
/// let spec = ProgSpec::new(ProgType::Iter);
/// let (cpu, seen) = k.run(1, spec, |p: &bpfls_kernel::Prog<'_>| (p.cpu(), p.spec())).unwrap();
/// assert_eq!((cpu, seen.ty, seen.ctx), (1, ProgType::Iter, Context::Task));
/// ```
pub struct Prog<'k> {
    k: &'k Kernel,
    cpu: u32,
    spec: ProgSpec,
    /// The maps the program used (its `used_maps`), released after its read section.
    held: std::cell::RefCell<Vec<MapHold<'k>>>,
    /// The owners it used, each referenced until it ends.
    owners: std::cell::RefCell<Vec<OwnerHold>>,
}

/// A running program's reference to an owner: the owner's final put waits for it.
struct OwnerHold(Arc<OwnerObj>);

impl Drop for OwnerHold {
    fn drop(&mut self) {
        self.0.put_user();
    }
}

impl fmt::Debug for Prog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prog").field("cpu", &self.cpu).field("spec", &self.spec).finish()
    }
}

impl<'k> Prog<'k> {
    /// A sleepable program blocking mid-section (a page fault, a sleeping helper): passes the
    /// probe point `prog_hold`, where a stepped schedule may pause it (`Action::Until(body,
    /// "prog_hold")`) while other CPUs run and grace periods move. Without a stepper it
    /// returns at once.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().build();
    /// k.run_prog(0, true, |p| p.hold());
    /// ```
    pub fn hold(&self) {
        let k = self.k;
        if k.probes.is_attached() {
            k.probes.hit("prog_hold", Some(self.cpu), &[]);
        }
    }

    /// The CPU the program runs on.
    ///
    /// ```
    /// # use bpfls_kernel::Kernel;
    /// let k = Kernel::builder().cpus(4).build();
    /// assert_eq!(k.run_prog(3, false, |p| p.cpu()), 3);
    /// assert_eq!(k.run_prog_as(0, true, true, |p| p.cpu()), 0);
    /// ```
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// How the program runs.
    ///
    /// ```
    /// # use bpfls_kernel::{Context, Kernel, ProgSpec, ProgType};
    /// let k = Kernel::builder().build();
    /// let spec = ProgSpec::new(ProgType::Tracing).in_context(Context::Softirq);
    /// assert_eq!(k.run(0, spec, |p| p.spec()), Ok(spec));
    /// assert_eq!(k.run_prog(0, true, |p| p.spec()), ProgSpec::new(ProgType::Lsm).sleepable());
    /// ```
    pub fn spec(&self) -> ProgSpec {
        self.spec
    }

    /// The map `map_fd` names, held until the program ends (one reference per map, however
    /// often the program uses it).
    fn use_map(&self, map_fd: i32) -> Result<Arc<MapObj>, Error> {
        let hold = self.k.hold_map(self.cpu, map_fd)?;
        let m = hold.m.clone();
        let mut held = self.held.borrow_mut();
        if !held.iter().any(|h| Arc::ptr_eq(&h.m, &m)) {
            held.push(hold);
        }
        // Otherwise `hold` drops here; the program's earlier reference keeps the map alive.
        Ok(m)
    }

    /// The owner `fd` names for a map of type `ty`, referenced until the program ends.
    fn use_owner(&self, ty: MapType, fd: i32) -> Result<Arc<OwnerObj>, Error> {
        let o = self.k.owner_for(ty, fd)?;
        let mut owners = self.owners.borrow_mut();
        if !owners.iter().any(|h| Arc::ptr_eq(&h.0, &o)) {
            o.get_user();
            owners.push(OwnerHold(o.clone()));
        }
        Ok(o)
    }

    /// `bpf_sk_storage_*_tracing` refuse hardirq and NMI context.
    fn sk_tracing_refused(&self, ty: MapType) -> bool {
        ty == MapType::Sk
            && self.spec.recur()
            && matches!(self.spec.ctx, Context::Hardirq | Context::Nmi)
    }

    /// `bpf_{task,sk,inode,cgrp}_storage_get(map, owner, value, flags)`: the element, created
    /// with `value` (zeroed when `None`) under `BPF_LOCAL_STORAGE_GET_F_CREATE`. `None` (the
    /// helper's NULL) for bad flags, a NULL owner (an fd that names no owner of the map's
    /// type), a dead owner (no create on an exiting task or a closed socket), a failed
    /// create, a create attempted while the busy counter is held on this CPU, and the sk
    /// tracing variant in hardirq / NMI context.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::MapAttr;
    /// use bpfls_local_storage::flags::BPF_LOCAL_STORAGE_GET_F_CREATE as F_CREATE;
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.run_prog(0, false, |p| {
    ///     assert!(p.storage_get(map, task, None, 0).is_none(), "absent, and no F_CREATE");
    ///     assert!(p.storage_get(map, task, None, 0x80).is_none(), "bad flags");
    ///     assert!(p.storage_get(map, map, None, F_CREATE).is_none(), "a map fd is no task");
    ///     let v = p.storage_get(map, task, Some(&[1; 8]), F_CREATE).unwrap();
    ///     assert_eq!(v.read("prog"), Ok(vec![1; 8]));
    /// });
    /// ```
    pub fn storage_get(
        &self,
        map_fd: i32,
        owner_fd: i32,
        value: Option<&[u8]>,
        flags: u64,
    ) -> Option<Value<'_>> {
        let k = self.k;
        let m = self.use_map(map_fd).ok()?;
        if flags & !BPF_LOCAL_STORAGE_GET_F_CREATE != 0 || self.sk_tracing_refused(m.ty) {
            return None;
        }
        let owner = self.use_owner(m.ty, owner_fd).ok()?;
        let ls = k.storage(m.ty);
        // Plain helpers take the counter unconditionally; `_recur` ones (and cgroup's single
        // proto) only try, and without it neither cache nor create.
        let trylock = self.spec.recur() || m.ty == MapType::Cgrp;
        let nobusy = if !m.ty.has_busy_counter() {
            true
        } else if trylock {
            k.try_busy(m.ty, self.cpu)
        } else {
            k.busy(m.ty, self.cpu).map(|c| c.fetch_add(1, Ordering::Relaxed));
            true
        };
        let found = ls.lookup(self.cpu, owner.as_ref(), &m.smap, nobusy);
        let result = match found {
            Some(s) => Some(s),
            None if flags & BPF_LOCAL_STORAGE_GET_F_CREATE != 0 && nobusy && owner.alive() => {
                let dyn_owner: untracked::Arc<dyn bpfls_local_storage::Owner> = owner.clone();
                // A sleepable program's create is `GFP_KERNEL` (the verifier patches the
                // helper's gfp argument): an empty per-CPU cache falls back to the slab.
                let gfp_kernel = self.spec.sleepable;
                ls.update(self.cpu, &dyn_owner, &m.smap, value, BPF_NOEXIST, gfp_kernel).ok()
            }
            None => None,
        };
        if m.ty.has_busy_counter() && nobusy {
            k.unbusy(m.ty, self.cpu);
        }
        result.map(|sref| Value { sref, _prog: std::marker::PhantomData })
    }

    /// `bpf_{task,sk,inode,cgrp}_storage_delete(map, owner)`: `-EINVAL` for a NULL owner,
    /// `-ENOENT` when absent or the owner is dead, `-EBUSY` when the recursion guard is held
    /// on this CPU (task `_recur`: only if the element exists; cgroup: before looking),
    /// `-EPERM` for the sk tracing variant in hardirq / NMI context.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType, ResultExt};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (_, task) = k.task_spawn();
    /// k.map_update_elem(0, map, task, &[1; 8], BPF_ANY).unwrap();
    /// k.run_prog(0, false, |p| {
    ///     assert_eq!(p.storage_delete(map, task).errno(), Ok(()));
    ///     assert_eq!(p.storage_delete(map, task).errno(), Err(Errno::ENOENT));
    ///     assert_eq!(p.storage_delete(map, map).errno(), Err(Errno::EINVAL), "a NULL owner");
    /// });
    /// ```
    pub fn storage_delete(&self, map_fd: i32, owner_fd: i32) -> Result<(), Error> {
        let k = self.k;
        let cpu = self.cpu;
        let m = self.use_map(map_fd)?;
        if self.sk_tracing_refused(m.ty) {
            return Err(Error::new(
                Errno::EPERM,
                format!(
                    "bpf_sk_storage_delete_tracing on fd {owner_fd} in map fd {map_fd} in {:?} \
                     context",
                    self.spec.ctx
                ),
            ));
        }
        let owner = self.use_owner(m.ty, owner_fd).map_err(|_| {
            Error::new(Errno::EINVAL, format!("fd {owner_fd} names no {}", m.ty.owner_name()))
        })?;
        if m.ty == MapType::Sk && !owner.alive() {
            // `refcount_inc_not_zero(&sk->sk_refcnt)` failed.
            return Err(Error::new(Errno::ENOENT, format!("{owner} is closing")));
        }
        let err = |e| Kernel::core_err(e, cpu, map_fd, &owner);
        let ls = k.storage(m.ty);
        if !m.ty.has_busy_counter() {
            return ls.delete(cpu, owner.as_ref(), &m.smap).map_err(err);
        }
        if m.ty == MapType::Cgrp || self.spec.recur() {
            if !k.try_busy(m.ty, cpu) {
                if m.ty == MapType::Cgrp {
                    return Err(err(Errno::EBUSY));
                }
                return match ls.lookup(cpu, owner.as_ref(), &m.smap, false) {
                    None => Err(err(Errno::ENOENT)),
                    Some(_) => Err(err(Errno::EBUSY)),
                };
            }
            let r = ls.delete(cpu, owner.as_ref(), &m.smap);
            k.unbusy(m.ty, cpu);
            return r.map_err(err);
        }
        k.guarded(m.ty, cpu, true, || ls.delete(cpu, owner.as_ref(), &m.smap)).map_err(err)
    }
}
