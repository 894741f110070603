//! The checked slab: the `kmalloc` / `kmem_cache` analogue that owns every object.
//!
//! # Why handles and a type-stable arena
//!
//! A simulator of reclamation bugs must survive the bugs it simulates. Objects therefore live
//! in slots that are allocated once, when the slab is built, and never handed back to Rust's
//! allocator while the slab lives: a stale reference always points at *some* object of this
//! slab, exactly the `SLAB_TYPESAFE_BY_RCU` guarantee `bpf_mem_alloc` gives. What tells a
//! live object from a freed or reused one is the slot's state word, and every checked access
//! compares it with the handle's generation. A use after free is then a [`Violation`], not
//! undefined behaviour.
//!
//! # The slot life cycle
//!
//! ```text
//!   state word = generation << 8 | state
//!
//!              kmalloc / user alloc (generation + 1)
//!   SlabFree ─────────────────────────────────────────► Allocated ──── raw_free / kfree ──► SlabFree
//!      │  ▲                                       ▲      │   │
//!      │  │ release (trim, TT GP, destroy)        │      │   └─ free_rcu ─► RcuDeferred ─(RCU GP)─┐
//!      │  │                                       │      └─ free (reuse now) ─┐                    │
//!      ▼  │            user alloc (generation + 1)│                           ▼                    │
//!    (refill) ─────────► Cached ──────────────────┘◄──────────────────────── Cached ◄──────────────┘
//! ```
//!
//! A handle `(slot, generation)` is valid while the slot says `Allocated` with the same
//! generation; `RcuDeferred` with the same generation is still readable (a reader inside its
//! section may hold it until the grace period ends). `Cached` or `SlabFree` with the same
//! generation is a use after free; a *newer* generation means the slot was handed out again
//! (reused). Generations bump only when an object is handed out, so a handle never names two
//! lifetimes. The generation is 32 bits: a slot reused 2^32 times would alias (ignored).

use crate::violation::{Violation, ViolationKind, Violations};
use crate::{AllocError, Handle};
use bpfls_sync::atomic::{AtomicU64, Ordering};
use bpfls_sync::probe::{Probes, Verdict};
use bpfls_sync::{Mutex, untracked};
use std::fmt;

/// What the slab stores. Objects are built once per slot (at slab creation) and reused; they
/// must tolerate concurrent access through stale handles (use atomics or the facade's cells
/// for their contents).
pub trait SlabObject: Send + Sync + 'static {
    /// A fresh object of `unit_size` bytes.
    fn new(unit_size: usize) -> Self;
    /// Overwrites the contents with a poison pattern: the object is being freed.
    fn poison(&self);
}

/// The kernel's `POISON_FREE` byte, repeated.
pub const POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

/// A plain object of `unit_size` bytes, held as 64-bit atomic words so that a racy reader of a
/// freed object reads poison or another object's bytes, never undefined behaviour.
#[derive(Debug)]
pub struct Bytes(Box<[bpfls_sync::atomic::AtomicU64]>);

impl SlabObject for Bytes {
    fn new(unit_size: usize) -> Self {
        Bytes((0..unit_size.div_ceil(8)).map(|_| bpfls_sync::atomic::AtomicU64::new(0)).collect())
    }

    fn poison(&self) {
        for w in self.0.iter() {
            w.store(POISON, Ordering::Relaxed);
        }
    }
}

impl Bytes {
    /// Number of 64-bit words.
    pub fn words(&self) -> usize {
        self.0.len()
    }

    /// Reads word `i`.
    pub fn load(&self, i: usize) -> u64 {
        self.0[i].load(Ordering::Relaxed)
    }

    /// Writes word `i`.
    pub fn store(&self, i: usize, v: u64) {
        self.0[i].store(v, Ordering::Relaxed);
    }
}

/// Slot states (low byte of the state word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    SlabFree = 0,
    Allocated = 1,
    Cached = 2,
    RcuDeferred = 3,
}

/// Generations use 24 bits, so that a handle packs into 48 bits (see [`Handle::pack`]); 0 is
/// never handed out. A slot reused 2^24 times aliases an old handle (accepted).
///
/// [`Handle::pack`]: crate::Handle::pack
pub const GENERATION_BITS: u32 = 24;

/// Most slots a slab may have (slot indices pack into 24 bits).
pub const MAX_CAPACITY: u32 = 1 << 24;

fn next_generation(g: u32) -> u32 {
    match (g + 1) & ((1 << GENERATION_BITS) - 1) {
        0 => 1,
        n => n,
    }
}

fn pack(generation: u32, state: State) -> u64 {
    (u64::from(generation) << 8) | state as u64
}

