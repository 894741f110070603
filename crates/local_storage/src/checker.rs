//! The lock-discipline checker (I8): a probe hook that follows, per CPU, which storage (S) and
//! bucket (B) locks are held, and reports S taken inside B and any allocation or free made
//! while either is held (bug zoo B7, B10).

use bpfls_sync::probe::{ProbeEvent, ProbeHook, Verdict};
use bpfls_sync::untracked::Mutex;
use std::collections::HashMap;
use std::fmt;

/// Attach it through `TypeConfig::probes` (`Probes::with_hook`), run a workload, then read
/// [`LockDiscipline::problems`].
#[derive(Default)]
pub struct LockDiscipline {
    held: Mutex<HashMap<u32, Vec<&'static str>>>,
    problems: Mutex<Vec<String>>,
}

impl fmt::Debug for LockDiscipline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockDiscipline").field("problems", &self.problems().len()).finish()
    }
}

impl LockDiscipline {
    /// A checker with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every breach seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn report(&self, p: String) {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
}

impl ProbeHook for LockDiscipline {
    fn hit(&self, e: &ProbeEvent<'_>) -> Verdict {
        let Some(cpu) = e.cpu else { return Verdict::Continue };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let stack = held.entry(cpu).or_default();
        match e.site {
            "storage_lock_acquire" => {
                if stack.contains(&"B") {
                    let p = format!("I8: storage lock taken inside a bucket lock on CPU {cpu}");
                    drop(held);
                    self.report(p);
                    return Verdict::Continue;
                }
                stack.push("S");
            }
            "bucket_lock_acquire" => stack.push("B"),
            "storage_lock_release" | "bucket_lock_release" => {
                let lock = if e.site.starts_with("storage") { "S" } else { "B" };
                if let Some(i) = stack.iter().rposition(|l| *l == lock) {
                    stack.remove(i);
                }
            }
            "selem_alloc" | "storage_alloc" | "selem_free" | "storage_free"
                if !stack.is_empty() =>
            {
                let p = format!("I8: {} with {:?} held on CPU {cpu}", e.site, stack);
                drop(held);
                self.report(p);
            }
            _ => {}
        }
        Verdict::Continue
    }
}
