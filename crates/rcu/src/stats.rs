//! Statistics of a domain. Kept in untracked atomics: they are the checker's bookkeeping, not
//! part of the algorithm, and loom must not explore them.

use bpfls_sync::untracked::{AtomicU64, Ordering};

/// A snapshot of a domain's counters (`Domain::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Target of the latest grace period started (`gp_seq`).
    pub gp_seq: u64,
    /// Grace periods started.
    pub gp_started: u64,
    /// Grace periods completed.
    pub gp_completed: u64,
    /// Callbacks ever queued by `call`.
    pub cbs_queued: u64,
    /// Callbacks invoked.
    pub cbs_invoked: u64,
    /// Callbacks queued and not yet invoked.
    pub cbs_pending: u64,
    /// Bytes of the pending callbacks, as declared by `call_tagged`.
    pub bytes_pending: u64,
    /// Most callbacks ever pending at once (sampled at each `call`).
    pub peak_pending: u64,
    /// Most callbacks queued between two consecutive callback grace-period starts. C6's
    /// forward-progress bound: with grace periods flowing, `peak_pending` stays within twice
    /// this.
    pub max_queued_per_gp: u64,
    /// Stall reports issued (a reader held a grace period past the stall threshold).
    pub stalls: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    pub(crate) gp_started: AtomicU64,
    pub(crate) gp_completed: AtomicU64,
    pub(crate) cbs_queued: AtomicU64,
    pub(crate) cbs_invoked: AtomicU64,
    pub(crate) bytes_pending: AtomicU64,
    pub(crate) peak_pending: AtomicU64,
    pub(crate) max_queued_per_gp: AtomicU64,
    pub(crate) stalls: AtomicU64,
}

impl StatsCell {
    pub(crate) fn snapshot(&self) -> Stats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            gp_seq: 0,
            gp_started: r(&self.gp_started),
            gp_completed: r(&self.gp_completed),
            cbs_queued: r(&self.cbs_queued),
            cbs_invoked: r(&self.cbs_invoked),
            cbs_pending: 0,
            bytes_pending: r(&self.bytes_pending),
            peak_pending: r(&self.peak_pending),
            max_queued_per_gp: r(&self.max_queued_per_gp),
            stalls: r(&self.stalls),
        }
    }
}