fn unpack(word: u64) -> (u32, State) {
    let state = match word & 0xff {
        0 => State::SlabFree,
        1 => State::Allocated,
        2 => State::Cached,
        _ => State::RcuDeferred,
    };
    ((word >> 8) as u32, state)
}

/// How an object was freed (ledger and reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FreeKind {
    /// `bpf_mem_cache_free`: immediately reusable.
    Now,
    /// `bpf_mem_cache_free_rcu`: reusable after an RCU grace period.
    Rcu,
    /// `kfree` / `bpf_mem_cache_raw_free`: straight back to the slab.
    Raw,
}

/// The ledger of one slot's current lifetime (checker bookkeeping, untracked by loom).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Generation of the lifetime this ledger describes.
    pub generation: u32,
    /// Where it was allocated.
    pub alloc_site: Option<&'static str>,
    /// How and where it was freed.
    pub free: Option<(FreeKind, &'static str)>,
    /// Lists the object is linked into now (maintained by the caller).
    pub links: u32,
    /// Whether it is back in the slab.
    pub released: bool,
}

struct SlotCell<T> {
    word: AtomicU64,
    /// This lifetime's ledger. Per slot, so CPUs working on different objects never share a
    /// lock; the checker's bookkeeping, so untracked.
    ledger: untracked::Mutex<Ledger>,
    /// The allocating cache (the object header's "hint"); allocator bookkeeping.
    hint: untracked::AtomicU64,
    obj: T,
}

/// Counters of one slab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlabStats {
    /// Objects taken from the slab (`kmalloc` calls that succeeded), ever.
    pub slab_allocs: u64,
    /// Objects returned to the slab, ever.
    pub slab_frees: u64,
    /// Objects out of the slab now (`slab_allocs - slab_frees`).
    pub outstanding: u64,
    /// Slots.
    pub capacity: u64,
}

/// A memory-accounting owner (the memcg analogue): what the objects of one allocator charge,
/// against an optional limit. Cloning shares it.
#[derive(Clone)]
pub struct Account(untracked::Arc<AccountInner>);

struct AccountInner {
    name: String,
    limit: Option<u64>,
    charged: untracked::AtomicU64,
    peak: untracked::AtomicU64,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.0.name)
            .field("charged", &self.charged())
            .field("limit", &self.0.limit)
            .finish()
    }
}

impl Account {
    /// An account with an optional byte limit.
    pub fn new(name: impl Into<String>, limit: Option<u64>) -> Self {
        Account(untracked::Arc::new(AccountInner {
            name: name.into(),
            limit,
            charged: untracked::AtomicU64::new(0),
            peak: untracked::AtomicU64::new(0),
        }))
    }

    /// An account without a limit.
    pub fn unlimited(name: impl Into<String>) -> Self {
        Self::new(name, None)
    }

    /// Bytes charged now.
    pub fn charged(&self) -> u64 {
        self.0.charged.load(untracked::Ordering::Relaxed)
    }

    /// Most bytes ever charged at once.
    pub fn peak(&self) -> u64 {
        self.0.peak.load(untracked::Ordering::Relaxed)
    }

    /// Resets the peak to the current charge (to measure one phase).
    pub fn reset_peak(&self) {
        self.0.peak.store(self.charged(), untracked::Ordering::Relaxed);
    }

