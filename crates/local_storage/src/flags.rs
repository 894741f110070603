//! uapi flag values (`include/uapi/linux/bpf.h`).

bitflags::bitflags! {
    /// `map_flags` accepted by local-storage maps.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MapFlags: u32 {
        /// `BPF_F_NO_PREALLOC` (required).
        const NO_PREALLOC = 1 << 0;
        /// `BPF_F_CLONE` (acted on by socket storage only).
        const CLONE = 1 << 9;
    }
}

/// `BPF_ANY`.
pub const BPF_ANY: u64 = 0;
/// `BPF_NOEXIST`.
pub const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`.
pub const BPF_EXIST: u64 = 2;
/// `BPF_F_LOCK`.
pub const BPF_F_LOCK: u64 = 4;
/// `BPF_LOCAL_STORAGE_GET_F_CREATE`.
pub const BPF_LOCAL_STORAGE_GET_F_CREATE: u64 = 1;
