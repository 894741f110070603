//! A validated scenario: what [`parse`](crate::parse()) makes of a file, and what the runner
//! executes. Names are resolved to indices here, so the runner never meets an unknown map,
//! owner, program or probe point.

use bpfls_kernel::{Context, GpDomain, MapType, ProgType};
use bpfls_local_storage::{Errno, Mutations};

/// One scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (`[a-z0-9-]+`).
    pub name: String,
    /// One line saying what it shows.
    pub description: String,
    /// How the kernel is built.
    pub kernel: KernelConfig,
    /// The maps, created in this order before the first step.
    pub maps: Vec<MapDecl>,
    /// The owners: those with `accepted_from: None` exist before the first step, the others
    /// are created by an `accept` step.
    pub owners: Vec<OwnerDecl>,
    /// The programs.
    pub programs: Vec<ProgramDecl>,
    /// The steps, in file order: this order is the schedule.
    pub steps: Vec<Step>,
    /// What must hold once every step ran.
    pub expect: FinalExpect,
}

/// The `[kernel]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Logical CPUs (1..=64).
    pub cpus: u32,
    /// `rcu_trace_implies_rcu_gp()`.
    pub trace_implies_rcu: bool,
    /// The sockets' `optmem_max`.
    pub optmem_max: u64,
    /// PREEMPT_RT.
    pub preempt_rt: bool,
    /// The per-CPU busy counter (false: bug zoo B3).
    pub busy_counter: bool,
    /// Grace periods that ignore readers (`rcu = "busted"`, rcutorture's `rcu_busted`).
    pub busted_rcu: bool,
    /// The storage core's mutations switched on, by field name of [`Mutations`].
    pub mutations: Vec<String>,
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            cpus: 2,
            trace_implies_rcu: true,
            optmem_max: 20480,
            preempt_rt: false,
            busy_counter: true,
            busted_rcu: false,
            mutations: Vec::new(),
        }
    }
}

/// The names [`KernelConfig::mutations`] accepts, each with the switch it sets.
pub const MUTATIONS: &[&str] = &[
    "skip_cache_recheck",
    "skip_cache_clear",
    "delete_reuse_now",
    "map_free_skip_tasks_trace_barrier",
    "destroy_skips_uncharge",
    "map_free_skip_rcu_barrier",
    "alloc_under_lock",
    "one_bucket",
    "free_fields_early",
    "clone_into_dying_map",
];

impl KernelConfig {
    /// The storage core's mutations, from their names (unknown names were refused by the
    /// parser; here they are ignored).
    pub fn mutations(&self) -> Mutations {
        let mut m = Mutations::default();
        for name in &self.mutations {
            match name.as_str() {
                "skip_cache_recheck" => m.skip_cache_recheck = true,
                "skip_cache_clear" => m.skip_cache_clear = true,
                "delete_reuse_now" => m.delete_reuse_now = true,
                "map_free_skip_tasks_trace_barrier" => m.map_free_skip_tasks_trace_barrier = true,
                "destroy_skips_uncharge" => m.destroy_skips_uncharge = true,
                "map_free_skip_rcu_barrier" => m.map_free_skip_rcu_barrier = true,
                "alloc_under_lock" => m.alloc_under_lock = true,
                "one_bucket" => m.one_bucket = true,
                "free_fields_early" => m.free_fields_early = true,
                "clone_into_dying_map" => m.clone_into_dying_map = true,
                _ => {}
            }
        }
        m
    }
}

/// A `[maps.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDecl {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: MapType,
    /// Value bytes.
    pub value_size: u32,
    /// `BPF_F_CLONE`.
    pub clone: bool,
    /// The value has a uptr field (a pinned user page; task storage only).
    pub uptr: bool,
}

/// An owner: a `[owners.NAME]` table, or the `as` of an `accept` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerDecl {
    /// Its name.
    pub name: String,
    /// Which map type can hold storage for it (`socket` is [`MapType::Sk`], `cgroup`
    /// [`MapType::Cgrp`]).
    pub kind: MapType,
    /// For a socket created by `accept`: the index of the step that creates it.
    pub accepted_by: Option<usize>,
}

/// A `[programs.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramDecl {
    /// Its name.
    pub name: String,
    /// Its type (tracing programs get the `_recur` helpers).
    pub ty: ProgType,
    /// Sleepable (Tasks-Trace section) or not (RCU section).
    pub sleepable: bool,
    /// The context it runs in.
    pub context: Context,
    /// A probe point it is attached to (the fentry analogue): it runs whenever a CPU passes
    /// it, on that CPU, never inside itself.
    pub attach: Option<&'static str>,
    /// What it does, in order.
    pub actions: Vec<ProgAction>,
}

/// One action of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgAction {
    /// `bpf_X_storage_get(map, owner, init, create ? F_CREATE : 0)`, then write `write`.
    Get {
        /// Map index.
        map: usize,
        /// Owner index.
        owner: usize,
        /// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
        create: bool,
        /// The new element's initial value (zeros when `None`).
        init: Option<u64>,
        /// A value to write through the pointer.
        write: Option<u64>,
        /// `Null`, `Some` or `Value(n)` (the value after any write).
        expect: Option<Expect>,
    },
    /// Reads the value of the program's last successful get again.
    Read {
        /// `Value(n)`.
        expect: Option<Expect>,
    },
    /// Passes the probe point `prog_hold`: a place to pause the program (it blocks there).
    Hold,
    /// Dereferences the uptr field of the last got value (its pinned user page): the page
    /// must still be pinned (I11).
    UseUptr {
        /// `Ok` when the page is still there.
        expect: Option<Expect>,
    },
    /// `bpf_X_storage_delete(map, owner)`.
    Delete {
        /// Map index.
        map: usize,
        /// Owner index.
        owner: usize,
        /// `Ok` or an errno.
        expect: Option<Expect>,
    },
}

