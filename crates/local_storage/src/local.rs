//! The operations of `kernel/bpf/bpf_local_storage.c` (V-MA, the bpf_ma era).
//!
//! Locks: S (`storage.lock`) before B (a bucket's lock), never the reverse; nothing is
//! allocated or freed while either is held (frees are collected and carried out after the
//! unlock). Lookups are lockless, as the kernel's are, except the cache insertion, which takes
//! S and re-checks that the selem is still linked (I6, check C8).

use crate::errno::Errno;
use crate::flags::{BPF_EXIST, BPF_F_LOCK, BPF_NOEXIST};
use crate::map::{CacheIdx, MapAttr, SELEM_HDR, map_alloc_check, nbuckets};
use crate::objects::{Locked, Selem, Storage, link, link_handle, link_map};
use crate::owner::Owner;
use bpfls_mem_alloc::{
    Account, Handle, MemAlloc, MemAllocConfig, MemError, Slab, SlabObject, UnitSize, Violation,
    Violations,
};
use bpfls_rcu::{Domains, ReclaimPolicy};
use bpfls_sync::atomic::{AtomicU64, Ordering};
use bpfls_sync::probe::{Probes, WaitVerdict};
use bpfls_sync::{Arc, SpinLock, untracked};
use std::fmt;

/// Map ids per storage type: 16-bit in list links, never reused, so a storage type can create
/// at most `MAX_MAPS - 1` maps over its life.
pub const MAX_MAPS: usize = 1 << 16;

/// Where a storage type's objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// `bpf_mem_alloc` (task, cgroup in V-MA): immediate reuse on `reuse_now`.
    BpfMa,
    /// `kmalloc` / `kfree_rcu` (socket, inode in V-MA).
    Kmalloc,
}

/// How a storage type (the kernel's per-type `bpf_local_storage_cache` plus its choices) is
/// built.
#[derive(Debug, Clone)]
pub struct TypeConfig {
    /// `"task"`, `"sk"`, ...
    pub name: &'static str,
    /// Logical CPUs (buckets, per-CPU caches, RCU reader slots).
    pub cpus: u32,
    /// The allocator of selems and storages.
    pub allocator: Allocator,
    /// `sizeof(struct bpf_local_storage)` charged per storage.
    pub storage_size: usize,
    /// Slots per allocator (selems per map, storages per type).
    pub capacity: u32,
    /// Probe points: `lookup_cache_insert` (before taking S to cache a hit; an attach point
    /// for programs), plus the allocators' (`slab_alloc` fails a selem or storage allocation).
    pub probes: Probes,
    /// Deliberate bugs, for proving that the checkers catch them.
    pub mutations: Mutations,
    /// Whether values may carry uptr fields (task storage only).
    pub uptr_allowed: bool,
    /// Run the per-CPU caches' refill/trim work right after the operation that raised it, on
    /// the calling thread (as the kernel's `irq_work` runs on the same CPU when interrupts come
    /// back on), instead of on a worker thread: deterministic, for stepped runs and tests.
    pub inline_refill: bool,
}

/// Re-introduced kernel bugs (bug zoo), each caught by a test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutations {
    /// C8: cache a lookup hit without re-checking under S that it is still linked.
    pub skip_cache_recheck: bool,
    /// I15: do not clear the cache slot when unlinking a selem.
    pub skip_cache_clear: bool,
    /// B8a: the delete path frees with `reuse_now = true`.
    pub delete_reuse_now: bool,
    /// B11 / C5: map_free skips `rcu_barrier_tasks_trace()`.
    pub map_free_skip_tasks_trace_barrier: bool,
    /// B6: destroy does not uncharge the owner.
    pub destroy_skips_uncharge: bool,
    /// C5: map_free skips `rcu_barrier()` (with `trace_implies_rcu = false`).
    pub map_free_skip_rcu_barrier: bool,
    /// B7: update allocates its new selem after taking S (the pre-Sep-2023 order).
    pub alloc_under_lock: bool,
    /// B1: one bucket when there is one CPU (`bucket_log = 0`, so `hash_ptr` shifts by 64).
    pub one_bucket: bool,
    /// B11 / I11: the delete path releases special fields (unpins uptrs) before the
    /// Tasks-Trace grace period instead of in its callback.
    pub free_fields_early: bool,
    /// §2.12: socket clone skips only maps whose map_free has finished, not those whose last
    /// reference is gone (`bpf_map_inc_not_zero` ignored): a clone during map_free's bucket
    /// walk links its copy into a map being freed (I4).
    pub clone_into_dying_map: bool,
}

impl TypeConfig {
    /// A task-like type: bpf_ma, 176-byte storages.
    pub fn task_like(cpus: u32) -> Self {
        TypeConfig {
            name: "task",
            cpus,
            allocator: Allocator::BpfMa,
            storage_size: 176,
            capacity: 4096,
            probes: Probes::new(),
            mutations: Mutations::default(),
            uptr_allowed: true,
            inline_refill: false,
        }
    }

    /// A socket-like type: kmalloc.
    pub fn socket_like(cpus: u32) -> Self {
        TypeConfig {
            name: "sk",
            allocator: Allocator::Kmalloc,
            uptr_allowed: false,
            ..Self::task_like(cpus)
        }
    }

    /// The same with deliberate bugs.
    pub fn with_mutations(self, mutations: Mutations) -> Self {
        TypeConfig { mutations, ..self }
    }

    /// The same with the allocators' work run inline (deterministic).
    pub fn with_inline_refill(self) -> Self {
        TypeConfig { inline_refill: true, ..self }
    }
}

/// A pool of objects: the per-CPU cache, or the plain slab.
enum Pool<T: SlabObject> {
    /// The per-CPU cache; `true`: its work runs inline (`TypeConfig::inline_refill`).
    Ma(MemAlloc<T>, bool),
    Slab(Slab<T>),
}

/// What every pool of one storage type shares.
struct PoolEnv<'a> {
    cfg: &'a TypeConfig,
    domains: &'a Arc<Domains>,
    account: &'a Account,
    violations: &'a Violations,
}

impl<T: SlabObject> Pool<T> {
    fn new(env: &PoolEnv<'_>, unit: usize) -> Result<Self, Errno> {
        let PoolEnv { cfg, domains, account, violations } = *env;
        let (name, allocator, cpus, capacity, probes) =
            (cfg.name, cfg.allocator, cfg.cpus, cfg.capacity, &cfg.probes);
        Ok(match allocator {
            Allocator::BpfMa => {
                let mut cfg = MemAllocConfig::new(name, cpus, UnitSize::Fixed(unit))
                    .with_capacity(capacity)
                    .with_probes(probes.clone());
                if env.cfg.inline_refill {
                    cfg = cfg.without_work_thread();
                }
                let ma = MemAlloc::new(cfg, domains.clone(), account.clone(), violations.clone())
                    .map_err(|_| Errno::ENOMEM)?;
                Pool::Ma(ma, env.cfg.inline_refill)
            }
            Allocator::Kmalloc => Pool::Slab(Slab::new(
                name,
                0,
                unit + bpfls_mem_alloc::HEADER,
                capacity,
                account.clone(),
                violations.clone(),
                probes.clone(),
            )),
        })
    }

    fn slab(&self) -> &Slab<T> {
        match self {
            Pool::Ma(m, _) => m.slab(0),
            Pool::Slab(s) => s,
        }
    }

    fn alloc(&self, cpu: u32, sleepable: bool, site: &'static str) -> Option<Handle> {
        match self {
            Pool::Ma(m, inline) => {
                let mut h = if sleepable { m.alloc_sleepable(cpu).ok() } else { m.alloc(cpu).ok() };
                if *inline {
                    m.run_all_work();
                    if h.is_none() {
                        h = m.alloc(cpu).ok();
                        m.run_all_work();
                    }
                }
                h
            }
            Pool::Slab(s) => s.alloc(site).ok(),
        }
    }

