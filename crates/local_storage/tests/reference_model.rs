#![cfg(not(any(loom, shuttle)))]
//! A sequential reference model of local storage, checked against the simulator with
//! proptest.
//!
//! The model is a `HashMap<(owner, map), value>` plus the update flag rules (§2.3), the
//! first-storage path (§2.4), delete (§2.5), destroy (§2.6), map_free (§2.8) and the socket
//! charge rule (§2.9: `size <= optmem_max && charged + size < optmem_max`, a replace charging
//! the new element before uncharging the old one, and the charge of the non-first path coming
//! before `check_flags`). Random sequences of operations on 3 owners × 3 maps (map 2 has a
//! `bpf_spin_lock`) run on task-like and socket-like types, with `trace_implies_rcu` true and
//! false; every result, errno and looked-up value must match the model, no violation may be
//! reported, and (sockets) every owner's charge must be `Σ elem_size + storage_size` over its
//! elements. At the end everything is torn down and nothing may be left.

use bpfls_local_storage::flags::{BPF_ANY, BPF_EXIST, BPF_F_LOCK, BPF_NOEXIST};
use bpfls_local_storage::map::CACHE_SIZE;
use bpfls_local_storage::{
    BasicOwner, Errno, LocalStorage, MapAttr, Owner, Smap, TypeConfig, ValueLayout,
};
use bpfls_mem_alloc::{Handle, Violations};
use bpfls_rcu::{Config, Domains};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const CPUS: u32 = 2;
const OWNERS: usize = 3;
const MAPS: usize = 3;
/// Value bytes of every map.
const VALUE_SIZE: usize = 8;
/// `elem_size = 72 + value_size`.
const ELEM: u64 = 72 + VALUE_SIZE as u64;
/// `sizeof(struct bpf_local_storage)` of both type configs.
const STORAGE: u64 = 176;
/// The map with a spin lock in its value (the only one `BPF_F_LOCK` is valid on).
const LOCKED_MAP: usize = 2;
/// An optmem budget no sequence can reach.
const ROOMY: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Task,
    Socket,
}

#[derive(Debug, Clone)]
enum Op {
    Update { cpu: u32, owner: usize, map: usize, value: Option<u8>, flags: u64, sleepable: bool },
    Lookup { cpu: u32, owner: usize, map: usize, cacheit: bool },
    Delete { cpu: u32, owner: usize, map: usize },
    Destroy { cpu: u32, owner: usize },
    MapFree { cpu: u32, map: usize },
    RcuGp,
    TraceGp,
}

fn flags_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(BPF_ANY),
        3 => Just(BPF_NOEXIST),
        3 => Just(BPF_EXIST),
        2 => Just(BPF_F_LOCK | BPF_ANY),
        2 => Just(BPF_F_LOCK | BPF_EXIST),
        1 => Just(BPF_F_LOCK | BPF_NOEXIST),
        1 => prop_oneof![
            Just(BPF_NOEXIST | BPF_EXIST),
            Just(BPF_F_LOCK | BPF_NOEXIST | BPF_EXIST),
            Just(8),
            Just(1 << 40),
        ],
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let cpu = 0..CPUS;
    let owner = 0..OWNERS;
    let map = 0..MAPS;
    prop_oneof![
        8 => (
            cpu.clone(),
            owner.clone(),
            map.clone(),
            prop::option::weighted(0.9, any::<u8>()),
            flags_strategy(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(cpu, owner, map, value, flags, sleepable)| Op::Update {
                cpu,
                owner,
                map,
                value,
                flags,
                sleepable
            }),
        5 => (cpu.clone(), owner.clone(), map.clone(), any::<bool>())
            .prop_map(|(cpu, owner, map, cacheit)| Op::Lookup { cpu, owner, map, cacheit }),
        3 => (cpu.clone(), owner.clone(), map.clone())
            .prop_map(|(cpu, owner, map)| Op::Delete { cpu, owner, map }),
        1 => (cpu.clone(), owner).prop_map(|(cpu, owner)| Op::Destroy { cpu, owner }),
        1 => (cpu, map).prop_map(|(cpu, map)| Op::MapFree { cpu, map }),
        1 => Just(Op::RcuGp),
        1 => Just(Op::TraceGp),
    ]
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), 0..=50)
}

// ----- the model ------------------------------------------------------------------------------

