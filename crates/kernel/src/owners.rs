//! The owners the kernel models: tasks, sockets, inodes, cgroups (§1.6), as one type with a
//! kind, implementing the storage core's [`Owner`] trait.

use crate::MapType;
use bpfls_local_storage::{Errno, Optmem, Owner};
use bpfls_sync::atomic::AtomicU64;
use bpfls_sync::untracked;
use std::fmt;

/// A task, socket, inode or cgroup.
pub struct OwnerObj {
    kind: MapType,
    id: u64,
    ptr: AtomicU64,
    alive: untracked::AtomicBool,
    optmem: Option<Optmem>,
}

impl fmt::Debug for OwnerObj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerObj").field("kind", &self.kind).field("id", &self.id).finish()
    }
}

impl fmt::Display for OwnerObj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.owner_name(), self.id)
    }
}

impl OwnerObj {
    pub(crate) fn new(kind: MapType, id: u64, optmem_max: Option<u64>) -> Self {
        OwnerObj {
            kind,
            id,
            ptr: AtomicU64::new(0),
            alive: untracked::AtomicBool::new(true),
            optmem: optmem_max.map(Optmem::new),
        }
    }

    /// Which map type can hold storage for it.
    pub fn kind(&self) -> MapType {
        self.kind
    }

    /// Whether it is still alive (not exited, closed, evicted, removed).
    pub fn alive(&self) -> bool {
        self.alive.load(untracked::Ordering::Relaxed)
    }

    /// Marks it dead; `false` if it already was.
    pub(crate) fn kill(&self) -> bool {
        self.alive.swap(false, untracked::Ordering::Relaxed)
    }

    /// Whether its destroy runs past an RCU grace period (tasks, cgroups).
    pub(crate) fn past_gp(&self) -> bool {
        matches!(self.kind, MapType::Task | MapType::Cgrp)
    }

    /// `sk_omem_alloc` for sockets, 0 otherwise.
    pub fn charged_bytes(&self) -> u64 {
        self.optmem.as_ref().map_or(0, Optmem::charged)
    }
}

impl Owner for OwnerObj {
    fn id(&self) -> u64 {
        self.id
    }

    fn storage_ptr(&self) -> &AtomicU64 {
        &self.ptr
    }

    fn charge(&self, bytes: usize) -> Result<(), Errno> {
        self.optmem.as_ref().map_or(Ok(()), |o| o.charge(bytes))
    }

    fn uncharge(&self, bytes: usize) {
        if let Some(o) = &self.optmem {
            o.uncharge(bytes);
        }
    }

    fn charged(&self) -> Option<u64> {
        self.optmem.as_ref().map(Optmem::charged)
    }

    fn past_rcu_gp_at_destroy(&self) -> bool {
        self.past_gp()
    }
}