    /// The object behind `h`, without checks (lockless walks: type-stable memory).
    fn peek(&self, h: Handle) -> Option<&T> {
        self.slab().peek(h)
    }

    /// `bpf_mem_cache_free`: immediate reuse (bpf_ma only).
    fn free_now(&self, cpu: u32, h: Handle) {
        match self {
            Pool::Ma(m, inline) => {
                let _ = m.free(cpu, h);
                if *inline {
                    m.run_all_work();
                }
            }
            Pool::Slab(s) => {
                let _ = s.free(h, "kfree");
            }
        }
    }

    /// `kfree` / `bpf_mem_cache_raw_free`: the caller has waited.
    fn raw_free(&self, h: Handle) {
        match self {
            Pool::Ma(m, _) => {
                let _ = m.raw_free(h);
            }
            Pool::Slab(s) => {
                let _ = s.free(h, "kfree");
            }
        }
    }
}

/// `struct bpf_local_storage_map_bucket`.
struct Bucket {
    head: AtomicU64,
    lock: SpinLock<()>,
}

/// `struct bpf_local_storage_map` (smap).
pub struct Smap {
    id: u16,
    attr: MapAttr,
    elem_size: usize,
    cache_idx: u16,
    buckets: Box<[Bucket]>,
    selems: Pool<Selem>,
    /// Set when map_free has finished: a free callback that still runs afterwards would use a
    /// freed smap in the kernel (I9).
    freed: untracked::AtomicBool,
    /// Set when map_free starts (the map's refcount is 0): `bpf_map_inc_not_zero` in a socket
    /// clone fails from then on (§2.12 step 3).
    dying: untracked::AtomicBool,
}

impl fmt::Debug for Smap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smap")
            .field("id", &self.id)
            .field("value_size", &self.attr.value_size)
            .field("cache_idx", &self.cache_idx)
            .finish_non_exhaustive()
    }
}

impl Smap {
    /// The map id (unique among live maps of the type).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// `elem_size` = `SELEM_HDR + value_size`.
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }

    /// The storage cache slot this map uses.
    pub fn cache_idx(&self) -> u16 {
        self.cache_idx
    }

    /// The attributes it was created with.
    pub fn attr(&self) -> &MapAttr {
        &self.attr
    }

    /// Number of buckets.
    pub fn nbuckets(&self) -> usize {
        self.buckets.len()
    }

    /// The elements linked into the map's buckets. A plain walk: call it at a quiescent point
    /// (no CPU inside an update or delete of this map).
    pub fn elements(&self) -> usize {
        let cap = self.selem_slab().stats().capacity as usize;
        let mut n = 0;
        for b in self.buckets.iter() {
            let mut cur = b.head.load(Ordering::Relaxed);
            while cur != 0 && n <= cap {
                n += 1;
                let Some(sel) = self.selems.peek(link_handle(cur)) else { break };
                cur = sel.map_next.load(Ordering::Relaxed);
            }
        }
        n
    }

    /// The slab of this map's selems.
    pub fn selem_slab(&self) -> &Slab<Selem> {
        self.selems.slab()
    }

    /// `select_bucket` (V-MA: `hash_ptr(selem, bucket_log)`), or `None` when the arithmetic
    /// goes out of range (`bucket_log = 0` shifts by 64: bug zoo B1).
    fn bucket_index(&self, h: Handle) -> Option<usize> {
        let log = self.buckets.len().trailing_zeros();
        let x = u64::from(h.slot()).wrapping_mul(0x61c8_8646_80b5_83eb); // GOLDEN_RATIO_64
        let i = x.checked_shr(64 - log)? as usize;
        (i < self.buckets.len()).then_some(i)
    }
}

/// A selem found or created by an operation: the map and the checked handle.
#[derive(Clone)]
pub struct SelemRef {
    smap: Arc<Smap>,
    h: Handle,
}

impl fmt::Debug for SelemRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SelemRef(map {}, {})", self.smap.id, self.h)
    }
}

impl SelemRef {
    /// The selem's handle.
    pub fn handle(&self) -> Handle {
        self.h
    }

    /// Its map.
    pub fn map(&self) -> &Arc<Smap> {
        &self.smap
    }

    /// Reads the value through a checked access (a reused or freed selem is a violation).
    pub fn read(&self, site: &'static str) -> Result<Vec<u8>, Violation> {
        let len = self.smap.attr.value_size as usize;
        self.smap.selems.slab().read(self.h, site, |s| s.read_value(len))
    }

    /// A program dereferences the value's kptr / uptr fields: checked access, and the fields
    /// must not have been released yet (I11: a uptr page unpinned under a sleepable reader).
    pub fn use_fields(&self, site: &'static str) -> Result<(), String> {
        let held = self
            .smap
            .selems
            .slab()
            .read(self.h, site, |s| s.fields_held.load(untracked::Ordering::Relaxed))
            .map_err(|v| v.to_string())?;
        if held {
            Ok(())
        } else {
            Err(format!("I11: special fields of {} used after release", self.h))
        }
    }

    /// Writes the value through a checked access (a program writing through the pointer the
    /// get helper returned).
    pub fn write(&self, site: &'static str, bytes: &[u8]) -> Result<(), Violation> {
        self.smap.selems.slab().read(self.h, site, |s| s.write_value(bytes))
    }
}

struct Inner {
    cfg: TypeConfig,
    domains: Arc<Domains>,
    violations: Violations,
    account: Account,
    cache_idx: CacheIdx,
    /// The map table: id → map, written once at creation and never cleared (ids are not
    /// reused), so list walkers read it with two loads, no lock and no reference count.
    /// Two levels of 256, the second allocated on first use.
    maps: Box<[MapChunk]>,
    next_map_id: untracked::AtomicUsize,
    storages: Pool<Storage>,
    /// Invariant breaches seen on the way (I9, I11, I15): the checker's bookkeeping.
    problems: untracked::Mutex<Vec<String>>,
    /// Special-field sets acquired (selems of maps with kptrs / uptrs) and released (I11).
    fields_acquired: untracked::AtomicU64,
    fields_released: untracked::AtomicU64,
}

impl Inner {
    fn problem(&self, p: String) {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
}

/// One storage type (task, socket, ...): its maps, its storages, its cache-index allocator.
pub struct LocalStorage {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStorage").field("type", &self.inner.cfg.name).finish_non_exhaustive()
    }
}

/// 256 entries of the map table, allocated on first use.
type MapChunk = untracked::OnceLock<Box<[untracked::OnceLock<Arc<Smap>>]>>;

/// Selems unlinked under a lock, freed after it (the kernel's `free_node` list).
type FreeList = Vec<SelemRef>;

/// The trace id of a storage: its handle's id with bit 56 set, so it never equals an
/// element's (the two slabs both number their slots from 0).
pub(crate) fn storage_id(h: Handle) -> u64 {
    h.id() | 1 << 56
}

/// The trace id of an element of map `map`: its handle's id with the map id in bits 57..64
/// (each map has its own element slab, numbered from 0 too; ids of maps 128 apart coincide).
pub(crate) fn selem_id(map: u16, h: Handle) -> u64 {
    h.id() | (u64::from(map) & 0x7f) << 57
}

/// A held S or B lock that passes the `*_lock_release` probe point once released, so a
/// lock-discipline checker ([`crate::LockDiscipline`]) can follow what each CPU holds.
struct Held<'a, T> {
    guard: Option<bpfls_sync::SpinLockGuard<'a, T>>,
    probes: &'a Probes,
    cpu: u32,
    release: &'static str,
    /// The lock's identity for the probes: `storage` (the storage object's id) for S, `map`
    /// and `bucket` (index) for B. Never an address.
    id: [(&'static str, u64); 2],
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held")
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held")
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.probes.is_attached() {
            self.probes.hit(self.release, Some(self.cpu), &self.id);
        }
    }
}

