//! Probe points: named places in the core code where the outside world may look in.
//!
//! The kernel has tracepoints and fentry hooks; the simulator has probe points (`gp_start`,
//! `callback_invoke`, `selem_alloc`, `storage_lock_acquired`, ...). One probe point serves four
//! purposes (DESIGN.md, "Probe points"):
//!
//! 1. a `tracing` event with structured fields (emitted by the crate that owns the site);
//! 2. an interleaving point for the stepped executor, which may pause the calling logical CPU
//!    inside [`ProbeHook::hit`] and run another one;
//! 3. a fault-injection site: the hook answers [`Verdict::Fail`] and the site takes its
//!    failure path (where it has one);
//! 4. an attach point for simulated BPF programs, which the hook runs before returning.
//!
//! When nothing is attached, [`Probes::hit`] is one branch on a plain field, so threaded
//! benchmarks pay (nearly) nothing for probe points.
//!
//! Waiting is a probe too: code that cannot make progress until another logical CPU acts (a
//! `synchronize` whose grace period has not ended, a held lock) calls [`Probes::wait`] in its
//! loop. With no hook that is a [`spin_wait`](crate::spin_wait); a stepped executor instead
//! switches CPUs, and when every CPU waits it answers [`WaitVerdict::Deadlock`] so the waiter
//! can report the cycle instead of hanging.
//!
//! The hook and the logical clock are bookkeeping, not algorithm: they use [`untracked`]
//! types so loom never explores them.
//!
//! [`untracked`]: crate::untracked

use crate::untracked::{Arc, AtomicU64, Ordering};
use core::fmt;

/// What a probe point reports about itself.
#[derive(Debug, Clone, Copy)]
pub struct ProbeEvent<'a> {
    /// The probe point's stable name, e.g. `"gp_start"`.
    pub site: &'static str,
    /// The logical CPU the code runs on, when the site knows it.
    pub cpu: Option<u32>,
    /// Object ids and other integers, by stable field name (never addresses).
    pub fields: &'a [(&'static str, u64)],
}

/// A hook's answer at a probe point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on normally.
    Continue,
    /// Take the site's failure path (fault injection). Sites without one ignore this.
    Fail,
}

/// A hook's answer to a waiter that cannot make progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitVerdict {
    /// Re-check the condition (something else may have run meanwhile).
    Retry,
    /// Nothing can ever make the condition true: report instead of waiting forever.
    Deadlock,
}

/// Something attached to the probe points: a recorder, a fault injector, a stepped executor.
pub trait ProbeHook: Send + Sync {
    /// Called at every probe point the code passes.
    fn hit(&self, event: &ProbeEvent<'_>) -> Verdict;

    /// Called on each iteration of a wait loop. The default spins once.
    fn wait(&self, event: &ProbeEvent<'_>) -> WaitVerdict {
        let _ = event;
        crate::spin_wait();
        WaitVerdict::Retry
    }
}

/// The probe points of one simulated kernel: an optional hook and a logical clock.
///
/// Cloning shares both, so every crate of one `Kernel` numbers its events on one clock.
#[derive(Clone, Default)]
pub struct Probes {
    hook: Option<Arc<dyn ProbeHook>>,
    clock: Arc<AtomicU64>,
}

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.hook.is_some())
            .field("seq", &self.clock.load(Ordering::Relaxed))
            .finish()
    }
}

impl Probes {
    /// Probe points with nothing attached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Probe points with `hook` attached.
    pub fn with_hook(hook: Arc<dyn ProbeHook>) -> Self {
        Self { hook: Some(hook), clock: Arc::default() }
    }

    /// Whether a hook is attached.
    #[inline]
    pub fn is_attached(&self) -> bool {
        self.hook.is_some()
    }

    /// Passes the probe point `site`.
    #[inline]
    pub fn hit(
        &self,
        site: &'static str,
        cpu: Option<u32>,
        fields: &[(&'static str, u64)],
    ) -> Verdict {
        match &self.hook {
            None => Verdict::Continue,
            Some(h) => h.hit(&ProbeEvent { site, cpu, fields }),
        }
    }

    /// One iteration of a wait loop at `site`.
    #[inline]
    pub fn wait(
        &self,
        site: &'static str,
        cpu: Option<u32>,
        fields: &[(&'static str, u64)],
    ) -> WaitVerdict {
        match &self.hook {
            None => {
                crate::spin_wait();
                WaitVerdict::Retry
            }
            Some(h) => h.wait(&ProbeEvent { site, cpu, fields }),
        }
    }

    /// The next value of the logical clock (the `seq` field of trace events).
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }
}

/// A ready-made fault injector (check C9): fails the `nth` (1-based) pass of probe point
/// `site`, and only that one; counts every pass.
#[derive(Debug)]
pub struct FailNth {
    site: &'static str,
    nth: u64,
    seen: AtomicU64,
}

impl FailNth {
    /// Fails the `nth` pass of `site` (`nth` = 0 never fails: a pure counter).
    pub fn new(site: &'static str, nth: u64) -> Self {
        FailNth { site, nth, seen: AtomicU64::new(0) }
    }

    /// How many times `site` was passed.
    pub fn passes(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl ProbeHook for FailNth {
    fn hit(&self, event: &ProbeEvent<'_>) -> Verdict {
        if event.site != self.site {
            return Verdict::Continue;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.nth { Verdict::Fail } else { Verdict::Continue }
    }
}

#[cfg(all(test, not(any(loom, shuttle))))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<&'static str>>);
    impl ProbeHook for Rec {
        fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
            self.0.lock().unwrap().push(e.site);
            if e.site == "fail_me" { Verdict::Fail } else { Verdict::Continue }
        }
        fn wait(&self, _: &ProbeEvent<'_>) -> WaitVerdict {
            WaitVerdict::Deadlock
        }
    }

    #[test]
    fn detached_probes_continue_and_clock_counts() {
        let p = Probes::new();
        assert!(!p.is_attached());
        assert_eq!(p.hit("x", None, &[]), Verdict::Continue);
        assert_eq!(p.wait("x", None, &[]), WaitVerdict::Retry);
        assert_eq!(p.next_seq(), 0);
        let q = p.clone();
        assert_eq!(q.next_seq(), 1, "clones share one clock");
    }

    #[test]
    fn fail_nth_fails_exactly_the_nth_pass_of_its_site() {
        let f = Arc::new(FailNth::new("slab_alloc", 3));
        let p = Probes::with_hook(f.clone());
        let verdicts: Vec<_> = (0..5).map(|_| p.hit("slab_alloc", None, &[])).collect();
        assert_eq!(p.hit("other", None, &[]), Verdict::Continue);
        assert_eq!(
            verdicts,
            [
                Verdict::Continue,
                Verdict::Continue,
                Verdict::Fail,
                Verdict::Continue,
                Verdict::Continue
            ]
        );
        assert_eq!(f.passes(), 5);
    }

    #[test]
    fn attached_hook_sees_sites_and_injects() {
        let rec = Arc::new(Rec::default());
        let p = Probes::with_hook(rec.clone());
        assert_eq!(p.hit("a", Some(0), &[("obj", 1)]), Verdict::Continue);
        assert_eq!(p.hit("fail_me", None, &[]), Verdict::Fail);
        assert_eq!(p.wait("w", None, &[]), WaitVerdict::Deadlock);
        assert_eq!(*rec.0.lock().unwrap(), vec!["a", "fail_me"]);
    }
}