/// What a successful model update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Updated {
    /// A new element was published (created, or replacing the old one).
    New,
    /// `BPF_F_LOCK` on an existing element: copied in place.
    InPlace,
}

/// The sequential reference model.
#[derive(Debug)]
struct Model {
    kind: Kind,
    optmem: u64,
    elems: HashMap<(usize, usize), Vec<u8>>,
}

impl Model {
    fn count(&self, owner: usize) -> u64 {
        self.elems.keys().filter(|(o, _)| *o == owner).count() as u64
    }

    /// The owner's `sk_omem_alloc`: `Σ elem_size + storage_size` if it has any element.
    fn charged(&self, owner: usize) -> u64 {
        match (self.kind, self.count(owner)) {
            (Kind::Task, _) | (_, 0) => 0,
            (Kind::Socket, n) => n * ELEM + STORAGE,
        }
    }

    /// The socket charge hook: `size <= optmem_max && current + size < optmem_max`.
    fn can_charge(&self, current: u64, size: u64) -> bool {
        self.kind == Kind::Task || (size <= self.optmem && current + size < self.optmem)
    }

    /// `bpf_local_storage_update` of §2.3, sequentially.
    fn update(
        &mut self,
        owner: usize,
        map: usize,
        value: Option<Vec<u8>>,
        flags: u64,
        sleepable: bool,
    ) -> Result<Updated, Errno> {
        // No value (the get helper's create): a new element is zeroed, and an in-place copy
        // copies nothing.
        let fresh = value.clone().unwrap_or_else(|| vec![0; VALUE_SIZE]);
        let base = flags & !BPF_F_LOCK;
        let lock = flags & BPF_F_LOCK != 0;
        // 0. Flag validation.
        if base > BPF_EXIST || (lock && map != LOCKED_MAP) || (sleepable && base != BPF_NOEXIST) {
            return Err(Errno::EINVAL);
        }
        let key = (owner, map);
        let exists = self.elems.contains_key(&key);
        // 2. The first element of the owner (no storage, or an empty one).
        if self.count(owner) == 0 {
            if base == BPF_EXIST {
                return Err(Errno::ENOENT);
            }
            // selem_alloc charges elem_size, then storage_alloc charges the storage.
            if !self.can_charge(0, ELEM) || !self.can_charge(ELEM, STORAGE) {
                return Err(Errno::ENOMEM);
            }
            self.elems.insert(key, fresh);
            return Ok(Updated::New);
        }
        // 3. The in-place F_LOCK fast path (not for NOEXIST).
        if lock && base != BPF_NOEXIST {
            if base == BPF_EXIST && !exists {
                return Err(Errno::ENOENT);
            }
            if exists {
                if let Some(v) = value {
                    self.elems.insert(key, v);
                }
                return Ok(Updated::InPlace);
            }
        }
        // 4. The new element is allocated and charged before anything is checked under the
        // lock: near the limit this refuses even what would be -EEXIST / -ENOENT, and a replace.
        if !self.can_charge(self.charged(owner), ELEM) {
            return Err(Errno::ENOMEM);
        }
        // 7. check_flags under the lock.
        if base == BPF_NOEXIST && exists {
            return Err(Errno::EEXIST);
        }
        if base == BPF_EXIST && !exists {
            return Err(Errno::ENOENT);
        }
        // 8. (F_LOCK with an old element cannot get here sequentially: the fast path took it.)
        if exists && lock {
            if let Some(v) = value {
                self.elems.insert(key, v);
            }
            return Ok(Updated::InPlace);
        }
        // 9/10. Publish the new one, drop the old one (net charge unchanged).
        self.elems.insert(key, fresh);
        Ok(Updated::New)
    }

    fn delete(&mut self, owner: usize, map: usize) -> Result<(), Errno> {
        self.elems.remove(&(owner, map)).map(|_| ()).ok_or(Errno::ENOENT)
    }

    fn destroy(&mut self, owner: usize) {
        self.elems.retain(|(o, _), _| *o != owner);
    }

    fn map_free(&mut self, map: usize) {
        self.elems.retain(|(_, m), _| *m != map);
    }
}

// ----- the system under test ------------------------------------------------------------------

struct OwnerSlot {
    basic: Arc<BasicOwner>,
    dynamic: Arc<dyn Owner>,
}