/// Takes `lock`, passing `acquire` first (the probe sees the intent, then holds until release).
/// `id` names the lock in the probe events (`acquire`, `lock_wait`, `release`), so a stepped
/// executor can tell who holds what and report a wait-for cycle.
fn take<'a, T>(
    probes: &'a Probes,
    cpu: u32,
    lock: &'a SpinLock<T>,
    (acquire, release): (&'static str, &'static str),
    id: [(&'static str, u64); 2],
) -> Held<'a, T> {
    if !probes.is_attached() {
        return Held { guard: Some(lock.lock()), probes, cpu, release, id };
    }
    probes.hit(acquire, Some(cpu), &id);
    // With a hook attached (a stepped executor may have paused the holder on another logical
    // CPU), a contended lock waits through the `lock_wait` probe instead of spinning, and an
    // executor that finds every CPU waiting reports the deadlock (an AA recursion, bug zoo B3).
    loop {
        if let Some(g) = lock.try_lock() {
            return Held { guard: Some(g), probes, cpu, release, id };
        }
        if probes.wait("lock_wait", Some(cpu), &id) == WaitVerdict::Deadlock {
            panic!(
                "bpfls-local-storage: deadlock: CPU {cpu} waits for a lock ({acquire}) that \
                 no runnable CPU will release"
            );
        }
    }
}

impl LocalStorage {
    /// A storage type over `domains`, reporting violations to `violations`.
    pub fn new(
        cfg: TypeConfig,
        domains: Arc<Domains>,
        violations: Violations,
    ) -> Result<Self, Errno> {
        let account = Account::unlimited(cfg.name);
        let env =
            PoolEnv { cfg: &cfg, domains: &domains, account: &account, violations: &violations };
        let storages = Pool::new(&env, cfg.storage_size)?;
        Ok(LocalStorage {
            inner: Arc::new(Inner {
                maps: (0..MAX_MAPS / 256).map(|_| untracked::OnceLock::new()).collect(),
                next_map_id: untracked::AtomicUsize::new(1),
                cache_idx: CacheIdx::new(),
                cfg,
                domains,
                violations,
                account,
                storages,
                problems: untracked::Mutex::new(Vec::new()),
                fields_acquired: untracked::AtomicU64::new(0),
                fields_released: untracked::AtomicU64::new(0),
            }),
        })
    }

    /// The type's cache-index usage counts.
    pub fn cache_idx_counts(&self) -> [u64; crate::map::CACHE_SIZE] {
        self.inner.cache_idx.counts()
    }

    /// The memory account of the type's allocators (bytes of selems and storages out of the
    /// slabs, cached objects included).
    pub fn account(&self) -> &Account {
        &self.inner.account
    }

    /// The slab of the type's storages.
    pub fn storage_slab(&self) -> &Slab<Storage> {
        self.inner.storages.slab()
    }

    /// `bpf_local_storage_map_alloc`: checks `attr`, builds the map (buckets, its selem
    /// allocator) and takes a cache index last.
    pub fn map_create(&self, attr: MapAttr) -> Result<Arc<Smap>, Errno> {
        map_alloc_check(&attr)?;
        let inner = &self.inner;
        if attr.layout.uptrs > 0 && !inner.cfg.uptr_allowed {
            // map_check_btf: uptr is for task storage only.
            return Err(Errno::EOPNOTSUPP);
        }
        let id = inner.next_map_id.fetch_add(1, untracked::Ordering::Relaxed);
        if id >= MAX_MAPS {
            return Err(Errno::ENOMEM);
        }
        let id = id as u16;
        let elem_size = SELEM_HDR + attr.value_size as usize;
        let env = PoolEnv {
            cfg: &inner.cfg,
            domains: &inner.domains,
            account: &inner.account,
            violations: &inner.violations,
        };
        let selems = Pool::new(&env, elem_size)?;
        let smap = Arc::new(Smap {
            id,
            attr,
            elem_size,
            cache_idx: inner.cache_idx.get(),
            buckets: (0..if inner.cfg.mutations.one_bucket && inner.cfg.cpus == 1 {
                1
            } else {
                nbuckets(inner.cfg.cpus)
            })
                .map(|_| Bucket { head: AtomicU64::new(0), lock: SpinLock::new(()) })
                .collect(),
            selems,
            freed: untracked::AtomicBool::new(false),
            dying: untracked::AtomicBool::new(false),
        });
        let chunk = inner.maps[id as usize / 256]
            .get_or_init(|| (0..256).map(|_| untracked::OnceLock::new()).collect());
        let _ = chunk[id as usize % 256].set(smap.clone());
        Ok(smap)
    }