    fn try_charge(&self, bytes: u64) -> bool {
        let r = self.0.charged.fetch_update(
            untracked::Ordering::Relaxed,
            untracked::Ordering::Relaxed,
            |c| {
                let next = c + bytes;
                self.0.limit.is_none_or(|l| next <= l).then_some(next)
            },
        );
        match r {
            Ok(prev) => {
                self.0.peak.fetch_max(prev + bytes, untracked::Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn uncharge(&self, bytes: u64) {
        self.0.charged.fetch_sub(bytes, untracked::Ordering::Relaxed);
    }
}

/// A typed arena of `capacity` objects of `unit_size` bytes: the checked `kmem_cache`.
pub struct Slab<T> {
    name: &'static str,
    class: u8,
    unit_size: usize,
    slots: Box<[SlotCell<T>]>,
    /// Slots back in the slab (LIFO). A facade lock: it orders a slot's release before its
    /// next allocation, which loom must see.
    free_slots: Mutex<Vec<u32>>,
    account: Account,
    violations: Violations,
    probes: Probes,
    slab_allocs: untracked::AtomicU64,
    slab_frees: untracked::AtomicU64,
}

impl<T> fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slab")
            .field("name", &self.name)
            .field("unit_size", &self.unit_size)
            .field("capacity", &self.slots.len())
            .finish_non_exhaustive()
    }
}

macro_rules! alloc_event {
    ($slab:expr, $op:literal $(, $($rest:tt)*)?) => {
        tracing::event!(
            target: "bpfls::alloc",
            tracing::Level::TRACE,
            seq = $slab.probes.next_seq(),
            cache = $slab.name,
            op = $op
            $(, $($rest)*)?
        )
    };
}
pub(crate) use alloc_event;

impl<T: SlabObject> Slab<T> {
    /// A slab of `capacity` objects of `unit_size` bytes, charging `account`, reporting to
    /// `violations`. `class` tags the handles (size-class index; 0 for a lone slab).
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`MAX_CAPACITY`].
    pub fn new(
        name: &'static str,
        class: u8,
        unit_size: usize,
        capacity: u32,
        account: Account,
        violations: Violations,
        probes: Probes,
    ) -> Self {
        assert!(capacity <= MAX_CAPACITY, "bpfls-mem-alloc: slab capacity {capacity} > 2^24");
        let slots = (0..capacity)
            .map(|_| SlotCell {
                word: AtomicU64::new(pack(0, State::SlabFree)),
                ledger: untracked::Mutex::new(Ledger::default()),
                hint: untracked::AtomicU64::new(0),
                obj: T::new(unit_size),
            })
            .collect();
        Slab {
            name,
            class,
            unit_size,
            slots,
            free_slots: Mutex::new((0..capacity).rev().collect()),
            account,
            violations,
            probes,
            slab_allocs: untracked::AtomicU64::new(0),
            slab_frees: untracked::AtomicU64::new(0),
        }
    }
}

impl<T: SlabObject> Slab<T> {
    /// The cache name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Bytes per object (charged per allocation).
    pub fn unit_size(&self) -> usize {
        self.unit_size
    }

    /// The account charged.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The violation collector.
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    /// Counters.
    pub fn stats(&self) -> SlabStats {
        let a = self.slab_allocs.load(untracked::Ordering::Relaxed);
        let f = self.slab_frees.load(untracked::Ordering::Relaxed);
        SlabStats {
            slab_allocs: a,
            slab_frees: f,
            outstanding: a - f,
            capacity: self.slots.len() as u64,
        }
    }

    fn ledger(&self, slot: u32) -> untracked::MutexGuard<'_, Ledger> {
        self.slots[slot as usize].ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ledger of the slot `h` names (its current lifetime).
    pub fn ledger_of(&self, h: Handle) -> Option<Ledger> {
        self.cell(h).map(|_| *self.ledger(h.slot()))
    }

    fn handle(&self, slot: u32, generation: u32) -> Handle {
        Handle::new(self.class, slot, generation)
    }

    fn report(&self, kind: ViolationKind, h: Handle, site: &'static str) -> Violation {
        let l = self.ledger_of(h).unwrap_or_default();
        let (alloc_site, free_site) = if l.generation == h.generation() {
            (l.alloc_site, l.free.map(|(_, s)| s))
        } else {
            (None, None)
        };
        let v = Violation {
            kind,
            obj: h,
            cache: self.name,
            site,
            alloc_site,
            free_site,
            seq: self.probes.next_seq(),
        };
        self.violations.report(v.clone());
        v
    }

    // ----- taking objects out of the slab ---------------------------------------------------

    /// Takes a slot out of the slab, charging the account (`kmalloc`'s work). The slot is
    /// `SlabFree`; the caller moves it on.
    fn take_slot(&self, site: &'static str) -> Result<u32, AllocError> {
        if self.probes.hit("slab_alloc", None, &[("class", u64::from(self.class))]) == Verdict::Fail
        {
            alloc_event!(self, "slab_alloc_fail", site, reason = "injected");
            return Err(AllocError::NoMemory);
        }
        let Some(slot) = self.free_slots.lock().pop() else {
            alloc_event!(self, "slab_alloc_fail", site, reason = "capacity");
            return Err(AllocError::NoMemory);
        };
        if !self.account.try_charge(self.unit_size as u64) {
            self.free_slots.lock().push(slot);
            alloc_event!(self, "slab_alloc_fail", site, reason = "limit");
            return Err(AllocError::NoMemory);
        }
        self.slab_allocs.fetch_add(1, untracked::Ordering::Relaxed);
        Ok(slot)
    }

    /// `kmalloc`: a new object straight to the caller.
    pub fn alloc(&self, site: &'static str) -> Result<Handle, AllocError> {
        let slot = self.take_slot(site)?;
        Ok(self.hand_out(slot, State::SlabFree, site))
    }

