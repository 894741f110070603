//! Shared driver and fixtures for the loom models in `crates/local_storage/tests/loom_*.rs`.
//!
//! The driver ([`check`] / [`expect_failure`] and their `_capped` variants, [`Tally`], the
//! preemption bound read from `LOOM_MAX_PREEMPTIONS`, and the
//! `<name>: completed in N iterations (bound B)` line that `cargo xtask loom` compares with
//! `xtask/loom-baseline.txt`) is shared by every crate's models and lives in
//! `bpfls_testkit::loom`; it is re-exported here, so the models call it as before.
//!
//! [`World`] builds the small storage type every model uses: a [`LocalStorage`] of 2 CPUs
//! with [`CAPACITY`]-slot allocators (bpf_ma prefill takes 4 per CPU; there is no refill
//! thread under loom) over threaded [`Domains`] (no callback worker under loom: callbacks run
//! inside `barrier()`), a [`Violations`] collector, and a few maps with 8-byte values.
//! [`World::finish`] is the quiescent end every model shares: destroy the owners, free the
//! maps, tear the type down and assert that nothing leaked, nothing stayed charged and nothing
//! was reported.

#![allow(dead_code)] // each test file uses only part of this module

use bpfls_local_storage::{
    BasicOwner, LocalStorage, MapAttr, Mutations, Owner, SelemRef, Smap, TypeConfig, ValueLayout,
};
use bpfls_mem_alloc::{Handle, Violations};
use bpfls_rcu::{Config, Domains};
use bpfls_sync::Arc;
use bpfls_sync::atomic::Ordering;

// ----- driver ---------------------------------------------------------------------------------

pub use bpfls_testkit::loom::*;

// ----- the storage type under test ------------------------------------------------------------

/// Slots of every allocator (storages, and each map's selems). bpf_ma prefill takes 4 per CPU.
pub const CAPACITY: u32 = 16;

/// Logical CPUs: thread 1 runs on CPU 0, thread 2 on CPU 1, main on CPU 0 before the spawns
/// and after the joins.
pub const CPUS: u32 = 2;

/// Value bytes of every map.
pub const VALUE_SIZE: u32 = 8;

/// An owner as `update` takes it (a `std` Arc: owners are the test's, not loom's).
pub type OwnerArc = std::sync::Arc<dyn Owner>;

/// A socket-like owner with a large budget: charged like a socket (so the charge balance is
/// checked), never refused.
pub fn owner(id: u64) -> (std::sync::Arc<BasicOwner>, OwnerArc) {
    let o = BasicOwner::socket_like(id, 1 << 20);
    let dynamic: OwnerArc = o.clone();
    (o, dynamic)
}

/// The 8-byte value `[x; 8]`.
pub fn val(x: u8) -> Vec<u8> {
    vec![x; VALUE_SIZE as usize]
}

/// Which storage type a model builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `TypeConfig::task_like`: bpf_ma selems and storages (immediate reuse on `reuse_now`).
    Task,
    /// `TypeConfig::socket_like`: kmalloc / `kfree_rcu`.
    Socket,
}

/// One model's storage type, its domains, its collector and its maps.
pub struct World {
    /// The grace-period domains ([`CPUS`] RCU CPUs).
    pub domains: Arc<Domains>,
    /// The collector every report goes to.
    pub violations: Violations,
    /// The storage type.
    pub ls: LocalStorage,
    /// The maps, in creation order (`maps[i]` has cache index `i`).
    pub maps: Vec<Arc<Smap>>,
}

impl World {
    /// A storage type of `kind` with `nmaps` maps of `layout`, over domains in which a
    /// Tasks-Trace grace period implies an RCU one iff `trace_implies_rcu`.
    pub fn new(kind: Kind, nmaps: usize, layout: ValueLayout, trace_implies_rcu: bool) -> Self {
        Self::build(kind, nmaps, layout, trace_implies_rcu, Mutations::default())
    }

    /// [`World::new`] with deliberate bugs (`Mutations`) in the storage type.
    pub fn build(
        kind: Kind,
        nmaps: usize,
        layout: ValueLayout,
        trace_implies_rcu: bool,
        mutations: Mutations,
    ) -> Self {
        Self::build_with_rcu(kind, nmaps, layout, trace_implies_rcu, mutations, Config::threaded())
    }

