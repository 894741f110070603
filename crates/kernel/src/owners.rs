//! The owners the kernel models: tasks, sockets, inodes, cgroups (§1.6), as one type with a
//! kind, implementing the storage core's [`Owner`] trait.

use crate::MapType;
use bpfls_local_storage::{Optmem, Owner};
use bpfls_sync::atomic::AtomicU64;
use bpfls_sync::untracked;
use std::fmt;

/// A task, socket, inode or cgroup.
///
/// Users never hold one: the [`Kernel`](crate::Kernel) keeps its owners and hands out fds that
/// name them ([`Kernel::task_spawn`](crate::Kernel::task_spawn) and the like), so the examples
/// here work through those fds. Errors name an owner by its kind and id:
///
/// ```
/// # use bpfls_kernel::{Kernel, MapType};
/// # use bpfls_local_storage::MapAttr;
/// let k = Kernel::builder().build();
/// let map = k.map_create(MapType::Inode, MapAttr::new(8)).unwrap();
/// let (ino, fd) = k.inode_create();
/// let e = k.map_lookup_elem(0, map, fd).unwrap_err();
/// assert_eq!(e.detail(), format!("no element for inode {ino} in map fd {map}"));
/// ```
pub struct OwnerObj {
    kind: MapType,
    id: u64,
    ptr: AtomicU64,
    alive: untracked::AtomicBool,
    optmem: Option<Optmem>,
    /// Running programs that use it (each holds a reference, like `bpf_task_acquire` or a
    /// hook's argument): the final put, and with it the storage's destroy, waits for them.
    users: untracked::AtomicU64,
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
            users: untracked::AtomicU64::new(0),
        }
    }

    /// Which map type can hold storage for it. The facade checks it for every key fd: an fd
    /// naming an owner of another kind is `-EBADF`.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let cgroups = k.map_create(MapType::Cgrp, MapAttr::new(8)).unwrap();
    /// let (_, cgfd) = k.cgroup_mkdir();
    /// let (_, pidfd) = k.task_spawn();
    /// assert!(k.map_update_elem(0, cgroups, cgfd, &[1; 8], BPF_ANY).is_ok());
    /// let e = k.map_update_elem(0, cgroups, pidfd, &[1; 8], BPF_ANY).unwrap_err();
    /// assert_eq!(e, Errno::EBADF);
    /// assert_eq!(e.detail(), format!("fd {pidfd} is not a cgroup fd"));
    /// ```
    pub fn kind(&self) -> MapType {
        self.kind
    }

    /// Whether it is still alive (not exited, closed, evicted, removed). A dead owner takes no
    /// new storage: syscalls through an fd that still names it get `-ENOENT`.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().build();
    /// let map = k.map_create(MapType::Task, MapAttr::new(8)).unwrap();
    /// let (pid, pidfd) = k.task_spawn();
    /// k.task_exit(0, pidfd).unwrap();
    /// let e = k.map_update_elem(0, map, pidfd, &[1; 8], BPF_ANY).unwrap_err();
    /// assert_eq!(e, Errno::ENOENT);
    /// assert_eq!(e.detail(), format!("task {pid} is gone"));
    /// ```
    pub fn alive(&self) -> bool {
        self.alive.load(untracked::Ordering::Relaxed)
    }

    /// A running program takes a reference.
    pub(crate) fn get_user(&self) {
        self.users.fetch_add(1, untracked::Ordering::Relaxed);
    }

    /// A running program drops its reference.
    pub(crate) fn put_user(&self) {
        // ORDERING: Release pairs with the Acquire load in `users`: the program's accesses to
        // the owner's storage happen before the destroy that waited for this.
        self.users.fetch_sub(1, untracked::Ordering::Release);
    }

    /// Running programs that hold a reference.
    pub(crate) fn users(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release in `put_user`.
        self.users.load(untracked::Ordering::Acquire)
    }

    /// Marks it dead; `false` if it already was.
    pub(crate) fn kill(&self) -> bool {
        self.alive.swap(false, untracked::Ordering::Relaxed)
    }

    /// Whether its destroy runs past an RCU grace period (tasks, cgroups).
    pub(crate) fn past_gp(&self) -> bool {
        matches!(self.kind, MapType::Task | MapType::Cgrp)
    }

    /// `sk_omem_alloc` for sockets, 0 otherwise; read it with
    /// [`Kernel::socket_charge`](crate::Kernel::socket_charge). It never exceeds `optmem_max`:
    /// a charge that would is refused (`-ENOMEM`) and leaves it unchanged.
    ///
    /// ```
    /// # use bpfls_kernel::{Kernel, MapType};
    /// # use bpfls_local_storage::{Errno, MapAttr, flags::BPF_ANY};
    /// let k = Kernel::builder().optmem_max(300).build();
    /// let a = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let b = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    /// let (_, sock) = k.socket_create();
    /// k.map_update_elem(0, a, sock, &[1; 8], BPF_ANY).unwrap();
    /// let charged = k.socket_charge(sock).unwrap();
    /// assert!(0 < charged && charged <= 300);
    /// let e = k.map_update_elem(0, b, sock, &[2; 8], BPF_ANY).unwrap_err();
    /// assert_eq!(e, Errno::ENOMEM);
    /// assert_eq!(k.socket_charge(sock).unwrap(), charged);
    /// ```
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

    fn optmem(&self) -> Option<&Optmem> {
        self.optmem.as_ref()
    }

    fn past_rcu_gp_at_destroy(&self) -> bool {
        self.past_gp()
    }
}
