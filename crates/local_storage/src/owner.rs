//! What local storage needs from an owner (a task, socket, inode or cgroup — it does not know
//! which): the storage-pointer slot, the charge hooks, and whether destroy runs past an RCU
//! grace period.

use crate::errno::Errno;
use bpfls_sync::atomic::AtomicU64;
use bpfls_sync::untracked;
use std::fmt;

/// An owner of local storage (the kernel's `task_struct` / `sock` / `inode` / `cgroup`, seen
/// through the per-type hooks of §1.6).
pub trait Owner: Send + Sync + 'static {
    /// A stable id (traces, reports).
    fn id(&self) -> u64;

    /// The owner's storage pointer (`task->bpf_storage`, ...): a packed storage handle, 0 for
    /// NULL. Set only by compare-and-swap from 0; cleared under the storage lock.
    fn storage_ptr(&self) -> &AtomicU64;

    /// The owner's charge budget (`sk_omem_alloc` against `optmem_max`), for owners that
    /// charge (sockets); the charge hooks below use it.
    fn optmem(&self) -> Option<&Optmem> {
        None
    }

    /// Charges `bytes` to the owner (`sk_omem_alloc`); only sockets refuse.
    fn charge(&self, bytes: usize) -> Result<(), Errno> {
        self.optmem().map_or(Ok(()), |o| o.charge(bytes))
    }

    /// Uncharges `bytes`.
    fn uncharge(&self, bytes: usize) {
        if let Some(o) = self.optmem() {
            o.uncharge(bytes);
        }
    }

    /// Bytes charged now, for owners that charge (the I7 check); `None` otherwise.
    fn charged(&self) -> Option<u64> {
        self.optmem().map(Optmem::charged)
    }

    /// Whether the owner's destroy runs after an RCU grace period has passed since the owner
    /// became unreachable (task, cgroup: yes; socket, inode: no). Only such owners may have
    /// their storage reused immediately by the per-CPU cache.
    fn past_rcu_gp_at_destroy(&self) -> bool;
}

/// The socket charging rule: allow `size` iff `size <= optmem_max` and
/// `charged + size < optmem_max` (strict), then add it.
pub struct Optmem {
    max: u64,
    charged: untracked::AtomicU64,
}

impl fmt::Debug for Optmem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optmem").field("max", &self.max).field("charged", &self.charged()).finish()
    }
}

impl Optmem {
    /// A budget of `optmem_max` bytes.
    pub fn new(optmem_max: u64) -> Self {
        Optmem { max: optmem_max, charged: untracked::AtomicU64::new(0) }
    }

    /// Bytes charged now (`sk_omem_alloc`).
    pub fn charged(&self) -> u64 {
        self.charged.load(untracked::Ordering::Relaxed)
    }

    /// `sk_omem_charge`.
    pub fn charge(&self, bytes: usize) -> Result<(), Errno> {
        let size = bytes as u64;
        self.charged
            .fetch_update(untracked::Ordering::Relaxed, untracked::Ordering::Relaxed, |c| {
                (size <= self.max && c + size < self.max).then_some(c + size)
            })
            .map(|_| ())
            .map_err(|_| Errno::ENOMEM)
    }

    /// Unconditional subtract.
    pub fn uncharge(&self, bytes: usize) {
        self.charged.fetch_sub(bytes as u64, untracked::Ordering::Relaxed);
    }
}

/// A plain owner for tests and tools: an id, the pointer slot, an optional socket-style
/// budget, and the destroy-timing flag.
pub struct BasicOwner {
    id: u64,
    ptr: AtomicU64,
    optmem: Option<Optmem>,
    past_gp: bool,
}

impl fmt::Debug for BasicOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicOwner").field("id", &self.id).field("optmem", &self.optmem).finish()
    }
}

impl BasicOwner {
    /// A task-like owner (no charging, destroy past a grace period).
    pub fn task_like(id: u64) -> untracked::Arc<Self> {
        untracked::Arc::new(BasicOwner { id, ptr: AtomicU64::new(0), optmem: None, past_gp: true })
    }

    /// A socket-like owner (charged against `optmem_max`, destroy before a grace period).
    pub fn socket_like(id: u64, optmem_max: u64) -> untracked::Arc<Self> {
        untracked::Arc::new(BasicOwner {
            id,
            ptr: AtomicU64::new(0),
            optmem: Some(Optmem::new(optmem_max)),
            past_gp: false,
        })
    }

    /// Bytes charged (0 for an owner without a budget).
    pub fn charged_bytes(&self) -> u64 {
        self.optmem.as_ref().map_or(0, Optmem::charged)
    }
}

impl Owner for BasicOwner {
    fn id(&self) -> u64 {
        self.id
    }

    fn storage_ptr(&self) -> &AtomicU64 {
        &self.ptr
    }

    fn optmem(&self) -> Option<&Optmem> {
        self.optmem.as_ref()
    }

    fn past_rcu_gp_at_destroy(&self) -> bool {
        self.past_gp
    }
}