struct Sut {
    kind: Kind,
    optmem: u64,
    domains: Arc<Domains>,
    violations: Violations,
    ls: LocalStorage,
    owners: Vec<OwnerSlot>,
    maps: Vec<Option<Arc<Smap>>>,
    /// The handle of each live element (to tell an in-place copy from a replacement).
    handles: HashMap<(usize, usize), Handle>,
    next_id: u64,
}

fn map_attr(map: usize) -> MapAttr {
    let attr = MapAttr::new(VALUE_SIZE as u32);
    if map == LOCKED_MAP {
        attr.with_layout(ValueLayout { spin_lock: true, ..Default::default() })
    } else {
        attr
    }
}

impl Sut {
    fn new(kind: Kind, trace_implies_rcu: bool, optmem: u64) -> Self {
        let cfg = match kind {
            // Inline allocator work: with a refill thread, an allocation may find the per-CPU
            // list empty (a transient -ENOMEM the sequential model does not predict).
            Kind::Task => TypeConfig::task_like(CPUS).with_inline_refill(),
            Kind::Socket => TypeConfig::socket_like(CPUS),
        };
        let cfg = TypeConfig { capacity: 1024, ..cfg };
        let domains = Arc::new(Domains::new(CPUS, Config::stepped(), trace_implies_rcu));
        let violations = Violations::new();
        let ls = LocalStorage::new(cfg, domains.clone(), violations.clone()).unwrap();
        let maps = (0..MAPS).map(|m| Some(ls.map_create(map_attr(m)).unwrap())).collect();
        let mut sut = Sut {
            kind,
            optmem,
            domains,
            violations,
            ls,
            owners: Vec::new(),
            maps,
            handles: HashMap::new(),
            next_id: 1,
        };
        sut.owners = (0..OWNERS).map(|_| sut.fresh_owner()).collect();
        sut
    }

    fn fresh_owner(&mut self) -> OwnerSlot {
        let id = self.next_id;
        self.next_id += 1;
        let basic = match self.kind {
            Kind::Task => BasicOwner::task_like(id),
            Kind::Socket => BasicOwner::socket_like(id, self.optmem),
        };
        OwnerSlot { dynamic: basic.clone(), basic }
    }

    fn map(&self, m: usize) -> &Arc<Smap> {
        self.maps[m].as_ref().expect("every map slot holds a live map between ops")
    }

    /// Lookup and read inside one RCU read section, as a program would.
    fn lookup(&self, cpu: u32, o: usize, m: usize, cacheit: bool) -> Option<(Handle, Vec<u8>)> {
        let _g = self.domains.rcu.read_lock(cpu);
        let s = self.ls.lookup(cpu, self.owners[o].dynamic.as_ref(), self.map(m), cacheit)?;
        let v = s.read("reference_model::lookup").expect("a looked-up element is readable");
        Some((s.handle(), v))
    }

