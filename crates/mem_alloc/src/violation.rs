//! Violations: what the checker reports instead of undefined behaviour, and the collector the
//! caller owns. Library code never prints; tests and the CLI read the collector.

use crate::Handle;
use bpfls_sync::untracked::{Arc, Mutex};
use std::fmt;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// Access through a handle whose object was freed (and not yet handed out again).
    UseAfterFree,
    /// Access through a handle whose slot now holds another object of the same cache: the
    /// type-stable reuse of `bpf_mem_alloc`, seen by a reader the rules should have excluded.
    ReusedAccess,
    /// A second free of the same object (or a free through a stale handle).
    DoubleFree,
    /// A free (or access) of something this slab never handed out: a forged handle.
    UnknownObject,
    /// An object still allocated, or still cached, when its allocator was torn down.
    Leak,
    /// A free of an object that is still linked into a list (the ledger says so).
    FreeWhileLinked,
}

impl ViolationKind {
    /// Stable name for traces and tests.
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::UseAfterFree => "use_after_free",
            ViolationKind::ReusedAccess => "reused_access",
            ViolationKind::DoubleFree => "double_free",
            ViolationKind::UnknownObject => "unknown_object",
            ViolationKind::Leak => "leak",
            ViolationKind::FreeWhileLinked => "free_while_linked",
        }
    }
}

/// One report, in the spirit of a KASAN splat: what, which object, where it was allocated
/// and freed, where it was detected, and when (logical time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What went wrong.
    pub kind: ViolationKind,
    /// The object, as the offending handle names it.
    pub obj: Handle,
    /// The slab (`kmem_cache`) name.
    pub cache: &'static str,
    /// The probe-point name of the operation that detected it.
    pub site: &'static str,
    /// Where the object (this generation) was allocated, if it was.
    pub alloc_site: Option<&'static str>,
    /// Where it was freed, if it was.
    pub free_site: Option<&'static str>,
    /// Logical time of the detection (the shared probe clock).
    pub seq: u64,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} in cache `{}` at `{}`",
            self.kind.name(),
            self.obj,
            self.cache,
            self.site
        )?;
        if let Some(a) = self.alloc_site {
            write!(f, ", allocated at `{a}`")?;
        }
        if let Some(fr) = self.free_site {
            write!(f, ", freed at `{fr}`")?;
        }
        write!(f, " (seq {})", self.seq)
    }
}

impl std::error::Error for Violation {}

/// The collector of violations. Cloning shares it; the caller (a test, the `Kernel`) owns it
/// and decides what a violation means. It is checker bookkeeping, invisible to loom.
#[derive(Clone, Default)]
pub struct Violations(Arc<Mutex<Vec<Violation>>>);

impl fmt::Debug for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Violations").field(&self.len()).finish()
    }
}

impl Violations {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn report(&self, v: Violation) {
        tracing::event!(
            target: "bpfls::alloc",
            tracing::Level::WARN,
            seq = v.seq,
            op = "violation",
            kind = v.kind.name(),
            cache = v.cache,
            slot = v.obj.slot(),
            generation = v.obj.generation(),
            site = v.site,
        );
        self.lock().push(v);
    }

    fn lock(&self) -> bpfls_sync::untracked::MutexGuard<'_, Vec<Violation>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of violations reported so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none has been reported.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every violation so far.
    pub fn snapshot(&self) -> Vec<Violation> {
        self.lock().clone()
    }

    /// Removes and returns every violation so far.
    pub fn take(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.lock())
    }

    /// The kinds reported so far, in order.
    pub fn kinds(&self) -> Vec<ViolationKind> {
        self.lock().iter().map(|v| v.kind).collect()
    }
}