/// An expected outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Success (`"ok"`).
    Ok,
    /// This errno (`"ENOENT"`, ...).
    Errno(Errno),
    /// A value, as a little-endian u64 zero-padded to the value size (an integer).
    Value(u64),
    /// A helper returned NULL (`"null"`).
    Null,
    /// A helper returned a pointer (`"value"`).
    Some,
    /// A check's count or byte figure, or `"none"` / `"present"` for storage checks.
    Count(u64),
    /// `"none"`: the owner has no storage.
    NoStorage,
    /// `"present"`: the owner has a storage.
    HasStorage,
}

/// One `[[step]]`, with the 1-based line of the file it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The line of its `[[step]]` header.
    pub line: usize,
    /// What it does.
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// An operation on a CPU; with `until`, the CPU stops at that probe point (a later
    /// `resume` on the same CPU finishes it).
    Op {
        /// The CPU.
        cpu: u32,
        /// The operation.
        op: Op,
        /// A probe point to pause at.
        until: Option<&'static str>,
        /// The expected outcome.
        expect: Option<Expect>,
    },
    /// Finish the paused operation of this CPU.
    Resume {
        /// The CPU.
        cpu: u32,
    },
    /// Grace-period progress: one step, or until quiet.
    GracePeriod {
        /// The domain.
        domain: GpDomain,
        /// Until quiet (else one step).
        quiesce: bool,
    },
    /// A check of the kernel's state at this point.
    Check {
        /// What is checked.
        check: Check,
        /// The expected figure.
        expect: Expect,
    },
}

/// An operation of a CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `BPF_MAP_UPDATE_ELEM` with a little-endian u64 value and `flags`.
    Update {
        /// Map index.
        map: usize,
        /// Owner index.
        owner: usize,
        /// The value.
        value: u64,
        /// `BPF_ANY`, `BPF_NOEXIST` or `BPF_EXIST`.
        flags: u64,
    },
    /// `BPF_MAP_LOOKUP_ELEM`.
    Lookup {
        /// Map index.
        map: usize,
        /// Owner index.
        owner: usize,
    },
    /// `BPF_MAP_DELETE_ELEM`.
    Delete {
        /// Map index.
        map: usize,
        /// Owner index.
        owner: usize,
    },
    /// Runs a program.
    Run {
        /// Program index.
        program: usize,
    },
    /// Task exit.
    Exit {
        /// Owner index (a task).
        owner: usize,
    },
    /// Socket close.
    Close {
        /// Owner index (a socket).
        owner: usize,
    },
    /// Inode eviction.
    Evict {
        /// Owner index (an inode).
        owner: usize,
    },
    /// Cgroup rmdir.
    Rmdir {
        /// Owner index (a cgroup).
        owner: usize,
    },
    /// `accept()` on a socket: creates the owner `child`.
    Accept {
        /// The listening socket.
        parent: usize,
        /// The new socket's owner index.
        child: usize,
    },
    /// Closes the map's fd (its last reference: map_free).
    CloseMap {
        /// Map index.
        map: usize,
    },
}

/// A state check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Whether the owner has a storage (`expect = "none"` or `"present"`).
    Storage {
        /// Owner index.
        owner: usize,
    },
    /// The bytes charged to a socket.
    Charge {
        /// Owner index (a socket).
        owner: usize,
    },
    /// Callbacks queued and not yet invoked in a domain.
    Pending {
        /// The domain.
        domain: GpDomain,
    },
    /// The elements linked into a map.
    Elements {
        /// Map index.
        map: usize,
    },
}

/// The `[expect]` table: what must hold at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalExpect {
    /// Exactly these violations (kinds such as `UseAfterFree`, or invariant codes such as
    /// `I15`), each at least once, and nothing else; empty = none at all.
    pub violations: Vec<String>,
    /// The run ends in a deadlock.
    pub deadlock: bool,
}

/// The violation kinds and invariant codes `[expect] violations` may name.
pub const VIOLATION_NAMES: &[&str] = &[
    "UseAfterFree",
    "ReusedAccess",
    "DoubleFree",
    "UnknownObject",
    "Leak",
    "FreeWhileLinked",
    "I1",
    "I2",
    "I3",
    "I4",
    "I5",
    "I6",
    "I7",
    "I8",
    "I9",
    "I10",
    "I11",
    "I12",
    "I13",
    "I14",
    "I15",
];

/// The probe points a step's `until` or a program's `attach` may name.
pub const PROBE_POINTS: &[&str] = &[
    "sys_enter",
    "local_storage_lookup",
    "local_storage_update",
    "lookup_cache_insert",
    "selem_alloc",
    "storage_alloc",
    "selem_link",
    "selem_free",
    "storage_free",
    "free_now",
    "storage_lock_acquire",
    "storage_lock_release",
    "bucket_lock_acquire",
    "bucket_lock_release",
    "mem_cache_active",
    "slab_alloc",
    "slab_free",
    "read_lock",
    "read_unlock",
    "call",
    "barrier",
    "gp_wait",
    "lock_wait",
    "owner_wait",
    "prog_hold",
];

/// The `&'static str` of a probe point name, if it is one.
pub fn probe_point(name: &str) -> Option<&'static str> {
    PROBE_POINTS.iter().copied().find(|p| *p == name)
}