    /// The bucket of `h`; an out-of-range selection (B1) is recorded as an I4 breach and falls
    /// back to bucket 0 (the kernel would touch memory past the array).
    fn bucket_of<'a>(&self, smap: &'a Smap, h: Handle) -> &'a Bucket {
        match smap.bucket_index(h) {
            Some(i) => &smap.buckets[i],
            None => {
                self.inner.problem(format!(
                    "I4/B1: bucket selection for {h} of map {} is out of range ({} bucket(s))",
                    smap.id,
                    smap.buckets.len()
                ));
                &smap.buckets[0]
            }
        }
    }

    /// Takes S of the storage `sh` names.
    fn lock_s<'a>(&'a self, cpu: u32, sh: Handle, st: &'a Storage) -> Held<'a, Locked> {
        let sites = ("storage_lock_acquire", "storage_lock_release");
        let id = [("storage", storage_id(sh)), ("bucket", u64::MAX)];
        take(&self.inner.cfg.probes, cpu, &st.lock, sites, id)
    }

    /// Takes B of bucket `b` of `smap`.
    fn lock_b<'a>(&'a self, cpu: u32, smap: &Smap, b: &'a Bucket) -> Held<'a, ()> {
        let sites = ("bucket_lock_acquire", "bucket_lock_release");
        let index = if self.inner.cfg.probes.is_attached() {
            smap.buckets.iter().position(|x| std::ptr::eq(x, b)).unwrap_or(usize::MAX)
        } else {
            0
        };
        let id = [("map", u64::from(smap.id)), ("bucket", index as u64)];
        take(&self.inner.cfg.probes, cpu, &b.lock, sites, id)
    }

    /// Passes an allocation or free probe point (`selem_alloc`, `storage_alloc`, `selem_free`,
    /// `storage_free`): the lock-discipline checker reports one made under S or B.
    fn probe_mem(&self, site: &'static str, cpu: u32, obj: u64) {
        let probes = &self.inner.cfg.probes;
        if probes.is_attached() {
            probes.hit(site, Some(cpu), &[("obj", obj)]);
        }
    }

    fn map_ref(&self, id: u16) -> Option<&Arc<Smap>> {
        self.inner.maps.get(id as usize / 256)?.get()?[id as usize % 256].get()
    }

    fn smap_by_id(&self, id: u16) -> Option<Arc<Smap>> {
        self.map_ref(id).cloned()
    }

    fn storage_of(&self, owner: &dyn Owner) -> Option<(Handle, &Storage)> {
        // ORDERING: Acquire pairs with the Release compare-and-swap that published the
        // storage (`storage_alloc`): its initialisation is visible.
        let packed = owner.storage_ptr().load(Ordering::Acquire);
        if packed == 0 {
            return None;
        }
        let h = Handle::unpack(0, packed);
        self.inner.storages.peek(h).map(|s| (h, s))
    }

    /// Resolves a selem link (for the walker: type-stable, unchecked; no lock, no count).
    fn resolve<'a>(&'a self, smap: &'a Arc<Smap>, l: u64) -> Option<(&'a Arc<Smap>, Handle)> {
        let map = link_map(l);
        let owner_map = if map == smap.id { smap } else { self.map_ref(map)? };
        Some((owner_map, link_handle(l)))
    }

    /// `bpf_local_storage_lookup` on an owner: the cache fast path, then a lockless walk; with
    /// `cacheit`, the hit is cached under S if still linked. Runs inside an RCU read section of
    /// `cpu`; the caller keeps its own section around any use of the result.
    pub fn lookup(
        &self,
        cpu: u32,
        owner: &dyn Owner,
        smap: &Arc<Smap>,
        cacheit: bool,
    ) -> Option<SelemRef> {
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        let (sh, storage) = self.storage_of(owner)?;
        self.lookup_in(cpu, sh, storage, smap, cacheit)
    }

    fn lookup_in(
        &self,
        cpu: u32,
        sh: Handle,
        storage: &Storage,
        smap: &Arc<Smap>,
        cacheit: bool,
    ) -> Option<SelemRef> {
        // The entry of `bpf_local_storage_lookup`: where fentry programs attach (C10).
        let probes = &self.inner.cfg.probes;
        if probes.is_attached() {
            probes.hit("local_storage_lookup", Some(cpu), &[("map", u64::from(smap.id))]);
        }
        let idx = smap.cache_idx as usize;
        // ORDERING: Acquire pairs with the Release store of the cache slot (under S): the
        // selem it names is fully linked.
        let cached = storage.cache[idx].load(Ordering::Acquire);
        if cached != 0 && link_map(cached) == smap.id {
            let h = link_handle(cached);
            // `s->smap == smap`: a reused selem of another map is just a miss.
            if smap
                .selems
                .peek(h)
                .is_some_and(|s| s.smap.load(Ordering::Relaxed) == u32::from(smap.id))
            {
                return Some(SelemRef { smap: smap.clone(), h });
            }
        }
        // ORDERING: Acquire pairs with the Release store of the list head in `link_storage`.
        let mut cur = storage.list_head.load(Ordering::Acquire);
        let mut found = None;
        // A storage holds at most one selem per map: a longer walk means a broken list (a
        // reclamation bug upstream), which the checkers report; do not loop on it.
        let mut steps = 0;
        while cur != 0 && steps <= MAX_MAPS {
            steps += 1;
            let Some((m, h)) = self.resolve(smap, cur) else { break };
            let Some(sel) = m.selems.peek(h) else { break };
            if m.id == smap.id && sel.smap.load(Ordering::Relaxed) == u32::from(smap.id) {
                found = Some((cur, h));
                break;
            }
            // ORDERING: Acquire pairs with the Release store of `snode_next` at insertion.
            cur = sel.snode_next.load(Ordering::Acquire);
        }
        let (l, h) = found?;
        if cacheit {
            let sel = smap.selems.peek(h)?;
            let probes = &self.inner.cfg.probes;
            if probes.is_attached() {
                probes.hit("lookup_cache_insert", Some(cpu), &[("map", u64::from(smap.id))]);
            }
            let guard = self.lock_s(cpu, sh, storage);
            if self.inner.cfg.mutations.skip_cache_recheck
                || sel.storage_linked.load(Ordering::Relaxed)
            {
                // ORDERING: Release pairs with the Acquire load of the fast path.
                storage.cache[idx].store(l, Ordering::Release);
            }
            drop(guard);
        }
        Some(SelemRef { smap: smap.clone(), h })
    }

    // ----- allocation and freeing -----------------------------------------------------------

    /// `bpf_selem_alloc`: charges `elem_size`, allocates, fills the value.
    fn selem_alloc(
        &self,
        cpu: u32,
        owner: &dyn Owner,
        smap: &Arc<Smap>,
        value: Option<&[u8]>,
        sleepable: bool,
    ) -> Result<Handle, Errno> {
        owner.charge(smap.elem_size)?;
        let Some(h) = smap.selems.alloc(cpu, sleepable, "selem_alloc") else {
            owner.uncharge(smap.elem_size);
            return Err(Errno::ENOMEM);
        };
        self.probe_mem("selem_alloc", cpu, selem_id(smap.id, h));
        let sel = smap.selems.peek(h).expect("just allocated");
        sel.smap.store(0, Ordering::Relaxed);
        sel.storage.store(0, Ordering::Relaxed);
        sel.storage_linked.store(false, Ordering::Relaxed);
        sel.map_linked.store(false, Ordering::Relaxed);
        match value {
            Some(v) => sel.write_value(v),
            None => sel.zero_value(),
        }
        let layout = smap.attr.layout;
        if layout.kptrs > 0 || layout.uptrs > 0 {
            sel.fields_held.store(true, untracked::Ordering::Relaxed);
            self.inner.fields_acquired.fetch_add(1, untracked::Ordering::Relaxed);
        }
        Ok(h)
    }

    /// `bpf_selem_free` (§3.1): immediate reuse, `kfree_rcu`, or after a Tasks-Trace grace
    /// period (chained through RCU when it does not imply one).
    fn selem_free(&self, cpu: u32, s: SelemRef, reuse_now: bool) {
        let obj = selem_id(s.smap.id, s.h);
        self.probe_mem("selem_free", cpu, obj);
        let d = &self.inner.domains;
        let bytes = s.smap.elem_size;
        // `bpf_obj_free_fields`: at once, except on the bpf_ma delete path, where a sleepable
        // program may still use a uptr page: there it runs in the Tasks-Trace callback (B11).
        let early = reuse_now
            || self.inner.cfg.allocator == Allocator::Kmalloc
            || self.inner.cfg.mutations.free_fields_early;
        if early {
            free_fields(&self.inner, &s);
        }
        match (self.inner.cfg.allocator, reuse_now) {
            (Allocator::BpfMa, true) => {
                self.probe_mem("free_now", cpu, obj);
                s.smap.selems.free_now(cpu, s.h)
            }
            (Allocator::BpfMa, false) => {
                let inner = self.inner.clone();
                d.defer(d.sleepable_policy(), obj, bytes, move || {
                    if !early {
                        free_fields(&inner, &s);
                    }
                    // The kernel's callback runs bpf_obj_free_fields with smap->map.record:
                    // map_free's barriers must have waited for it (I9).
                    if s.smap.freed.load(untracked::Ordering::Relaxed) {
                        inner.problem(format!(
                            "I9: a free callback of {} ran after map_free of map {} returned",
                            s.h, s.smap.id
                        ));
                    }
                    s.smap.selems.raw_free(s.h);
                })
            }
            (Allocator::Kmalloc, false) => d.defer(d.sleepable_policy(), obj, bytes, move || {
                s.smap.selems.raw_free(s.h);
            }),
            (Allocator::Kmalloc, true) => d.defer(ReclaimPolicy::AfterRcu, obj, bytes, move || {
                s.smap.selems.raw_free(s.h);
            }),
        }
    }

    /// `bpf_local_storage_free` (§3.1). `reuse_now` with a known creator map reuses the object
    /// at once in the kernel, because it goes back to the *creator map's* `storage_ma`, which
    /// nothing allocates from while that map is being freed. Storages here share one pool per
    /// type (ADR 0002), so immediate reuse is allowed only where no one can hold the storage at
    /// all: the owner's destroy, and a storage that was never published (`unreachable`).
    /// Elsewhere (map_free's unlinks) the free goes through an RCU grace period; found by a
    /// loom model in which an update of another map still held the storage.
    fn storage_free(
        &self,
        cpu: u32,
        h: Handle,
        reuse_now: bool,
        creator_known: bool,
        unreachable: bool,
    ) {
        if let Some(st) = self.inner.storages.peek(h)
            && let Some(slot) = st.cache.iter().position(|c| c.load(Ordering::Relaxed) != 0)
        {
            // A recycled storage keeps its cache: every slot must have been cleared (I15).
            self.inner.problem(format!("I15: storage {h} freed with cache slot {slot} still set"));
        }
        self.probe_mem("storage_free", cpu, storage_id(h));
        let d = &self.inner.domains;
        let me = self.inner.clone();
        let bytes = self.inner.cfg.storage_size;
        match (self.inner.cfg.allocator, reuse_now) {
            (Allocator::BpfMa, true) if creator_known && unreachable => {
                self.probe_mem("free_now", cpu, storage_id(h));
                self.inner.storages.free_now(cpu, h)
            }
            (Allocator::BpfMa, true) | (Allocator::Kmalloc, true) => {
                d.defer(ReclaimPolicy::AfterRcu, storage_id(h), bytes, move || {
                    me.storages.raw_free(h)
                })
            }
            (_, false) => {
                d.defer(d.sleepable_policy(), storage_id(h), bytes, move || me.storages.raw_free(h))
            }
        }
    }

    // ----- linking ------------------------------------------------------------------------

    /// `bpf_selem_link_map`: head insertion under B.
    fn link_map(&self, cpu: u32, smap: &Smap, h: Handle) {
        let sel = smap.selems.peek(h).expect("live selem");
        let b = self.bucket_of(smap, h);
        let guard = self.lock_b(cpu, smap, b);
        let me = link(smap.id, h);
        let head = b.head.load(Ordering::Relaxed);
        sel.smap.store(u32::from(smap.id), Ordering::Relaxed);
        sel.map_next.store(head, Ordering::Relaxed);
        sel.map_prev.store(0, Ordering::Relaxed);
        sel.map_linked.store(true, Ordering::Relaxed);
        if head != 0
            && let Some(first) = smap.selems.peek(link_handle(head))
        {
            first.map_prev.store(me, Ordering::Relaxed);
        }
        // ORDERING: Release publishes the initialised selem to bucket walkers (map_free).
        b.head.store(me, Ordering::Release);
        smap.selem_slab().note_link(h);
        drop(guard);
    }

    /// `bpf_selem_unlink_map`: removal under B if still linked (lockless pre-check first).
    fn unlink_map(&self, cpu: u32, smap: &Smap, h: Handle) {
        let Some(sel) = smap.selems.peek(h) else { return };
        if !sel.map_linked.load(Ordering::Relaxed) {
            return;
        }
        let b = self.bucket_of(smap, h);
        let guard = self.lock_b(cpu, smap, b);
        if sel.map_linked.load(Ordering::Relaxed) {
            // O(1) through `map_prev` (the kernel's `pprev`); our own `map_next` stays intact
            // so a walker standing on us goes on (`hlist_del_init_rcu`).
            let next = sel.map_next.load(Ordering::Relaxed);
            let prev = sel.map_prev.load(Ordering::Relaxed);
            let prev_next = if prev == 0 {
                Some(&b.head)
            } else {
                smap.selems.peek(link_handle(prev)).map(|p| &p.map_next)
            };
            if let Some(field) = prev_next {
                // ORDERING: Release: a walker that reads the new link sees the successor
                // initialised (it was published with Release when inserted).
                field.store(next, Ordering::Release);
            }
            if next != 0
                && let Some(n) = smap.selems.peek(link_handle(next))
            {
                n.map_prev.store(prev, Ordering::Relaxed);
            }
            sel.map_linked.store(false, Ordering::Relaxed);
            smap.selem_slab().note_unlink(h);
        }
        drop(guard);
    }

    /// `bpf_selem_link_storage_nolock`: head insertion (S held, or the storage still
    /// private).
    fn link_storage(&self, storage_h: Handle, storage: &Storage, smap: &Smap, h: Handle) {
        let sel = smap.selems.peek(h).expect("live selem");
        sel.storage.store(storage_h.pack(), Ordering::Relaxed);
        sel.snode_next.store(storage.list_head.load(Ordering::Relaxed), Ordering::Relaxed);
        sel.storage_linked.store(true, Ordering::Relaxed);
        // ORDERING: Release publishes the initialised selem to lockless lookups.
        storage.list_head.store(link(smap.id, h), Ordering::Release);
        smap.selem_slab().note_link(h);
    }

    /// `bpf_selem_unlink_storage_nolock` (S held): uncharge, last-element handling, cache
    /// clear, removal; the selem goes on `free`. Returns whether it was the last.
    fn unlink_storage_nolock(
        &self,
        storage: &Storage,
        locked: &mut Locked,
        s: &SelemRef,
        free: &mut FreeList,
        uncharge: bool,
    ) -> bool {
        let sel = s.smap.selems.peek(s.h).expect("linked selem");
        let me = link(s.smap.id, s.h);
        let next = sel.snode_next.load(Ordering::Relaxed);
        let head = storage.list_head.load(Ordering::Relaxed);
        let last = head == me && next == 0;
        if let Some(owner) = &locked.owner {
            if uncharge {
                owner.uncharge(s.smap.elem_size);
            }
            if last {
                if uncharge {
                    owner.uncharge(self.inner.cfg.storage_size);
                }
                // After this the owner may go away: the storage no longer points at it.
                // ORDERING: Release pairs with the Acquire load in `storage_of`; a later
                // creator's compare-and-swap from 0 follows it in modification order.
                owner.storage_ptr().store(0, Ordering::Release);
            }
        }
        if last {
            locked.owner = None;
        }
        unlink_from(&storage.list_head, me, next, &|l, f| {
            if let Some((m, h)) = self.resolve(&s.smap, l)
                && let Some(other) = m.selems.peek(h)
            {
                f(&other.snode_next);
            }
        });
        sel.storage_linked.store(false, Ordering::Relaxed);
        s.smap.selem_slab().note_unlink(s.h);
        let idx = s.smap.cache_idx as usize;
        if !self.inner.cfg.mutations.skip_cache_clear
            && storage.cache[idx].load(Ordering::Relaxed) == me
        {
            // ORDERING: Release pairs with the fast path's Acquire load.
            storage.cache[idx].store(0, Ordering::Release);
        }
        if storage.smap.load(Ordering::Relaxed) == u32::from(s.smap.id) {
            storage.smap.store(0, Ordering::Relaxed);
        }
        free.push(s.clone());
        last
    }
}

