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
    /// A valid attribute set for `value_size` bytes: key 4, `BPF_F_NO_PREALLOC`, BTF ids
    /// [`btf::INT`] for the key and [`btf::char_array`]`(value_size)` for the value.
    pub fn new(value_size: u32) -> Self {
        MapAttr {
            key_size: 4,
            value_size,
            max_entries: 0,
            map_flags: MapFlags::NO_PREALLOC.bits(),
            btf_key_type_id: btf::INT,
            btf_value_type_id: btf::char_array(value_size),
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

/// The type ids of the simulated BTF that [`MapAttr::new`] uses; the kernel facade resolves
/// them (`bpfls_kernel::btf`). The storage core only requires them to be non-zero.
pub mod btf {
    /// `int` (4 bytes).
    pub const INT: u32 = 1;
    /// `long` (8 bytes).
    pub const LONG: u32 = 2;
    /// Ids above this are `char[id - CHAR_ARRAY_BASE]`.
    pub const CHAR_ARRAY_BASE: u32 = 0x1_0000;

    /// The id of `char[n]` (saturating for sizes no map accepts).
    pub const fn char_array(n: u32) -> u32 {
        CHAR_ARRAY_BASE.saturating_add(n)
    }
}

/// `bpf_local_storage_map_alloc_check`, in the kernel's order: `-EINVAL` for unknown or
/// missing flags, `max_entries != 0`, `key_size != 4`, `value_size == 0` or a missing BTF id;
/// then `-E2BIG` for a value above [`MAX_VALUE_SIZE`].
pub fn map_alloc_check(attr: &MapAttr) -> Result<(), Errno> {
    map_alloc_check_detail(attr).map_err(|(e, _)| e)
}

/// [`map_alloc_check`] with the reason: which attribute is wrong.
///
/// ```
/// use bpfls_local_storage::map::map_alloc_check_detail;
/// use bpfls_local_storage::{Errno, MapAttr};
/// let attr = MapAttr { key_size: 8, ..MapAttr::new(16) };
/// assert_eq!(map_alloc_check_detail(&attr), Err((Errno::EINVAL, "key_size 8 is not 4".into())));
/// ```
pub fn map_alloc_check_detail(attr: &MapAttr) -> Result<(), (Errno, String)> {
    let known = MapFlags::NO_PREALLOC | MapFlags::CLONE;
    let inval = |why: String| Err((Errno::EINVAL, why));
    if attr.map_flags & !known.bits() != 0 {
        return inval(format!(
            "map_flags {:#x} has bits other than BPF_F_NO_PREALLOC | BPF_F_CLONE",
            attr.map_flags
        ));
    }
    if attr.map_flags & MapFlags::NO_PREALLOC.bits() == 0 {
        return inval("map_flags lacks BPF_F_NO_PREALLOC".into());
    }
    if attr.max_entries != 0 {
        return inval(format!("max_entries {} is not 0", attr.max_entries));
    }
    if attr.key_size != 4 {
        return inval(format!("key_size {} is not 4", attr.key_size));
    }
    if attr.value_size == 0 {
        return inval("value_size is 0".into());
    }
    if attr.btf_key_type_id == 0 || attr.btf_value_type_id == 0 {
        return inval("BTF key and value type ids are required".into());
    }
    if attr.value_size > MAX_VALUE_SIZE {
        return Err((
            Errno::E2BIG,
            format!("value_size {} is above the limit {MAX_VALUE_SIZE}", attr.value_size),
        ));
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
