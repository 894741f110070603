//! Map attributes, `map_alloc_check`, and the per-type cache-index allocator.

use crate::errno::Errno;
use crate::flags::MapFlags;
use bpfls_sync::SpinLock;

/// `BPF_LOCAL_STORAGE_CACHE_SIZE`: slots of every storage's lookup cache.
pub const CACHE_SIZE: usize = 16;

/// `sizeof(struct bpf_local_storage_elem)` up to `sdata.data` on x86-64 (the default
/// `selem_hdr`): `elem_size = 72 + value_size`.
pub const SELEM_HDR: usize = 72;

/// `BPF_LOCAL_STORAGE_MAX_VALUE_SIZE` on x86-64: `U16_MAX - sizeof(selem)` with the selem
/// rounded up to its 64-byte-aligned `sdata` (128 bytes).
pub const MAX_VALUE_SIZE: u32 = u16::MAX as u32 - 128;

/// The special fields of a value type that the kernel tracks (`btf_record`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValueLayout {
    /// A `struct bpf_spin_lock` (needed for `BPF_F_LOCK`).
    pub spin_lock: bool,
    /// Referenced kptr slots.
    pub kptrs: u8,
    /// uptr slots (task storage only).
    pub uptrs: u8,
}

/// `union bpf_attr` for `BPF_MAP_CREATE`, the fields local storage looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapAttr {
    /// Must be 4 (an int fd).
    pub key_size: u32,
    /// Value bytes, 1 ..= [`MAX_VALUE_SIZE`].
    pub value_size: u32,
    /// Must be 0.
    pub max_entries: u32,
    /// Raw `map_flags`: `BPF_F_NO_PREALLOC` required, `BPF_F_CLONE` allowed, nothing else.
    pub map_flags: u32,
    /// BTF key type id (mandatory, non-zero).
    pub btf_key_type_id: u32,
    /// BTF value type id (mandatory, non-zero).
    pub btf_value_type_id: u32,
    /// Special fields of the value.
    pub layout: ValueLayout,
}

impl MapAttr {
    /// A valid attribute set for `value_size` bytes: key 4, `BPF_F_NO_PREALLOC`, BTF ids 1/2.
    pub fn new(value_size: u32) -> Self {
        MapAttr {
            key_size: 4,
            value_size,
            max_entries: 0,
            map_flags: MapFlags::NO_PREALLOC.bits(),
            btf_key_type_id: 1,
            btf_value_type_id: 2,
            layout: ValueLayout::default(),
        }
    }

    /// The same with a value layout.
    pub fn with_layout(self, layout: ValueLayout) -> Self {
        MapAttr { layout, ..self }
    }

    /// The same with extra map flags (raw bits).
    pub fn with_flags(self, map_flags: u32) -> Self {
        MapAttr { map_flags, ..self }
    }
}

/// `bpf_local_storage_map_alloc_check`, in the kernel's order: `-EINVAL` for unknown or
/// missing flags, `max_entries != 0`, `key_size != 4`, `value_size == 0` or a missing BTF id;
/// then `-E2BIG` for a value above [`MAX_VALUE_SIZE`].
pub fn map_alloc_check(attr: &MapAttr) -> Result<(), Errno> {
    let known = MapFlags::NO_PREALLOC | MapFlags::CLONE;
    if attr.map_flags & !known.bits() != 0
        || attr.map_flags & MapFlags::NO_PREALLOC.bits() == 0
        || attr.max_entries != 0
        || attr.key_size != 4
        || attr.value_size == 0
        || attr.btf_key_type_id == 0
        || attr.btf_value_type_id == 0
    {
        return Err(Errno::EINVAL);
    }
    if attr.value_size > MAX_VALUE_SIZE {
        return Err(Errno::E2BIG);
    }
    Ok(())
}

/// `nbuckets = max(2, roundup_pow_of_two(ncpus))` (at least 2: bug zoo B1).
pub fn nbuckets(cpus: u32) -> usize {
    (cpus.max(1) as usize).next_power_of_two().max(2)
}

/// The per-owner-type `bpf_local_storage_cache`: usage counts of the 16 cache slots.
#[derive(Debug)]
pub struct CacheIdx {
    counts: SpinLock<[u64; CACHE_SIZE]>,
}

impl Default for CacheIdx {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheIdx {
    /// All slots unused.
    pub fn new() -> Self {
        CacheIdx { counts: SpinLock::new([0; CACHE_SIZE]) }
    }

    /// `bpf_local_storage_cache_idx_get`: the least-used slot; the first unused one wins
    /// early; ties go to the lowest index.
    pub fn get(&self) -> u16 {
        let mut counts = self.counts.lock();
        let mut best = 0;
        for i in 0..CACHE_SIZE {
            if counts[i] < counts[best] {
                best = i;
            }
            if counts[i] == 0 {
                best = i;
                break;
            }
        }
        counts[best] += 1;
        best as u16
    }

    /// `bpf_local_storage_cache_idx_free`.
    pub fn put(&self, idx: u16) {
        let mut counts = self.counts.lock();
        counts[idx as usize] = counts[idx as usize].saturating_sub(1);
    }

    /// The usage counts (I13: their sum is the number of live maps of the type).
    pub fn counts(&self) -> [u64; CACHE_SIZE] {
        *self.counts.lock()
    }
}