/// The accessor [`unlink_from`] walks with.
type WithNext<'a> = dyn Fn(u64, &mut dyn FnMut(&AtomicU64)) + 'a;

/// Removes `me` (whose successor is `next`) from the singly linked list at `head`, leaving
/// `me`'s own next link intact (`hlist_del_init_rcu`, so a walker standing on `me` goes on).
/// `with_next(link, f)` calls `f` with the next field of the node `link` names (the caller
/// holds the list's lock, which keeps every node on the list alive).
fn unlink_from(head: &AtomicU64, me: u64, next: u64, with_next: &WithNext<'_>) {
    let first = head.load(Ordering::Relaxed);
    if first == me {
        // ORDERING: Release: a walker that reads the new head sees the successor initialised
        // (it was published with Release when it was inserted).
        head.store(next, Ordering::Release);
        return;
    }
    let mut cur = first;
    while cur != 0 {
        let mut following = 0;
        let mut done = false;
        with_next(cur, &mut |field| {
            let v = field.load(Ordering::Relaxed);
            if v == me {
                // ORDERING: Release, as for the head above.
                field.store(next, Ordering::Release);
                done = true;
            } else {
                following = v;
            }
        });
        if done {
            return;
        }
        cur = following;
    }
}

/// `bpf_obj_free_fields`: releases the selem's special fields, exactly once (I11).
fn free_fields(inner: &Inner, s: &SelemRef) {
    let layout = s.smap.attr.layout;
    if layout.kptrs == 0 && layout.uptrs == 0 {
        return;
    }
    let Some(sel) = s.smap.selems.peek(s.h) else { return };
    if sel.fields_held.swap(false, untracked::Ordering::Relaxed) {
        inner.fields_released.fetch_add(1, untracked::Ordering::Relaxed);
    } else {
        inner.problem(format!("I11: special fields of {} released twice", s.h));
    }
}