    /// [`World::build`] over domains built from `rcu` (e.g. with a probe hook attached).
    pub fn build_with_rcu(
        kind: Kind,
        nmaps: usize,
        layout: ValueLayout,
        trace_implies_rcu: bool,
        mutations: Mutations,
        rcu: Config,
    ) -> Self {
        let base = match kind {
            Kind::Task => TypeConfig::task_like(CPUS),
            Kind::Socket => TypeConfig::socket_like(CPUS),
        };
        let cfg = TypeConfig { capacity: CAPACITY, ..base }.with_mutations(mutations);
        let domains = Arc::new(Domains::new(CPUS, rcu, trace_implies_rcu));
        let violations = Violations::new();
        let ls = LocalStorage::new(cfg, domains.clone(), violations.clone())
            .expect("a valid type configuration");
        let maps = (0..nmaps)
            .map(|_| {
                ls.map_create(MapAttr::new(VALUE_SIZE).with_layout(layout)).expect("map_create")
            })
            .collect();
        World { domains, violations, ls, maps }
    }

    /// Asserts that no violation has been reported so far.
    pub fn assert_no_violation(&self, what: &str) {
        let v = self.violations.snapshot();
        assert!(v.is_empty(), "{what}: no violation expected, got {v:?}");
    }

    /// How many lists (map bucket, storage) the selem `h` of `maps[map]` is on, per the
    /// slab ledger (0 once unlinked; 2 while visible).
    pub fn links(&self, map: usize, h: Handle) -> u32 {
        self.maps[map].selem_slab().ledger_of(h).map_or(0, |l| l.links)
    }

    /// A non-caching lookup of `owner`'s element of `maps[map]`, checked: a found element
    /// must be linked on both lists and readable; returns its handle and value.
    pub fn visible(&self, map: usize, owner: &dyn Owner, what: &str) -> Option<(Handle, Vec<u8>)> {
        let s: SelemRef = self.ls.lookup(0, owner, &self.maps[map], false)?;
        let h = s.handle();
        assert_eq!(self.links(map, h), 2, "{what}: the visible element {h} is not on both lists");
        let v = s.read("loom: final lookup").unwrap_or_else(|e| panic!("{what}: {e:?}"));
        Some((h, v))
    }

    /// Asserts the quiescent invariants of `LocalStorage::check_invariants` (I4 dual
    /// membership, I5 owner pointer, I6 cache safety, I7 charge balance, I13, and the I9 / I15
    /// breaches recorded on the way) over `owners`.
    pub fn assert_invariants(&self, owners: &[&dyn Owner], what: &str) {
        let problems = self.ls.check_invariants(owners);
        assert!(problems.is_empty(), "{what}: invariants broken: {problems:?}");
    }

    /// Whether `owner` points at a storage.
    pub fn has_storage(owner: &dyn Owner) -> bool {
        owner.storage_ptr().load(Ordering::Acquire) != 0
    }

    /// The quiescent end of a model: destroys `owners` (on CPU 0), frees the maps whose
    /// indexes are in `free_maps`, tears the type down, and asserts that nothing leaked (the
    /// storage allocator's report, every slab back to zero outstanding objects), nothing is
    /// still charged to `owners`, every cache index was released and nothing was reported.
    pub fn finish(&self, owners: &[&std::sync::Arc<BasicOwner>], free_maps: &[usize], what: &str) {
        let dyn_owners: Vec<&dyn Owner> = owners.iter().map(|o| o.as_ref() as &dyn Owner).collect();
        self.assert_invariants(&dyn_owners, what);
        for o in owners {
            self.ls.destroy(0, o.as_ref());
            assert!(!Self::has_storage(o.as_ref()), "{what}: destroy left the storage pointer");
        }
        for &m in free_maps {
            self.ls.map_free(0, self.maps[m].clone());
        }
        self.assert_invariants(&dyn_owners, what);
        let leaked = self.ls.teardown().unwrap_or_else(|e| panic!("{what}: teardown: {e:?}"));
        assert_eq!(leaked, 0, "{what}: leaked storages: {:?}", self.violations.snapshot());
        self.assert_no_violation(what);
        for (i, m) in self.maps.iter().enumerate() {
            let out = m.selem_slab().stats().outstanding;
            assert_eq!(out, 0, "{what}: {out} selems of map {i} are still out of the slab");
        }
        let out = self.ls.storage_slab().stats().outstanding;
        assert_eq!(out, 0, "{what}: {out} storages are still out of the slab");
        for o in owners {
            assert_eq!(o.charged_bytes(), 0, "{what}: owner {} is still charged", o.id());
        }
        assert_eq!(
            self.ls.cache_idx_counts().iter().sum::<u64>(),
            0,
            "{what}: cache indexes still in use"
        );
    }
}
