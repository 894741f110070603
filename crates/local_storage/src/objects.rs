//! The slab objects: `bpf_local_storage_elem` (selem) and `bpf_local_storage` (storage).
//!
//! Both live in `bpfls-mem-alloc` slabs, so a stale reference is memory-safe and a stale
//! *access* is a reported violation. Every field a lockless reader may touch is a facade atomic
//! (loom sees it; a racy reader of a recycled object reads some value, never undefined
//! behaviour). List links are packed handles (ADR 0002): `map_id << 48 | slot << 24 |
//! generation`, 0 for NULL.

use crate::map::{CACHE_SIZE, SELEM_HDR};
use bpfls_mem_alloc::{HEADER, Handle, SlabObject, slab::POISON};
use bpfls_sync::SpinLock;
use bpfls_sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use bpfls_sync::untracked;
use std::fmt;

/// A selem link: the map id and the selem's packed handle.
pub(crate) fn link(map_id: u16, h: Handle) -> u64 {
    (u64::from(map_id) << 48) | h.pack()
}

/// The map id of a non-zero link.
pub(crate) fn link_map(link: u64) -> u16 {
    (link >> 48) as u16
}

/// The selem handle of a non-zero link (selem slabs are fixed-size: class 0).
pub(crate) fn link_handle(link: u64) -> Handle {
    Handle::unpack(0, link & ((1 << 48) - 1))
}

/// `struct bpf_local_storage_elem`.
pub struct Selem {
    /// `sdata.smap`: the map id (0 = none).
    pub(crate) smap: AtomicU32,
    /// `local_storage`: the owning storage's packed handle (0 = none).
    pub(crate) storage: AtomicU64,
    /// `snode`: next selem link on the storage list.
    pub(crate) snode_next: AtomicU64,
    /// `map_node`: next selem link on the bucket list.
    pub(crate) map_next: AtomicU64,
    /// `map_node.pprev`: the previous selem's link on the bucket list, 0 for the bucket head.
    /// Only touched under the bucket lock (walkers follow `map_next` alone), it makes the
    /// unlink O(1) as the kernel's hlist is.
    pub(crate) map_prev: AtomicU64,
    /// `!hlist_unhashed(&selem->snode)`.
    pub(crate) storage_linked: AtomicBool,
    /// `!hlist_unhashed(&selem->map_node)`.
    pub(crate) map_linked: AtomicBool,
    /// The value's `bpf_spin_lock` (used by `BPF_F_LOCK` copies).
    pub(crate) value_lock: SpinLock<()>,
    /// `sdata.data`, as 64-bit words.
    pub(crate) value: Box<[AtomicU64]>,
    /// Whether the value's special fields (kptrs, uptrs) hold references that
    /// `bpf_obj_free_fields` has not released yet (I11 bookkeeping, untracked).
    pub(crate) fields_held: untracked::AtomicBool,
}

impl fmt::Debug for Selem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selem")
            .field("smap", &self.smap.load(Ordering::Relaxed))
            .field("storage_linked", &self.storage_linked.load(Ordering::Relaxed))
            .field("map_linked", &self.map_linked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SlabObject for Selem {
    fn new(unit_size: usize) -> Self {
        let value_bytes = unit_size.saturating_sub(HEADER + SELEM_HDR);
        Selem {
            smap: AtomicU32::new(0),
            storage: AtomicU64::new(0),
            snode_next: AtomicU64::new(0),
            map_next: AtomicU64::new(0),
            map_prev: AtomicU64::new(0),
            storage_linked: AtomicBool::new(false),
            map_linked: AtomicBool::new(false),
            value_lock: SpinLock::new(()),
            value: (0..value_bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
            fields_held: untracked::AtomicBool::new(false),
        }
    }

    /// Poisons the value only: `hlist_del_init_rcu` leaves the links intact so that a
    /// concurrent walker can continue, and the slab must not break that.
    fn poison(&self) {
        for w in self.value.iter() {
            w.store(POISON, Ordering::Relaxed);
        }
    }
}

impl Selem {
    /// Copies `bytes` into the value (little-endian words; the tail of the last word zeroed).
    pub(crate) fn write_value(&self, bytes: &[u8]) {
        for (i, w) in self.value.iter().enumerate() {
            let mut word = [0u8; 8];
            let start = (i * 8).min(bytes.len());
            let end = ((i + 1) * 8).min(bytes.len());
            word[..end - start].copy_from_slice(&bytes[start..end]);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
    }

    /// Zeroes the value.
    pub(crate) fn zero_value(&self) {
        for w in self.value.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// The first `len` value bytes.
    pub(crate) fn read_value(&self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.value.len() * 8);
        for w in self.value.iter() {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// What lock S protects beyond the lists: the owner back pointer.
pub(crate) struct Locked {
    /// `storage->owner`: set at creation, cleared (with the owner's storage pointer) when the
    /// last selem leaves.
    pub(crate) owner: Option<untracked::Arc<dyn crate::Owner>>,
}

/// `struct bpf_local_storage`.
pub struct Storage {
    /// `list`: the first selem link of the owner's selems.
    pub(crate) list_head: AtomicU64,
    /// `cache[16]`: selem links (0 = NULL). Not cleared when the object is recycled: a fresh
    /// object is zeroed by construction and a recycled one must have been cleared by every
    /// unlink (I15).
    pub(crate) cache: [AtomicU64; CACHE_SIZE],
    /// `smap`: the creator map's id (0 once its selem left).
    pub(crate) smap: AtomicU32,
    /// `lock` (S), guarding the owner pointer too.
    pub(crate) lock: SpinLock<Locked>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("list_head", &self.list_head.load(Ordering::Relaxed))
            .field("smap", &self.smap.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SlabObject for Storage {
    fn new(_unit_size: usize) -> Self {
        Storage {
            list_head: AtomicU64::new(0),
            cache: std::array::from_fn(|_| AtomicU64::new(0)),
            smap: AtomicU32::new(0),
            lock: SpinLock::new(Locked { owner: None }),
        }
    }

    /// Nothing to poison: the kernel frees a storage only once its list is empty, and the
    /// cache must keep whatever the unlinks left in it (the I15 check looks at it).
    fn poison(&self) {}
}