/// `check_flags`: `BPF_NOEXIST` on a present element → `-EEXIST`; `BPF_EXIST` on a missing one
/// → `-ENOENT`.
fn check_flags(old: bool, flags: u64) -> Result<(), Errno> {
    let f = flags & !BPF_F_LOCK;
    if old && f == BPF_NOEXIST {
        return Err(Errno::EEXIST);
    }
    if !old && f == BPF_EXIST {
        return Err(Errno::ENOENT);
    }
    Ok(())
}

impl LocalStorage {
    /// `bpf_local_storage_update` (§2.3): creates or replaces `owner`'s element of `smap`
    /// with `value` (`value_size` bytes), under `flags` (`BPF_ANY` / `BPF_NOEXIST` /
    /// `BPF_EXIST`, optionally `| BPF_F_LOCK`). `sleepable` is the `GFP_KERNEL` of a sleepable
    /// program's get-with-create (only with `BPF_NOEXIST`). Runs in an RCU read section of
    /// `cpu`. The caller guarantees the owner is not being destroyed.
    pub fn update(
        &self,
        cpu: u32,
        owner: &untracked::Arc<dyn Owner>,
        smap: &Arc<Smap>,
        value: Option<&[u8]>,
        flags: u64,
        sleepable: bool,
    ) -> Result<SelemRef, Errno> {
        // The entry of `bpf_local_storage_update`: where fentry programs attach (C10).
        let probes = &self.inner.cfg.probes;
        if probes.is_attached() {
            probes.hit("local_storage_update", Some(cpu), &[("map", u64::from(smap.id))]);
        }
        let layout = smap.attr.layout;
        if (flags & !BPF_F_LOCK) > BPF_EXIST
            || (flags & BPF_F_LOCK != 0 && !layout.spin_lock)
            || (sleepable && (flags & !BPF_F_LOCK) != BPF_NOEXIST)
            || value.is_some_and(|v| v.len() != smap.attr.value_size as usize)
        {
            return Err(Errno::EINVAL);
        }
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        let storage = self.storage_of(owner.as_ref());
        // ORDERING: Acquire pairs with the Release head store in `link_storage`.
        let empty = storage.is_none_or(|(_, s)| s.list_head.load(Ordering::Acquire) == 0);
        if empty {
            // First element of this owner.
            check_flags(false, flags)?;
            let h = self.selem_alloc(cpu, owner.as_ref(), smap, value, sleepable)?;
            let s = SelemRef { smap: smap.clone(), h };
            if let Err(e) = self.storage_alloc(cpu, owner, smap, h, sleepable) {
                owner.uncharge(smap.elem_size);
                self.selem_free(cpu, s, true);
                return Err(e);
            }
            return Ok(s);
        }
        let (storage_h, storage) = storage.expect("non-empty storage");
        if flags & BPF_F_LOCK != 0 && flags & !BPF_F_LOCK != BPF_NOEXIST {
            // The in-place fast path: no storage or bucket lock.
            let old = self.lookup_in(cpu, storage_h, storage, smap, false);
            check_flags(old.is_some(), flags)?;
            if let Some(old) = old
                && let Some(sel) = smap.selems.peek(old.h)
                && sel.storage_linked.load(Ordering::Relaxed)
            {
                let guard = sel.value_lock.lock();
                if let Some(v) = value {
                    sel.write_value(v);
                }
                drop(guard);
                return Ok(old);
            }
        }
        // Allocate (and charge) before taking S: no allocation under a raw spinlock (B7).
        let under_lock = self.inner.cfg.mutations.alloc_under_lock;
        let mut unused = None;
        if !under_lock {
            let h = self.selem_alloc(cpu, owner.as_ref(), smap, value, sleepable)?;
            unused = Some(SelemRef { smap: smap.clone(), h });
        }
        let mut free = FreeList::new();
        let mut last = false;
        let creator = storage.smap.load(Ordering::Relaxed) != 0;
        let result = {
            let mut locked = self.lock_s(cpu, storage_h, storage);
            if under_lock
                && let Ok(h) = self.selem_alloc(cpu, owner.as_ref(), smap, value, sleepable)
            {
                unused = Some(SelemRef { smap: smap.clone(), h });
            }
            match unused.clone() {
                None => Err(Errno::ENOMEM),
                // A concurrent delete removed the last element: the storage is going away.
                Some(_) if storage.list_head.load(Ordering::Relaxed) == 0 => Err(Errno::EAGAIN),
                Some(new) => {
                    let old = self.lookup_in(cpu, storage_h, storage, smap, false);
                    match check_flags(old.is_some(), flags) {
                        Err(e) => Err(e),
                        Ok(()) if old.is_some() && flags & BPF_F_LOCK != 0 => {
                            let old = old.expect("present");
                            if let Some(sel) = smap.selems.peek(old.h) {
                                let guard = sel.value_lock.lock();
                                if let Some(v) = value {
                                    sel.write_value(v);
                                }
                                drop(guard);
                            }
                            Ok(old)
                        }
                        Ok(()) => {
                            // New into map, new into storage, old out of map, old out of
                            // storage. The probe point sits where a tracing program attached
                            // inside the storage code runs with S held (bug zoo B3).
                            if self.inner.cfg.probes.is_attached() {
                                let f = [("map", u64::from(smap.id))];
                                self.inner.cfg.probes.hit("selem_link", Some(cpu), &f);
                            }
                            self.link_map(cpu, smap, new.h);
                            self.link_storage(storage_h, storage, smap, new.h);
                            unused = None;
                            if let Some(old) = old {
                                self.unlink_map(cpu, smap, old.h);
                                last = self.unlink_storage_nolock(
                                    storage,
                                    &mut locked,
                                    &old,
                                    &mut free,
                                    true,
                                );
                            }
                            Ok(new)
                        }
                    }
                }
            }
        };
        for old in free {
            self.selem_free(cpu, old, false);
        }
        if last {
            self.storage_free(cpu, storage_h, false, creator, false);
        }
        if let Some(unused) = unused {
            owner.uncharge(smap.elem_size);
            self.selem_free(cpu, unused, true);
        }
        result
    }