    /// Runs `op` on both sides and compares.
    fn step(&mut self, model: &mut Model, op: &Op) {
        match *op {
            Op::Update { cpu, owner, map, value, flags, sleepable } => {
                let bytes = value.map_or(vec![0; VALUE_SIZE], |b| vec![b; VALUE_SIZE]);
                let want = model.update(owner, map, value.map(|_| bytes.clone()), flags, sleepable);
                let old = self.handles.get(&(owner, map)).copied();
                let got = {
                    let _g = self.domains.rcu.read_lock(cpu);
                    self.ls
                        .update(
                            cpu,
                            &self.owners[owner].dynamic,
                            self.map(map),
                            value.map(|_| bytes.as_slice()),
                            flags,
                            sleepable,
                        )
                        .map(|s| (s.handle(), s.read("reference_model::update").unwrap()))
                };
                match (want, got) {
                    (Err(w), Err(g)) => assert_eq!(g, w, "{op:?}"),
                    (Ok(how), Ok((h, v))) => {
                        let model_value = &model.elems[&(owner, map)];
                        assert_eq!(&v, model_value, "{op:?}: the returned element's value");
                        match how {
                            Updated::InPlace => assert_eq!(Some(h), old, "{op:?}: in place"),
                            Updated::New => assert_ne!(Some(h), old, "{op:?}: a new element"),
                        }
                        self.handles.insert((owner, map), h);
                    }
                    (w, g) => panic!("{op:?}: model {w:?}, simulator {g:?}"),
                }
            }
            Op::Lookup { cpu, owner, map, cacheit } => {
                let got = self.lookup(cpu, owner, map, cacheit);
                let want = model.elems.get(&(owner, map));
                assert_eq!(got.as_ref().map(|(_, v)| v), want, "{op:?}");
                if let Some((h, _)) = got {
                    assert_eq!(Some(&h), self.handles.get(&(owner, map)), "{op:?}");
                }
            }
            Op::Delete { cpu, owner, map } => {
                let want = model.delete(owner, map);
                let got = self.ls.delete(cpu, self.owners[owner].dynamic.as_ref(), self.map(map));
                assert_eq!(got, want, "{op:?}");
                self.handles.remove(&(owner, map));
            }
            Op::Destroy { cpu, owner } => {
                model.destroy(owner);
                let fresh = self.fresh_owner();
                let dead = std::mem::replace(&mut self.owners[owner], fresh);
                self.ls.destroy(cpu, dead.dynamic.as_ref());
                assert_eq!(dead.basic.charged_bytes(), 0, "{op:?}: destroy uncharges everything");
                assert_eq!(dead.dynamic.storage_ptr().load(Ordering::SeqCst), 0, "{op:?}");
                self.handles.retain(|(o, _), _| *o != owner);
            }
            Op::MapFree { cpu, map } => {
                model.map_free(map);
                let smap = self.maps[map].take().expect("live map");
                self.ls.map_free(cpu, smap);
                self.handles.retain(|(_, m), _| *m != map);
                self.maps[map] = Some(self.ls.map_create(map_attr(map)).unwrap());
            }
            Op::RcuGp => {
                self.domains.rcu.advance_until_quiet();
            }
            Op::TraceGp => {
                self.domains.tasks_trace.advance_until_quiet();
            }
        }
        self.check(model, op);
    }

    /// What must hold after every operation.
    fn check(&self, model: &Model, op: &Op) {
        assert!(self.violations.is_empty(), "after {op:?}: {:?}", self.violations.snapshot());
        for (o, slot) in self.owners.iter().enumerate() {
            assert_eq!(
                slot.basic.charged_bytes(),
                model.charged(o),
                "after {op:?}: owner {o} charge"
            );
            let has_storage = slot.dynamic.storage_ptr().load(Ordering::SeqCst) != 0;
            assert_eq!(has_storage, model.count(o) > 0, "after {op:?}: owner {o} storage pointer");
        }
        assert_eq!(self.ls.cache_idx_counts().iter().sum::<u64>(), MAPS as u64, "after {op:?}");
        let owners: Vec<&dyn Owner> = self.owners.iter().map(|s| s.dynamic.as_ref()).collect();
        let problems = self.ls.check_invariants(&owners);
        assert!(problems.is_empty(), "after {op:?}: {problems:?}");
    }

    /// Destroys every owner and frees every map; nothing may be left.
    fn finish(mut self) {
        for (o, slot) in self.owners.iter().enumerate() {
            self.ls.destroy(o as u32 % CPUS, slot.dynamic.as_ref());
            assert_eq!(slot.basic.charged_bytes(), 0);
            assert_eq!(slot.dynamic.storage_ptr().load(Ordering::SeqCst), 0);
        }
        for (m, smap) in self.maps.iter_mut().enumerate() {
            self.ls.map_free(m as u32 % CPUS, smap.take().unwrap());
        }
        assert_eq!(self.ls.teardown().unwrap(), 0, "{:?}", self.violations.snapshot());
        assert!(self.violations.is_empty(), "{:?}", self.violations.snapshot());
        assert_eq!(self.ls.cache_idx_counts(), [0; CACHE_SIZE]);
        assert_eq!(self.ls.account().charged(), 0);
    }
}