    /// Takes a slot out of the slab into a per-CPU cache list (`alloc_bulk`'s `kmalloc`).
    pub(crate) fn alloc_cached(&self, site: &'static str) -> Result<u32, AllocError> {
        let slot = self.take_slot(site)?;
        let cell = &self.slots[slot as usize];
        let (g, s) = unpack(cell.word.load(Ordering::Relaxed));
        debug_assert_eq!(s, State::SlabFree);
        // ORDERING: Release pairs with the Acquire loads of readers (`check`): the object's
        // re-initialisation by its next user happens after this state change is visible.
        cell.word.store(pack(g, State::Cached), Ordering::Release);
        Ok(slot)
    }

    /// Hands out `slot` (currently `from`) to a user with a new generation.
    pub(crate) fn hand_out(&self, slot: u32, from: State, site: &'static str) -> Handle {
        let cell = &self.slots[slot as usize];
        let (g, s) = unpack(cell.word.load(Ordering::Relaxed));
        assert_eq!(
            s, from,
            "bpfls-mem-alloc: slot {slot} of `{}` is {s:?} but its list says {from:?} (I14: an \
             object on two lists?)",
            self.name
        );
        let generation = next_generation(g);
        // ORDERING: Release pairs with the Acquire load in `check`: a stale reader that sees
        // the new generation also sees everything the previous lifetime's free did.
        cell.word.store(pack(generation, State::Allocated), Ordering::Release);
        *self.ledger(slot) =
            Ledger { generation, alloc_site: Some(site), free: None, links: 0, released: false };
        let h = self.handle(slot, generation);
        alloc_event!(self, "alloc", slot, generation, site);
        h
    }

    // ----- freeing --------------------------------------------------------------------------

    /// Ends the lifetime `h` names: `Allocated(g)` becomes `to` (same generation). Reports a
    /// double free, an unknown object, or a free while linked.
    pub(crate) fn end_lifetime(
        &self,
        h: Handle,
        to: State,
        kind: FreeKind,
        site: &'static str,
    ) -> Result<(), Violation> {
        let Some(cell) = self.cell(h) else {
            return Err(self.report(ViolationKind::UnknownObject, h, site));
        };
        let expected = pack(h.generation(), State::Allocated);
        // ORDERING: AcqRel: Release orders the user's last writes before the state change that
        // a concurrent reader's `check` (Acquire) observes; Acquire orders this free after a
        // racing free's, so exactly one of two frees wins.
        if let Err(now) = cell.word.compare_exchange(
            expected,
            pack(h.generation(), to),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            let (g, _) = unpack(now);
            let kind = if g < h.generation() || h.generation() == 0 {
                ViolationKind::UnknownObject
            } else {
                ViolationKind::DoubleFree
            };
            return Err(self.report(kind, h, site));
        }
        if to == State::Cached || to == State::SlabFree {
            cell.obj.poison();
        }
        let links = {
            let mut e = self.ledger(h.slot());
            e.free = Some((kind, site));
            e.links
        };
        alloc_event!(self, "free", slot = h.slot(), generation = h.generation(), kind = ?kind, site);
        if links > 0 {
            self.report(ViolationKind::FreeWhileLinked, h, site);
        }
        Ok(())
    }

    /// `kfree`: ends the lifetime and returns the slot to the slab at once (the caller has
    /// waited for every reader that could hold it).
    pub fn free(&self, h: Handle, site: &'static str) -> Result<(), Violation> {
        self.end_lifetime(h, State::SlabFree, FreeKind::Raw, site)?;
        self.put_slot(h.slot(), site);
        Ok(())
    }

    /// An `RcuDeferred` object's grace period has ended: it becomes `Cached` (reusable) and is
    /// poisoned.
    pub(crate) fn settle(&self, slot: u32) {
        let cell = &self.slots[slot as usize];
        let (g, s) = unpack(cell.word.load(Ordering::Relaxed));
        if s == State::RcuDeferred {
            cell.obj.poison();
            // ORDERING: Release pairs with readers' Acquire `check`.
            cell.word.store(pack(g, State::Cached), Ordering::Release);
        }
    }

    /// Returns a `Cached` (or `RcuDeferred`, at destroy) slot to the slab.
    pub(crate) fn release(&self, slot: u32, site: &'static str) {
        let cell = &self.slots[slot as usize];
        let (g, s) = unpack(cell.word.load(Ordering::Relaxed));
        assert!(
            matches!(s, State::Cached | State::RcuDeferred),
            "bpfls-mem-alloc: releasing slot {slot} of `{}` in state {s:?} (I14)",
            self.name
        );
        cell.obj.poison();
        // ORDERING: Release pairs with readers' Acquire `check`.
        cell.word.store(pack(g, State::SlabFree), Ordering::Release);
        self.put_slot(slot, site);
    }