    /// `bpf_local_storage_alloc` (§2.4): charges and allocates the owner's storage, links
    /// `first` into it and into the map, then publishes it with a compare-and-swap of the
    /// owner's pointer. The loser of a race gets `-EAGAIN` (no retry).
    fn storage_alloc(
        &self,
        cpu: u32,
        owner: &untracked::Arc<dyn Owner>,
        smap: &Arc<Smap>,
        first: Handle,
        sleepable: bool,
    ) -> Result<(), Errno> {
        let size = self.inner.cfg.storage_size;
        owner.charge(size)?;
        let Some(h) = self.inner.storages.alloc(cpu, sleepable, "storage_alloc") else {
            owner.uncharge(size);
            return Err(Errno::ENOMEM);
        };
        self.probe_mem("storage_alloc", cpu, storage_id(h));
        let storage = self.inner.storages.peek(h).expect("just allocated");
        storage.list_head.store(0, Ordering::Relaxed);
        storage.smap.store(u32::from(smap.id), Ordering::Relaxed);
        storage.lock.lock().owner = Some(owner.clone());
        self.link_storage(h, storage, smap, first);
        self.link_map(cpu, smap, first);
        // ORDERING: AcqRel: Release publishes the initialised storage to `storage_of`'s
        // Acquire load; Acquire (on failure too) orders us after the winner's publication.
        let won = owner
            .storage_ptr()
            .compare_exchange(0, h.pack(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            return Ok(());
        }
        // Lost the race: undo. The storage was never published: immediate reuse is fine.
        self.unlink_map(cpu, smap, first);
        let sel = smap.selems.peek(first).expect("private selem");
        sel.storage_linked.store(false, Ordering::Relaxed);
        smap.selem_slab().note_unlink(first);
        storage.list_head.store(0, Ordering::Relaxed);
        storage.lock.lock().owner = None;
        owner.uncharge(size);
        self.storage_free(cpu, h, true, true, true);
        Err(Errno::EAGAIN)
    }

    /// `bpf_selem_unlink` (§2.5): off the map (B), then off the storage (S); frees after the
    /// unlock with `reuse_now`, and the storage too if this was its last element.
    pub fn selem_unlink(&self, cpu: u32, s: &SelemRef, reuse_now: bool) {
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        self.unlink_map(cpu, &s.smap, s.h);
        let Some(sel) = s.smap.selems.peek(s.h) else { return };
        if !sel.storage_linked.load(Ordering::Relaxed) {
            return;
        }
        let storage_h = Handle::unpack(0, sel.storage.load(Ordering::Relaxed));
        let Some(storage) = self.inner.storages.peek(storage_h) else { return };
        let creator = storage.smap.load(Ordering::Relaxed) != 0;
        let mut free = FreeList::new();
        let mut last = false;
        {
            let mut locked = self.lock_s(cpu, storage_h, storage);
            if sel.storage_linked.load(Ordering::Relaxed) {
                last = self.unlink_storage_nolock(storage, &mut locked, s, &mut free, true);
            }
        }
        for f in free {
            self.selem_free(cpu, f, reuse_now);
        }
        if last {
            self.storage_free(cpu, storage_h, reuse_now, creator, false);
        }
    }

    /// The delete helper / syscall core: the owner's element of `smap`, unlinked with
    /// `reuse_now = false` (programs may still hold it). `-ENOENT` when absent.
    pub fn delete(&self, cpu: u32, owner: &dyn Owner, smap: &Arc<Smap>) -> Result<(), Errno> {
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        let s = self.lookup(cpu, owner, smap, false).ok_or(Errno::ENOENT)?;
        self.selem_unlink(cpu, &s, self.inner.cfg.mutations.delete_reuse_now);
        Ok(())
    }

    /// `bpf_local_storage_destroy` (§2.6): the owner is going away; every element is
    /// unlinked (B nested inside S) and freed with `reuse_now = true`, then the storage.
    pub fn destroy(&self, cpu: u32, owner: &dyn Owner) {
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        let Some((storage_h, storage)) = self.storage_of(owner) else { return };
        let creator = storage.smap.load(Ordering::Relaxed) != 0;
        let mut free = FreeList::new();
        let mut last = false;
        {
            let mut locked = self.lock_s(cpu, storage_h, storage);
            let mut cur = storage.list_head.load(Ordering::Relaxed);
            while cur != 0 {
                let Some((m, h)) = self.resolve_any(cur) else { break };
                let next = m.selems.peek(h).map_or(0, |s| s.snode_next.load(Ordering::Relaxed));
                self.unlink_map(cpu, &m, h);
                let s = SelemRef { smap: m, h };
                let uncharge = !self.inner.cfg.mutations.destroy_skips_uncharge;
                last = self.unlink_storage_nolock(storage, &mut locked, &s, &mut free, uncharge);
                cur = next;
            }
        }
        for f in free {
            self.selem_free(cpu, f, true);
        }
        if last {
            self.storage_free(cpu, storage_h, true, creator, true);
        }
    }

    fn resolve_any(&self, l: u64) -> Option<(Arc<Smap>, Handle)> {
        Some((self.smap_by_id(link_map(l))?, link_handle(l)))
    }

    /// `bpf_local_storage_map_free` (§2.8): releases the cache index, waits for RCU readers,
    /// unlinks every element bucket by bucket with `reuse_now = true`, waits again, and (bpf_ma)
    /// waits for every pending free callback on both domains before dropping the map's
    /// allocator.
    pub fn map_free(&self, cpu: u32, smap: Arc<Smap>) {
        let inner = &self.inner;
        // No new user from here (the refcount is 0); the synchronize below waits for a clone
        // that found this map before.
        smap.dying.store(true, untracked::Ordering::Relaxed);
        inner.cache_idx.put(smap.cache_idx);
        inner.domains.rcu.synchronize();
        for b in smap.buckets.iter() {
            loop {
                // ORDERING: Acquire pairs with the Release head store in `link_map`.
                let first = b.head.load(Ordering::Acquire);
                if first == 0 {
                    break;
                }
                let s = SelemRef { smap: smap.clone(), h: link_handle(first) };
                self.selem_unlink(cpu, &s, true);
                // ORDERING: Acquire, as above.
                if b.head.load(Ordering::Acquire) == first {
                    // A concurrent destroy is unlinking it (it holds S and is about to take
                    // B): wait for it instead of spinning invisibly.
                    bpfls_sync::spin_wait();
                }
            }
        }
        inner.domains.rcu.synchronize();
        if inner.cfg.allocator == Allocator::BpfMa {
            if !inner.cfg.mutations.map_free_skip_tasks_trace_barrier {
                inner.domains.tasks_trace.barrier();
            }
            // The kernel needs this only when Tasks-Trace does not imply RCU; here a free
            // deferred "after Tasks-Trace" may still wait for the implied RCU grace period
            // (see `Domains::defer`), so the RCU barrier always follows.
            if !inner.cfg.mutations.map_free_skip_rcu_barrier {
                inner.domains.rcu.barrier();
            }
        }
        smap.freed.store(true, untracked::Ordering::Relaxed);
        if let Pool::Ma(ma, _) = &smap.selems {
            let _ = ma.destroy();
        }
    }

    /// Tears the type down: waits for every pending free and checks the storage allocator
    /// (leaks are reported to the collector). Call after every owner was destroyed and every
    /// map freed.
    pub fn teardown(&self) -> Result<usize, MemError> {
        let d = &self.inner.domains;
        d.rcu.barrier();
        d.barrier_all();
        d.rcu.barrier();
        let acquired = self.inner.fields_acquired.load(untracked::Ordering::Relaxed);
        let released = self.inner.fields_released.load(untracked::Ordering::Relaxed);
        if acquired != released {
            self.inner.problem(format!(
                "I11: {acquired} special-field sets acquired, {released} released at teardown"
            ));
        }
        match &self.inner.storages {
            Pool::Ma(ma, _) => ma.destroy().map(|r| r.leaked),
            Pool::Slab(s) => Ok(s.check_leaks("teardown")),
        }
    }
}

impl LocalStorage {
    /// The invariants of §6 that hold at a quiescent point (no operation in flight), checked
    /// over the maps and `owners` (pass every owner that may hold storage of this type: a
    /// selem on no given owner's storage is reported); returns every breach found, plus those
    /// recorded on the way (I9, I15). Empty means clean.
    ///
    /// - I4 dual membership: every selem on a bucket is linked to its storage's list and vice
    ///   versa, in the bucket its handle selects, live in its slab; one selem per map per
    ///   storage.
    /// - I5 owner pointer: NULL, or a storage with a non-empty list whose owner is this owner.
    /// - I6 cache safety: every cache slot names a selem on the storage's own list.
    /// - I7 charge balance: a charging owner's charge is `storage_size + Σ elem_size`.
    /// - I13 cache-index accounting: the usage counts sum to the number of live maps.
    pub fn check_invariants(&self, owners: &[&dyn Owner]) -> Vec<String> {
        // A quiescent point: nothing runs concurrently, so plain (Relaxed) loads suffice.
        let inner = &self.inner;
        let mut out =
            std::mem::take(&mut *inner.problems.lock().unwrap_or_else(|e| e.into_inner()));
        let maps: Vec<Arc<Smap>> = inner
            .maps
            .iter()
            .filter_map(|chunk| chunk.get())
            .flat_map(|chunk| chunk.iter().filter_map(|m| m.get()))
            .filter(|m| !m.freed.load(untracked::Ordering::Relaxed))
            .cloned()
            .collect();
        let counted: u64 = inner.cache_idx.counts().iter().sum();
        if counted != maps.len() as u64 {
            out.push(format!(
                "I13: cache_idx counts sum to {counted} with {} live maps",
                maps.len()
            ));
        }
        // Walk the storages of the owners: the set of (map, selem) links they hold.
        let mut on_storages = std::collections::HashSet::new();
        for owner in owners {
            let Some((sh, st)) = self.storage_of(*owner) else {
                if owner.charged().is_some_and(|c| c != 0) {
                    out.push(format!(
                        "I7: owner {} has no storage but {:?} bytes charged",
                        owner.id(),
                        owner.charged()
                    ));
                }
                continue;
            };
            let mut links = Vec::new();
            let mut cur = st.list_head.load(Ordering::Relaxed);
            while cur != 0 && links.len() <= MAX_MAPS {
                links.push(cur);
                let Some((m, h)) = self.resolve_any(cur) else {
                    out.push(format!("I4: storage {sh} links to an unknown map {}", link_map(cur)));
                    break;
                };
                let Some(sel) = m.selems.peek(h) else { break };
                if !m.selem_slab().is_live(h) {
                    out.push(format!(
                        "I4: storage {sh} links to a freed selem {h} of map {}",
                        m.id
                    ));
                }
                if m.freed.load(untracked::Ordering::Relaxed) {
                    out.push(format!(
                        "I4: storage {sh} links selem {h} of map {}, which map_free has freed",
                        m.id
                    ));
                }
                if !sel.map_linked.load(Ordering::Relaxed)
                    || !sel.storage_linked.load(Ordering::Relaxed)
                {
                    out.push(format!(
                        "I4: selem {h} of map {} on storage {sh} is not doubly linked",
                        m.id
                    ));
                }
                if Handle::unpack(0, sel.storage.load(Ordering::Relaxed)) != sh {
                    out.push(format!("I4: selem {h} on storage {sh} points at another storage"));
                }
                cur = sel.snode_next.load(Ordering::Relaxed);
            }
            let mut per_map = std::collections::HashMap::new();
            for l in &links {
                *per_map.entry(link_map(*l)).or_insert(0u32) += 1;
                on_storages.insert(*l);
            }
            if let Some((m, n)) = per_map.iter().find(|(_, n)| **n > 1) {
                out.push(format!("I4: storage {sh} holds {n} selems of map {m}"));
            }
            if links.is_empty() {
                out.push(format!(
                    "I5: owner {} points at storage {sh} with an empty list",
                    owner.id()
                ));
            }
            let holder = st.lock.lock().owner.as_ref().map(|o| o.id());
            if holder != Some(owner.id()) {
                out.push(format!(
                    "I5: storage {sh} of owner {} names owner {holder:?}",
                    owner.id()
                ));
            }
            for (i, c) in st.cache.iter().enumerate() {
                let c = c.load(Ordering::Relaxed);
                if c != 0 && !links.contains(&c) {
                    out.push(format!(
                        "I6: storage {sh} cache slot {i} names a selem not on its list"
                    ));
                }
            }
            if let Some(charged) = owner.charged() {
                let want: usize = inner.cfg.storage_size
                    + links
                        .iter()
                        .filter_map(|l| self.smap_by_id(link_map(*l)))
                        .map(|m| m.elem_size)
                        .sum::<usize>();
                if charged != want as u64 {
                    out.push(format!(
                        "I7: owner {} charged {charged} bytes, expected {want}",
                        owner.id()
                    ));
                }
            }
        }
        // Walk the buckets: every selem there must be on a storage list (of a given owner, or
        // at least linked to one).
        for m in &maps {
            for (bi, b) in m.buckets.iter().enumerate() {
                let mut cur = b.head.load(Ordering::Relaxed);
                let mut prev = 0;
                let mut n = 0;
                while cur != 0 && n <= m.selem_slab().stats().capacity {
                    n += 1;
                    let h = link_handle(cur);
                    let Some(sel) = m.selems.peek(h) else { break };
                    if sel.map_prev.load(Ordering::Relaxed) != prev {
                        out.push(format!("I4: selem {h} of map {} has a stale back link", m.id));
                    }
                    prev = cur;
                    if m.bucket_index(h).is_some_and(|i| i != bi) {
                        out.push(format!(
                            "I4: selem {h} of map {} sits in bucket {bi}, not its own",
                            m.id
                        ));
                    }
                    if !sel.storage_linked.load(Ordering::Relaxed) {
                        out.push(format!(
                            "I4: selem {h} of map {} is in a bucket but on no storage",
                            m.id
                        ));
                    }
                    if !owners.is_empty()
                        && sel.storage_linked.load(Ordering::Relaxed)
                        && !on_storages.contains(&cur)
                    {
                        out.push(format!(
                            "I4: selem {h} of map {} is on no given owner's storage",
                            m.id
                        ));
                    }
                    cur = sel.map_next.load(Ordering::Relaxed);
                }
            }
        }
        out
    }
}

impl LocalStorage {
    /// `bpf_sk_storage_clone` (§2.12): copies every element of `parent` whose map has
    /// `BPF_F_CLONE` to `child` (a new socket nobody else can see yet), charging the child.
    /// On error the caller destroys the child, which releases what was cloned.
    pub fn clone_storage(
        &self,
        cpu: u32,
        parent: &dyn Owner,
        child: &untracked::Arc<dyn Owner>,
    ) -> Result<(), Errno> {
        child.storage_ptr().store(0, Ordering::Relaxed);
        let _rcu = self.inner.domains.rcu.read_lock(cpu);
        let Some((_, storage)) = self.storage_of(parent) else { return Ok(()) };
        // ORDERING: Acquire pairs with the Release head store in `link_storage`.
        // `bpf_map_inc_not_zero`: skip a map whose last reference is gone (the mutation looks
        // only at whether its map_free has finished).
        let gone = |m: &Smap| {
            let flag =
                if self.inner.cfg.mutations.clone_into_dying_map { &m.freed } else { &m.dying };
            flag.load(untracked::Ordering::Relaxed)
        };
        let mut cur = storage.list_head.load(Ordering::Acquire);
        let mut steps = 0;
        while cur != 0 && steps <= MAX_MAPS {
            steps += 1;
            let Some((m, h)) = self.resolve_any(cur) else { break };
            let Some(sel) = m.selems.peek(h) else { break };
            // ORDERING: Acquire pairs with the Release store of `snode_next` at insertion.
            let next = sel.snode_next.load(Ordering::Acquire);
            if m.attr.map_flags & crate::flags::MapFlags::CLONE.bits() != 0 && !gone(&m) {
                let value = {
                    let _g = m.attr.layout.spin_lock.then(|| sel.value_lock.lock());
                    sel.read_value(m.attr.value_size as usize)
                };
                let copy = self.selem_alloc(cpu, child.as_ref(), &m, Some(&value), false)?;
                match self.storage_of(child.as_ref()) {
                    Some((ch, cst)) => {
                        // The child is private: link without its lock.
                        self.link_map(cpu, &m, copy);
                        self.link_storage(ch, cst, &m, copy);
                    }
                    None => {
                        if let Err(e) = self.storage_alloc(cpu, child, &m, copy, false) {
                            child.uncharge(m.elem_size);
                            self.selem_free(cpu, SelemRef { smap: m, h: copy }, true);
                            return Err(e);
                        }
                    }
                }
            }
            cur = next;
        }
        Ok(())
    }
}