fn run(kind: Kind, trace_implies_rcu: bool, optmem: u64, ops: &[Op]) {
    let mut sut = Sut::new(kind, trace_implies_rcu, optmem);
    let mut model = Model { kind, optmem, elems: HashMap::new() };
    for op in ops {
        sut.step(&mut model, op);
    }
    sut.finish();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn task_like_trace_implies_rcu(ops in ops_strategy()) {
        run(Kind::Task, true, ROOMY, &ops);
    }

    #[test]
    fn task_like_trace_does_not_imply_rcu(ops in ops_strategy()) {
        run(Kind::Task, false, ROOMY, &ops);
    }

    #[test]
    fn socket_like_trace_implies_rcu(ops in ops_strategy()) {
        run(Kind::Socket, true, ROOMY, &ops);
    }

    #[test]
    fn socket_like_trace_does_not_imply_rcu(ops in ops_strategy()) {
        run(Kind::Socket, false, ROOMY, &ops);
    }

    /// Budgets around the limits: one element (256) fits below 257, a replace of it needs
    /// 336 < optmem, two elements 336, three 416.
    #[test]
    fn socket_like_tight_optmem(
        ops in ops_strategy(),
        optmem in prop::sample::select(vec![80, 256, 257, 336, 337, 416, 417, 500]),
        implies in any::<bool>(),
    ) {
        run(Kind::Socket, implies, optmem, &ops);
    }
}

// ----- focused cases --------------------------------------------------------------------------

fn update(sut: &Sut, owner: usize, map: usize, byte: u8, flags: u64) -> Result<Handle, Errno> {
    let v = [byte; VALUE_SIZE];
    sut.ls.update(0, &sut.owners[owner].dynamic, sut.map(map), Some(&v), flags, false).map(|s| {
        assert_eq!(s.read("t").unwrap(), v);
        s.handle()
    })
}

/// A replace charges the new element before uncharging the old one (§2.9): with
/// `optmem_max = 336` one element (256 charged) fits, but its replacement needs 256 + 80 = 336,
/// which is not strictly below the limit; with 337 it is.
#[test]
fn replace_near_optmem_limit_is_refused() {
    let sut = Sut::new(Kind::Socket, true, 336);
    let o = &sut.owners[0];
    let h = update(&sut, 0, 0, 1, BPF_NOEXIST).unwrap();
    assert_eq!(o.basic.charged_bytes(), ELEM + STORAGE);
    for flags in [BPF_ANY, BPF_EXIST] {
        assert_eq!(update(&sut, 0, 0, 2, flags), Err(Errno::ENOMEM));
        assert_eq!(o.basic.charged_bytes(), ELEM + STORAGE, "the refused charge is undone");
    }
    // The charge comes before check_flags: what would be -EEXIST / -ENOENT is -ENOMEM here.
    assert_eq!(update(&sut, 0, 0, 2, BPF_NOEXIST), Err(Errno::ENOMEM));
    assert_eq!(update(&sut, 0, 1, 2, BPF_EXIST), Err(Errno::ENOMEM));
    // A second element does not fit either.
    assert_eq!(update(&sut, 0, 1, 2, BPF_ANY), Err(Errno::ENOMEM));
    // The in-place F_LOCK copy charges nothing; on a spin-lock map it succeeds.
    let locked = update(&sut, 1, LOCKED_MAP, 3, BPF_ANY).unwrap();
    assert_eq!(update(&sut, 1, LOCKED_MAP, 4, BPF_F_LOCK | BPF_EXIST), Ok(locked));
    assert_eq!(update(&sut, 1, LOCKED_MAP, 5, BPF_F_LOCK | BPF_ANY), Ok(locked));
    assert_eq!(sut.owners[1].basic.charged_bytes(), ELEM + STORAGE);
    assert_eq!(update(&sut, 1, LOCKED_MAP, 6, BPF_ANY), Err(Errno::ENOMEM));
    // The old value survived the refused replace.
    assert_eq!(sut.lookup(0, 0, 0, true), Some((h, vec![1; VALUE_SIZE])));
    assert_eq!(sut.lookup(0, 1, LOCKED_MAP, true).unwrap().1, vec![5; VALUE_SIZE]);
    // After a delete the first-element path charges from zero again.
    sut.ls.delete(0, o.dynamic.as_ref(), sut.map(0)).unwrap();
    assert_eq!(o.basic.charged_bytes(), 0);
    update(&sut, 0, 0, 7, BPF_ANY).unwrap();
    assert_eq!(o.basic.charged_bytes(), ELEM + STORAGE);
    assert!(sut.violations.is_empty(), "{:?}", sut.violations.snapshot());
    sut.finish();

    // One more byte of budget: the replace fits (336 < 337), and so does a second element,
    // whose replacement (416) then does not.
    let sut = Sut::new(Kind::Socket, false, 337);
    let o = &sut.owners[0];
    let h1 = update(&sut, 0, 0, 1, BPF_ANY).unwrap();
    let h2 = update(&sut, 0, 0, 2, BPF_ANY).unwrap();
    assert_ne!(h1, h2);
    assert_eq!(o.basic.charged_bytes(), ELEM + STORAGE);
    update(&sut, 0, 1, 3, BPF_NOEXIST).unwrap();
    assert_eq!(o.basic.charged_bytes(), 2 * ELEM + STORAGE);
    assert_eq!(update(&sut, 0, 1, 4, BPF_EXIST), Err(Errno::ENOMEM));
    assert_eq!(update(&sut, 0, 2, 4, BPF_ANY), Err(Errno::ENOMEM));
    assert_eq!(o.basic.charged_bytes(), 2 * ELEM + STORAGE);
    assert!(sut.violations.is_empty(), "{:?}", sut.violations.snapshot());
    sut.finish();
}