    fn put_slot(&self, slot: u32, site: &'static str) {
        self.ledger(slot).released = true;
        self.account.uncharge(self.unit_size as u64);
        self.slab_frees.fetch_add(1, untracked::Ordering::Relaxed);
        self.free_slots.lock().push(slot);
        self.probes.hit(
            "slab_free",
            None,
            &[("class", u64::from(self.class)), ("slot", u64::from(slot))],
        );
        alloc_event!(self, "slab_free", slot, site);
    }

    // ----- access ---------------------------------------------------------------------------

    fn cell(&self, h: Handle) -> Option<&SlotCell<T>> {
        (h.class() == self.class).then(|| self.slots.get(h.slot() as usize)).flatten()
    }

    /// The violation an access through `h` commits now, if any.
    fn check(&self, h: Handle) -> Option<ViolationKind> {
        let Some(cell) = self.cell(h) else { return Some(ViolationKind::UnknownObject) };
        // ORDERING: Acquire pairs with the Release stores of the state word (`hand_out`,
        // `end_lifetime`, `settle`, `release`): what the checker concludes is ordered with the
        // object contents written before the change.
        let (g, s) = unpack(cell.word.load(Ordering::Acquire));
        match (g.cmp(&h.generation()), s) {
            _ if h.generation() == 0 => Some(ViolationKind::UnknownObject),
            (std::cmp::Ordering::Equal, State::Allocated | State::RcuDeferred) => None,
            (std::cmp::Ordering::Equal, _) => Some(ViolationKind::UseAfterFree),
            (std::cmp::Ordering::Greater, _) => Some(ViolationKind::ReusedAccess),
            (std::cmp::Ordering::Less, _) => Some(ViolationKind::UnknownObject),
        }
    }

    /// Checked access: the object, or a reported violation.
    pub fn get(&self, h: Handle, site: &'static str) -> Result<&T, Violation> {
        match self.check(h) {
            None => Ok(&self.cell(h).expect("checked").obj),
            Some(kind) => Err(self.report(kind, h, site)),
        }
    }

    /// Checked access around a closure: checks before and after `f`, so a free or reuse that
    /// races with the read is reported too (seqlock style). `f`'s result is discarded on a
    /// violation.
    pub fn read<R>(
        &self,
        h: Handle,
        site: &'static str,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, Violation> {
        let obj = self.get(h, site)?;
        let r = f(obj);
        match self.check(h) {
            None => Ok(r),
            Some(kind) => Err(self.report(kind, h, site)),
        }
    }

    /// Unchecked, type-stable access (for walkers that revalidate, as the kernel's list walks
    /// under RCU do): the object in `h`'s slot, whatever its state. `None` for a forged slot.
    pub fn peek(&self, h: Handle) -> Option<&T> {
        self.cell(h).map(|c| &c.obj)
    }

    /// Whether an access through `h` would be allowed now (no report).
    pub fn is_live(&self, h: Handle) -> bool {
        self.check(h).is_none()
    }

    /// Records that the object is linked into one more list (the storage layer's ledger).
    pub fn note_link(&self, h: Handle) {
        if self.cell(h).is_some() {
            self.ledger(h.slot()).links += 1;
        }
    }

    /// Records that the object left one list.
    pub fn note_unlink(&self, h: Handle) {
        if self.cell(h).is_some() {
            let mut e = self.ledger(h.slot());
            e.links = e.links.saturating_sub(1);
        }
    }

    // ----- allocator support ------------------------------------------------------------------

    pub(crate) fn state(&self, slot: u32) -> State {
        unpack(self.slots[slot as usize].word.load(Ordering::Relaxed)).1
    }

    pub(crate) fn set_hint(&self, slot: u32, hint: u64) {
        self.slots[slot as usize].hint.store(hint, untracked::Ordering::Relaxed);
    }

    pub(crate) fn hint(&self, slot: u32) -> u64 {
        self.slots[slot as usize].hint.load(untracked::Ordering::Relaxed)
    }

    /// Reports every slot not back in the slab as a leak (teardown); returns how many.
    pub fn check_leaks(&self, site: &'static str) -> usize {
        let mut n = 0;
        for (i, cell) in self.slots.iter().enumerate() {
            let (g, s) = unpack(cell.word.load(Ordering::Relaxed));
            if s != State::SlabFree {
                self.report(ViolationKind::Leak, self.handle(i as u32, g), site);
                n += 1;
            }
        }
        n
    }
}
