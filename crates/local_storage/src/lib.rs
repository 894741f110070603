//! The BPF local storage core: `kernel/bpf/bpf_local_storage.c` of the bpf_ma era (v6.4 ..
//! v6.18) over checked handles.
//!
//! See ADR 0002 for the representation: selems and storages live in `bpfls-mem-alloc` slabs,
//! lists are packed handles in atomics walked locklessly (so a recursive helper never needs a
//! lock the kernel would not take), and every access a program makes goes through a checked
//! handle, so a reclamation bug is a reported violation. [`LocalStorage::check_invariants`]
//! and [`LockDiscipline`] check the kernel's invariants; [`Mutations`] re-introduce its
//! historical bugs so tests can prove the checkers catch them.
//!
//! **Architecture invariant:** this crate knows nothing about tasks or sockets: an owner is
//! anything that implements [`Owner`].

mod checker;
pub mod errno;
pub mod flags;
mod local;
pub mod map;
pub mod objects;
mod owner;

pub use checker::LockDiscipline;
pub use errno::Errno;
pub use local::{Allocator, LocalStorage, MAX_MAPS, Mutations, SelemRef, Smap, TypeConfig};
pub use map::{CacheIdx, MapAttr, ValueLayout, btf, map_alloc_check};
pub use owner::{BasicOwner, Optmem, Owner};