/// The first element needs `elem_size` and then `elem_size + storage_size` strictly below the
/// limit; a refusal of either leaves nothing charged and no storage.
#[test]
fn first_element_charge_boundaries() {
    for (optmem, ok) in [(79, false), (80, false), (81, false), (256, false), (257, true)] {
        let sut = Sut::new(Kind::Socket, true, optmem);
        let got = update(&sut, 0, 0, 1, BPF_ANY);
        assert_eq!(got.is_ok(), ok, "optmem {optmem}: {got:?}");
        if !ok {
            assert_eq!(got, Err(Errno::ENOMEM));
        }
        let o = &sut.owners[0];
        assert_eq!(o.basic.charged_bytes(), if ok { ELEM + STORAGE } else { 0 });
        assert_eq!(o.dynamic.storage_ptr().load(Ordering::SeqCst) != 0, ok);
        sut.finish();
    }
}

/// A replayed sequence that touches each rule once on every configuration (a quick smoke test
/// of the harness itself).
#[test]
fn scripted_sequence_matches_model() {
    use Op::*;
    let ops = [
        Update { cpu: 0, owner: 0, map: 0, value: Some(1), flags: BPF_EXIST, sleepable: false },
        Update { cpu: 0, owner: 0, map: 0, value: Some(1), flags: BPF_NOEXIST, sleepable: true },
        Update { cpu: 1, owner: 0, map: 1, value: None, flags: BPF_ANY, sleepable: false },
        Update { cpu: 1, owner: 0, map: 1, value: Some(2), flags: BPF_ANY, sleepable: true },
        Update { cpu: 0, owner: 0, map: 0, value: Some(3), flags: BPF_NOEXIST, sleepable: false },
        Update { cpu: 0, owner: 0, map: 0, value: Some(3), flags: BPF_F_LOCK, sleepable: false },
        Update { cpu: 0, owner: 0, map: 2, value: Some(4), flags: BPF_F_LOCK, sleepable: false },
        Update { cpu: 1, owner: 0, map: 2, value: Some(5), flags: BPF_F_LOCK, sleepable: false },
        Update {
            cpu: 1,
            owner: 1,
            map: 2,
            value: Some(6),
            flags: BPF_F_LOCK | BPF_EXIST,
            sleepable: false,
        },
        Update { cpu: 1, owner: 1, map: 2, value: Some(6), flags: 3, sleepable: false },
        Lookup { cpu: 0, owner: 0, map: 0, cacheit: true },
        Lookup { cpu: 1, owner: 0, map: 2, cacheit: true },
        Lookup { cpu: 1, owner: 0, map: 1, cacheit: false },
        Delete { cpu: 0, owner: 0, map: 0 },
        Lookup { cpu: 0, owner: 0, map: 0, cacheit: true },
        Delete { cpu: 0, owner: 0, map: 0 },
        RcuGp,
        MapFree { cpu: 1, map: 2 },
        Lookup { cpu: 1, owner: 0, map: 2, cacheit: true },
        Update { cpu: 0, owner: 0, map: 2, value: Some(7), flags: BPF_ANY, sleepable: false },
        Destroy { cpu: 0, owner: 0 },
        Lookup { cpu: 0, owner: 0, map: 2, cacheit: true },
        TraceGp,
        Update { cpu: 0, owner: 0, map: 2, value: Some(8), flags: BPF_ANY, sleepable: false },
        RcuGp,
        TraceGp,
    ];
    for kind in [Kind::Task, Kind::Socket] {
        for implies in [true, false] {
            run(kind, implies, ROOMY, &ops);
        }
    }
}
