//! The simulated BTF: the type ids `BPF_MAP_CREATE` checks a local-storage map's key and
//! value against (`map_check_btf`).
//!
//! The kernel resolves `btf_key_type_id` / `btf_value_type_id` in a BTF object the loader
//! uploaded; a local-storage map needs the key to be a 4-byte int and the value type's size
//! to equal `value_size` (`-EINVAL` otherwise). bpfls has no loader, so it has one fixed type
//! table every map creation resolves against:
//!
//! | id | type | size |
//! |---|---|---|
//! | [`INT`] = 1 | `int` | 4 |
//! | [`LONG`] = 2 | `long` | 8 |
//! | [`char_array(n)`](char_array) = `0x10000 + n` | `char[n]` | n |
//!
//! [`MapAttr::new`](bpfls_local_storage::MapAttr::new) picks `INT` and `char[value_size]`.

pub use bpfls_local_storage::btf::{CHAR_ARRAY_BASE, INT, LONG, char_array};

/// What a type id names.
///
/// ```
/// use bpfls_kernel::btf::{self, BtfType};
/// assert_eq!(btf::resolve(btf::LONG), Some(BtfType::Int(8)));
/// assert_eq!(btf::resolve(btf::char_array(16)), Some(BtfType::CharArray(16)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfType {
    /// A signed integer of this many bytes.
    Int(u32),
    /// `char[n]`.
    CharArray(u32),
}

impl BtfType {
    /// The type's size in bytes.
    ///
    /// ```
    /// use bpfls_kernel::btf;
    /// use bpfls_local_storage::MapAttr;
    /// // `MapAttr::new(24)` names `char[24]`: 24 bytes, the size `map_create` requires.
    /// let attr = MapAttr::new(24);
    /// assert_eq!(btf::resolve(attr.btf_value_type_id).map(|t| t.size()), Some(24));
    /// assert_eq!(btf::resolve(attr.btf_key_type_id).map(|t| t.size()), Some(4));
    /// ```
    pub fn size(self) -> u32 {
        match self {
            BtfType::Int(n) | BtfType::CharArray(n) => n,
        }
    }
}

/// The type `id` names; `None` for an id the table does not have.
///
/// ```
/// use bpfls_kernel::btf::{self, BtfType};
/// assert_eq!(btf::resolve(btf::INT), Some(BtfType::Int(4)));
/// assert_eq!(btf::resolve(btf::char_array(24)), Some(BtfType::CharArray(24)));
/// assert_eq!(btf::resolve(3), None);
/// ```
pub fn resolve(id: u32) -> Option<BtfType> {
    match id {
        INT => Some(BtfType::Int(4)),
        LONG => Some(BtfType::Int(8)),
        _ if id > CHAR_ARRAY_BASE => Some(BtfType::CharArray(id - CHAR_ARRAY_BASE)),
        _ => None,
    }
}
